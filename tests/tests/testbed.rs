//! Real host deaths and partitions: three simulated hosts (scripts/testbed.sh),
//! each with its own network namespace, mount namespace and libvirtd running
//! real QEMU/TCG guests. `virsh` against every surviving host confirms from
//! outside that each HA guest runs exactly once.
//!
//! Needs root, the packages of scripts/libvirtd.sh and the test guest
//! (scripts/test.sh provides all three).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvmesh_tests::testbed::{addr, placement_by_virsh, running_on, shared_guest, testbed, up3, vms, HOSTS};
use kvmesh_tests::{run_cli, wait_for};

#[test]
fn real_host_death_and_partition_never_run_a_guest_twice() -> Result<()> {
    let _teardown = up3()?;
    let (kernel, initrd) = shared_guest()?;
    for (i, host) in HOSTS.iter().enumerate() {
        let r = run_cli(
            &addr(host),
            &[
                "vm",
                "create",
                &format!("g{i}"),
                "--memory",
                "128",
                "--ha",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--cmdline",
                "console=ttyS0",
                "--soft-anti-affinity",
                "spread",
                "--wait",
            ],
        );
        if !r.success {
            bail!("create g{i}: {}", r.stderr);
        }
    }
    let by_virsh = placement_by_virsh(&HOSTS);
    assert_eq!(by_virsh.len(), 3, "{by_virsh:?}");
    assert!(by_virsh.values().all(|h| h.len() == 1), "{by_virsh:?}");

    // 1. Real host death: every process of h3 (node, libvirtd, QEMU).
    testbed(&["kill-host", "h3"])?;
    let killed = Instant::now();
    let survivors = ["h1", "h2"];
    wait_for("HA guests running again on the survivors", Duration::from_secs(30), || {
        let list = vms(&addr("h1"))?;
        let ok = list.iter().all(|v| v["state"] == "running" && v["node"] != "h3");
        let by_virsh = placement_by_virsh(&survivors);
        (ok && by_virsh.len() == 3 && by_virsh.values().all(|h| h.len() == 1)).then_some(())
    })?;
    eprintln!("host death: all HA guests running once on the survivors after {:?} (virsh-checked)", killed.elapsed());
    testbed(&["start-host", "h3"])?;
    wait_for("h3 back up", Duration::from_secs(60), || {
        let n = run_cli(&addr("h1"), &["node", "list"]).json().ok()?;
        n.as_array()?.iter().all(|n| n["state"] == "up").then_some(())
    })?;

    // 2. Partition the leader's host: it fences, the majority restarts its
    // guests, and after the heal everything runs exactly once.
    let s = run_cli(&addr("h1"), &["cluster", "status"]).json()?;
    let leader = s["leader"]["name"].as_str().unwrap().to_string();
    let others: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != leader).collect();
    let on_leader: Vec<String> = vms(&addr(others[0]))
        .unwrap_or_default()
        .iter()
        .filter(|v| v["node"] == leader.as_str())
        .map(|v| v["domain"].as_str().unwrap().to_string())
        .collect();
    testbed(&["partition", &leader])?;
    let cut = Instant::now();
    let mut double = None;
    wait_for("the majority to run every guest", Duration::from_secs(40), || {
        // Sample all three hosts' libvirtd every pass: never two copies.
        let by_virsh = placement_by_virsh(&HOSTS);
        if let Some((d, h)) = by_virsh.iter().find(|(_, h)| h.len() > 1) {
            double = Some(format!("{d} on {h:?}"));
            return Some(());
        }
        let list = vms(&addr(others[0]))?;
        let ok = list.iter().all(|v| v["state"] == "running" && v["node"] != leader.as_str());
        (ok && by_virsh.len() == 3).then_some(())
    })?;
    if let Some(d) = double {
        bail!("a guest ran twice during the partition: {d}");
    }
    eprintln!("partition of leader {leader}: majority runs every guest after {:?}", cut.elapsed());
    for d in &on_leader {
        assert!(!running_on(&leader).contains(d), "the partitioned host still runs {d}: it must have fenced");
    }
    testbed(&["heal", &leader])?;
    wait_for("convergence after the heal", Duration::from_secs(60), || {
        let n = run_cli(&addr(others[0]), &["node", "list"]).json().ok()?;
        let all_up = n.as_array()?.iter().all(|n| n["state"] == "up");
        let by_virsh = placement_by_virsh(&HOSTS);
        (all_up && by_virsh.len() == 3 && by_virsh.values().all(|h| h.len() == 1)).then_some(())
    })?;
    Ok(())
}
