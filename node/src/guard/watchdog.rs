//! The kernel watchdog (`/dev/watchdog`, a hardware driver or `softdog`).
//!
//! Opening the device starts it; from then on the host resets unless
//! something writes to it within its timeout. Writing the magic character
//! `V` before closing stops it ("magic close"), which is how the guard
//! disarms it when no HA guest is left to protect, unless the driver was
//! loaded with `nowayout`. When [`rule::watchdog_step`]
//! says when; this file only does it.
//!
//! [`rule::watchdog_step`]: super::rule::watchdog_step

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

pub struct Watchdog {
    path: PathBuf,
    timeout_s: u32,
    file: Option<std::fs::File>,
}

/// `WDIOC_SETTIMEOUT` from linux/watchdog.h: `_IOWR('W', 6, int)`.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

impl Watchdog {
    pub fn new(path: PathBuf, timeout_s: u32) -> Self {
        Watchdog { path, timeout_s, file: None }
    }

    pub fn present(&self) -> bool {
        self.file.is_some() || self.path.exists()
    }

    pub fn armed(&self) -> bool {
        self.file.is_some()
    }

    /// Whether the driver refuses to stop (`nowayout`), from sysfs:
    /// `/dev/watchdog` is the first registered device, `watchdog0`. A path
    /// without a sysfs entry (a file in tests) can be stopped.
    pub fn nowayout(&self) -> bool {
        let name = match self.path.file_name().and_then(|n| n.to_str()) {
            Some("watchdog") => "watchdog0",
            Some(n) if n.starts_with("watchdog") && self.path.starts_with("/dev") => n,
            _ => return false,
        };
        std::fs::read_to_string(format!("/sys/class/watchdog/{name}/nowayout")).is_ok_and(|v| v.trim() == "1")
    }

    pub fn arm(&mut self) -> Result<(), String> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| format!("cannot arm the watchdog {}: {e}", self.path.display()))?;
        let mut timeout = self.timeout_s as libc::c_int;
        // SAFETY: the ioctl reads and writes one int through a valid pointer.
        // A device that refuses keeps its own timeout; a plain file (tests)
        // refuses too.
        let _ = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut timeout) };
        self.file = Some(file);
        self.keepalive();
        Ok(())
    }

    pub fn keepalive(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(b"\0");
        }
    }

    pub fn disarm(&mut self) -> Result<(), String> {
        let Some(mut f) = self.file.take() else { return Ok(()) };
        f.write_all(b"V").map_err(|e| format!("cannot disarm the watchdog (it will reset the host): {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::rule::{watchdog_step, WatchdogStep};

    /// Drives the watchdog as the guard's loop does, against a file standing
    /// in for the device: armed when HA guests appear, petted while they
    /// run, magic-closed when they are gone; nothing without a device.
    #[test]
    fn the_guard_arms_pets_and_magic_closes_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("watchdog");
        let mut absent = Watchdog::new(dir.path().join("none"), 5);
        assert_eq!(watchdog_step(absent.present(), absent.armed(), true, false), WatchdogStep::Idle);
        assert!(absent.arm().is_err());

        std::fs::write(&device, b"").unwrap();
        let mut w = Watchdog::new(device.clone(), 5);
        for protecting in [false, true, true, true, false, false] {
            assert!(!w.nowayout(), "a plain file has no sysfs entry");
            match watchdog_step(w.present(), w.armed(), protecting, w.nowayout()) {
                WatchdogStep::Arm => w.arm().unwrap(),
                WatchdogStep::Pet => w.keepalive(),
                WatchdogStep::Disarm => w.disarm().unwrap(),
                WatchdogStep::Idle => {}
            }
            assert_eq!(w.armed(), protecting);
        }
        // Arm (a keepalive), two pets, then the magic close.
        assert_eq!(std::fs::read(&device).unwrap(), b"\0\0\0V");
    }
}
