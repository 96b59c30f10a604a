//! Faults in the middle of a live migration, on the testbed with real
//! QEMU/TCG guests (disks on the shared domain). Migrations are slowed down
//! (`--bandwidth 4`: 4 MiB/s, some 25 s for the test guest) so that each
//! fault lands while the memory is still being copied: the source host
//! killed, the target host killed, the target host cut off, the source's
//! daemon stopped for 20 s, and the leader's daemon killed.
//!
//! Throughout, `virsh list --state-running` of every host is sampled every
//! 0.2 s: no guest may ever run on two hosts. At the end of each case the
//! VM runs exactly once, and where its source survived, it never rebooted.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use kvmesh_tests::testbed::{
    addr, cli, guest_with, hosts_running, shared_guest, signal, testbed, up3, virsh_on, HOSTS,
};
use kvmesh_tests::{run_cli, wait_for};

/// The hosts where `domain` is running (not paused) at one instant, by virsh.
fn running_hosts(domain: &str) -> Vec<&'static str> {
    hosts_running(domain, &HOSTS)
}

/// Samples every 0.2 s until `done` (or `timeout`), failing on any sample
/// with `domains` running on two hosts.
fn sample(what: &str, domains: &[&str], timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        for d in domains {
            let on = running_hosts(d);
            if on.len() > 1 {
                bail!("while waiting for {what}: {d} ran on {on:?} at once");
            }
        }
        if done() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let at: Vec<_> = domains.iter().map(|d| (d, running_hosts(d))).collect();
            bail!("timed out after {timeout:?} waiting for {what}; running: {at:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A host whose daemon answers (daemons are killed and stopped here).
fn via() -> &'static str {
    let answers = |h: &&str| run_cli(&addr(h), &["cluster", "status"]).success;
    HOSTS.iter().copied().find(answers).unwrap_or("h1")
}

/// The guest's serial counter and its disk line, from its console.
fn guest_count(name: &str) -> Option<(u64, String)> {
    let r = run_cli(&addr(via()), &["vm", "console", name, "-o", "json"]);
    let mut data = r.json().ok()?["data"].as_str()?.to_string();
    // Only whole lines: the guest may be in the middle of printing one.
    data.truncate(data.rfind('\n')? + 1);
    let up = data.lines().rev().find_map(|l| l.trim().strip_prefix("KVMESH-TEST-GUEST-UP "))?.to_string();
    let disk = data.lines().rev().find(|l| l.starts_with("KVMESH-DISK "))?.trim().to_string();
    Some((up.split_whitespace().next()?.parse().ok()?, disk))
}

/// The host's state as another host records it, if the leader heard from
/// it lately: right after a restart, a host's own replica is behind, and a
/// host still recorded `up` may yet be declared down.
fn node_state(host: &str) -> Option<String> {
    let other = HOSTS.iter().find(|h| **h != host && run_cli(&addr(h), &["cluster", "status"]).success)?;
    let nodes = run_cli(&addr(other), &["node", "list"]).json().ok()?;
    let n = nodes.as_array()?.iter().find(|n| n["name"] == host)?.clone();
    if n["heartbeat_age_ms"].as_u64()? > 1500 {
        return None;
    }
    n["state"].as_str().map(str::to_string)
}

fn vm_field(name: &str, field: &str) -> Option<serde_json::Value> {
    let v = run_cli(&addr(via()), &["vm", "get", name]).json().ok()?;
    Some(v[field].clone())
}

/// A guest with a disk on the shared domain, on `host`, counting.
fn guest(host: &str, name: &str, ha: bool) -> Result<(String, (u64, String))> {
    let d = guest_with(host, name, ha, &["--disk", "64M@shared"])?;
    let seen = wait_for("the guest counting", Duration::from_secs(60), || guest_count(name).filter(|g| g.0 >= 1))?;
    Ok((d, seen))
}

/// Begins a slow live migration and waits until the target holds the
/// incoming (paused) domain: the memory is being copied.
fn begin_slow(name: &str, domain: &str, to: &str) -> Result<()> {
    cli(via(), &["vm", "migrate", name, "--to", to, "--bandwidth", "4"])?;
    wait_for("the target receiving the guest", Duration::from_secs(20), || {
        virsh_on(to, &["list", "--all", "--name"]).lines().any(|l| l.trim() == domain).then_some(())
    })?;
    // `vm get` shows how far it is and what it copies, from the source's libvirt.
    wait_for("the migration's progress", Duration::from_secs(10), || {
        let p = vm_field(name, "migration_progress")?;
        let copying = p["phase"].as_str()?.starts_with("copying memory");
        (copying && p["data_total"].as_u64()? > 0 && p["data_remaining"].as_u64()? > 0).then_some(())
    })?;
    Ok(())
}

fn wait_up(host: &str) -> Result<()> {
    wait_for(&format!("{host} up"), Duration::from_secs(90), || (node_state(host)? == "up").then_some(()))
}

fn leader() -> Option<String> {
    let s = run_cli(&addr(via()), &["cluster", "status"]).json().ok()?;
    s["leader"]["name"].as_str().map(str::to_string)
}

#[test]
fn faults_during_a_live_migration_never_run_a_guest_twice_or_lose_it() -> Result<()> {
    let _testbed = up3()?;
    shared_guest()?;
    cli("h1", &["cluster", "policy", "set", "spread", "--cpu-overcommit", "16"])?;

    // 1. The source host dies mid-migration: the HA VM runs again once,
    //    on a survivor; the target's paused copy never runs beside it.
    let (ca, _) = guest("h3", "ca", true)?;
    begin_slow("ca", &ca, "h2")?;
    testbed(&["kill-host", "h3"])?;
    sample("ca running once on a survivor", &[&ca], Duration::from_secs(60), || {
        let on = running_hosts(&ca);
        on.len() == 1 && on[0] != "h3"
    })?;
    ensure!(vm_field("ca", "migrating_to").is_some_and(|m| m.is_null()), "the migration was not aborted");
    testbed(&["start-host", "h3"])?;
    wait_up("h3")?;

    // 2. The target host dies mid-migration: the guest runs on at the
    //    source, never rebooted.
    let (cb, before) = guest("h2", "cb", true)?;
    begin_slow("cb", &cb, "h3")?;
    testbed(&["kill-host", "h3"])?;
    sample("the migration of cb aborted", &[&cb], Duration::from_secs(60), || {
        vm_field("cb", "migrating_to").is_some_and(|m| m.is_null())
    })?;
    sample("cb counting on at the source", &[&cb], Duration::from_secs(30), || {
        running_hosts(&cb) == ["h2"] && guest_count("cb").is_some_and(|g| g.0 > before.0 + 1)
    })?;
    ensure!(guest_count("cb").is_some_and(|g| g.1 == before.1), "cb rebooted: {:?}", guest_count("cb"));
    testbed(&["start-host", "h3"])?;
    wait_up("h3")?;

    // 3. The target host is cut off mid-migration: the same.
    let (ce, before) = guest("h2", "ce", true)?;
    begin_slow("ce", &ce, "h3")?;
    testbed(&["partition", "h3"])?;
    let cut_off = sample("the migration of ce aborted", &[&ce], Duration::from_secs(60), || {
        vm_field("ce", "migrating_to").is_some_and(|m| m.is_null())
    });
    let counted = cut_off.and_then(|()| {
        sample("ce counting on at the source", &[&ce], Duration::from_secs(30), || {
            running_hosts(&ce) == ["h2"] && guest_count("ce").is_some_and(|g| g.0 > before.0 + 1)
        })
    });
    testbed(&["heal", "h3"])?;
    counted?;
    ensure!(guest_count("ce").is_some_and(|g| g.1 == before.1), "ce rebooted: {:?}", guest_count("ce"));
    wait_up("h3")?;

    // 4. The source's daemon stopped for 20 s mid-migration: whatever
    //    happens to the migration, the HA VM ends up running once.
    let (cd, _) = guest("h3", "cd", true)?;
    begin_slow("cd", &cd, "h1")?;
    signal("h3", "daemon", "STOP")?;
    let stopped = sample("20 s with h3's daemon stopped", &[&cd], Duration::from_secs(25), {
        let at = Instant::now();
        move || at.elapsed() >= Duration::from_secs(20)
    });
    signal("h3", "daemon", "CONT")?;
    stopped?;
    sample("cd running once, its migration settled", &[&cd], Duration::from_secs(60), || {
        running_hosts(&cd).len() == 1 && vm_field("cd", "migrating_to").is_some_and(|m| m.is_null())
    })?;
    wait_up("h3")?;

    // 5. The leader's daemon killed mid-migration between the two other
    //    hosts: the migration completes, a new leader records it, and the
    //    guest runs on the target, never rebooted.
    let lead = leader().unwrap_or_else(|| "h1".into());
    let others: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != lead).collect();
    let (cc, before) = guest(others[0], "cc", false)?;
    begin_slow("cc", &cc, others[1])?;
    signal(&lead, "daemon", "KILL")?;
    sample("cc running on its target", &[&cc], Duration::from_secs(120), || {
        running_hosts(&cc) == [others[1]] && vm_field("cc", "node").is_some_and(|n| n == others[1])
    })?;
    wait_for("cc counting on", Duration::from_secs(30), || {
        guest_count("cc").filter(|g| g.0 > before.0 && g.1 == before.1)
    })?;
    testbed(&["start-daemon", &lead])?;
    wait_up(&lead)?;

    // 6. The source's daemon killed mid-migration and started again at
    //    once: it asks its libvirt what became of the migration (libvirt
    //    drives a peer-to-peer migration on without its client) and settles
    //    it from that; the guest never reboots and runs once.
    let lead = leader().unwrap_or_else(|| "h1".into());
    let others: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != lead).collect();
    let (cf, before) = guest(others[0], "cf", true)?;
    begin_slow("cf", &cf, others[1])?;
    signal(others[0], "daemon", "KILL")?;
    testbed(&["start-daemon", others[0]])?;
    sample("cf's migration settled", &[&cf], Duration::from_secs(120), || {
        vm_field("cf", "migrating_to").is_some_and(|m| m.is_null()) && running_hosts(&cf).len() == 1
    })?;
    let ended = running_hosts(&cf);
    sample("cf counting on where it ended", &[&cf], Duration::from_secs(30), || {
        guest_count("cf").is_some_and(|g| g.0 > before.0 + 1)
    })?;
    ensure!(guest_count("cf").is_some_and(|g| g.1 == before.1), "cf rebooted: {:?}", guest_count("cf"));
    let events = run_cli(&addr(via()), &["events"]).stdout;
    println!("after the source's daemon restarted, cf runs on {ended:?}; {}", {
        events.lines().filter(|l| l.contains("vm cf")).collect::<Vec<_>>().join(" | ")
    });
    ensure!(ended == [others[1]], "cf did not end on its target {}: {ended:?}", others[1]);
    for d in [&ca, &cb, &ce, &cd, &cc, &cf] {
        ensure!(running_hosts(d).len() == 1, "{d} does not run exactly once: {:?}", running_hosts(d));
    }
    Ok(())
}
