//! Cluster formation, membership and write routing with real node processes.

use std::time::Duration;

use anyhow::Result;
use kvmesh_tests::{run_cli, wait_for, Cluster};

#[test]
fn three_nodes_form_by_join_and_serve_writes_from_any_node() -> Result<()> {
    let c = Cluster::three()?;
    // Every node agrees on the leader and the three voters.
    let leader = c.status(0)?["leader"]["name"].as_str().unwrap().to_string();
    for i in 0..3 {
        let s = c.wait_members(i, 3, 3)?;
        assert_eq!(s["leader"]["name"], leader.as_str());
        assert!(s["term"].as_u64().unwrap() >= 1);
        assert!(s["commit_index"].as_u64().unwrap() >= 1);
        for m in s["members"].as_array().unwrap() {
            assert!(m["id"].as_u64().is_some() && m["address"].as_str().is_some());
        }
    }
    // Writes through every node, followers included.
    for i in 0..3 {
        let name = format!("vm-{i}");
        let vm = c.cli_ok(i, &["vm", "create", &name, "--vcpus", "2", "--memory", "1024"])?;
        assert_eq!(vm["name"], name.as_str());
        assert!(vm["node"].as_str().is_some(), "placed: {vm}");
    }
    // Every node lists them (reads are local, so allow replication a moment).
    for i in 0..3 {
        wait_for("replicated VMs", Duration::from_secs(10), || (c.vm_names(i).ok()?.len() == 3).then_some(()))?;
    }
    let list = c.cli_ok(1, &["vm", "list", "--consistent"])?;
    for vm in list.as_array().unwrap() {
        for field in ["name", "vcpus", "memory_mib", "ha", "node", "desired"] {
            assert!(vm.get(field).is_some(), "{field} missing in {vm}");
        }
        assert_eq!(vm["desired"], "running");
    }
    // Most free memory wins: three equal nodes get one VM each.
    let nodes = c.cli_ok(2, &["node", "list", "--consistent"])?;
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["vms"], 1, "{nodes}");
        assert_eq!(n["state"], "up");
        assert_eq!(n["cpus"], 1000);
        assert_eq!(n["allocated_memory_mib"], 1024);
    }
    let got = c.cli_ok(2, &["vm", "get", "vm-0"])?;
    assert_eq!(got["memory_mib"], 1024);
    Ok(())
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() -> Result<()> {
    let c = Cluster::three()?;
    c.cli_ok(1, &["vm", "create", "web", "--memory", "512"])?;

    let dup = c.cli(2, &["vm", "create", "web", "--memory", "512"]);
    assert!(!dup.success && dup.stderr.contains("already exists"), "{}", dup.stderr);

    let bad = c.cli(0, &["vm", "create", "Bad_Name"]);
    assert!(!bad.success && bad.stderr.contains("lowercase"), "{}", bad.stderr);

    // Fits nowhere: one reason per node.
    let big = c.cli(1, &["vm", "create", "huge", "--memory", "20000"]);
    assert!(!big.success);
    for n in ["n1", "n2", "n3"] {
        assert!(big.stderr.contains(&format!("{n}: insufficient memory (need 20000 MiB")), "{}", big.stderr);
    }

    let missing = c.cli(0, &["vm", "get", "nope"]);
    assert!(!missing.success && missing.stderr.contains("no VM named"), "{}", missing.stderr);
    let missing = c.cli(2, &["vm", "delete", "nope"]);
    assert!(!missing.success && missing.stderr.contains("no VM named"), "{}", missing.stderr);

    // The client config that holds this cluster's admin token is not
    // overwritten by accident; forced, the node still refuses a second init.
    let again = c.cli(0, &["cluster", "init"]);
    assert!(!again.success && again.stderr.contains("pass --force to overwrite"), "{}", again.stderr);
    let again = c.cli(0, &["cluster", "init", "--force"]);
    assert!(!again.success && again.stderr.contains("already part of cluster"), "{}", again.stderr);

    // With the cluster's credentials, to a port where nothing listens.
    let config = kvmesh_tests::client_config_for(&c.addr(0)).expect("registered");
    kvmesh_tests::register_client_config("127.0.0.1:1", &config);
    let unreachable = run_cli("127.0.0.1:1", &["cluster", "status"]);
    assert!(!unreachable.success && unreachable.stderr.contains("cannot reach kvmesh"), "{}", unreachable.stderr);
    assert_eq!(unreachable.stderr.trim().lines().count(), 1, "one line: {}", unreachable.stderr);

    // Nothing changed.
    assert_eq!(c.vm_names(0)?, vec!["web".to_string()]);
    c.cli_ok(2, &["vm", "delete", "web", "--yes"])?;
    wait_for("delete replicated", Duration::from_secs(10), || c.vm_names(0).ok()?.is_empty().then_some(()))?;
    Ok(())
}

#[test]
fn joins_with_taken_name_or_address_are_refused() -> Result<()> {
    let mut c = Cluster::three()?;
    let first = c.addr(0);
    // Same name as n2, fresh data dir: refused, the process exits with the reason.
    let i = c.spawn("n2", Some(&first), &[])?;
    let code = c.nodes[i].wait_exit(Duration::from_secs(30))?;
    assert_ne!(code, Some(0));
    assert!(c.log_text(i).contains("already taken"), "{}", c.log_text(i));
    c.wait_members(0, 3, 3)?;
    assert_eq!(c.cli_ok(0, &["node", "list"])?.as_array().unwrap().len(), 3);
    Ok(())
}

#[test]
fn fourth_node_is_a_learner_and_removal_keeps_three_voters() -> Result<()> {
    let mut c = Cluster::three()?;
    let first = c.addr(0);
    c.spawn("n4", Some(&first), &[])?;
    let s = c.wait_members(0, 3, 4)?;
    let n4 = s["members"].as_array().unwrap().iter().find(|m| m["name"] == "n4").unwrap().clone();
    assert_eq!(n4["role"], "learner");
    // The learner has the full state.
    c.cli_ok(0, &["vm", "create", "on-learner-check", "--memory", "64"])?;
    wait_for("learner replica", Duration::from_secs(10), || (c.vm_names(3).ok()?.len() == 1).then_some(()))?;

    // A node with VMs is not removed without --force.
    let with_vm = c.cli_ok(0, &["vm", "get", "on-learner-check"])?["node"].as_str().unwrap().to_string();
    let r = c.cli(1, &["cluster", "remove", &with_vm]);
    assert!(!r.success && r.stderr.contains("--force"), "{}", r.stderr);
    c.cli_ok(1, &["vm", "delete", "on-learner-check", "--yes"])?;
    // A delete finishes when the host reports the domain gone.
    wait_for("the VM to be gone", Duration::from_secs(10), || c.vm_names(1).ok()?.is_empty().then_some(()))?;

    // Remove a voter: the learner is promoted, the removed process stops.
    let leader = c.leader()?;
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_name = c.nodes[victim].name.clone();
    c.cli_ok(leader, &["cluster", "remove", &victim_name])?;
    let s = c.wait_members(leader, 3, 3)?;
    assert!(s["members"].as_array().unwrap().iter().all(|m| m["name"] != victim_name.as_str()));
    assert!(s["members"].as_array().unwrap().iter().any(|m| m["name"] == "n4" && m["role"] == "voter"));
    // Non-zero, so `Restart=on-failure` does not bring it back as it is,
    // and saying how to rejoin.
    let code = c.nodes[victim].wait_exit(Duration::from_secs(15))?;
    assert_eq!(code, Some(1));
    let log = c.log_text(victim);
    assert!(log.contains("was removed") && log.contains("--join"), "{log}");
    let nodes = c.cli_ok(leader, &["node", "list"])?;
    assert_eq!(nodes.as_array().unwrap().len(), 3);

    let unknown = c.cli(leader, &["cluster", "remove", "nobody"]);
    assert!(!unknown.success && unknown.stderr.contains("no node named"), "{}", unknown.stderr);
    Ok(())
}

#[test]
fn the_last_voter_cannot_be_removed() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("solo", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let r = c.cli(0, &["cluster", "remove", "solo"]);
    assert!(!r.success && r.stderr.contains("last voter"), "{}", r.stderr);
    assert!(c.nodes[0].is_running());
    Ok(())
}

#[test]
fn snapshot_compacts_the_log_and_a_new_node_joins_through_it() -> Result<()> {
    let mut c = Cluster::new();
    c.config_toml = "[raft]\nsnapshot_every = 20\nkeep_logs = 0\n".into();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    for i in 0..40 {
        c.cli_ok(0, &["vm", "create", &format!("s-{i}"), "--memory", "16"])?;
    }
    let s = wait_for("log purged", Duration::from_secs(20), || {
        let s = c.status(0).ok()?;
        (s["purged_index"].as_u64()? >= 20).then_some(s)
    })?;
    assert!(s["snapshot_index"].as_u64().unwrap() >= 20);
    // The entries the new node needs are gone: it can only get them by snapshot.
    let first = c.addr(0);
    c.spawn("n2", Some(&first), &[])?;
    c.wait_members(0, 2, 2)?;
    wait_for("state on the new node", Duration::from_secs(20), || (c.vm_names(1).ok()?.len() == 40).then_some(()))?;
    let s2 = c.status(1)?;
    assert!(s2["snapshot_index"].as_u64().unwrap_or(0) >= 20, "installed a snapshot: {s2}");
    // And it survives a restart from that snapshot.
    c.restart(1)?;
    wait_for("state after restart", Duration::from_secs(20), || (c.vm_names(1).ok()?.len() == 40).then_some(()))?;
    Ok(())
}

/// With the leader SIGSTOPped (alive to the kernel, silent to everyone), a
/// create sent to a follower waits out the election and lands through the
/// new leader on a host that answers — not a bare "Timeout expired", and
/// not on the stopped host.
#[test]
fn a_create_through_a_follower_survives_a_stopped_leader() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let via = (leader + 1) % 3;
    c.cli_ok(via, &["vm", "create", "before", "--memory", "64"])?;
    let stopped = c.nodes[leader].name.clone();
    c.nodes[leader].signal("STOP");
    let started = std::time::Instant::now();
    let r = c.cli(via, &["vm", "create", "during", "--memory", "64"]);
    let took = started.elapsed();
    c.nodes[leader].signal("CONT");
    assert!(r.success, "create during a leader stall failed after {took:?}: {}", r.stderr);
    let vm = c.vm(via, "during")?;
    assert_ne!(vm["node"], stopped.as_str(), "placed on the stopped host: {vm}");
    // Exactly one VM of that name, on every replica, once the old leader is back.
    for i in 0..3 {
        wait_for("both VMs on every replica", Duration::from_secs(15), || {
            (c.vm_names(i).ok()? == vec!["before".to_string(), "during".to_string()]).then_some(())
        })?;
    }
    Ok(())
}

/// `serve --join` through a follower while the leader is stalled: the join
/// is retried until a new leader takes it, within the join deadline.
#[test]
fn a_join_through_a_follower_survives_a_stopped_leader() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let via = c.addr((leader + 1) % 3);
    c.nodes[leader].signal("STOP");
    let joined = c.spawn("n4", Some(&via), &[]);
    let members = joined.and_then(|_| c.wait_members((leader + 1) % 3, 3, 4));
    c.nodes[leader].signal("CONT");
    let members = members?;
    assert!(members["members"].as_array().unwrap().iter().any(|m| m["name"] == "n4"), "{members}");
    Ok(())
}
