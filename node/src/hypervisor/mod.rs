//! The hypervisor a node runs its guests on.
//!
//! [`Hypervisor`] is synchronous because libvirt is: callers in async code
//! go through [`blocking`], which runs the call on tokio's blocking pool so
//! the runtime never stalls on a libvirt round trip. The one production
//! implementation, [`libvirt::Libvirt`], takes any libvirt URI:
//! `qemu:///system` on real hosts, or `test:///default`, libvirt's built-in
//! test driver, which lives inside the node process and needs no daemon.

pub mod guest;
pub mod libvirt;
mod pools;
pub mod xml;

use std::sync::Arc;

pub use xml::DomainSpec;

use crate::error::{Error, Result};

/// vCPUs and memory the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCapacity {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// What libvirt says about a domain's run state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Between states: "in shutdown" (QEMU announced it is going down, as it
    /// does on `virsh destroy` before libvirt records the reason), or a state
    /// libvirt could not report. The process may still be alive, so nothing
    /// is started over it; the next pass looks again.
    Changing,
    /// Shut off, with why.
    Off(OffReason),
}

impl RunState {
    /// A QEMU process may exist for the domain: it holds resources and, for
    /// fencing and stale-copy checks, counts as running somewhere.
    pub fn is_live(self) -> bool {
        !matches!(self, RunState::Off(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffReason {
    /// Never started, or shut down from inside the guest.
    Shutdown,
    /// `virsh destroy` or a killed QEMU process.
    Destroyed,
    Crashed,
    Other,
}

/// One kvmesh domain of this node, as libvirt reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub vm_id: u64,
    pub epoch: u64,
    pub state: RunState,
    /// The VM's spec generation it was defined from (its tag).
    pub spec_gen: u64,
}

/// What one guest of this host used in its current run (libvirt's
/// counters; they start again at zero when the guest does).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub vm_id: u64,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

pub trait Hypervisor: Send + Sync + 'static {
    fn capacity(&self) -> Result<HostCapacity>;
    /// This node's tagged domains; untagged and other nodes' domains are
    /// never returned, so they are never touched.
    fn list(&self) -> Result<Vec<Domain>>;
    /// What each running guest of this node used (for `/metrics`).
    fn usage(&self) -> Result<Vec<Usage>>;
    /// Defines (or redefines) the domain over volumes that exist.
    fn define(&self, spec: &DomainSpec) -> Result<()>;
    fn start(&self, domain: &str) -> Result<()>;
    /// Asks the guest to power off (ACPI).
    fn shutdown(&self, domain: &str) -> Result<()>;
    /// Powers the guest off at once.
    fn destroy(&self, domain: &str) -> Result<()>;
    /// Destroys and undefines the domain and, unless `keep_console`, deletes
    /// its console log. Volumes are never deleted here: only through the
    /// cluster's trash, which knows whether the operator kept them.
    fn remove(&self, domain: &str, keep_console: bool) -> Result<()>;
    /// Makes the storage domain's pool exist and run here; where it is and
    /// how full.
    fn activate_pool(&self, pool: &PoolSpec) -> Result<PoolState>;
    /// Creates a qcow2 volume, blank or a thin clone of `backing`. Refused
    /// if a volume of that name exists.
    fn create_volume(&self, pool: &PoolSpec, name: &str, size_bytes: u64, backing: Option<&Backing>) -> Result<()>;
    fn volume_exists(&self, pool: &PoolSpec, name: &str) -> Result<bool>;
    /// The path of an existing volume, grown to `min_bytes` if smaller. A
    /// missing volume is an error: recorded volumes are never made again.
    fn open_volume(&self, pool: &PoolSpec, name: &str, min_bytes: u64) -> Result<String>;
    /// Brings a running domain's disks up to `disks` (index, path, size):
    /// attaches the missing ones and grows the smaller ones, live. What it
    /// did, for the log.
    fn sync_disks(&self, domain: &str, disks: &[(u32, String, u64)]) -> Result<Vec<String>>;
    /// Plugs the NICs a running domain lacks and unplugs those not listed
    /// (matched by MAC); what it changed.
    fn sync_nics(&self, domain: &str, nics: &[xml::NicXml]) -> Result<Vec<String>>;
    /// Whether volumes are real files (false for libvirt's test driver,
    /// which keeps them in memory).
    fn stores_files(&self) -> bool;
    /// Deletes a volume; `false` if there was none.
    fn delete_volume(&self, pool: &PoolSpec, name: &str) -> Result<bool>;
    /// The last `max_bytes` of the serial console log.
    fn console(&self, domain: &str, max_bytes: u64) -> Result<Vec<u8>>;
    /// Puts `iso` into a running domain's CD-ROM drive, or ejects it; what
    /// it changed.
    fn set_cdrom(
        &self,
        domain: &str,
        machine: kvmesh_raft::hardware::Machine,
        iso: Option<&str>,
    ) -> Result<Vec<String>>;
    /// Builds a domain's cloud-init seed from its (meta-data, user-data);
    /// its path, or `None` where no guest runs to read it.
    fn build_seed(&self, domain: &str, files: &(String, String)) -> Result<Option<String>>;
    /// Gives a running domain `vcpus` vCPUs live (within the maximum it was
    /// started with); what it changed.
    fn set_vcpus(&self, domain: &str, vcpus: u32) -> Result<Vec<String>>;
    /// The pty of a running domain's serial console.
    fn serial_pty(&self, domain: &str) -> Result<String>;
    /// The unix socket of a running domain's VNC display.
    fn vnc_socket(&self, domain: &str) -> Result<std::path::PathBuf>;
    /// Why this host cannot boot UEFI guests; `None` if it can.
    fn uefi_missing(&self) -> Option<String>;
    /// What the guest agent of a running domain says; `None` when no agent
    /// answers (none installed, or not up yet).
    fn guest_info(&self, domain: &str) -> Result<Option<kvmesh_proto::GuestInfo>>;
    /// Migrates a running domain live to another host's libvirt (peer to
    /// peer), where it is defined as `to` says and left **paused**: the
    /// target resumes it only once the cluster has recorded the move. The
    /// domain is undefined here on success; on failure it runs on here.
    fn migrate(&self, domain: &str, to: &MigrationTarget) -> Result<()>;
    /// Lets a paused domain run.
    fn resume(&self, domain: &str) -> Result<()>;
    /// Where this host keeps guests' console logs.
    fn consoles_dir(&self) -> String;
    /// How many times the connection was opened again after libvirtd went
    /// away: what was learned through the old one (storage) is worth
    /// checking again at once.
    fn reconnects(&self) -> u64 {
        0
    }
    /// How far the domain's running migration job is, if one runs.
    fn migration_progress(&self, _domain: &str) -> Result<Option<kvmesh_proto::MigrationProgress>> {
        Ok(None)
    }
    /// What the source of a migration holds of the domain: after a
    /// restart, this tells a migration libvirt completed (or still runs)
    /// from one it never began.
    fn outgoing(&self, _domain: &str) -> Result<Outgoing> {
        Ok(Outgoing::Idle)
    }
    /// Whether this host holds a complete incoming copy of the domain at
    /// `epoch`: libvirt finished receiving it (defined for good, paused).
    /// `Some(downtime in ms, 0 if libvirt did not say)`, or `None`.
    fn incoming_complete(&self, _domain: &str, _epoch: u64) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Cancels the domain's outgoing migration job.
    fn cancel_migration(&self, _domain: &str) -> Result<()> {
        Ok(())
    }
}

/// The source's side of a migration, as libvirt sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// The domain is here and no job runs: nothing is being sent.
    Idle,
    /// A migration job runs.
    Sending,
    /// Paused with no job: stopped for a switch-over whose outcome libvirt
    /// no longer knows (libvirtd restarted after sending).
    Paused,
    /// The domain does not run here: gone (libvirt completed a migration
    /// and undefined it, or it was never here), or shut off.
    Gone,
}

/// A disk a live migration copies (QEMU's block mirror over NBD): its
/// guest device and its file here and on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopiedDisk {
    pub dev: String,
    pub from: String,
    pub to: String,
}

/// Where a live migration goes, and what the incoming domain's definition
/// changes from the source's: its kvmesh tag and its console log's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationTarget {
    /// The target's libvirt, as the source's libvirtd reaches it.
    pub libvirt_uri: String,
    /// Where the memory stream goes (`tcp://HOST`), if not the default.
    pub data_uri: Option<String>,
    pub node_id: u64,
    pub epoch: u64,
    pub consoles_dir: String,
    /// MiB/s, 0 for no limit.
    pub bandwidth_mib: u64,
    /// The disks on local storage, copied as the guest runs; the target
    /// has made their volumes, with the same base image (if any).
    pub copy_disks: Vec<CopiedDisk>,
}

pub use pools::{Backing, PoolSpec, PoolState};

/// Whether a libvirt/QEMU error says a disk's lease is held by another
/// process: QEMU's own image locking ("Failed to get "write" lock … Is
/// another process using the image?"), or libvirt's lock manager
/// (virtlockd: "Failed to acquire lock", "Lockspace resource … is locked").
pub fn lease_held(message: &str) -> bool {
    ["Failed to get \"write\" lock", "another process using the image", "Failed to acquire lock", "Lockspace resource"]
        .iter()
        .any(|m| message.contains(m))
}

/// The lock manager a `qemu.conf` turns on (`lock_manager = "lockd"`), if
/// any: the last setting that is not commented out.
pub fn lock_manager(qemu_conf: &str) -> Option<String> {
    qemu_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("lock_manager"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
        .next_back()
        .filter(|m| !m.is_empty() && m != "nop")
}

/// What a running migration job is doing, from libvirt's statistics: the
/// disks it copies come first (QEMU mirrors them before the memory), then
/// the memory, then again the pages the guest changed meanwhile.
pub fn migration_phase(disk_total: u64, disk_remaining: u64, memory_pass: u64) -> String {
    match (disk_total > 0 && disk_remaining > 0, memory_pass) {
        (true, _) => "copying disks".into(),
        (false, 0 | 1) => "copying memory".into(),
        (false, n) => format!("copying memory the guest changed (pass {n})"),
    }
}

/// Runs a hypervisor call on the blocking pool.
pub async fn blocking<T, F>(hv: &Arc<dyn Hypervisor>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Hypervisor) -> Result<T> + Send + 'static,
{
    let hv = hv.clone();
    tokio::task::spawn_blocking(move || f(hv.as_ref()))
        .await
        .map_err(|e| Error::Hypervisor(format!("hypervisor task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn held_leases_are_told_from_other_start_errors() {
        // QEMU 7.2's image locking, as libvirt passes it on.
        let qemu = "internal error: qemu unexpectedly closed the monitor: 2026-12-03T12:00:00 qemu-system-x86_64: -blockdev {...}: Failed to get \"write\" lock\nIs another process using the image [/srv/x.qcow2]?";
        assert!(super::lease_held(qemu));
        assert!(super::lease_held("Lockspace resource '/srv/x.qcow2' is locked"));
        assert!(!super::lease_held("cannot open /dev/sdb: resource busy"));
        assert!(!super::lease_held("Cannot access storage file '/srv/x.qcow2': No such file or directory"));
    }

    #[test]
    fn a_migration_says_what_it_is_copying() {
        assert_eq!(super::migration_phase(64 << 20, 10 << 20, 0), "copying disks");
        assert_eq!(super::migration_phase(64 << 20, 0, 1), "copying memory");
        assert_eq!(super::migration_phase(0, 0, 0), "copying memory");
        assert_eq!(super::migration_phase(0, 0, 3), "copying memory the guest changed (pass 3)");
    }

    #[test]
    fn the_lock_manager_is_read_from_qemu_conf() {
        assert_eq!(super::lock_manager("user = \"root\"\n#lock_manager = \"lockd\"\n"), None);
        assert_eq!(super::lock_manager("lock_manager = \"lockd\"\n").as_deref(), Some("lockd"));
        assert_eq!(super::lock_manager("  lock_manager=\"sanlock\"").as_deref(), Some("sanlock"));
        assert_eq!(super::lock_manager("lock_manager = \"lockd\"\nlock_manager = \"nop\""), None);
    }
}
