//! HA chaos on libvirt's test driver (each node's guests live inside its
//! process, so kill -9 of a node is a host death): host kills, the
//! leader's host included; a hung host; drain and activate under load.
//! Invariants are checked from outside, through the API: every HA VM runs
//! exactly once, and at no sample does `observed` list two hosts for a VM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvmesh_tests::{run_cli, wait_for, Cluster};
use serde_json::Value;

fn vms(c: &Cluster, i: usize) -> Result<Vec<Value>> {
    Ok(c.cli_ok(i, &["vm", "list"])?.as_array().cloned().unwrap_or_default())
}

fn index_of(c: &Cluster, name: &str) -> usize {
    c.nodes.iter().position(|n| n.name == name).unwrap()
}

/// Fails if any VM is observed on two hosts in this sample.
fn check_once(list: &[Value]) -> Result<()> {
    for vm in list {
        let observed = vm["observed"].as_array().map(|a| a.len()).unwrap_or(0);
        if observed > 1 {
            bail!("VM {} observed running on {} hosts at once: {}", vm["name"], observed, vm["observed"]);
        }
    }
    Ok(())
}

/// Samples `vm list` from node `i` until `done`, failing on a double run.
fn watch_double_runs(endpoint: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<usize>> {
    std::thread::spawn(move || {
        let mut samples = 0;
        while !stop.load(Ordering::SeqCst) {
            if let Ok(v) = run_cli(&endpoint, &["vm", "list"]).json() {
                check_once(v.as_array().map(Vec::as_slice).unwrap_or(&[]))?;
                samples += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(samples)
    })
}

fn three_small() -> Result<Cluster> {
    let c = Cluster::three()?;
    Ok(c)
}

/// Kills the host that runs the most HA VMs, then (second round) the leader's
/// host; each time every HA VM runs again exactly once elsewhere within 15 s,
/// and non-HA VMs of the dead host show `host-down` until recovered.
#[test]
fn host_kills_restart_ha_vms_exactly_once_elsewhere() -> Result<()> {
    let mut c = three_small()?;
    for i in 0..6 {
        c.cli_ok(i % 3, &["vm", "create", &format!("ha{i}"), "--memory", "512", "--ha", "--priority", &i.to_string()])?;
    }
    c.cli_ok(0, &["vm", "create", "plain", "--memory", "512", "--wait"])?;
    let mut restart_times = Vec::new();
    for round in 0..2 {
        let leader = c.leader()?;
        let list = vms(&c, leader)?;
        let victim = if round == 1 {
            leader
        } else {
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for vm in list.iter().filter(|v| v["ha"] == true) {
                *count.entry(vm["node"].as_str().unwrap_or("").to_string()).or_default() += 1;
            }
            index_of(&c, count.iter().max_by_key(|(_, n)| **n).unwrap().0)
        };
        let victim_name = c.nodes[victim].name.clone();
        let on_victim: Vec<String> = list
            .iter()
            .filter(|v| v["node"] == victim_name.as_str() && v["ha"] == true)
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        let survivor = (victim + 1) % 3;
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_double_runs(c.addr(survivor), stop.clone());
        c.nodes[victim].kill();
        let killed = Instant::now();
        let moved = wait_for("every HA VM running elsewhere", Duration::from_secs(15), || {
            let list = vms(&c, survivor).ok()?;
            let all = list.iter().filter(|v| v["ha"] == true).all(|v| {
                v["state"] == "running"
                    && v["node"] != victim_name.as_str()
                    && v["observed"].as_array().is_some_and(|o| o.len() == 1)
            });
            all.then_some(list)
        })?;
        restart_times.push(killed.elapsed());
        eprintln!(
            "round {round}: killed {victim_name} ({} HA VMs), all HA VMs running elsewhere after {:?}",
            on_victim.len(),
            killed.elapsed()
        );
        stop.store(true, Ordering::SeqCst);
        let samples = watcher.join().unwrap()?;
        assert!(samples > 5, "too few samples: {samples}");
        let node = c.cli_ok(survivor, &["node", "list"])?;
        let dead = node.as_array().unwrap().iter().find(|n| n["name"] == victim_name.as_str()).unwrap();
        assert_eq!(dead["state"], "down");
        if let Some(plain) = moved.iter().find(|v| v["name"] == "plain" && v["node"] == victim_name.as_str()) {
            assert_eq!(plain["state"], "host-down", "{plain}");
            c.cli_ok(survivor, &["vm", "recover", "plain"])?;
            c.wait_vm_state(survivor, "plain", "running", Duration::from_secs(10))?;
        }
        // The dead host returns with an empty hypervisor and goes back up.
        c.restart(victim)?;
        wait_for("the returned host to be up", Duration::from_secs(20), || {
            let n = c.cli_ok(survivor, &["node", "list"]).ok()?;
            n.as_array()?.iter().any(|n| n["name"] == victim_name.as_str() && n["state"] == "up").then_some(())
        })?;
    }
    let list = vms(&c, 0)?;
    assert!(list.iter().filter(|v| v["ha"] == true).all(|v| v["state"] == "running"));
    check_once(&list)?;
    eprintln!("HA restart times: {restart_times:?}");
    Ok(())
}

/// SIGSTOP a host with HA VMs for 20 s: its HA VMs are restarted elsewhere;
/// after SIGCONT the host fences itself before anything else, so no sample
/// ever shows a VM on two hosts, and it goes back up clean.
#[test]
fn a_hung_host_is_replaced_and_fences_itself_when_it_resumes() -> Result<()> {
    let c = three_small()?;
    for i in 0..4 {
        c.cli_ok(i % 3, &["vm", "create", &format!("h{i}"), "--memory", "256", "--ha", "--wait"])?;
    }
    let leader = c.leader_index_no_mut()?;
    let list = vms(&c, leader)?;
    let victim_name =
        list.iter().map(|v| v["node"].as_str().unwrap().to_string()).find(|n| *n != c.nodes[leader].name).unwrap();
    let victim = index_of(&c, &victim_name);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_double_runs(c.addr(leader), stop.clone());
    c.nodes[victim].signal("STOP");
    let stopped = Instant::now();
    wait_for("HA VMs moved off the hung host", Duration::from_secs(15), || {
        let l = vms(&c, leader).ok()?;
        l.iter().all(|v| v["node"] != victim_name.as_str() && v["state"] == "running").then_some(())
    })?;
    // 20 s of hang in all.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed()));
    c.nodes[victim].signal("CONT");
    wait_for("the resumed host to be up and clean", Duration::from_secs(20), || {
        let n = c.cli_ok(leader, &["node", "list"]).ok()?;
        n.as_array()?.iter().any(|n| n["name"] == victim_name.as_str() && n["state"] == "up").then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let samples = watcher.join().unwrap()?;
    assert!(samples > 20, "too few samples: {samples}");
    let list = vms(&c, leader)?;
    check_once(&list)?;
    assert!(list.iter().all(|v| v["state"] == "running" && v["observed"].as_array().unwrap().len() == 1), "{list:?}");
    let log = c.log_text(victim);
    assert!(log.contains("fencing"), "the resumed host must fence itself:\n{log}");
    Ok(())
}

/// Drain a host while creates keep coming: its VMs move, it reaches
/// maintenance, no write fails, and activate brings it back.
#[test]
fn drain_and_activate_under_load() -> Result<()> {
    let c = three_small()?;
    for i in 0..6 {
        c.cli_ok(i % 3, &["vm", "create", &format!("d{i}"), "--memory", "256", "--wait"])?;
    }
    // Live usage from heartbeats: six running 1-vCPU, 256 MiB guests.
    wait_for("live usage in node list", Duration::from_secs(10), || {
        let n = c.cli_ok(1, &["node", "list"]).ok()?;
        let sum = |k: &str| n.as_array().unwrap().iter().map(|x| x[k].as_u64().unwrap_or(0)).sum::<u64>();
        (sum("running_vms") == 6 && sum("running_vcpus") == 6 && sum("running_memory_mib") == 6 * 256).then_some(())
    })?;
    let target = c.vm(0, "d0")?["node"].as_str().unwrap().to_string();
    let other = (index_of(&c, &target) + 1) % 3;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let addr = c.addr(other);
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<usize> {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 200 {
                let r = run_cli(&addr, &["vm", "create", &format!("load{n}"), "--memory", "16"]);
                if !r.success {
                    bail!("create during drain failed: {}", r.stderr);
                }
                n += 1;
            }
            Ok(n)
        })
    };
    let start = Instant::now();
    c.cli_ok(other, &["node", "drain", &target])?;
    wait_for("the drained host in maintenance", Duration::from_secs(30), || {
        let n = c.cli_ok(other, &["node", "list"]).ok()?;
        n.as_array()?.iter().any(|n| n["name"] == target.as_str() && n["state"] == "maintenance").then_some(())
    })?;
    eprintln!("drain of {target} finished in {:?}", start.elapsed());
    let list = vms(&c, other)?;
    assert!(list.iter().all(|v| v["node"] != target.as_str()), "a VM is still on the drained host");
    wait_for("moved VMs running", Duration::from_secs(20), || {
        vms(&c, other).ok()?.iter().all(|v| v["state"] == "running").then_some(())
    })?;
    stop.store(true, Ordering::SeqCst);
    let created = load.join().unwrap()?;
    assert!(created > 0);
    c.cli_ok(other, &["node", "activate", &target])?;
    c.cli_ok(other, &["vm", "create", "after", "--memory", "16", "--node", &target, "--wait"])?;
    let r = c.cli(other, &["node", "drain", "nobody"]);
    assert!(!r.success && r.stderr.contains("no node named"), "{}", r.stderr);
    Ok(())
}

/// Incus-style role rebalancing: a voter down longer than
/// voter_replace_after is replaced by a healthy learner, so the cluster
/// survives the next failure too.
#[test]
fn a_dead_voter_is_replaced_by_a_learner() -> Result<()> {
    let mut c = Cluster::new();
    c.config_toml = "voter_replace_after_ms = 2000\n".into();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    for n in ["n2", "n3", "n4"] {
        c.spawn(n, Some(&first), &[])?;
    }
    c.wait_members(0, 3, 4)?;
    let leader = c.leader()?;
    let status = c.status(leader)?;
    let learner = status["members"].as_array().unwrap().iter().find(|m| m["role"] == "learner").unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = (0..4).find(|i| *i != leader && c.nodes[*i].name != learner).unwrap();
    let victim_name = c.nodes[victim].name.clone();
    c.nodes[victim].kill();
    let s = wait_for("the learner promoted in the dead voter's place", Duration::from_secs(30), || {
        let s = c.status(leader).ok()?;
        let members = s["members"].as_array()?.clone();
        let promoted = members.iter().any(|m| m["name"] == learner.as_str() && m["role"] == "voter");
        let demoted = members.iter().any(|m| m["name"] == victim_name.as_str() && m["role"] == "learner");
        (promoted && demoted).then_some(s)
    })?;
    eprintln!("voters after replacement: {}", s["members"]);
    // The event log says so, not only the leader's log.
    let expected = format!("node {learner} became a voter in place of {victim_name}");
    wait_for("the voter change in the events", Duration::from_secs(10), || {
        c.cli(leader, &["events", "--node", &learner]).stdout.contains(&expected).then_some(())
    })?;
    // Survives the next failure: kill another voter (not the leader).
    let second = (0..4).find(|i| *i != leader && *i != victim && c.nodes[*i].is_running()).unwrap();
    c.nodes[second].kill();
    c.cli_ok(leader, &["vm", "create", "still-writable", "--memory", "16"])?;
    Ok(())
}

/// A drain that cannot finish says which VMs are stuck and why, and the
/// host stays draining (not maintenance) until they can move.
#[test]
fn a_drain_that_cannot_finish_names_the_stuck_vms() -> Result<()> {
    let c = three_small()?;
    let target = c.nodes[1].name.clone();
    c.cli_ok(0, &["vm", "create", "pinned", "--memory", "64", "--node", &target, "--wait"])?;
    // An unpinned VM placed there too moves away; the pinned one cannot.
    c.cli_ok(0, &["vm", "create", "mover", "--memory", "64", "--prefer-label", "none=none", "--wait"])?;
    c.cli_ok(2, &["node", "drain", &target])?;
    let vm = wait_for("the stuck VM to say why", Duration::from_secs(20), || {
        let vm = c.vm(2, "pinned").ok()?;
        vm["pending"].as_str().is_some_and(|p| p.contains("no node fits")).then_some(vm)
    })?;
    let pending = vm["pending"].as_str().unwrap();
    assert!(pending.contains(&format!("VM is pinned to {target}")), "{pending}");
    let nodes = c.cli_ok(0, &["node", "list"])?;
    let state = nodes.as_array().unwrap().iter().find(|n| n["name"] == target.as_str()).unwrap()["state"].clone();
    assert_eq!(state, "draining", "a drain with a stuck VM must not reach maintenance");
    let events = c.cli(0, &["events"]).stdout;
    assert!(events.contains("vm pinned is pending"), "{events}");
    // Activating the host lets the stuck VM run there again.
    c.cli_ok(0, &["node", "activate", &target])?;
    c.wait_vm_state(0, "pinned", "running", Duration::from_secs(20))?;
    Ok(())
}
