//! A VM's view: its settings with every default explicit, where it was
//! placed and where libvirt really runs it, its disks, NICs, snapshots, a
//! live move's progress and what its guest agent reports.

use std::collections::BTreeMap;

use kvmesh_proto as pb;
use serde::Serialize;
use utoipa::ToSchema;

use crate::cli::output::{desired, vm_state};

#[derive(Serialize, ToSchema)]
pub struct Disk {
    pub index: u32,
    pub size_bytes: u64,
    pub storage: String,
    /// The image the disk is a clone of (the boot disk).
    pub image: Option<String>,
    /// Disks are made at the VM's first start.
    pub created: bool,
    /// The host holding a local disk.
    pub host: Option<String>,
    pub volume: String,
}

impl From<&pb::DiskInfo> for Disk {
    fn from(d: &pb::DiskInfo) -> Self {
        Disk {
            index: d.index,
            size_bytes: d.size_bytes,
            storage: d.storage.clone(),
            image: d.image.clone(),
            created: d.created,
            host: d.host.clone(),
            volume: d.volume.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Nic {
    pub network: String,
    pub mac: String,
    pub model: String,
}

impl From<&pb::Nic> for Nic {
    fn from(n: &pb::Nic) -> Self {
        Nic { network: n.network.clone(), mac: n.mac.clone(), model: n.model.clone() }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    pub created_at_ms: u64,
}

/// A live migration's progress.
#[derive(Serialize, ToSchema)]
pub struct MigrationProgress {
    pub data_total: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    pub bytes_per_s: u64,
    pub phase: String,
    pub disk_total: u64,
    pub disk_remaining: u64,
}

/// The virtual hardware.
#[derive(Serialize, ToSchema)]
pub struct Hardware {
    /// bios or uefi.
    pub firmware: String,
    /// pc or q35.
    pub machine: String,
    /// None: QEMU's migratable baseline.
    pub cpu_model: Option<String>,
    pub boot_order: Vec<String>,
    /// The ISO image in the CD-ROM drive.
    pub cdrom: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GuestInterface {
    pub name: String,
    pub mac: String,
    pub addresses: Vec<String>,
}

/// What the guest agent reports.
#[derive(Serialize, ToSchema)]
pub struct Guest {
    pub os: String,
    pub hostname: String,
    pub interfaces: Vec<GuestInterface>,
}

/// The cloud-init seed (its user-data is never sent back: it may hold secrets).
#[derive(Serialize, ToSchema)]
pub struct CloudInit {
    pub user_data_bytes: u64,
    /// Of all the settings: the seed's instance-id.
    pub fingerprint: String,
    pub ssh_keys: Vec<String>,
    pub hostname: Option<String>,
}

/// A VM.
#[derive(Serialize, ToSchema)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub ha: bool,
    /// Restart order after a host failure: higher first.
    pub priority: i32,
    /// running or stopped: what the operator asked for.
    pub desired: String,
    /// pending, running, stopping, stopped, crashed, failed, deleting, host-down, waiting-for-lease.
    pub state: String,
    /// Since when (Unix ms) it is in this state.
    pub since: u64,
    pub last_error: Option<String>,
    pub node: Option<String>,
    pub node_id: Option<u64>,
    /// Placement generation (bumped by every move).
    pub epoch: u64,
    pub created_at_ms: u64,
    pub image: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub disks: Vec<Disk>,
    pub snapshots: Vec<Snapshot>,
    pub nics: Vec<Nic>,
    /// The libvirt domain's name.
    pub domain: String,
    pub pin: Option<String>,
    pub required_labels: BTreeMap<String, String>,
    pub preferred_labels: BTreeMap<String, String>,
    pub anti_affinity: Option<String>,
    pub soft_anti_affinity: Option<String>,
    pub affinity: Option<String>,
    /// What it waits for, if anything.
    pub pending: Option<String>,
    /// The hosts libvirt reports it running on (None: not known yet).
    pub observed: Option<Vec<String>>,
    pub lease_holder: Option<String>,
    pub migrating_to: Option<String>,
    pub migration_started_ms: Option<u64>,
    pub migration_copies_disks: bool,
    pub migration_progress: Option<MigrationProgress>,
    pub hardware: Hardware,
    /// Settings that take effect at the next start.
    pub pending_changes: Vec<String>,
    pub guest: Option<Guest>,
    pub cloud_init: Option<CloudInit>,
}

impl From<&pb::Vm> for Vm {
    fn from(vm: &pb::Vm) -> Self {
        Vm {
            id: vm.id.clone(),
            name: vm.name.clone(),
            description: vm.description.clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            ha: vm.ha,
            priority: vm.priority,
            desired: desired(vm.desired).into(),
            state: vm_state(vm.state).into(),
            since: vm.since_ms,
            last_error: vm.last_error.clone(),
            node: vm.node.clone(),
            node_id: vm.node_id,
            epoch: vm.epoch,
            created_at_ms: vm.created_at_ms,
            image: vm.image.clone(),
            kernel: vm.kernel.clone(),
            initrd: vm.initrd.clone(),
            cmdline: vm.cmdline.clone(),
            labels: super::sorted(&vm.labels),
            disks: vm.disks.iter().map(Disk::from).collect(),
            snapshots: vm
                .snapshots
                .iter()
                .map(|s| Snapshot { name: s.name.clone(), created_at_ms: s.created_at_ms })
                .collect(),
            nics: vm.nics.iter().map(Nic::from).collect(),
            domain: vm.domain.clone(),
            pin: vm.pin.clone(),
            required_labels: super::sorted(&vm.required_labels),
            preferred_labels: super::sorted(&vm.preferred_labels),
            anti_affinity: vm.anti_affinity.clone(),
            soft_anti_affinity: vm.soft_anti_affinity.clone(),
            affinity: vm.affinity.clone(),
            pending: vm.pending.clone(),
            observed: vm.observed_known.then(|| vm.observed.clone()),
            lease_holder: vm.lease_holder.clone(),
            migrating_to: vm.migrating_to.clone(),
            migration_started_ms: (vm.migration_started_ms > 0).then_some(vm.migration_started_ms),
            migration_copies_disks: vm.migration_copies_disks,
            migration_progress: vm.migration_progress.as_ref().map(|p| MigrationProgress {
                data_total: p.data_total,
                data_processed: p.data_processed,
                data_remaining: p.data_remaining,
                bytes_per_s: p.bytes_per_s,
                phase: p.phase.clone(),
                disk_total: p.disk_total,
                disk_remaining: p.disk_remaining,
            }),
            hardware: Hardware {
                firmware: vm.firmware.clone(),
                machine: vm.machine.clone(),
                cpu_model: vm.cpu_model.clone(),
                boot_order: vm.boot_order.clone(),
                cdrom: vm.cdrom.clone(),
            },
            pending_changes: vm.pending_changes.clone(),
            guest: vm.guest.as_ref().map(|g| Guest {
                os: g.os.clone(),
                hostname: g.hostname.clone(),
                interfaces: g
                    .interfaces
                    .iter()
                    .map(|i| GuestInterface {
                        name: i.name.clone(),
                        mac: i.mac.clone(),
                        addresses: i.addresses.clone(),
                    })
                    .collect(),
            }),
            cloud_init: vm.cloud_init.as_ref().map(|c| CloudInit {
                user_data_bytes: c.user_data_bytes,
                fingerprint: c.fingerprint.clone(),
                ssh_keys: c.ssh_keys.clone(),
                hostname: c.hostname.clone(),
            }),
        }
    }
}
