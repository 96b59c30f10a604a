//! [`Hypervisor`] over libvirt (the `virt` crate).
//!
//! Each node keeps a `dir` storage pool under its data dir for its volumes
//! and writes guest consoles to files next to it. Volumes are named after the
//! VM id, so the node can find and delete them without a domain.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Once;

use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::Domain as VirtDomain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::xml::{self, DomainSpec};
use super::{DiskRequest, Domain, HostCapacity, Hypervisor, OffReason, RunState};
use crate::error::{Error, Result};

const METADATA_ELEMENT: i32 = 2; // VIR_DOMAIN_METADATA_ELEMENT

pub struct Libvirt {
    conn: Connect,
    uri: String,
    node_id: u64,
    pool_name: String,
    images_dir: PathBuf,
    consoles_dir: PathBuf,
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
        for dir in [&images_dir, &consoles_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Hypervisor(format!("cannot create {}: {e}", dir.display())))?;
        }
        let images_dir = images_dir.canonicalize().unwrap_or(images_dir);
        let consoles_dir = consoles_dir.canonicalize().unwrap_or(consoles_dir);
        let hv = Libvirt {
            conn,
            uri: uri.to_string(),
            node_id,
            pool_name: format!("kvmesh-{node_id:016x}"),
            images_dir,
            consoles_dir,
        };
        hv.reclaim_domains_of_this_dir();
        hv.ensure_pool()?;
        Ok(hv)
    }

    /// Destroys and undefines kvmesh domains of an earlier identity of this
    /// data dir (their disks or consoles live under it): a node rejoining
    /// with an emptied dir, whose old guests were left running when it was
    /// stopped. Nobody else manages them any more, and the cluster may be
    /// restarting them elsewhere, so they must not run on.
    fn reclaim_domains_of_this_dir(&self) {
        let Ok(domains) = self.conn.list_all_domains(0) else { return };
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
            if let Err(e) = dom.undefine() {
                warn!(domain = %name, error = %e, "could not undefine it");
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

    /// Undefines kvmesh pools of earlier identities of this data dir (a node
    /// that was removed and rejoins with an emptied dir, a refused join):
    /// libvirt allows one pool per directory, so the old one would block
    /// ours. Only the pool object goes; the files in it stay.
    fn reclaim_pools_of_this_dir(&self) {
        let Ok(pools) = self.conn.list_all_storage_pools(0) else { return };
        let target = format!("<path>{}</path>", self.images_dir.display());
        for pool in pools {
            let Ok(name) = pool.name() else { continue };
            if !name.starts_with("kvmesh-") || name == self.pool_name {
                continue;
            }
            if pool.xml_desc(0).is_ok_and(|xml| xml.contains(&target)) {
                info!(pool = %name, path = %self.images_dir.display(), "undefining the pool of an earlier identity of this data dir");
                if pool.is_active().unwrap_or(false) {
                    let _ = pool.destroy();
                }
                if let Err(e) = pool.undefine() {
                    warn!(pool = %name, error = %e, "could not undefine the old pool");
                }
            }
        }
    }

    fn ensure_pool(&self) -> Result<StoragePool> {
        let pool = match self.conn.lookup_storage_pool_by_name(&self.pool_name) {
            Ok(p) => p,
            Err(_) => {
                self.reclaim_pools_of_this_dir();
                let xml = xml::pool_xml(&self.pool_name, &self.images_dir.to_string_lossy());
                let p = self.conn.define_storage_pool_xml(&xml, 0).map_err(|e| lv_err("define storage pool", e))?;
                let _ = p.build(0);
                let _ = p.set_autostart(true);
                info!(pool = %self.pool_name, path = %self.images_dir.display(), "defined storage pool");
                p
            }
        };
        if !pool.is_active().unwrap_or(false) {
            pool.create(0).map_err(|e| lv_err("start storage pool", e))?;
        }
        Ok(pool)
    }

    fn volume_prefix(vm_id: u64) -> String {
        format!("{vm_id:016x}-")
    }

    fn create_volume(&self, pool: &StoragePool, vm_id: u64, disk: &DiskRequest) -> Result<Option<String>> {
        let backing = match &disk.base_image {
            Some(path) => {
                let mut f = std::fs::File::open(path)
                    .map_err(|e| Error::Hypervisor(format!("base image {path} cannot be opened on this host: {e}")))?;
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let mut header = vec![0u8; 32];
                let n = f.read(&mut header).unwrap_or(0);
                header.truncate(n);
                Some((path.clone(), xml::image_format_and_size(&header, len)))
            }
            None => None,
        };
        let capacity = match (&backing, disk.size_bytes) {
            (Some((_, (_, base))), Some(size)) => size.max(*base),
            (Some((_, (_, base))), None) => *base,
            (None, Some(size)) => size,
            (None, None) => return Ok(None),
        };
        let name = format!("{}disk0.qcow2", Self::volume_prefix(vm_id));
        let backing_ref = backing.as_ref().map(|(p, (fmt, _))| (p.as_str(), *fmt));
        let vol = StorageVol::create_xml(pool, &xml::volume_xml(&name, capacity, backing_ref), 0)
            .map_err(|e| lv_err("create volume", e))?;
        Ok(Some(vol.path().map_err(|e| lv_err("volume path", e))?))
    }

    fn delete_volumes(&self, vm_id: u64) -> Result<()> {
        let pool = self.ensure_pool()?;
        let _ = pool.refresh(0);
        let prefix = Self::volume_prefix(vm_id);
        for name in pool.list_volumes().map_err(|e| lv_err("list volumes", e))? {
            if name.starts_with(&prefix) {
                if let Ok(vol) = pool.lookup_storage_vol_by_name(&name) {
                    vol.delete(0).map_err(|e| lv_err("delete volume", e))?;
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, domain: &str) -> Result<VirtDomain> {
        self.conn.lookup_domain_by_name(domain).map_err(|e| lv_err(&format!("domain {domain}"), e))
    }

    fn tag(&self, dom: &VirtDomain) -> Option<xml::Tag> {
        let meta = dom.metadata(METADATA_ELEMENT, Some(xml::METADATA_NS), 0).ok()?;
        xml::parse_metadata(&meta)
    }
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
        let info = self.conn.node_info().map_err(|e| lv_err("node info", e))?;
        Ok(HostCapacity { cpus: info.cpus, memory_mib: info.memory / 1024 })
    }

    fn list(&self) -> Result<Vec<Domain>> {
        let mut out = Vec::new();
        for dom in self.conn.list_all_domains(0).map_err(|e| lv_err("list domains", e))? {
            let Ok(name) = dom.name() else { continue };
            if !name.starts_with("kvmesh-") {
                continue;
            }
            let Some(tag) = self.tag(&dom) else { continue };
            if tag.node_id != self.node_id {
                continue;
            }
            out.push(Domain { name, vm_id: tag.vm_id, epoch: tag.epoch, state: run_state(&dom) });
        }
        Ok(out)
    }

    fn define(&self, spec: &DomainSpec, disk: &DiskRequest) -> Result<()> {
        let pool = self.ensure_pool()?;
        let volume = self.create_volume(&pool, spec.vm_id, disk)?;
        let mut spec = spec.clone();
        if self.is_test_driver() {
            // The test driver neither writes consoles nor knows QEMU machines.
            spec.domain_type = "test".into();
            spec.console_log = None;
        } else {
            let log = self.console_path(&spec.domain);
            let _ = std::fs::remove_file(&log);
            spec.console_log = Some(log.to_string_lossy().into_owned());
        }
        spec.disks = volume.clone().into_iter().collect();
        if let Err(e) = self.conn.define_domain_xml(&xml::domain_xml(&spec)) {
            // Leave nothing half created.
            if volume.is_some() {
                if let Err(cleanup) = self.delete_volumes(spec.vm_id) {
                    warn!(error = %cleanup, "could not delete the volume of a domain that failed to define");
                }
            }
            return Err(lv_err("define domain", e));
        }
        Ok(())
    }

    fn start(&self, domain: &str) -> Result<()> {
        self.lookup(domain)?.create().map(|_| ()).map_err(|e| lv_err(&format!("start {domain}"), e))
    }

    fn shutdown(&self, domain: &str) -> Result<()> {
        self.lookup(domain)?.shutdown().map(|_| ()).map_err(|e| lv_err(&format!("shut down {domain}"), e))
    }

    fn destroy(&self, domain: &str) -> Result<()> {
        let dom = self.lookup(domain)?;
        if dom.is_active().unwrap_or(false) {
            dom.destroy().map_err(|e| lv_err(&format!("destroy {domain}"), e))?;
        }
        Ok(())
    }

    fn remove(&self, domain: &str, vm_id: u64, keep_disks: bool) -> Result<()> {
        if let Ok(dom) = self.conn.lookup_domain_by_name(domain) {
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(|e| lv_err(&format!("destroy {domain}"), e))?;
            }
            dom.undefine().map_err(|e| lv_err(&format!("undefine {domain}"), e))?;
        }
        if !keep_disks {
            self.delete_volumes(vm_id)?;
            let _ = std::fs::remove_file(self.console_path(domain));
        }
        Ok(())
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
