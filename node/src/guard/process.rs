//! `kvmesh guard`: the fence guard, a separate process that outlives the
//! daemon.
//!
//! QEMU guests are children of libvirtd, not of kvmesh, so a daemon that is
//! killed, stopped or stuck fences nothing by itself. The guard holds the
//! daemon's lease deadline, which the daemon sends ("pets") over a Unix
//! socket in its data dir, and kills the host's HA domains once it passes:
//! at the same moment the daemon would have fenced itself, whether the
//! daemon is alive or not. It has no Raft, no network and no async runtime,
//! and it logs through a lossy queue so that a frozen disk never delays a
//! kill. While it protects HA domains it keeps `/dev/watchdog` armed, if the
//! host has one, so that a dead guard resets the host (as Proxmox's
//! watchdog-mux does).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::kill::{fence_all, qemu_pid_dir};
use super::rule::{due, may_exit, watchdog_step, FencingLevel, Pet, WatchdogStep};
use super::watchdog::Watchdog;
use super::{boottime_ns, socket_path, FENCE_BUDGET};

/// How the guard is started: by the daemon, with the daemon's settings.
#[derive(Clone, Debug, clap::Args)]
pub struct GuardArgs {
    /// The daemon's data dir: the socket (`guard.sock`) and the log
    /// (`guard.log`) live there.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The libvirt connection whose domains it kills when it cannot find a
    /// QEMU pid file.
    #[arg(long, default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// The watchdog device, armed while HA domains are protected.
    #[arg(long, default_value = "/dev/watchdog")]
    pub watchdog: PathBuf,
    /// The watchdog's timeout in seconds: a guard silent this long resets
    /// the host. The daemon passes down_after - fence_after - 1 s, so a host
    /// whose guard died is reset before the leader restarts its guests.
    #[arg(long, default_value_t = 2)]
    pub watchdog_timeout_s: u32,
}

/// What the connection threads share with the main loop.
#[derive(Default)]
struct Shared {
    pet: Pet,
    connections: usize,
    /// The newest connection: only its pets count (an older one may still
    /// deliver a late line).
    newest: u64,
    /// Set once the guard decided to exit: new connections are not greeted,
    /// so their daemon starts a new guard.
    closing: bool,
    /// Whether any target is protected, for the watchdog thread.
    protecting: bool,
    /// The watchdog is armed and cannot be stopped (`nowayout`): the guard
    /// must live on to feed it.
    watchdog_held: bool,
    /// When the last daemon connection closed (boottime ns).
    gone_since: Option<u64>,
}

/// A daemon without a connection for this long, with nothing left to
/// guard, lets the guard exit (a restarted daemon starts a new one).
const IDLE_EXIT: Duration = Duration::from_secs(30);

pub fn run(args: GuardArgs) -> Result<(), String> {
    let socket = socket_path(&args.data_dir);
    // One guard per data dir: a live one answers.
    if UnixStream::connect(&socket).is_ok() {
        return Ok(());
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    // Only the daemon's own user may pet: a pet from anyone else could hold
    // off fencing for ever.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", socket.display()))?;
    let log = Log::open(&args.data_dir.join("guard.log"));
    let level = if args.watchdog.exists() { FencingLevel::Watchdog } else { FencingLevel::GuardOnly };
    log.line(format!("guard started (pid {}, fencing level {})", std::process::id(), level.as_str()));
    let shared = Arc::new(Mutex::new(Shared { gone_since: boottime_ns(), ..Default::default() }));
    // Not checked again: a stat of a hung data-dir mount would stall the
    // loop that kills.
    {
        let (shared, log) = (shared.clone(), log.clone());
        std::thread::spawn(move || accept(listener, shared, log, level));
    }
    let pid_dir = qemu_pid_dir(&args.libvirt_uri);
    {
        // Its own thread: a fencing pass (up to the budget) must not delay a
        // keepalive.
        let (shared, log) = (shared.clone(), log.clone());
        let watchdog = Watchdog::new(args.watchdog.clone(), args.watchdog_timeout_s);
        std::thread::spawn(move || keep_watchdog(watchdog, shared, log));
    }
    let mut last_fence: Option<u64> = None;
    let mut any_alive = false;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = boottime_ns().unwrap_or(0);
        let (pet, gone_since) = {
            let mut s = lock(&shared);
            s.protecting = !s.pet.targets.is_empty();
            (s.pet.clone(), s.gone_since)
        };
        // Fence again every second while due: a target that survived a
        // kill, or one libvirt restarted, is caught on the next pass.
        if due(&pet, now) && last_fence.is_none_or(|t| now.saturating_sub(t) >= 1_000_000_000) {
            last_fence = Some(now);
            let targets: Vec<String> = pet.targets.iter().cloned().collect();
            let uri = args.libvirt_uri.clone();
            let report = fence_all(&targets, pid_dir.as_deref(), FENCE_BUDGET, move |name| destroy(&uri, name));
            any_alive = !report.killed.is_empty() || !report.failed.is_empty();
            if any_alive {
                log.line(format!(
                    "lease ran out without a pet from the daemon: fenced {:?} in {} ms; failed: {:?}",
                    report.killed,
                    report.took.as_millis(),
                    report.failed
                ));
            }
        }
        if may_exit(&pet, now, gone_since, IDLE_EXIT.as_nanos() as u64, any_alive) {
            // Decided under the lock, so a daemon that connects meanwhile is
            // either seen here or refused (and starts a new guard).
            let mut s = lock(&shared);
            if s.connections > 0 || s.gone_since.is_none() || s.watchdog_held {
                continue;
            }
            s.closing = true;
            s.protecting = false;
            drop(s);
            let _ = std::fs::remove_file(&socket);
            log.line("no daemon and nothing to guard: exiting");
            std::thread::sleep(Duration::from_millis(300));
            return Ok(());
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Arms the watchdog while targets are protected, pets it twice a timeout,
/// and magic-closes it when there is nothing left to protect (a `nowayout`
/// one is fed instead, and keeps the guard alive).
fn keep_watchdog(mut watchdog: Watchdog, shared: Arc<Mutex<Shared>>, log: Log) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let nowayout = watchdog.nowayout();
        // Decided and done under the lock, so the main loop never exits
        // between an arm and `watchdog_held`, and never sees a guard about
        // to exit arm it.
        let mut s = lock(&shared);
        let protecting = s.protecting && !s.closing;
        let line = match watchdog_step(watchdog.present(), watchdog.armed(), protecting, nowayout) {
            WatchdogStep::Arm => Some(watchdog.arm().map_or_else(|e| e, |()| "watchdog armed".into())),
            WatchdogStep::Pet => {
                watchdog.keepalive();
                None
            }
            WatchdogStep::Disarm => Some(watchdog.disarm().map_or_else(|e| e, |()| "watchdog disarmed".into())),
            WatchdogStep::Idle => None,
        };
        s.watchdog_held = nowayout && watchdog.armed();
        drop(s);
        if let Some(line) = line {
            log.line(line);
        }
    }
}

/// Serves daemon connections; only the newest one's pets count.
fn accept(listener: UnixListener, shared: Arc<Mutex<Shared>>, log: Log, level: FencingLevel) {
    for stream in listener.incoming().flatten() {
        let (shared, log) = (shared.clone(), log.clone());
        std::thread::spawn(move || {
            let id = {
                let mut s = lock(&shared);
                if s.closing {
                    return;
                }
                s.connections += 1;
                s.newest += 1;
                s.newest
            };
            serve(&stream, id, &shared, &log, level);
            let mut s = lock(&shared);
            s.connections -= 1;
            if s.connections == 0 {
                s.gone_since = boottime_ns();
            }
            drop(s);
            log.line("daemon disconnected: the lease it last sent still holds");
        });
    }
}

/// One daemon connection: the greeting, then a pet per complete line.
fn serve(stream: &UnixStream, id: u64, shared: &Mutex<Shared>, log: &Log, level: FencingLevel) {
    let mut writer = stream;
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    if writer.write_all(format!("guard {}\n", level.as_str()).as_bytes()).is_err() {
        return;
    }
    log.line("daemon connected".to_string());
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            // A line cut off by the daemon's death is not a pet.
            Ok(_) if !line.ends_with('\n') => return,
            Ok(_) => {}
        }
        if let Some(pet) = Pet::parse(&line) {
            let mut s = lock(shared);
            if s.newest == id {
                s.pet = pet;
                s.gone_since = None;
            }
        }
    }
}

/// The libvirt fallback for a target without a QEMU pid file: whether a
/// running domain was destroyed.
fn destroy(uri: &str, name: &str) -> Result<bool, String> {
    let conn = virt::connect::Connect::open(Some(uri)).map_err(|e| format!("libvirt: {e}"))?;
    let Ok(dom) = conn.lookup_domain_by_name(name) else { return Ok(false) };
    if !dom.is_active().unwrap_or(true) {
        return Ok(false);
    }
    match dom.destroy() {
        Ok(()) => Ok(true),
        // Stopped between the check and the destroy: gone, as asked.
        Err(_) if !dom.is_active().unwrap_or(true) => Ok(false),
        Err(e) => Err(format!("libvirt destroy: {e}")),
    }
}

/// A log that never blocks its caller: lines go through a bounded queue to
/// a writer thread and are dropped when the queue is full (a frozen disk).
#[derive(Clone)]
struct Log(mpsc::SyncSender<String>);

impl Log {
    fn open(path: &Path) -> Log {
        let (tx, rx) = mpsc::sync_channel::<String>(256);
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).ok();
            for line in rx {
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
        });
        Log(tx)
    }

    fn line(&self, text: impl Into<String>) {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let _ = self.0.try_send(format!("{}.{:03} {}\n", at.as_secs(), at.subsec_millis(), text.into()));
    }
}
