//! REST as a script speaks it: curl over TLS with the cluster CA (the
//! nodes' certificates name `kvmesh-node`), answers with their status,
//! HTTP version, headers and body, and refusals checked as problem
//! documents carrying the gRPC message.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::Cluster;

/// An answer: HTTP status, HTTP version, content type, body.
pub struct Answer {
    pub status: u16,
    pub version: String,
    pub content_type: String,
    /// The response headers, by lower-case name (curl's `%{header_json}`).
    pub headers: Value,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON ({}): {}", self.status, self.body))
    }

    /// A response header's (first) value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers[name.to_lowercase()][0].as_str()
    }
}

/// Where the body ends and curl's write-out begins.
const WRITE_OUT: &str = "\n@@kvmesh-write-out@@%{header_json}\n%{http_code} %{http_version} %{content_type}";

/// `curl` against node `i` of `c` with the cluster CA (its certificates
/// name `kvmesh-node`); `extra` picks the HTTP version, method and token.
pub fn curl(c: &Cluster, i: usize, path: &str, extra: &[&str]) -> Result<Answer> {
    let port = c.addr(i).rsplit(':').next().unwrap_or_default().to_string();
    let ca = c.nodes[i].data_dir.join("tls").join("ca.crt");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("kvmesh-node:{port}:127.0.0.1")])
        .args(["-w", WRITE_OUT])
        .args(extra)
        .arg(format!("https://kvmesh-node:{port}{path}"))
        .output()?;
    ensure!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, out) = text.rsplit_once("\n@@kvmesh-write-out@@").context("no write-out")?;
    let (headers, meta) = out.rsplit_once('\n').context("no status line")?;
    let mut meta = meta.splitn(3, ' ');
    Ok(Answer {
        status: meta.next().unwrap_or_default().parse()?,
        version: meta.next().unwrap_or_default().to_string(),
        content_type: meta.next().unwrap_or_default().to_string(),
        headers: serde_json::from_str(headers).unwrap_or(Value::Null),
        body: body.to_string(),
    })
}

pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A refusal: its status, a problem document, and the gRPC message in it.
pub fn refused(a: &Answer, status: u16, says: &str) -> Result<()> {
    ensure!(a.status == status, "expected {status}, got {}: {}", a.status, a.body);
    ensure!(
        a.content_type.starts_with("application/problem+json"),
        "content type {:?} over HTTP/{}: {}",
        a.content_type,
        a.version,
        a.body
    );
    let p = a.json()?;
    ensure!(p["status"] == status, "{p}");
    ensure!(p["detail"].as_str().is_some_and(|d| d.contains(says)), "detail without {says:?}: {p}");
    Ok(())
}

/// Waits until node `i` accepts `token` (made through another node, it
/// reaches this one's replica a heartbeat later).
pub fn wait_token(c: &Cluster, i: usize, token: &str) -> Result<()> {
    crate::wait_for("the token accepted", std::time::Duration::from_secs(10), || {
        curl(c, i, "/api/v1/vms", &["-H", &bearer(token)]).ok().filter(|a| a.status == 200)
    })
    .map(|_| ())
}
