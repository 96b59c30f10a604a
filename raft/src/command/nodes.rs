//! Commands about hosts: join, removal, liveness and maintenance states.

use std::collections::{BTreeMap, BTreeSet};

use super::{Refusal, Response};
use crate::model::{ClusterState, Desired, Key, Node, NodeState, VmId};
use crate::types::NodeId;

/// What `UpdateNode` changes; `None` and empty collections keep the value.
pub(super) struct NodeChange<'a> {
    pub address: &'a Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub set_labels: &'a BTreeMap<String, String>,
    pub unset_labels: &'a BTreeSet<String>,
}

impl ClusterState {
    pub(super) fn add_node(&mut self, node: &Node, at_ms: u64) -> Response {
        for other in self.nodes.values() {
            if other.id == node.id {
                continue;
            }
            if other.name == node.name {
                return Response::Refused(Refusal::NodeNameTaken { name: node.name.clone() });
            }
            if other.address == node.address {
                return Response::Refused(Refusal::NodeAddressTaken {
                    address: node.address.clone(),
                    by: other.name.clone(),
                });
            }
        }
        let rejoin = self.nodes.contains_key(&node.id);
        // A registration again (a retried join) must not strand what is
        // placed on the node: less capacity or fewer labels go through the
        // same check as `node set`.
        if rejoin {
            if let Some(reason) = self.check_node_change(node.id, node.cpus, node.memory_mib, &node.labels) {
                return Response::Refused(Refusal::NodeChangeRefused { name: node.name.clone(), reason });
            }
        }
        self.put_node(node.clone());
        let verb = if rejoin { "re-registered" } else { "joined" };
        self.push_event(at_ms, "node", format!("node {} ({}) {verb}", node.name, node.address));
        Response::Done
    }

    pub(super) fn remove_node(&mut self, id: NodeId, force: bool, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get(&id).cloned() else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        let placed = self.placed_on(id);
        if !placed.is_empty() && !force {
            return Response::Refused(Refusal::NodeHasVms { name: node.name, vms: placed.len() as u32 });
        }
        // Its VMs keep their placement on the removed id, as on a down host:
        // the host may still run them (removed while partitioned), so
        // nothing else may start them yet. The leader releases the HA ones
        // once the host has been silent for down_after (it has fenced by
        // then); the others wait for `vm recover`. Deletions are done.
        self.abort_migrations_of(id, at_ms);
        let mut gone = 0;
        for vm_id in &placed {
            if let Some(deleting) = self.vms.get(vm_id).and_then(|v| v.deleting) {
                self.remove_vm(*vm_id, deleting.keep_disks);
                gone += 1;
            }
        }
        self.nodes.remove(&id);
        self.dirty.insert(Key::Node(id));
        // Its certificates stop working at once (README, "Security").
        self.revoke_node_certs(&node.name, at_ms);
        // Volumes only it could delete leave with it.
        let before = self.meta.trash.len();
        self.meta.trash.retain(|t| t.host != Some(id));
        if self.meta.trash.len() != before {
            self.dirty.insert(Key::Meta);
        }
        // Nothing will retry a removed node's writes.
        for request in self.requests.forget_origin(id) {
            self.dirty.insert(Key::Request(request));
        }
        let left = placed.len() - gone;
        let extra = if left == 0 {
            String::new()
        } else {
            format!("; its {left} VM(s) stay placed on it: HA ones restart elsewhere once it has been silent for down_after, others wait for `kvmesh vm recover`")
        };
        self.push_event(at_ms, "node", format!("node {} removed{extra}", node.name));
        Response::Done
    }

    /// A host is down (or was removed and has gone silent): HA VMs that
    /// should run are released for placement elsewhere, deletions finish,
    /// the rest wait for the host or for `vm recover`.
    pub(super) fn node_down(&mut self, id: NodeId, at_ms: u64) -> Response {
        let orphans = self.placed_on(id);
        let name = match self.nodes.get_mut(&id) {
            Some(node) if node.state == NodeState::Down => return Response::Done,
            Some(node) => {
                // A drain or maintenance outlives the outage (see `node_up`).
                node.resume_as = (node.state != NodeState::Up).then_some(node.state);
                node.state = NodeState::Down;
                node.name.clone()
            }
            None if orphans.is_empty() => return Response::Refused(Refusal::UnknownNode { id }),
            None => format!("{id} (removed)"),
        };
        self.dirty.insert(Key::Node(id));
        self.abort_migrations_of(id, at_ms);
        let (mut restarted, mut stay, mut gone) = (0, 0, 0);
        for vm_id in orphans {
            let Some(vm) = self.vms.get(&vm_id) else { continue };
            if let Some(deleting) = vm.deleting {
                // Nothing will run it again; the host cleans up if it returns.
                self.remove_vm(vm_id, deleting.keep_disks);
                gone += 1;
            } else if vm.spec.ha && vm.desired == Desired::Running {
                self.unplace(vm_id, format!("host {name} is down; restarting elsewhere"));
                restarted += 1;
            } else {
                stay += 1;
            }
        }
        self.push_event(
            at_ms,
            "node-down",
            format!("node {name} is down: {restarted} HA VM(s) to restart elsewhere, {stay} other VM(s) wait for it, {gone} deletion(s) finished"),
        );
        Response::Done
    }

    pub(super) fn node_up(&mut self, id: NodeId, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        if node.state != NodeState::Down {
            return Response::Done;
        }
        // Back in the state it was in before the outage: a draining host
        // goes on draining, one in maintenance stays there.
        node.state = node.resume_as.take().unwrap_or(NodeState::Up);
        let (name, state) = (node.name.clone(), node.state);
        self.dirty.insert(Key::Node(id));
        let how =
            if state == NodeState::Up { "up again".to_string() } else { format!("back, still {}", state.as_str()) };
        self.push_event(at_ms, "node", format!("node {name} is {how}"));
        if state == NodeState::Draining {
            // Also a drain asked for while it was down: what stayed placed
            // on it (non-HA VMs) moves now.
            let (moved, how) = self.begin_drain(id, &name);
            self.push_event(at_ms, "node", format!("node {name} is draining: {moved} VM(s) to move{how}"));
        }
        Response::Done
    }

    pub(super) fn set_node_state(&mut self, id: NodeId, state: NodeState, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        let before = node.state;
        if before == NodeState::Down {
            // Applied when it returns (see `node_up`): a drain or
            // maintenance asked for while it is down is not lost, and an
            // `activate` cancels one.
            node.resume_as = (state != NodeState::Up).then_some(state);
            let name = node.name.clone();
            self.dirty.insert(Key::Node(id));
            self.push_event(
                at_ms,
                "node",
                format!("node {name} is down; it will be {} when it returns", state.as_str()),
            );
            return Response::Done;
        }
        let name = node.name.clone();
        if state == NodeState::Draining {
            let running: Vec<&str> = self
                .vms
                .values()
                .filter(|v| self.pinned_to(v, id) && v.desired == crate::model::Desired::Running)
                .map(|v| v.name.as_str())
                .collect();
            if !running.is_empty() {
                return Response::Refused(Refusal::LocalDisksRunning { node: name, vms: running.join(", ") });
            }
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        node.resume_as = None;
        if state == NodeState::Draining {
            // Again while draining: whatever is still placed on it moves too.
            node.state = state;
            self.dirty.insert(Key::Node(id));
            let (moved, how) = self.begin_drain(id, &name);
            if before != state || moved > 0 {
                self.push_event(at_ms, "node", format!("node {name} is draining: {moved} VM(s) to move{how}"));
            }
            return Response::Done;
        }
        if before == state {
            return Response::Done;
        }
        node.state = state;
        self.dirty.insert(Key::Node(id));
        if state == NodeState::Maintenance {
            // The drain is over: a stopped VM that moved off has nowhere to
            // be until it starts, and its old host has let it go.
            let mut released = Vec::new();
            for vm in self.vms.values_mut() {
                if vm.moving_from == Some(id) && vm.placement.is_none() && vm.desired != crate::model::Desired::Running
                {
                    vm.moving_from = None;
                    vm.pending = None;
                    released.push(vm.id);
                }
            }
            for vm in released {
                self.touch_vm(vm);
            }
        }
        self.push_event(at_ms, "node", format!("node {name}: {} -> {}", before.as_str(), state.as_str()));
        Response::Done
    }

    /// `node drain`: records how (live or cold), then drains.
    pub(super) fn drain(&mut self, id: NodeId, cold: bool, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        if node.cold_drain != cold {
            node.cold_drain = cold;
            self.dirty.insert(Key::Node(id));
        }
        self.set_node_state(id, NodeState::Draining, at_ms)
    }

    /// Marks every VM placed on a draining node as moving off it. One that
    /// runs and can move live stays placed (the leader migrates it; see
    /// `migrations`); the others are unplaced, and the leader places each
    /// elsewhere once the node has stopped it. A VM being deleted stays:
    /// its host finishes the delete. Returns how many move, and how.
    fn begin_drain(&mut self, id: NodeId, name: &str) -> (usize, String) {
        // A stopped VM whose disks are local to the node stays on it: it
        // can run nowhere else.
        let on_node: Vec<VmId> = self
            .placed_on(id)
            .into_iter()
            .filter(|v| self.vms.get(v).is_some_and(|v| v.deleting.is_none() && !self.pinned_to(v, id)))
            .collect();
        let cold = self.nodes.get(&id).is_some_and(|n| n.cold_drain);
        let (mut live, mut stopped) = (0, Vec::new());
        for vm_id in &on_node {
            let Some(vm) = self.vms.get(vm_id) else { continue };
            let why_not = if cold {
                Err("--cold".to_string())
            } else if vm.migration.is_some() {
                Ok(())
            } else {
                self.moves_live(vm, false)
            };
            match why_not {
                Ok(()) => live += 1,
                Err(why) => {
                    let running = vm.desired == crate::model::Desired::Running;
                    if running {
                        stopped.push(format!("{} ({why})", vm.name));
                    }
                    self.unplace(*vm_id, format!("moving off {name} (drain)"));
                }
            }
            if let Some(vm) = self.vms.get_mut(vm_id) {
                vm.moving_from = Some(id);
            }
        }
        let how = match (live, stopped.is_empty()) {
            (0, true) => String::new(),
            (_, true) => format!("; {live} to migrate live"),
            (_, false) => format!("; {live} to migrate live; stopped and started elsewhere: {}", stopped.join(", ")),
        };
        (on_node.len(), how)
    }

    pub(super) fn update_node(&mut self, id: NodeId, change: NodeChange<'_>, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get(&id) else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        if let Some(address) = change.address {
            if let Some(other) = self.nodes.values().find(|n| n.id != id && &n.address == address) {
                return Response::Refused(Refusal::NodeAddressTaken {
                    address: address.clone(),
                    by: other.name.clone(),
                });
            }
        }
        let address = change.address.clone().unwrap_or_else(|| node.address.clone());
        let (cpus, memory_mib) = (change.cpus.unwrap_or(node.cpus), change.memory_mib.unwrap_or(node.memory_mib));
        let mut labels = node.labels.clone();
        labels.retain(|k, _| !change.unset_labels.contains(k));
        labels.extend(change.set_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        if (&address, cpus, memory_mib, &labels) == (&node.address, node.cpus, node.memory_mib, &node.labels) {
            return Response::Done;
        }
        // Only a change that takes something away can strand what is placed.
        let shrinks = cpus < node.cpus
            || memory_mib < node.memory_mib
            || node.labels.iter().any(|(k, v)| labels.get(k) != Some(v));
        if let Some(reason) = shrinks.then(|| self.check_node_change(id, cpus, memory_mib, &labels)).flatten() {
            return Response::Refused(Refusal::NodeChangeRefused { name: node.name.clone(), reason });
        }
        let name = node.name.clone();
        let node = self.nodes.get_mut(&id).expect("checked above");
        node.address = address.clone();
        node.cpus = cpus;
        node.memory_mib = memory_mib;
        node.labels = labels;
        let labels: Vec<String> = node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.dirty.insert(Key::Node(id));
        self.push_event(
            at_ms,
            "node",
            format!(
                "node {name} at {address} now offers {cpus} CPUs and {memory_mib} MiB, labels [{}]",
                labels.join(", ")
            ),
        );
        Response::Done
    }

    pub(super) fn put_node(&mut self, node: Node) {
        self.dirty.insert(Key::Node(node.id));
        self.nodes.insert(node.id, node);
    }

    /// The VMs placed on a node, by a scan (`apply` may not use the index).
    fn placed_on(&self, node: NodeId) -> Vec<VmId> {
        self.vms.values().filter(|v| v.placement.map(|p| p.node) == Some(node)).map(|v| v.id).collect()
    }
}
