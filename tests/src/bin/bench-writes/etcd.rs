//! A 3-member etcd cluster on loopback (Debian's etcd-server 3.4, default
//! durability: every WAL write fsynced) with TLS as kvmesh has it: clients
//! and peers on TLS, certificates required of both (a CA and certificates
//! made with `openssl`); and its `KV/Put` call, made with the same tonic
//! stack as the kvmesh client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kvmesh_tests::{free_port, wait_for};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::load::{payload, Writer};

/// The subset of etcd's `etcdserverpb.PutRequest` the benchmark sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

pub struct Member {
    pub client_url: String,
    child: Child,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    /// The CA, and the certificate and key clients and members present.
    tls: PathBuf,
    _dir: PathBuf,
}

/// A CA and one certificate (for `localhost` and 127.0.0.1) that members
/// use as server, peer and client, and the benchmark's clients as client.
fn make_certs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("run openssl")?;
        if !out.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca =
        vec!["req", "-x509", "-days", "2", "-subj", "/CN=bench-etcd-ca", "-keyout", "ca.key", "-out", "ca.crt"];
    ca.extend(ec);
    run(&ca)?;
    let mut csr = vec!["req", "-subj", "/CN=localhost", "-keyout", "node.key", "-out", "node.csr"];
    csr.extend(ec);
    run(&csr)?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "node.crt",
    ])
}

impl EtcdCluster {
    /// Starts three members with data under `dir` and waits for a leader.
    pub fn start(dir: &Path) -> Result<Self> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let tls = dir.join("etcd-tls");
        make_certs(&tls)?;
        let file = |f: &str| tls.join(f).display().to_string();
        let (ca, cert, key) = (file("ca.crt"), file("node.crt"), file("node.key"));
        let names = ["e1", "e2", "e3"];
        let peers: Vec<(String, u16, u16)> = names.iter().map(|n| (n.to_string(), free_port(), free_port())).collect();
        let initial: Vec<String> = peers.iter().map(|(n, _, p)| format!("{n}=https://127.0.0.1:{p}")).collect();
        let mut members = Vec::new();
        for (name, client, peer) in &peers {
            let data = dir.join(format!("etcd-{name}"));
            let log = std::fs::File::create(dir.join(format!("etcd-{name}.log")))?;
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let child = Command::new(&bin)
                .args(["--name", name, "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "kvmesh-bench", "--logger", "zap", "--log-level", "warn"])
                .args(["--cert-file", &cert, "--key-file", &key, "--trusted-ca-file", &ca, "--client-cert-auth"])
                .args(["--peer-cert-file", &cert, "--peer-key-file", &key, "--peer-trusted-ca-file", &ca])
                .arg("--peer-client-cert-auth")
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("start {bin} (install it: apt-get install etcd-server)"))?;
            members.push(Member { client_url, child });
        }
        let cluster = EtcdCluster { members, tls, _dir: dir.to_path_buf() };
        wait_for("an etcd leader", Duration::from_secs(30), || cluster.leader().ok())?;
        Ok(cluster)
    }

    /// Index of the current leader, from `etcdctl endpoint status`.
    pub fn leader(&self) -> Result<usize> {
        let endpoints: Vec<&str> = self.members.iter().map(|m| m.client_url.as_str()).collect();
        let out = Command::new(std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into()))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(","), "endpoint", "status", "-w", "json"])
            .arg(format!("--cacert={}", self.tls.join("ca.crt").display()))
            .arg(format!("--cert={}", self.tls.join("node.crt").display()))
            .arg(format!("--key={}", self.tls.join("node.key").display()))
            .output()
            .context("run etcdctl (install it: apt-get install etcd-client)")?;
        if !out.status.success() {
            bail!("etcdctl endpoint status: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for s in v.as_array().ok_or_else(|| anyhow!("etcdctl: not an array"))? {
            let member = s["Status"]["header"]["member_id"].as_u64();
            let leader = s["Status"]["leader"].as_u64();
            if member.is_some() && member == leader {
                let ep = s["Endpoint"].as_str().unwrap_or_default();
                return self.members.iter().position(|m| m.client_url == ep).ok_or_else(|| anyhow!("unknown {ep}"));
            }
        }
        bail!("no etcd leader yet")
    }

    /// TLS connections to member `i`, presenting the client certificate.
    pub async fn channels(&self, i: usize, clients: usize) -> Result<Vec<Channel>> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |f: &str| std::fs::read_to_string(self.tls.join(f));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")?))
            .identity(Identity::from_pem(read("node.crt")?, read("node.key")?))
            .domain_name("localhost");
        let mut out = Vec::new();
        for _ in 0..clients.div_ceil(crate::CLIENTS_PER_CONNECTION) {
            let url = self.members[i].client_url.clone();
            out.push(
                Channel::from_shared(url.clone())?
                    .tls_config(tls.clone())?
                    .connect()
                    .await
                    .with_context(|| format!("connect {url}"))?,
            );
        }
        Ok(out)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

/// `put bench/<client> <256 bytes>` against one member.
#[derive(Clone)]
pub struct EtcdPut {
    pub channels: Vec<Channel>,
}

impl Writer for EtcdPut {
    async fn write(&self, client: usize, seq: u64) -> Result<(), String> {
        let mut grpc = tonic::client::Grpc::new(self.channels[client % self.channels.len()].clone());
        grpc.ready().await.map_err(|e| e.to_string())?;
        let request =
            PutRequest { key: format!("bench/{client}").into_bytes(), value: payload(client, seq).into_bytes() };
        let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Put");
        grpc.unary(tonic::Request::new(request), path, codec).await.map(|_| ()).map_err(|s| s.to_string())
    }
}
