//! Logical networks and NICs: `network add/remove`, `vm nic add/remove`,
//! and the MACs of a created VM's NICs. A MAC is drawn from the cluster's
//! sequence (skipping any taken), so it is the same on every replica and is
//! the VM's for life: HA restarts and migrations keep it.

use std::collections::BTreeSet;

use super::{Refusal, Response};
use crate::model::{ClusterState, Key, VmSpec};
use crate::networks::{Mac, Network, Nic};

impl ClusterState {
    pub(super) fn add_network(&mut self, network: &Network, at_ms: u64) -> Response {
        if let Err(reason) = network.validate() {
            return Response::Refused(Refusal::NetworkInvalid { reason });
        }
        if self.meta.networks.contains_key(&network.name) {
            return Response::Refused(Refusal::NetworkNameTaken { name: network.name.clone() });
        }
        if let Some(reason) = self.meta.networks.values().find_map(|other| network.clashes_with(other)) {
            return Response::Refused(Refusal::NetworkInvalid { reason });
        }
        let mut network = network.clone();
        network.created_at_ms = at_ms;
        let what = describe(&network);
        self.meta.networks.insert(network.name.clone(), network);
        self.dirty.insert(Key::Meta);
        self.push_event(at_ms, "network", what);
        Response::Done
    }

    pub(super) fn remove_network(&mut self, name: &str, at_ms: u64) -> Response {
        if !self.meta.networks.contains_key(name) {
            return Response::Refused(Refusal::UnknownNetwork { name: name.to_string() });
        }
        let users: Vec<&str> = self
            .vms
            .values()
            .filter(|v| v.spec.nics.iter().any(|n| n.network == name))
            .map(|v| v.name.as_str())
            .collect();
        if !users.is_empty() {
            return Response::Refused(Refusal::NetworkInUse { name: name.to_string(), by: users.join(", ") });
        }
        self.meta.networks.remove(name);
        self.dirty.insert(Key::Meta);
        self.push_event(at_ms, "network", format!("network {name} removed; every host deletes what it made for it"));
        Response::Done
    }

    /// Checks a new VM's NICs and gives each unset MAC one of its own.
    pub(super) fn assign_nics(&mut self, spec: &mut VmSpec) -> Result<(), Refusal> {
        // This VM's own, besides the cluster's (`held`).
        let mut taken = BTreeSet::new();
        // Given MACs first: checked against the cluster's and each other,
        // and never drawn for another NIC of this VM.
        for nic in spec.nics.iter().filter(|n| !n.mac.is_unset()) {
            self.check_nic(nic, &taken)?;
            taken.insert(nic.mac);
        }
        for nic in spec.nics.iter_mut().filter(|n| n.mac.is_unset()) {
            self.check_nic(nic, &taken)?;
            nic.mac = self.next_mac(&taken);
            taken.insert(nic.mac);
        }
        Ok(())
    }

    pub(super) fn add_nic(&mut self, name: &str, nic: &Nic, at_ms: u64) -> Response {
        let taken = BTreeSet::new();
        if let Err(r) = self.live_vm(name).map(|_| ()).and_then(|_| self.check_nic(nic, &taken)) {
            return Response::Refused(r);
        }
        let mut nic = nic.clone();
        if nic.mac.is_unset() {
            nic.mac = self.next_mac(&taken);
        }
        let Ok(vm) = self.live_vm(name) else { return Response::Refused(Refusal::UnknownVm { name: name.into() }) };
        vm.spec.nics.push(nic.clone());
        let vm = vm.clone();
        self.touch_vm(vm.id);
        self.push_event(at_ms, "vm", format!("vm {name}: NIC {} added on network {}", nic.mac, nic.network));
        Response::Vm(Box::new(vm))
    }

    pub(super) fn remove_nic(&mut self, name: &str, mac: Mac, at_ms: u64) -> Response {
        let vm = match self.live_vm(name) {
            Ok(vm) => vm,
            Err(r) => return Response::Refused(r),
        };
        let Some(at) = vm.spec.nics.iter().position(|n| n.mac == mac) else {
            let have: Vec<String> = vm.spec.nics.iter().map(|n| format!("{} ({})", n.mac, n.network)).collect();
            return Response::Refused(Refusal::UnknownNic {
                vm: name.to_string(),
                mac: mac.to_string(),
                have: have.join(", "),
            });
        };
        let nic = vm.spec.nics.remove(at);
        let vm = vm.clone();
        self.touch_vm(vm.id);
        self.push_event(at_ms, "vm", format!("vm {name}: NIC {} removed from network {}", nic.mac, nic.network));
        Response::Vm(Box::new(vm))
    }

    /// `taken`: MACs this VM's other new NICs took (the cluster's are in
    /// `held`).
    fn check_nic(&self, nic: &Nic, taken: &BTreeSet<Mac>) -> Result<(), Refusal> {
        if !self.meta.networks.contains_key(&nic.network) {
            return Err(Refusal::UnknownNetwork { name: nic.network.clone() });
        }
        nic.validate().map_err(|reason| Refusal::NetworkInvalid { reason })?;
        if !nic.mac.is_unset() && self.mac_taken(&nic.mac, taken) {
            let by = self
                .vms
                .values()
                .find(|v| v.spec.nics.iter().any(|n| n.mac == nic.mac))
                .map(|v| v.name.clone())
                .unwrap_or_else(|| "another NIC of this VM".into());
            return Err(Refusal::MacTaken { mac: nic.mac.to_string(), by });
        }
        Ok(())
    }

    /// Whether a NIC uses `mac` already: a VM's, or one of `also`.
    fn mac_taken(&self, mac: &Mac, also: &BTreeSet<Mac>) -> bool {
        self.held.mac_used(mac) || also.contains(mac)
    }

    fn next_mac(&mut self, taken: &BTreeSet<Mac>) -> Mac {
        let cluster = self.meta.cluster_id.clone().unwrap_or_default();
        loop {
            self.meta.macs_allocated += 1;
            let mac = Mac::allocated(&cluster, self.meta.macs_allocated);
            if !self.mac_taken(&mac, taken) {
                self.dirty.insert(Key::Meta);
                return mac;
            }
        }
    }
}

fn describe(n: &Network) -> String {
    use crate::networks::NetworkKind::*;
    let how = match &n.kind {
        Bridge { bridge } => format!("on host bridge {bridge}"),
        Vlan { uplink, vlan } => format!("VLAN {vlan} on {uplink}"),
        Vxlan { vni } => format!("VXLAN VNI {vni}"),
        Isolated => "isolated on each host".to_string(),
    };
    let required = if n.required { ", required on every host" } else { "" };
    format!("network {} added: {how}{required}", n.name)
}
