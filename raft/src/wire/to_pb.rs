//! Model to wire: what the API answers, built from the replicated state and
//! the scheduler's decisions.

use kvmesh_proto as pb;
use kvmesh_scheduler::{self as scheduler, Outcome};

use crate::command::uses_image;
use crate::model::{domain_name, vm_id_hex, ClusterState, Desired, Event, NodeState, PlacementSettings, Vm, VmState};
use crate::networks::{Network, NetworkKind, Nic};
use crate::storage::{Disk, Image, StorageDomain};

pub fn vm(state: &ClusterState, vm: &Vm) -> pb::Vm {
    let node = vm.placement.and_then(|p| state.nodes.get(&p.node));
    pb::Vm {
        id: vm_id_hex(vm.id),
        name: vm.name.clone(),
        vcpus: vm.spec.vcpus,
        memory_mib: vm.spec.memory_mib,
        ha: vm.spec.ha,
        desired: desired(vm.desired) as i32,
        node: node.map(|n| n.name.clone()),
        node_id: vm.placement.map(|p| p.node),
        epoch: vm.placement.map(|p| p.epoch).unwrap_or(0),
        created_at_ms: vm.created_at_ms,
        state: vm_state(state, vm) as i32,
        since_ms: vm.reported.as_ref().map(|r| r.since_ms).unwrap_or(0),
        last_error: vm.reported.as_ref().and_then(|r| r.last_error.clone()),
        image: vm.spec.disks.iter().find(|d| d.index == 0).and_then(|d| d.image.clone()),
        kernel: vm.spec.kernel.clone(),
        initrd: vm.spec.initrd.clone(),
        cmdline: vm.spec.cmdline.clone(),
        labels: vm.spec.labels.clone().into_iter().collect(),
        warning: None,
        observed_known: false,
        disks: vm.spec.disks.iter().map(|d| disk(state, vm.id, d)).collect(),
        snapshots: vm
            .snapshots
            .iter()
            .map(|s| pb::SnapshotInfo { name: s.name.clone(), created_at_ms: s.created_at_ms })
            .collect(),
        // Only the leader knows, from heartbeats: filled in by the API.
        lease_holder: None,
        migrating_to: vm.migration.and_then(|m| state.nodes.get(&m.target)).map(|n| n.name.clone()),
        migration_copies_disks: vm.migration.is_some_and(|m| m.copy_storage),
        migration_started_ms: vm.migration.map(|m| m.started_at_ms).unwrap_or(0),
        // Only the source host knows: filled in by `vm get`.
        migration_progress: None,
        nics: vm.spec.nics.iter().map(nic).collect(),
        firmware: vm.spec.hardware.firmware.as_str().into(),
        machine: vm.spec.hardware.machine.as_str().into(),
        cpu_model: vm.spec.hardware.cpu_model.clone(),
        boot_order: vm.spec.hardware.boot_order().iter().map(|d| d.as_str().to_string()).collect(),
        cdrom: vm.spec.hardware.cdrom.clone(),
        pending_changes: vm.pending_changes.clone(),
        // Only the VM's host can ask its guest agent: filled in by `vm get`.
        guest: None,
        // User-data often holds secrets (passwords, tokens), and viewers
        // read VMs: only its size and fingerprint leave the cluster.
        cloud_init: vm.spec.hardware.cloud_init.as_ref().map(|ci| pb::CloudInit {
            user_data: None,
            user_data_bytes: ci.user_data.as_ref().map_or(0, |u| u.len() as u64),
            fingerprint: format!("{:016x}", ci.fingerprint()),
            ssh_keys: ci.ssh_keys.clone(),
            hostname: ci.hostname.clone(),
        }),
        domain: domain_name(vm.id),
        priority: vm.spec.priority,
        pin: vm.spec.pin.clone(),
        required_labels: vm.spec.required_labels.clone().into_iter().collect(),
        preferred_labels: vm.spec.preferred_labels.clone().into_iter().collect(),
        anti_affinity: vm.spec.anti_affinity.clone(),
        soft_anti_affinity: vm.spec.soft_anti_affinity.clone(),
        affinity: vm.spec.affinity.clone(),
        pending: vm.pending.clone(),
        observed: Vec::new(),
        description: vm.description.clone(),
    }
}

pub fn disk(state: &ClusterState, vm: u64, d: &Disk) -> pb::DiskInfo {
    let host = d.volume.and_then(|v| v.host);
    pb::DiskInfo {
        index: d.index,
        size_bytes: d.size_bytes,
        storage: d.storage.clone(),
        image: d.image.clone(),
        created: d.volume.is_some(),
        host: host.map(|h| state.nodes.get(&h).map_or_else(|| h.to_string(), |n| n.name.clone())),
        volume: d.volume_name(vm),
    }
}

pub fn image(state: &ClusterState, i: &Image) -> pb::ImageInfo {
    pb::ImageInfo {
        name: i.name.clone(),
        storage: i.storage.clone(),
        kind: i.kind.as_str().into(),
        format: i.format.clone(),
        virtual_bytes: i.virtual_bytes,
        file_bytes: i.file_bytes,
        sha256: i.sha256.clone(),
        host: i.host.map(|h| state.nodes.get(&h).map_or_else(|| h.to_string(), |n| n.name.clone())),
        created_at_ms: i.created_at_ms,
        used_by: state.vms.values().filter(|v| uses_image(&v.spec, &i.name)).map(|v| v.name.clone()).collect(),
    }
}

/// A storage domain with what lives on it; the hosts' status is added by
/// the caller, from the leader's heartbeats.
pub fn storage(state: &ClusterState, d: &StorageDomain) -> pb::StorageDomainInfo {
    pb::StorageDomainInfo {
        name: d.name.clone(),
        kind: d.kind.as_str().into(),
        location: d.kind.location(),
        nodes: d.nodes.iter().cloned().collect(),
        shared: d.kind.is_shared(),
        hosts: Vec::new(),
        disks: state.vms.values().flat_map(|v| &v.spec.disks).filter(|x| x.storage == d.name).count() as u32,
        images: state.images.values().filter(|i| i.storage == d.name).count() as u32,
        id: format!("{:016x}", d.id),
        pending_deletions: state.meta.trash.iter().filter(|t| t.storage == d.name).count() as u32,
    }
}

pub fn event(e: &Event) -> pb::Event {
    pb::Event { seq: e.seq, at_ms: e.at_ms, kind: e.kind.clone(), message: e.message.clone(), by: e.by.clone() }
}

pub fn node_state(s: NodeState) -> pb::NodeState {
    match s {
        NodeState::Up => pb::NodeState::Up,
        NodeState::Down => pb::NodeState::Down,
        NodeState::Draining => pb::NodeState::Draining,
        NodeState::Maintenance => pb::NodeState::Maintenance,
    }
}

pub fn desired(d: Desired) -> pb::DesiredState {
    match d {
        Desired::Running => pb::DesiredState::Running,
        Desired::Stopped => pb::DesiredState::Stopped,
    }
}

/// The state users see: `deleting` and `host-down` first, then what the
/// host reported at the current placement, `stopped` for a VM on no host
/// that should not run, else `pending`.
pub fn vm_state(state: &ClusterState, vm: &Vm) -> pb::VmState {
    if vm.deleting.is_some() {
        return pb::VmState::Deleting;
    }
    // A removed host counts as down: its VMs wait as a down host's do.
    let host_down = vm.placement.is_some_and(|p| state.nodes.get(&p.node).is_none_or(|n| n.state == NodeState::Down));
    if host_down {
        return pb::VmState::HostDown;
    }
    match &vm.reported {
        Some(r) if Some((r.node, r.epoch)) == vm.placement.map(|p| (p.node, p.epoch)) => match r.state {
            VmState::Running if vm.desired == Desired::Stopped => pb::VmState::Stopping,
            VmState::Running => pb::VmState::Running,
            VmState::Stopped => pb::VmState::Stopped,
            VmState::Crashed => pb::VmState::Crashed,
            VmState::Failed => pb::VmState::Failed,
            VmState::Deleted => pb::VmState::Deleting,
            VmState::WaitingForLease => pb::VmState::WaitingForLease,
        },
        // Off any host and not wanted running (moved off a drained host):
        // stopped, once no move is still waiting for its old host.
        _ if vm.placement.is_none() && vm.desired == Desired::Stopped && vm.moving_from.is_none() => {
            pb::VmState::Stopped
        }
        _ => pb::VmState::Pending,
    }
}

pub fn nic(n: &Nic) -> pb::Nic {
    pb::Nic { network: n.network.clone(), mac: n.mac.to_string(), model: n.model.clone() }
}

/// A network's definition; its hosts' statuses are the API's to add.
pub fn network(state: &ClusterState, n: &Network) -> pb::NetworkInfo {
    let (uplink, vlan, vni) = match &n.kind {
        NetworkKind::Vlan { uplink, vlan } => (Some(uplink.clone()), Some(*vlan as u32), None),
        NetworkKind::Vxlan { vni } => (None, None, Some(*vni)),
        _ => (None, None, None),
    };
    let nics = state.vms.values().flat_map(|v| &v.spec.nics).filter(|x| x.network == n.name).count();
    pb::NetworkInfo {
        name: n.name.clone(),
        kind: n.kind.as_str().into(),
        bridge: n.bridge(),
        uplink,
        vlan,
        vni,
        mtu: n.mtu,
        required: n.required,
        hosts: Vec::new(),
        nics: nics as u32,
        created_at_ms: n.created_at_ms,
    }
}

pub fn policy(p: &PlacementSettings) -> pb::PlacementPolicy {
    pb::PlacementPolicy {
        policy: p.policy.as_str().into(),
        cpu_overcommit: p.cpu_overcommit(),
        memory_overcommit: p.memory_overcommit(),
        balance: p.balance,
    }
}

pub fn explanation(vm: &str, s: &PlacementSettings, evals: &[scheduler::Evaluation]) -> pb::Explanation {
    let nodes = evals
        .iter()
        .map(|e| match &e.outcome {
            Outcome::Rejected(r) => pb::NodeEvaluation {
                node: e.node.clone(),
                feasible: false,
                reason: r.to_string(),
                ..Default::default()
            },
            Outcome::Feasible(score) => pb::NodeEvaluation {
                node: e.node.clone(),
                feasible: true,
                reason: String::new(),
                score: score.total(),
                policy_score: score.policy,
                label_score: score.labels,
                group_score: score.spread_group,
                chosen: e.chosen,
            },
        })
        .collect();
    pb::Explanation {
        vm: vm.to_string(),
        policy: s.policy.as_str().into(),
        chosen: evals.iter().find(|e| e.chosen).map(|e| e.node.clone()),
        nodes,
    }
}

pub fn capacity(r: &scheduler::Reservation, s: &PlacementSettings) -> pb::CapacityReport {
    pb::CapacityReport {
        n_plus_1: r.n_plus_1,
        worst: r.worst.clone(),
        policy: s.policy.as_str().to_string(),
        hosts: r
            .hosts
            .iter()
            .map(|h| pb::HostCapacity {
                node: h.node.clone(),
                ha_vms: h.ha_vms as u32,
                ha_vcpus: h.ha_vcpus,
                ha_memory_mib: h.ha_memory_mib,
                unplaceable: h.unplaceable.clone(),
                short_vcpus: h.short_vcpus,
                short_memory_mib: h.short_memory_mib,
                // Heartbeat facts: the API adds them.
                fencing: String::new(),
            })
            .collect(),
    }
}
