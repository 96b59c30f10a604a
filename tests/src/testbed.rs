//! The testbed from the tests' side: three simulated hosts of
//! `scripts/testbed.sh` (network namespace, mount namespace and libvirtd
//! running real QEMU/TCG guests each), and `virsh` against every host to
//! check from the outside what runs where.
//!
//! Only one testbed exists at a time (its namespace names are fixed): each
//! test binary that uses it has a single test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{kvmesh_bin, run_cli, wait_for};

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

/// The test guest's bootable ISO (GRUB for BIOS and UEFI around the same
/// kernel and initrd; see scripts/make-test-guest.sh).
pub fn guest_iso() -> String {
    let (kernel, _) = guest();
    kernel.replace("/vmlinuz", "/guest.iso")
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

/// Running kvmesh domains on host `h`: `virsh list --state-running` from
/// inside its own namespace (so it works while the host is partitioned); a
/// live migration's paused copy on its target does not run. When libvirtd
/// is stopped or gone (a test killed or froze it), the QEMU processes in the
/// host's namespace say it instead: guests outlive libvirtd, and a sample
/// must never miss one. A libvirtd that is merely slow (four migrations on
/// two cores) is waited for: its processes would count a migration's paused
/// incoming copy as running.
pub fn running_on(h: &str) -> Vec<String> {
    let ask = |secs: &str| {
        let a = addr(h);
        let ip = &a[..a.len() - 5];
        Command::new("timeout")
            .args([
                secs,
                "ip",
                "netns",
                "exec",
                &format!("kvmtb-{h}"),
                "virsh",
                "-c",
                &format!("qemu+tcp://{ip}/system"),
            ])
            .args(["list", "--state-running", "--name"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("kvmesh-"))
                    .map(str::to_string)
                    .collect()
            })
    };
    if let Some(running) = ask("5") {
        return running;
    }
    if libvirtd_can_answer(h) {
        if let Some(running) = ask("30") {
            return running;
        }
    }
    qemu_processes_on(h)
}

/// Whether host `h`'s libvirtd exists and is not stopped (SIGSTOP).
fn libvirtd_can_answer(h: &str) -> bool {
    let Ok(pid) = testbed(&["pid", h, "libvirtd"]) else { return false };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) else { return false };
    // The state is the field after the parenthesised command name.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("T" | "t" | "Z" | "X"))
}

/// The kvmesh domains whose QEMU process runs in host `h`'s namespace.
pub fn qemu_processes_on(h: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", &format!("kvmtb-{h}")]).output() else {
        return Vec::new();
    };
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .filter_map(|cmd| {
            cmd.split(|b| *b == 0)
                .filter_map(|arg| std::str::from_utf8(arg).ok())
                .find_map(|arg| arg.strip_prefix("guest=").map(|g| g.split(',').next().unwrap_or(g).to_string()))
        })
        .filter(|name| name.starts_with("kvmesh-"))
        .collect();
    found.sort();
    found.dedup();
    found
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

/// Each running domain -> the hosts running it at one instant, over
/// `hosts`. The hosts are asked one after another, so a live migration's
/// switch-over between two questions shows the guest on its source (asked
/// first) and on its target (asked later) though it never ran on both. So a
/// domain seen on several hosts is asked about again on all but the last of
/// them: a host that still runs it ran it all along, so also at the moment
/// the last one was seen running it. A real double run survives the second
/// look; a hand-over does not (a source never runs its guest again). Only a
/// double run that ends between the two looks (a fraction of a second,
/// unless a libvirtd is slow) is forgiven, and a sampler asking every
/// 0.2 s misses one that short anyway.
pub fn placement_by_virsh(hosts: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in hosts {
        for d in running_on(h) {
            m.entry(d).or_default().push(h.to_string());
        }
    }
    let recheck: BTreeSet<String> =
        m.values().filter(|on| on.len() > 1).flat_map(|on| on[..on.len() - 1].iter().cloned()).collect();
    let again: BTreeMap<String, Vec<String>> = recheck
        .into_iter()
        .map(|h| {
            let r = running_on(&h);
            (h, r)
        })
        .collect();
    for (d, on) in m.iter_mut().filter(|(_, on)| on.len() > 1) {
        let last = on[on.len() - 1].clone();
        let seen = on.clone();
        on.retain(|h| *h == last || again.get(h).is_some_and(|r| r.contains(d)));
        if on.len() < seen.len() {
            eprintln!("{d} was handed over between two questions ({seen:?}); it runs on {on:?}");
        }
    }
    m
}

/// The hosts among `hosts` running `domain` at one instant (see
/// [`placement_by_virsh`]).
pub fn hosts_running(domain: &str, hosts: &[&'static str]) -> Vec<&'static str> {
    let on = placement_by_virsh(hosts).remove(domain).unwrap_or_default();
    hosts.iter().copied().filter(|h| on.iter().any(|o| o == h)).collect()
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

/// Samples every host (every 0.2 s) until `done` says so (or `timeout`), failing on any
/// sample with a guest on two hosts.
pub fn watch(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(d) = double_run(&HOSTS) {
            bail!("while waiting for {what}: a guest ran twice: {d}");
        }
        if done() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; virsh says {:?}", placement_by_virsh(&HOSTS));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Samples every host for `period`, failing on any double run.
pub fn sample_for(what: &str, period: Duration) -> Result<()> {
    let start = Instant::now();
    watch(what, period + Duration::from_secs(5), || start.elapsed() >= period)
}

pub fn cli(via: &str, args: &[&str]) -> Result<Value> {
    let r = run_cli(&addr(via), args);
    ensure!(r.success, "kvmesh {} via {via}: {}", args.join(" "), r.stderr);
    r.json()
}

pub fn vm(via: &str, name: &str) -> Option<Value> {
    vms(&addr(via))?.into_iter().find(|v| v["name"] == name)
}

pub fn domain(via: &str, name: &str) -> String {
    vm(via, name).and_then(|v| v["domain"].as_str().map(str::to_string)).unwrap_or_default()
}

/// Creates a guest on `host` and waits for it to run there: it requires a
/// label of its own that only `host` has at first; the other hosts get it
/// afterwards, so it may restart or move anywhere (a pin would forbid that).
pub fn guest_on(host: &str, name: &str, ha: bool) -> Result<String> {
    guest_with(host, name, ha, &[])
}

/// [`guest_on`] with more `vm create` arguments (disks, say).
pub fn guest_with(host: &str, name: &str, ha: bool, extra: &[&str]) -> Result<String> {
    // The kernel and initrd images on the shared domain (imported once).
    let (kernel, initrd) = ("guest-kernel", "guest-initrd");
    let label = format!("for-{name}=yes");
    cli("h1", &["node", "set", host, "--label", &label])?;
    let mut args = vec!["vm", "create", name, "--memory", "128", "--node-label", &label];
    args.extend(["--kernel", kernel, "--initrd", initrd, "--wait"]);
    if !extra.contains(&"--cmdline") {
        args.extend(["--cmdline", "console=ttyS0"]);
    }
    if ha {
        args.push("--ha");
    }
    args.extend(extra);
    let created = cli("h1", &args)?;
    for other in HOSTS.iter().filter(|h| **h != host) {
        // A host just removed is no longer there to label.
        let _ = run_cli(&addr("h1"), &["node", "set", other, "--label", &label]);
    }
    ensure!(created["node"] == host, "{name} landed on {} instead of {host}", created["node"]);
    let d = created["domain"].as_str().unwrap_or_default().to_string();
    wait_for("the guest under virsh", Duration::from_secs(30), || running_on(host).contains(&d).then_some(()))?;
    Ok(d)
}

/// Sends `sig` (KILL, STOP, CONT) to host `h`'s daemon, guard or libvirtd.
pub fn signal(h: &str, what: &str, sig: &str) -> Result<()> {
    testbed(&["signal", h, what, sig]).map(|_| ())
}

/// The pid of host `h`'s daemon, guard, libvirtd or virtlockd, if one runs.
pub fn pid(h: &str, what: &str) -> Option<u32> {
    testbed(&["pid", h, what]).ok()?.parse().ok()
}

/// Host `h`'s guard log.
pub fn guard_log(h: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{h}/kvmesh/guard.log")).unwrap_or_default()
}

/// The QEMU process of `domain` on host `h` (from libvirt's pid file): the
/// same pid means the same guest, never rebooted.
pub fn qemu_pid(h: &str, domain: &str) -> Option<u32> {
    std::fs::read_to_string(format!("{DIR}/{h}/run/qemu/{domain}.pid")).ok()?.trim().parse().ok()
}

/// Whether host `h`'s virtlockd holds a lock on `file` (from `/proc/locks`,
/// which every host shares here): libvirt's lock manager took the disk's
/// lease, seen from outside kvmesh.
pub fn virtlockd_holds(h: &str, file: &str) -> bool {
    let (Some(pid), Ok(meta)) = (pid(h, "virtlockd"), std::fs::metadata(file)) else { return false };
    let inode = format!(":{}", std::os::unix::fs::MetadataExt::ino(&meta));
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 5 && f[4] == pid.to_string() && f[5].ends_with(&inode)
    })
}

/// A process that holds the lease virtlockd would take on `file` (a POSIX
/// write lock on its first byte) until killed: what the virtlockd of a host
/// whose QEMU image locks do not reach this one holds.
pub fn hold_lockd_lease(file: &str) -> Result<std::process::Child> {
    use std::io::BufRead;
    let hold = "import fcntl, sys, time\n\
        f = open(sys.argv[1], 'r+')\n\
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, 0)\n\
        print('held', flush=True)\n\
        time.sleep(600)\n";
    let mut child = Command::new("python3")
        .args(["-c", hold, file])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start python3")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("holder's stdout")?).read_line(&mut line)?;
    if line.trim() != "held" {
        let _ = child.kill();
        bail!("could not lock {file}");
    }
    Ok(child)
}

/// Brings up a fresh three-host testbed and waits for its three voters and
/// a leader; dropping the returned guard tears it down.
pub fn up3() -> Result<Teardown> {
    let _ = testbed(&["down"]);
    let teardown = Teardown;
    testbed(&["up", "3"])?;
    // The CLI reaches the hosts with the CA and token `cluster init` wrote.
    for h in HOSTS {
        crate::register_client_config(&addr(h), std::path::Path::new(&format!("{DIR}/client.toml")));
    }
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
        // The hosts' logs outlive the testbed, for a failure to be read.
        let keep = format!("{DIR}-logs");
        let _ = std::fs::remove_dir_all(&keep);
        for h in HOSTS {
            let _ = std::fs::create_dir_all(format!("{keep}/{h}"));
            for f in ["kvmesh.log", "kvmesh/guard.log"] {
                let name = f.replace('/', "-");
                let _ = std::fs::copy(format!("{DIR}/{h}/{f}"), format!("{keep}/{h}/{name}"));
            }
        }
        let _ = testbed(&["down"]);
    }
}
