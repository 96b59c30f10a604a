//! Storage in the replicated model: storage domains, images and VM disks.
//!
//! A storage domain is a cluster object, like oVirt's storage domains or
//! Proxmox's `storage.cfg`: a name, a kind and the hosts that have it. What
//! a domain looks like on each host right now (active, missing, not really
//! shared) is not replicated; hosts report it in their heartbeats. A VM's
//! disk names its domain, and its volume is created once, as a step of its
//! own ([`Volume`]): from then on every host opens that volume and none
//! creates it again, which is what makes a VM's data follow it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The domain every cluster starts with: a directory under each host's data
/// dir (`<data-dir>/images`), like Proxmox's `local`.
pub const DEFAULT_STORAGE: &str = "local";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageKind {
    /// A directory on each host; its volumes belong to the host that made
    /// them. No path: `<data-dir>/images` of each host.
    Local { path: Option<String> },
    /// A directory that is the same storage on every host that has it (a
    /// mount the OS made: NFS, CephFS, GlusterFS).
    SharedDir { path: String },
    /// An NFS export each host mounts through a libvirt `netfs` pool.
    Nfs { server: String, export: String },
}

impl StorageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            StorageKind::Local { .. } => "local",
            StorageKind::SharedDir { .. } => "shared-dir",
            StorageKind::Nfs { .. } => "nfs",
        }
    }

    /// Whether every host sees the same volumes, so a VM may move.
    pub fn is_shared(&self) -> bool {
        !matches!(self, StorageKind::Local { .. })
    }

    /// Where it is, as operators read it.
    pub fn location(&self) -> String {
        match self {
            StorageKind::Local { path: Some(p) } | StorageKind::SharedDir { path: p } => p.clone(),
            StorageKind::Local { path: None } => "<data-dir>/images".into(),
            StorageKind::Nfs { server, export } => format!("{server}:{export}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageDomain {
    /// Cluster-unique, never reused: names the libvirt pool and the marker
    /// that proves a shared domain is shared.
    pub id: u64,
    pub name: String,
    pub kind: StorageKind,
    /// The hosts (by name) that have it; empty: all.
    pub nodes: BTreeSet<String>,
    pub created_at_ms: u64,
}

impl StorageDomain {
    pub fn on_node(&self, node_name: &str) -> bool {
        self.nodes.is_empty() || self.nodes.contains(node_name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageKind {
    Disk,
    Kernel,
    Initrd,
    Iso,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Disk => "disk",
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initrd",
            ImageKind::Iso => "iso",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disk" => ImageKind::Disk,
            "kernel" => ImageKind::Kernel,
            "initrd" => ImageKind::Initrd,
            "iso" => ImageKind::Iso,
            _ => return None,
        })
    }
}

/// An imported file in a storage domain: a base for disks, a kernel, an
/// initrd or an ISO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: u64,
    pub name: String,
    pub storage: String,
    pub kind: ImageKind,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The size a guest sees (a qcow2's virtual size).
    pub virtual_bytes: u64,
    pub file_bytes: u64,
    pub sha256: String,
    /// The file's name inside the domain's directory.
    pub volume: String,
    /// On a `local` domain: the one host that holds it.
    pub host: Option<NodeId>,
    pub created_at_ms: u64,
}

/// The most disks a VM has: `vda` to `vdz`.
pub const MAX_DISKS: u32 = 26;

/// A recorded volume: it exists, and no host creates it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// On a `local` domain: the host that holds it (the VM is pinned there).
    pub host: Option<NodeId>,
    pub created_at_ms: u64,
}

/// One disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// 0 is `vda`, the boot disk.
    pub index: u32,
    pub size_bytes: u64,
    pub storage: String,
    /// A thin qcow2 clone of this image (on the image's domain).
    pub image: Option<String>,
    /// Set once the volume was created.
    pub volume: Option<Volume>,
}

impl Disk {
    /// The volume's file name in its domain: unique per VM and disk, so a VM
    /// that comes back to a host finds its own volume and nothing else.
    pub fn volume_name(&self, vm: u64) -> String {
        volume_name(vm, self.index)
    }
}

pub fn volume_name(vm: u64, index: u32) -> String {
    format!("{vm:016x}-disk{index}.qcow2")
}

/// The file name of an imported image in its domain's directory.
pub fn image_volume_name(id: u64, format: &str) -> String {
    format!("image-{id:016x}.{format}")
}

/// A snapshot of all of a VM's disks, taken while it was stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub created_at_ms: u64,
    pub description: String,
}

/// A volume whose VM, disk or image is gone: a host that has its domain
/// (and, for a `local` one, is `host`) deletes the file and says so.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Trashed {
    pub storage: String,
    pub volume: String,
    pub host: Option<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotOp {
    Create,
    Revert,
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_domains_pin_their_volumes() {
        assert!(!StorageKind::Local { path: None }.is_shared());
        assert!(StorageKind::SharedDir { path: "/mnt/x".into() }.is_shared());
        assert!(StorageKind::Nfs { server: "s".into(), export: "/e".into() }.is_shared());
    }
}
