//! The leader's adapter between the replicated state and the pure scheduler:
//! builds the scheduler's node and VM views, and turns its decisions and
//! explanations into wire types.

use std::collections::BTreeMap;

use kvmesh_proto as pb;
use kvmesh_raft::model::{self, ClusterState, PlacementSettings, VmId, VmSpec};
use kvmesh_scheduler::{self as scheduler, NodeView, Outcome, VmRequest};

pub fn settings(p: &PlacementSettings) -> scheduler::Settings {
    scheduler::Settings {
        policy: match p.policy {
            model::Policy::Spread => scheduler::Policy::Spread,
            model::Policy::Pack => scheduler::Policy::Pack,
            model::Policy::Balanced => scheduler::Policy::Balanced,
        },
        cpu_overcommit: p.cpu_overcommit_milli as f64 / 1000.0,
        memory_overcommit: p.memory_overcommit_milli as f64 / 1000.0,
    }
}

pub fn policy_pb(p: &PlacementSettings) -> pb::PlacementPolicy {
    pb::PlacementPolicy {
        policy: p.policy.as_str().into(),
        cpu_overcommit: p.cpu_overcommit_milli as f64 / 1000.0,
        memory_overcommit: p.memory_overcommit_milli as f64 / 1000.0,
    }
}

fn node_state(s: model::NodeState) -> scheduler::NodeState {
    match s {
        model::NodeState::Up => scheduler::NodeState::Up,
        model::NodeState::Down => scheduler::NodeState::Down,
        model::NodeState::Draining => scheduler::NodeState::Draining,
        model::NodeState::Maintenance => scheduler::NodeState::Maintenance,
    }
}

/// The scheduler's VM view of a spec.
pub fn vm_request(id: VmId, name: &str, spec: &VmSpec) -> VmRequest {
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

/// Every node as the scheduler sees it, with what is placed on it. `except`
/// leaves one VM out (to explain where an existing VM would go now).
pub fn node_views(state: &ClusterState, except: Option<VmId>) -> Vec<NodeView> {
    node_views_live(state, except, &Default::default())
}

/// [`node_views`], with the nodes the leader has not heard from lately
/// marked unresponsive, so nothing new lands on a host that just died.
pub fn node_views_live(
    state: &ClusterState,
    except: Option<VmId>,
    unresponsive: &std::collections::BTreeSet<u64>,
) -> Vec<NodeView> {
    let mut views: BTreeMap<u64, NodeView> = state
        .nodes
        .values()
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
    for vm in state.vms.values().filter(|v| Some(v.id) != except) {
        let Some(p) = vm.placement else { continue };
        if let Some(view) = views.get_mut(&p.node) {
            view.reserve(&vm_request(vm.id, &vm.name, &vm.spec));
        }
    }
    views.into_values().collect()
}

/// HA VMs by the node they are placed on.
pub fn ha_vms(state: &ClusterState) -> BTreeMap<u64, Vec<VmRequest>> {
    let mut out: BTreeMap<u64, Vec<VmRequest>> = BTreeMap::new();
    for vm in state.vms.values().filter(|v| v.spec.ha) {
        if let Some(p) = vm.placement {
            out.entry(p.node).or_default().push(vm_request(vm.id, &vm.name, &vm.spec));
        }
    }
    out
}

pub fn explanation_pb(vm: &str, s: &scheduler::Settings, evals: &[scheduler::Evaluation]) -> pb::Explanation {
    let nodes = evals
        .iter()
        .map(|e| match &e.outcome {
            Outcome::Rejected(r) => pb::NodeEvaluation {
                node: e.node.clone(),
                feasible: false,
                reason: r.to_string(),
                ..Default::default()
            },
            Outcome::Feasible(score) => pb::NodeEvaluation {
                node: e.node.clone(),
                feasible: true,
                reason: String::new(),
                score: score.total(),
                policy_score: score.policy,
                label_score: score.labels,
                group_score: score.spread_group,
                chosen: e.chosen,
            },
        })
        .collect();
    pb::Explanation {
        vm: vm.to_string(),
        policy: s.policy.as_str().into(),
        chosen: evals.iter().find(|e| e.chosen).map(|e| e.node.clone()),
        nodes,
    }
}

pub fn capacity_pb(r: &scheduler::Reservation, policy: &str) -> pb::CapacityReport {
    pb::CapacityReport {
        n_plus_1: r.n_plus_1,
        worst: r.worst.clone(),
        policy: policy.to_string(),
        hosts: r
            .hosts
            .iter()
            .map(|h| pb::HostCapacity {
                node: h.node.clone(),
                ha_vms: h.ha_vms as u32,
                ha_vcpus: h.ha_vcpus,
                ha_memory_mib: h.ha_memory_mib,
                unplaceable: h.unplaceable.clone(),
                short_vcpus: h.short_vcpus,
                short_memory_mib: h.short_memory_mib,
            })
            .collect(),
    }
}
