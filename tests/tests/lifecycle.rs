//! Node lifecycle with real node processes (libvirt's test driver): a
//! restart on another address, removals while down or up, forged removal
//! notices, refused joins, node records changed through Raft, and a full
//! disk. Each case once ran a VM twice, lost the leader or wedged a node.
//! The real-guest versions of the removal and drain cases are in
//! `node_lifecycle.rs` (the testbed).

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use kvmesh_tests::{free_port, wait_for, Cluster};
use serde_json::Value;

fn member<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["members"].as_array()?.iter().find(|m| m["name"] == name)
}

/// Creates a VM on `host`: it requires a label of its own that only `host`
/// has at first; the other nodes get it afterwards, so it may restart
/// anywhere (a pin would keep an HA VM from restarting elsewhere).
fn prefer(c: &Cluster, via: usize, host: &str, vm: &str, extra: &[&str]) -> Result<()> {
    let label = format!("for-{vm}=yes");
    c.cli_ok(via, &["node", "set", host, "--label", &label])?;
    let mut args = vec!["vm", "create", vm, "--memory", "64", "--node-label", &label, "--wait"];
    args.extend_from_slice(extra);
    let created = c.cli_ok(via, &args)?;
    for other in c.nodes.iter().map(|n| n.name.clone()).filter(|n| n != host) {
        let _ = c.cli(via, &["node", "set", &other, "--label", &label]);
    }
    anyhow::ensure!(created["node"] == host, "{vm} landed on {} instead of {host}", created["node"]);
    Ok(())
}

fn follower(c: &mut Cluster) -> Result<usize> {
    let leader = c.leader()?;
    Ok((0..c.nodes.len()).find(|i| *i != leader).expect("three nodes"))
}

#[test]
fn a_node_restarted_on_another_address_is_recorded_there_before_it_leads() -> Result<()> {
    let mut c = Cluster::three()?;
    let moved = follower(&mut c)?;
    let name = c.nodes[moved].name.clone();
    c.nodes[moved].kill();
    let old = c.nodes[moved].address.clone();
    c.nodes[moved].address = format!("127.0.0.1:{}", free_port());
    let new = c.nodes[moved].address.clone();
    c.restart(moved)?;
    // The cluster records the new address (membership and node record) ...
    let other = (moved + 1) % 3;
    wait_for("the new address in the membership", Duration::from_secs(30), || {
        let s = c.status(other).ok()?;
        (member(&s, &name)?["address"] == new.as_str()).then_some(())
    })?;
    wait_for("the new address in the node record", Duration::from_secs(10), || {
        let nodes = c.cli_ok(other, &["node", "list"]).ok()?;
        nodes.as_array()?.iter().any(|n| n["name"] == name.as_str() && n["address"] == new.as_str()).then_some(())
    })?;
    assert!(c.log_text(moved).contains("asking the cluster to record it"));
    wait_for("the moved node to campaign again", Duration::from_secs(10), || {
        c.log_text(moved).contains("campaigning allowed again").then_some(())
    })?;
    // ... and the moved node is a working member again: it serves writes,
    // and once its old leader dies the cluster still elects a reachable one.
    c.cli_ok(moved, &["vm", "create", "after-move", "--memory", "64"])?;
    let leader = c.leader()?;
    if leader != moved {
        c.nodes[leader].kill();
    }
    let alive: Vec<usize> = (0..3).filter(|i| c.nodes[*i].is_running()).collect();
    wait_for("a leader every live node reaches", Duration::from_secs(30), || {
        alive.iter().all(|i| c.cli(*i, &["vm", "create", &format!("w{i}"), "--memory", "16"]).success).then_some(())
    })?;
    // No host was declared down along the way (nobody fenced for nothing).
    let events = c.cli(moved, &["events"]).stdout;
    let downs: Vec<&str> =
        events.lines().filter(|l| l.contains("node-down") && !l.contains(&c.nodes[leader].name)).collect();
    assert!(downs.is_empty(), "{downs:?}");
    assert!(!events.contains(&old) || events.contains(&new), "{events}");
    Ok(())
}

/// A `Raft/Removed` notice is a hint to ask the leader, never an order: a
/// forged one (wrong cluster, or right cluster but not removed) stops nothing.
#[test]
fn a_forged_removed_notice_stops_nothing() -> Result<()> {
    let mut c = Cluster::three()?;
    let victim = follower(&mut c)?;
    let id = c.node_id(victim)?;
    let cluster_id = c.status(victim)?["cluster_id"].as_str().unwrap_or_default().to_string();
    let rt = tokio::runtime::Runtime::new()?;
    // Sent with another member's certificate: only nodes reach Raft at all.
    let other = c.nodes[(victim + 1) % 3].data_dir.clone();
    let send = |cluster: &str| -> std::result::Result<(), tonic::Status> {
        let address = c.addr(victim);
        let notice = kvmesh_proto::RemovedNotice { node_id: id, cluster_id: cluster.to_string() };
        rt.block_on(async {
            let channel = kvmesh_tests::node_channel(&address, &other)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut client = kvmesh_proto::raft_client::RaftClient::new(channel);
            client.removed(notice).await.map(|_| ())
        })
    };
    let bogus = send("bogus").expect_err("a notice from another cluster is refused");
    assert_eq!(bogus.code(), tonic::Code::PermissionDenied, "{bogus:?}");
    send(&cluster_id).expect("a well-formed notice is taken as a hint");
    std::thread::sleep(Duration::from_secs(3));
    assert!(c.nodes[victim].is_running(), "a forged notice stopped a healthy voter: {}", c.log_text(victim));
    assert!(c.log_text(victim).contains("asking the leader"));
    let s = c.wait_members(victim, 3, 3)?;
    assert!(member(&s, &c.nodes[victim].name).is_some_and(|m| m["role"] == "voter"));
    Ok(())
}

#[test]
fn a_node_removed_while_down_comes_back_as_nothing_and_can_rejoin() -> Result<()> {
    let mut c = Cluster::three()?;
    let gone = follower(&mut c)?;
    let gone_name = c.nodes[gone].name.clone();
    let keeper = (0..3).find(|i| *i != gone).unwrap();
    prefer(&c, keeper, &gone_name, "ha1", &["--ha"])?;
    prefer(&c, keeper, &gone_name, "plain1", &[])?;
    c.nodes[gone].kill();
    c.cli_ok(keeper, &["cluster", "remove", &gone_name, "--force", "--yes"])?;
    c.wait_members(keeper, 3, 3).ok();
    // The HA VM restarts elsewhere once the host was silent for down_after;
    // the other one waits for an operator.
    let ha = c.wait_vm_state(keeper, "ha1", "running", Duration::from_secs(30))?;
    assert_ne!(ha["node"], gone_name.as_str());
    assert_eq!(c.vm(keeper, "plain1")?["state"], "host-down");

    // The removed node starts again from its old data dir (Restart=always):
    // it learns it was removed, starts nothing, exits non-zero.
    let before = c.log_text(gone).len();
    c.restart(gone)?;
    let code = c.nodes[gone].wait_exit(Duration::from_secs(30))?;
    assert_eq!(code, Some(1));
    let log = c.log_text(gone)[before..].to_string();
    assert!(log.contains("was removed"), "{log}");
    assert!(!log.contains("defining and starting domain") && !log.contains("starting domain"), "{log}");

    // `vm recover` moves the other VM; it runs once, elsewhere.
    c.cli_ok(keeper, &["vm", "recover", "plain1"])?;
    let plain = c.wait_vm_state(keeper, "plain1", "running", Duration::from_secs(20))?;
    assert_ne!(plain["node"], gone_name.as_str());

    // The README's rejoin: the same path, emptied, with --join.
    let dir = c.nodes[gone].data_dir.clone();
    std::fs::remove_dir_all(&dir)?;
    let join = c.addr(keeper);
    c.retry_join(gone, &gone_name, &join)?;
    wait_for("the rejoined node listed up", Duration::from_secs(30), || {
        let nodes = c.cli_ok(keeper, &["node", "list"]).ok()?;
        nodes.as_array()?.iter().any(|n| n["name"] == gone_name.as_str() && n["state"] == "up").then_some(())
    })?;
    Ok(())
}

/// With two voters, a dead one cannot be removed: the change would have to
/// commit in the old configuration too. Refused at once, saying so, rather
/// than timing out.
#[test]
fn removing_the_dead_one_of_two_voters_is_refused_with_the_reason() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    c.spawn("n2", Some(&first), &[])?;
    c.wait_members(0, 2, 2)?;
    c.nodes[1].kill();
    let r = c.cli(0, &["cluster", "remove", "n2", "--force", "--yes"]);
    assert!(!r.success && r.stderr.contains("majority of the current 2 voters"), "{}", r.stderr);
    Ok(())
}

#[test]
fn force_removing_a_live_node_has_it_remove_its_guests_and_exit() -> Result<()> {
    let mut c = Cluster::three()?;
    let gone = follower(&mut c)?;
    let gone_name = c.nodes[gone].name.clone();
    let leader = c.leader()?;
    prefer(&c, leader, &gone_name, "ha2", &["--ha"])?;
    c.cli_ok(leader, &["cluster", "remove", &gone_name, "--force", "--yes"])?;
    let code = c.nodes[gone].wait_exit(Duration::from_secs(20))?;
    assert_eq!(code, Some(1));
    let log = c.log_text(gone);
    assert!(log.contains("destroying and undefining"), "{log}");
    let ha = c.wait_vm_state(leader, "ha2", "running", Duration::from_secs(30))?;
    assert_ne!(ha["node"], gone_name.as_str());
    Ok(())
}

#[test]
fn a_refused_join_can_be_retried_under_another_name_from_the_same_dir() -> Result<()> {
    let mut c = Cluster::three()?;
    let first = c.addr(0);
    let i = c.spawn("n2", Some(&first), &[])?;
    assert_ne!(c.nodes[i].wait_exit(Duration::from_secs(30))?, Some(0));
    assert!(c.log_text(i).contains("already taken"));
    c.retry_join(i, "n4", &first)?;
    c.wait_members(0, 3, 4)?;
    let nodes = c.cli_ok(0, &["node", "list"])?;
    assert!(nodes.as_array().unwrap().iter().any(|n| n["name"] == "n4"));
    Ok(())
}

#[test]
fn node_set_changes_capacity_and_labels_through_raft_and_never_below_what_is_placed() -> Result<()> {
    let mut c = Cluster::three()?;
    let r = c.cli_ok(0, &["node", "set", "n2", "--cpus", "32", "--memory-mib", "8192", "--label", "rack=r2"])?;
    assert_eq!((r["cpus"].as_u64(), r["memory_mib"].as_u64()), (Some(32), Some(8192)));
    // Replicated: another node shows it, and the scheduler uses it.
    wait_for("the change on n3", Duration::from_secs(10), || {
        let n = c.cli_ok(2, &["node", "get", "n2"]).ok()?;
        (n["cpus"] == 32 && n["labels"]["rack"] == "r2").then_some(())
    })?;
    c.cli_ok(0, &["vm", "create", "big", "--memory", "6000", "--node-label", "rack=r2"])?;
    assert_eq!(c.vm(0, "big")?["node"], "n2");

    // Shrinking below what is placed, or dropping a label a VM needs: refused
    // with the reasons, and nothing changes.
    let r = c.cli(1, &["node", "set", "n2", "--memory-mib", "4096"]);
    assert!(!r.success && r.stderr.contains("6000 MiB are placed on it"), "{}", r.stderr);
    let r = c.cli(1, &["node", "set", "n2", "--unlabel", "rack"]);
    assert!(!r.success && r.stderr.contains("requires the label rack=r2"), "{}", r.stderr);
    let n = c.cli_ok(0, &["node", "get", "n2"])?;
    assert_eq!((n["memory_mib"].as_u64(), n["labels"]["rack"].as_str()), (Some(8192), Some("r2")));
    let r = c.cli(0, &["node", "set", "nobody", "--cpus", "2"]);
    assert!(!r.success && r.stderr.contains("no node named"), "{}", r.stderr);
    let r = c.cli(0, &["node", "set", "n2"]);
    assert!(!r.success && r.stderr.contains("nothing to change"), "{}", r.stderr);

    // A restart with other flags proposes them (labels are added).
    let n2 = (0..3).find(|i| c.nodes[*i].name == "n2").unwrap();
    c.nodes[n2].extra_args = ["--cpus", "48", "--memory-mib", "12288", "--label", "zone=z1"].map(String::from).into();
    c.restart(n2)?;
    wait_for("the restart's flags in the record", Duration::from_secs(30), || {
        let n = c.cli_ok(0, &["node", "get", "n2"]).ok()?;
        (n["cpus"] == 48 && n["memory_mib"] == 12288 && n["labels"]["zone"] == "z1" && n["labels"]["rack"] == "r2")
            .then_some(())
    })?;
    // Flags that would not fit are refused and logged; the record stays.
    c.nodes[n2].extra_args = ["--memory-mib", "1024"].map(String::from).into();
    c.restart(n2)?;
    wait_for("the refusal in the log", Duration::from_secs(30), || {
        c.log_text(n2).contains("flags were not applied").then_some(())
    })?;
    assert_eq!(c.cli_ok(0, &["node", "get", "n2"])?["memory_mib"], 12288);
    Ok(())
}

/// A full disk is a storage error: the node stops serving and exits
/// non-zero (so `Restart=on-failure` restarts it once there is room), and
/// its data stays as it was.
#[test]
fn a_full_disk_stops_a_follower_with_a_non_zero_exit() -> Result<()> {
    let mut c = Cluster::three()?;
    // The harness puts node `full` (the fourth spawn) in <dir>/full-3.
    let Some(_unmount) = small_disk(&c.dir.path().join(format!("full-{}", c.nodes.len())))? else { return Ok(()) };
    let first = c.addr(0);
    let i = c.spawn("full", Some(&first), &[])?;
    c.wait_members(0, 3, 4)?;
    let full = c.addr(i);
    fill(&c, &mut |_| !kvmesh_tests::listening(&full));
    let code = c.nodes[i].wait_exit(Duration::from_secs(5))?;
    assert_ne!(code, Some(0), "a storage failure must exit non-zero");
    let log = c.log_text(i);
    assert!(log.contains("No space left on device") || log.contains("raft stopped"), "{log}");
    // The rest of the cluster goes on.
    c.cli_ok(0, &["vm", "create", "after-full", "--memory", "1"])?;
    Ok(())
}

/// The leader's disk fills while it proposes: the client hears that the
/// outcome is unknown (the followers may have committed it), never that it
/// failed; the leader exits non-zero and the others go on with a new one.
#[test]
fn a_full_disk_on_the_leader_reports_an_unknown_outcome_not_a_failure() -> Result<()> {
    let mut c = Cluster::new();
    let Some(_unmount) = small_disk(&c.dir.path().join("n1-0"))? else { return Ok(()) };
    c.spawn("n1", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    c.spawn("n2", Some(&first), &[])?;
    c.spawn("n3", Some(&first), &[])?;
    c.wait_members(0, 3, 3)?;
    let (n, stderr) = fill(&c, &mut |_| false).expect("the leader never hit the full disk");
    assert!(stderr.contains("outcome of this write is unknown"), "{stderr}");
    let code = c.nodes[0].wait_exit(Duration::from_secs(15))?;
    assert_ne!(code, Some(0));
    // The others elect a leader; the write is there or not, and either is
    // consistent with "unknown".
    let vm = wait_for("a new leader serving reads", Duration::from_secs(30), || {
        c.cli_ok(1, &["vm", "get", "filler", "--consistent"]).ok()
    })?;
    let description = vm["description"].as_str().unwrap_or_default();
    assert!(description.starts_with(&format!("{n:04}")) || description.starts_with(&format!("{:04}", n - 1)));
    Ok(())
}

/// A 4 MiB tmpfs mounted at `dir` (unmounted when the guard drops), or
/// `None` without root (the test is then skipped; scripts/test.sh runs as root).
fn small_disk(dir: &std::path::Path) -> Result<Option<Unmount>> {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (scripts/test.sh runs as root)");
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(dir).status()?;
    anyhow::ensure!(mounted.success(), "mount tmpfs on {}", dir.display());
    Ok(Some(Unmount(dir.to_path_buf())))
}

/// Writes 4 KB descriptions through node 0 until a write fails (returns
/// its number and error) or `stop` says so.
fn fill(c: &Cluster, stop: &mut dyn FnMut(&Cluster) -> bool) -> Option<(usize, String)> {
    c.cli_ok(0, &["vm", "create", "filler", "--memory", "1"]).ok()?;
    for n in 0..3000 {
        let text = format!("{n:04}{}", "x".repeat(4000));
        let r = c.cli(0, &["vm", "set", "filler", "--description", &text]);
        if !r.success {
            return Some((n, r.stderr));
        }
        if stop(c) {
            return None;
        }
    }
    None
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
