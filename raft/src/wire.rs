//! Conversions from the replicated model to `kvmesh.v1` wire types.
//!
//! They live here rather than in the proto crate because the proto crate
//! depends on nothing internal, and the model is defined in this one.

use kvmesh_proto as pb;

use crate::model::{domain_name, vm_id_hex, ClusterState, Event, Vm};

pub fn vm(state: &ClusterState, vm: &Vm) -> pb::Vm {
    let node = vm.placement.and_then(|p| state.nodes.get(&p.node));
    pb::Vm {
        id: vm_id_hex(vm.id),
        name: vm.name.clone(),
        vcpus: vm.spec.vcpus,
        memory_mib: vm.spec.memory_mib,
        ha: vm.spec.ha,
        desired: vm.desired.as_str().to_string(),
        node: node.map(|n| n.name.clone()),
        node_id: vm.placement.map(|p| p.node),
        epoch: vm.placement.map(|p| p.epoch).unwrap_or(0),
        created_at_ms: vm.created_at_ms,
        state: state.vm_state(vm).to_string(),
        since_ms: vm.reported.as_ref().map(|r| r.since_ms).unwrap_or(0),
        last_error: vm.reported.as_ref().and_then(|r| r.last_error.clone()),
        disk_bytes: vm.spec.disk_bytes.unwrap_or(0),
        image: vm.spec.image.clone(),
        kernel: vm.spec.kernel.clone(),
        network: vm.spec.network.clone(),
        bridge: vm.spec.bridge.clone(),
        domain: domain_name(vm.id),
        priority: vm.spec.priority,
        pin: vm.spec.pin.clone(),
        required_labels: vm.spec.required_labels.clone().into_iter().collect(),
        preferred_labels: vm.spec.preferred_labels.clone().into_iter().collect(),
        anti_affinity: vm.spec.anti_affinity.clone(),
        soft_anti_affinity: vm.spec.soft_anti_affinity.clone(),
        affinity: vm.spec.affinity.clone(),
        pending: vm.pending.clone(),
        observed: Vec::new(),
        description: vm.description.clone(),
    }
}

pub fn event(e: &Event) -> pb::Event {
    pb::Event { seq: e.seq, at_ms: e.at_ms, kind: e.kind.clone(), message: e.message.clone() }
}
