//! Commands that change the replicated state, and the pure `apply`.
//!
//! Decisions (a placement, a new id, a timestamp) are made by the leader and
//! carried in the command; `apply` only checks and records them. Checks that
//! depend on the state at commit time (unique names and ids, the scheduler's
//! placement rules) are repeated here so concurrent proposals cannot both
//! win. `apply` never panics: whatever a command names that does not exist
//! is a [`Refusal`], answered the same way on every replica.
//!
//! The handlers are split by subject: [`vms`](self::vms) for VMs,
//! [`nodes`](self::nodes) for hosts, [`cluster`](self::cluster) for cluster
//! settings, [`migrations`](self::migrations) for live migrations.

mod cluster;
mod configure;
pub mod migrations;
mod networks;
mod nodes;
mod refusal;
mod storage;
mod vms;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use refusal::Refusal;
pub use storage::uses_image;

use crate::model::{ClusterState, Desired, Key, Node, NodeState, PlacementSettings, Settings, Vm, VmId, VmState};
use crate::requests::{Answer, RequestId, Seen};
use crate::storage::{Disk, Image, SnapshotOp, StorageDomain, Trashed};
use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A write asked for by a principal (a user's token, a node): applied
    /// as `cmd`, with `by` recorded in the events it causes.
    Audited {
        by: String,
        #[serde(deserialize_with = "crate::codec::nested")]
        cmd: Box<Command>,
    },
    /// The CA, tokens and node certificates ([`crate::security`]).
    Security {
        cmd: crate::security::SecurityCmd,
        at_ms: u64,
    },
    /// The first entry of a cluster: its id, settings and founding node.
    Init {
        cluster_id: String,
        settings: Settings,
        node: Node,
        at_ms: u64,
    },
    /// Registers a joining node (before it becomes a Raft learner).
    AddNode {
        node: Node,
        at_ms: u64,
    },
    /// Forgets a node. With `force`, its VMs lose their placement.
    RemoveNode {
        id: NodeId,
        force: bool,
        at_ms: u64,
    },
    /// Records a VM and its placement (chosen by the leader's scheduler).
    CreateVm {
        vm: Box<Vm>,
        at_ms: u64,
    },
    /// Deletes a VM: at once if no host holds it, otherwise once its host
    /// reports the domain gone.
    DeleteVm {
        name: String,
        keep_disks: bool,
        at_ms: u64,
    },
    /// `vm start` / `vm stop [--force]`.
    SetDesired {
        name: String,
        desired: Desired,
        force: bool,
        at_ms: u64,
    },
    /// `vm restart`.
    RestartVm {
        name: String,
        at_ms: u64,
    },
    /// `vm set`: change a VM's description or restart priority. Neither
    /// touches the running guest.
    UpdateVm {
        name: String,
        description: Option<String>,
        priority: Option<i32>,
    },
    /// `cluster policy set`.
    SetPlacement {
        placement: PlacementSettings,
        at_ms: u64,
    },
    /// The leader saw no heartbeat for `down_after`: the node is down, and
    /// its HA VMs are unplaced so they can be restarted elsewhere.
    NodeDown {
        id: NodeId,
        at_ms: u64,
    },
    /// A down node heartbeats again, with no stale domains left.
    NodeUp {
        id: NodeId,
        at_ms: u64,
    },
    /// `node drain` (Draining: its VMs are unplaced to move elsewhere), the
    /// end of a drain (Maintenance), or `node activate` (Up).
    SetNodeState {
        id: NodeId,
        state: NodeState,
        at_ms: u64,
    },
    /// Places an unplaced VM on `node` with a new epoch.
    PlaceVm {
        vm: VmId,
        node: NodeId,
        at_ms: u64,
    },
    /// Records why an unplaced VM is still waiting.
    SetPending {
        vm: VmId,
        reason: String,
        at_ms: u64,
    },
    /// `vm recover`: restart a VM whose host is down elsewhere, on purpose.
    RecoverVm {
        name: String,
        at_ms: u64,
    },
    /// A host reports a VM's state transition. Accepted only from the host
    /// of the current placement at the current epoch.
    ReportVm {
        vm: VmId,
        node: NodeId,
        epoch: u64,
        state: VmState,
        error: Option<String>,
        /// The spec generation the host defined the guest from.
        spec_gen: u64,
        at_ms: u64,
    },
    /// Writes that arrived together, in one log entry (group commit); each is
    /// applied as if it were an entry of its own, in order.
    Batch(#[serde(deserialize_with = "crate::codec::nested")] Vec<Command>),
    /// A write with the id its node proposed it under: applied once, and a
    /// retry with the same id gets the first answer (see [`crate::requests`]).
    Request {
        id: RequestId,
        #[serde(deserialize_with = "crate::codec::nested")]
        cmd: Box<Command>,
    },
    /// `node set`, or a node restarted with other `--cpus`/`--memory-mib`/
    /// `--label` flags: new capacity and labels, refused if what is placed
    /// on it would no longer fit.
    UpdateNode {
        id: NodeId,
        /// A member's new address (after its membership entry changed).
        address: Option<String>,
        cpus: Option<u32>,
        memory_mib: Option<u64>,
        set_labels: std::collections::BTreeMap<String, String>,
        unset_labels: std::collections::BTreeSet<String>,
        at_ms: u64,
    },
    /// `storage add`: the id is drawn in `apply`.
    AddStorage {
        domain: StorageDomain,
        at_ms: u64,
    },
    /// `storage remove`, refused while disks or images live on it.
    RemoveStorage {
        name: String,
        at_ms: u64,
    },
    /// An imported (or templated) image, after its file was written.
    AddImage {
        image: Image,
        at_ms: u64,
    },
    /// `image delete`, refused while in use; its file goes to the trash.
    DeleteImage {
        name: String,
        at_ms: u64,
    },
    /// The host of the current placement created the volume of disk `index`.
    RecordVolume {
        vm: VmId,
        index: u32,
        node: NodeId,
        epoch: u64,
        at_ms: u64,
    },
    /// `vm disk add|resize|remove` on a stopped VM.
    AddDisk {
        name: String,
        disk: Disk,
        at_ms: u64,
    },
    ResizeDisk {
        name: String,
        index: u32,
        size_bytes: u64,
        at_ms: u64,
    },
    RemoveDisk {
        name: String,
        index: u32,
        at_ms: u64,
    },
    /// A snapshot operation that the VM's host has carried out.
    Snapshot {
        name: String,
        snapshot: String,
        op: SnapshotOp,
        at_ms: u64,
    },
    /// A host deleted these trashed volumes.
    VolumesDeleted {
        volumes: Vec<Trashed>,
    },
    /// `node drain [--cold]`: running VMs that can move live migrate (the
    /// leader starts each), the rest stop and start elsewhere; `cold` stops
    /// and starts them all.
    Drain {
        id: NodeId,
        cold: bool,
        at_ms: u64,
    },
    /// `vm migrate`: a live migration of a running VM to `target` (chosen
    /// by the leader's scheduler or by the operator) begins.
    BeginMigration {
        name: String,
        target: NodeId,
        /// MiB/s, 0 for no limit.
        bandwidth_mib: u64,
        /// Copy the disks on local storage to the target as the guest runs.
        copy_storage: bool,
        at_ms: u64,
    },
    /// The source's libvirt completed the migration: the VM is placed on
    /// the target at the migration's epoch.
    FinishMigration {
        vm: VmId,
        epoch: u64,
        /// How long the guest was paused for the switch-over, from the
        /// target's libvirt job statistics (when the source could ask).
        downtime_ms: Option<u64>,
        at_ms: u64,
    },
    /// The migration failed or was overtaken: the VM stays where it was.
    AbortMigration {
        vm: VmId,
        epoch: u64,
        reason: String,
        at_ms: u64,
    },
    /// An event about something the state machine does not hold, such as
    /// a voter seat moved by a Raft membership change; proposed by the
    /// leader so the event log tells it, not only a node's log.
    Note {
        kind: String,
        message: String,
        at_ms: u64,
    },
    /// `vm set --label/--unlabel`: the VM's own labels.
    LabelVm {
        name: String,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    },
    /// `network add`: a logical network for every host to realize.
    AddNetwork {
        network: crate::networks::Network,
        at_ms: u64,
    },
    /// `network remove`: refused while a NIC uses it.
    RemoveNetwork {
        name: String,
        at_ms: u64,
    },
    /// `vm nic add`: a NIC whose MAC is allocated here unless given.
    AddNic {
        name: String,
        nic: crate::networks::Nic,
        at_ms: u64,
    },
    /// `vm nic remove`: the NIC with this MAC.
    RemoveNic {
        name: String,
        mac: crate::networks::Mac,
        at_ms: u64,
    },
    /// `vm set` of size, HA or hardware, and `vm cdrom insert|eject`.
    /// Idempotent: it sets values.
    ConfigureVm {
        name: String,
        change: crate::hardware::VmChange,
        at_ms: u64,
    },
    /// The VM's host gave the running guest `vcpus` vCPUs live (hot-plug):
    /// a pending vCPU change to that count is done.
    VcpusLive {
        vm: VmId,
        node: NodeId,
        epoch: u64,
        vcpus: u32,
        at_ms: u64,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Membership entries and blank entries answer this.
    #[default]
    Done,
    Vm(Box<Vm>),
    Refused(Refusal),
    /// One response per command of a [`Command::Batch`], in order.
    Batch(#[serde(deserialize_with = "crate::codec::nested")] Vec<Response>),
}

impl Command {
    /// Whether applying this command twice differs from applying it once,
    /// so a retry must carry a request id ([`Command::Request`]). The others
    /// are idempotent by construction: setting a description or a
    /// placement policy again, or a host's report of the same transition, changes
    /// nothing, and a create carries its own client request id. Only these
    /// pay for an answer kept in the replicated state.
    pub fn needs_request_id(&self) -> bool {
        match self {
            Command::DeleteVm { .. }
            | Command::SetDesired { .. }
            | Command::RestartVm { .. }
            | Command::RecoverVm { .. }
            | Command::RemoveNode { .. }
            | Command::SetNodeState { .. }
            | Command::UpdateNode { .. }
            | Command::PlaceVm { .. }
            | Command::AddStorage { .. }
            | Command::RemoveStorage { .. }
            | Command::DeleteImage { .. }
            | Command::AddDisk { .. }
            | Command::RemoveDisk { .. }
            | Command::BeginMigration { .. }
            | Command::Drain { .. }
            | Command::AddNetwork { .. }
            | Command::RemoveNetwork { .. }
            | Command::AddNic { .. }
            | Command::RemoveNic { .. }
            | Command::Snapshot { .. } => true,
            Command::Batch(cmds) => cmds.iter().any(Command::needs_request_id),
            Command::Audited { cmd, .. } => cmd.needs_request_id(),
            // Token and certificate writes: a retry of a used-up join token
            // must get its first answer, not a refusal.
            Command::Security { .. } => true,
            Command::Request { .. }
            | Command::Init { .. }
            | Command::AddNode { .. }
            | Command::CreateVm { .. }
            | Command::UpdateVm { .. }
            | Command::SetPlacement { .. }
            | Command::NodeDown { .. }
            | Command::NodeUp { .. }
            | Command::SetPending { .. }
            | Command::AddImage { .. }
            | Command::RecordVolume { .. }
            | Command::ResizeDisk { .. }
            | Command::VolumesDeleted { .. }
            | Command::FinishMigration { .. }
            | Command::AbortMigration { .. }
            | Command::Note { .. }
            | Command::LabelVm { .. }
            | Command::ConfigureVm { .. }
            | Command::VcpusLive { .. }
            | Command::ReportVm { .. } => false,
        }
    }
}

impl ClusterState {
    /// Applies one committed command. Pure: the result depends only on the
    /// state and the command.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::Batch(cmds) => Response::Batch(cmds.iter().map(|c| self.apply(c)).collect()),
            Command::Audited { by, cmd } => {
                let outer = self.audit_by.replace(by.clone());
                let response = self.apply(cmd);
                self.audit_by = outer;
                response
            }
            Command::Security { cmd, at_ms } => self.apply_security(cmd, *at_ms),
            Command::Request { id, cmd } => self.apply_once(*id, cmd),
            Command::Init { cluster_id, settings, node, at_ms } => self.init(cluster_id, settings, node, *at_ms),
            Command::SetPlacement { placement, at_ms } => self.set_placement(placement, *at_ms),
            Command::AddNode { node, at_ms } => self.add_node(node, *at_ms),
            Command::RemoveNode { id, force, at_ms } => self.remove_node(*id, *force, *at_ms),
            Command::NodeDown { id, at_ms } => self.node_down(*id, *at_ms),
            Command::NodeUp { id, at_ms } => self.node_up(*id, *at_ms),
            Command::SetNodeState { id, state, at_ms } => self.set_node_state(*id, *state, *at_ms),
            Command::UpdateNode { id, address, cpus, memory_mib, set_labels, unset_labels, at_ms } => {
                let change =
                    nodes::NodeChange { address, cpus: *cpus, memory_mib: *memory_mib, set_labels, unset_labels };
                self.update_node(*id, change, *at_ms)
            }
            Command::CreateVm { vm, at_ms } => self.create_vm(vm, *at_ms),
            Command::DeleteVm { name, keep_disks, at_ms } => self.delete_vm(name, *keep_disks, *at_ms),
            Command::SetDesired { name, desired, force, at_ms } => self.set_desired(name, *desired, *force, *at_ms),
            Command::RestartVm { name, at_ms } => self.restart_vm(name, *at_ms),
            Command::UpdateVm { name, description, priority } => self.update_vm(name, description, *priority),
            Command::PlaceVm { vm, node, at_ms } => self.place_vm(*vm, *node, *at_ms),
            Command::SetPending { vm, reason, at_ms } => self.set_pending(*vm, reason, *at_ms),
            Command::RecoverVm { name, at_ms } => self.recover_vm(name, *at_ms),
            Command::ReportVm { vm, node, epoch, state, error, spec_gen, at_ms } => {
                self.report_vm(*vm, *node, *epoch, *state, error.clone(), *spec_gen, *at_ms)
            }
            Command::AddStorage { domain, at_ms } => self.add_storage(domain, *at_ms),
            Command::RemoveStorage { name, at_ms } => self.remove_storage(name, *at_ms),
            Command::AddImage { image, at_ms } => self.add_image(image, *at_ms),
            Command::DeleteImage { name, at_ms } => self.delete_image(name, *at_ms),
            Command::RecordVolume { vm, index, node, epoch, at_ms } => {
                self.record_volume(*vm, *index, *node, *epoch, *at_ms)
            }
            Command::AddDisk { name, disk, at_ms } => self.add_disk(name, disk, *at_ms),
            Command::ResizeDisk { name, index, size_bytes, at_ms } => {
                self.resize_disk(name, *index, *size_bytes, *at_ms)
            }
            Command::RemoveDisk { name, index, at_ms } => self.remove_disk(name, *index, *at_ms),
            Command::Snapshot { name, snapshot, op, at_ms } => self.snapshot(name, snapshot, *op, *at_ms),
            Command::VolumesDeleted { volumes } => self.volumes_deleted(volumes),
            Command::Drain { id, cold, at_ms } => self.drain(*id, *cold, *at_ms),
            Command::BeginMigration { name, target, bandwidth_mib, copy_storage, at_ms } => {
                self.begin_migration(name, *target, *bandwidth_mib, *copy_storage, *at_ms)
            }
            Command::FinishMigration { vm, epoch, downtime_ms, at_ms } => {
                self.finish_migration(*vm, *epoch, *downtime_ms, *at_ms)
            }
            Command::AbortMigration { vm, epoch, reason, at_ms } => self.abort_migration(*vm, *epoch, reason, *at_ms),
            Command::LabelVm { name, set, unset } => self.label_vm(name, set, unset),
            Command::AddNetwork { network, at_ms } => self.add_network(network, *at_ms),
            Command::RemoveNetwork { name, at_ms } => self.remove_network(name, *at_ms),
            Command::AddNic { name, nic, at_ms } => self.add_nic(name, nic, *at_ms),
            Command::RemoveNic { name, mac, at_ms } => self.remove_nic(name, *mac, *at_ms),
            Command::ConfigureVm { name, change, at_ms } => self.configure_vm(name, change, *at_ms),
            Command::VcpusLive { vm, node, epoch, vcpus, at_ms } => {
                self.vcpus_live(*vm, (*node, *epoch), *vcpus, *at_ms)
            }
            Command::Note { kind, message, at_ms } => {
                self.push_event(*at_ms, kind, message.clone());
                Response::Done
            }
        }
    }

    /// Applies a write at most once per request id.
    fn apply_once(&mut self, id: RequestId, cmd: &Command) -> Response {
        match self.requests.seen(id) {
            Seen::Answered(answer) => {
                let answer = answer.clone();
                return self.replay(answer);
            }
            Seen::Expired => return Response::Refused(Refusal::RequestExpired),
            Seen::New => {}
        }
        let response = self.apply(cmd);
        let pushed_out = self.requests.record(id, Answer::of(&response));
        self.dirty.insert(Key::Request(id));
        if let Some(old) = pushed_out {
            self.dirty.insert(Key::Request(old));
        }
        response
    }

    /// The first answer to a write, for its retry. A VM is answered as it
    /// is now.
    fn replay(&self, answer: Answer) -> Response {
        match answer {
            Answer::Done => Response::Done,
            Answer::Refused(r) => Response::Refused(r),
            Answer::Vm(id) => match self.vms.get(&id) {
                Some(vm) => Response::Vm(Box::new(vm.clone())),
                None => Response::Done,
            },
        }
    }
}

#[cfg(test)]
mod configure_tests;
#[cfg(test)]
mod migration_tests;
#[cfg(test)]
mod network_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod storage_tests;
#[cfg(test)]
mod tests;
