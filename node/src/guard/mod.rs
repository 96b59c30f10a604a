//! Fencing that does not depend on the daemon being alive.
//!
//! The daemon fences itself when its lease runs out (`ha::host`), but a
//! daemon that is dead or stopped fences nothing, and its guests, children
//! of libvirtd, run on. So fencing comes in layers: the daemon; the guard
//! ([`process`], `kvmesh guard`), a separate process the daemon pets with
//! its lease deadline over a Unix socket ([`link`]), which kills the host's
//! HA domains when the deadline passes; and the kernel watchdog
//! ([`watchdog`]), which the guard keeps armed while it protects HA guests
//! so that a dead guard resets the host. [`rule`] holds the decisions and
//! [`kill`] the one routine that kills domains, all at once.

pub mod kill;
pub mod link;
pub mod process;
pub mod rule;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use link::GuardLink;

/// How long fencing may take, all targets together. `ServeConfig::validate`
/// keeps this much between fencing's start and the leader's `down_after`.
/// Measured: the testbed's fencing of 8 HA guests by SIGKILL takes well
/// under 100 ms (see the chaos tests' logs); a libvirt destroy of a busy
/// guest took ~1.8 s one at a time, and all run at once.
pub const FENCE_BUDGET: Duration = Duration::from_secs(2);

/// The guard's socket in a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("guard.sock")
}

/// CLOCK_BOOTTIME now, in nanoseconds: one clock for every process of this
/// boot, which no clock setting moves and which counts suspended time.
pub fn boottime_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec the call fills in.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0;
    ok.then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}
