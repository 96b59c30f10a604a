//! Node lifecycle on the testbed, with real QEMU/TCG guests: a host that
//! restarts after its guests moved, a drain of a partitioned host, the
//! forced removal of a live host and the rejoin of its emptied data dir,
//! and a host removed while dead that comes back from its old data dir.
//!
//! Throughout, `virsh list` of every host is sampled every 0.2 s: no guest
//! may ever run on two hosts. One test, since only one testbed can exist.

use std::time::Duration;

use anyhow::{ensure, Result};
use kvmesh_tests::testbed::{
    addr, cli, domain, guest_on, log, placement_by_virsh, running_on, sample_for, shared_guest, testbed, up3, vm,
    watch, HOSTS,
};
use kvmesh_tests::{run_cli, wait_for};

fn node_state(via: &str, host: &str) -> Option<String> {
    let nodes = run_cli(&addr(via), &["node", "list"]).json().ok()?;
    let n = nodes.as_array()?.iter().find(|n| n["name"] == host)?.clone();
    n["state"].as_str().map(str::to_string)
}

/// Host `h`'s log since `from` bytes.
fn log_since(h: &str, from: usize) -> String {
    log(h).get(from..).unwrap_or_default().to_string()
}

#[test]
fn restarts_drains_and_removals_never_run_a_guest_twice() -> Result<()> {
    let _teardown = up3()?;
    shared_guest()?;

    // 1. A host restarts after its HA guest was restarted elsewhere: its
    //    stale replica still places the guest on it, and it must not start it.
    let ha = guest_on("h3", "ha", true)?;
    let plain = guest_on("h3", "plain", false)?;
    testbed(&["kill-host", "h3"])?;
    watch("the HA guest to run on a survivor", Duration::from_secs(40), || {
        running_on("h1").contains(&ha) || running_on("h2").contains(&ha)
    })?;
    let mark = log("h3").len();
    testbed(&["start-host", "h3"])?;
    // Its own non-HA guest (still placed on it) does come back, once the
    // host has caught up.
    watch("h3's own guest back on h3", Duration::from_secs(60), || running_on("h3").contains(&plain))?;
    sample_for("a while after the restart", Duration::from_secs(3))?;
    let since = log_since("h3", mark);
    let started: Vec<&str> = since.lines().filter(|l| l.contains("starting domain") && l.contains(&ha)).collect();
    ensure!(started.is_empty(), "h3 started the moved HA guest after its restart: {started:?}");

    // 4. A drain of a partitioned host: its non-HA guest must not start
    //    elsewhere while the host (which never heard of the drain) runs it,
    //    and the drain outlives the partition.
    testbed(&["partition", "h3"])?;
    cli("h1", &["node", "drain", "h3"])?;
    sample_for("down_after and more during the partition", Duration::from_secs(12))?;
    ensure!(running_on("h3").contains(&plain), "the partitioned host stopped its guest on its own");
    ensure!(!running_on("h1").contains(&plain) && !running_on("h2").contains(&plain), "moved during the partition");
    testbed(&["heal", "h3"])?;
    watch("the drained guest to run elsewhere", Duration::from_secs(60), || {
        !running_on("h3").contains(&plain) && (running_on("h1").contains(&plain) || running_on("h2").contains(&plain))
    })?;
    watch("h3 in maintenance after the drain", Duration::from_secs(30), || {
        node_state("h1", "h3").as_deref() == Some("maintenance")
    })?;
    cli("h1", &["node", "activate", "h3"])?;

    // 3. `cluster remove --force` of a live host: it removes its guests
    //    and exits; its HA guest runs elsewhere, never twice.
    let ha2 = guest_on("h3", "ha2", true)?;
    let mark = log("h3").len();
    cli("h1", &["cluster", "remove", "h3", "--force", "--yes"])?;
    watch("h3's kvmesh to exit, its guest gone from it", Duration::from_secs(30), || {
        log_since("h3", mark).contains("error: node h3 is not a member") && !running_on("h3").contains(&ha2)
    })?;
    watch("the HA guest of the removed host elsewhere", Duration::from_secs(40), || {
        running_on("h1").contains(&ha2) || running_on("h2").contains(&ha2)
    })?;

    //    The README's rejoin: the same data dir path, emptied, with --join.
    //    The old identity's libvirt pool (same directory) must not block it.
    std::fs::remove_dir_all(format!("{}/h3/kvmesh", kvmesh_tests::testbed::DIR))?;
    testbed(&["start-host", "h3"])?;
    wait_for("h3 rejoined", Duration::from_secs(60), || {
        (node_state("h1", "h3").as_deref() == Some("up")).then_some(())
    })?;
    // Its guests' kernel lives on the shared domain: usable there once the
    // new identity has proven it shared.
    kvmesh_tests::wait_storage_active(&addr("h1"), "shared", 3)?;

    // 2. A host removed while dead comes back from its old data dir (as
    //    Restart=always would do): it starts nothing and exits.
    let ha3 = guest_on("h3", "ha3", true)?;
    let plain3 = guest_on("h3", "plain3", false)?;
    testbed(&["kill-host", "h3"])?;
    cli("h1", &["cluster", "remove", "h3", "--force", "--yes"])?;
    watch("the dead host's HA guest elsewhere", Duration::from_secs(40), || {
        running_on("h1").contains(&ha3) || running_on("h2").contains(&ha3)
    })?;
    ensure!(vm("h1", "plain3").is_some_and(|v| v["state"] == "host-down"), "{:?}", vm("h1", "plain3"));
    let mark = log("h3").len();
    // It may stop before its port ever answers, which start-host reports.
    let _ = testbed(&["start-host", "h3"]);
    watch("the zombie to exit", Duration::from_secs(30), || {
        log_since("h3", mark).contains("error: node h3 is not a member")
    })?;
    let since = log_since("h3", mark);
    ensure!(!since.contains("starting domain"), "the removed host started a guest: {since}");
    ensure!(running_on("h3").is_empty(), "the removed host runs {:?}", running_on("h3"));
    cli("h1", &["vm", "recover", "plain3"])?;
    watch("the recovered guest elsewhere", Duration::from_secs(40), || {
        running_on("h1").contains(&plain3) || running_on("h2").contains(&plain3)
    })?;
    let by_virsh = placement_by_virsh(&HOSTS);
    ensure!(by_virsh.values().all(|h| h.len() == 1), "{by_virsh:?}");
    for name in ["ha", "plain", "ha2", "ha3", "plain3"] {
        ensure!(by_virsh.contains_key(&domain("h1", name)), "{name} is not running: {by_virsh:?}");
    }
    Ok(())
}
