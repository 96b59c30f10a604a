//! VM lifecycle through the agents, on libvirt's embedded test driver:
//! placement across three hosts, reported states, start/stop/restart/delete
//! from any node, and failures that are reported rather than retried.

use std::time::Duration;

use anyhow::Result;
use kvmesh_tests::{wait_for, Cluster};

const T: Duration = Duration::from_secs(20);

#[test]
fn vms_are_placed_across_hosts_and_their_states_are_reported() -> Result<()> {
    let c = Cluster::three()?;
    for i in 0..3 {
        let vm = c.cli_ok(i, &["vm", "create", &format!("web{i}"), "--memory", "1024", "--disk", "1G", "--wait"])?;
        assert_eq!(vm["state"], "running", "{vm}");
    }
    // Equal hosts, most free memory wins: one VM per host.
    let mut hosts: Vec<String> =
        (0..3).map(|i| c.vm(0, &format!("web{i}")).unwrap()["node"].as_str().unwrap().to_string()).collect();
    hosts.sort();
    assert_eq!(hosts, vec!["n1", "n2", "n3"]);
    let vm = c.wait_vm_state(2, "web0", "running", T)?;
    assert!(vm["since"].as_u64().unwrap() > 0);
    assert!(vm["last_error"].is_null());
    assert_eq!(vm["disks"][0]["size_bytes"], 1u64 << 30);
    assert_eq!(vm["disks"][0]["storage"], "local");
    assert_eq!(vm["disks"][0]["created"], true, "recorded before the start");

    // Lifecycle from nodes that do not host the VM.
    let host = c.vm(0, "web1")?["node"].as_str().unwrap().to_string();
    let other = (0..3).find(|i| c.nodes[*i].name != host).unwrap();
    c.cli_ok(other, &["vm", "stop", "web1"])?;
    c.wait_vm_state(other, "web1", "stopped", T)?;
    c.cli_ok(other, &["vm", "start", "web1"])?;
    c.wait_vm_state(other, "web1", "running", T)?;
    c.cli_ok(other, &["vm", "restart", "web1"])?;
    c.cli_ok(other, &["vm", "stop", "web1", "--force"])?;
    c.wait_vm_state(other, "web1", "stopped", T)?;
    c.cli_ok(other, &["vm", "delete", "web1", "--yes"])?;
    wait_for("web1 gone everywhere", T, || {
        (0..3).all(|i| !c.vm_names(i).unwrap_or_default().contains(&"web1".to_string())).then_some(())
    })?;

    // Every transition is in the event log.
    let events = c.cli(1, &["events"]);
    assert!(events.success);
    for needle in
        ["vm web1 is running on", "vm web1 is stopped on", "vm web1: restart requested", "vm web1 deleted from"]
    {
        assert!(events.stdout.contains(needle), "{needle} missing in:\n{}", events.stdout);
    }
    // web1's volume leaves through the trash, emptied by its host.
    wait_for("web1's volume deleted", T, || {
        (c.cli_ok(0, &["storage", "get", "local"]).ok()?["pending_deletions"] == 0).then_some(())
    })?;
    // Steady state writes nothing: the commit index holds still.
    let before = c.status(0)?["commit_index"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let after = c.status(0)?["commit_index"].as_u64().unwrap();
    assert_eq!(before, after, "an idle cluster must not write");
    Ok(())
}

#[test]
fn a_missing_image_file_fails_the_vm_with_the_reason_and_no_retry_storm() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("solo", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    let store = c.dir.path().join("store");
    std::fs::create_dir_all(&store)?;
    c.cli_ok(0, &["storage", "add", "disks", "--kind", "local", "--path", &store.to_string_lossy()])?;
    kvmesh_tests::wait_storage_active(&c.addr(0), "disks", 1)?;
    let raw = c.dir.path().join("base.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20])?;
    let image = c.import(0, "base", &raw, "disks", "disk")?;
    assert_eq!((image["format"].as_str(), image["virtual_bytes"].as_u64()), (Some("raw"), Some(1 << 20)));
    // The image's file disappears behind kvmesh's back.
    for f in std::fs::read_dir(&store)? {
        let f = f?.path();
        if f.file_name().unwrap().to_string_lossy().starts_with("image-") {
            std::fs::remove_file(f)?;
        }
    }
    let r = c.cli(0, &["vm", "create", "bad", "--image", "base", "--wait"]);
    assert!(!r.success);
    assert!(r.stderr.contains("image base") && r.stderr.contains("missing"), "{}", r.stderr);
    let vm = c.vm(0, "bad")?;
    assert_eq!(vm["state"], "failed");
    assert_eq!(vm["disks"][0]["created"], false, "nothing was created over a missing base");
    let events = c.cli(0, &["events"]).stdout;
    assert!(events.contains("vm bad failed on solo"), "{events}");
    // No retry storm: the commit index holds still while it stays failed.
    let before = c.status(0)?["commit_index"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(before, c.status(0)?["commit_index"].as_u64().unwrap());
    // Host paths are refused before anything is recorded: a client could
    // otherwise attach any host file to a guest and read it there.
    for flag in ["--image", "--kernel", "--initrd"] {
        let r = c.cli(0, &["vm", "create", "peek", flag, "/etc/shadow"]);
        assert!(
            !r.success && r.stderr.contains("not a host path") && r.stderr.contains("image import"),
            "{}",
            r.stderr
        );
    }
    // A domain that no host has (its directory is missing everywhere)
    // takes no disk, and says why; a file is not a directory.
    c.cli_ok(0, &["storage", "add", "ghost", "--kind", "shared-dir", "--path", "/nonexistent/kvmesh-ghost"])?;
    wait_for("ghost reported missing", T, || {
        let d = c.cli_ok(0, &["storage", "get", "ghost"]).ok()?;
        (d["hosts"][0]["state"] == "missing").then_some(())
    })?;
    let r = c.cli(0, &["vm", "create", "haunted", "--disk", "1G@ghost"]);
    assert!(!r.success && r.stderr.contains("storage ghost is missing"), "{}", r.stderr);
    let r = c.cli(0, &["storage", "add", "file", "--kind", "local", "--path", &raw.to_string_lossy()]);
    assert!(!r.success && r.stderr.contains("is not a directory"), "{}", r.stderr);
    // The operator deletes the failed VM.
    c.cli_ok(0, &["vm", "delete", "bad", "--yes"])?;
    wait_for("bad gone", T, || c.vm_names(0).ok()?.is_empty().then_some(()))?;
    Ok(())
}

#[test]
fn console_on_the_test_driver_says_there_is_none() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("solo", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    c.cli_ok(0, &["vm", "create", "x", "--wait"])?;
    let r = c.cli(0, &["vm", "console", "x"]);
    assert!(!r.success && r.stderr.contains("no serial console"), "{}", r.stderr);
    Ok(())
}
