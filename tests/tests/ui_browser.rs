//! The web UI in a real browser (Debian's Chromium, headless, driven by
//! selenium: tests/ui_browser.py) against the three-host testbed with real
//! TCG guests, as an operator uses it: log in with a token; the dashboard;
//! a VM created from the form (after the scheduler's preview) that boots
//! the test guest; its serial console in xterm.js, where the guest's shell
//! computes an answer to a typed line (an echo cannot pass for it); a host
//! drained and activated; the drain's event arriving live; the guest's
//! display through noVNC; the storage and networks pages; an image uploaded
//! through the form (the cluster's copy is checked byte for byte). A
//! screenshot of each page is kept in
//! `target/ui-screenshots`. From the outside, `virsh` on the VM's host
//! shows its domain running.
//!
//! Needs root, the packages of scripts/libvirtd.sh, the test guest, and
//! Chromium, chromedriver, certutil and selenium (scripts/test.sh provides
//! them all).

use std::process::Command;

use anyhow::{ensure, Context, Result};
use kvmesh_tests::testbed::{addr, cli, running_on, shared_guest, up3};

#[test]
fn an_operator_runs_the_cluster_from_a_browser() -> Result<()> {
    let _teardown = up3()?;
    shared_guest()?;
    let (ca, token) = kvmesh_tests::client_credentials(&addr("h1"))?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca)?;
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/ui-screenshots");
    let _ = std::fs::remove_dir_all(shots);
    let python = std::env::var("KVMESH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ui_browser.py");
    let (_, initrd) = kvmesh_tests::testbed::guest();
    let (ip, port) = addr("h1").split_once(':').map(|(a, p)| (a.to_string(), p.to_string())).context("address")?;
    let out = Command::new("timeout")
        .args(["600", &python, script])
        .args(["--url", &format!("https://kvmesh-node:{port}/"), "--resolve", &ip])
        .arg("--ca")
        .arg(&ca_file)
        .args(["--token", &token, "--shots", shots, "--vm", "uivm", "--drain", "auto", "--timeout", "180"])
        .args(["--memory", "128", "--kernel", "guest-kernel", "--initrd", "guest-initrd"])
        .args(["--cmdline", "console=ttyS0 kvmesh.shell"])
        .args(["--console-ready", "KVMESH-HW", "--console-line", "echo KVMESH-UI $((6*7))"])
        .args(["--expect-echo", "KVMESH-UI 42", "--expect-vnc"])
        .args([
            "--upload",
            &initrd,
            "--upload-name",
            "ui-initrd",
            "--upload-storage",
            "shared",
            "--upload-kind",
            "initrd",
        ])
        .output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "the browser test failed (screenshots in {shots}):\n{said}");
    for step in ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(i)", "(h)"] {
        ensure!(said.contains(&format!("ok {step}")), "step {step} did not pass:\n{said}");
    }
    // From the outside: the VM the form made runs under libvirt where
    // kvmesh says it does.
    let vm = cli("h1", &["vm", "get", "uivm"])?;
    let (host, domain) = (vm["node"].as_str().unwrap_or_default(), vm["domain"].as_str().unwrap_or_default());
    ensure!(running_on(host).iter().any(|d| d == domain), "virsh on {host} does not run {domain}: {vm}");
    // The upload is the file, byte for byte.
    let uploaded = cli("h1", &["image", "get", "ui-initrd"])?;
    let sha = Command::new("sha256sum").arg(&initrd).output()?;
    let sha = String::from_utf8_lossy(&sha.stdout).split_whitespace().next().unwrap_or_default().to_string();
    ensure!(uploaded["sha256"] == sha.as_str(), "the uploaded image differs from {initrd}: {uploaded}");
    let shots_kept = std::fs::read_dir(shots)?.count();
    ensure!(shots_kept >= 11, "only {shots_kept} screenshots in {shots}");
    Ok(())
}
