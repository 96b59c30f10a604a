//! Commands that change the replicated state, and the pure `apply`.
//!
//! Decisions (a placement, a new id, a timestamp) are made by the leader and
//! carried in the command; `apply` only checks and records them. Checks that
//! depend on the state at commit time (unique names, capacity) are repeated
//! here so concurrent proposals cannot both win.

use serde::{Deserialize, Serialize};

use crate::model::{
    ClusterState, Deleting, Desired, Key, Node, NodeState, PlacementSettings, Reported, Settings, Vm, VmId, VmState,
};
use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a cluster: its id, settings and founding node.
    Init { cluster_id: String, settings: Settings, node: Node, at_ms: u64 },
    /// Registers a joining node (before it becomes a Raft learner).
    AddNode { node: Node, at_ms: u64 },
    /// Forgets a node. With `force`, its VMs lose their placement.
    RemoveNode { id: NodeId, force: bool, at_ms: u64 },
    /// Records a VM and its placement (chosen by the leader's scheduler).
    CreateVm { vm: Box<Vm>, at_ms: u64 },
    /// Deletes a VM: at once if no host holds it, otherwise once its host
    /// reports the domain gone.
    DeleteVm { name: String, keep_disks: bool, at_ms: u64 },
    /// `vm start` / `vm stop [--force]`.
    SetDesired { name: String, desired: Desired, force: bool, at_ms: u64 },
    /// `vm restart`.
    RestartVm { name: String, at_ms: u64 },
    /// `vm set`: change a VM's description or restart priority. Neither
    /// touches the running guest.
    UpdateVm { name: String, description: Option<String>, priority: Option<i32> },
    /// `cluster policy set`.
    SetPlacement { placement: PlacementSettings, at_ms: u64 },
    /// The leader saw no heartbeat for `down_after`: the node is down, and
    /// its HA VMs are unplaced so they can be restarted elsewhere.
    NodeDown { id: NodeId, at_ms: u64 },
    /// A down node heartbeats again, with no stale domains left.
    NodeUp { id: NodeId, at_ms: u64 },
    /// `node drain` (Draining: its VMs are unplaced to move elsewhere), the
    /// end of a drain (Maintenance), or `node activate` (Up).
    SetNodeState { id: NodeId, state: NodeState, at_ms: u64 },
    /// Places an unplaced VM on `node` with a new epoch.
    PlaceVm { vm: VmId, node: NodeId, at_ms: u64 },
    /// Records why an unplaced VM is still waiting.
    SetPending { vm: VmId, reason: String, at_ms: u64 },
    /// `vm recover`: restart a VM whose host is down elsewhere, on purpose.
    RecoverVm { name: String, at_ms: u64 },
    /// A host reports a VM's state transition. Accepted only from the host
    /// of the current placement at the current epoch.
    ReportVm { vm: VmId, node: NodeId, epoch: u64, state: VmState, error: Option<String>, at_ms: u64 },
    /// Writes that arrived together, in one log entry (group commit); each is
    /// applied as if it were an entry of its own, in order.
    Batch(Vec<Command>),
}

/// Why `apply` refused a command. Refusals are normal results, not failures:
/// the log entry is committed and every replica refuses it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    AlreadyInitialized {
        cluster_id: String,
    },
    NodeNameTaken {
        name: String,
    },
    NodeAddressTaken {
        address: String,
        by: String,
    },
    UnknownNode {
        id: NodeId,
    },
    NodeHasVms {
        name: String,
        vms: u32,
    },
    VmNameTaken {
        name: String,
    },
    UnknownVm {
        name: String,
    },
    /// The chosen node no longer fits the VM (another placement won the race).
    NoLongerFits {
        node: String,
    },
    /// A report from a host that no longer holds the VM at that epoch.
    StaleReport,
    VmBeingDeleted {
        name: String,
    },
    /// A concurrent placement put another member of the VM's anti-affinity
    /// group on the chosen node.
    AntiAffinityConflict {
        node: String,
        group: String,
    },
    /// `vm recover` of a VM whose host is up.
    HostNotDown {
        name: String,
        host: String,
    },
    /// Placing a VM that is already placed.
    AlreadyPlaced {
        name: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::AlreadyInitialized { cluster_id } => write!(f, "cluster {cluster_id} is already initialized"),
            Refusal::NodeNameTaken { name } => write!(f, "node name {name:?} is already taken by another node"),
            Refusal::NodeAddressTaken { address, by } => {
                write!(f, "address {address} is already used by node {by:?}")
            }
            Refusal::UnknownNode { id } => write!(f, "no node with id {id}"),
            Refusal::NodeHasVms { name, vms } => write!(
                f,
                "node {name:?} still has {vms} VM(s) placed on it; delete or move them first, or pass --force to leave them unplaced"
            ),
            Refusal::VmNameTaken { name } => write!(f, "a VM named {name:?} already exists"),
            Refusal::UnknownVm { name } => write!(f, "no VM named {name:?}"),
            Refusal::NoLongerFits { node } => write!(f, "node {node:?} no longer has room for this VM"),
            Refusal::StaleReport => write!(f, "stale report: the VM moved on or is gone"),
            Refusal::VmBeingDeleted { name } => write!(f, "VM {name:?} is being deleted"),
            Refusal::HostNotDown { name, host } => write!(
                f,
                "VM {name:?} runs on {host}, which is not down; use `vm restart`, or `node drain {host}` to move it"
            ),
            Refusal::AlreadyPlaced { name } => write!(f, "VM {name:?} is already placed"),
            Refusal::AntiAffinityConflict { node, group } => {
                write!(f, "node {node:?} already runs a member of anti-affinity group {group}")
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Membership entries and blank entries answer this.
    #[default]
    Done,
    Vm(Box<Vm>),
    Refused(Refusal),
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}

impl ClusterState {
    /// Applies one committed command. Pure: the result depends only on the
    /// state and the command.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::Init { cluster_id, settings, node, at_ms } => {
                if let Some(existing) = &self.meta.cluster_id {
                    return Response::Refused(Refusal::AlreadyInitialized { cluster_id: existing.clone() });
                }
                self.meta.cluster_id = Some(cluster_id.clone());
                self.meta.settings = settings.clone();
                self.dirty.insert(Key::Meta);
                self.put_node(node.clone());
                self.push_event(*at_ms, "cluster", format!("cluster {cluster_id} initialized on {}", node.name));
                Response::Done
            }
            Command::Batch(cmds) => Response::Batch(cmds.iter().map(|c| self.apply(c)).collect()),
            Command::AddNode { node, at_ms } => self.add_node(node, *at_ms),
            Command::RemoveNode { id, force, at_ms } => self.remove_node(*id, *force, *at_ms),
            Command::CreateVm { vm, at_ms } => self.create_vm(vm, *at_ms),
            Command::DeleteVm { name, keep_disks, at_ms } => self.delete_vm(name, *keep_disks, *at_ms),
            Command::SetDesired { name, desired, force, at_ms } => {
                let Some(vm) = self.vm_mut_by_name(name) else {
                    return Response::Refused(Refusal::UnknownVm { name: name.clone() });
                };
                if vm.deleting.is_some() {
                    return Response::Refused(Refusal::VmBeingDeleted { name: name.clone() });
                }
                vm.desired = *desired;
                vm.force_stop = *force;
                vm.desired_gen += 1;
                let vm = vm.clone();
                self.dirty.insert(Key::Vm(vm.id));
                let verb = match (desired, force) {
                    (Desired::Running, _) => "start",
                    (Desired::Stopped, true) => "force stop",
                    (Desired::Stopped, false) => "stop",
                };
                self.push_event(*at_ms, "vm", format!("vm {name}: {verb} requested"));
                Response::Vm(Box::new(vm))
            }
            Command::RestartVm { name, at_ms } => {
                let Some(vm) = self.vm_mut_by_name(name) else {
                    return Response::Refused(Refusal::UnknownVm { name: name.clone() });
                };
                if vm.deleting.is_some() {
                    return Response::Refused(Refusal::VmBeingDeleted { name: name.clone() });
                }
                vm.desired = Desired::Running;
                vm.restart_gen += 1;
                vm.desired_gen += 1;
                let vm = vm.clone();
                self.dirty.insert(Key::Vm(vm.id));
                self.push_event(*at_ms, "vm", format!("vm {name}: restart requested"));
                Response::Vm(Box::new(vm))
            }
            Command::UpdateVm { name, description, priority } => {
                let Some(vm) = self.vm_mut_by_name(name) else {
                    return Response::Refused(Refusal::UnknownVm { name: name.clone() });
                };
                if vm.deleting.is_some() {
                    return Response::Refused(Refusal::VmBeingDeleted { name: name.clone() });
                }
                if let Some(d) = description {
                    vm.description.clone_from(d);
                }
                if let Some(p) = priority {
                    vm.spec.priority = *p;
                }
                let vm = vm.clone();
                self.dirty.insert(Key::Vm(vm.id));
                Response::Vm(Box::new(vm))
            }
            Command::SetPlacement { placement, at_ms } => {
                let before = self.meta.settings.placement;
                self.meta.settings.placement = *placement;
                self.dirty.insert(Key::Meta);
                self.push_event(
                    *at_ms,
                    "cluster",
                    format!(
                        "placement policy {} (cpu overcommit {}, memory overcommit {}; was {})",
                        placement.policy.as_str(),
                        placement.cpu_overcommit_milli as f64 / 1000.0,
                        placement.memory_overcommit_milli as f64 / 1000.0,
                        before.policy.as_str()
                    ),
                );
                Response::Done
            }
            Command::NodeDown { id, at_ms } => self.node_down(*id, *at_ms),
            Command::NodeUp { id, at_ms } => {
                let Some(node) = self.nodes.get_mut(id) else {
                    return Response::Refused(Refusal::UnknownNode { id: *id });
                };
                if node.state != NodeState::Down {
                    return Response::Done;
                }
                node.state = NodeState::Up;
                let name = node.name.clone();
                self.dirty.insert(Key::Node(*id));
                self.push_event(*at_ms, "node", format!("node {name} is up again"));
                Response::Done
            }
            Command::SetNodeState { id, state, at_ms } => self.set_node_state(*id, *state, *at_ms),
            Command::PlaceVm { vm, node, at_ms } => self.place_vm(*vm, *node, *at_ms),
            Command::SetPending { vm, reason, at_ms } => {
                let Some(v) = self.vms.get_mut(vm) else {
                    return Response::Refused(Refusal::StaleReport);
                };
                if v.placement.is_some() || v.pending.as_deref() == Some(reason.as_str()) {
                    return Response::Done;
                }
                v.pending = Some(reason.clone());
                let name = v.name.clone();
                self.dirty.insert(Key::Vm(*vm));
                self.push_event(*at_ms, "vm-error", format!("vm {name} is pending: {reason}"));
                Response::Done
            }
            Command::RecoverVm { name, at_ms } => {
                let Some(id) = self.vm_names.get(name).copied() else {
                    return Response::Refused(Refusal::UnknownVm { name: name.clone() });
                };
                let vm = &self.vms[&id];
                let host = vm.placement.and_then(|p| self.nodes.get(&p.node));
                match host {
                    Some(h) if h.state == NodeState::Down => {
                        let reason = format!("recovering from down host {}", h.name);
                        self.unplace(id, reason.clone());
                        self.push_event(*at_ms, "vm", format!("vm {name}: {reason}"));
                        Response::Done
                    }
                    Some(h) => Response::Refused(Refusal::HostNotDown { name: name.clone(), host: h.name.clone() }),
                    None => Response::Done,
                }
            }
            Command::ReportVm { vm, node, epoch, state, error, at_ms } => {
                self.report_vm(*vm, *node, *epoch, *state, error.clone(), *at_ms)
            }
        }
    }

    /// Takes a VM off its host, keeping its epoch count, with a reason.
    fn unplace(&mut self, id: VmId, reason: String) {
        if let Some(vm) = self.vms.get_mut(&id) {
            if let Some(p) = vm.placement.take() {
                vm.last_epoch = vm.last_epoch.max(p.epoch);
            }
            vm.pending = Some(reason);
            vm.reported = None;
            self.dirty.insert(Key::Vm(id));
        }
    }

    fn node_down(&mut self, id: NodeId, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        if node.state == NodeState::Down {
            return Response::Done;
        }
        node.state = NodeState::Down;
        let name = node.name.clone();
        self.dirty.insert(Key::Node(id));
        let on_node: Vec<VmId> =
            self.vms.values().filter(|v| v.placement.map(|p| p.node) == Some(id)).map(|v| v.id).collect();
        let (mut restarted, mut stay, mut gone) = (0, 0, 0);
        for vm_id in on_node {
            let vm = &self.vms[&vm_id];
            if vm.deleting.is_some() {
                // Nothing will run it again; the host cleans up if it returns.
                self.remove_vm(vm_id);
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

    fn set_node_state(&mut self, id: NodeId, state: NodeState, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        let before = node.state;
        if before == state {
            return Response::Done;
        }
        node.state = state;
        let name = node.name.clone();
        self.dirty.insert(Key::Node(id));
        if state == NodeState::Draining {
            let on_node: Vec<VmId> =
                self.vms.values().filter(|v| v.placement.map(|p| p.node) == Some(id)).map(|v| v.id).collect();
            for vm_id in &on_node {
                self.unplace(*vm_id, format!("moving off {name} (drain)"));
                if let Some(vm) = self.vms.get_mut(vm_id) {
                    vm.moving_from = Some(id);
                }
            }
            self.push_event(at_ms, "node", format!("node {name} is draining: {} VM(s) to move", on_node.len()));
        } else {
            self.push_event(at_ms, "node", format!("node {name}: {} -> {}", before.as_str(), state.as_str()));
        }
        Response::Done
    }

    fn place_vm(&mut self, id: VmId, node: NodeId, at_ms: u64) -> Response {
        let Some(vm) = self.vms.get(&id) else {
            return Response::Refused(Refusal::StaleReport);
        };
        if vm.placement.is_some() {
            return Response::Refused(Refusal::AlreadyPlaced { name: vm.name.clone() });
        }
        if let Err(r) = self.room_for(node, &vm.spec) {
            return Response::Refused(r);
        }
        let host = self.nodes[&node].name.clone();
        let vm = self.vms.get_mut(&id).expect("looked up above");
        vm.last_epoch += 1;
        vm.placement = Some(crate::model::Placement { node, epoch: vm.last_epoch });
        vm.pending = None;
        vm.reported = None;
        vm.moving_from = None;
        let (name, epoch) = (vm.name.clone(), vm.last_epoch);
        self.dirty.insert(Key::Vm(id));
        self.push_event(at_ms, "vm", format!("vm {name} placed on {host} (epoch {epoch})"));
        Response::Vm(Box::new(self.vms[&id].clone()))
    }

    fn vm_mut_by_name(&mut self, name: &str) -> Option<&mut Vm> {
        let id = self.vm_names.get(name).copied()?;
        self.vms.get_mut(&id)
    }

    fn delete_vm(&mut self, name: &str, keep_disks: bool, at_ms: u64) -> Response {
        let Some(id) = self.vm_names.get(name).copied() else {
            return Response::Refused(Refusal::UnknownVm { name: name.to_string() });
        };
        let held = self.vms[&id].placement.is_some_and(|p| self.nodes.contains_key(&p.node));
        if !held {
            self.remove_vm(id);
            self.push_event(at_ms, "vm", format!("vm {name} deleted"));
            return Response::Done;
        }
        let vm = self.vms.get_mut(&id).expect("looked up above");
        vm.deleting = Some(Deleting { keep_disks });
        vm.desired = Desired::Stopped;
        self.dirty.insert(Key::Vm(id));
        let disks = if keep_disks { " (keeping its disks)" } else { "" };
        self.push_event(at_ms, "vm", format!("vm {name}: delete requested{disks}"));
        Response::Done
    }

    fn report_vm(
        &mut self,
        id: VmId,
        node: NodeId,
        epoch: u64,
        state: VmState,
        error: Option<String>,
        at_ms: u64,
    ) -> Response {
        let Some(vm) = self.vms.get_mut(&id) else {
            return Response::Refused(Refusal::StaleReport);
        };
        if vm.placement.map(|p| (p.node, p.epoch)) != Some((node, epoch)) {
            return Response::Refused(Refusal::StaleReport);
        }
        let host = self.nodes.get(&node).map(|n| n.name.clone()).unwrap_or_else(|| node.to_string());
        let name = vm.name.clone();
        if state == VmState::Deleted {
            if vm.deleting.is_some() {
                self.remove_vm(id);
                self.push_event(at_ms, "vm", format!("vm {name} deleted from {host}"));
                return Response::Done;
            }
            return Response::Refused(Refusal::StaleReport);
        }
        let previous = vm.reported.as_ref().map(|r| (r.state, r.epoch, r.last_error.clone()));
        if previous == Some((state, epoch, error.clone())) {
            return Response::Done;
        }
        vm.reported = Some(Reported { state, node, epoch, since_ms: at_ms, last_error: error.clone() });
        self.dirty.insert(Key::Vm(id));
        let message = match (state, &error) {
            (VmState::Failed, Some(e)) => format!("vm {name} failed on {host}: {e}"),
            (VmState::Crashed, Some(e)) => format!("vm {name} crashed on {host}; {e}"),
            (s, _) => format!("vm {name} is {} on {host}", s.as_str()),
        };
        let kind = if matches!(state, VmState::Failed | VmState::Crashed) { "vm-error" } else { "vm" };
        self.push_event(at_ms, kind, message);
        Response::Done
    }

    fn add_node(&mut self, node: &Node, at_ms: u64) -> Response {
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
        self.put_node(node.clone());
        let verb = if rejoin { "re-registered" } else { "joined" };
        self.push_event(at_ms, "node", format!("node {} ({}) {verb}", node.name, node.address));
        Response::Done
    }

    fn remove_node(&mut self, id: NodeId, force: bool, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get(&id).cloned() else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        let placed: Vec<VmId> =
            self.vms.values().filter(|v| v.placement.map(|p| p.node) == Some(id)).map(|v| v.id).collect();
        if !placed.is_empty() && !force {
            return Response::Refused(Refusal::NodeHasVms { name: node.name, vms: placed.len() as u32 });
        }
        for vm_id in &placed {
            if let Some(vm) = self.vms.get_mut(vm_id) {
                vm.placement = None;
                self.dirty.insert(Key::Vm(*vm_id));
            }
        }
        self.nodes.remove(&id);
        self.dirty.insert(Key::Node(id));
        let extra = if placed.is_empty() { String::new() } else { format!("; {} VM(s) left unplaced", placed.len()) };
        self.push_event(at_ms, "node", format!("node {} removed{extra}", node.name));
        Response::Done
    }

    fn create_vm(&mut self, vm: &Vm, at_ms: u64) -> Response {
        if let Some(existing) = self.vm_by_name(&vm.name) {
            // A retried create (same request id) gets the original answer.
            if !vm.request_id.is_empty() && existing.request_id == vm.request_id {
                return Response::Vm(Box::new(existing.clone()));
            }
            return Response::Refused(Refusal::VmNameTaken { name: vm.name.clone() });
        }
        if let Some(p) = vm.placement {
            if let Err(r) = self.room_for(p.node, &vm.spec) {
                return Response::Refused(r);
            }
        }
        let node_name = vm.placement.and_then(|p| self.nodes.get(&p.node)).map(|n| n.name.clone());
        let mut vm = vm.clone();
        vm.last_epoch = vm.last_epoch.max(vm.placement.map(|p| p.epoch).unwrap_or(0));
        self.vm_names.insert(vm.name.clone(), vm.id);
        self.vms.insert(vm.id, vm.clone());
        self.dirty.insert(Key::Vm(vm.id));
        let where_ = node_name.map(|n| format!(" on {n}")).unwrap_or_default();
        self.push_event(at_ms, "vm", format!("vm {} created{where_}", vm.name));
        Response::Vm(Box::new(vm.clone()))
    }

    fn put_node(&mut self, node: Node) {
        self.dirty.insert(Key::Node(node.id));
        self.nodes.insert(node.id, node);
    }

    fn remove_vm(&mut self, id: VmId) {
        if let Some(vm) = self.vms.remove(&id) {
            self.vm_names.remove(&vm.name);
            self.dirty.insert(Key::Vm(id));
        }
    }
}

#[cfg(test)]
mod tests;
