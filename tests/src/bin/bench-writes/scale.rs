//! How the cost grows with the replicated state.
//!
//! Two 3-node clusters of the same `bench-seed` build, one after the other:
//! the baseline holds only the benchmark's own VMs; the scaled one is first
//! filled with NODES synthetic host records and VMS synthetic VM records
//! through Raft (`KVMESH_BENCH_SEED`). Both get the same measurements, and
//! each line prints the ratio scaled/baseline:
//! write latency at 1 and 64 clients, each node's RSS, the latest
//! snapshot's size and build time, how long a kill -9'd follower takes to
//! serve again with everything applied, and how long a new node takes to
//! join and catch up.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use kvmesh_proto as pb;
use kvmesh_proto::cluster_client::ClusterClient;
use kvmesh_tests::Cluster;

use crate::load::{self, ms};
use crate::{check, create_pool, kvmesh_channels, KvmeshUpdate};

/// Snapshots often enough that one is built at the seeded size.
const RAFT_TOML: &str = "[raft]\nsnapshot_every = 500\n";

#[derive(Default)]
struct Figures {
    c1: Option<load::RunResult>,
    c64: Option<load::RunResult>,
    rss_mib: Vec<f64>,
    snapshot_bytes: u64,
    snapshot_ms: f64,
    restart_listen: Duration,
    restart_ready: Duration,
    join_ready: Duration,
}

async fn status(address: &str) -> Result<pb::ClusterStatus> {
    let ch = kvmesh_channels(address, 1, false).await?;
    Ok(ClusterClient::new(ch[0].clone()).status(pb::StatusRequest {}).await?.into_inner())
}

async fn wait_async<T, F, Fut>(what: &str, timeout: Duration, f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    kvmesh_tests::wait_async_ok(timeout, f).await.with_context(|| format!("waiting for {what}"))
}

/// Waits until the node at `address` knows the leader and has applied
/// everything up to `target`.
async fn wait_caught_up(who: &str, address: &str, target: u64) -> Result<()> {
    // One connection for the whole wait, so a poll costs one RPC, not a
    // connect as well (the node is already listening).
    let ch = tonic::transport::Channel::from_shared(format!("http://{address}"))?.connect_lazy();
    wait_async(&format!("{who} to catch up"), Duration::from_secs(300), || {
        let ch = ch.clone();
        async move {
            let s = ClusterClient::new(ch).status(pb::StatusRequest {}).await.ok()?.into_inner();
            (s.leader.is_some() && s.last_applied >= target).then_some(())
        }
    })
    .await
}

fn rss_mib(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?;
    Ok(kb / 1024.0)
}

/// The latest "built snapshot" line of a node's log: (bytes, ms).
fn last_snapshot(log: &str) -> Option<(u64, f64)> {
    let line = log.lines().rev().find(|l| l.contains("built snapshot"))?;
    let field = |name: &str| -> Option<String> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        Some(line[at..].split_whitespace().next()?.to_string())
    };
    Some((field("bytes")?.parse().ok()?, field("elapsed_ms")?.parse().ok()?))
}

/// Waits until the cluster holds the seeded records and stops writing
/// (the leader marks the silent synthetic hosts down, one entry each).
async fn wait_seeded(c: &Cluster, leader: usize, nodes: usize, vms: usize) -> Result<()> {
    let address = c.addr(leader);
    let ch = kvmesh_channels(&address, 1, false).await?;
    wait_async("the seeded records", Duration::from_secs(600), || {
        let ch = ch.clone();
        async move {
            let listed = ClusterClient::new(ch[0].clone()).list_nodes(pb::ListNodesRequest::default()).await.ok()?;
            let synthetic: Vec<_> =
                listed.into_inner().nodes.into_iter().filter(|n| n.name.starts_with("synthetic-")).collect();
            let all_down = synthetic.iter().all(|n| n.state == pb::NodeState::Down as i32);
            let vm_count = kvmesh_proto::vms_client::VmsClient::new(ch[0].clone())
                .list(pb::ListVmsRequest::default())
                .await
                .ok()?
                .into_inner()
                .vms
                .len();
            (synthetic.len() >= nodes && vm_count >= vms && all_down).then_some(())
        }
    })
    .await?;
    // Settled: no new entry for two seconds.
    let mut last = status(&address).await?.commit_index;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = status(&address).await?.commit_index;
        if now == last {
            return Ok(());
        }
        last = now;
    }
}

async fn measure(seed: Option<(usize, usize)>, duration: Duration) -> Result<Figures> {
    let mut c = Cluster::new();
    c.config_toml = RAFT_TOML.into();
    if let Some((n, v)) = seed {
        c.env.push(("KVMESH_BENCH_SEED".into(), format!("{n},{v}")));
    }
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    c.spawn("n2", Some(&first), &[])?;
    c.spawn("n3", Some(&first), &[])?;
    c.wait_members(0, 3, 3)?;
    let leader = c.leader()?;
    let started = Instant::now();
    if let Some((n, v)) = seed {
        wait_seeded(&c, leader, n, v).await?;
        println!("  seeded {n} hosts and {v} VMs (and settled) in {:.1} s", started.elapsed().as_secs_f64());
    }
    create_pool(&c.addr(leader), false).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut f = Figures::default();
    let address = c.addr(leader);
    for clients in [1usize, 64] {
        let r = load::run(
            KvmeshUpdate { channels: kvmesh_channels(&address, clients, false).await? },
            clients,
            Duration::from_secs(1),
            duration,
        )
        .await;
        check("kvmesh", &r)?;
        if clients == 1 {
            f.c1 = Some(r);
        } else {
            f.c64 = Some(r);
        }
    }
    // The load above built snapshots at this size.
    (f.snapshot_bytes, f.snapshot_ms) = last_snapshot(&c.log_text(leader)).context("no snapshot was built")?;
    for node in &c.nodes {
        f.rss_mib.push(rss_mib(node.pid().context("node not running")?)?);
    }

    // A follower killed with -9 and started again: ready once it serves
    // and has applied everything committed before it died.
    let follower = (leader + 1) % 3;
    let target = status(&c.addr(leader)).await?.commit_index;
    c.nodes[follower].kill();
    let restart = Instant::now();
    c.restart(follower)?;
    f.restart_listen = restart.elapsed();
    wait_caught_up("the restarted follower", &c.addr(follower), target).await?;
    f.restart_ready = restart.elapsed();

    // A new node joins and catches up (through a snapshot when the log
    // was purged).
    let target = status(&c.addr(leader)).await?.commit_index;
    let join = Instant::now();
    let leader_address = c.addr(leader);
    let new = c.spawn("n4", Some(&leader_address), &[])?;
    wait_caught_up("the new node", &c.addr(new), target).await?;
    f.join_ready = join.elapsed();
    Ok(f)
}

pub async fn run(nodes: usize, vms: usize, duration: Duration) -> Result<()> {
    println!("machine: {}; baseline: 3 nodes, 256 VMs; scaled: + {nodes} host and {vms} VM records", crate::machine());
    println!("baseline cluster…");
    let base = measure(None, duration).await?;
    println!("scaled cluster…");
    let scaled = measure(Some((nodes, vms)), duration).await?;
    let (b1, s1) = (base.c1.as_ref().unwrap(), scaled.c1.as_ref().unwrap());
    let (b64, s64) = (base.c64.as_ref().unwrap(), scaled.c64.as_ref().unwrap());
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!();
    println!("| measure | baseline | {nodes} hosts / {vms} VMs | ratio |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, b: f64, s: f64, unit: &str| {
        println!("| {name} | {b:.2} {unit} | {s:.2} {unit} | {:.2} |", s / b);
    };
    row("write p50, 1 client", ms(b1.pct(0.5)), ms(s1.pct(0.5)), "ms");
    row("write p99, 1 client", ms(b1.pct(0.99)), ms(s1.pct(0.99)), "ms");
    row("writes/s, 64 clients", b64.per_sec(), s64.per_sec(), "/s");
    row("write p50, 64 clients", ms(b64.pct(0.5)), ms(s64.pct(0.5)), "ms");
    row("write p99, 64 clients", ms(b64.pct(0.99)), ms(s64.pct(0.99)), "ms");
    row("largest node RSS", max(&base.rss_mib), max(&scaled.rss_mib), "MiB");
    row("snapshot size", base.snapshot_bytes as f64 / 1024.0, scaled.snapshot_bytes as f64 / 1024.0, "KiB");
    row("snapshot build", base.snapshot_ms, scaled.snapshot_ms, "ms");
    row("restarted follower listening", ms(base.restart_listen), ms(scaled.restart_listen), "ms");
    row("restarted follower ready (caught up)", ms(base.restart_ready), ms(scaled.restart_ready), "ms");
    row("new node joined and caught up", ms(base.join_ready), ms(scaled.join_ready), "ms");
    println!(
        "\nRSS per node (MiB): baseline {:?}, scaled {:?}",
        base.rss_mib.iter().map(|m| m.round()).collect::<Vec<_>>(),
        scaled.rss_mib.iter().map(|m| m.round()).collect::<Vec<_>>()
    );
    Ok(())
}
