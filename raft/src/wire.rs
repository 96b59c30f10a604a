//! Conversions from the replicated model to `kvmesh.v1` wire types.
//!
//! They live here rather than in the proto crate because the proto crate
//! depends on nothing internal, and the model is defined in this one.

use kvmesh_proto as pb;

use crate::model::{vm_id_hex, ClusterState, Event, Vm};

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
    }
}

pub fn event(e: &Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        at_ms: e.at_ms,
        kind: e.kind.clone(),
        message: e.message.clone(),
    }
}
