//! The replicated cluster model: nodes, VMs and a bounded event log.
//!
//! [`ClusterState`] is the value every replica's state machine holds. It
//! changes only through [`ClusterState::apply`](crate::command), and it keeps a
//! set of the keys each change touched so the store can persist exactly those.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::held::Held;
use crate::placed::PlacedIndex;
use crate::requests::{Answer, RequestId, Requests};
use crate::storage::{Disk, Image, Snapshot, StorageDomain, Trashed};

use crate::types::NodeId;

/// How many events the replicated ring keeps.
pub const EVENT_CAPACITY: usize = 1000;

pub type VmId = u64;

/// Cluster-wide settings, chosen at `cluster init` and kept in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The leader promotes joining nodes to voters up to this count.
    pub max_voters: u32,
    pub placement: PlacementSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { max_voters: 3, placement: PlacementSettings::default() }
    }
}

/// How the leader places VMs (`kvmesh cluster policy set`): the scheduler's
/// own settings type, kept as it is in the replicated state, so the leader's
/// scheduler and every replica's `apply` read the same integers.
pub use kvmesh_scheduler::{Policy, Settings as PlacementSettings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Up,
    Down,
    Draining,
    Maintenance,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
            NodeState::Maintenance => "maintenance",
        }
    }
}

/// A host of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub address: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub state: NodeState,
    pub joined_at_ms: u64,
    pub labels: BTreeMap<String, String>,
    /// While down: the state to return to when it heartbeats again, if not
    /// `up` (a drain or maintenance survives an outage or a partition).
    pub resume_as: Option<NodeState>,
    /// Its drain stops and starts every VM (`node drain --cold`) instead of
    /// migrating the running ones live.
    pub cold_drain: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub ha: bool,
    /// The VM's disks in boot order (`vda` first). Each names its storage
    /// domain; its volume is recorded once created.
    pub disks: Vec<Disk>,
    /// Direct kernel boot: names of imported images (never host paths).
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// NICs on the cluster's networks, in order (the first is the guest's
    /// first NIC). Their MACs are allocated by `apply` and kept for life.
    pub nics: Vec<crate::networks::Nic>,
    /// Higher restarts first when a host dies.
    pub priority: i32,
    /// Only on the node with this name.
    pub pin: Option<String>,
    /// Only on nodes with all these labels.
    pub required_labels: BTreeMap<String, String>,
    /// Nodes with these labels are preferred.
    pub preferred_labels: BTreeMap<String, String>,
    /// Hard: no two members on one host.
    pub anti_affinity: Option<String>,
    /// Soft: members spread out when possible.
    pub soft_anti_affinity: Option<String>,
    /// Hard: members together on one host.
    pub affinity: Option<String>,
    /// The VM's own labels (`vm create --label`), for operators and
    /// `vm list --label`; placement does not read them.
    pub labels: BTreeMap<String, String>,
    /// Firmware, machine, CPU model, boot order and CD-ROM.
    pub hardware: crate::hardware::Hardware,
}

/// What the owning host last reported about a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Running,
    Stopped,
    Crashed,
    Failed,
    Deleted,
    /// Its start was refused because a disk lease (QEMU's image lock, or
    /// libvirt's lock manager) is held, most likely by a copy on a host that
    /// has not fenced yet: not a failure, retried until the lease frees.
    WaitingForLease,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Crashed => "crashed",
            VmState::Failed => "failed",
            VmState::Deleted => "deleted",
            VmState::WaitingForLease => "waiting-for-lease",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => VmState::Running,
            "stopped" => VmState::Stopped,
            "crashed" => VmState::Crashed,
            "failed" => VmState::Failed,
            "deleted" => VmState::Deleted,
            "waiting-for-lease" => VmState::WaitingForLease,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub state: VmState,
    pub node: NodeId,
    pub epoch: u64,
    /// When this state began, as stamped by the reporting host.
    pub since_ms: u64,
    pub last_error: Option<String>,
}

/// Where a VM should run. The epoch grows with every new placement so a host
/// can tell a current assignment from a stale one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: NodeId,
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: VmId,
    pub name: String,
    pub spec: VmSpec,
    pub desired: Desired,
    pub placement: Option<Placement>,
    pub created_at_ms: u64,
    /// The client's request id, so a retried create is recognised.
    pub request_id: String,
    pub reported: Option<Reported>,
    /// Bumped by every start/stop, so a host retries a failed VM only when
    /// an operator asks again (no retry storm).
    pub desired_gen: u64,
    /// Bumped by `vm restart`; the host restarts the guest once per bump.
    pub restart_gen: u64,
    /// Stop by destroying at once rather than by ACPI shutdown.
    pub force_stop: bool,
    /// Set while the owning host removes the domain; the record goes once
    /// the host reports it gone.
    pub deleting: Option<Deleting>,
    /// The highest epoch ever given to this VM; the next placement gets one
    /// more, so a host can always tell a current assignment from a stale one.
    pub last_epoch: u64,
    /// Why an unplaced VM is waiting (its host died, a drain, no capacity).
    pub pending: Option<String>,
    /// The draining node this VM is moving off; that drain is not finished
    /// until the VM is placed elsewhere.
    pub moving_from: Option<NodeId>,
    /// Free text for operators (`vm set --description`), like Proxmox's notes.
    pub description: String,
    /// Snapshots of all its disks, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// The index its next disk gets: indexes (and so volume names) are
    /// never reused, so a removed disk's volume, deleted late by a host
    /// behind on the trash, is never a new disk's.
    pub next_disk: u32,
    /// A live migration in flight, at most one.
    pub migration: Option<Migration>,
    /// Changes made while the guest ran that take effect at its next start
    /// (Proxmox's pending changes), as operators read them: "vcpus 1 -> 2".
    pub pending_changes: Vec<String>,
    /// The generation of its spec: counted up by every change that needs a
    /// new QEMU. A host defines the guest with the generation it read, and
    /// reports it; pending changes are done once a running guest's
    /// generation has caught up (a guest that arrived live, or was defined
    /// a moment before the change, has not).
    pub spec_gen: u64,
}

/// A live migration in flight. The VM keeps running on `source` at its
/// placement's epoch; `target` holds, or is receiving, a paused copy at
/// `epoch`, reserved from `last_epoch` when the migration began. Only a
/// committed `FinishMigration` places the VM on the target at that epoch
/// (and only then does the target resume it); an abort leaves the
/// placement as it was, and the target's copy is then stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub source: NodeId,
    pub target: NodeId,
    pub epoch: u64,
    pub started_at_ms: u64,
    /// The most the memory stream may use, in MiB/s (0: no limit).
    pub bandwidth_mib: u64,
    /// The disks on local storage are copied to the target's local storage
    /// as the guest runs (QEMU's block mirror over NBD); the finish moves
    /// their volume records to the target, the abort trashes its copies.
    pub copy_storage: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleting {
    pub keep_disks: bool,
}

impl Vm {
    /// A new VM record, to run on `node` at epoch 1.
    pub fn placed(id: VmId, name: &str, spec: VmSpec, node: NodeId, created_at_ms: u64) -> Vm {
        let spec_disks = spec.disks.iter().map(|d| d.index + 1).max().unwrap_or(0);
        Vm {
            id,
            name: name.to_string(),
            spec,
            desired: Desired::Running,
            placement: Some(Placement { node, epoch: 1 }),
            created_at_ms,
            request_id: String::new(),
            reported: None,
            desired_gen: 0,
            restart_gen: 0,
            force_stop: false,
            deleting: None,
            last_epoch: 1,
            pending: None,
            moving_from: None,
            description: String::new(),
            snapshots: Vec::new(),
            next_disk: spec_disks,
            migration: None,
            pending_changes: Vec::new(),
            spec_gen: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    pub message: String,
    /// Who asked for the write that caused it (`alice (admin) from
    /// 10.0.0.5:41234`), or empty for the cluster's own doing.
    pub by: String,
}

/// A key of the persisted state; the store writes or deletes each touched key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Meta,
    Node(NodeId),
    Vm(VmId),
    Event(u64),
    Request(RequestId),
    Storage(u64),
    Image(u64),
}

/// Small cluster-wide values persisted under one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub cluster_id: Option<String>,
    pub settings: Settings,
    pub next_event_seq: u64,
    /// VMs created so far: seeds new VM ids (see [`ClusterState::new_vm_id`]).
    pub vms_created: u64,
    /// Storage domains and images created so far: seeds their ids.
    pub objects_created: u64,
    /// Volumes to delete (their VM, disk or image is gone); few, and
    /// emptied as hosts delete them.
    pub trash: Vec<Trashed>,
    /// The CA, tokens and certificates ([`crate::security`]).
    pub security: crate::security::Security,
    /// Logical networks by name; few, so kept with the other small values.
    pub networks: BTreeMap<String, crate::networks::Network>,
    /// MACs allocated so far: seeds the next ([`crate::networks::Mac::allocated`]).
    pub macs_allocated: u64,
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub meta: Meta,
    pub nodes: BTreeMap<NodeId, Node>,
    pub vms: BTreeMap<VmId, Vm>,
    pub events: VecDeque<Event>,
    /// Answers to recent writes, so retries apply once.
    pub requests: Requests,
    pub storage: BTreeMap<u64, StorageDomain>,
    pub images: BTreeMap<u64, Image>,
    /// Derived: VM name to id.
    #[serde(skip)]
    pub(crate) vm_names: BTreeMap<String, VmId>,
    /// Keys changed since the store last persisted.
    #[serde(skip)]
    pub(crate) dirty: BTreeSet<Key>,
    /// While an [`crate::Command::Audited`] write applies: its principal,
    /// recorded in the events it causes.
    #[serde(skip)]
    pub(crate) audit_by: Option<String>,
    /// Derived, for readers between applied batches (the agents, `node
    /// list`): where each VM is placed, and a counter per node bumped when
    /// one of its VMs changes. Refreshed by [`ClusterState::take_dirty`], so
    /// `apply` must not use it.
    #[serde(skip)]
    placed: PlacedIndex,
    /// Derived: what the placed VMs hold on each node, current inside
    /// `apply` too (every VM change goes through [`ClusterState::touch_vm`]).
    #[serde(skip)]
    pub(crate) held: Held,
}

impl PartialEq for ClusterState {
    fn eq(&self, other: &Self) -> bool {
        self.meta == other.meta
            && self.nodes == other.nodes
            && self.vms == other.vms
            && self.events == other.events
            && self.requests == other.requests
            && self.storage == other.storage
            && self.images == other.images
    }
}

impl ClusterState {
    /// Builds a state from persisted parts, rebuilding the derived indexes.
    pub fn from_parts(
        meta: Meta,
        nodes: Vec<Node>,
        vms: Vec<Vm>,
        events: Vec<Event>,
        answers: Vec<(RequestId, Answer)>,
        storage: Vec<StorageDomain>,
        images: Vec<Image>,
    ) -> Self {
        let mut s = ClusterState {
            meta,
            nodes: nodes.into_iter().map(|n| (n.id, n)).collect(),
            vms: vms.into_iter().map(|v| (v.id, v)).collect(),
            events: events.into(),
            requests: Requests::from_answers(answers),
            storage: storage.into_iter().map(|d| (d.id, d)).collect(),
            images: images.into_iter().map(|i| (i.id, i)).collect(),
            ..Default::default()
        };
        s.reindex();
        s
    }

    /// Rebuilds derived indexes (after decoding a snapshot).
    pub fn reindex(&mut self) {
        self.vm_names = self.vms.values().map(|v| (v.name.clone(), v.id)).collect();
        self.placed = PlacedIndex::rebuilt(&self.vms, &self.placed);
        self.held = Held::rebuilt(&self.vms);
        self.requests.reindex();
    }

    /// Carries the change counters of the state this one replaces, so a
    /// reader comparing them sees that everything may have changed.
    pub fn replaces(&mut self, old: &ClusterState) {
        self.placed.follow(&old.placed);
    }

    /// The VMs placed on `node` (as of the last applied batch).
    pub fn vms_on(&self, node: NodeId) -> impl Iterator<Item = &Vm> + '_ {
        self.placed.on(node).filter_map(|id| self.vms.get(id))
    }

    /// Changes whenever a VM placed on (or leaving) `node` changes: a host
    /// can skip work when it has not.
    pub fn changes_on(&self, node: NodeId) -> (u64, u64) {
        self.placed.changes_on(node)
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.meta.cluster_id.as_deref()
    }

    pub fn vm_by_name(&self, name: &str) -> Option<&Vm> {
        self.vm_names.get(name).and_then(|id| self.vms.get(id))
    }

    /// VM ids in name order.
    pub fn vm_names(&self) -> impl Iterator<Item = VmId> + '_ {
        self.vm_names.values().copied()
    }

    pub fn storage_by_name(&self, name: &str) -> Option<&StorageDomain> {
        self.storage.values().find(|d| d.name == name)
    }

    pub fn image_by_name(&self, name: &str) -> Option<&Image> {
        self.images.values().find(|i| i.name == name)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.values().find(|n| n.name == name)
    }

    /// vCPUs, memory and VM count placed on a node, by a scan of every VM
    /// (`apply` may not use the index; readers use [`ClusterState::allocated_indexed`]).
    pub fn allocated(&self, node: NodeId) -> (u32, u64, u32) {
        self.vms
            .values()
            .filter(|v| v.placement.map(|p| p.node) == Some(node))
            .fold((0u32, 0u64, 0u32), |(c, m, n), vm| {
                (c.saturating_add(vm.spec.vcpus), m.saturating_add(vm.spec.memory_mib), n + 1)
            })
    }

    /// Takes the keys changed since the last call, and brings the derived
    /// placement index up to date with them.
    pub fn take_dirty(&mut self) -> BTreeSet<Key> {
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            if let Key::Vm(id) = key {
                self.placed.refresh(*id, self.vms.get(id).and_then(|v| v.placement).map(|p| p.node));
            }
        }
        dirty
    }

    /// vCPUs, memory and VM count placed on a node, from the index (for
    /// readers; `apply` uses [`ClusterState::allocated`]).
    pub fn allocated_indexed(&self, node: NodeId) -> (u32, u64, u32) {
        self.vms_on(node).fold((0u32, 0u64, 0u32), |(c, m, n), vm| {
            (c.saturating_add(vm.spec.vcpus), m.saturating_add(vm.spec.memory_mib), n + 1)
        })
    }

    /// Marks VM `id` changed (created, changed or removed): for the store
    /// to persist, and for what it holds on its nodes. Every change to a
    /// VM ends with this.
    pub(crate) fn touch_vm(&mut self, id: VmId) {
        self.dirty.insert(Key::Vm(id));
        self.held.refold(id, self.vms.get(&id));
    }

    /// [`Held`] rebuilt from scratch equals the one kept up to date (the
    /// property tests check it after every command).
    #[cfg(test)]
    pub(crate) fn held_in_step(&self) -> bool {
        self.held == Held::rebuilt(&self.vms)
    }

    pub(crate) fn push_event(&mut self, at_ms: u64, kind: &str, message: String) {
        let seq = self.meta.next_event_seq + 1;
        self.meta.next_event_seq = seq;
        let by = self.audit_by.clone().unwrap_or_default();
        self.events.push_back(Event { seq, at_ms, kind: kind.to_string(), message, by });
        self.dirty.insert(Key::Event(seq));
        self.dirty.insert(Key::Meta);
        while self.events.len() > EVENT_CAPACITY {
            if let Some(old) = self.events.pop_front() {
                self.dirty.insert(Key::Event(old.seq));
            }
        }
    }
}

/// Formats a VM id as it appears to users and in domain names.
pub fn vm_id_hex(id: VmId) -> String {
    format!("{id:016x}")
}

/// Parses a VM id written by [`vm_id_hex`].
pub fn parse_vm_id(s: &str) -> Option<VmId> {
    u64::from_str_radix(s, 16).ok()
}

/// The libvirt domain name of a VM.
pub fn domain_name(id: VmId) -> String {
    format!("kvmesh-{}", vm_id_hex(id))
}
