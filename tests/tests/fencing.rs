//! Fencing that holds when the daemon itself dies or hangs, on the testbed
//! with real QEMU/TCG guests: only the daemon killed, only the daemon
//! stopped, the daemon and the guard killed (the disk lease holds), a lease
//! only libvirt's lock manager sees, the daemon restarted (an upgrade),
//! libvirtd stopped and killed, the data dir's filesystem frozen, and a
//! partition of a host with eight HA guests.
//!
//! Throughout, `virsh list` of every host is sampled every 0.2 s (through
//! `watch`): no guest may ever run on two hosts. One test, since only one
//! testbed can exist.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use kvmesh_tests::testbed::{
    addr, cli, domain, guard_log, guest_on, guest_with, hold_lockd_lease, log, placement_by_virsh, qemu_pid,
    running_on, sample_for, shared_dir, shared_guest, signal, testbed, up3, virtlockd_holds, vm, watch, HOSTS,
};
use kvmesh_tests::{run_cli, wait_for};

/// Where a guest runs, by virsh.
fn hosts_of(domain: &str) -> Vec<String> {
    placement_by_virsh(&HOSTS).remove(domain).unwrap_or_default()
}

/// Runs exactly once, on one of `hosts`.
fn runs_once_on(domain: &str, hosts: &[&str]) -> bool {
    let on = hosts_of(domain);
    on.len() == 1 && hosts.contains(&on[0].as_str())
}

fn node_field(host: &str, field: &str) -> Option<String> {
    let nodes = run_cli(&addr("h1"), &["node", "list"]).json().ok()?;
    let n = nodes.as_array()?.iter().find(|n| n["name"] == host)?.clone();
    n[field].as_str().map(str::to_string)
}

#[test]
fn the_guard_and_the_watchdog_layers_never_let_a_guest_run_twice() -> Result<()> {
    // h3's data dir on a filesystem of its own, so it can be frozen alone.
    std::env::set_var("KVMESH_TESTBED_LOOP", "h3");
    let _testbed = up3()?;
    shared_guest()?;
    // Room for eight more guests on one host (1 vCPU each, TCG).
    cli("h1", &["cluster", "policy", "set", "spread", "--cpu-overcommit", "16"])?;

    // Every host reports its fencing level: the guard runs, no watchdog here.
    // (Run with KVMESH_TESTBED_NODE_ARGS=--unsafe-no-guard to see the
    // daemon-kill case below fail with a double run.)
    let no_guard = std::env::var("KVMESH_TESTBED_NODE_ARGS").is_ok_and(|a| a.contains("--unsafe-no-guard"));
    let level = if no_guard { "daemon-only" } else { "guard-only" };
    wait_for("every host's fencing level", Duration::from_secs(20), || {
        HOSTS.iter().all(|h| node_field(h, "fencing").as_deref() == Some(level)).then_some(())
    })?;

    // 1. A daemon restart (kill -9, start again at once, as an upgrade does)
    //    keeps every guest on the host running, HA or not: same QEMU process.
    let ha = guest_with("h3", "ha", true, &["--disk", "64M@shared"])?;
    let plain = guest_on("h3", "plain", false)?;
    let pids = (qemu_pid("h3", &ha), qemu_pid("h3", &plain));
    ensure!(pids.0.is_some() && pids.1.is_some(), "no QEMU pid files: {pids:?}");
    signal("h3", "daemon", "KILL")?;
    testbed(&["start-daemon", "h3"])?;
    sample_for("a while after the daemon restart", Duration::from_secs(10))?;
    ensure!(
        (qemu_pid("h3", &ha), qemu_pid("h3", &plain)) == pids && running_on("h3").len() == 2,
        "a daemon restart rebooted guests: before {pids:?}, now {:?}, running {:?}\n{}",
        (qemu_pid("h3", &ha), qemu_pid("h3", &plain)),
        running_on("h3"),
        guard_log("h3")
    );

    // 2. Only the daemon killed, for good: the guard kills the HA guests
    //    before the leader restarts them elsewhere; the non-HA guest runs on
    //    where it was, and is not restarted anywhere else.
    let ha_bare = guest_on("h3", "ha-bare", true)?;
    let killed_at = Instant::now();
    signal("h3", "daemon", "KILL")?;
    watch("both HA guests running on a survivor", Duration::from_secs(40), || {
        runs_once_on(&ha, &["h1", "h2"]) && runs_once_on(&ha_bare, &["h1", "h2"])
    })?;
    let took = killed_at.elapsed();
    ensure!(took < Duration::from_secs(13), "the HA guests took {took:?} to run elsewhere (down_after + 5 s)");
    ensure!(guard_log("h3").contains("fenced"), "the guard did not fence: {}", guard_log("h3"));
    sample_for("the non-HA guest staying where it was", Duration::from_secs(4))?;
    ensure!(hosts_of(&plain) == ["h3"], "the non-HA guest moved or stopped: {:?}", hosts_of(&plain));
    let state = vm("h1", "plain").map(|v| v["state"].clone());
    ensure!(state.as_ref().is_some_and(|s| s == "host-down"), "plain's state: {state:?}");
    // The daemon returns: it runs neither HA guest, and keeps its own.
    testbed(&["start-daemon", "h3"])?;
    wait_for("h3 up again", Duration::from_secs(40), || (node_field("h3", "state")? == "up").then_some(()))?;
    sample_for("after the daemon came back", Duration::from_secs(4))?;
    ensure!(running_on("h3") == [plain.clone()], "h3 runs {:?}", running_on("h3"));

    // 3. The daemon stopped (SIGSTOP) for 20 s, then continued: the guard
    //    fenced before the restart elsewhere.
    let ha_stop = guest_on("h3", "ha-stop", true)?;
    let mark = guard_log("h3").len();
    signal("h3", "daemon", "STOP")?;
    watch("the stopped daemon's HA guest on a survivor", Duration::from_secs(40), || {
        runs_once_on(&ha_stop, &["h1", "h2"])
    })?;
    sample_for("the rest of the 20 s stop", Duration::from_secs(20).saturating_sub(Duration::from_secs(12)))?;
    signal("h3", "daemon", "CONT")?;
    ensure!(guard_log("h3")[mark..].contains("fenced"), "the guard did not fence: {}", &guard_log("h3")[mark..]);
    wait_for("h3 up again", Duration::from_secs(40), || (node_field("h3", "state")? == "up").then_some(()))?;
    sample_for("after the continue", Duration::from_secs(4))?;
    ensure!(!running_on("h3").contains(&ha_stop), "h3 runs ha-stop again");

    // 4. The daemon and the guard killed (what the watchdog covers where
    //    there is one): the copy on h3 keeps its disk's lease, so the HA VM
    //    with a shared disk waits for it elsewhere and never runs twice. The
    //    daemon returns without a lease, fences, and the lease frees.
    let ha_disk = guest_with("h3", "ha-disk", true, &["--disk", "64M@shared"])?;
    // Once the leader has heard h3 run it, it can name h3 as the holder.
    wait_for("h3's heartbeat listing ha-disk", Duration::from_secs(10), || {
        vm("h1", "ha-disk").is_some_and(|v| v["observed"] == serde_json::json!(["h3"])).then_some(())
    })?;
    signal("h3", "guard", "KILL")?;
    signal("h3", "daemon", "KILL")?;
    let disk_file = format!("{}/{}-disk0.qcow2", shared_dir(), ha_disk.trim_start_matches("kvmesh-"));
    ensure!(virtlockd_holds("h3", &disk_file), "h3's virtlockd holds no lease on {disk_file}");
    watch("ha-disk waiting for its lease on a survivor", Duration::from_secs(40), || {
        vm("h1", "ha-disk").is_some_and(|v| v["state"] == "waiting-for-lease")
    })?;
    let holder = vm("h1", "ha-disk").map(|v| v["lease_holder"].clone());
    ensure!(holder.as_ref().is_some_and(|h| h == "h3"), "the lease's holder shown: {holder:?}");
    sample_for("the lease held", Duration::from_secs(5))?;
    ensure!(hosts_of(&ha_disk) == ["h3"], "ha-disk runs on {:?}", hosts_of(&ha_disk));
    testbed(&["start-daemon", "h3"])?;
    watch("ha-disk running on a survivor once the lease freed", Duration::from_secs(60), || {
        runs_once_on(&ha_disk, &["h1", "h2"])
    })?;
    wait_for("h3 up again", Duration::from_secs(40), || (node_field("h3", "state")? == "up").then_some(()))?;
    let on = hosts_of(&ha_disk).remove(0);
    ensure!(virtlockd_holds(&on, &disk_file), "{on}'s virtlockd holds no lease on {disk_file}");

    // 4b. libvirt's lock manager on its own: a lease that only virtlockd
    //     sees (held by a host whose QEMU image locks do not reach this one,
    //     as on NFS without them) makes a start wait too, and it goes on
    //     once the lease frees.
    cli("h1", &["vm", "stop", "ha-disk", "--force"])?;
    watch("ha-disk stopped", Duration::from_secs(30), || hosts_of(&ha_disk).is_empty())?;
    wait_for("ha-disk reported stopped", Duration::from_secs(20), || {
        vm("h1", "ha-disk").is_some_and(|v| v["state"] == "stopped").then_some(())
    })?;
    let mut elsewhere = hold_lockd_lease(&disk_file)?;
    cli("h1", &["vm", "start", "ha-disk"])?;
    let refused = watch("ha-disk waiting for virtlockd's lease", Duration::from_secs(30), || {
        vm("h1", "ha-disk").is_some_and(|v| {
            v["state"] == "waiting-for-lease"
                && v["last_error"].as_str().is_some_and(|e| e.contains("Lockspace resource"))
        })
    });
    let sampled = refused.and_then(|()| sample_for("virtlockd's lease held elsewhere", Duration::from_secs(5)));
    let ran = hosts_of(&ha_disk);
    let _ = elsewhere.kill();
    let _ = elsewhere.wait();
    sampled?;
    ensure!(ran.is_empty(), "ha-disk ran on {ran:?} while its lease was held");
    watch("ha-disk running once the lease freed", Duration::from_secs(30), || hosts_of(&ha_disk).len() == 1)?;

    // 5. libvirtd stopped for 25 s: the daemon heartbeats on with its last
    //    list and says libvirt does not answer; nothing restarts elsewhere.
    let ha_lv = guest_on("h3", "ha-lv", true)?;
    let before = placement_by_virsh(&HOSTS);
    signal("h3", "libvirtd", "STOP")?;
    let stopped = watch("h3 reporting that libvirt does not answer", Duration::from_secs(15), || {
        node_field("h3", "problem").is_some_and(|p| p.contains("libvirt"))
    });
    let sampled = stopped.and_then(|()| sample_for("libvirtd stopped", Duration::from_secs(20)));
    let still = hosts_of(&ha_lv);
    signal("h3", "libvirtd", "CONT")?;
    sampled?;
    ensure!(still.is_empty() || still == ["h3"], "ha-lv moved while only libvirtd was stopped: {still:?}");
    ensure!(node_field("h3", "state").as_deref() == Some("up"), "h3 was declared down");
    wait_for("h3's problem cleared", Duration::from_secs(20), || node_field("h3", "problem").is_none().then_some(()))?;
    ensure!(placement_by_virsh(&HOSTS) == before, "guests moved: {before:?} -> {:?}", placement_by_virsh(&HOSTS));

    // 6. libvirtd killed (its guests run on): the host stays up, says so, and
    //    reconciles once libvirtd is back.
    signal("h3", "libvirtd", "KILL")?;
    watch("h3 reporting libvirt gone", Duration::from_secs(15), || {
        node_field("h3", "problem").is_some_and(|p| p.contains("libvirt"))
    })?;
    sample_for("libvirtd dead", Duration::from_secs(12))?;
    ensure!(node_field("h3", "state").as_deref() == Some("up"), "h3 was declared down");
    ensure!(hosts_of(&ha_lv) == ["h3"], "ha-lv must run on h3 alone while libvirtd is dead: {:?}", hosts_of(&ha_lv));
    testbed(&["start-libvirtd", "h3"])?;
    wait_for("h3's problem cleared", Duration::from_secs(30), || node_field("h3", "problem").is_none().then_some(()))?;
    watch("ha-lv running once", Duration::from_secs(30), || hosts_of(&ha_lv).len() == 1)?;
    // Reconciled means its storage is usable again too (probed anew on the
    // reconnect).
    wait_for("h3's storage active again", Duration::from_secs(15), || {
        let s = run_cli(&addr("h1"), &["storage", "get", "shared"]).json().ok()?;
        let h3 = s["hosts"].as_array()?.iter().find(|h| h["node"] == "h3")?.clone();
        (h3["state"] == "active").then_some(())
    })?;

    // 7. h3's data dir frozen (fsfreeze) for 25 s: the daemon either keeps
    //    heartbeating and says so, or falls silent and is fenced by the guard
    //    (which needs no disk); either way nothing runs twice.
    let ha_fz = guest_on("h3", "ha-fz", true)?;
    testbed(&["freeze", "h3"])?;
    let (frozen_at, mut problem) = (Instant::now(), None);
    let sampled = watch("25 s with h3's data dir frozen", Duration::from_secs(30), || {
        problem = problem.take().or_else(|| node_field("h3", "problem"));
        frozen_at.elapsed() >= Duration::from_secs(25)
    });
    let state = node_field("h3", "state");
    testbed(&["thaw", "h3"])?;
    sampled?;
    println!("with its data dir frozen, h3 reported {problem:?}, was {state:?}; ha-fz ran on {:?}", hosts_of(&ha_fz));
    wait_for("h3 up after the thaw", Duration::from_secs(60), || (node_field("h3", "state")? == "up").then_some(()))?;
    watch("ha-fz running once", Duration::from_secs(40), || hosts_of(&ha_fz).len() == 1)?;

    // 8. A partition of a host with eight HA guests: every one is fenced
    //    before any restarts elsewhere (the sampling would catch it).
    let mut many = Vec::new();
    for i in 0..8 {
        // Eight TCG guests booting on two cores slow the host down: place the
        // next one only while the leader hears from it.
        wait_for("h2 heard from lately", Duration::from_secs(30), || {
            let nodes = run_cli(&addr("h1"), &["node", "list"]).json().ok()?;
            let h2 = nodes.as_array()?.iter().find(|n| n["name"] == "h2")?.clone();
            (h2["heartbeat_age_ms"].as_u64()? < 1_500 && h2["problem"].is_null()).then_some(())
        })?;
        many.push(guest_on("h2", &format!("many{i}"), true)?);
    }
    testbed(&["partition", "h2"])?;
    let partitioned = watch("all eight on the majority", Duration::from_secs(60), || {
        many.iter().all(|d| runs_once_on(d, &["h1", "h3"]))
    });
    testbed(&["heal", "h2"])?;
    partitioned?;
    // The guard (or the daemon, whichever came first) killed them all at once.
    let guard = guard_log("h2");
    let line = guard.lines().find(|l| l.contains("fenced [\"")).unwrap_or_default().to_string();
    ensure!(!line.is_empty() || log("h2").contains("fenced"), "h2 did not fence: {guard}");
    println!("fencing on the partitioned host: {line}");
    sample_for("after the heal", Duration::from_secs(5))?;
    // Every guest of the run is back, each exactly once, sampled all along
    // for a double run. Not at one instant: ten TCG guests restarting on
    // two cores can starve a host's heartbeat past fence_after, and the
    // host then fences and restarts its HA guests (safely) once more.
    let names = ["ha", "ha-bare", "ha-stop", "ha-disk", "ha-lv", "ha-fz", "plain"];
    let domains: Vec<String> = names.iter().map(|n| domain("h1", n)).chain(many.iter().cloned()).collect();
    watch("every guest running exactly once", Duration::from_secs(90), || {
        domains.iter().all(|d| hosts_of(d).len() == 1)
    })?;
    Ok(())
}
