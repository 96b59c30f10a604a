//! Acknowledged writes survive leader kills, restarts and full-cluster restarts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use kvmesh_tests::{wait_for, Cluster};

/// Waits until node `i` lists every name in `expected` (its reads are local).
fn wait_has_all(c: &Cluster, i: usize, expected: &BTreeSet<String>) -> Result<()> {
    let mut missing = Vec::new();
    wait_for(&format!("{} to list all {} VMs", c.nodes[i].name, expected.len()), Duration::from_secs(30), || {
        let names: BTreeSet<String> = match c.vm_names(i) {
            Ok(n) => n.into_iter().collect(),
            Err(e) => {
                missing = vec![format!("(vm list failed: {e:#})")];
                return None;
            }
        };
        missing = expected.difference(&names).cloned().collect();
        missing.is_empty().then_some(())
    })
    .map_err(|e| e.context(format!("missing on {}: {missing:?}", c.nodes[i].name)))
}

#[test]
fn killed_leader_is_replaced_and_catches_up_after_restart() -> Result<()> {
    let mut c = Cluster::three()?;
    let mut acked = BTreeSet::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        c.cli_ok(i % 3, &["vm", "create", &name, "--memory", "64"])?;
        acked.insert(name);
    }
    let old = c.leader()?;
    c.nodes[old].kill();
    let follower = (old + 1) % 3;
    // The next write through a survivor succeeds once a new leader is elected;
    // the node retries through the election itself.
    let start = Instant::now();
    c.cli_ok(follower, &["vm", "create", "after-kill", "--memory", "64"])?;
    let failover = start.elapsed();
    eprintln!("first write after kill -9 of the leader: {failover:?}");
    assert!(failover < Duration::from_secs(10), "write deadline is 10 s: {failover:?}");
    acked.insert("after-kill".into());
    let new = c.leader()?;
    assert_ne!(new, old);
    for i in 0..5 {
        let name = format!("during-{i}");
        c.cli_ok((new + i) % 3, &["vm", "create", &name, "--memory", "64"]).or_else(|_| {
            // Only live nodes take writes; skip the dead one.
            c.cli_ok(new, &["vm", "create", &name, "--memory", "64"])
        })?;
        acked.insert(name);
    }
    // The killed node comes back from its data dir, without --join, and catches up.
    c.restart(old)?;
    wait_has_all(&c, old, &acked)?;
    let s = c.wait_members(old, 3, 3)?;
    assert_eq!(s["node"]["name"], c.nodes[old].name.as_str());
    Ok(())
}

/// `node list` without the live fields that come from heartbeats.
fn replicated(mut nodes: serde_json::Value) -> serde_json::Value {
    for n in nodes.as_array_mut().into_iter().flatten() {
        if let Some(o) = n.as_object_mut() {
            o.remove("heartbeat_age_ms");
            o.remove("running_vms");
            o.remove("running_vcpus");
            o.remove("running_memory_mib");
            o.remove("storage");
            o.remove("fencing");
            o.remove("problem");
        }
    }
    nodes
}

#[test]
fn full_cluster_restart_keeps_every_acknowledged_write() -> Result<()> {
    let mut c = Cluster::three()?;
    let mut acked = BTreeSet::new();
    for i in 0..30 {
        let name = format!("vm-{i}");
        c.cli_ok(i % 3, &["vm", "create", &name, "--memory", "32"])?;
        acked.insert(name);
    }
    let before = c.cli_ok(0, &["node", "list", "--consistent"])?;
    for n in &mut c.nodes {
        n.kill();
    }
    for i in 0..3 {
        c.restart(i)?;
    }
    c.leader()?;
    for i in 0..3 {
        wait_has_all(&c, i, &acked)?;
    }
    assert_eq!(c.vm_names(1)?.len(), 30);
    let after = c.cli_ok(2, &["node", "list", "--consistent"])?;
    assert_eq!(replicated(before), replicated(after), "nodes and placements unchanged");
    // Still writable.
    c.cli_ok(1, &["vm", "create", "after-restart", "--memory", "32"])?;
    Ok(())
}

#[test]
fn writes_without_quorum_fail_clearly_within_the_deadline() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            c.nodes[i].kill();
        }
    }
    let start = Instant::now();
    let r = c.cli(survivor, &["vm", "create", "lost", "--memory", "64"]);
    let took = start.elapsed();
    assert!(!r.success);
    assert!(r.stderr.contains("majority of voters"), "{}", r.stderr);
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(25), "took {took:?}");
    // Local reads still answer.
    c.cli_ok(survivor, &["vm", "list"])?;
    Ok(())
}

/// The acceptance run: creates through random nodes under continuous load,
/// 20 rounds of kill -9 of the leader each followed by a restart, then a
/// full-cluster restart; every acknowledged create is listed on every node.
#[test]
fn chaos_leader_kills_lose_no_acknowledged_create() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let mut c = Cluster::three()?;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<String> = (0..3).map(|i| c.addr(i)).collect();
    let counter = Arc::new(AtomicUsize::new(0));
    // Two writers keep creating through random nodes the whole time.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (acked, stop, addrs, counter) = (acked.clone(), stop.clone(), addrs.clone(), counter.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let name = format!("w{w}-{n}");
                    let target = &addrs[rand::random::<usize>() % 3];
                    // Errors are allowed (unacknowledged); only successes count.
                    if kvmesh_tests::run_cli(target, &["vm", "create", &name, "--memory", "1"]).success {
                        acked.lock().unwrap().insert(name);
                    }
                }
            })
        })
        .collect();
    let mut failovers = Vec::new();
    for round in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let leader = c.leader()?;
        c.nodes[leader].kill();
        let other = (leader + 1) % 3;
        let start = Instant::now();
        let name = format!("failover-{round}");
        c.cli_ok(other, &["vm", "create", &name, "--memory", "1"])?;
        failovers.push(start.elapsed());
        acked.lock().unwrap().insert(name);
        c.restart(leader)?;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    failovers.sort();
    eprintln!(
        "kill -9 leader -> next acknowledged write over {} kills: p50 {:?}, max {:?}",
        failovers.len(),
        failovers[failovers.len() / 2],
        failovers.last().unwrap()
    );
    for n in &mut c.nodes {
        n.kill();
    }
    for i in 0..3 {
        c.restart(i)?;
    }
    let acked = acked.lock().unwrap().clone();
    for i in 0..3 {
        wait_has_all(&c, i, &acked)?;
    }
    assert!(acked.len() >= 200, "only {} creates acknowledged", acked.len());
    Ok(())
}
