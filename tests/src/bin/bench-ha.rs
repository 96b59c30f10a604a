//! Failover benchmarks on a 3-node loopback cluster (libvirt test driver):
//!
//! - leader failover: kill -9 of the leader → the next acknowledged write
//!   through a survivor, over 20 kills (each followed by a restart);
//! - HA restart: kill -9 of a host → every one of its HA VMs running
//!   elsewhere, over 10 kills (every third one the leader's own host).
//!
//! Prints p50/p99 and the ratio to the configured bound measured against
//! (failover: openraft's lease + election timeout, 2 × election_max_ms = 800 ms;
//! HA restart: down_after_ms). Run: `cargo run --release -p kvmesh-tests --bin bench-ha`
//! (needs `cargo build --release -p kvmesh` and KVMESH_BIN=target/release/kvmesh).

use std::time::{Duration, Instant};

use anyhow::Result;
use kvmesh_tests::{wait_for, Cluster};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut v: Vec<Duration>, bound: Duration) {
    v.sort();
    println!(
        "{name}: n={} p50 {:?} p99 {:?} max {:?}; p99/bound {:.2} (bound {:?})",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        v.last().unwrap(),
        pct(&v, 0.99).as_secs_f64() / bound.as_secs_f64(),
        bound
    );
}

fn failover(kills: usize) -> Result<Vec<Duration>> {
    let mut c = Cluster::three()?;
    let mut out = Vec::new();
    for round in 0..kills {
        let leader = c.leader()?;
        c.nodes[leader].kill();
        let start = Instant::now();
        c.cli_ok((leader + 1) % 3, &["vm", "create", &format!("f{round}"), "--memory", "1"])?;
        out.push(start.elapsed());
        c.restart(leader)?;
        c.wait_members(leader, 3, 3)?;
        // Measure the failover of a settled cluster: a restarted node can
        // still trigger one more election shortly after it comes back.
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(out)
}

fn ha_restart(kills: usize) -> Result<Vec<Duration>> {
    let mut c = Cluster::three()?;
    for i in 0..6 {
        c.cli_ok(i % 3, &["vm", "create", &format!("ha{i}"), "--memory", "64", "--ha", "--wait"])?;
    }
    let mut out = Vec::new();
    for round in 0..kills {
        let leader = c.leader()?;
        let list = c.cli_ok(leader, &["vm", "list"])?;
        let vms = list.as_array().unwrap().clone();
        let victim = if round % 3 == 2 {
            leader
        } else {
            let host =
                vms.iter().map(|v| v["node"].as_str().unwrap_or("")).find(|n| *n != c.nodes[leader].name).unwrap();
            c.nodes.iter().position(|n| n.name == host).unwrap()
        };
        let name = c.nodes[victim].name.clone();
        let survivor = (victim + 1) % 3;
        c.nodes[victim].kill();
        let start = Instant::now();
        wait_for("HA VMs running elsewhere", Duration::from_secs(30), || {
            let l = c.cli_ok(survivor, &["vm", "list"]).ok()?;
            l.as_array()?.iter().all(|v| v["state"] == "running" && v["node"] != name.as_str()).then_some(())
        })?;
        out.push(start.elapsed());
        eprintln!("round {round}: killed {name}: {:?}", start.elapsed());
        c.restart(victim)?;
        wait_for("host back up", Duration::from_secs(30), || {
            let n = c.cli_ok(survivor, &["node", "list"]).ok()?;
            n.as_array()?.iter().all(|n| n["state"] == "up").then_some(())
        })?;
    }
    Ok(out)
}

fn main() -> Result<()> {
    summary("leader failover (kill -9 -> next acknowledged write)", failover(20)?, Duration::from_millis(800));
    if std::env::args().any(|a| a == "--failover-only") {
        return Ok(());
    }
    summary("HA restart (host kill -9 -> all its HA VMs running elsewhere)", ha_restart(10)?, Duration::from_secs(8));
    Ok(())
}
