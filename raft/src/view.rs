//! The scheduler's view of the replicated state, built in one place.
//!
//! The leader's placements (create, dry-run, explain, HA restarts,
//! evacuation, `cluster capacity`) and every replica's `apply` ask the same
//! question of the same data: does this VM fit on that node? Both build their
//! [`NodeView`]s here and answer with the scheduler's one rule
//! ([`kvmesh_scheduler::check`] and its capacity part, [`kvmesh_scheduler::fits`]),
//! so `apply` accepts a placement exactly when the scheduler could have made
//! it. The only inputs the two do not share come from heartbeats
//! ([`HostFacts`]): the leader marks the hosts it has not heard from as
//! unresponsive and the storage domains a host reports unusable as such;
//! `apply` knows only the replicated node states and which hosts a domain
//! is configured for.

use std::collections::{BTreeMap, BTreeSet};

use kvmesh_scheduler::{self as scheduler, ClusterFacts, NodeView, StorageState, VmRequest};

use crate::command::Refusal;
use crate::model::{ClusterState, NodeState, Vm, VmId, VmSpec};
use crate::types::NodeId;

/// What the leader knows of hosts beyond the replicated state, from their
/// heartbeats. The default (nothing known) is `apply`'s view: every host
/// responsive, every configured domain usable.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// `up` hosts not heard from lately: nothing new is placed there.
    pub unresponsive: BTreeSet<NodeId>,
    /// `up` hosts that heartbeat but report their libvirt or data disk not
    /// answering: nothing new is placed there either.
    pub impaired: BTreeSet<NodeId>,
    /// Each host's storage domains as it last reported them; `None`: not
    /// known (every configured domain counts as active).
    pub storage: Option<BTreeMap<NodeId, BTreeMap<String, StorageState>>>,
    /// Each host's free bytes per active domain, as it last reported them.
    pub storage_free: BTreeMap<NodeId, BTreeMap<String, u64>>,
    /// Each host's networks that are ready (`Ok`) or not (`Err(why)`), as
    /// it last reported them; `None`: not known (no network rule applies).
    pub networks: Option<BTreeMap<NodeId, NetworkReadiness>>,
    /// Hosts that reported they cannot boot UEFI guests, with why.
    pub uefi_missing: BTreeMap<NodeId, String>,
}

/// A host's networks: ready, or why not.
pub type NetworkReadiness = BTreeMap<String, Result<(), String>>;

impl HostFacts {
    pub fn unresponsive(unresponsive: BTreeSet<NodeId>) -> Self {
        HostFacts { unresponsive, ..Default::default() }
    }
}

/// The scheduler's request for a VM with this id, name and spec.
pub fn request(id: VmId, name: &str, spec: &VmSpec) -> VmRequest {
    VmRequest {
        id,
        name: name.to_string(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        priority: spec.priority,
        pin: spec.pin.clone(),
        required_labels: spec.required_labels.clone(),
        preferred_labels: spec.preferred_labels.clone(),
        anti_affinity: spec.anti_affinity.clone(),
        soft_anti_affinity: spec.soft_anti_affinity.clone(),
        affinity: spec.affinity.clone(),
        storage: Vec::new(),
        volumes_on: None,
        new_disk_bytes: new_disk_bytes(spec),
        networks: spec.nics.iter().map(|n| n.network.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
        uefi: spec.hardware.firmware == crate::hardware::Firmware::Uefi,
    }
}

/// What a spec's blank disks that are not created yet take, per domain.
fn new_disk_bytes(spec: &VmSpec) -> BTreeMap<String, u64> {
    let mut need: BTreeMap<String, u64> = BTreeMap::new();
    for disk in spec.disks.iter().filter(|d| d.volume.is_none() && d.image.is_none()) {
        *need.entry(disk.storage.clone()).or_default() += disk.size_bytes;
    }
    need
}

impl ClusterState {
    /// The scheduler's request for a VM, with the storage its disks and
    /// images need and the host its local volumes are on.
    pub fn vm_request_of(&self, id: VmId, name: &str, spec: &VmSpec) -> VmRequest {
        let mut req = request(id, name, spec);
        let mut storage: BTreeSet<String> = BTreeSet::new();
        let mut local_host: Option<NodeId> = None;
        for disk in &spec.disks {
            storage.insert(disk.storage.clone());
            if let Some(host) = disk.volume.and_then(|v| v.host) {
                local_host.get_or_insert(host);
            }
        }
        let images = spec.disks.iter().filter_map(|d| d.image.as_deref());
        let boot = spec.kernel.as_deref().into_iter().chain(spec.initrd.as_deref());
        for image in images.chain(boot).chain(spec.hardware.cdrom.as_deref()) {
            if let Some(img) = self.image_by_name(image) {
                storage.insert(img.storage.clone());
                if let Some(host) = img.host {
                    local_host.get_or_insert(host);
                }
            }
        }
        req.storage = storage.into_iter().collect();
        // A host that is gone keeps the name it had: nothing else can
        // take the VM, and the reason says where its data is.
        req.volumes_on = local_host.map(|h| self.nodes.get(&h).map_or_else(|| format!("node {h}"), |n| n.name.clone()));
        req
    }
}

/// The scheduler's request for an existing VM (without its storage; see
/// [`ClusterState::vm_request_of`]).
pub fn vm_request(vm: &Vm) -> VmRequest {
    request(vm.id, &vm.name, &vm.spec)
}

fn node_state(s: NodeState) -> scheduler::NodeState {
    match s {
        NodeState::Up => scheduler::NodeState::Up,
        NodeState::Down => scheduler::NodeState::Down,
        NodeState::Draining => scheduler::NodeState::Draining,
        NodeState::Maintenance => scheduler::NodeState::Maintenance,
    }
}

impl ClusterState {
    /// Every node as the scheduler sees it, with what is placed on it.
    /// `unresponsive` names the `up` nodes the leader has not heard from
    /// lately (nothing new is placed there); `except` leaves one VM out (to
    /// explain where an existing VM would go now).
    pub fn scheduler_view(&self, facts: &HostFacts, except: Option<VmId>) -> Vec<NodeView> {
        self.views(|_| true, facts, except).into_values().collect()
    }

    /// Every other host's evaluation as the target of a live migration of
    /// `vm` (best first; the one picked is `chosen`), copying its local
    /// disks or not.
    pub fn migration_targets(
        &self,
        facts: &HostFacts,
        vm: &crate::model::Vm,
        copy_storage: bool,
    ) -> Vec<scheduler::Evaluation> {
        let source = vm.placement.map(|p| p.node);
        let mut nodes = self.scheduler_view(facts, Some(vm.id));
        nodes.retain(|n| Some(n.id) != source);
        scheduler::explain(&nodes, &self.live_request(vm, copy_storage), &self.meta.settings.placement)
    }

    /// Whether `vm`'s volumes (or images) live on `node`'s local storage,
    /// so it can run nowhere else.
    pub fn pinned_to(&self, vm: &Vm, node: NodeId) -> bool {
        let name = self.nodes.get(&node).map(|n| n.name.as_str());
        name.is_some() && self.request_for(vm).volumes_on.as_deref() == name
    }

    /// The scheduler's request for an existing VM, storage included.
    pub fn request_for(&self, vm: &Vm) -> VmRequest {
        self.vm_request_of(vm.id, &vm.name, &vm.spec)
    }

    /// The id the next VM named `name` gets. It is drawn from the state, not
    /// at random, because the scheduler breaks ties with the VM id: a
    /// dry-run and the create that follows it on the same state get the
    /// same id, and so the same node. The count of VMs ever created makes a
    /// re-created name a new id (a host may still hold the old domain).
    pub fn new_vm_id(&self, name: &str) -> VmId {
        let cluster = self.meta.cluster_id.as_deref().unwrap_or("");
        (0u64..)
            .map(|attempt| {
                let mut h = Fnv::default();
                for part in [cluster.as_bytes(), name.as_bytes()] {
                    h.write(part);
                    h.write(&[0]);
                }
                h.write(&self.meta.vms_created.to_be_bytes());
                h.write(&attempt.to_be_bytes());
                // Ids stay below 2^63, as they always have.
                h.0 >> 1
            })
            .find(|id| *id != 0 && !self.vms.contains_key(id))
            .unwrap_or_default()
    }

    /// HA VMs by the node they are placed on (for `cluster capacity`).
    pub fn ha_requests(&self) -> BTreeMap<NodeId, Vec<VmRequest>> {
        let mut out: BTreeMap<NodeId, Vec<VmRequest>> = BTreeMap::new();
        for vm in self.vms.values().filter(|v| v.spec.ha) {
            if let Some(p) = vm.placement {
                out.entry(p.node).or_default().push(self.request_for(vm));
            }
        }
        out
    }

    /// Whether a placement of `vm` on `node` passes the scheduler's rules
    /// against the state as it is now: what `apply` re-checks, so that two
    /// placements decided on the same old state cannot both win.
    pub(crate) fn check_placement(&self, node: NodeId, vm: &VmRequest) -> Result<(), Refusal> {
        let mut views = self.views(|id| id == node, &HostFacts::default(), Some(vm.id));
        let Some(view) = views.remove(&node) else {
            return Err(Refusal::UnknownNode { id: node });
        };
        // Affinity needs one fact about the whole cluster: is any member of
        // the group placed anywhere (what `ClusterFacts::of` finds in a full
        // view).
        let affinity_placed = vm.affinity.as_deref().is_some_and(|group| {
            // Members on a removed host count as nowhere, as in the views.
            let on_a_member = |v: &&crate::model::Vm| v.placement.is_some_and(|p| self.nodes.contains_key(&p.node));
            self.vms.values().filter(|v| v.id != vm.id).filter(on_a_member).any(|v| {
                [&v.spec.anti_affinity, &v.spec.soft_anti_affinity, &v.spec.affinity]
                    .into_iter()
                    .any(|g| g.as_deref() == Some(group))
            })
        });
        scheduler::check(&view, vm, &self.meta.settings.placement, ClusterFacts::new(affinity_placed))
            .map_err(|reason| Refusal::NoLongerFits { node: view.name.clone(), reason })
    }

    /// Whether `vm` (with a changed size) still fits: on its host if it is
    /// placed, else on at least one host. Capacity only (the `fits` rule):
    /// a stopped VM on a host in maintenance may still be resized.
    pub(crate) fn check_size(&self, vm: &Vm) -> Result<(), Refusal> {
        // A VM on a removed host will run elsewhere: it must fit somewhere.
        let placed_on = vm.placement.map(|p| p.node).filter(|n| self.nodes.contains_key(n));
        let views = self.views(|id| placed_on.is_none_or(|n| n == id), &HostFacts::default(), Some(vm.id));
        let req = request(vm.id, &vm.name, &vm.spec);
        let s = &self.meta.settings.placement;
        let mut reasons = Vec::new();
        for view in views.values() {
            match scheduler::fits(view, &req, s) {
                Ok(_) => return Ok(()),
                Err(reason) => reasons.push((view.name.clone(), reason.to_string())),
            }
        }
        match (placed_on, reasons.len()) {
            (_, 0) => Ok(()),
            (Some(_), _) => {
                let (node, reason) = reasons.remove(0);
                Err(Refusal::TooBig {
                    vm: vm.name.clone(),
                    reason: format!("it no longer fits on its host {node}: {reason}"),
                })
            }
            (None, _) => Err(Refusal::TooBig {
                vm: vm.name.clone(),
                reason: format!(
                    "it would fit on no host: {}",
                    reasons.iter().map(|(n, r)| format!("{n}: {r}")).collect::<Vec<_>>().join("; ")
                ),
            }),
        }
    }

    /// Why `node` cannot take new capacity or labels: what is placed on it
    /// would no longer fit (after overcommit), or a VM placed on it requires
    /// a label that would go. `None` if the change is fine.
    pub(crate) fn check_node_change(
        &self,
        node: NodeId,
        cpus: u32,
        memory_mib: u64,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Option<String> {
        let mut view = self.views(|id| id == node, &HostFacts::default(), None).remove(&node)?;
        view.cpus = cpus;
        view.memory_mib = memory_mib;
        let s = &self.meta.settings.placement;
        let mut reasons = Vec::new();
        if view.allocated_vcpus > view.vcpu_capacity(s) {
            reasons.push(format!(
                "{} vCPUs are placed on it, {cpus} CPUs allow {} at the cluster's overcommit",
                view.allocated_vcpus,
                view.vcpu_capacity(s)
            ));
        }
        if view.allocated_memory_mib > view.memory_capacity(s) {
            reasons.push(format!(
                "{} MiB are placed on it, {memory_mib} MiB allow {} MiB at the cluster's overcommit",
                view.allocated_memory_mib,
                view.memory_capacity(s)
            ));
        }
        for vm in self.vms.values().filter(|v| v.placement.is_some_and(|p| p.node == node)) {
            for (key, want) in &vm.spec.required_labels {
                if labels.get(key) != Some(want) {
                    reasons.push(format!("VM {} requires the label {key}={want}", vm.name));
                }
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// The one builder of node views.
    fn views(
        &self,
        include: impl Fn(NodeId) -> bool,
        facts: &HostFacts,
        except: Option<VmId>,
    ) -> BTreeMap<NodeId, NodeView> {
        let mut views: BTreeMap<NodeId, NodeView> = self
            .nodes
            .values()
            .filter(|n| include(n.id))
            .map(|n| {
                let mut v = NodeView::new(n.id, &n.name, n.cpus, n.memory_mib);
                v.state = node_state(n.state);
                if v.state == scheduler::NodeState::Up && facts.unresponsive.contains(&n.id) {
                    v.state = scheduler::NodeState::Unresponsive;
                } else if v.state == scheduler::NodeState::Up && facts.impaired.contains(&n.id) {
                    v.state = scheduler::NodeState::Impaired;
                }
                v.labels = n.labels.clone();
                if let Some(free) = facts.storage_free.get(&n.id) {
                    v.storage_free = free.clone();
                }
                v.uefi_missing = facts.uefi_missing.get(&n.id).cloned();
                if let Some(all) = &facts.networks {
                    let here = all.get(&n.id);
                    for net in self.meta.networks.values() {
                        let why = match here.and_then(|h| h.get(&net.name)) {
                            Some(Ok(())) => continue,
                            Some(Err(why)) => why.clone(),
                            None => "not reported yet".to_string(),
                        };
                        v.networks_down
                            .insert(net.name.clone(), scheduler::NetworkDown { required: net.required, why });
                    }
                }
                let reported = facts.storage.as_ref().map(|all| all.get(&n.id));
                for domain in self.storage.values().filter(|d| d.on_node(&n.name)) {
                    let state = match reported {
                        None => StorageState::Active,
                        Some(None) => StorageState::Unusable("not reported yet".into()),
                        Some(Some(states)) => states
                            .get(&domain.name)
                            .cloned()
                            .unwrap_or_else(|| StorageState::Unusable("not reported yet".into())),
                    };
                    v.storage.insert(domain.name.clone(), state);
                }
                (n.id, v)
            })
            .collect();
        // What the placed VMs hold (a migration holds room on its target
        // until it ends), kept up to date as they change (`held.rs`):
        // building a view costs O(nodes), not O(VMs).
        for (id, view) in views.iter_mut() {
            if let Some(held) = self.held.on(*id) {
                view.allocated_vcpus = held.vcpus;
                view.allocated_memory_mib = held.memory_mib;
                view.groups = held.groups.clone();
            }
        }
        if let Some(left_out) = except.and_then(|id| self.held.of(id)) {
            for node in left_out.on.iter().flatten() {
                if let Some(view) = views.get_mut(node) {
                    let mut held = crate::held::NodeHeld {
                        vcpus: view.allocated_vcpus,
                        memory_mib: view.allocated_memory_mib,
                        groups: std::mem::take(&mut view.groups),
                    };
                    held.remove(left_out);
                    (view.allocated_vcpus, view.allocated_memory_mib, view.groups) =
                        (held.vcpus, held.memory_mib, held.groups);
                }
            }
        }
        views
    }
}

/// FNV-1a of `bytes` (see [`Fnv`]).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.0
}

/// FNV-1a, 64 bits: a hash that is the same on every build and platform.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
