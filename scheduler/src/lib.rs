//! Pure VM placement for kvmesh.
//!
//! The leader adapts the replicated state into these small input types, calls
//! [`place`], and commits the resulting [`Decision`] through Raft. Nothing here
//! does I/O, reads a clock or draws random numbers, so the same inputs always
//! give the same answer and every rejection comes back as data (a reason per
//! node) that the CLI can show.
//!
//! This first version filters on node state and declared capacity, then picks
//! the node with the most free memory (ties: most free vCPUs, then lowest id).

mod error;

pub use error::{Error, Result};

use serde::{Deserialize, Serialize};

/// What the scheduler needs to know about one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u64,
    pub name: String,
    /// Whether the node accepts new VMs (up, not draining or in maintenance).
    pub schedulable: bool,
    /// Human-readable state, used in rejection reasons ("down", "draining").
    pub state: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// vCPUs already placed on this node.
    pub allocated_vcpus: u32,
    /// Memory already placed on this node.
    pub allocated_memory_mib: u64,
}

impl NodeView {
    pub fn free_vcpus(&self) -> u32 {
        self.cpus.saturating_sub(self.allocated_vcpus)
    }

    pub fn free_memory_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.allocated_memory_mib)
    }
}

/// The resources a VM asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRequest {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Why one node cannot take the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    NotSchedulable { state: String },
    InsufficientMemory { need_mib: u64, free_mib: u64 },
    InsufficientCpu { need: u32, free: u32 },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NotSchedulable { state } => write!(f, "node is {state}"),
            Rejection::InsufficientMemory { need_mib, free_mib } => {
                write!(f, "insufficient memory (need {need_mib} MiB, free {free_mib} MiB)")
            }
            Rejection::InsufficientCpu { need, free } => {
                write!(f, "insufficient vCPUs (need {need}, free {free})")
            }
        }
    }
}

/// A node that was ruled out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRejection {
    pub node: String,
    pub reason: Rejection,
}

/// The outcome of placing one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Place {
        node_id: u64,
        node: String,
    },
    /// No node fits; one reason per node (empty when the cluster has no nodes).
    Unplaceable {
        rejections: Vec<NodeRejection>,
    },
}

/// Checks one node; `Ok` if the VM fits.
pub fn check(node: &NodeView, vm: &VmRequest) -> std::result::Result<(), Rejection> {
    if !node.schedulable {
        return Err(Rejection::NotSchedulable { state: node.state.clone() });
    }
    if vm.memory_mib > node.free_memory_mib() {
        return Err(Rejection::InsufficientMemory { need_mib: vm.memory_mib, free_mib: node.free_memory_mib() });
    }
    if vm.vcpus > node.free_vcpus() {
        return Err(Rejection::InsufficientCpu { need: vm.vcpus, free: node.free_vcpus() });
    }
    Ok(())
}

/// Places one VM: the feasible node with the most free memory wins.
pub fn place(nodes: &[NodeView], vm: &VmRequest) -> Decision {
    let mut rejections = Vec::new();
    let mut best: Option<&NodeView> = None;
    for node in nodes {
        match check(node, vm) {
            Err(reason) => rejections.push(NodeRejection { node: node.name.clone(), reason }),
            Ok(()) => {
                let better = match best {
                    None => true,
                    Some(b) => rank_key(node) > rank_key(b),
                };
                if better {
                    best = Some(node);
                }
            }
        }
    }
    match best {
        Some(n) => Decision::Place { node_id: n.id, node: n.name.clone() },
        None => Decision::Unplaceable { rejections },
    }
}

/// Bigger is better. The id is reversed so the lowest id wins a full tie,
/// independent of input order.
fn rank_key(n: &NodeView) -> (u64, u32, std::cmp::Reverse<u64>) {
    (n.free_memory_mib(), n.free_vcpus(), std::cmp::Reverse(n.id))
}

/// Formats an unplaceable decision as one line per node.
pub fn explain_rejections(rejections: &[NodeRejection]) -> String {
    if rejections.is_empty() {
        return "the cluster has no nodes".to_string();
    }
    rejections.iter().map(|r| format!("{}: {}", r.node, r.reason)).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests;
