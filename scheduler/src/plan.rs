//! Placing many VMs at once: HA restarts after a host dies, and evacuating a
//! host that is draining. Capacity is reserved as each VM is placed, so no
//! node is counted twice, and VMs go in priority order.

use serde::{Deserialize, Serialize};

use crate::model::{NodeState, NodeView, Settings, VmRequest};
use crate::place::{place, Decision, NodeRejection};

/// A VM that could not be placed, with one reason per node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub vm_id: u64,
    pub vm: String,
    pub rejections: Vec<NodeRejection>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// (vm id, node id), in the order they were placed.
    pub placements: Vec<(u64, u64)>,
    pub unplaced: Vec<Unplaced>,
}

/// The order VMs are planned in: priority, highest first; within a
/// priority the biggest first (first-fit decreasing packs better), then by
/// id so the order never depends on the input's.
fn ordered(vms: &[VmRequest]) -> Vec<&VmRequest> {
    let mut order: Vec<&VmRequest> = vms.iter().collect();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(b.memory_mib.cmp(&a.memory_mib))
            .then(b.vcpus.cmp(&a.vcpus))
            .then(a.id.cmp(&b.id))
    });
    order
}

/// Places `vms` onto `nodes`, reserving as it goes.
pub fn plan_restarts(vms: &[VmRequest], nodes: &[NodeView], s: &Settings) -> Plan {
    let mut nodes = nodes.to_vec();
    let mut plan = Plan::default();
    for vm in ordered(vms) {
        match place(&nodes, vm, s) {
            Decision::Place { node_id, .. } => {
                if let Some(n) = nodes.iter_mut().find(|n| n.id == node_id) {
                    n.reserve(vm);
                }
                plan.placements.push((vm.id, node_id));
            }
            Decision::Unplaceable { rejections } => {
                plan.unplaced.push(Unplaced { vm_id: vm.id, vm: vm.name.clone(), rejections })
            }
        }
    }
    plan
}

/// Plans moving every VM off `node_id`: that node takes no new VMs and its
/// VMs' resources are released before planning.
pub fn plan_evacuation(node_id: u64, vms_on_node: &[VmRequest], nodes: &[NodeView], s: &Settings) -> Plan {
    let mut nodes = nodes.to_vec();
    if let Some(n) = nodes.iter_mut().find(|n| n.id == node_id) {
        n.state = NodeState::Draining;
        for vm in vms_on_node {
            n.allocated_vcpus = n.allocated_vcpus.saturating_sub(vm.vcpus as u64);
            n.allocated_memory_mib = n.allocated_memory_mib.saturating_sub(vm.memory_mib);
            for g in vm.groups() {
                if let Some(c) = n.groups.get_mut(g) {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }
    plan_restarts(vms_on_node, &nodes, s)
}
