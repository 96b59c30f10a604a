//! Where each VM is placed, derived from the replicated state for readers.
//!
//! Every host's agent asks, on each applied entry, "did anything about my
//! VMs change?" Scanning all VMs to answer costs O(VMs) per entry on every
//! node (4× the write latency at 10,000 VMs, see BENCHMARKS.md). The index
//! answers in O(1) and lists a node's VMs in O(its VMs). It is refreshed from
//! the keys each applied batch touched (`ClusterState::take_dirty`), so it
//! is current between batches, never inside `apply`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{Vm, VmId};
use crate::types::NodeId;

#[derive(Clone, Debug, Default)]
pub(crate) struct PlacedIndex {
    by_node: HashMap<NodeId, BTreeSet<VmId>>,
    node_of: HashMap<VmId, NodeId>,
    /// Bumped for a node whenever a VM placed on it, or leaving it, changes.
    changes: HashMap<NodeId, u64>,
    /// Bumped when the whole state is replaced (a snapshot install), so
    /// counters that restart from zero still read as changed.
    generation: u64,
}

impl PlacedIndex {
    /// Built from scratch, reading as changed against `before`.
    pub(crate) fn rebuilt(vms: &BTreeMap<VmId, Vm>, before: &PlacedIndex) -> Self {
        let mut index = PlacedIndex { generation: before.generation + 1, ..Default::default() };
        for vm in vms.values() {
            index.refresh(vm.id, vm.placement.map(|p| p.node));
        }
        index
    }

    /// Takes over from the index of the state this one replaces.
    pub(crate) fn follow(&mut self, old: &PlacedIndex) {
        self.generation = self.generation.max(old.generation + 1);
    }

    /// Records that VM `id` changed and is now on `node` (or nowhere).
    pub(crate) fn refresh(&mut self, id: VmId, node: Option<NodeId>) {
        let old = self.node_of.get(&id).copied();
        for n in [old, node].into_iter().flatten() {
            *self.changes.entry(n).or_default() += 1;
        }
        if let Some(old) = old.filter(|o| Some(*o) != node) {
            if let Some(set) = self.by_node.get_mut(&old) {
                set.remove(&id);
            }
        }
        match node {
            Some(n) => {
                self.by_node.entry(n).or_default().insert(id);
                self.node_of.insert(id, n);
            }
            None => {
                self.node_of.remove(&id);
            }
        }
    }

    pub(crate) fn on(&self, node: NodeId) -> impl Iterator<Item = &VmId> + '_ {
        self.by_node.get(&node).into_iter().flatten()
    }

    pub(crate) fn changes_on(&self, node: NodeId) -> (u64, u64) {
        (self.generation, self.changes.get(&node).copied().unwrap_or(0))
    }
}
