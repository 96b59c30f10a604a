//! Storage domains as libvirt storage pools on this host.
//!
//! Every domain a host has becomes one pool: a `dir` pool over its
//! directory (`local`, `shared-dir`), or a `netfs` pool that mounts an NFS
//! export. The pool is named after the domain's cluster-wide id, so nodes
//! that share a libvirtd (the dev cluster, the qemu tests) share the pool,
//! as libvirt allows one pool per directory. The default `local` domain of
//! each node is that node's own pool under its data dir.

use std::path::PathBuf;

use kvmesh_raft::storage::{StorageDomain, StorageKind};

use super::xml::escape;

/// What a host needs to know to make a domain's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub pool_name: String,
    pub domain: String,
    pub kind: PoolKind,
    pub shared: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Dir {
        path: PathBuf,
    },
    /// NFS, mounted by libvirt at `mount`: the same path on every host, as
    /// a thin clone names its base by absolute path.
    Netfs {
        server: String,
        export: String,
        mount: PathBuf,
    },
}

/// A running pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolState {
    /// The directory its volumes are files in.
    pub path: PathBuf,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// The base of a thin clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backing {
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: String,
}

impl PoolSpec {
    /// The pool of `domain` on the node `node_id` whose data dir is `data_dir`.
    pub fn of(domain: &StorageDomain, node_id: u64, data_dir: &std::path::Path) -> PoolSpec {
        let (pool_name, kind) = match &domain.kind {
            StorageKind::Local { path: None } => {
                (node_pool_name(node_id), PoolKind::Dir { path: data_dir.join("images") })
            }
            StorageKind::Local { path: Some(p) } | StorageKind::SharedDir { path: p } => {
                (format!("kvmesh-{:016x}", domain.id), PoolKind::Dir { path: PathBuf::from(p) })
            }
            StorageKind::Nfs { server, export } => (
                format!("kvmesh-{:016x}", domain.id),
                PoolKind::Netfs {
                    server: server.clone(),
                    export: export.clone(),
                    mount: PathBuf::from(NFS_MOUNT_ROOT).join(&domain.name),
                },
            ),
        };
        PoolSpec { pool_name, domain: domain.name.clone(), kind, shared: domain.kind.is_shared() }
    }

    /// The directory the pool's volumes are files in.
    pub fn path(&self) -> &std::path::Path {
        match &self.kind {
            PoolKind::Dir { path } => path,
            PoolKind::Netfs { mount, .. } => mount,
        }
    }

    /// The libvirt definition of the pool.
    pub fn xml(&self) -> String {
        let name = escape(&self.pool_name);
        match &self.kind {
            PoolKind::Dir { path } => format!(
                "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
                escape(&path.to_string_lossy())
            ),
            PoolKind::Netfs { server, export, mount } => format!(
                "<pool type='netfs'><name>{name}</name><source><host name='{}'/><dir path='{}'/><format type='nfs'/></source><target><path>{}</path></target></pool>",
                escape(server),
                escape(export),
                escape(&mount.to_string_lossy())
            ),
        }
    }
}

/// Where each host mounts an `nfs` domain (like Proxmox's `/mnt/pve`).
pub const NFS_MOUNT_ROOT: &str = "/mnt/kvmesh";

/// The pool of a node's own `<data-dir>/images`.
pub fn node_pool_name(node_id: u64) -> String {
    format!("kvmesh-{node_id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(kind: StorageKind) -> StorageDomain {
        StorageDomain { id: 0xab, name: "d<1>".into(), kind, nodes: Default::default(), created_at_ms: 0 }
    }

    #[test]
    fn each_kind_becomes_its_pool() {
        let data = std::path::Path::new("/var/lib/kvmesh");
        let local = PoolSpec::of(&domain(StorageKind::Local { path: None }), 7, data);
        assert_eq!(local.pool_name, "kvmesh-0000000000000007");
        assert_eq!(local.path(), data.join("images"));
        assert!(!local.shared);

        let shared = PoolSpec::of(&domain(StorageKind::SharedDir { path: "/mnt/vm's".into() }), 7, data);
        assert_eq!(shared.pool_name, "kvmesh-00000000000000ab");
        assert!(shared.shared);
        assert_eq!(
            shared.xml(),
            "<pool type='dir'><name>kvmesh-00000000000000ab</name><target><path>/mnt/vm&apos;s</path></target></pool>"
        );
    }

    #[test]
    fn an_nfs_domain_is_a_netfs_pool_mounted_at_the_same_path_on_every_host() {
        let nfs = StorageKind::Nfs { server: "filer.lan".into(), export: "/export/vms".into() };
        let spec = PoolSpec::of(&domain(nfs), 7, std::path::Path::new("/var/lib/kvmesh"));
        assert_eq!(spec.path(), std::path::Path::new("/mnt/kvmesh/d<1>"));
        assert_eq!(
            spec.xml(),
            "<pool type='netfs'><name>kvmesh-00000000000000ab</name><source><host name='filer.lan'/><dir path='/export/vms'/><format type='nfs'/></source><target><path>/mnt/kvmesh/d&lt;1&gt;</path></target></pool>"
        );
    }
}
