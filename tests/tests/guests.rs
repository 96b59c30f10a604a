//! Guests as operators run them, on the three-host testbed with real TCG
//! guests: a serial shell driven through a node that is not the guest's
//! host, a VNC handshake through `vm vnc`'s proxy, a new size applied at the
//! next start (and pending while it runs), and installs from an ISO: the
//! test guest's GRUB ISO booted from the CD-ROM with BIOS through a blank
//! disk, and with UEFI on q35, its variables kept next to its local disk and
//! carried along when it moves cold and live; a host whose OVMF is hidden
//! says so and gets no UEFI VM.
//!
//! Every check reads the guest itself (what its shell answers, what it
//! prints of its CPUs and memory and how it booted) or `virsh` on its host.
//!
//! Needs root, the packages of scripts/libvirtd.sh and the test guest with
//! its ISO (scripts/test.sh provides all three).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kvmesh_tests::testbed::{addr, cli, guest_iso, guest_with, running_on, shared_guest, testbed, up3, virsh_on};
use kvmesh_tests::{cli_command, run_cli, run_cli_as, wait_for};

/// The guest's console log as its host keeps it.
fn console(name: &str) -> String {
    let r = run_cli(&addr("h1"), &["vm", "console", name, "--tail", "--bytes", "200000", "-o", "json"]);
    r.json().ok().and_then(|v| v["data"].as_str().map(str::to_string)).unwrap_or_default()
}

/// The last `KVMESH-HW cpus=N mem_kib=M` the guest printed.
fn hardware_seen(name: &str) -> Option<(u32, u64)> {
    let log = console(name);
    let line = log.lines().rev().find_map(|l| l.trim().strip_prefix("KVMESH-HW "))?.to_string();
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<u64>().ok());
    Some((field("cpus=")? as u32, field("mem_kib=")?))
}

/// Types `input` into the guest's serial console through `via` (stdin not
/// a terminal) and returns what the session printed.
fn type_into(via: &str, name: &str, input: &str, extra: &[&str]) -> Result<String> {
    let mut child = cli_command(&addr(via))
        .args(["vm", "console", name, "--linger", "3"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = wait_output(child, Duration::from_secs(60))?;
    ensure!(out.status.success(), "vm console failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_output(child: std::process::Child, limit: Duration) -> Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("the CLI did not finish within {limit:?}")
        }
    }
}

/// An RFB (VNC) handshake through `vm vnc`'s local port: the server's
/// version, the security types (None, on the host's root-only socket),
/// the result, and the ServerInit with the display's size.
fn rfb_handshake(via: &str, name: &str) -> Result<(u16, u16)> {
    let mut proxy = cli_command(&addr(via))
        .args(["vm", "vnc", name, "--listen", "127.0.0.1:0", "--once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = proxy.stdout.take().context("stdout")?;
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&first).into_owned();
    let at = line.split("connect a VNC viewer to ").nth(1).and_then(|r| r.split(',').next());
    let Some(at) = at else {
        let _ = proxy.kill();
        let mut err = String::new();
        let _ = proxy.stderr.take().map(|mut e| e.read_to_string(&mut err));
        bail!("vm vnc said {line:?} {err}");
    };
    let mut s = std::net::TcpStream::connect(at.trim())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut version = [0u8; 12];
    s.read_exact(&mut version)?;
    ensure!(version.starts_with(b"RFB 003."), "not an RFB server: {version:?}");
    s.write_all(b"RFB 003.008\n")?;
    let mut count = [0u8; 1];
    s.read_exact(&mut count)?;
    let mut types = vec![0u8; count[0] as usize];
    s.read_exact(&mut types)?;
    ensure!(types.contains(&1), "security types {types:?} lack None");
    s.write_all(&[1])?;
    let mut result = [0u8; 4];
    s.read_exact(&mut result)?;
    ensure!(result == [0, 0, 0, 0], "security result {result:?}");
    s.write_all(&[1])?; // ClientInit: shared
    let mut init = [0u8; 24];
    s.read_exact(&mut init)?;
    drop(s);
    let _ = wait_output(proxy, Duration::from_secs(20));
    Ok((u16::from_be_bytes([init[0], init[1]]), u16::from_be_bytes([init[2], init[3]])))
}

#[test]
fn consoles_sizes_and_iso_installs_on_real_guests() -> Result<()> {
    let _teardown = up3()?;
    shared_guest()?;
    let r =
        run_cli(&addr("h1"), &["image", "import", "guest-iso", &guest_iso(), "--storage", "shared", "--kind", "iso"]);
    ensure!(r.success, "image import: {}", r.stderr);

    // An interactive serial console, typed into through h1 while the
    // guest runs on h2; its shell computes the answer, so an echo of
    // the typed line cannot pass for it.
    cli("h1", &["network", "add", "tnet", "--kind", "isolated"])?;
    wait_for("tnet ready on every host", Duration::from_secs(30), || {
        let hosts = cli("h1", &["network", "get", "tnet"]).ok()?["hosts"].as_array()?.clone();
        (hosts.len() == 3 && hosts.iter().all(|h| h["state"] == "ready")).then_some(())
    })?;
    let cmdline = "console=ttyS0 kvmesh.shell kvmesh.agent kvmesh.ip=10.88.0.5/24";
    guest_with("h2", "shell", false, &["--cmdline", cmdline, "--nic", "tnet"])?;
    wait_for("the guest's shell", Duration::from_secs(60), || console("shell").contains("KVMESH-HW").then_some(()))?;
    let out = type_into("h1", "shell", "echo KVMESH-ANSWER $((6*7))\n", &[])?;
    ensure!(out.contains("KVMESH-ANSWER 42"), "the shell did not answer through h1: {out:?}");

    // On a terminal (script(1) gives it one): raw mode, Ctrl-] leaves; a
    // second session meanwhile is refused with the reason.
    let cmd = cli_command(&addr("h3"));
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .chain(["vm", "console", "shell"].map(String::from))
        .collect::<Vec<_>>()
        .join(" ");
    let mut tty = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut keys = tty.stdin.take().context("stdin")?;
    std::thread::sleep(Duration::from_secs(3));
    keys.write_all(b"echo KVMESH-TTY $((2+3))\r")?;
    let second = run_cli_as(&addr("h1"), "table", &["vm", "console", "shell"]);
    ensure!(!second.success && second.stderr.contains("already has a session"), "a second session: {}", second.stderr);
    std::thread::sleep(Duration::from_secs(3));
    keys.write_all(&[0x1d])?;
    let out = wait_output(tty, Duration::from_secs(20)).context("Ctrl-] did not end the session")?;
    let shown = String::from_utf8_lossy(&out.stdout);
    ensure!(shown.contains("Connected to shell's serial console on h2"), "{shown:?}");
    ensure!(shown.contains("KVMESH-TTY 5"), "the shell did not answer on a terminal: {shown:?}");
    drop(keys);
    // A session left open elsewhere is taken over with --force.
    let mut held = cli_command(&addr("h1"))
        .args(["vm", "console", "shell", "--linger", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let keep_open = held.stdin.take();
    std::thread::sleep(Duration::from_secs(2));
    let out = type_into("h3", "shell", "echo KVMESH-FORCED $((3*3))\n", &["--force"])?;
    ensure!(out.contains("KVMESH-FORCED 9"), "--force did not take the console over: {out:?}");
    let old = wait_output(held, Duration::from_secs(20))?;
    ensure!(String::from_utf8_lossy(&old.stderr).contains("took this console over"), "{:?}", old);
    drop(keep_open);

    // VNC through h3's proxy.
    let (width, height) = rfb_handshake("h3", "shell")?;
    ensure!(width > 0 && height > 0, "display {width}x{height}");

    // What its guest agent says, through h3 (the agent answers on the
    // guest's virtio-serial port, as qemu-ga would).
    let guest = wait_for("the guest agent's answer", Duration::from_secs(60), || {
        let v = cli("h3", &["vm", "get", "shell"]).ok()?;
        v["guest"]["interfaces"].to_string().contains("10.88.0.5/24").then_some(v)
    })?;
    ensure!(guest["guest"]["os"] == "kvmesh test guest (busybox)", "{}", guest["guest"]);
    let mac = guest["nics"][0]["mac"].as_str().context("mac")?;
    ensure!(guest["guest"]["interfaces"][0]["mac"] == mac, "the agent's MAC is the NIC's: {}", guest["guest"]);

    // A new size while it runs: the vCPU is plugged in live (the guest
    // brings it online); memory and a CPU model wait for the next start.
    let v = cli("h1", &["vm", "set", "shell", "--vcpus", "2", "--memory", "256M", "--cpu-model", "qemu64"])?;
    let pending: Vec<String> = serde_json::from_value(v["pending_changes"].clone())?;
    ensure!(
        pending == ["vcpus: 1 -> 2", "memory: 128 MiB -> 256 MiB", "cpu model: default -> qemu64"],
        "pending: {pending:?}"
    );
    let still = serde_json::json!(["memory: 128 MiB -> 256 MiB", "cpu model: default -> qemu64"]);
    wait_for("the vCPU plugged in live", Duration::from_secs(60), || {
        let pending = cli("h1", &["vm", "get", "shell"]).ok()?["pending_changes"].clone();
        (hardware_seen("shell")?.0 == 2 && pending == still).then_some(())
    })
    .with_context(|| format!("{:?}", hardware_seen("shell")))?;
    ensure!(hardware_seen("shell").is_some_and(|h| h.1 < 200_000), "the memory waits for the restart");
    // Too big for every host: refused, nothing changes.
    let r = run_cli(&addr("h1"), &["vm", "set", "shell", "--memory", "512G"]);
    ensure!(!r.success && r.stderr.contains("no longer fits on its host h2"), "{}", r.stderr);
    // `vm stop` asks the agent first.
    cli("h1", &["vm", "stop", "shell", "--wait", "--timeout", "60"])?;
    ensure!(console("shell").contains("KVMESH-AGENT-SHUTDOWN"), "not stopped through its agent: {}", console("shell"));
    let r = run_cli_as(&addr("h3"), "table", &["vm", "console", "shell"]);
    ensure!(!r.success && r.stderr.contains("is not running"), "console of a stopped VM: {}", r.stderr);
    cli("h1", &["vm", "start", "shell", "--wait"])?;
    let (cpus, mem_kib) =
        wait_for("the new size in the guest", Duration::from_secs(90), || hardware_seen("shell").filter(|h| h.0 == 2))?;
    ensure!((200_000..262_144).contains(&mem_kib), "about 256 MiB, saw {mem_kib} KiB ({cpus} CPUs)");
    ensure!(cli("h1", &["vm", "get", "shell"])?["pending_changes"].as_array().is_some_and(|p| p.is_empty()));

    // cloud-init: the guest mounts its seed and prints what it holds.
    let dir = std::env::temp_dir().join(format!("kvmesh-guests-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (user_data, keys, bad) = (dir.join("user-data"), dir.join("keys.pub"), dir.join("bad"));
    std::fs::write(&user_data, "#cloud-config\nkvmesh_value: hello-from-user-data\n")?;
    std::fs::write(&keys, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB a@x\n# a comment\nssh-rsa AAAAB3NzaC1yc2E b@y\n")?;
    std::fs::write(&bad, "#cloud-config\npackages:\n  - [nginx\n")?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let r = run_cli(&addr("h1"), &["vm", "create", "bad", "--cloud-init", &path(&bad)]);
    ensure!(!r.success && r.stderr.contains("user-data is not valid YAML: line "), "bad YAML: {}", r.stderr);
    let cmdline = ["--cmdline", "console=ttyS0 kvmesh.cidata"];
    let seed = ["--cloud-init", &path(&user_data), "--ssh-key", &path(&keys), "--hostname", "ci-host"];
    guest_with("h3", "ci", false, &[&cmdline[..], &seed[..]].concat())?;
    let want = "KVMESH-CIDATA hostname=ci-host keys=2 value=hello-from-user-data";
    wait_for("the seed read by the guest", Duration::from_secs(90), || console("ci").contains(want).then_some(()))
        .with_context(|| console("ci"))?;
    // A changed seed is pending while the guest runs and rebuilt at its restart.
    let v = cli("h1", &["vm", "set", "ci", "--hostname", "renamed"])?;
    ensure!(v["pending_changes"].to_string().contains("cloud-init"), "{}", v["pending_changes"]);
    ensure!(v["cloud_init"]["user_data_bytes"].as_u64() == Some(49), "the rest kept: {v}");
    ensure!(v["cloud_init"].get("user_data").is_none(), "user-data is never sent back: {v}");
    cli("h1", &["vm", "restart", "ci", "--wait"])?;
    wait_for("the rebuilt seed", Duration::from_secs(90), || {
        console("ci").contains("KVMESH-CIDATA hostname=renamed keys=2").then_some(())
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    // A host without OVMF says so; UEFI is refused for a VM on it, and the
    // scheduler keeps UEFI VMs off it.
    testbed(&["hide-ovmf", "h3"])?;
    let h3 = wait_for("h3 reporting no OVMF", Duration::from_secs(30), || {
        cli("h1", &["node", "get", "h3"]).ok().filter(|n| n["uefi"] == false)
    })?;
    ensure!(h3["uefi_missing"].as_str().is_some_and(|m| m.contains("ovmf")), "{h3}");
    let r = run_cli(&addr("h1"), &["vm", "set", "ci", "--firmware", "uefi"]);
    ensure!(!r.success && r.stderr.contains("cannot boot UEFI guests"), "UEFI on h3: {}", r.stderr);
    let r = run_cli(&addr("h1"), &["vm", "create", "u3", "--firmware", "uefi", "--node", "h3", "--dry-run"]);
    ensure!(r.code == Some(3) && r.stdout.contains("boots UEFI and this host cannot"), "{} {}", r.stdout, r.stderr);
    // A live move: the target builds its own seed (each host has its own
    // data dir here), and the guest runs on.
    let moved = cli("h1", &["vm", "migrate", "ci", "--to", "h1", "--wait"])?;
    ensure!(moved["node"] == "h1", "{moved}");
    let d = moved["domain"].as_str().context("domain")?;
    let xml = virsh_on("h1", &["dumpxml", d]);
    ensure!(xml.contains("/h1/") && xml.contains("_cidata.iso"), "the seed on the target: {xml}");
    ensure!(running_on("h1").contains(&d.to_string()) && !running_on("h3").contains(&d.to_string()));

    // Installs from an ISO. BIOS on pc, the default boot order: the
    // blank disk has nothing to boot, so SeaBIOS goes on to the CD.
    let r = run_cli(&addr("h1"), &["vm", "create", "bad", "--cdrom", "guest-kernel"]);
    ensure!(!r.success && r.stderr.contains("not a iso image"), "a kernel as a CD: {}", r.stderr);
    cli("h1", &["vm", "create", "bios", "--memory", "128", "--disk", "64M@shared", "--cdrom", "guest-iso", "--wait"])?;
    // UEFI on q35 from the CD first, its variables next to its disk (on
    // local storage, so they must be carried when it moves).
    let uefi = cli(
        "h1",
        &[
            "vm",
            "create",
            "uefi",
            "--memory",
            "256",
            "--disk",
            "64M@local",
            "--cdrom",
            "guest-iso",
            "--firmware",
            "uefi",
            "--machine",
            "q35",
            "--boot-order",
            "cdrom,disk",
            "--wait",
        ],
    )?;
    for name in ["bios", "uefi"] {
        wait_for(&format!("{name} booted from its CD"), Duration::from_secs(180), || {
            console(name).contains("KVMESH-ISO-BOOT").then_some(())
        })?;
    }
    let domain = uefi["domain"].as_str().context("domain")?;
    let host = uefi["node"].as_str().context("node")?;
    ensure!(host != "h3", "a UEFI VM placed on h3, which has no OVMF");
    let xml = virsh_on(host, &["dumpxml", domain]);
    ensure!(xml.contains("machine='pc-q35") && xml.contains("OVMF_CODE"), "{xml}");
    let vars = |h: &str| format!("{}/{h}/kvmesh/images/{domain}_VARS.fd", kvmesh_tests::testbed::DIR);
    let template =
        std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").or_else(|_| std::fs::read("/usr/share/OVMF/OVMF_VARS.fd"))?;
    // OVMF records its boot entries at the first boot.
    let written = wait_for("OVMF's variables written", Duration::from_secs(60), || {
        std::fs::read(vars(host)).ok().filter(|v| v.len() == template.len() && *v != template)
    })?;
    // Stopped, it moves cold with its disk and its variables; running, it
    // moves live back with them (QEMU writes the moved flash to the new file).
    cli("h1", &["vm", "stop", "uefi", "--force"])?;
    wait_for("uefi stopped", Duration::from_secs(30), || {
        cli("h1", &["vm", "get", "uefi"]).ok().filter(|v| v["state"] == "stopped").map(|_| ())
    })?;
    let to = if host == "h1" { "h2" } else { "h1" };
    cli("h1", &["vm", "migrate", "uefi", "--to", to, "--copy-storage", "--wait"])?;
    ensure!(std::fs::read(vars(to))? == std::fs::read(vars(host))?, "the variables on {to} are not {host}'s");
    ensure!(std::fs::read(vars(to))? != template, "{to} has OVMF's template");
    cli("h1", &["vm", "start", "uefi", "--wait"])?;
    let booted = console("uefi").matches("KVMESH-ISO-BOOT").count();
    wait_for("uefi booted on its new host", Duration::from_secs(180), || {
        (console("uefi").matches("KVMESH-ISO-BOOT").count() > booted).then_some(())
    })?;
    let _ = std::fs::remove_file(vars(host));
    cli("h1", &["vm", "migrate", "uefi", "--to", host, "--copy-storage", "--wait"])?;
    let back = wait_for("the variables written on the way back", Duration::from_secs(30), || {
        std::fs::read(vars(host)).ok().filter(|v| *v != template)
    })?;
    ensure!(back.len() == written.len(), "the variables after a live move: {} bytes", back.len());

    // The CD-ROM ejected and inserted live, as virsh on the host sees it.
    let bios = cli("h1", &["vm", "get", "bios"])?;
    let (domain, host) = (bios["domain"].as_str().context("domain")?, bios["node"].as_str().context("node")?);
    let medium = |d: &str, h: &str| {
        virsh_on(h, &["domblklist", d])
            .lines()
            .find(|l| l.trim_start().starts_with("hdc"))
            .unwrap_or_default()
            .to_string()
    };
    ensure!(
        medium(domain, host).contains(".iso") || medium(domain, host).contains("image-"),
        "{}",
        medium(domain, host)
    );
    cli("h1", &["vm", "cdrom", "eject", "bios"])?;
    wait_for("the medium ejected", Duration::from_secs(30), || medium(domain, host).ends_with('-').then_some(()))?;
    cli("h1", &["vm", "cdrom", "insert", "bios", "guest-iso"])?;
    wait_for("the medium back", Duration::from_secs(30), || (!medium(domain, host).ends_with('-')).then_some(()))?;
    let r = run_cli(&addr("h1"), &["image", "delete", "guest-iso"]);
    ensure!(!r.success && r.stderr.contains("bios"), "an ISO in a drive is kept: {}", r.stderr);
    Ok(())
}
