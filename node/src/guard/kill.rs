//! Killing a set of domains at once, within a time budget: the one fencing
//! routine, used by the guard and by the daemon's own self-fencing.
//!
//! Every target gets its own thread, so eight guests take as long as one.
//! Where libvirt keeps QEMU's pid files (`/run/libvirt/qemu` for
//! `qemu:///system`), the QEMU process is sent SIGKILL directly: that needs
//! no answer from libvirtd, which may be the thing that hangs. The process
//! is held by a pidfd and checked against `/proc/PID/cmdline` before it is
//! signalled through that pidfd, so a reused pid is never killed; a domain
//! without a pid file there does not run. Where there are no pid files, the
//! caller's `destroy` (a libvirt call) is used. Whatever has not finished
//! within the budget is reported, never waited for.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How fencing went.
#[derive(Debug, Default)]
pub struct FenceReport {
    /// Killed now (a QEMU process that was alive, or a libvirt destroy that
    /// succeeded).
    pub killed: Vec<String>,
    /// Not running (no process, or libvirt had none).
    pub absent: Vec<String>,
    /// With why: failed, or not finished within the budget.
    pub failed: Vec<(String, String)>,
    pub took: Duration,
}

/// Where libvirt keeps QEMU's pid files for `uri`, if it is a local
/// system connection.
pub fn qemu_pid_dir(uri: &str) -> Option<PathBuf> {
    (uri == "qemu:///system").then(|| PathBuf::from("/run/libvirt/qemu"))
}

/// The QEMU process of `domain` with a pidfd for it. The pidfd is taken
/// before the command line is checked, so the process checked is the one
/// signalled even if its pid were reused in between.
fn qemu_process(pid_dir: &Path, domain: &str) -> Option<(i32, OwnedFd)> {
    let text = std::fs::read_to_string(pid_dir.join(format!("{domain}.pid"))).ok()?;
    let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1)?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    runs_domain(&cmdline, domain).then_some((pid, pidfd))
}

/// Whether a NUL-separated command line is QEMU's for `domain`: libvirt
/// passes `-name guest=NAME,...`.
fn runs_domain(cmdline: &[u8], domain: &str) -> bool {
    let wanted = format!("guest={domain}");
    cmdline.split(|b| *b == 0).any(|arg| {
        let arg = String::from_utf8_lossy(arg);
        arg.split(',').next() == Some(wanted.as_str())
    })
}

/// Kills `targets` at once and waits at most `budget`. `destroy` is the
/// fallback for a target without a pid file; it returns whether there was
/// a running domain to destroy.
pub fn fence_all<D>(targets: &[String], pid_dir: Option<&Path>, budget: Duration, destroy: D) -> FenceReport
where
    D: Fn(&str) -> Result<bool, String> + Clone + Send + 'static,
{
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    for name in targets {
        let (sender, target, pid_dir, destroy) =
            (tx.clone(), name.clone(), pid_dir.map(Path::to_path_buf), destroy.clone());
        // Detached on purpose: a libvirt call that hangs must not hold the
        // caller past its budget.
        let spawned = std::thread::Builder::new().name("fence".into()).spawn(move || {
            let outcome = kill_one(&target, pid_dir.as_deref(), &destroy);
            let _ = sender.send((target, outcome));
        });
        if let Err(e) = spawned {
            let _ = tx.send((name.clone(), Err(format!("cannot start a thread: {e}"))));
        }
    }
    drop(tx);
    let mut report = FenceReport::default();
    let mut pending: std::collections::BTreeSet<String> = targets.iter().cloned().collect();
    while !pending.is_empty() {
        let left = budget.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok((name, outcome)) => {
                pending.remove(&name);
                match outcome {
                    Ok(true) => report.killed.push(name),
                    Ok(false) => report.absent.push(name),
                    Err(e) => report.failed.push((name, e)),
                }
            }
            Err(_) => break,
        }
    }
    for name in pending {
        report.failed.push((name, format!("not finished within {} ms", budget.as_millis())));
    }
    report.took = started.elapsed();
    report
}

fn kill_one<D: Fn(&str) -> Result<bool, String>>(
    name: &str,
    pid_dir: Option<&Path>,
    destroy: &D,
) -> Result<bool, String> {
    // Where libvirt keeps pid files, one exists for as long as the QEMU
    // process does (libvirtd dead or not): without one, or without its
    // process, the guest does not run, and libvirt, which may be what
    // hangs, is not asked.
    let Some(dir) = pid_dir else { return destroy(name) };
    let Some((pid, pidfd)) = qemu_process(dir, name) else { return Ok(false) };
    // SAFETY: pidfd_send_signal(2) on the pidfd of the process checked to be
    // this domain's QEMU, without siginfo.
    let sent = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0)
    };
    if sent != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(format!("kill {pid}: {e}")) };
    }
    // SIGKILL is not instant: wait (briefly) until the process is gone, so
    // "fenced" means the guest no longer runs. The pidfd turns readable
    // when the process exits.
    let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let left = until.saturating_duration_since(Instant::now()).as_millis() as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, left) };
        if ready > 0 || gone_or_zombie(pid).is_some() {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Err(format!("QEMU {pid} still runs 2 s after SIGKILL"));
        }
    }
}

/// A domain's QEMU process, held by a pidfd: whether it still runs is
/// known without asking libvirtd (which may be busy with the domain).
pub struct QemuProcess {
    pid: i32,
    pidfd: OwnedFd,
}

impl QemuProcess {
    /// The QEMU process of `domain`, where libvirt keeps pid files.
    pub fn of(pid_dir: &Path, domain: &str) -> Option<Self> {
        qemu_process(pid_dir, domain).map(|(pid, pidfd)| QemuProcess { pid, pidfd })
    }

    /// Whether it has exited (or is a zombie): it runs no guest code.
    pub fn exited(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0 || gone_or_zombie(self.pid).is_some()
    }
}

/// `Some` once the process is a zombie or gone: it no longer runs code.
fn gone_or_zombie(pid: i32) -> Option<()> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => Some(()),
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']).then_some(())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_counts_only_when_its_command_line_runs_that_domain() {
        let line = b"/usr/bin/qemu-system-x86_64\0-name\0guest=kvmesh-00ab,debug-threads=on\0-S\0";
        assert!(runs_domain(line, "kvmesh-00ab"));
        assert!(!runs_domain(line, "kvmesh-00a"), "a prefix is another domain");
        assert!(!runs_domain(b"sleep\0sixty\0", "kvmesh-00ab"));
    }

    #[test]
    fn every_target_is_killed_at_once_and_a_hung_one_does_not_hold_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        // A real process standing in for QEMU, with the argument libvirt
        // gives QEMU (`sh -c SCRIPT ARG0`: ARG0 is in its command line).
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
                "guest=kvmesh-0a,debug-threads=on",
            ])
            .spawn()
            .unwrap();
        std::fs::write(dir.path().join("kvmesh-0a.pid"), child.id().to_string()).unwrap();
        let pid = child.id();
        let recognised = || qemu_process(dir.path(), "kvmesh-0a").is_some();
        // The command line is the new program's once exec has happened.
        let until = Instant::now() + Duration::from_secs(2);
        while !recognised() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(recognised(), "the stand-in is recognised: {:?}", std::fs::read(format!("/proc/{pid}/cmdline")));
        // With a pid dir, the pid files decide: libvirt is never asked.
        let targets: Vec<String> = ["kvmesh-0a", "kvmesh-0b"].map(String::from).to_vec();
        let report = fence_all(&targets, Some(dir.path()), Duration::from_millis(500), |name| {
            Err(format!("libvirt asked about {name}"))
        });
        assert_eq!(report.killed, vec!["kvmesh-0a".to_string()], "{report:?}");
        assert_eq!(report.absent, vec!["kvmesh-0b".to_string()], "no pid file: not running; {report:?}");
        // Without one, libvirt's destroy; one that hangs past the budget
        // does not hold the others.
        let targets: Vec<String> = ["kvmesh-0b", "kvmesh-0c"].map(String::from).to_vec();
        let report = fence_all(&targets, None, Duration::from_millis(500), |name| match name {
            "kvmesh-0c" => {
                std::thread::sleep(Duration::from_secs(3));
                Ok(true)
            }
            _ => Ok(true),
        });
        assert!(report.took < Duration::from_secs(1), "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(report.failed[0].0, "kvmesh-0c");
        assert_eq!(report.killed, vec!["kvmesh-0b".to_string()]);
        let status = child.wait().unwrap();
        assert!(!status.success(), "the stand-in was killed");
    }
}
