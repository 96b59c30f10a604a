//! A 3-member etcd cluster on loopback (Debian's etcd-server 3.4, default
//! durability: every WAL write fsynced) and its `KV/Put` call, made with the
//! same tonic stack as the kvmesh client.

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
    _dir: PathBuf,
}

impl EtcdCluster {
    /// Starts three members with data under `dir` and waits for a leader.
    pub fn start(dir: &Path) -> Result<Self> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let names = ["e1", "e2", "e3"];
        let peers: Vec<(String, u16, u16)> = names.iter().map(|n| (n.to_string(), free_port(), free_port())).collect();
        let initial: Vec<String> = peers.iter().map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}")).collect();
        let mut members = Vec::new();
        for (name, client, peer) in &peers {
            let data = dir.join(format!("etcd-{name}"));
            let log = std::fs::File::create(dir.join(format!("etcd-{name}.log")))?;
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(&bin)
                .args(["--name", name, "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "kvmesh-bench", "--logger", "zap", "--log-level", "warn"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("start {bin} (install it: apt-get install etcd-server)"))?;
            members.push(Member { client_url, child });
        }
        let cluster = EtcdCluster { members, _dir: dir.to_path_buf() };
        wait_for("an etcd leader", Duration::from_secs(30), || cluster.leader().ok())?;
        Ok(cluster)
    }

    /// Index of the current leader, from `etcdctl endpoint status`.
    pub fn leader(&self) -> Result<usize> {
        let endpoints: Vec<&str> = self.members.iter().map(|m| m.client_url.as_str()).collect();
        let out = Command::new(std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into()))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(","), "endpoint", "status", "-w", "json"])
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
