//! What this host can still do, found out without ever waiting on it.
//!
//! The heartbeat and fencing must go on when libvirt or the data disk
//! hangs: a heartbeat loop stuck in a libvirt call makes the host fall
//! silent while its guests run on, and the leader restarts them elsewhere.
//! So each slow probe runs on its own, at most one at a time, and callers
//! take the latest result: [`Listing`] keeps the newest list of this node's
//! domains (with the applied index read before it was taken, which is what
//! the leader may trust it for), [`DiskProbe`] writes and syncs a small file
//! in the data dir. Either one not answering becomes the host's `problem`,
//! which it reports in its heartbeats and which keeps new VMs away.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hypervisor::{blocking, Domain, Hypervisor};

/// A list of this node's domains, with what was known when it was taken.
#[derive(Clone, Debug, Default)]
pub struct Listed {
    pub domains: Vec<Domain>,
    /// The replica's applied index, read before the list was taken.
    pub applied_index: u64,
    /// Starts in flight when it was taken (vm id → epoch).
    pub starting: BTreeMap<u64, u64>,
}

#[derive(Default)]
struct ListingState {
    last: Option<Listed>,
    error: Option<String>,
    in_flight_since: Option<Instant>,
    finished: u64,
}

/// A libvirt call that has not finished after this long means libvirt hangs.
const LIBVIRT_STUCK: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Listing {
    state: Mutex<ListingState>,
}

impl Listing {
    fn lock(&self) -> std::sync::MutexGuard<'_, ListingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest list, waiting at most `wait` for a fresh one; with what
    /// is wrong when libvirt failed or has not answered. `before` runs right
    /// before the libvirt call, to record what the list may be trusted for.
    /// A call that outlasts the wait goes on, one at a time, and its result
    /// is kept whenever it arrives.
    pub async fn fresh<B>(
        self: &Arc<Self>,
        hv: &Arc<dyn Hypervisor>,
        wait: Duration,
        before: B,
    ) -> (Option<Listed>, Option<String>)
    where
        B: FnOnce() -> (u64, BTreeMap<u64, u64>) + Send + 'static,
    {
        let target = {
            let mut s = self.lock();
            if s.in_flight_since.is_none() {
                s.in_flight_since = Some(Instant::now());
                let (this, hv) = (self.clone(), hv.clone());
                tokio::spawn(async move {
                    let (applied_index, starting) = before();
                    let listed = blocking(&hv, |hv| hv.list()).await;
                    this.finish(applied_index, starting, listed);
                });
            }
            s.finished + 1
        };
        let until = Instant::now() + wait;
        while self.lock().finished < target && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = self.lock();
        let problem = match (s.in_flight_since, &s.error) {
            // A busy host answers slowly now and then; only a call stuck for
            // longer keeps new VMs away.
            (Some(since), _) if since.elapsed() > LIBVIRT_STUCK => {
                Some(format!("libvirt has not answered for {:.1} s", since.elapsed().as_secs_f64()))
            }
            (_, Some(e)) => Some(format!("libvirt: {e}")),
            _ => None,
        };
        (s.last.clone(), problem)
    }

    fn finish(&self, applied_index: u64, starting: BTreeMap<u64, u64>, listed: crate::error::Result<Vec<Domain>>) {
        let mut s = self.lock();
        s.in_flight_since = None;
        s.finished += 1;
        match listed {
            Ok(domains) => {
                s.last = Some(Listed { domains, applied_index, starting });
                s.error = None;
            }
            Err(e) => s.error = Some(e.to_string()),
        }
    }

    /// The newest list without asking libvirt.
    pub fn last(&self) -> Option<Listed> {
        self.lock().last.clone()
    }
}

/// Writes and syncs a small file in the data dir every second, on its own
/// thread, so a frozen or failing disk shows up as a problem instead of a
/// daemon that silently stops.
pub struct DiskProbe {
    /// When the write in flight started (`None`: none in flight), and the
    /// last error.
    state: Mutex<(Option<Instant>, Option<String>)>,
}

/// A write that has not finished after this long means the disk hangs.
const DISK_STUCK: Duration = Duration::from_secs(5);

impl DiskProbe {
    pub fn start(data_dir: PathBuf) -> Arc<DiskProbe> {
        let probe = Arc::new(DiskProbe { state: Mutex::new((None, None)) });
        let p = probe.clone();
        let file = data_dir.join(".disk-probe");
        let _ = std::thread::Builder::new().name("disk-probe".into()).spawn(move || loop {
            p.lock().0 = Some(Instant::now());
            let result = write_synced(&file);
            *p.lock() =
                (None, result.err().map(|e| format!("cannot write to the data dir {}: {e}", data_dir.display())));
            std::thread::sleep(Duration::from_secs(1));
        });
        probe
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<String>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is wrong with the data disk, if anything.
    pub fn problem(&self) -> Option<String> {
        let s = self.lock();
        match (&s.0, &s.1) {
            (Some(since), _) if since.elapsed() > DISK_STUCK => {
                Some(format!("the data dir's disk has not finished a write for {:.0} s", since.elapsed().as_secs_f64()))
            }
            (_, Some(e)) => Some(e.clone()),
            _ => None,
        }
    }
}

fn write_synced(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(b"kvmesh disk probe\n")?;
    f.sync_data()
}
