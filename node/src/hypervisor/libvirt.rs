//! [`Hypervisor`] over libvirt (the `virt` crate).
//!
//! Each storage domain is a pool ([`super::pools`]); the node's own pool
//! lives under its data dir, with the guests' console files next to it.
//! Volumes are named after the VM id and disk index, so a host finds a VM's
//! volumes without its domain.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Once;

use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::Domain as VirtDomain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use kvmesh_raft::storage::DEFAULT_STORAGE;

use super::guest;
use super::pools::{node_pool_name, PoolKind};
use super::xml::{self, DomainSpec};
use super::{
    Backing, Domain, HostCapacity, Hypervisor, MigrationTarget, OffReason, PoolSpec, PoolState, RunState, Usage,
};
use crate::error::{Error, Result};
use kvmesh_raft::hardware::Machine;

const METADATA_ELEMENT: i32 = 2; // VIR_DOMAIN_METADATA_ELEMENT

pub struct Libvirt {
    /// Replaced when libvirtd went away and answers again (see [`Libvirt::conn`]).
    conn: std::sync::Mutex<Connect>,
    reconnects: std::sync::atomic::AtomicU64,
    uri: String,
    node_id: u64,
    images_dir: PathBuf,
    consoles_dir: PathBuf,
    /// UEFI variables of VMs without a disk to keep them next to.
    nvram_dir: PathBuf,
}

fn lv_err(what: &str, e: virt::error::Error) -> Error {
    Error::Hypervisor(format!("{what}: {}", e.message()))
}

/// libvirt prints every error to stderr unless told otherwise; we report
/// errors ourselves.
fn silence_libvirt() {
    static ONCE: Once = Once::new();
    ONCE.call_once(virt::error::clear_error_callback);
}

impl Libvirt {
    /// Connects and makes sure this node's storage pool exists and runs.
    pub fn connect(uri: &str, node_id: u64, data_dir: &Path) -> Result<Self> {
        silence_libvirt();
        let conn = Connect::open(Some(uri)).map_err(|e| {
            Error::Hypervisor(format!(
                "cannot connect to libvirt at {uri}: {}. Start libvirtd (for example `libvirtd -d`), or run with --libvirt-uri test:///default for the embedded test hypervisor",
                e.message()
            ))
        })?;
        let images_dir = data_dir.join("images");
        let consoles_dir = data_dir.join("consoles");
        let nvram_dir = data_dir.join("nvram");
        for dir in [&images_dir, &consoles_dir, &nvram_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Hypervisor(format!("cannot create {}: {e}", dir.display())))?;
        }
        let images_dir = images_dir.canonicalize().unwrap_or(images_dir);
        let consoles_dir = consoles_dir.canonicalize().unwrap_or(consoles_dir);
        let hv = Libvirt {
            conn: std::sync::Mutex::new(conn),
            reconnects: Default::default(),
            uri: uri.to_string(),
            node_id,
            images_dir,
            consoles_dir,
            nvram_dir,
        };
        hv.reclaim_domains_of_this_dir();
        hv.pool(&hv.node_pool())?;
        Ok(hv)
    }

    /// Destroys and undefines kvmesh domains of an earlier identity of this
    /// data dir (their disks or consoles live under it): a node rejoining
    /// with an emptied dir, whose old guests were left running when it was
    /// stopped. Nobody else manages them any more, and the cluster may be
    /// restarting them elsewhere, so they must not run on.
    fn reclaim_domains_of_this_dir(&self) {
        let Ok(domains) = self.conn().list_all_domains(0) else { return };
        // Files inside our directories: the path and a separator.
        let (images, consoles) =
            (format!("{}/", self.images_dir.display()), format!("{}/", self.consoles_dir.display()));
        for dom in domains {
            let Ok(name) = dom.name() else { continue };
            let Some(tag) = name.starts_with("kvmesh-").then(|| self.tag(&dom)).flatten() else { continue };
            if tag.node_id == self.node_id {
                continue;
            }
            let ours = dom.xml_desc(0).is_ok_and(|xml| xml.contains(&images) || xml.contains(&consoles));
            if !ours {
                continue;
            }
            warn!(domain = %name, old_node = tag.node_id, "removing a domain of an earlier identity of this data dir");
            if dom.is_active().unwrap_or(false) {
                let _ = dom.destroy();
            }
            if let Err(e) = undefine(&dom, false) {
                warn!(domain = %name, error = %e, "could not undefine it");
            }
        }
    }

    /// The connection, opened again if libvirtd closed it (a restart of
    /// libvirtd): guests outlive libvirtd, and so must the node's hold on
    /// them. A libvirtd that is only stopped keeps the socket open and is
    /// not reopened; callers bound how long they wait on it.
    fn conn(&self) -> Connect {
        let current = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if current.is_alive().unwrap_or(false) {
            return current;
        }
        // Opened outside the lock: a libvirtd that accepts but does not
        // answer must not stall every other call.
        match Connect::open(Some(&self.uri)) {
            Ok(fresh) => {
                info!(uri = %self.uri, "reconnected to libvirt");
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                self.reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                fresh
            }
            Err(e) => {
                tracing::debug!(error = %e.message(), "libvirt still unreachable");
                current
            }
        }
    }

    /// The libvirt domain type for a VM on this connection.
    pub fn is_test_driver(&self) -> bool {
        self.uri.starts_with("test:")
    }

    pub fn console_path(&self, domain: &str) -> PathBuf {
        self.consoles_dir.join(format!("{domain}.log"))
    }

    /// The unix socket of a guest's VNC display. In the consoles folder,
    /// which a live migration's definition moves to the target's.
    pub fn vnc_path(&self, domain: &str) -> PathBuf {
        self.consoles_dir.join(format!("{domain}.vnc"))
    }

    /// Undefines other kvmesh pools over `path` (an earlier identity of
    /// this data dir, a node removed and rejoined with an emptied dir):
    /// libvirt allows one pool per directory, so the old one would block
    /// ours. Only the pool object goes; the files in it stay.
    fn reclaim_pools_of(&self, path: &Path, keep: &str) {
        let Ok(pools) = self.conn().list_all_storage_pools(0) else { return };
        let target = format!("<path>{}</path>", xml::escape(&path.to_string_lossy()));
        for pool in pools {
            let Ok(name) = pool.name() else { continue };
            if !name.starts_with("kvmesh-") || name == keep {
                continue;
            }
            if pool.xml_desc(0).is_ok_and(|xml| xml.contains(&target)) {
                info!(pool = %name, path = %path.display(), "undefining an earlier kvmesh pool of this directory");
                if pool.is_active().unwrap_or(false) {
                    let _ = pool.destroy();
                }
                if let Err(e) = pool.undefine() {
                    warn!(pool = %name, error = %e, "could not undefine the old pool");
                }
            }
        }
    }

    /// The running pool of a storage domain, defined on first use.
    fn pool(&self, spec: &PoolSpec) -> Result<StoragePool> {
        let pool = match self.conn().lookup_storage_pool_by_name(&spec.pool_name) {
            Ok(p) => p,
            Err(_) => {
                self.reclaim_pools_of(spec.path(), &spec.pool_name);
                let p = self
                    .conn()
                    .define_storage_pool_xml(&spec.xml(), 0)
                    .map_err(|e| lv_err(&format!("define the pool of storage {}", spec.domain), e))?;
                let _ = p.build(0);
                let _ = p.set_autostart(true);
                info!(pool = %spec.pool_name, storage = %spec.domain, path = %spec.path().display(), "defined storage pool");
                p
            }
        };
        if !pool.is_active().unwrap_or(false) {
            pool.create(0).map_err(|e| lv_err(&format!("start the pool of storage {}", spec.domain), e))?;
        }
        Ok(pool)
    }

    /// A volume of the pool, seen afresh: other hosts add files to shared
    /// directories behind this libvirtd's back.
    fn find_volume(&self, pool: &StoragePool, name: &str) -> Option<StorageVol> {
        let _ = pool.refresh(0);
        pool.lookup_storage_vol_by_name(name).ok()
    }

    /// This node's own pool (the default `local` domain).
    fn node_pool(&self) -> PoolSpec {
        PoolSpec {
            pool_name: node_pool_name(self.node_id),
            domain: DEFAULT_STORAGE.into(),
            kind: PoolKind::Dir { path: self.images_dir.clone() },
            shared: false,
        }
    }

    fn lookup(&self, domain: &str) -> Result<VirtDomain> {
        self.conn().lookup_domain_by_name(domain).map_err(|e| lv_err(&format!("domain {domain}"), e))
    }

    fn tag(&self, dom: &VirtDomain) -> Option<xml::Tag> {
        let meta = dom.metadata(METADATA_ELEMENT, Some(xml::METADATA_NS), 0).ok()?;
        xml::parse_metadata(&meta)
    }
}

/// libvirt's job statistics of `dom` (`flags`: 0 for the job running now,
/// or `VIR_DOMAIN_JOB_STATS_COMPLETED`). Not virt 0.5's
/// `Domain::job_stats`: it makes a `Vec` of libvirt's array even when
/// libvirt returns none (no job: a null pointer), which is undefined
/// behaviour (a debug build aborts the process). Here the parameters are
/// copied (their strings too, by `JobStats::from`) and libvirt's array is
/// freed by libvirt.
fn job_stats(dom: &VirtDomain, flags: u32) -> std::result::Result<virt::domain::JobStats, virt::error::Error> {
    use virt::sys;
    let (mut kind, mut count): (std::os::raw::c_int, std::os::raw::c_int) = (0, 0);
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    // SAFETY: the domain pointer is valid while `dom` lives; libvirt fills
    // the three out-parameters and allocates `params` (or leaves it null).
    let rc = unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut count, flags) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    /// Frees libvirt's array however the parsing below ends (it panics on
    /// a parameter of an unexpected type).
    struct Params(sys::virTypedParameterPtr, std::os::raw::c_int);
    impl Drop for Params {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: the array came from libvirt with this many entries,
                // and nothing refers to it any more (`JobStats` owns copies).
                unsafe { sys::virTypedParamsFree(self.0, self.1) };
            }
        }
    }
    let params = Params(params, count);
    let copied = match params.0.is_null() || count <= 0 {
        true => Vec::new(),
        // SAFETY: libvirt returned `count` initialised parameters at `params`.
        false => unsafe { std::slice::from_raw_parts(params.0, count as usize) }.to_vec(),
    };
    Ok(virt::domain::JobStats::from((kind, copied)))
}

fn run_state(dom: &VirtDomain) -> RunState {
    use virt::domain::{DomainShutoffReason, DomainState, DomainStateReason};
    use virt::enumutil::Enum;
    match dom.state() {
        Ok((Enum::Known(DomainState::Running), _)) | Ok((Enum::Known(DomainState::Blocked), _)) => RunState::Running,
        Ok((Enum::Known(DomainState::Paused), _)) | Ok((Enum::Known(DomainState::PMSuspended), _)) => RunState::Paused,
        Ok((Enum::Known(DomainState::Crashed), _)) => RunState::Off(OffReason::Crashed),
        Ok((Enum::Known(DomainState::Shutoff), reason)) => RunState::Off(match reason {
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(r))) => match r {
                DomainShutoffReason::Destroyed => OffReason::Destroyed,
                DomainShutoffReason::Crashed | DomainShutoffReason::Failed => OffReason::Crashed,
                DomainShutoffReason::Shutdown | DomainShutoffReason::Unknown => OffReason::Shutdown,
                _ => OffReason::Other,
            },
            _ => OffReason::Other,
        }),
        _ => RunState::Changing,
    }
}

impl Hypervisor for Libvirt {
    fn capacity(&self) -> Result<HostCapacity> {
        let info = self.conn().node_info().map_err(|e| lv_err("node info", e))?;
        Ok(HostCapacity { cpus: info.cpus, memory_mib: info.memory / 1024 })
    }

    fn list(&self) -> Result<Vec<Domain>> {
        let mut out = Vec::new();
        for dom in self.conn().list_all_domains(0).map_err(|e| lv_err("list domains", e))? {
            let Ok(name) = dom.name() else { continue };
            if !name.starts_with("kvmesh-") {
                continue;
            }
            let Some(tag) = self.tag(&dom) else { continue };
            if tag.node_id != self.node_id {
                continue;
            }
            out.push(Domain {
                name,
                vm_id: tag.vm_id,
                epoch: tag.epoch,
                state: run_state(&dom),
                spec_gen: tag.spec_gen,
            });
        }
        Ok(out)
    }

    fn usage(&self) -> Result<Vec<Usage>> {
        let mut out = Vec::new();
        for d in self.list()?.into_iter().filter(|d| d.state.is_live()) {
            let Ok(dom) = self.lookup(&d.name) else { continue };
            let Ok(info) = dom.info() else { continue };
            let mut u = Usage {
                vm_id: d.vm_id,
                cpu_seconds: info.cpu_time as f64 / 1e9,
                memory_bytes: info.memory << 10,
                ..Usage::default()
            };
            // The test driver keeps no device counters.
            if !self.is_test_driver() {
                let xml = dom.xml_desc(0).unwrap_or_default();
                let (disks, nics) = xml::device_targets(&xml);
                for disk in disks {
                    if let Ok(s) = dom.block_stats(&disk) {
                        u.disk_read_bytes += s.rd_bytes.max(0) as u64;
                        u.disk_write_bytes += s.wr_bytes.max(0) as u64;
                    }
                }
                for nic in nics {
                    if let Ok(s) = dom.interface_stats(&nic) {
                        u.net_rx_bytes += s.rx_bytes.max(0) as u64;
                        u.net_tx_bytes += s.tx_bytes.max(0) as u64;
                    }
                }
            }
            out.push(u);
        }
        Ok(out)
    }

    fn migrate(&self, domain: &str, to: &MigrationTarget) -> Result<()> {
        if self.is_test_driver() {
            return Err(Error::FailedPrecondition(
                "live migration needs a real hypervisor (qemu:///system); the embedded test driver cannot migrate"
                    .into(),
            ));
        }
        let dom = self.lookup(domain)?;
        let xml = dom
            .xml_desc(virt::sys::VIR_DOMAIN_XML_MIGRATABLE)
            .map_err(|e| lv_err(&format!("read {domain}'s definition"), e))?;
        let dest = xml::retarget(&xml, self.node_id, to, &self.consoles_dir.to_string_lossy()).ok_or_else(|| {
            Error::Hypervisor(format!(
                "{domain}'s definition carries no kvmesh tag of this host, or not the disk files the migration copies"
            ))
        })?;
        let params = virt::domain::MigrateParameters {
            dest_xml: Some(dest.clone()),
            persist_xml: Some(dest),
            uri: to.data_uri.clone(),
            bandwidth: (to.bandwidth_mib > 0).then_some(to.bandwidth_mib),
            migrate_disks: to.copy_disks.iter().map(|d| d.dev.clone()).collect(),
            ..Default::default()
        };
        // UNSAFE: libvirt judges "shared storage" by the filesystem's type
        // (NFS, GFS2, ...). kvmesh migrates only VMs whose disks are on
        // domains it has proven shared (every host sees the same files), or
        // copied (`copy_disks`), and opens them with cache='none', which is
        // what libvirt's check is for.
        let flags = virt::sys::VIR_MIGRATE_LIVE
            | virt::sys::VIR_MIGRATE_UNSAFE
            | virt::sys::VIR_MIGRATE_PEER2PEER
            | virt::sys::VIR_MIGRATE_PERSIST_DEST
            | virt::sys::VIR_MIGRATE_UNDEFINE_SOURCE
            | virt::sys::VIR_MIGRATE_PAUSED
            | virt::sys::VIR_MIGRATE_AUTO_CONVERGE;
        // Local disks: the target made volumes over the same base image (or
        // none), so only each disk's own layer is mirrored (the `migrate_disks`
        // named above; the disks on shared storage are not copied).
        let flags = match to.copy_disks.is_empty() {
            true => flags,
            false => flags | virt::sys::VIR_MIGRATE_NON_SHARED_INC,
        };
        dom.migrate_to_uri3(Some(&to.libvirt_uri), params, flags)
            .map_err(|e| lv_err(&format!("migrate {domain} to {}", to.libvirt_uri), e))
    }

    fn resume(&self, domain: &str) -> Result<()> {
        self.lookup(domain)?.resume().map_err(|e| lv_err(&format!("resume {domain}"), e))
    }

    fn set_cdrom(&self, domain: &str, machine: Machine, iso: Option<&str>) -> Result<Vec<String>> {
        if self.is_test_driver() {
            return Ok(Vec::new()); // it runs no guest: the next definition carries the medium
        }
        let dom = self.lookup(domain)?;
        let live = dom.xml_desc(0).map_err(|e| lv_err(&format!("describe {domain}"), e))?;
        // The drive the running guest has: a machine change may be pending.
        let machine = [Machine::Pc, Machine::Q35]
            .into_iter()
            .find(|m| {
                live.contains(&format!("<target dev='{}' bus='{}'/>", xml::cdrom_target(*m).0, xml::cdrom_target(*m).1))
            })
            .unwrap_or(machine);
        let (dev, _) = xml::cdrom_target(machine);
        if xml::cdrom_source(&live, dev).as_deref() == iso {
            return Ok(Vec::new());
        }
        // Live and in the persistent definition; forced, so a guest that
        // locked its tray does not keep an operator's eject from happening.
        let flags = 1 | 2 | virt::sys::VIR_DOMAIN_DEVICE_MODIFY_FORCE;
        dom.update_device_flags(&xml::cdrom_xml(machine, iso, None), flags)
            .map_err(|e| lv_err(&format!("change the CD-ROM of {domain}"), e))?;
        Ok(vec![match iso {
            Some(path) => format!("inserted {path}"),
            None => "ejected the CD-ROM".to_string(),
        }])
    }

    fn set_vcpus(&self, domain: &str, vcpus: u32) -> Result<Vec<String>> {
        if self.is_test_driver() {
            return Ok(Vec::new()); // no guest runs: the spec is all there is
        }
        let dom = self.lookup(domain)?;
        let live =
            dom.vcpus_flags(virt::sys::VIR_DOMAIN_VCPU_LIVE).map_err(|e| lv_err(&format!("vCPUs of {domain}"), e))?;
        if live == vcpus {
            return Ok(Vec::new());
        }
        let most = dom
            .vcpus_flags(virt::sys::VIR_DOMAIN_VCPU_LIVE | virt::sys::VIR_DOMAIN_VCPU_MAXIMUM)
            .map_err(|e| lv_err(&format!("vCPUs of {domain}"), e))?;
        if vcpus > most {
            return Err(Error::FailedPrecondition(format!("{domain} was started with room for {most} vCPUs")));
        }
        dom.set_vcpus_flags(vcpus, virt::sys::VIR_DOMAIN_VCPU_LIVE)
            .map_err(|e| lv_err(&format!("set the vCPUs of {domain}"), e))?;
        Ok(vec![format!("vCPUs {live} -> {vcpus}")])
    }

    fn build_seed(&self, domain: &str, files: &(String, String)) -> Result<Option<String>> {
        if self.is_test_driver() {
            return Ok(None); // it runs no guest to read one
        }
        let seed = guest::seed_path(&self.consoles_dir, domain);
        crate::cloud_init::build_seed(&seed, &files.0, &files.1)
            .map_err(|e| Error::FailedPrecondition(format!("cannot build the cloud-init seed of {domain}: {e}")))?;
        Ok(Some(seed.to_string_lossy().into_owned()))
    }

    fn serial_pty(&self, domain: &str) -> Result<String> {
        if self.is_test_driver() {
            return Err(Error::FailedPrecondition(format!(
                "{} has no serial console (libvirt's test driver runs no guest)",
                self.uri
            )));
        }
        let dom = self.lookup(domain)?;
        if !dom.is_active().unwrap_or(false) {
            return Err(Error::FailedPrecondition(format!("{domain} is not running")));
        }
        let live = dom.xml_desc(0).map_err(|e| lv_err(&format!("describe {domain}"), e))?;
        guest::serial_pty(&live).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{domain} has no interactive serial console (it was started by an older kvmesh; restart it once)"
            ))
        })
    }

    fn vnc_socket(&self, domain: &str) -> Result<PathBuf> {
        if self.is_test_driver() {
            return Err(Error::FailedPrecondition(format!(
                "{} has no display (libvirt's test driver runs no guest)",
                self.uri
            )));
        }
        let path = self.vnc_path(domain);
        if !path.exists() {
            return Err(Error::FailedPrecondition(format!(
                "{domain} has no VNC display here (not running, or started by an older kvmesh; restart it once)"
            )));
        }
        Ok(path)
    }

    fn uefi_missing(&self) -> Option<String> {
        guest::find_ovmf().err()
    }

    fn guest_info(&self, domain: &str) -> Result<Option<kvmesh_proto::GuestInfo>> {
        if self.is_test_driver() {
            return Ok(None);
        }
        let dom = self.lookup(domain)?;
        let ask = |cmd: &str| -> std::result::Result<String, virt::error::Error> {
            dom.qemu_agent_command(cmd, guest::AGENT_TIMEOUT_S, 0)
        };
        // The OS answer says whether an agent is there at all.
        let Ok(os) = ask(guest::AGENT_OS) else { return Ok(None) };
        let host = ask(guest::AGENT_HOST).unwrap_or_default();
        let interfaces = ask(guest::AGENT_INTERFACES).unwrap_or_default();
        Ok(Some(guest::parse_agent(&os, &host, &interfaces)))
    }

    fn consoles_dir(&self) -> String {
        self.consoles_dir.to_string_lossy().into_owned()
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn migration_progress(&self, domain: &str) -> Result<Option<kvmesh_proto::MigrationProgress>> {
        let stats = job_stats(&self.lookup(domain)?, 0).map_err(|e| lv_err(&format!("job of {domain}"), e))?;
        // VIR_DOMAIN_JOB_NONE: nothing runs.
        if stats.r#type == 0 {
            return Ok(None);
        }
        let (disk_total, disk_remaining) = (stats.disk_total.unwrap_or(0), stats.disk_remaining.unwrap_or(0));
        Ok(Some(kvmesh_proto::MigrationProgress {
            data_total: stats.data_total.unwrap_or(0),
            data_processed: stats.data_processed.unwrap_or(0),
            data_remaining: stats.data_remaining.unwrap_or(0),
            bytes_per_s: stats.mem_bps.unwrap_or(0),
            phase: super::migration_phase(disk_total, disk_remaining, stats.mem_iteration.unwrap_or(0)),
            disk_total,
            disk_remaining,
        }))
    }

    fn outgoing(&self, domain: &str) -> Result<super::Outgoing> {
        let dom = match self.conn().lookup_domain_by_name(domain) {
            Ok(dom) => dom,
            Err(e) if e.code() == virt::error::ErrorNumber::NoDomain.into() => return Ok(super::Outgoing::Gone),
            Err(e) => return Err(lv_err(&format!("domain {domain}"), e)),
        };
        // Shut off but still defined: libvirt completed the migration and is
        // about to undefine it, or the guest stopped; either way it does not
        // run here, and the target's copy decides.
        if !dom.is_active().unwrap_or(true) {
            return Ok(super::Outgoing::Gone);
        }
        // The job may end, and the domain go, between the two calls.
        let stats = match job_stats(&dom, 0) {
            Ok(stats) => stats,
            Err(e) if e.code() == virt::error::ErrorNumber::NoDomain.into() => return Ok(super::Outgoing::Gone),
            Err(e) => return Err(lv_err(&format!("job of {domain}"), e)),
        };
        Ok(match (stats.r#type, run_state(&dom)) {
            (0, RunState::Paused) => super::Outgoing::Paused,
            (0, _) => super::Outgoing::Idle,
            _ => super::Outgoing::Sending,
        })
    }

    fn incoming_complete(&self, domain: &str, epoch: u64) -> Result<Option<u64>> {
        let Ok(dom) = self.conn().lookup_domain_by_name(domain) else { return Ok(None) };
        // The job first: while the incoming job (Finish included) runs,
        // libvirt refuses job statistics here, and its end is what settles
        // Finish's outcome; the state is read after it.
        let Ok(job) = job_stats(&dom, 0) else { return Ok(None) };
        if job.r#type != 0 {
            return Ok(None);
        }
        // While it comes in, the domain is transient; libvirt defines it for
        // good (PERSIST_DEST) during a Finish, and keeps the completed job's
        // statistics only for one that succeeded.
        let persistent = dom.is_persistent().unwrap_or(false);
        let tagged = self.tag(&dom).is_some_and(|t| t.node_id == self.node_id && t.epoch == epoch);
        if !(persistent && tagged && run_state(&dom) == RunState::Paused) {
            return Ok(None);
        }
        // KEEP_COMPLETED: reading them must not take them from `domjobinfo --completed`.
        let flags = virt::sys::VIR_DOMAIN_JOB_STATS_COMPLETED | virt::sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED;
        match job_stats(&dom, flags) {
            Ok(done) if done.r#type != 0 => Ok(Some(done.downtime.unwrap_or(0))),
            _ => Ok(None),
        }
    }

    fn cancel_migration(&self, domain: &str) -> Result<()> {
        let dom = self.lookup(domain)?;
        // SAFETY: the domain pointer is valid while `dom` lives (virt 0.5
        // has no wrapper for this call).
        if unsafe { virt::sys::virDomainAbortJob(dom.as_ptr()) } < 0 {
            return Err(lv_err(&format!("cancel the migration of {domain}"), virt::error::Error::last_error()));
        }
        Ok(())
    }

    fn define(&self, spec: &DomainSpec) -> Result<()> {
        let mut spec = spec.clone();
        if let Ok(existing) = self.conn().lookup_domain_by_name(&spec.domain) {
            spec.uuid = existing.uuid_string().ok();
        }
        if self.is_test_driver() {
            // The test driver neither writes consoles nor knows QEMU machines.
            spec.domain_type = "test".into();
            spec.console_log = None;
        } else {
            spec.console_log = Some(self.console_path(&spec.domain).to_string_lossy().into_owned());
            spec.vnc_socket = Some(self.vnc_path(&spec.domain).to_string_lossy().into_owned());
            spec.guest_agent = true;
        }
        if spec.firmware == kvmesh_raft::hardware::Firmware::Uefi {
            let (code, vars_template) = guest::find_ovmf().map_err(Error::FailedPrecondition)?;
            let boot_disk = spec.disks.iter().find(|(i, _)| *i == 0).map(|(_, p)| p.as_str());
            let nvram = guest::nvram_path(boot_disk, &self.nvram_dir, &spec.domain).to_string_lossy().into_owned();
            spec.uefi = Some(xml::UefiFiles { code, vars_template, nvram });
        }
        if let Some(files) = spec.cloud_init.take() {
            spec.seed = self.build_seed(&spec.domain, &files)?;
        }
        self.conn().define_domain_xml(&xml::domain_xml(&spec)).map_err(|e| lv_err("define domain", e))?;
        Ok(())
    }

    fn start(&self, domain: &str) -> Result<()> {
        self.lookup(domain)?.create().map(|_| ()).map_err(|e| lv_err(&format!("start {domain}"), e))
    }

    fn shutdown(&self, domain: &str) -> Result<()> {
        let dom = self.lookup(domain)?;
        if self.is_test_driver() {
            return dom.shutdown().map(|_| ()).map_err(|e| lv_err(&format!("shut down {domain}"), e));
        }
        // The guest agent where one answers (a clean shutdown even of a
        // guest that ignores ACPI), else the ACPI power button.
        let flags = virt::sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN;
        dom.shutdown_flags(flags).map_err(|e| lv_err(&format!("shut down {domain}"), e))
    }

    fn destroy(&self, domain: &str) -> Result<()> {
        let dom = self.lookup(domain)?;
        if dom.is_active().unwrap_or(false) {
            // It may stop between the check and the destroy (the fence
            // guard killed its QEMU): gone is what was asked for.
            if let Err(e) = dom.destroy() {
                if dom.is_active().unwrap_or(true) {
                    return Err(lv_err(&format!("destroy {domain}"), e));
                }
            }
        }
        Ok(())
    }

    fn remove(&self, domain: &str, keep_console: bool) -> Result<()> {
        if let Ok(dom) = self.conn().lookup_domain_by_name(domain) {
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(|e| lv_err(&format!("destroy {domain}"), e))?;
            }
            // A deleted VM's UEFI variables go with it; otherwise they stay
            // for wherever it runs next.
            undefine(&dom, !keep_console).map_err(|e| lv_err(&format!("undefine {domain}"), e))?;
        }
        // Volumes go only through the cluster's trash, which knows whether
        // the operator kept them (`--keep-disks`); the console log is ours.
        if !keep_console {
            let _ = std::fs::remove_file(self.console_path(domain));
            let _ = std::fs::remove_file(self.vnc_path(domain));
            let _ = std::fs::remove_file(guest::seed_path(&self.consoles_dir, domain));
        }
        Ok(())
    }

    fn activate_pool(&self, spec: &PoolSpec) -> Result<PoolState> {
        let pool = self.pool(spec)?;
        let _ = pool.refresh(0);
        let info = pool.info().map_err(|e| lv_err(&format!("storage {}", spec.domain), e))?;
        Ok(PoolState { path: spec.path().to_path_buf(), free_bytes: info.available, total_bytes: info.capacity })
    }

    fn create_volume(&self, spec: &PoolSpec, name: &str, size_bytes: u64, backing: Option<&Backing>) -> Result<()> {
        let pool = self.pool(spec)?;
        if self.find_volume(&pool, name).is_some() {
            return Err(Error::Hypervisor(format!("volume {name} already exists in storage {}", spec.domain)));
        }
        let backing = backing.map(|b| (b.path.as_str(), b.format.as_str()));
        StorageVol::create_xml(&pool, &xml::volume_xml(name, size_bytes, backing), 0)
            .map_err(|e| lv_err(&format!("create volume {name} in storage {}", spec.domain), e))?;
        Ok(())
    }

    fn sync_disks(&self, domain: &str, disks: &[(u32, String, u64)]) -> Result<Vec<String>> {
        const AFFECT_LIVE_AND_CONFIG: u32 = 1 | 2; // VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG
        const RESIZE_BYTES: u32 = 1; // VIR_DOMAIN_BLOCK_RESIZE_BYTES
        let dom = self.lookup(domain)?;
        let live = dom.xml_desc(0).map_err(|e| lv_err(&format!("describe {domain}"), e))?;
        let mut done = Vec::new();
        for (index, path, size) in disks {
            let target = xml::disk_target(*index);
            if !live.contains(&format!("dev='{target}'")) {
                if self.is_test_driver() {
                    continue; // it runs no guest: the next definition carries the disk
                }
                dom.attach_device_flags(&xml::disk_xml(*index, path), AFFECT_LIVE_AND_CONFIG)
                    .map_err(|e| lv_err(&format!("attach {target} to {domain}"), e))?;
                done.push(format!("attached {target}"));
                continue;
            }
            if self.is_test_driver() {
                continue;
            }
            let info = dom.block_info(&target, 0).map_err(|e| lv_err(&format!("size of {target}"), e))?;
            if info.capacity < *size {
                dom.block_resize(&target, *size, RESIZE_BYTES)
                    .map_err(|e| lv_err(&format!("grow {target} of {domain}"), e))?;
                done.push(format!("grew {target} to {size} bytes"));
            }
        }
        Ok(done)
    }

    fn sync_nics(&self, domain: &str, nics: &[xml::NicXml]) -> Result<Vec<String>> {
        const AFFECT_LIVE_AND_CONFIG: u32 = 1 | 2; // VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG
        if self.is_test_driver() {
            return Ok(Vec::new()); // it runs no guest: the next definition carries the NICs
        }
        let dom = self.lookup(domain)?;
        let live = dom.xml_desc(0).map_err(|e| lv_err(&format!("describe {domain}"), e))?;
        let mut done = Vec::new();
        // A NIC the spec lacks, or has on another bridge (a MAC given again
        // on another network), is unplugged; the guest must let it go.
        let on_its_bridge = |mac: &str, iface: &str| {
            nics.iter().any(|n| n.mac == mac && iface.contains(&format!("<source bridge='{}'", n.bridge)))
        };
        for (mac, iface) in xml::interfaces(&live) {
            if !on_its_bridge(&mac, &iface) {
                dom.detach_device_flags(&iface, AFFECT_LIVE_AND_CONFIG)
                    .map_err(|e| lv_err(&format!("unplug NIC {mac} from {domain}"), e))?;
                done.push(format!("unplugged {mac}"));
            }
        }
        if !done.is_empty() {
            // libvirt returns once it asked; the guest answers the unplug.
            let mut left = Vec::new();
            for _ in 0..50 {
                let now = dom.xml_desc(0).map_err(|e| lv_err(&format!("describe {domain}"), e))?;
                left =
                    xml::interfaces(&now).into_iter().filter(|(m, i)| !on_its_bridge(m, i)).map(|(m, _)| m).collect();
                if left.is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !left.is_empty() {
                return Err(Error::Hypervisor(format!(
                    "the guest has not released NIC(s) {} after 5 s",
                    left.join(", ")
                )));
            }
        }
        let live = dom.xml_desc(0).map_err(|e| lv_err(&format!("describe {domain}"), e))?;
        let present: Vec<String> = xml::interfaces(&live).into_iter().map(|(mac, _)| mac).collect();
        for nic in nics.iter().filter(|n| !present.contains(&n.mac)) {
            dom.attach_device_flags(&xml::nic_xml(nic), AFFECT_LIVE_AND_CONFIG)
                .map_err(|e| lv_err(&format!("plug NIC {} into {domain}", nic.mac), e))?;
            done.push(format!("plugged {} into {}", nic.mac, nic.bridge));
        }
        Ok(done)
    }

    fn stores_files(&self) -> bool {
        !self.is_test_driver()
    }

    fn volume_exists(&self, spec: &PoolSpec, name: &str) -> Result<bool> {
        let pool = self.pool(spec)?;
        Ok(self.find_volume(&pool, name).is_some())
    }

    fn open_volume(&self, spec: &PoolSpec, name: &str, min_bytes: u64) -> Result<String> {
        let pool = self.pool(spec)?;
        let vol = match self.find_volume(&pool, name) {
            Some(vol) => vol,
            // The test driver keeps volumes in each process's memory, so a
            // volume another node made is not there; it holds no data, so
            // registering it again loses nothing.
            None if self.is_test_driver() => {
                StorageVol::create_xml(&pool, &xml::volume_xml(name, min_bytes, None), 0)
                    .map_err(|e| lv_err("register volume", e))?
            }
            None => {
                return Err(Error::FailedPrecondition(format!(
                    "volume {name} is missing from storage {} on this host ({}); kvmesh never creates a recorded volume again, so the VM's data is not replaced by an empty disk: restore the file, or remove the disk (`kvmesh vm disk remove`)",
                    spec.domain,
                    spec.path().display()
                )))
            }
        };
        let info = vol.info().map_err(|e| lv_err(&format!("volume {name}"), e))?;
        if info.capacity < min_bytes {
            vol.resize(min_bytes, 0).map_err(|e| lv_err(&format!("grow volume {name}"), e))?;
            info!(volume = name, bytes = min_bytes, "grew volume");
        }
        vol.path().map_err(|e| lv_err("volume path", e))
    }

    fn delete_volume(&self, spec: &PoolSpec, name: &str) -> Result<bool> {
        let pool = self.pool(spec)?;
        match self.find_volume(&pool, name) {
            Some(vol) => {
                vol.delete(0).map_err(|e| lv_err(&format!("delete volume {name}"), e))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn console(&self, domain: &str, max_bytes: u64) -> Result<Vec<u8>> {
        if self.is_test_driver() {
            return Err(Error::FailedPrecondition(format!(
                "{} has no serial console (libvirt's test driver runs no guest)",
                self.uri
            )));
        }
        let path = self.console_path(domain);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Hypervisor(format!("read {}: {e}", path.display()))),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))
            .map_err(|e| Error::Hypervisor(format!("read {}: {e}", path.display())))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| Error::Hypervisor(format!("read {}: {e}", path.display())))?;
        Ok(out)
    }
}

/// Undefines a domain; its UEFI variables are deleted only with `nvram`
/// (libvirt refuses to undefine a domain with variables without a word
/// on them).
fn undefine(dom: &VirtDomain, nvram: bool) -> std::result::Result<(), virt::error::Error> {
    // Only a domain with variables gets the flags: some drivers (the test
    // driver) refuse them outright.
    if !dom.xml_desc(0).is_ok_and(|x| x.contains("<nvram")) {
        return dom.undefine();
    }
    let flags = if nvram { virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM } else { virt::sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM };
    dom.undefine_flags(flags)
}
