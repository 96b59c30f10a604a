//! Real guests: QEMU under libvirtd (`qemu:///system`, TCG), booted through
//! kvmesh and checked from the outside with `virsh`.
//!
//! Needs a running libvirtd and the test guest; `scripts/test.sh` provides
//! both (scripts/libvirtd.sh, scripts/make-test-guest.sh).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use kvmesh_tests::{wait_for, Cluster};

const URI: &str = "qemu:///system";

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh").args(["-c", URI]).args(args).output().expect("virsh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn guest() -> Result<(String, String)> {
    let dir = std::env::var("KVMESH_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-guest")));
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    if !k.exists() || !i.exists() {
        bail!("test guest missing in {}: run scripts/make-test-guest.sh (scripts/test.sh does)", dir.display());
    }
    if !virsh(&["version"]).0 {
        bail!("libvirtd does not answer on {URI}: run scripts/libvirtd.sh (scripts/test.sh does)");
    }
    Ok((k.to_string_lossy().into_owned(), i.to_string_lossy().into_owned()))
}

/// Two nodes sharing the machine's libvirtd (kept apart by their tags).
fn qemu_cluster() -> Result<Cluster> {
    let mut c = Cluster::new();
    c.libvirt_uri = URI.into();
    // The test guest ignores ACPI: stops power off after 3 s.
    c.config_toml = "shutdown_timeout_ms = 3000\n".into();
    c.spawn("h1", None, &["--virt-type", "qemu"])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let first = c.addr(0);
    c.spawn("h2", Some(&first), &["--virt-type", "qemu"])?;
    c.wait_members(0, 2, 2)?;
    Ok(c)
}

fn pool(c: &Cluster, i: usize) -> String {
    format!("kvmesh-{:016x}", c.node_id(i).unwrap())
}

/// A shared-dir domain `shared` in the test's directory (both nodes share
/// the machine's libvirtd, so they share its pool), with the test guest's
/// kernel and initrd imported into it; their image names.
fn guest_images(c: &Cluster) -> Result<(String, String)> {
    let (kernel, initrd) = guest()?;
    c.add_shared_storage(0, "shared", &c.dir.path().join("shared"))?;
    c.import(0, "guest-kernel", std::path::Path::new(&kernel), "shared", "kernel")?;
    c.import(0, "guest-initrd", std::path::Path::new(&initrd), "shared", "initrd")?;
    Ok(("guest-kernel".into(), "guest-initrd".into()))
}

/// The libvirt pool of storage domain `name`.
fn domain_pool(c: &Cluster, name: &str) -> String {
    let d = c.cli_ok(0, &["storage", "get", name]).unwrap();
    format!("kvmesh-{}", d["id"].as_str().unwrap())
}

/// Removes the nodes' domains (left by a failed test) and storage pools
/// from the shared libvirtd.
fn cleanup(c: &mut Cluster) {
    for n in &mut c.nodes {
        n.kill();
    }
    let ids: Vec<u64> = (0..c.nodes.len()).filter_map(|i| c.node_id(i).ok()).collect();
    let names = virsh(&["list", "--all", "--name"]).1;
    for domain in names.lines().map(str::trim).filter(|d| d.starts_with("kvmesh-")) {
        let meta = virsh(&["metadata", domain, "https://kvmesh.dev/xmlns/domain/1"]).1;
        if ids.iter().any(|id| meta.contains(&format!("node>{id}<"))) {
            virsh(&["destroy", domain]);
            virsh(&["undefine", domain]);
        }
    }
    for id in ids {
        let p = format!("kvmesh-{id:016x}");
        virsh(&["pool-destroy", &p]);
        virsh(&["pool-undefine", &p]);
    }
    // The pools of the test's own storage domains.
    let dir = c.dir.path().to_string_lossy().into_owned();
    for p in virsh(&["pool-list", "--all", "--name"]).1.lines().map(str::trim).filter(|p| p.starts_with("kvmesh-")) {
        if virsh(&["pool-dumpxml", p]).1.contains(&dir) {
            virsh(&["pool-destroy", p]);
            virsh(&["pool-undefine", p]);
        }
    }
}

/// The disk marker the test guest prints (`KVMESH-DISK <marker> boots=N`),
/// once its console shows `boots`.
fn disk_marker(c: &Cluster, via: usize, vm: &str, boots: &str) -> Result<String> {
    wait_for(&format!("{vm}'s disk marker with {boots}"), Duration::from_secs(90), || {
        let r = c.cli(via, &["vm", "console", vm, "--bytes", "100000"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
        let line = v["data"].as_str()?.lines().rev().find(|l| l.starts_with("KVMESH-DISK "))?.trim().to_string();
        line.ends_with(boots).then(|| line.split(' ').nth(1).unwrap_or_default().to_string())
    })
}

fn index_of(c: &Cluster, name: &str) -> usize {
    c.nodes.iter().position(|n| n.name == name).unwrap()
}

#[test]
fn a_real_guest_boots_is_reachable_by_console_and_comes_back_when_killed() -> Result<()> {
    let mut c = qemu_cluster()?;
    let result = (|| -> Result<()> {
        let (kernel, initrd) = guest_images(&c)?;
        let start = Instant::now();
        let vm = c.cli_ok(
            0,
            &[
                "vm",
                "create",
                "g1",
                "--memory",
                "128",
                "--disk",
                "64M",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--cmdline",
                "console=ttyS0",
                "--wait",
            ],
        )?;
        eprintln!("vm create --wait -> running with a real TCG guest: {:?}", start.elapsed());
        assert_eq!(vm["state"], "running");
        let domain = vm["domain"].as_str().unwrap().to_string();
        let host = index_of(&c, vm["node"].as_str().unwrap());
        let other = 1 - host;
        assert_eq!(virsh(&["domstate", &domain]).1.trim(), "running");

        // The console marker, read through a node that does not host the guest.
        let console = wait_for("the guest's marker on its console", Duration::from_secs(60), || {
            let r = c.cli(other, &["vm", "console", "g1", "--bytes", "1000000"]);
            let v: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
            let data = v["data"].as_str()?.to_string();
            data.contains("KVMESH-TEST-GUEST-UP").then_some(data)
        })?;
        assert!(console.contains("Linux version"), "kernel boot log expected too");

        // Its disk: the marker the first boot wrote.
        let marker = disk_marker(&c, other, "g1", "boots=1")?;

        // Killed behind kvmesh's back: running again within 10 s, on the
        // same volume (kvmesh opened it, it did not make a new one).
        let (ok, text) = virsh(&["destroy", &domain]);
        assert!(ok, "{text}");
        let killed = Instant::now();
        wait_for("the guest to run again", Duration::from_secs(10), || {
            (virsh(&["domstate", &domain]).1.trim() == "running").then_some(())
        })?;
        assert_eq!(disk_marker(&c, other, "g1", "boots=2")?, marker, "the restarted guest lost its disk");
        eprintln!("guest destroyed with virsh -> running again: {:?}", killed.elapsed());
        let events = c.cli(other, &["events"]).stdout;
        assert!(events.contains("destroyed outside kvmesh; restarting (restart 1)"), "{events}");

        // Stop, start, delete: virsh agrees at each step. The test guest
        // ignores ACPI: the stop is `stopping` until the host's timeout,
        // then a forced power-off that the events say; --wait returns then.
        let stopping = c.cli_ok(other, &["vm", "stop", "g1"])?;
        assert_eq!(stopping["state"], "stopping", "{stopping}");
        let stopped = c.cli_ok(other, &["vm", "stop", "g1", "--wait", "--timeout", "60"])?;
        assert_eq!(stopped["state"], "stopped");
        assert_eq!(virsh(&["domstate", &domain]).1.trim(), "shut off");
        let events = c.cli(other, &["events", "--vm", "g1"]).stdout;
        assert!(events.contains("forced power-off: the guest did not shut down within 3 s"), "{events}");
        c.cli_ok(other, &["vm", "start", "g1"])?;
        c.wait_vm_state(other, "g1", "running", Duration::from_secs(20))?;
        assert_eq!(virsh(&["domstate", &domain]).1.trim(), "running");
        let vol = format!("{}-disk0.qcow2", vm["id"].as_str().unwrap());
        assert!(virsh(&["vol-list", &pool(&c, host)]).1.contains(&vol));
        c.cli_ok(other, &["vm", "delete", "g1", "--yes"])?;
        wait_for("g1 gone", Duration::from_secs(20), || c.vm_names(other).ok()?.is_empty().then_some(()))?;
        assert!(!virsh(&["dominfo", &domain]).0, "domain still defined");
        // The volume goes through the cluster's trash, emptied by its host.
        wait_for("the volume deleted", Duration::from_secs(20), || {
            (!virsh(&["vol-list", &pool(&c, host)]).1.contains(&vol)).then_some(())
        })?;
        Ok(())
    })();
    cleanup(&mut c);
    result
}

#[test]
fn images_are_thin_clones_and_failures_keep_the_data() -> Result<()> {
    let mut c = qemu_cluster()?;
    let result = (|| -> Result<()> {
        let (kernel, initrd) = guest_images(&c)?;
        let base = c.dir.path().join("base.qcow2");
        let out = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("32M").output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let image = c.import(0, "base", &base, "shared", "disk")?;
        assert_eq!(image["format"], "qcow2");
        assert_eq!(image["virtual_bytes"], 32u64 << 20);
        let vm = c.cli_ok(
            0,
            &[
                "vm", "create", "thin", "--memory", "128", "--image", "base", "--kernel", &kernel, "--initrd", &initrd,
                "--wait",
            ],
        )?;
        let vol = format!("{}-disk0.qcow2", vm["id"].as_str().unwrap());
        let shared_pool = domain_pool(&c, "shared");
        let (ok, xml) = virsh(&["vol-dumpxml", "--pool", &shared_pool, &vol]);
        assert!(ok, "{xml}");
        assert!(xml.contains("<backingStore>") && xml.contains("image-"), "not a clone of the image: {xml}");
        // An image in use is not deleted.
        let r = c.cli(1, &["image", "delete", "base"]);
        assert!(!r.success && r.stderr.contains("used by thin"), "{}", r.stderr);
        // --keep-disks: the domain goes, the volume stays.
        let domain = vm["domain"].as_str().unwrap().to_string();
        c.cli_ok(0, &["vm", "delete", "thin", "--keep-disks", "--yes"])?;
        wait_for("thin gone", Duration::from_secs(20), || c.vm_names(0).ok()?.is_empty().then_some(()))?;
        assert!(!virsh(&["dominfo", &domain]).0);
        assert!(virsh(&["vol-list", &shared_pool]).1.contains(&vol), "--keep-disks deleted the volume");

        // libvirt refuses to start it (its network's host bridge is gone):
        // failed with libvirt's message; the recorded volume stays (it may
        // hold data), nothing runs. The bridge is the operator's, made here.
        let bridge = "kvmqnobr0";
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().map(|s| s.success());
        let _ = ip(&["link", "del", bridge]);
        ensure!(ip(&["link", "add", bridge, "type", "bridge"])?, "ip link add {bridge}");
        c.cli_ok(0, &["network", "add", "lan", "--kind", "bridge", "--bridge", bridge])?;
        wait_for("lan ready on both hosts", Duration::from_secs(20), || {
            let n = c.cli_ok(0, &["network", "get", "lan"]).ok()?;
            n["hosts"].as_array()?.iter().all(|h| h["state"] == "ready").then_some(())
        })?;
        let args = ["vm", "create", "nonet", "--memory", "64", "--disk", "16M", "--nic", "lan", "--kernel", &kernel];
        c.cli_ok(0, &[&args[..], &["--wait"]].concat())?;
        c.cli_ok(0, &["vm", "stop", "nonet", "--wait"])?;
        ensure!(ip(&["link", "del", bridge])?, "ip link del {bridge}");
        let r = c.cli(0, &["vm", "start", "nonet", "--wait", "--timeout", "60"]);
        assert!(!r.success);
        assert!(r.stderr.contains(bridge), "{}", r.stderr);
        let vm = c.vm(1, "nonet")?;
        assert_eq!(vm["state"], "failed");
        let host = index_of(&c, vm["node"].as_str().unwrap());
        assert_ne!(virsh(&["domstate", vm["domain"].as_str().unwrap()]).1.trim(), "running");
        let nonet_vol = format!("{}-disk0.qcow2", vm["id"].as_str().unwrap());
        assert!(virsh(&["vol-list", &pool(&c, host)]).1.contains(&nonet_vol), "the recorded volume went");
        // Its host says what is wrong with the network, too.
        wait_for("lan reported broken", Duration::from_secs(20), || {
            let n = c.cli_ok(0, &["network", "get", "lan"]).ok()?;
            n["hosts"].as_array()?.iter().all(|h| h["state"] == "error").then_some(())
        })?;
        assert_eq!(vm["disks"][0]["created"], true);

        // A failure holds across a restart of its host's daemon: no retry,
        // no new event, still `failed` until an operator asks again.
        let failures = |c: &Cluster| c.cli(0, &["events"]).stdout.matches("vm nonet failed on").count();
        assert_eq!(failures(&c), 1);
        c.restart(host)?;
        c.wait_members(0, 2, 2)?;
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(c.vm(0, "nonet")?["state"], "failed");
        assert_eq!(failures(&c), 1, "retried after the restart");
        let restarted_log = c.log_text(host);
        let after_restart = restarted_log.rsplit("kvmesh node starting").next().unwrap_or_default();
        assert!(!after_restart.contains("vm=nonet"), "the restarted agent touched nonet: {after_restart}");
        // `vm start --wait` tries again, fails again: non-zero, with the
        // error, and the repeated failure is an event of its own.
        let r = c.cli(1, &["vm", "start", "nonet", "--wait", "--timeout", "60"]);
        assert!(!r.success, "{}", r.stdout);
        assert!(r.stderr.contains("failed") && r.stderr.contains(bridge), "{}", r.stderr);
        wait_for("the second failure's event", Duration::from_secs(10), || (failures(&c) == 2).then_some(()))?;
        Ok(())
    })();
    cleanup(&mut c);
    result
}

/// The README's rejoin after an operator stopped a node (its guest still
/// running) and removed it: the node comes back with its emptied data dir
/// as a new identity, and the old identity's guest does not run on.
#[test]
fn a_rejoin_from_an_emptied_dir_stops_the_old_identitys_guests() -> Result<()> {
    let mut c = qemu_cluster()?;
    let result = (|| -> Result<()> {
        let (kernel, initrd) = guest_images(&c)?;
        // A third voter, so that a dead h2 can be removed (a membership
        // change needs a majority of the current voters).
        let first = c.addr(0);
        c.spawn("h3", Some(&first), &["--virt-type", "qemu"])?;
        c.wait_members(0, 3, 3)?;
        c.cli_ok(0, &["node", "set", "h2", "--label", "here=yes"])?;
        let vm = c.cli_ok(
            0,
            &[
                "vm",
                "create",
                "old",
                "--memory",
                "128",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--node-label",
                "here=yes",
                "--wait",
            ],
        )?;
        let domain = vm["domain"].as_str().unwrap().to_string();
        assert_eq!(virsh(&["domstate", &domain]).1.trim(), "running");
        let h2 = index_of(&c, "h2");
        c.nodes[h2].kill();
        c.cli_ok(0, &["cluster", "remove", "h2", "--force", "--yes"])?;
        assert_eq!(virsh(&["domstate", &domain]).1.trim(), "running", "nothing stopped it yet");
        std::fs::remove_dir_all(&c.nodes[h2].data_dir)?;
        c.retry_join(h2, "h2", &first)?;
        c.wait_members(0, 3, 3)?;
        assert!(!virsh(&["dominfo", &domain]).0, "the old identity's domain is still defined");
        assert!(c.log_text(h2).contains("earlier identity of this data dir"));
        Ok(())
    })();
    cleanup(&mut c);
    result
}

/// A daemon killed and restarted within fence_after inherits its lease: its
/// HA guest is not destroyed (an upgrade or a crash-restart must not reboot
/// every HA guest of the host), and the guest is the same QEMU process.
#[test]
fn a_quick_daemon_restart_keeps_its_ha_guests_running() -> Result<()> {
    let mut c = qemu_cluster()?;
    let result = (|| -> Result<()> {
        let (kernel, initrd) = guest_images(&c)?;
        let vm = c.cli_ok(
            0,
            &["vm", "create", "keep", "--memory", "128", "--ha", "--kernel", &kernel, "--initrd", &initrd, "--wait"],
        )?;
        let domain = vm["domain"].as_str().unwrap().to_string();
        let host = index_of(&c, vm["node"].as_str().unwrap());
        let before = virsh(&["domid", &domain]).1.trim().to_string();
        // A heartbeat must have been acknowledged since the start.
        std::thread::sleep(Duration::from_secs(2));
        let mark = c.log_text(host).len();
        c.restart(host)?;
        std::thread::sleep(Duration::from_secs(8));
        let after = virsh(&["domid", &domain]).1.trim().to_string();
        let log = c.log_text(host)[mark..].to_string();
        assert!(!log.contains("fencing:"), "the restarted daemon fenced its HA guest: {log}");
        assert_eq!(before, after, "the guest was restarted (domain id changed)");
        assert_eq!(virsh(&["domstate", &domain]).1.trim(), "running");
        assert!(log.contains("inherited a valid lease"), "{log}");
        Ok(())
    })();
    cleanup(&mut c);
    result
}
