//! The daemon's side of the guard: start it if none runs for this data
//! dir, and send it pets without ever blocking the caller.
//!
//! A dedicated thread owns the connection. Callers hand it the newest
//! [`Pet`] and go on; the thread writes it (reconnecting, or starting the
//! guard again, when the connection broke) and counts what it wrote, so a
//! start can wait, briefly, until the guard knows about a new HA domain.
//! The guard is started in its own session, so it outlives the daemon and
//! a signal to the daemon's process group; a restarted daemon finds it at
//! the socket and takes over its lease.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::rule::{FencingLevel, Pet};
use super::socket_path;
use crate::config::ServeConfig;

pub struct GuardLink {
    inner: Mutex<Inner>,
    wake: Condvar,
    /// `None` when no guard is wanted (the embedded test driver, or turned
    /// off); the level is then fixed.
    start: Option<Start>,
}

struct Start {
    socket: PathBuf,
    data_dir: PathBuf,
    libvirt_uri: String,
    watchdog_timeout_s: u32,
}

struct Inner {
    pet: Pet,
    /// Pets handed in and pets written, so `sync` can wait for its own.
    wanted: u64,
    written: u64,
    level: FencingLevel,
}

impl GuardLink {
    /// Starts the link (and the guard, if none runs) for a daemon.
    pub fn start(config: &ServeConfig) -> Arc<GuardLink> {
        let fixed = if config.libvirt_uri.starts_with("test:") {
            Some(FencingLevel::Embedded)
        } else if config.unsafe_no_guard || cfg!(feature = "unsafe-no-fencing") {
            warn!(
                "the fence guard is turned off: a dead or stopped daemon fences nothing (unsafe; for demonstrations)"
            );
            Some(FencingLevel::DaemonOnly)
        } else {
            None
        };
        let start = fixed.is_none().then(|| Start {
            socket: socket_path(&config.data_dir),
            data_dir: config.data_dir.clone(),
            libvirt_uri: config.libvirt_uri.clone(),
            // A guard that dies at the lease deadline D at the latest resets
            // the host by D + timeout; the leader restarts its guests at
            // D + (down_after - fence_after) at the earliest. Leave a second
            // for the reset itself.
            watchdog_timeout_s: (config.down_after_ms.saturating_sub(config.fence_after_ms) / 1000)
                .saturating_sub(1)
                .max(1) as u32,
        });
        let link = Arc::new(GuardLink {
            inner: Mutex::new(Inner {
                pet: Pet::default(),
                wanted: 0,
                written: 0,
                level: fixed.unwrap_or(FencingLevel::DaemonOnly),
            }),
            wake: Condvar::new(),
            start,
        });
        if link.start.is_some() {
            let l = link.clone();
            std::thread::Builder::new().name("guard-link".into()).spawn(move || l.run()).ok();
        }
        link
    }

    /// How this host is fenced right now.
    pub fn level(&self) -> FencingLevel {
        self.lock().level
    }

    /// Hands the guard the newest pet. Never blocks.
    pub fn pet(&self, pet: Pet) {
        let mut inner = self.lock();
        if inner.pet != pet || inner.written < inner.wanted {
            inner.pet = pet;
            inner.wanted += 1;
            self.wake.notify_all();
        }
    }

    /// Hands over `pet` and waits up to `timeout` until the guard has it:
    /// before a start, so the guard knows a new HA domain before it runs.
    /// `false` if it did not get there (no guard: the daemon's own fencing
    /// remains).
    pub fn sync(&self, pet: Pet, timeout: Duration) -> bool {
        if self.start.is_none() {
            return true;
        }
        let mut inner = self.lock();
        inner.pet = pet;
        inner.wanted += 1;
        let mine = inner.wanted;
        self.wake.notify_all();
        let until = Instant::now() + timeout;
        while inner.written < mine {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self.wake.wait_timeout(inner, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let Some(start) = &self.start else { return };
        let mut conn: Option<UnixStream> = None;
        loop {
            let (pet, gen) = {
                let mut inner = self.lock();
                while inner.written >= inner.wanted {
                    // Wake up now and then to notice a guard that went away.
                    let (g, timeout) =
                        self.wake.wait_timeout(inner, Duration::from_secs(1)).unwrap_or_else(|p| p.into_inner());
                    inner = g;
                    // Nothing handed in yet: a default pet would tell the
                    // guard to drop the targets a previous daemon gave it.
                    if timeout.timed_out() && inner.wanted > 0 {
                        break;
                    }
                }
                (inner.pet.clone(), inner.wanted)
            };
            let line = pet.to_line();
            let mut ok = conn.as_mut().is_some_and(|c| c.write_all(line.as_bytes()).is_ok());
            if !ok {
                conn = connect(start).map(|(c, level)| {
                    self.lock().level = level;
                    c
                });
                ok = conn.as_mut().is_some_and(|c| c.write_all(line.as_bytes()).is_ok());
                if !ok {
                    self.lock().level = FencingLevel::DaemonOnly;
                    conn = None;
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            if ok {
                let mut inner = self.lock();
                inner.written = inner.written.max(gen);
                self.wake.notify_all();
            }
        }
    }
}

/// Connects to the guard, starting one if none answers; the level it
/// reports in its greeting.
fn connect(start: &Start) -> Option<(UnixStream, FencingLevel)> {
    for attempt in 0..2 {
        if attempt == 1 {
            if let Err(e) = spawn(start) {
                warn!(error = %e, "cannot start the fence guard: fencing needs a live daemon");
                return None;
            }
        }
        let until = Instant::now() + Duration::from_secs(if attempt == 0 { 0 } else { 3 });
        loop {
            if let Ok(stream) = UnixStream::connect(&start.socket) {
                let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut greeting = String::new();
                let level = BufReader::new(&stream)
                    .read_line(&mut greeting)
                    .ok()
                    .and_then(|_| greeting.trim().strip_prefix("guard ").and_then(FencingLevel::parse));
                if let Some(level) = level {
                    info!(level = level.as_str(), "connected to the fence guard");
                    return Some((stream, level));
                }
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    None
}

fn spawn(start: &Start) -> std::io::Result<()> {
    // This very binary, even if a package upgrade replaced the file since.
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .arg("guard")
        .arg("--data-dir")
        .arg(&start.data_dir)
        .arg("--libvirt-uri")
        .arg(&start.libvirt_uri)
        .arg("--watchdog-timeout-s")
        .arg(start.watchdog_timeout_s.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the guard from the
    // daemon's session and process group so it outlives the daemon.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    info!(pid = child.id(), "started the fence guard");
    // Reaped when it exits while the daemon lives.
    std::thread::spawn(move || child.wait());
    Ok(())
}
