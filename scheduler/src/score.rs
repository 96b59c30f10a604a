//! Ranking: how good a feasible node is for a VM, under the cluster policy.
//!
//! Scores are in about [0, 1] per component and are summed; the parts are
//! kept so `vm explain` can show why a node ranked where it did.

use serde::{Deserialize, Serialize};

use crate::filter::Capacity;
use crate::model::{NodeView, Policy, Settings, VmRequest};

/// Weight of all preferred labels matching (spread evenly over them).
pub const PREFERRED_LABEL_WEIGHT: f64 = 0.5;
/// Penalty per member of the VM's soft anti-affinity group on the node.
pub const SOFT_ANTI_AFFINITY_PENALTY: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The policy's part.
    pub policy: f64,
    /// Preferred labels.
    pub labels: f64,
    /// Soft anti-affinity (zero or negative).
    pub spread_group: f64,
}

impl Score {
    pub fn total(&self) -> f64 {
        self.policy + self.labels + self.spread_group
    }
}

/// Used fraction of CPU and memory on `node` once `vm` is on it.
fn used_after(node: &NodeView, vm: &VmRequest, cap: Capacity) -> (f64, f64) {
    let cpu_cap = cap.vcpus.max(1) as f64;
    let mem_cap = cap.memory_mib.max(1) as f64;
    let cpu = (node.allocated_vcpus + vm.vcpus as u64) as f64 / cpu_cap;
    let mem = (node.allocated_memory_mib + vm.memory_mib) as f64 / mem_cap;
    (cpu.min(1.0), mem.min(1.0))
}

pub fn score(node: &NodeView, vm: &VmRequest, s: &Settings) -> Score {
    let cap = Capacity { vcpus: node.vcpu_capacity(s), memory_mib: node.memory_capacity(s) };
    score_with(node, vm, s, cap)
}

/// [`score`] with the node's capacity already computed.
pub fn score_with(node: &NodeView, vm: &VmRequest, s: &Settings, cap: Capacity) -> Score {
    let (cpu, mem) = used_after(node, vm, cap);
    let policy = match s.policy {
        // Memory counts double: it cannot be overcommitted the way CPU can.
        Policy::Spread => 1.0 - (cpu + 2.0 * mem) / 3.0,
        Policy::Pack => (cpu + 2.0 * mem) / 3.0,
        // Even use first; among equally even nodes, the emptier one.
        Policy::Balanced => 1.0 - (cpu - mem).abs() + 0.01 * (1.0 - (cpu + mem) / 2.0),
    };
    let labels = if vm.preferred_labels.is_empty() {
        0.0
    } else {
        let matching = vm.preferred_labels.iter().filter(|(k, v)| node.labels.get(*k) == Some(*v)).count();
        PREFERRED_LABEL_WEIGHT * matching as f64 / vm.preferred_labels.len() as f64
    };
    let spread_group = match &vm.soft_anti_affinity {
        Some(g) => -SOFT_ANTI_AFFINITY_PENALTY * node.group_count(g) as f64,
        None => 0.0,
    };
    Score { policy, labels, spread_group }
}

/// Deterministic tie-break for (VM, node): splitmix64 of both ids, so equal
/// scores do not always favour the same node, yet the same VM always picks
/// the same one (Nomad seeds its shuffle from the evaluation id likewise).
pub fn tie_break(vm_id: u64, node_id: u64) -> u64 {
    let mut z = vm_id ^ node_id.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
