//! Commands about VMs: create, delete, desired state, placement, reports.
//!
//! A command that names a VM by name goes through [`ClusterState::live_vm`],
//! the one guard for "no such VM" and "being deleted".

use super::{Refusal, Response};
use crate::model::{ClusterState, Deleting, Desired, Key, NodeState, Placement, Reported, Vm, VmId, VmState};
use crate::types::NodeId;
use std::collections::BTreeMap;

impl ClusterState {
    pub(super) fn create_vm(&mut self, vm: &Vm, at_ms: u64) -> Response {
        if let Some(existing) = self.vm_by_name(&vm.name) {
            // A retried create (same request id) gets the original answer.
            if !vm.request_id.is_empty() && existing.request_id == vm.request_id {
                return Response::Vm(Box::new(existing.clone()));
            }
            if existing.deleting.is_some() {
                return Response::Refused(Refusal::VmBeingDeleted { name: vm.name.clone() });
            }
            return Response::Refused(Refusal::VmNameTaken { name: vm.name.clone() });
        }
        if self.vms.contains_key(&vm.id) {
            return Response::Refused(Refusal::VmIdTaken { id: vm.id });
        }
        if let Err(r) = self.check_storage(&vm.spec) {
            return Response::Refused(r);
        }
        if let Some(p) = vm.placement {
            if let Err(r) = self.check_placement(p.node, &self.request_for(vm)) {
                return Response::Refused(r);
            }
        }
        let node_name = vm.placement.and_then(|p| self.nodes.get(&p.node)).map(|n| n.name.clone());
        let mut vm = vm.clone();
        if let Err(r) = self.assign_nics(&mut vm.spec) {
            return Response::Refused(r);
        }
        vm.last_epoch = vm.last_epoch.max(vm.placement.map(|p| p.epoch).unwrap_or(0));
        self.vm_names.insert(vm.name.clone(), vm.id);
        self.vms.insert(vm.id, vm.clone());
        self.touch_vm(vm.id);
        self.meta.vms_created += 1;
        self.dirty.insert(Key::Meta);
        let where_ = node_name.map(|n| format!(" on {n}")).unwrap_or_default();
        self.push_event(at_ms, "vm", format!("vm {} created{where_}", vm.name));
        Response::Vm(Box::new(vm))
    }

    pub(super) fn delete_vm(&mut self, name: &str, keep_disks: bool, at_ms: u64) -> Response {
        let Some(id) = self.vm_names.get(name).copied() else {
            return Response::Refused(Refusal::UnknownVm { name: name.to_string() });
        };
        if let Err(r) = self.not_migrating(name, "delete it") {
            return Response::Refused(r);
        }
        let held = self.vms.get(&id).and_then(|v| v.placement).is_some_and(|p| self.nodes.contains_key(&p.node));
        if !held {
            self.remove_vm(id, keep_disks);
            self.push_event(at_ms, "vm", format!("vm {name} deleted"));
            return Response::Done;
        }
        let Some(vm) = self.vms.get_mut(&id) else { return Response::Refused(Refusal::UnknownVmId { id }) };
        vm.deleting = Some(Deleting { keep_disks });
        vm.desired = Desired::Stopped;
        self.touch_vm(id);
        let disks = if keep_disks { " (keeping its disks)" } else { "" };
        self.push_event(at_ms, "vm", format!("vm {name}: delete requested{disks}"));
        Response::Done
    }

    pub(super) fn set_desired(&mut self, name: &str, desired: Desired, force: bool, at_ms: u64) -> Response {
        if let Err(r) = self.not_migrating(name, "start or stop it") {
            return Response::Refused(r);
        }
        if desired == Desired::Running {
            if let Err(r) = self.host_takes_starts(name) {
                return Response::Refused(r);
            }
        }
        let vm = match self.live_vm(name) {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        vm.desired = desired;
        vm.force_stop = force;
        vm.desired_gen += 1;
        forget_failure(vm);
        let vm = vm.clone();
        self.touch_vm(vm.id);
        let verb = match (desired, force) {
            (Desired::Running, _) => "start",
            (Desired::Stopped, true) => "force stop",
            (Desired::Stopped, false) => "stop",
        };
        self.push_event(at_ms, "vm", format!("vm {name}: {verb} requested"));
        Response::Vm(Box::new(vm))
    }

    pub(super) fn restart_vm(&mut self, name: &str, at_ms: u64) -> Response {
        if let Err(r) = self.not_migrating(name, "restart it") {
            return Response::Refused(r);
        }
        if let Err(r) = self.host_takes_starts(name) {
            return Response::Refused(r);
        }
        let vm = match self.live_vm(name) {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        vm.desired = Desired::Running;
        vm.restart_gen += 1;
        vm.desired_gen += 1;
        // Whatever was reported is about the run being restarted: `pending`
        // until the host reports the new one.
        vm.reported = None;
        let vm = vm.clone();
        self.touch_vm(vm.id);
        self.push_event(at_ms, "vm", format!("vm {name}: restart requested"));
        Response::Vm(Box::new(vm))
    }

    pub(super) fn update_vm(&mut self, name: &str, description: &Option<String>, priority: Option<i32>) -> Response {
        let vm = match self.live_vm(name) {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        if let Some(d) = description {
            vm.description.clone_from(d);
        }
        if let Some(p) = priority {
            vm.spec.priority = p;
        }
        let vm = vm.clone();
        self.touch_vm(vm.id);
        Response::Vm(Box::new(vm))
    }

    pub(super) fn label_vm(&mut self, name: &str, set: &BTreeMap<String, String>, unset: &[String]) -> Response {
        let vm = match self.live_vm(name) {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        for key in unset {
            vm.spec.labels.remove(key);
        }
        vm.spec.labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        let vm = vm.clone();
        self.touch_vm(vm.id);
        Response::Vm(Box::new(vm))
    }

    pub(super) fn place_vm(&mut self, id: VmId, node: NodeId, at_ms: u64) -> Response {
        let Some(vm) = self.vms.get(&id) else {
            return Response::Refused(Refusal::UnknownVmId { id });
        };
        if vm.placement.is_some() {
            return Response::Refused(Refusal::AlreadyPlaced { name: vm.name.clone() });
        }
        if vm.deleting.is_some() {
            return Response::Refused(Refusal::VmBeingDeleted { name: vm.name.clone() });
        }
        if let Err(r) = self.check_placement(node, &self.request_for(vm)) {
            return Response::Refused(r);
        }
        let host = self.nodes.get(&node).map(|n| n.name.clone()).unwrap_or_default();
        let Some(vm) = self.vms.get_mut(&id) else { return Response::Refused(Refusal::UnknownVmId { id }) };
        vm.last_epoch += 1;
        vm.placement = Some(Placement { node, epoch: vm.last_epoch });
        vm.pending = None;
        vm.reported = None;
        vm.moving_from = None;
        let placed = vm.clone();
        self.touch_vm(id);
        self.push_event(at_ms, "vm", format!("vm {} placed on {host} (epoch {})", placed.name, placed.last_epoch));
        Response::Vm(Box::new(placed))
    }

    pub(super) fn set_pending(&mut self, id: VmId, reason: &str, at_ms: u64) -> Response {
        let Some(vm) = self.vms.get_mut(&id) else {
            return Response::Refused(Refusal::UnknownVmId { id });
        };
        if vm.placement.is_some() || vm.pending.as_deref() == Some(reason) {
            return Response::Done;
        }
        vm.pending = Some(reason.to_string());
        let name = vm.name.clone();
        self.touch_vm(id);
        self.push_event(at_ms, "vm-error", format!("vm {name} is pending: {reason}"));
        Response::Done
    }

    pub(super) fn recover_vm(&mut self, name: &str, at_ms: u64) -> Response {
        let vm = match self.live_vm(name) {
            Ok(vm) => vm.clone(),
            Err(r) => return Response::Refused(r),
        };
        let Some(placement) = vm.placement else {
            // Moving off a host that went silent mid-drain: the operator
            // vouches that it no longer runs there.
            let Some(from) = vm.moving_from else { return Response::Done };
            let down_or_gone = self.nodes.get(&from).is_none_or(|h| h.state == NodeState::Down);
            if !down_or_gone {
                let host = self.nodes.get(&from).map(|h| h.name.clone()).unwrap_or_default();
                return Response::Refused(Refusal::HostNotDown { name: name.to_string(), host });
            }
            if let Some(vm) = self.vms.get_mut(&vm.id) {
                vm.moving_from = None;
            }
            self.touch_vm(vm.id);
            self.push_event(at_ms, "vm", format!("vm {name}: recovering from host {from}, silent during its drain"));
            return Response::Done;
        };
        let reason = match self.nodes.get(&placement.node) {
            Some(h) if h.state == NodeState::Down => format!("recovering from down host {}", h.name),
            Some(h) => return Response::Refused(Refusal::HostNotDown { name: name.to_string(), host: h.name.clone() }),
            None => format!("recovering from removed host {}", placement.node),
        };
        self.unplace(vm.id, reason.clone());
        self.push_event(at_ms, "vm", format!("vm {name}: {reason}"));
        Response::Done
    }

    pub(super) fn report_vm(
        &mut self,
        id: VmId,
        node: NodeId,
        epoch: u64,
        state: VmState,
        error: Option<String>,
        spec_gen: u64,
        at_ms: u64,
    ) -> Response {
        // A removed host may still hold placements (see `remove_node`), but
        // its word no longer counts.
        let Some(host) = self.nodes.get(&node).map(|n| n.name.clone()) else {
            return Response::Refused(Refusal::StaleReport);
        };
        let Some(vm) = self.vms.get_mut(&id) else {
            return Response::Refused(Refusal::StaleReport);
        };
        if vm.placement.map(|p| (p.node, p.epoch)) != Some((node, epoch)) {
            return Response::Refused(Refusal::StaleReport);
        }
        let name = vm.name.clone();
        if state == VmState::Deleted {
            if let Some(deleting) = vm.deleting {
                self.remove_vm(id, deleting.keep_disks);
                self.push_event(at_ms, "vm", format!("vm {name} deleted from {host}"));
                return Response::Done;
            }
            return Response::Refused(Refusal::StaleReport);
        }
        // A guest defined from the spec at `spec_gen` has every change up
        // to it; one that arrived live, or was defined just before a
        // change, runs an older generation and its changes stay pending.
        let applied = state == VmState::Running && spec_gen >= vm.spec_gen && !vm.pending_changes.is_empty();
        if applied {
            vm.pending_changes.clear();
        }
        let previous = vm.reported.as_ref().map(|r| (r.state, r.epoch, r.last_error.clone()));
        if previous == Some((state, epoch, error.clone())) {
            if applied {
                self.touch_vm(id);
            }
            return Response::Done;
        }
        vm.reported = Some(Reported { state, node, epoch, since_ms: at_ms, last_error: error.clone() });
        self.touch_vm(id);
        let message = match (state, &error) {
            (VmState::Failed, Some(e)) => format!("vm {name} failed on {host}: {e}"),
            (VmState::Crashed, Some(e)) => format!("vm {name} crashed on {host}; {e}"),
            (VmState::WaitingForLease, Some(e)) => format!("vm {name} waits for a disk lease on {host}: {e}"),
            (VmState::Running, Some(e)) => format!("vm {name} on {host}: {e}"),
            (s, _) => format!("vm {name} is {} on {host}", s.as_str()),
        };
        let kind = if matches!(state, VmState::Failed | VmState::Crashed) { "vm-error" } else { "vm" };
        self.push_event(at_ms, kind, message);
        Response::Done
    }

    /// A VM still placed on a draining or maintenance host (only one whose
    /// disks are local to it stays there) does not start until the host is
    /// activated.
    fn host_takes_starts(&self, name: &str) -> Result<(), Refusal> {
        let host = self.vm_by_name(name).and_then(|v| v.placement).and_then(|p| self.nodes.get(&p.node));
        match host {
            Some(h) if matches!(h.state, NodeState::Draining | NodeState::Maintenance) => {
                Err(Refusal::HostInMaintenance { vm: name.to_string(), node: h.name.clone() })
            }
            _ => Ok(()),
        }
    }

    /// The VM a by-name command acts on: it must exist and not be on its
    /// way out.
    pub(super) fn live_vm(&mut self, name: &str) -> Result<&mut Vm, Refusal> {
        let vm = self
            .vm_names
            .get(name)
            .copied()
            .and_then(|id| self.vms.get_mut(&id))
            .ok_or_else(|| Refusal::UnknownVm { name: name.to_string() })?;
        if vm.deleting.is_some() {
            return Err(Refusal::VmBeingDeleted { name: name.to_string() });
        }
        Ok(vm)
    }

    /// Takes a VM off its host, keeping its epoch count, with a reason.
    pub(super) fn unplace(&mut self, id: VmId, reason: String) {
        if let Some(vm) = self.vms.get_mut(&id) {
            if let Some(p) = vm.placement.take() {
                vm.last_epoch = vm.last_epoch.max(p.epoch);
            }
            vm.pending = Some(reason);
            vm.reported = None;
            // Off its host, it is not going anywhere live either: the
            // target's copy is stale from now on.
            vm.migration = None;
            self.touch_vm(id);
        }
    }

    /// Forgets a VM; unless `keep_disks`, its volumes go to the trash.
    pub(super) fn remove_vm(&mut self, id: VmId, keep_disks: bool) {
        if let Some(vm) = self.vms.remove(&id) {
            self.vm_names.remove(&vm.name);
            self.touch_vm(id);
            if !keep_disks {
                let placed_on = vm.placement.map(|p| p.node);
                for disk in &vm.spec.disks {
                    self.trash_disk(vm.id, disk, placed_on);
                }
            }
        }
    }
}

/// An operator asked again: a `failed` report is about the previous try.
/// Cleared, the VM reads `pending` until its host reports the new try, so a
/// waiting client sees that outcome (the same failure again included, which
/// is then a new report with its own event), not the old one.
fn forget_failure(vm: &mut Vm) {
    if vm.reported.as_ref().is_some_and(|r| r.state == VmState::Failed) {
        vm.reported = None;
    }
}
