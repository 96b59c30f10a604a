//! HA reservation (oVirt's name): could the HA VMs of any single host be
//! restarted on the others? Answered before it is needed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{NodeState, NodeView, Settings, VmRequest};
use crate::plan::plan_restarts;

/// What losing one host would mean.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReservation {
    pub node: String,
    pub ha_vms: usize,
    pub ha_vcpus: u64,
    pub ha_memory_mib: u64,
    /// HA VMs that would find no place elsewhere.
    pub unplaceable: Vec<String>,
    /// Resources those VMs ask for: by how much the cluster falls short.
    pub short_vcpus: u64,
    pub short_memory_mib: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Every up host's HA VMs fit on the others.
    pub n_plus_1: bool,
    /// The host whose loss hurts most (most HA memory left unplaced, then
    /// most HA memory), if any host runs HA VMs.
    pub worst: Option<String>,
    pub hosts: Vec<HostReservation>,
}

/// Checks N+1 for HA VMs. `ha_vms` maps node id to the HA VMs placed there;
/// node allocations already include them.
pub fn ha_reservation(nodes: &[NodeView], ha_vms: &BTreeMap<u64, Vec<VmRequest>>, s: &Settings) -> Reservation {
    let mut hosts = Vec::new();
    for host in nodes.iter().filter(|n| n.state == NodeState::Up) {
        let vms = ha_vms.get(&host.id).map(Vec::as_slice).unwrap_or(&[]);
        let others: Vec<NodeView> = nodes.iter().filter(|n| n.id != host.id).cloned().collect();
        let plan = plan_restarts(vms, &others, s);
        let unplaced: Vec<&VmRequest> =
            plan.unplaced.iter().filter_map(|u| vms.iter().find(|v| v.id == u.vm_id)).collect();
        hosts.push(HostReservation {
            node: host.name.clone(),
            ha_vms: vms.len(),
            ha_vcpus: vms.iter().map(|v| v.vcpus as u64).sum(),
            ha_memory_mib: vms.iter().map(|v| v.memory_mib).sum(),
            unplaceable: unplaced.iter().map(|v| v.name.clone()).collect(),
            short_vcpus: unplaced.iter().map(|v| v.vcpus as u64).sum(),
            short_memory_mib: unplaced.iter().map(|v| v.memory_mib).sum(),
        });
    }
    let n_plus_1 = hosts.iter().all(|h| h.unplaceable.is_empty());
    let worst = hosts
        .iter()
        .filter(|h| h.ha_vms > 0)
        .max_by(|a, b| {
            (a.short_memory_mib, a.short_vcpus, a.ha_memory_mib, std::cmp::Reverse(&a.node)).cmp(&(
                b.short_memory_mib,
                b.short_vcpus,
                b.ha_memory_mib,
                std::cmp::Reverse(&b.node),
            ))
        })
        .map(|h| h.node.clone());
    Reservation { n_plus_1, worst, hosts }
}
