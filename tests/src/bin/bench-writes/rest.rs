//! REST against gRPC on the same cluster, port and TLS: the same read
//! (listing 1,000 VMs) and the same write (`vm set --description`, which
//! REST does as a PUT of the VM's whole spec) from the same closed-loop
//! load at each client count, over HTTP/2 connections carrying 16 clients
//! each for both. The ratios say what REST's JSON and its PUT semantics
//! (a consistent read of the VM before the write) cost over gRPC.

use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kvmesh_proto as pb;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_tests::{Cluster, TokenChannel};

use super::load::{self, ms, payload, Writer};
use super::{check, kvmesh_channels, machine, Args, KvmeshUpdate, CLIENTS_PER_CONNECTION, VM_POOL};

/// VMs in the listed cluster.
const LISTED: usize = 1000;

/// HTTP/2 connections to a node, TLS with the cluster CA, the admin token.
#[derive(Clone)]
struct Rest {
    senders: Vec<SendRequest<Full<Bytes>>>,
    authorization: Arc<str>,
    port: u16,
}

impl Rest {
    async fn connect(address: &str, clients: usize) -> Result<Self> {
        let (ca, token) = kvmesh_tests::client_credentials(address)?;
        let tls = kvmesh_tests::tls_client_config(&ca, b"h2")?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let mut senders = Vec::new();
        for _ in 0..clients.div_ceil(CLIENTS_PER_CONNECTION) {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("kvmesh-node")?;
            let stream = connector.connect(name, tcp).await?;
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            senders.push(sender);
        }
        let port = address.rsplit(':').next().unwrap_or_default().parse()?;
        Ok(Rest { senders, authorization: format!("Bearer {token}").into(), port })
    }

    async fn call(&self, client: usize, method: &str, path: &str, body: Option<String>) -> Result<Bytes, String> {
        let mut sender = self.senders[client % self.senders.len()].clone();
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("https://kvmesh-node:{}{path}", self.port))
            .header("authorization", &*self.authorization);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        Ok(bytes)
    }
}

#[derive(Clone)]
struct RestList(Rest);

impl Writer for RestList {
    async fn write(&self, client: usize, _seq: u64) -> Result<(), String> {
        let body = self.0.call(client, "GET", "/api/v1/vms", None).await?;
        // The answer is parsed, as a client would.
        let vms: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        (vms.as_array().map(Vec::len) == Some(LISTED + VM_POOL)).then_some(()).ok_or_else(|| "short list".into())
    }
}

#[derive(Clone)]
struct GrpcList(Vec<TokenChannel>);

impl Writer for GrpcList {
    async fn write(&self, client: usize, _seq: u64) -> Result<(), String> {
        let mut vms = VmsClient::new(self.0[client % self.0.len()].clone());
        let list = vms.list(pb::ListVmsRequest { consistent: false }).await.map_err(|s| s.message().to_string())?;
        (list.into_inner().vms.len() == LISTED + VM_POOL).then_some(()).ok_or_else(|| "short list".into())
    }
}

/// `PUT /api/v1/vms/w<k>` with the pool VM's spec and a new description.
#[derive(Clone)]
struct RestSet(Rest);

impl Writer for RestSet {
    async fn write(&self, client: usize, seq: u64) -> Result<(), String> {
        let spec = serde_json::json!({"vcpus": 1, "memory_mib": 1, "description": payload(client, seq)});
        let path = format!("/api/v1/vms/w{}", client % VM_POOL);
        self.0.call(client, "PUT", &path, Some(spec.to_string())).await.map(|_| ())
    }
}

pub async fn rest_vs_grpc(args: &Args) -> Result<()> {
    let mut kv = Cluster::three()?;
    let leader = kv.leader()?;
    let address = kv.addr(leader);
    super::create_pool(&address, false).await?;
    let setup = kvmesh_channels(&address, 1, false).await?;
    let mut vms = VmsClient::new(setup[0].clone());
    for k in 0..LISTED {
        let create = pb::CreateVmRequest { name: format!("l{k}"), vcpus: 1, memory_mib: 1, ..Default::default() };
        vms.create(create).await.with_context(|| format!("create VM l{k}"))?;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    println!(
        "machine: {}; {} s per run after {} s warm-up; {} VMs listed",
        machine(),
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        LISTED + VM_POOL
    );
    println!();
    println!("| operation | clients | gRPC ops/s | REST ops/s | REST/gRPC | gRPC p50 / p99 ms | REST p50 / p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &c in &args.clients {
        let g = load::run(GrpcList(kvmesh_channels(&address, c, false).await?), c, args.warmup, args.duration).await;
        check("gRPC list", &g)?;
        let r = load::run(RestList(Rest::connect(&address, c).await?), c, args.warmup, args.duration).await;
        check("REST list", &r)?;
        row("list 1,256 VMs", c, &g, &r);
        let channels = kvmesh_channels(&address, c, false).await?;
        let g = load::run(KvmeshUpdate { channels }, c, args.warmup, args.duration).await;
        check("gRPC vm set", &g)?;
        let r = load::run(RestSet(Rest::connect(&address, c).await?), c, args.warmup, args.duration).await;
        check("REST PUT", &r)?;
        row("vm set (REST: PUT)", c, &g, &r);
    }
    if kv.leader()? != leader {
        println!("\nnote: the leader changed during the run; rerun for clean figures");
    }
    Ok(())
}

fn row(what: &str, clients: usize, g: &load::RunResult, r: &load::RunResult) {
    println!(
        "| {what} | {clients} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
        g.per_sec(),
        r.per_sec(),
        r.per_sec() / g.per_sec(),
        ms(g.pct(0.5)),
        ms(g.pct(0.99)),
        ms(r.pct(0.5)),
        ms(r.pct(0.99)),
    );
}
