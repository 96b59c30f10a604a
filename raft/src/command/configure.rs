//! `vm set` of a VM's size, HA flag and hardware, and `vm cdrom
//! insert|eject`: one command, [`Command::ConfigureVm`], checked and applied
//! here.
//!
//! Every start defines the guest again from the spec, so a change to a
//! stopped VM simply takes effect at its next start. A change that needs a
//! new QEMU (CPUs, memory, firmware, machine, CPU model, boot order,
//! cloud-init) counts the spec's generation up; while a guest runs or may
//! be being started, it is also recorded in `pending_changes`, which
//! operators see in `vm get` (as Proxmox shows pending changes). Hosts tag
//! each definition with the generation it was made from and report it, so
//! only a guest running that generation or a later one clears them: not a
//! guest that arrived live, nor one defined a moment before the change.
//! vCPUs plugged into the running guest clear their entry
//! (`Command::VcpusLive`). The CD-ROM and the HA flag change at once: the
//! host's agent swaps the medium live.

use super::{Refusal, Response};
use crate::hardware::VmChange;
use crate::model::{ClusterState, Desired, VmState};

impl ClusterState {
    pub(super) fn configure_vm(&mut self, name: &str, change: &VmChange, at_ms: u64) -> Response {
        if change.is_empty() {
            return Response::Refused(Refusal::VmChange { vm: name.into(), reason: "nothing to change".into() });
        }
        if let Err(r) = self.not_migrating(name, "change it") {
            return Response::Refused(r);
        }
        let mut vm = match self.live_vm(name) {
            Ok(vm) => vm.clone(),
            Err(r) => return Response::Refused(r),
        };
        let before = vm.spec.clone();
        let spec = &mut vm.spec;
        if change.vcpus == Some(0) || change.memory_mib == Some(0) {
            return Response::Refused(Refusal::VmChange {
                vm: name.into(),
                reason: "a VM needs at least 1 vCPU and 1 MiB of memory".into(),
            });
        }
        spec.vcpus = change.vcpus.unwrap_or(spec.vcpus);
        spec.memory_mib = change.memory_mib.unwrap_or(spec.memory_mib);
        spec.ha = change.ha.unwrap_or(spec.ha);
        let hw = &mut spec.hardware;
        hw.firmware = change.firmware.unwrap_or(hw.firmware);
        hw.machine = change.machine.unwrap_or(hw.machine);
        if let Some(model) = &change.cpu_model {
            hw.cpu_model.clone_from(model);
        }
        if let Some(order) = &change.boot_order {
            hw.boot_order.clone_from(order);
        }
        if let Some(cdrom) = &change.cdrom {
            hw.cdrom.clone_from(cdrom);
        }
        if let Some(cloud_init) = &change.cloud_init {
            hw.cloud_init = cloud_init.applied_to(hw.cloud_init.as_ref());
        }
        if let Err(r) = self.check_storage(&vm.spec) {
            return Response::Refused(r);
        }
        // Only more vCPUs or memory can stop fitting: on a host already over
        // its capacity (its capacity lowered), an eject must still work.
        let grows = vm.spec.vcpus > before.vcpus || vm.spec.memory_mib > before.memory_mib;
        if grows {
            if let Err(r) = self.check_size(&vm) {
                return Response::Refused(r);
            }
        }
        // An ISO on another host's local storage would pin the VM there.
        let (host, on) = (vm.placement.and_then(|p| self.nodes.get(&p.node)), self.request_for(&vm).volumes_on);
        if let (Some(host), Some(on)) = (host, on) {
            if host.name != on {
                let reason = format!("its data would be on local storage of {on}, but it is placed on {}", host.name);
                return Response::Refused(Refusal::VmChange { vm: name.into(), reason });
            }
        }
        // Whether a QEMU runs, or may be being started, with the old
        // definition: its host reports which generation it started.
        let guest_up = vm.placement.is_some()
            && (vm.desired == Desired::Running || vm.reported.as_ref().is_some_and(|r| r.state == VmState::Running));
        let (old, new) = (&before, &vm.spec);
        let mut changed: Vec<(&str, String, String)> = vec![
            ("vcpus", old.vcpus.to_string(), new.vcpus.to_string()),
            ("memory", format!("{} MiB", old.memory_mib), format!("{} MiB", new.memory_mib)),
            ("firmware", old.hardware.firmware.as_str().into(), new.hardware.firmware.as_str().into()),
            ("machine", old.hardware.machine.as_str().into(), new.hardware.machine.as_str().into()),
            ("cpu model", cpu_model(&old.hardware.cpu_model), cpu_model(&new.hardware.cpu_model)),
            ("boot order", boot_order(&old.hardware), boot_order(&new.hardware)),
            ("cloud-init", cloud_init(&old.hardware), cloud_init(&new.hardware)),
        ];
        changed.retain(|(_, from, to)| from != to);
        if !changed.is_empty() {
            vm.spec_gen += 1;
        }
        let mut now: Vec<String> = Vec::new();
        if old.ha != new.ha {
            now.push(format!("ha {} -> {}", old.ha, new.ha));
        }
        if old.hardware.cdrom != new.hardware.cdrom {
            let medium = |c: &Option<String>| c.clone().unwrap_or_else(|| "empty".into());
            now.push(format!("cdrom {} -> {}", medium(&old.hardware.cdrom), medium(&new.hardware.cdrom)));
        }
        for (field, from, to) in &changed {
            if guest_up {
                note_pending(&mut vm.pending_changes, field, from, to);
            } else {
                now.push(format!("{field} {from} -> {to}"));
            }
        }
        let mut message = format!("vm {name}:");
        if !now.is_empty() {
            message.push_str(&format!(" {}", now.join(", ")));
        }
        if guest_up && !changed.is_empty() {
            let later: Vec<String> = changed.iter().map(|(f, a, b)| format!("{f} {a} -> {b}")).collect();
            message.push_str(&format!(" {} (pending: at the next start)", later.join(", ")));
        }
        self.vms.insert(vm.id, vm.clone());
        self.touch_vm(vm.id);
        self.push_event(at_ms, "vm", message);
        Response::Vm(Box::new(vm))
    }
}

impl ClusterState {
    pub(super) fn vcpus_live(&mut self, id: u64, at: (u64, u64), vcpus: u32, at_ms: u64) -> Response {
        let Some(vm) = self.vms.get_mut(&id) else { return Response::Refused(Refusal::StaleReport) };
        // Only the current run's host, and only for the count the spec asks
        // (an operator may have changed it again meanwhile).
        if vm.placement.map(|p| (p.node, p.epoch)) != Some(at) || vm.spec.vcpus != vcpus {
            return Response::Refused(Refusal::StaleReport);
        }
        let before = vm.pending_changes.len();
        vm.pending_changes.retain(|p| !p.starts_with("vcpus: "));
        if vm.pending_changes.len() != before {
            let name = vm.name.clone();
            self.touch_vm(id);
            self.push_event(at_ms, "vm", format!("vm {name}: {vcpus} vCPUs plugged into the running guest"));
        }
        Response::Done
    }
}

fn cpu_model(model: &Option<String>) -> String {
    model.clone().unwrap_or_else(|| "default".into())
}

/// The seed as `vm get` and events name it; a changed seed says so even
/// when its summary stays the same.
fn cloud_init(hw: &crate::hardware::Hardware) -> String {
    match &hw.cloud_init {
        None => "none".into(),
        Some(ci) => {
            let bytes = ci.user_data.as_ref().map_or(0, String::len);
            let hash = ci.fingerprint() as u16;
            format!("{bytes} bytes of user-data, {} SSH keys (#{hash:04x})", ci.ssh_keys.len())
        }
    }
}

fn boot_order(hw: &crate::hardware::Hardware) -> String {
    hw.boot_order().iter().map(|d| d.as_str()).collect::<Vec<_>>().join(",")
}

/// Records `field: from -> to` as pending; a second change of the same
/// field keeps the running value as its `from`, and a change back to it
/// is no longer pending.
fn note_pending(pending: &mut Vec<String>, field: &str, from: &str, to: &str) {
    let key = format!("{field}: ");
    match pending.iter().position(|p| p.starts_with(&key)) {
        Some(i) => {
            let running = pending[i][key.len()..].split(" -> ").next().unwrap_or_default().to_string();
            if running == to {
                pending.remove(i);
            } else {
                pending[i] = format!("{key}{running} -> {to}");
            }
        }
        None => pending.push(format!("{key}{from} -> {to}")),
    }
}

#[cfg(test)]
mod tests {
    use super::note_pending;

    #[test]
    fn pending_changes_keep_the_running_value_and_vanish_when_undone() {
        let mut p = Vec::new();
        note_pending(&mut p, "vcpus", "1", "2");
        note_pending(&mut p, "vcpus", "2", "4");
        assert_eq!(p, vec!["vcpus: 1 -> 4".to_string()]);
        note_pending(&mut p, "memory", "128 MiB", "256 MiB");
        note_pending(&mut p, "vcpus", "4", "1");
        assert_eq!(p, vec!["memory: 128 MiB -> 256 MiB".to_string()]);
    }
}
