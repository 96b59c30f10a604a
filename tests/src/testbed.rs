//! The testbed from the tests' side: three simulated hosts of
//! `scripts/testbed.sh` (network namespace, mount namespace and libvirtd
//! running real QEMU/TCG guests each), and `virsh` against every host to
//! check from the outside what runs where.
//!
//! Only one testbed exists at a time (its namespace names are fixed): each
//! test binary that uses it has a single test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{kvmesh_bin, run_cli};

pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// Where the testbed keeps each host's files (`<dir>/<host>/…`).
pub const DIR: &str = "/tmp/kvmesh-testbed-test";

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/testbed.sh"))
}

/// Runs `scripts/testbed.sh ARGS`; its output on success.
pub fn testbed(args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .env("KVMESH_BIN", kvmesh_bin())
        .env("KVMESH_TESTBED_DIR", DIR)
        .output()
        .context("run testbed.sh")?;
    if !out.status.success() {
        bail!(
            "testbed.sh {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Host `h`'s kvmesh address.
pub fn addr(h: &str) -> String {
    format!("10.254.77.{}:7100", 10 + h[1..].parse::<u32>().unwrap())
}

/// The test guest's kernel and initrd.
pub fn guest() -> (String, String) {
    let guest = std::env::var("KVMESH_TEST_GUEST")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-guest").into());
    (format!("{guest}/vmlinuz"), format!("{guest}/initrd.gz"))
}

/// The directory every testbed host sees as the same storage: outside the
/// per-host bind mounts (the stand-in for an NFS or CephFS mount).
pub fn shared_dir() -> String {
    format!("{DIR}/shared")
}

/// Adds the `shared` storage domain on [`shared_dir`], waits until all three
/// hosts prove it shared, and imports the test guest's kernel and initrd
/// into it; their image names.
pub fn shared_guest() -> Result<(String, String)> {
    std::fs::create_dir_all(shared_dir())?;
    let h1 = addr("h1");
    let r = run_cli(&h1, &["storage", "add", "shared", "--kind", "shared-dir", "--path", &shared_dir()]);
    if !r.success {
        bail!("storage add: {}", r.stderr);
    }
    crate::wait_storage_active(&h1, "shared", HOSTS.len())?;
    let (kernel, initrd) = guest();
    for (name, file, kind) in [("guest-kernel", &kernel, "kernel"), ("guest-initrd", &initrd, "initrd")] {
        let r = run_cli(&h1, &["image", "import", name, file, "--storage", "shared", "--kind", kind]);
        if !r.success {
            bail!("image import {name}: {}", r.stderr);
        }
    }
    Ok(("guest-kernel".into(), "guest-initrd".into()))
}

/// Running kvmesh domains on host `h`, asked from inside its own namespace
/// (so it works while the host is partitioned).
pub fn running_on(h: &str) -> Vec<String> {
    let a = addr(h);
    let ip = &a[..a.len() - 5];
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("kvmtb-{h}"), "virsh", "-c", &format!("qemu+tcp://{ip}/system")])
        .args(["list", "--name"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("kvmesh-"))
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// `virsh ARGS` against host `h`'s libvirtd, from inside its namespace; its
/// output (empty on failure).
pub fn virsh_on(h: &str, args: &[&str]) -> String {
    let a = addr(h);
    let ip = &a[..a.len() - 5];
    Command::new("ip")
        .args(["netns", "exec", &format!("kvmtb-{h}"), "virsh", "-c", &format!("qemu+tcp://{ip}/system")])
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Each running domain -> the hosts running it, over `hosts`.
pub fn placement_by_virsh(hosts: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in hosts {
        for d in running_on(h) {
            m.entry(d).or_default().push(h.to_string());
        }
    }
    m
}

/// A domain that runs on two hosts at once, if any.
pub fn double_run(hosts: &[&str]) -> Option<String> {
    placement_by_virsh(hosts).into_iter().find(|(_, h)| h.len() > 1).map(|(d, h)| format!("{d} on {h:?}"))
}

pub fn vms(endpoint: &str) -> Option<Vec<Value>> {
    run_cli(endpoint, &["vm", "list"]).json().ok()?.as_array().cloned()
}

/// Host `h`'s kvmesh log.
pub fn log(h: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{h}/kvmesh.log")).unwrap_or_default()
}

/// Brings up a fresh three-host testbed and waits for its three voters and
/// a leader; dropping the returned guard tears it down.
pub fn up3() -> Result<Teardown> {
    let _ = testbed(&["down"]);
    let teardown = Teardown;
    testbed(&["up", "3"])?;
    crate::wait_for("3 voters", std::time::Duration::from_secs(60), || {
        let s = run_cli(&addr("h1"), &["cluster", "status"]).json().ok()?;
        (s["members"].as_array()?.len() == 3 && !s["leader"].is_null()).then_some(())
    })?;
    Ok(teardown)
}

/// Tears the testbed down when dropped, even after a failed assertion.
pub struct Teardown;
impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = testbed(&["down"]);
    }
}
