//! What the VMs hold: on each node (vCPUs, memory, group members, for
//! placed VMs) and in the cluster (their NICs' MAC addresses), derived from
//! the replicated state and kept in step with it as it changes.
//!
//! The scheduler's view of a node is its capacity less what its VMs hold.
//! Summing every VM for every view made each placement O(VMs), in `apply`
//! (`check_placement`) on every replica and in the leader's planning: a
//! run of creates slowed as the state grew (700 creates/s at 64 clients,
//! most of the time in that loop). Here each VM's footprint is folded in
//! when it changes: every change to a VM marks it for persistence
//! (`ClusterState::touch_vm`), and that same mark refolds it, inside
//! `apply`, so two placements in one batch see each other. The footprint
//! is exactly what the old loop reserved: the VM's size and groups on its
//! placement's node and, while it migrates, on the target too. The MACs in
//! use were likewise collected from every VM for each new NIC.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Vm, VmId};
use crate::networks::Mac;
use crate::types::NodeId;

/// What one placed VM holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Footprint {
    /// Its placement's node, and a migration's target.
    pub(crate) on: [Option<NodeId>; 2],
    pub(crate) vcpus: u64,
    pub(crate) memory_mib: u64,
    /// Its groups, each once.
    pub(crate) groups: Vec<String>,
}

impl Footprint {
    fn of(vm: &Vm) -> Option<Footprint> {
        let placed = vm.placement?;
        let spec = &vm.spec;
        let mut groups: Vec<String> = Vec::new();
        for g in [&spec.anti_affinity, &spec.soft_anti_affinity, &spec.affinity].into_iter().flatten() {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        Some(Footprint {
            on: [Some(placed.node), vm.migration.map(|m| m.target)],
            vcpus: spec.vcpus as u64,
            memory_mib: spec.memory_mib,
            groups,
        })
    }
}

/// What a node's VMs hold, summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeHeld {
    pub(crate) vcpus: u64,
    pub(crate) memory_mib: u64,
    /// Members per group; no zero counts.
    pub(crate) groups: BTreeMap<String, u32>,
}

impl NodeHeld {
    fn add(&mut self, f: &Footprint) {
        self.vcpus += f.vcpus;
        self.memory_mib += f.memory_mib;
        for g in &f.groups {
            *self.groups.entry(g.clone()).or_insert(0) += 1;
        }
    }

    /// Takes `f` away (it was added before).
    pub(crate) fn remove(&mut self, f: &Footprint) {
        self.vcpus = self.vcpus.saturating_sub(f.vcpus);
        self.memory_mib = self.memory_mib.saturating_sub(f.memory_mib);
        for g in &f.groups {
            if let Some(n) = self.groups.get_mut(g) {
                *n -= 1;
                if *n == 0 {
                    self.groups.remove(g);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    by_vm: HashMap<VmId, Footprint>,
    by_node: HashMap<NodeId, NodeHeld>,
    /// Each VM's NICs' MACs, and how many NICs use each MAC.
    macs_of: HashMap<VmId, Vec<Mac>>,
    macs: HashMap<Mac, u32>,
}

impl Held {
    pub(crate) fn rebuilt(vms: &BTreeMap<VmId, Vm>) -> Held {
        let mut held = Held::default();
        for vm in vms.values() {
            held.refold(vm.id, Some(vm));
        }
        held
    }

    /// Brings VM `id` up to date: `vm` is what it is now (`None`: gone).
    pub(crate) fn refold(&mut self, id: VmId, vm: Option<&Vm>) {
        self.refold_macs(id, vm);
        self.refold_footprint(id, vm);
    }

    fn refold_macs(&mut self, id: VmId, vm: Option<&Vm>) {
        let now: Vec<Mac> = vm.map(|v| v.spec.nics.iter().map(|n| n.mac).collect()).unwrap_or_default();
        if self.macs_of.get(&id).map_or(now.is_empty(), |before| *before == now) {
            return;
        }
        for mac in self.macs_of.remove(&id).unwrap_or_default() {
            if let Some(n) = self.macs.get_mut(&mac) {
                *n -= 1;
                if *n == 0 {
                    self.macs.remove(&mac);
                }
            }
        }
        for mac in &now {
            *self.macs.entry(*mac).or_insert(0) += 1;
        }
        if !now.is_empty() {
            self.macs_of.insert(id, now);
        }
    }

    /// Whether a VM's NIC uses `mac`.
    pub(crate) fn mac_used(&self, mac: &Mac) -> bool {
        self.macs.contains_key(mac)
    }

    fn refold_footprint(&mut self, id: VmId, vm: Option<&Vm>) {
        let now = vm.and_then(Footprint::of);
        if self.by_vm.get(&id) == now.as_ref() {
            return;
        }
        if let Some(old) = self.by_vm.remove(&id) {
            for node in old.on.iter().flatten() {
                if let Some(h) = self.by_node.get_mut(node) {
                    h.remove(&old);
                    if h.vcpus == 0 && h.memory_mib == 0 && h.groups.is_empty() {
                        self.by_node.remove(node);
                    }
                }
            }
        }
        if let Some(new) = now {
            for node in new.on.iter().flatten() {
                self.by_node.entry(*node).or_default().add(&new);
            }
            self.by_vm.insert(id, new);
        }
    }

    pub(crate) fn on(&self, node: NodeId) -> Option<&NodeHeld> {
        self.by_node.get(&node)
    }

    pub(crate) fn of(&self, vm: VmId) -> Option<&Footprint> {
        self.by_vm.get(&vm)
    }
}
