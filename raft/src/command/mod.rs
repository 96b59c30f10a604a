//! Commands that change the replicated state, and the pure `apply`.
//!
//! Decisions (a placement, a new id, a timestamp) are made by the leader and
//! carried in the command; `apply` only checks and records them. Checks that
//! depend on the state at commit time (unique names, capacity) are repeated
//! here so concurrent proposals cannot both win.

use serde::{Deserialize, Serialize};

use crate::model::{ClusterState, Key, Node, NodeState, Settings, Vm, VmId};
use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a cluster: its id, settings and founding node.
    Init {
        cluster_id: String,
        settings: Settings,
        node: Node,
        at_ms: u64,
    },
    /// Registers a joining node (before it becomes a Raft learner).
    AddNode {
        node: Node,
        at_ms: u64,
    },
    /// Forgets a node. With `force`, its VMs lose their placement.
    RemoveNode {
        id: NodeId,
        force: bool,
        at_ms: u64,
    },
    /// Records a VM and its placement (chosen by the leader's scheduler).
    CreateVm {
        vm: Vm,
        at_ms: u64,
    },
    DeleteVm {
        name: String,
        at_ms: u64,
    },
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
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Membership entries and blank entries answer this.
    #[default]
    Done,
    Vm(Vm),
    Refused(Refusal),
}

impl ClusterState {
    /// Applies one committed command. Pure: the result depends only on the
    /// state and the command.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::Init {
                cluster_id,
                settings,
                node,
                at_ms,
            } => {
                if let Some(existing) = &self.meta.cluster_id {
                    return Response::Refused(Refusal::AlreadyInitialized {
                        cluster_id: existing.clone(),
                    });
                }
                self.meta.cluster_id = Some(cluster_id.clone());
                self.meta.settings = settings.clone();
                self.dirty.insert(Key::Meta);
                self.put_node(node.clone());
                self.push_event(
                    *at_ms,
                    "cluster",
                    format!("cluster {cluster_id} initialized on {}", node.name),
                );
                Response::Done
            }
            Command::AddNode { node, at_ms } => self.add_node(node, *at_ms),
            Command::RemoveNode { id, force, at_ms } => self.remove_node(*id, *force, *at_ms),
            Command::CreateVm { vm, at_ms } => self.create_vm(vm, *at_ms),
            Command::DeleteVm { name, at_ms } => {
                let Some(id) = self.vm_names.get(name).copied() else {
                    return Response::Refused(Refusal::UnknownVm { name: name.clone() });
                };
                self.remove_vm(id);
                self.push_event(*at_ms, "vm", format!("vm {name} deleted"));
                Response::Done
            }
        }
    }

    fn add_node(&mut self, node: &Node, at_ms: u64) -> Response {
        for other in self.nodes.values() {
            if other.id == node.id {
                continue;
            }
            if other.name == node.name {
                return Response::Refused(Refusal::NodeNameTaken {
                    name: node.name.clone(),
                });
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
        self.push_event(
            at_ms,
            "node",
            format!("node {} ({}) {verb}", node.name, node.address),
        );
        Response::Done
    }

    fn remove_node(&mut self, id: NodeId, force: bool, at_ms: u64) -> Response {
        let Some(node) = self.nodes.get(&id).cloned() else {
            return Response::Refused(Refusal::UnknownNode { id });
        };
        let placed: Vec<VmId> = self
            .vms
            .values()
            .filter(|v| v.placement.map(|p| p.node) == Some(id))
            .map(|v| v.id)
            .collect();
        if !placed.is_empty() && !force {
            return Response::Refused(Refusal::NodeHasVms {
                name: node.name,
                vms: placed.len() as u32,
            });
        }
        for vm_id in &placed {
            if let Some(vm) = self.vms.get_mut(vm_id) {
                vm.placement = None;
                self.dirty.insert(Key::Vm(*vm_id));
            }
        }
        self.nodes.remove(&id);
        self.dirty.insert(Key::Node(id));
        let extra = if placed.is_empty() {
            String::new()
        } else {
            format!("; {} VM(s) left unplaced", placed.len())
        };
        self.push_event(at_ms, "node", format!("node {} removed{extra}", node.name));
        Response::Done
    }

    fn create_vm(&mut self, vm: &Vm, at_ms: u64) -> Response {
        if let Some(existing) = self.vm_by_name(&vm.name) {
            // A retried create (same request id) gets the original answer.
            if !vm.request_id.is_empty() && existing.request_id == vm.request_id {
                return Response::Vm(existing.clone());
            }
            return Response::Refused(Refusal::VmNameTaken {
                name: vm.name.clone(),
            });
        }
        if let Some(p) = vm.placement {
            let Some(node) = self.nodes.get(&p.node) else {
                return Response::Refused(Refusal::UnknownNode { id: p.node });
            };
            let (cpus, mem, _) = self.allocated(p.node);
            let fits = node.state == NodeState::Up
                && cpus.saturating_add(vm.spec.vcpus) <= node.cpus
                && mem.saturating_add(vm.spec.memory_mib) <= node.memory_mib;
            if !fits {
                return Response::Refused(Refusal::NoLongerFits {
                    node: node.name.clone(),
                });
            }
        }
        let node_name = vm
            .placement
            .and_then(|p| self.nodes.get(&p.node))
            .map(|n| n.name.clone());
        self.vm_names.insert(vm.name.clone(), vm.id);
        self.vms.insert(vm.id, vm.clone());
        self.dirty.insert(Key::Vm(vm.id));
        let where_ = node_name.map(|n| format!(" on {n}")).unwrap_or_default();
        self.push_event(at_ms, "vm", format!("vm {} created{where_}", vm.name));
        Response::Vm(vm.clone())
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
