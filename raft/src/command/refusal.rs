//! Why `apply` refused a command.
//!
//! Refusals are normal results, not failures: the log entry is committed and
//! every replica refuses it the same way, so the proposer can tell its
//! client why. Each message says what to do next.

use kvmesh_scheduler::Rejection;
use serde::{Deserialize, Serialize};

use crate::model::VmId;
use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    AlreadyInitialized {
        cluster_id: String,
    },
    NodeNameTaken {
        name: String,
    },
    NodeAddressTaken {
        address: String,
        by: String,
    },
    UnknownNode {
        id: NodeId,
    },
    NodeHasVms {
        name: String,
        vms: u32,
    },
    VmNameTaken {
        name: String,
    },
    /// The leader drew a VM id that another VM holds; it draws again.
    VmIdTaken {
        id: VmId,
    },
    UnknownVm {
        name: String,
    },
    /// A command named a VM by id that no longer exists.
    UnknownVmId {
        id: VmId,
    },
    /// The chosen node no longer passes the scheduler's rules (another
    /// placement won the race, the node changed state): the leader plans again.
    NoLongerFits {
        node: String,
        reason: Rejection,
    },
    /// A report from a host that no longer holds the VM at that epoch.
    StaleReport,
    VmBeingDeleted {
        name: String,
    },
    /// `vm recover` of a VM whose host is up.
    HostNotDown {
        name: String,
        host: String,
    },
    /// Placing a VM that is already placed.
    AlreadyPlaced {
        name: String,
    },
    /// A retried write whose first outcome is no longer remembered (its node
    /// has made many newer writes since); it is not applied a second time.
    RequestExpired,
    UnknownNetwork {
        name: String,
    },
    NetworkNameTaken {
        name: String,
    },
    NetworkInUse {
        name: String,
        by: String,
    },
    NetworkInvalid {
        reason: String,
    },
    MacTaken {
        mac: String,
        by: String,
    },
    UnknownNic {
        vm: String,
        mac: String,
        have: String,
    },
    /// `node set` (or a restart with other flags) that would leave what is
    /// placed on the node without room or without a label it requires.
    NodeChangeRefused {
        name: String,
        reason: String,
    },
    UnknownStorage {
        name: String,
    },
    StorageNameTaken {
        name: String,
    },
    /// `storage remove` while disks or images live on it.
    StorageInUse {
        name: String,
        by: String,
    },
    UnknownImage {
        name: String,
    },
    ImageNameTaken {
        name: String,
    },
    /// An image used where another kind is needed (a disk image as a kernel).
    ImageWrongKind {
        name: String,
        kind: String,
        want: String,
    },
    ImageInUse {
        name: String,
        by: String,
    },
    /// `--ha` with data that only one host can reach.
    HaNeedsSharedStorage {
        what: String,
        storage: String,
    },
    /// A drain of a host that runs VMs whose disks are local to it.
    LocalDisksRunning {
        node: String,
        vms: String,
    },
    /// Starting a VM whose host (holding its local disks) is in maintenance.
    HostInMaintenance {
        vm: String,
        node: String,
    },
    /// A disk or snapshot change that cannot be made as asked.
    StorageChange {
        vm: String,
        reason: String,
    },
    /// A migration that cannot begin, or an operation that must wait for
    /// one in flight.
    Migration {
        vm: String,
        reason: String,
    },
    /// `vm set` would make the VM bigger than its host (or every host) holds.
    TooBig {
        vm: String,
        reason: String,
    },
    /// A `vm set` or `vm cdrom` that cannot be made as asked.
    VmChange {
        vm: String,
        reason: String,
    },
    /// A token or certificate write that is not allowed (a used join
    /// token, a duplicate token name).
    Denied {
        reason: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied { reason } => write!(f, "{reason}"),
            Refusal::AlreadyInitialized { cluster_id } => write!(f, "cluster {cluster_id} is already initialized"),
            Refusal::NodeNameTaken { name } => write!(f, "node name {name:?} is already taken by another node"),
            Refusal::NodeAddressTaken { address, by } => {
                write!(f, "address {address} is already used by node {by:?}")
            }
            Refusal::UnknownNode { id } => write!(f, "no node with id {id}; see `kvmesh node list`"),
            Refusal::NodeHasVms { name, vms } => write!(
                f,
                "node {name:?} still has {vms} VM(s) placed on it; delete or move them first, or pass --force to leave them unplaced"
            ),
            Refusal::VmNameTaken { name } => write!(f, "a VM named {name:?} already exists"),
            Refusal::VmIdTaken { id } => write!(f, "VM id {id:016x} is taken; retry"),
            Refusal::UnknownVm { name } => write!(f, "no VM named {name:?}; see `kvmesh vm list`"),
            Refusal::UnknownVmId { id } => write!(f, "no VM with id {id:016x}; it was deleted"),
            Refusal::NoLongerFits { node, reason } => {
                write!(f, "node {node:?} can no longer take this VM: {reason}")
            }
            Refusal::StaleReport => write!(f, "stale report: the VM moved on or is gone"),
            Refusal::VmBeingDeleted { name } => write!(f, "VM {name:?} is being deleted"),
            Refusal::HostNotDown { name, host } => write!(
                f,
                "VM {name:?} runs on {host}, which is not down; use `vm restart`, or `node drain {host}` to move it"
            ),
            Refusal::AlreadyPlaced { name } => write!(f, "VM {name:?} is already placed"),
            Refusal::NodeChangeRefused { name, reason } => write!(
                f,
                "node {name:?} keeps its capacity and labels: {reason}. Move or stop VMs first (`kvmesh node drain {name}`)"
            ),
            Refusal::UnknownStorage { name } => {
                write!(f, "no storage domain named {name:?}; see `kvmesh storage list`")
            }
            Refusal::StorageNameTaken { name } => write!(f, "a storage domain named {name:?} already exists"),
            Refusal::StorageInUse { name, by } => {
                write!(f, "storage {name:?} still holds {by}; delete or move them first")
            }
            Refusal::UnknownImage { name } => write!(
                f,
                "no image named {name:?}; see `kvmesh image list`, or import a file with `kvmesh image import {name} FILE --storage DOMAIN`"
            ),
            Refusal::ImageNameTaken { name } => write!(f, "an image named {name:?} already exists"),
            Refusal::ImageWrongKind { name, kind, want } => write!(
                f,
                "image {name:?} is a {kind} image, not a {want} image; import the file with `--kind {want}`"
            ),
            Refusal::ImageInUse { name, by } => {
                write!(f, "image {name:?} is used by {by}; delete those VMs (or their disks) first")
            }
            Refusal::HaNeedsSharedStorage { what, storage } => write!(
                f,
                "an HA VM must be able to restart on another host, but its {what} is on {storage:?}, storage that only one host can reach; put it on a shared domain (`kvmesh storage list`)"
            ),
            Refusal::LocalDisksRunning { node, vms } => write!(
                f,
                "node {node:?} runs {vms} with disks on its local storage, which a drain does not copy; move them first with `kvmesh vm migrate NAME --copy-storage`, or stop them (they stay on {node}, stopped, until it is activated), then drain"
            ),
            Refusal::HostInMaintenance { vm, node } => write!(
                f,
                "VM {vm:?} keeps its disks on {node}, which is draining or in maintenance; `kvmesh node activate {node}` first"
            ),
            Refusal::StorageChange { vm, reason } if vm.is_empty() => write!(f, "{reason}"),
            Refusal::StorageChange { vm, reason } => write!(f, "VM {vm:?}: {reason}"),
            Refusal::Migration { vm, reason } => write!(f, "VM {vm:?}: {reason}"),
            Refusal::TooBig { vm, reason } => write!(
                f,
                "VM {vm:?} cannot have that size: {reason}; ask for less, or give the hosts more (`kvmesh node set`)"
            ),
            Refusal::VmChange { vm, reason } => write!(f, "VM {vm:?}: {reason}"),
            Refusal::UnknownNetwork { name } => {
                write!(f, "no network named {name:?}; see `kvmesh network list`, or define it with `kvmesh network add`")
            }
            Refusal::NetworkNameTaken { name } => write!(f, "a network named {name:?} already exists"),
            Refusal::NetworkInUse { name, by } => write!(
                f,
                "network {name:?} is used by the NICs of {by}; remove them first (`kvmesh vm nic remove VM MAC`)"
            ),
            Refusal::NetworkInvalid { reason } => write!(f, "{reason}"),
            Refusal::MacTaken { mac, by } => {
                write!(f, "MAC {mac} is already used by {by}; leave mac= out to get a free one")
            }
            Refusal::UnknownNic { vm, mac, have } if have.is_empty() => write!(f, "VM {vm:?} has no NIC {mac}; it has no NICs"),
            Refusal::UnknownNic { vm, mac, have } => write!(f, "VM {vm:?} has no NIC {mac}; its NICs: {have}"),
            Refusal::RequestExpired => write!(
                f,
                "this retried write is too old to tell whether it was applied; check the object's state and send it again if needed"
            ),
        }
    }
}
