//! The scheduler's view of the replicated state, built in one place.
//!
//! The leader's placements (create, dry-run, explain, HA restarts,
//! evacuation, `cluster capacity`) and every replica's `apply` ask the same
//! question of the same data: does this VM fit on that node? Both build their
//! [`NodeView`]s here and answer with the scheduler's one rule
//! ([`kvmesh_scheduler::check`] and its capacity part, [`kvmesh_scheduler::fits`]),
//! so `apply` accepts a placement exactly when the scheduler could have made
//! it. The only input the two do not share is liveness: the leader marks the
//! hosts it has not heard from as unresponsive; `apply` knows only the
//! replicated node states.

use std::collections::{BTreeMap, BTreeSet};

use kvmesh_scheduler::{self as scheduler, ClusterFacts, NodeView, VmRequest};

use crate::command::Refusal;
use crate::model::{ClusterState, NodeState, Vm, VmId, VmSpec};
use crate::types::NodeId;

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
    }
}

/// The scheduler's request for an existing VM.
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
    pub fn scheduler_view(&self, unresponsive: &BTreeSet<NodeId>, except: Option<VmId>) -> Vec<NodeView> {
        self.views(|_| true, unresponsive, except).into_values().collect()
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
                out.entry(p.node).or_default().push(vm_request(vm));
            }
        }
        out
    }

    /// Whether a placement of `vm` on `node` passes the scheduler's rules
    /// against the state as it is now: what `apply` re-checks, so that two
    /// placements decided on the same old state cannot both win.
    pub(crate) fn check_placement(&self, node: NodeId, vm: &VmRequest) -> Result<(), Refusal> {
        let mut views = self.views(|id| id == node, &BTreeSet::new(), Some(vm.id));
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
        let mut view = self.views(|id| id == node, &BTreeSet::new(), None).remove(&node)?;
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
        unresponsive: &BTreeSet<NodeId>,
        except: Option<VmId>,
    ) -> BTreeMap<NodeId, NodeView> {
        let mut views: BTreeMap<NodeId, NodeView> = self
            .nodes
            .values()
            .filter(|n| include(n.id))
            .map(|n| {
                let mut v = NodeView::new(n.id, &n.name, n.cpus, n.memory_mib);
                v.state = node_state(n.state);
                if v.state == scheduler::NodeState::Up && unresponsive.contains(&n.id) {
                    v.state = scheduler::NodeState::Unresponsive;
                }
                v.labels = n.labels.clone();
                (n.id, v)
            })
            .collect();
        for vm in self.vms.values().filter(|v| Some(v.id) != except) {
            let Some(p) = vm.placement else { continue };
            if let Some(view) = views.get_mut(&p.node) {
                view.reserve(&vm_request(vm));
            }
        }
        views
    }
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
