//! Live migration on the testbed, with real QEMU/TCG guests whose disks are
//! on the shared domain: bad requests are refused with the VM untouched, a
//! dry run explains the pick, a guest moves (to a named host, then to the
//! scheduler's pick), a drain moves four, and `cluster balance` spreads
//! six packed onto one host, without a reboot: their serial counters and uptimes go on, their
//! disk markers and boot counts stay. A stopped VM moves cold and starts on
//! its new host with its data. Throughout, `virsh list
//! --state-running` of every host is sampled every 0.2 s: the guest never
//! runs on two hosts (the target's copy stays paused until the move is
//! recorded). A guest with a local disk moves with `--copy-storage`, there
//! and back, and then stopped (cold, the target pulling its file).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use kvmesh_tests::testbed::{addr, cli, guest_with, hosts_running, shared_guest, up3, virsh_on, HOSTS};
use kvmesh_tests::{run_cli, wait_for};

/// The hosts where `domain` is running (not paused) at one instant, by virsh.
fn running_hosts(domain: &str) -> Vec<&'static str> {
    hosts_running(domain, &HOSTS)
}

/// What the guest last printed: its counter, its uptime, and its disk line.
#[derive(Debug, Clone, PartialEq)]
struct Guest {
    count: u64,
    uptime: f64,
    disk: String,
}

fn guest_state(name: &str) -> Option<Guest> {
    let r = run_cli(&addr("h3"), &["vm", "console", name, "-o", "json"]);
    let mut data = r.json().ok()?["data"].as_str()?.to_string();
    // Only whole lines: the guest may be in the middle of printing one.
    data.truncate(data.rfind('\n')? + 1);
    let up = data.lines().rev().find_map(|l| l.trim().strip_prefix("KVMESH-TEST-GUEST-UP "))?.to_string();
    let mut words = up.split_whitespace();
    let count = words.next()?.parse().ok()?;
    let uptime = words.next()?.parse().ok()?;
    let disk = data.lines().rev().find(|l| l.starts_with("KVMESH-DISK "))?.trim().to_string();
    Some(Guest { count, uptime, disk })
}

/// Runs `vm migrate ARGS --wait` while sampling every host; the CLI's
/// result and how long the move took.
fn migrate_sampled(domain: &str, args: &[&str]) -> Result<(kvmesh_tests::CliResult, Duration)> {
    let mut full = vec!["vm".to_string(), "migrate".to_string()];
    full.extend(args.iter().map(|a| a.to_string()));
    full.push("--wait".into());
    let started = Instant::now();
    let cli = std::thread::spawn(move || {
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        run_cli(&addr("h1"), &args)
    });
    while !cli.is_finished() {
        let on = running_hosts(domain);
        if on.len() > 1 {
            bail!("{domain} ran on {on:?} at once during the migration");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = cli.join().map_err(|_| anyhow::anyhow!("the CLI thread panicked"))?;
    Ok((result, started.elapsed()))
}

/// Waits until the guest prints again on its new host and checks it went
/// on from `before`: a higher counter, a longer uptime, the same disk.
fn went_on_from(name: &str, before: &Guest) -> Result<Guest> {
    let after = wait_for("the guest printing on its new host", Duration::from_secs(30), || {
        guest_state(name).filter(|g| g.count > before.count)
    })?;
    ensure!(
        after.uptime > before.uptime,
        "the guest rebooted: uptime {} before, {} after",
        before.uptime,
        after.uptime
    );
    ensure!(after.disk == before.disk, "the disk line changed (a reboot?): {:?} -> {:?}", before.disk, after.disk);
    Ok(after)
}

#[test]
fn a_running_guest_moves_live_without_a_reboot_and_never_runs_twice() -> Result<()> {
    // The automatic balance at the end runs every 5 s instead of every minute.
    let config = format!("{}/kvmesh-balance.toml", std::env::temp_dir().display());
    std::fs::write(&config, "balance_every_ms = 5000\n")?;
    std::env::set_var("KVMESH_TESTBED_NODE_ARGS", format!("--config {config}"));
    let _testbed = up3()?;
    shared_guest()?;
    let domain = guest_with("h1", "mig", true, &["--disk", "64M@shared"])?;
    // Up long enough that a reboot would show in its uptime and counter.
    let before =
        wait_for("the guest counting", Duration::from_secs(60), || guest_state("mig").filter(|g| g.count >= 3))?;

    // Bad requests: refused, and the guest runs on where it was.
    for (args, says) in [
        (vec!["vm", "migrate", "mig", "--to", "h1"], "already runs on h1"),
        (vec!["vm", "migrate", "mig", "--to", "h9"], "no node named \"h9\""),
        (vec!["vm", "migrate", "nosuch"], "no VM named"),
    ] {
        let r = run_cli(&addr("h2"), &args);
        ensure!(!r.success && r.stderr.contains(says), "{args:?}: {} / {}", r.stdout, r.stderr);
    }
    ensure!(running_hosts(&domain) == ["h1"], "mig moved: {:?}", running_hosts(&domain));

    // A dry run names a host other than its own.
    let dry = cli("h1", &["vm", "migrate", "mig", "--dry-run"])?;
    let chosen = dry["chosen"].as_str().unwrap_or_default().to_string();
    ensure!(["h2", "h3"].contains(&chosen.as_str()), "dry run chose {chosen:?}: {dry}");

    // To a named host.
    let (r, took) = migrate_sampled(&domain, &["mig", "--to", "h2"])?;
    ensure!(r.success, "migrate: {} {}", r.stdout, r.stderr);
    ensure!(running_hosts(&domain) == ["h2"], "mig runs on {:?}", running_hosts(&domain));
    let vm = cli("h3", &["vm", "get", "mig"])?;
    ensure!(vm["node"] == "h2" && vm["migrating_to"].is_null(), "after the move: {vm}");
    let moved = went_on_from("mig", &before)?;
    println!("moved live to h2 in {took:?}: {before:?} -> {moved:?}");

    // Again, to the scheduler's pick.
    let (r, took) = migrate_sampled(&domain, &["mig"])?;
    ensure!(r.success, "migrate: {} {}", r.stdout, r.stderr);
    let on = running_hosts(&domain);
    ensure!(on.len() == 1 && on[0] != "h2", "mig runs on {on:?}");
    let again = went_on_from("mig", &moved)?;
    println!("moved live to {} in {took:?}: {again:?}", on[0]);

    // A drain of the host it is on now, with three more guests there: all
    // four move live, none reboots, and the host ends in maintenance.
    let host = on[0];
    let mut guests = vec![("mig".to_string(), domain.clone())];
    for i in 0..3 {
        let name = format!("d{i}");
        let d = guest_with(host, &name, true, &["--disk", "64M@shared"])?;
        guests.push((name, d));
    }
    let mut before = Vec::new();
    for (name, _) in &guests {
        before.push(wait_for("each guest counting", Duration::from_secs(60), || {
            guest_state(name).filter(|g| g.count >= 2)
        })?);
    }
    cli("h1", &["node", "drain", host])?;
    let drained_at = Instant::now();
    loop {
        for (name, d) in &guests {
            let on = running_hosts(d);
            ensure!(on.len() <= 1, "{name} ran on {on:?} at once during the drain");
        }
        let nodes = cli("h1", &["node", "list"])?;
        let state = nodes.as_array().and_then(|n| n.iter().find(|n| n["name"] == host)).map(|n| n["state"].clone());
        if state.as_ref().is_some_and(|s| s == "maintenance") {
            break;
        }
        ensure!(drained_at.elapsed() < Duration::from_secs(120), "{host} still not in maintenance: {state:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("drained {host} (4 guests, live) in {:?}", drained_at.elapsed());
    for ((name, d), before) in guests.iter().zip(&before) {
        let on = running_hosts(d);
        ensure!(on.len() == 1 && on[0] != host, "{name} runs on {on:?} after the drain of {host}");
        went_on_from(name, before)?;
    }
    let events = run_cli(&addr("h1"), &["events"]).stdout;
    ensure!(events.contains("4 to migrate live"), "the drain did not plan live moves: {events}");
    cli("h1", &["node", "activate", host])?;

    // Even distribution: six guests packed onto the drained host (the four
    // moved back live, two more made there); `cluster balance` spreads them
    // live until no move would bring the hosts closer, none rebooted.
    cli("h1", &["cluster", "policy", "set", "spread", "--cpu-overcommit", "4"])?;
    for (name, d) in &guests {
        if running_hosts(d) != [host] {
            let r = run_cli(&addr("h1"), &["vm", "migrate", name, "--to", host, "--wait"]);
            ensure!(r.success, "packing {name} onto {host}: {}", r.stderr);
        }
    }
    for i in 0..2 {
        let name = format!("e{i}");
        let d = guest_with(host, &name, true, &["--disk", "64M@shared"])?;
        guests.push((name, d));
    }
    ensure!(guests.iter().all(|(_, d)| running_hosts(d) == [host]), "not all six on {host}");
    let mut before = Vec::new();
    for (name, _) in &guests {
        before.push(wait_for("each guest counting", Duration::from_secs(30), || {
            guest_state(name).filter(|g| g.count >= 1)
        })?);
    }
    let dry = cli("h1", &["cluster", "balance", "--dry-run"])?;
    ensure!(dry.as_array().is_some_and(|m| !m.is_empty() && m.iter().all(|m| m["from"] == host)), "dry run: {dry}");
    for _ in 0..8 {
        let moves = cli("h1", &["cluster", "balance"])?;
        if moves.as_array().is_none_or(|m| m.is_empty()) {
            break;
        }
        println!("balance: {moves}");
        let mut settled = false;
        while !settled {
            for (name, d) in &guests {
                let on = running_hosts(d);
                ensure!(on.len() <= 1, "{name} ran on {on:?} at once while balancing");
            }
            let vms = cli("h1", &["vm", "list"])?;
            settled = vms.as_array().is_some_and(|v| v.iter().all(|v| v["migrating_to"].is_null()));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let per_host: Vec<usize> =
        HOSTS.iter().map(|h| guests.iter().filter(|(_, d)| running_hosts(d) == [*h]).count()).collect();
    ensure!(
        per_host.iter().max().unwrap_or(&0) - per_host.iter().min().unwrap_or(&0) <= 1,
        "not balanced: {per_host:?} guests on {HOSTS:?}"
    );
    for ((name, _), before) in guests.iter().zip(&before) {
        let now = wait_for("each guest counting on", Duration::from_secs(30), || {
            guest_state(name).filter(|g| g.count > before.count)
        })?;
        ensure!(now.uptime > before.uptime && now.disk == before.disk, "{name} rebooted: {before:?} -> {now:?}");
    }
    println!("balanced: {per_host:?} guests on {HOSTS:?}");

    // The automatic balance (every 5 s here): a guest moved by hand onto
    // the busiest host is moved off it again by the leader.
    cli("h1", &["cluster", "policy", "set", "spread", "--balance", "on"])?;
    let busiest = HOSTS[per_host.iter().enumerate().max_by_key(|(_, n)| **n).map(|(i, _)| i).unwrap_or(0)];
    let (name, d) = guests.iter().find(|(_, d)| running_hosts(d) != [busiest]).cloned().unwrap_or_default();
    let r = run_cli(&addr("h1"), &["vm", "migrate", &name, "--to", busiest, "--wait"]);
    ensure!(r.success, "migrate {name} to {busiest}: {}", r.stderr);
    let unbalanced_at = Instant::now();
    let counts = || -> Vec<usize> {
        HOSTS.iter().map(|h| guests.iter().filter(|(_, d)| running_hosts(d) == [*h]).count()).collect()
    };
    loop {
        ensure!(running_hosts(&d).len() <= 1, "{name} ran twice while balancing");
        let c = counts();
        let settled =
            cli("h1", &["vm", "list"])?.as_array().is_some_and(|v| v.iter().all(|v| v["migrating_to"].is_null()));
        if settled && c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) <= 1 {
            println!("the automatic balance evened {busiest} out in {:?}: {c:?}", unbalanced_at.elapsed());
            break;
        }
        ensure!(unbalanced_at.elapsed() < Duration::from_secs(40), "no automatic balance: {c:?} on {HOSTS:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    cli("h1", &["cluster", "policy", "set", "spread", "--balance", "off"])?;

    // A stopped VM moves cold, at once, and starts on its new host with
    // its data.
    cli("h1", &["vm", "stop", "mig", "--force"])?;
    wait_for("mig stopped", Duration::from_secs(30), || {
        cli("h1", &["vm", "get", "mig"]).ok().filter(|v| v["state"] == "stopped").map(|_| ())
    })?;
    let from = cli("h1", &["vm", "get", "mig"])?["node"].as_str().unwrap_or_default().to_string();
    let to = HOSTS.iter().find(|h| **h != from).copied().unwrap_or("h1");
    let moved = cli("h1", &["vm", "migrate", "mig", "--to", to])?;
    ensure!(moved["node"] == to && moved["desired"] == "stopped", "cold move: {moved}");
    wait_for("mig's old domain gone", Duration::from_secs(30), || {
        (!virsh_on(&from, &["list", "--all", "--name"]).contains(&domain)).then_some(())
    })?;
    cli("h1", &["vm", "start", "mig", "--wait"])?;
    ensure!(running_hosts(&domain) == [to], "mig runs on {:?}, not {to}", running_hosts(&domain));
    let booted = wait_for("mig booted on its new host", Duration::from_secs(60), || guest_state("mig"))?;
    ensure!(booted.disk.split(" boots=").next() == again.disk.split(" boots=").next(), "the disk changed: {booted:?}");
    let events = run_cli(&addr("h1"), &["events"]).stdout;
    ensure!(events.contains("migrated live") && events.contains("downtime"), "no downtime in the events: {events}");
    copies_local_disks()
}

/// A guest whose disk is on local storage moves with `--copy-storage`: its
/// disk is mirrored to the target's local storage as it runs, the record
/// then names the target, and the source's file goes. It moves back at
/// once (the target's old file is deleted first). No reboot, same data.
fn copies_local_disks() -> Result<()> {
    let domain = guest_with("h1", "loc", false, &["--disk", "64M@local"])?;
    let before = wait_for("loc counting", Duration::from_secs(60), || guest_state("loc").filter(|g| g.count >= 2))?;
    let r = run_cli(&addr("h2"), &["vm", "migrate", "loc", "--to", "h2"]);
    ensure!(!r.success && r.stderr.contains("--copy-storage"), "without --copy-storage: {} / {}", r.stdout, r.stderr);
    let file = |host: &str| {
        let vm = cli("h1", &["vm", "get", "loc"]).unwrap_or_default();
        let volume = vm["disks"][0]["volume"].as_str().unwrap_or_default().to_string();
        std::path::PathBuf::from(format!("{}/{host}/kvmesh/images/{volume}", kvmesh_tests::testbed::DIR))
    };
    ensure!(file("h1").is_file(), "no volume at {}", file("h1").display());
    let mut last = before;
    for (from, to) in [("h1", "h2"), ("h2", "h1")] {
        let (r, took) = migrate_sampled(&domain, &["loc", "--to", to, "--copy-storage"])?;
        ensure!(r.success, "migrate --copy-storage to {to}: {} {}", r.stdout, r.stderr);
        ensure!(running_hosts(&domain) == [to], "loc runs on {:?}", running_hosts(&domain));
        let vm = cli("h3", &["vm", "get", "loc"])?;
        ensure!(vm["node"] == to && vm["disks"][0]["host"] == to, "the disk record after the move: {vm}");
        let now = went_on_from("loc", &last)?;
        println!("moved live with its local disk {from} -> {to} in {took:?}: {last:?} -> {now:?}");
        wait_for("the source's copy deleted", Duration::from_secs(30), || (!file(from).is_file()).then_some(()))?;
        ensure!(file(to).is_file(), "no volume at {}", file(to).display());
        last = now;
    }
    let events = run_cli(&addr("h1"), &["events"]).stdout;
    ensure!(events.contains("with its local disks"), "no copy in the events: {events}");
    // The data went with it: a fresh boot on h1 reads the marker the first
    // boot (on h1, two copies ago) wrote, and counts a second boot.
    let marker = last.disk.split_whitespace().nth(1).unwrap_or_default().to_string();
    let copy = std::fs::read(file("h1"))?;
    ensure!(copy.windows(marker.len()).any(|w| w == marker.as_bytes()), "{marker} is not in h1's copy");
    cli("h1", &["vm", "stop", "loc", "--force"])?;
    wait_for("loc stopped", Duration::from_secs(30), || {
        cli("h1", &["vm", "get", "loc"]).ok().filter(|v| v["state"] == "stopped").map(|_| ())
    })?;
    cli("h1", &["vm", "start", "loc", "--wait"])?;
    let rebooted = wait_for("loc booted again", Duration::from_secs(60), || {
        guest_state("loc").filter(|g| g.uptime < last.uptime)
    })?;
    ensure!(rebooted.disk == format!("KVMESH-DISK {marker} boots=2"), "after the copies: {rebooted:?}");

    // Stopped, it moves cold with its disk (the target pulls the file),
    // and boots on its new host from the same data.
    cli("h1", &["vm", "stop", "loc", "--force"])?;
    wait_for("loc stopped", Duration::from_secs(30), || {
        cli("h1", &["vm", "get", "loc"]).ok().filter(|v| v["state"] == "stopped").map(|_| ())
    })?;
    let r = run_cli(&addr("h1"), &["vm", "migrate", "loc", "--to", "h3"]);
    ensure!(!r.success && r.stderr.contains("--copy-storage"), "a cold move without --copy-storage: {}", r.stderr);
    let r = run_cli(&addr("h1"), &["vm", "migrate", "loc", "--to", "h3", "--copy-storage", "--wait"]);
    ensure!(r.success, "cold move with its disk: {} {}", r.stdout, r.stderr);
    let vm = cli("h1", &["vm", "get", "loc"])?;
    ensure!(vm["node"] == "h3" && vm["disks"][0]["host"] == "h3" && vm["desired"] == "stopped", "after: {vm}");
    wait_for("h1's copy deleted", Duration::from_secs(30), || (!file("h1").is_file()).then_some(()))?;
    cli("h1", &["vm", "start", "loc", "--wait"])?;
    ensure!(running_hosts(&domain) == ["h3"], "loc runs on {:?}", running_hosts(&domain));
    let booted = wait_for("loc booted on h3", Duration::from_secs(60), || {
        guest_state("loc").filter(|g| g.disk.ends_with("boots=3"))
    })?;
    ensure!(booted.disk == format!("KVMESH-DISK {marker} boots=3"), "after the cold move: {booted:?}");
    Ok(())
}
