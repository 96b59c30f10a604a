//! Storage with real guests on the testbed (three hosts, each its own
//! libvirtd and mount namespace): a VM's disk keeps its data through every
//! move kvmesh makes, a directory that only claims to be shared is caught,
//! local disks pin their VM, clones share their image, snapshots revert,
//! and deleted volumes go even from a host that was down.
//!
//! The test guest writes a random marker to its disk on first boot and
//! counts boots in the next sector; its console shows
//! `KVMESH-DISK <marker> boots=<n>`, which is what "kept its data" means here.
//! Every claim is checked from outside: consoles, `virsh`, the files.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use kvmesh_tests::testbed::{
    addr, double_run, placement_by_virsh, running_on, shared_dir, shared_guest, testbed, up3, virsh_on, DIR, HOSTS,
};
use kvmesh_tests::{run_cli, wait_for};
use serde_json::Value;

fn cli(args: &[&str]) -> Result<Value> {
    let r = run_cli(&addr("h1"), args);
    ensure!(r.success, "kvmesh {}: {}", args.join(" "), r.stderr);
    r.json()
}

/// The error text of a command that must fail.
fn refused(via: &str, args: &[&str]) -> String {
    let r = run_cli(&addr(via), args);
    assert!(!r.success, "kvmesh {} was accepted: {}", args.join(" "), r.stdout);
    r.stderr
}

/// Creates a guest that lands on `host` (a label only `host` has, given to
/// the others afterwards so the guest may move anywhere later).
fn guest_on(host: &str, name: &str, extra: &[&str]) -> Result<Value> {
    let label = format!("for-{name}=yes");
    cli(&["node", "set", host, "--label", &label])?;
    let mut args = vec!["vm", "create", name, "--memory", "128", "--node-label", &label];
    args.extend(["--kernel", "guest-kernel", "--initrd", "guest-initrd", "--cmdline", "console=ttyS0"]);
    args.extend(extra);
    args.push("--wait");
    let vm = cli(&args)?;
    for other in HOSTS.iter().filter(|h| **h != host) {
        cli(&["node", "set", other, "--label", &label])?;
    }
    ensure!(vm["node"] == host, "{name} landed on {} instead of {host}", vm["node"]);
    Ok(vm)
}

/// The marker on the VM's disk once its console shows boot number `boots`.
fn marker(via: &str, vm: &str, boots: u32) -> Result<String> {
    let want = format!("boots={boots}");
    wait_for(&format!("{vm} to show its disk marker with {want}"), Duration::from_secs(120), || {
        let r = run_cli(&addr(via), &["vm", "console", vm, "--bytes", "100000"]);
        let data = r.json().ok()?["data"].as_str()?.to_string();
        let line = data.lines().rev().find(|l| l.starts_with("KVMESH-DISK "))?.trim().to_string();
        let mut parts = line.split(' ').skip(1);
        let (m, b) = (parts.next()?.to_string(), parts.next()?);
        (b == want).then_some(m)
    })
}

fn vm(name: &str) -> Result<Value> {
    cli(&["vm", "get", name])
}

fn stop(name: &str) -> Result<()> {
    cli(&["vm", "stop", name, "--force"])?;
    wait_for(&format!("{name} stopped"), Duration::from_secs(30), || {
        (vm(name).ok()?["state"] == "stopped").then_some(())
    })
}

fn qemu_img_info(path: &Path) -> Result<Value> {
    let out = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(path).output()?;
    ensure!(out.status.success(), "qemu-img info {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn qemu_img_backing(path: &Path) -> Result<String> {
    Ok(qemu_img_info(path)?["backing-filename"].as_str().unwrap_or_default().to_string())
}

/// Runs a shell command in the mount namespace of host `h`'s kvmesh.
fn in_host_mounts(h: &str, script: &str) -> Result<()> {
    let pids = Command::new("ip").args(["netns", "pids", &format!("kvmtb-{h}")]).output()?;
    let pid = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .map(str::trim)
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("serve"))
        })
        .map(str::to_string);
    let Some(pid) = pid else { bail!("no kvmesh process on {h}") };
    let out = Command::new("nsenter").args(["-t", &pid, "-m", "sh", "-c", script]).output()?;
    ensure!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn vm_data_follows_its_vm_through_every_move_on_real_guests() -> Result<()> {
    let _teardown = up3()?;
    shared_guest()?;

    // A directory that claims to be shared but is not, on one host: h1 and
    // h2 reach the same directory through it, h3 a local one of its own
    // (its mount was forgotten).
    let mixed = format!("{DIR}/mixed");
    std::fs::create_dir_all(&mixed)?;
    for h in ["h1", "h2"] {
        std::os::unix::fs::symlink(&mixed, format!("{DIR}/{h}/lib/kvmesh-mixed"))?;
    }
    std::fs::create_dir_all(format!("{DIR}/h3/lib/kvmesh-mixed"))?;
    cli(&["storage", "add", "mixed", "--kind", "shared-dir", "--path", "/var/lib/libvirt/kvmesh-mixed"])?;
    let d = wait_for("h3 to find mixed not shared", Duration::from_secs(30), || {
        let d = cli(&["storage", "get", "mixed"]).ok()?;
        let state = |h: &str| d["hosts"].as_array()?.iter().find(|x| x["node"] == h).map(|x| x["state"].clone());
        (state("h1")? == "active" && state("h2")? == "active" && state("h3")? == "not-shared").then_some(d)
    })?;
    eprintln!("mixed: {}", d["hosts"]);
    cli(&["node", "set", "h3", "--label", "only-h3=yes"])?;
    let err = refused("h2", &["vm", "create", "m", "--disk", "64M@mixed", "--node-label", "only-h3=yes"]);
    assert!(err.contains("storage mixed is not-shared"), "{err}");

    // 1. An HA guest on shared storage: its host dies, it runs elsewhere
    //    with the same data. A plain guest on shared storage moves live
    //    with a drain, data and all.
    let ha = guest_on("h3", "ha", &["--ha", "--disk", "64M@shared"])?;
    guest_on("h3", "rec", &["--disk", "64M@shared"])?;
    let moved = guest_on("h2", "moved", &["--disk", "64M@shared"])?;
    let ha_marker = marker("h1", "ha", 1)?;
    let rec_marker = marker("h1", "rec", 1)?;
    let moved_marker = marker("h1", "moved", 1)?;
    let (ha_domain, moved_domain) =
        (ha["domain"].as_str().unwrap().to_string(), moved["domain"].as_str().unwrap().to_string());
    testbed(&["kill-host", "h3"])?;
    let killed = Instant::now();
    wait_for("ha to run on a survivor", Duration::from_secs(60), || {
        if let Some(d) = double_run(&["h1", "h2"]) {
            panic!("ran twice: {d}");
        }
        (running_on("h1").contains(&ha_domain) || running_on("h2").contains(&ha_domain)).then_some(())
    })?;
    assert_eq!(marker("h1", "ha", 2)?, ha_marker, "the HA restart lost the guest's data");
    eprintln!("HA restart with its data after {:?}", killed.elapsed());
    // The non-HA one waits for its host, until an operator recovers it.
    wait_for("rec to wait for its dead host", Duration::from_secs(30), || {
        (vm("rec").ok()?["state"] == "host-down").then_some(())
    })?;
    cli(&["vm", "recover", "rec"])?;
    assert_eq!(marker("h1", "rec", 2)?, rec_marker, "vm recover lost the guest's data");
    testbed(&["start-host", "h3"])?;
    cli(&["node", "drain", "h2"])?;
    wait_for("moved to leave h2", Duration::from_secs(60), || {
        let v = vm("moved").ok()?;
        (v["state"] == "running" && v["node"] != "h2" && !running_on("h2").contains(&moved_domain)).then_some(())
    })?;
    // The drain moved it live: the same boot, with its data.
    assert_eq!(marker("h1", "moved", 1)?, moved_marker, "the drain lost the guest's data or rebooted it");
    cli(&["node", "activate", "h2"])?;
    wait_for("every host up", Duration::from_secs(60), || {
        let n = cli(&["node", "list"]).ok()?;
        n.as_array()?.iter().all(|n| n["state"] == "up").then_some(())
    })?;
    assert!(placement_by_virsh(&HOSTS).values().all(|h| h.len() == 1), "{:?}", placement_by_virsh(&HOSTS));

    // 2. A disk on `local` pins its VM to the host that holds it, and HA
    //    with such a disk is refused.
    let err = refused("h1", &["vm", "create", "nope", "--ha", "--disk", "64M"]);
    assert!(err.contains("HA VM") && err.contains("local"), "{err}");
    guest_on("h1", "pinned", &["--disk", "64M"])?;
    let pinned = vm("pinned")?;
    assert_eq!(pinned["disks"][0]["host"], "h1");
    let explained = cli(&["vm", "explain", "pinned"])?;
    for n in explained["nodes"].as_array().unwrap().iter().filter(|n| n["node"] != "h1") {
        assert!(n["reason"].as_str().unwrap().contains("local storage of h1"), "{explained}");
    }

    // Disks change live: a new one is attached to the running guest and
    // one grows under it (checked with virsh on its host). Removing one
    // needs the VM stopped; grown while stopped, the next start has it.
    let pinned_domain = pinned["domain"].as_str().unwrap().to_string();
    cli(&["vm", "disk", "add", "pinned", "--size", "32M", "--storage", "shared"])?;
    cli(&["vm", "disk", "resize", "pinned", "0", "128M"])?;
    wait_for("the running guest to get its new and grown disks", Duration::from_secs(30), || {
        let attached = virsh_on("h1", &["domblklist", &pinned_domain]).contains("vdb");
        let grown = virsh_on("h1", &["domblkinfo", &pinned_domain, "vda"]).contains(&(128u64 << 20).to_string());
        (attached && grown).then_some(())
    })?;
    let v = vm("pinned")?;
    let extra = Path::new(&shared_dir()).join(v["disks"][1]["volume"].as_str().unwrap());
    assert!(extra.exists(), "the added disk has no volume");
    assert!(refused("h1", &["vm", "disk", "remove", "pinned", "1"]).contains("stopped"));
    stop("pinned")?;
    cli(&["vm", "disk", "resize", "pinned", "0", "160M"])?;
    cli(&["vm", "disk", "remove", "pinned", "1"])?;
    cli(&["vm", "start", "pinned", "--wait"])?;
    let vol0 = format!("{DIR}/h1/kvmesh/images/{}", v["disks"][0]["volume"].as_str().unwrap());
    assert_eq!(qemu_img_info(Path::new(&vol0))?["virtual-size"], 160u64 << 20, "disk 0 did not grow offline");
    wait_for("the removed disk's volume to go", Duration::from_secs(60), || (!extra.exists()).then_some(()))?;
    assert!(!virsh_on("h1", &["domblklist", &pinned_domain]).contains("vdb"), "the removed disk is still attached");

    // 3. Five VMs cloned from one image share its file as their backing
    //    file and keep their own data.
    let base = format!("{DIR}/base.qcow2");
    let out = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", &base, "32M"]).output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = cli(&["image", "import", "base", &base, "--storage", "shared"])?;
    let mut markers = BTreeSet::new();
    let clones: Vec<String> = (1..=5).map(|i| format!("c{i}")).collect();
    for c in &clones {
        cli(&[
            "vm",
            "create",
            c,
            "--memory",
            "96",
            "--image",
            "base",
            "--kernel",
            "guest-kernel",
            "--initrd",
            "guest-initrd",
            "--cmdline",
            "console=ttyS0",
            "--wait",
        ])?;
    }
    let image_file = std::fs::read_dir(shared_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().ends_with(".qcow2")
                && p.file_name().unwrap().to_string_lossy().starts_with("image-")
        })
        .expect("the image's file in the shared directory");
    for c in &clones {
        markers.insert(marker("h1", c, 1)?);
        let v = vm(c)?;
        let volume = Path::new(&shared_dir()).join(v["disks"][0]["volume"].as_str().unwrap());
        assert_eq!(qemu_img_backing(&volume)?, image_file.to_string_lossy(), "{c} is not a thin clone of base");
    }
    assert_eq!(markers.len(), 5, "clones share data: {markers:?}");
    assert_eq!(image["sha256"].as_str().unwrap().len(), 64);
    let err = refused("h2", &["image", "delete", "base"]);
    assert!(err.contains("used by"), "{err}");

    // 4. Snapshot, write (a boot counts itself on the disk), revert: the
    //    old data is back.
    let first = marker("h1", "c1", 1)?;
    stop("c1")?;
    // A leftover of a create whose record never committed (its leader was
    // lost): the real create replaces it rather than adding a second
    // snapshot of the same name that a revert could pick.
    let c1_volume = Path::new(&shared_dir()).join(vm("c1")?["disks"][0]["volume"].as_str().unwrap());
    let out = Command::new("qemu-img").args(["snapshot", "-c", "before"]).arg(&c1_volume).output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cli(&["vm", "snapshot", "create", "c1", "before"])?;
    let listed = Command::new("qemu-img").args(["snapshot", "-l", "-U"]).arg(&c1_volume).output()?;
    let tags = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("before"))
        .count();
    assert_eq!(tags, 1, "{}", String::from_utf8_lossy(&listed.stdout));
    cli(&["vm", "start", "c1", "--wait"])?;
    assert_eq!(marker("h1", "c1", 2)?, first);
    stop("c1")?;
    let v = cli(&["vm", "snapshot", "revert", "c1", "before"])?;
    assert_eq!(v["snapshots"][0]["name"], "before");
    cli(&["vm", "start", "c1", "--wait"])?;
    // Reverted to one boot, this boot is the second again (not the third).
    assert_eq!(marker("h1", "c1", 2)?, first, "the revert did not bring the old data back");

    // A template of c1's boot disk carries its data, flattened.
    stop("c1")?;
    let golden = cli(&["vm", "template", "c1", "golden"])?;
    assert_eq!((golden["format"].as_str(), golden["kind"].as_str()), (Some("qcow2"), Some("disk")));
    guest_on("h2", "from-golden", &["--image", "golden"])?;
    assert_eq!(marker("h1", "from-golden", 3)?, first, "the template lost c1's data");
    let v = vm("from-golden")?;
    let golden_file = qemu_img_backing(&Path::new(&shared_dir()).join(v["disks"][0]["volume"].as_str().unwrap()))?;
    assert_eq!(qemu_img_backing(Path::new(&golden_file))?, "", "a template must not depend on its source's base");

    // A full domain: the import fails with what to do, and leaves nothing.
    std::fs::create_dir_all(format!("{DIR}/h1/lib/small"))?;
    in_host_mounts("h1", "mount -t tmpfs -o size=4m tmpfs /var/lib/libvirt/small")?;
    cli(&["storage", "add", "small", "--kind", "local", "--path", "/var/lib/libvirt/small", "--nodes", "h1"])?;
    kvmesh_tests::wait_storage_active(&addr("h1"), "small", 1)?;
    let big = format!("{DIR}/big.raw");
    std::fs::write(&big, vec![7u8; 8 << 20])?;
    let err = refused("h1", &["image", "import", "big", &big, "--storage", "small"]);
    assert!(err.contains("storage small is full"), "{err}");
    assert!(cli(&["image", "list"])?.as_array().unwrap().iter().all(|i| i["name"] != "big"));
    in_host_mounts("h1", "test -z \"$(ls -A /var/lib/libvirt/small)\"")?;
    cli(&["storage", "remove", "small"])?;

    // 5. Bad input changes nothing.
    let bad = format!("{DIR}/bad.qcow2");
    let mut header = vec![0u8; 4096];
    header[..4].copy_from_slice(b"QFI\xfb");
    header[4..8].copy_from_slice(&9u32.to_be_bytes());
    std::fs::write(&bad, &header)?;
    let err = refused("h1", &["image", "import", "broken", &bad, "--storage", "shared"]);
    assert!(err.contains("version 9"), "{err}");
    let leftovers: Vec<String> = std::fs::read_dir(shared_dir())?
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
        .filter(|n| n.contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "a failed import left {leftovers:?}");
    assert!(refused("h1", &["storage", "remove", "shared"]).contains("still holds"));
    assert!(refused("h1", &["vm", "disk", "resize", "pinned", "0", "1M"]).contains("only grow"));
    assert!(refused("h1", &["vm", "create", "x", "--disk", "10Q"]).contains("bad size"));
    assert!(refused("h1", &["vm", "create", "x", "--disk", "1G@nowhere"]).contains("no storage domain named"));

    // 6. Deleted VMs lose their volumes: on shared storage at once, on a
    //    local disk of a host that is down when it comes back.
    cli(&["vm", "delete", "from-golden", "--yes"])?;
    let clone_volumes: Vec<String> =
        clones[1..].iter().map(|c| vm(c).unwrap()["disks"][0]["volume"].as_str().unwrap().to_string()).collect();
    for c in &clones[1..] {
        cli(&["vm", "delete", c, "--yes"])?;
    }
    wait_for("the clones' volumes deleted", Duration::from_secs(60), || {
        clone_volumes.iter().all(|v| !Path::new(&shared_dir()).join(v).exists()).then_some(())
    })?;
    let gone = guest_on("h2", "gone", &["--disk", "64M"])?;
    let gone_volume = format!("{DIR}/h2/kvmesh/images/{}", vm("gone")?["disks"][0]["volume"].as_str().unwrap());
    ensure!(Path::new(&gone_volume).exists(), "no volume at {gone_volume}");
    testbed(&["kill-host", "h2"])?;
    cli(&["vm", "delete", "gone", "--yes"])?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(Path::new(&gone_volume).exists(), "deleted while its host was down?");
    testbed(&["start-host", "h2"])?;
    wait_for("gone's volume deleted once h2 is back", Duration::from_secs(90), || {
        (!Path::new(&gone_volume).exists()).then_some(())
    })?;
    let gone_domain = gone["domain"].as_str().unwrap().to_string();
    if running_on("h2").contains(&gone_domain) {
        bail!("the deleted VM runs again on h2");
    }
    Ok(())
}
