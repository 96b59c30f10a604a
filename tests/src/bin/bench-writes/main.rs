//! Replicated writes, kvmesh next to etcd, on one machine in one run.
//!
//! Starts two 3-node kvmesh clusters (release binary, fsync on), one as it
//! ships (mutual TLS between nodes, TLS and an API token for clients) and
//! one with `serve --insecure` (plaintext, no authentication), and a
//! 3-member etcd 3.4 cluster with TLS for clients and peers and client
//! certificates required, all on loopback; then drives the three with the
//! same closed-loop load generator ([`load`]) at each client count, against
//! the leader and against a follower (which forwards). A kvmesh write is `vm
//! set --description` with 256 bytes (a real API write through Raft); an
//! etcd write is a `put` of a 256-byte value. Prints one markdown row per
//! (target, clients) with what TLS costs kvmesh and the kvmesh/etcd ratios,
//! both with TLS, on the line.
//!
//! `--scale` measures instead how the cost grows with the replicated state
//! ([`scale`]); `--rest` REST against gRPC ([`rest`]); `--creates` VM creates from long-lived clients
//! ([`creates`]). Run through `scripts/bench-writes.sh`, which builds the
//! binaries and installs etcd.

mod creates;
mod etcd;
mod load;
mod rest;
mod scale;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use kvmesh_proto as pb;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_tests::{Cluster, TokenChannel};

use load::{ms, payload, RunResult, Writer};

/// How many VMs the kvmesh clients spread their updates over.
const VM_POOL: usize = 256;
/// Clients per HTTP/2 connection, for both systems.
const CLIENTS_PER_CONNECTION: usize = 16;

struct Args {
    clients: Vec<usize>,
    duration: Duration,
    warmup: Duration,
    scale: Option<(usize, usize)>,
    rest: bool,
    creates: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        clients: vec![1, 16, 64, 256],
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        scale: None,
        rest: false,
        creates: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => {
                a.clients = value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
            }
            "--duration-secs" => a.duration = Duration::from_secs_f64(value()?.parse()?),
            "--warmup-secs" => a.warmup = Duration::from_secs_f64(value()?.parse()?),
            "--scale" => {
                let v = value()?;
                let (n, m) = v.split_once(',').context("--scale NODES,VMS (e.g. 1000,10000)")?;
                a.scale = Some((n.parse()?, m.parse()?));
            }
            "--rest" => a.rest = true,
            "--creates" => a.creates = true,
            other => bail!(
                "unknown argument {other}\nusage: bench-writes [--clients 1,16,64,256] [--duration-secs 5] [--warmup-secs 1] [--scale NODES,VMS | --rest | --creates]"
            ),
        }
    }
    Ok(a)
}

/// `vm set w<k> --description <256 bytes>` through one node.
#[derive(Clone)]
pub(crate) struct KvmeshUpdate {
    pub(crate) channels: Vec<TokenChannel>,
}

impl Writer for KvmeshUpdate {
    async fn write(&self, client: usize, seq: u64) -> Result<(), String> {
        let mut vms = VmsClient::new(self.channels[client % self.channels.len()].clone());
        let request = pb::UpdateVmRequest {
            name: format!("w{}", client % VM_POOL),
            description: Some(payload(client, seq)),
            priority: None,
            ..Default::default()
        };
        vms.update(request).await.map(|_| ()).map_err(|s| format!("{}: {}", s.code(), s.message()))
    }
}

/// Creates the VMs the kvmesh clients update.
pub(crate) async fn create_pool(address: &str, insecure: bool) -> Result<()> {
    let setup = kvmesh_channels(address, 1, insecure).await?;
    let mut vms = VmsClient::new(setup[0].clone());
    for k in 0..VM_POOL {
        let create = pb::CreateVmRequest { name: format!("w{k}"), vcpus: 1, memory_mib: 1, ..Default::default() };
        vms.create(create).await.with_context(|| format!("create VM w{k}"))?;
    }
    Ok(())
}

/// Connections to a kvmesh node: TLS with the admin token, or plaintext.
pub(crate) async fn kvmesh_channels(address: &str, clients: usize, insecure: bool) -> Result<Vec<TokenChannel>> {
    let mut out = Vec::new();
    for _ in 0..clients.div_ceil(CLIENTS_PER_CONNECTION) {
        out.push(match insecure {
            true => kvmesh_tests::plain_channel(address).await?,
            false => kvmesh_tests::api_channel(address).await?,
        });
    }
    Ok(out)
}

fn cell(r: &RunResult) -> String {
    format!("{:.2} / {:.2} / {:.2}", ms(r.pct(0.5)), ms(r.pct(0.99)), ms(r.pct(0.999)))
}

pub(crate) fn check(system: &str, r: &RunResult) -> Result<()> {
    if r.errors > 0 {
        bail!("{system}: {} writes failed; first: {}", r.errors, r.first_error.clone().unwrap_or_default());
    }
    if r.writes == 0 {
        bail!("{system}: no write completed in the window");
    }
    Ok(())
}

pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu})")
}

async fn side_by_side(args: &Args) -> Result<()> {
    let mut kv = Cluster::three()?;
    let leader = kv.leader()?;
    let follower = (leader + 1) % 3;
    create_pool(&kv.addr(leader), false).await?;
    let mut plain = Cluster::three_insecure()?;
    let plain_leader = plain.leader()?;
    let plain_follower = (plain_leader + 1) % 3;
    create_pool(&plain.addr(plain_leader), true).await?;
    let etcd = etcd::EtcdCluster::start(kv.dir.path())?;
    let etcd_leader = etcd.leader()?;
    let etcd_follower = (etcd_leader + 1) % 3;
    // Let the agents settle the pool VMs before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    println!(
        "machine: {}; {} s per run after {} s warm-up",
        machine(),
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    println!();
    println!("| target | clients | kvmesh TLS writes/s | kvmesh plaintext writes/s | TLS/plaintext | etcd TLS writes/s | writes/s kvmesh/etcd (TLS) | kvmesh TLS p50 / p99 / p999 ms | etcd TLS p50 / p99 / p999 ms | p99 kvmesh/etcd (TLS) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let targets =
        [("leader", leader, plain_leader, etcd_leader), ("follower", follower, plain_follower, etcd_follower)];
    for (target, kv_node, plain_node, etcd_member) in targets {
        for &c in &args.clients {
            let channels_tls = kvmesh_channels(&kv.addr(kv_node), c, false).await?;
            let k = load::run(KvmeshUpdate { channels: channels_tls }, c, args.warmup, args.duration).await;
            check("kvmesh", &k)?;
            let channels_plain = kvmesh_channels(&plain.addr(plain_node), c, true).await?;
            let p = load::run(KvmeshUpdate { channels: channels_plain }, c, args.warmup, args.duration).await;
            check("kvmesh plaintext", &p)?;
            let e = load::run(
                etcd::EtcdPut { channels: etcd.channels(etcd_member, c).await? },
                c,
                args.warmup,
                args.duration,
            )
            .await;
            check("etcd", &e)?;
            println!(
                "| {target} | {c} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {} | {:.2} |",
                k.per_sec(),
                p.per_sec(),
                k.per_sec() / p.per_sec(),
                e.per_sec(),
                k.per_sec() / e.per_sec(),
                cell(&k),
                cell(&e),
                ms(k.pct(0.99)) / ms(e.pct(0.99)),
            );
        }
    }
    // Still the same leaders? A change mid-run would make the rows unfair.
    if kv.leader()? != leader || plain.leader()? != plain_leader || etcd.leader()? != etcd_leader {
        println!("\nnote: a leader changed during the run; rerun for clean figures");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    match args.scale {
        Some((nodes, vms)) => scale::run(nodes, vms, args.duration).await,
        None if args.rest => rest::rest_vs_grpc(&args).await,
        None if args.creates => creates::creates(&args).await,
        None => side_by_side(&args).await,
    }
}
