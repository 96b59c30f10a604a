//! Feasibility: each rule either passes a node or says why not.

use serde::{Deserialize, Serialize};

use crate::model::{NodeState, NodeView, Settings, StorageState, VmRequest};

/// Why one node cannot take the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    NotUp {
        state: String,
    },
    NotPinned {
        pin: String,
    },
    MissingLabel {
        key: String,
        want: String,
        have: Option<String>,
    },
    InsufficientCpu {
        need: u64,
        free: u64,
    },
    InsufficientMemory {
        need_mib: u64,
        free_mib: u64,
    },
    AntiAffinity {
        group: String,
        members: u32,
    },
    Affinity {
        group: String,
    },
    StorageMissing {
        domain: String,
    },
    StorageUnusable {
        domain: String,
        why: String,
    },
    LocalVolumes {
        host: String,
    },
    /// One guest with more vCPUs than the host has CPUs: its vCPUs would
    /// contend with each other on every host, whatever the overcommit.
    /// (Last: variants keep their wire index.)
    MoreVcpusThanHost {
        vcpus: u32,
        cpus: u32,
    },
    /// The VM's new disks need more than the domain has free on this host.
    StorageTooSmall {
        domain: String,
        need_bytes: u64,
        free_bytes: u64,
    },
    /// A network of its NICs is not ready on the host.
    NetworkNotReady {
        network: String,
        why: String,
    },
    /// A required network is not ready on the host: it takes no new VMs.
    RequiredNetworkNotReady {
        network: String,
        why: String,
    },
    /// The VM boots UEFI and the host has no UEFI firmware.
    NoUefiFirmware {
        why: String,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NotUp { state } => write!(f, "node is {state}"),
            Rejection::NotPinned { pin } => write!(f, "VM is pinned to {pin}"),
            Rejection::MissingLabel { key, want, have: None } => write!(f, "missing label {key}={want}"),
            Rejection::MissingLabel { key, want, have: Some(have) } => {
                write!(f, "label {key}={have}, VM requires {key}={want}")
            }
            Rejection::InsufficientCpu { need, free } => {
                write!(f, "insufficient vCPUs (need {need}, free {free} after overcommit)")
            }
            Rejection::StorageTooSmall { domain, need_bytes, free_bytes } => write!(
                f,
                "storage {domain} has {:.1} GiB free here; the VM's new disks need {:.1} GiB",
                *free_bytes as f64 / GIB,
                *need_bytes as f64 / GIB
            ),
            Rejection::MoreVcpusThanHost { vcpus, cpus } => {
                write!(f, "the VM has {vcpus} vCPUs, more than this host's {cpus} CPUs (a guest gets at most its host's CPU count)")
            }
            Rejection::InsufficientMemory { need_mib, free_mib } => {
                write!(f, "insufficient memory (need {need_mib} MiB, free {free_mib} MiB)")
            }
            Rejection::AntiAffinity { group, members } => {
                write!(f, "anti-affinity group {group} already has {members} VM(s) here")
            }
            Rejection::Affinity { group } => write!(f, "affinity group {group} runs on other nodes"),
            Rejection::NetworkNotReady { network, why } => write!(f, "network {network} is not ready here: {why}"),
            Rejection::RequiredNetworkNotReady { network, why } => {
                write!(f, "required network {network} is not ready here ({why}), so this host takes no new VMs")
            }
            Rejection::NoUefiFirmware { why } => write!(f, "the VM boots UEFI and this host cannot: {why}"),
            Rejection::StorageMissing { domain } => write!(f, "storage {domain} is not available on this node"),
            Rejection::StorageUnusable { domain, why } => write!(f, "storage {domain} is {why} here"),
            Rejection::LocalVolumes { host } => write!(f, "its disks are on local storage of {host}"),
        }
    }
}

/// Facts about the whole cluster that single-node rules need.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterFacts {
    /// Some member of the VM's affinity group is already placed somewhere.
    pub affinity_placed: bool,
}

impl ClusterFacts {
    pub fn new(affinity_placed: bool) -> Self {
        ClusterFacts { affinity_placed }
    }

    pub fn of(nodes: &[NodeView], vm: &VmRequest) -> Self {
        let affinity_placed = vm.affinity.as_deref().is_some_and(|g| nodes.iter().any(|n| n.group_count(g) > 0));
        ClusterFacts { affinity_placed }
    }
}

/// A node's capacity after overcommit, computed once per decision.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub vcpus: u64,
    pub memory_mib: u64,
}

/// The rules only new decisions take (placements, moves), never `apply`,
/// which re-checks with [`check`] alone: a rule added here cannot make a
/// replica that replays an old log entry refuse what others accepted.
///
/// Free space, too, is a fact of the moment that only the leader has (from
/// heartbeats), never something `apply` could re-check.
pub fn admits(node: &NodeView, vm: &VmRequest) -> Result<(), Rejection> {
    if vm.vcpus > node.cpus {
        return Err(Rejection::MoreVcpusThanHost { vcpus: vm.vcpus, cpus: node.cpus });
    }
    if let Some((network, down)) = node.networks_down.iter().find(|(_, d)| d.required) {
        return Err(Rejection::RequiredNetworkNotReady { network: network.clone(), why: down.why.clone() });
    }
    for network in &vm.networks {
        if let Some(down) = node.networks_down.get(network) {
            return Err(Rejection::NetworkNotReady { network: network.clone(), why: down.why.clone() });
        }
    }
    if let Some(why) = node.uefi_missing.as_ref().filter(|_| vm.uefi) {
        return Err(Rejection::NoUefiFirmware { why: why.clone() });
    }
    for (domain, need) in &vm.new_disk_bytes {
        if let Some(free) = node.storage_free.get(domain).filter(|free| need > *free) {
            return Err(Rejection::StorageTooSmall { domain: domain.clone(), need_bytes: *need, free_bytes: *free });
        }
    }
    Ok(())
}

const GIB: f64 = (1u64 << 30) as f64;

/// Runs every rule in order; the first that fails is the reason.
pub fn check(node: &NodeView, vm: &VmRequest, s: &Settings, facts: ClusterFacts) -> Result<(), Rejection> {
    check_capacity(node, vm, s, facts).map(|_| ())
}

/// The capacity rule, the one both the scheduler and `apply` use: the VM's
/// vCPUs and memory fit in what the node has left after overcommit. Integer
/// arithmetic only, so every replica agrees with the leader to the unit.
pub fn fits(node: &NodeView, vm: &VmRequest, s: &Settings) -> Result<Capacity, Rejection> {
    let cap = Capacity { vcpus: node.vcpu_capacity(s), memory_mib: node.memory_capacity(s) };
    let free_cpu = cap.vcpus.saturating_sub(node.allocated_vcpus);
    if vm.vcpus as u64 > free_cpu {
        return Err(Rejection::InsufficientCpu { need: vm.vcpus as u64, free: free_cpu });
    }
    let free_mem = cap.memory_mib.saturating_sub(node.allocated_memory_mib);
    if vm.memory_mib > free_mem {
        return Err(Rejection::InsufficientMemory { need_mib: vm.memory_mib, free_mib: free_mem });
    }
    Ok(cap)
}

/// [`check`], returning the node's capacity for scoring.
pub fn check_capacity(
    node: &NodeView,
    vm: &VmRequest,
    s: &Settings,
    facts: ClusterFacts,
) -> Result<Capacity, Rejection> {
    if node.state != NodeState::Up {
        return Err(Rejection::NotUp { state: node.state.as_str().to_string() });
    }
    if let Some(pin) = &vm.pin {
        if *pin != node.name {
            return Err(Rejection::NotPinned { pin: pin.clone() });
        }
    }
    for (key, want) in &vm.required_labels {
        let have = node.labels.get(key);
        if have != Some(want) {
            return Err(Rejection::MissingLabel { key: key.clone(), want: want.clone(), have: have.cloned() });
        }
    }
    if let Some(host) = &vm.volumes_on {
        if *host != node.name {
            return Err(Rejection::LocalVolumes { host: host.clone() });
        }
    }
    for domain in &vm.storage {
        match node.storage.get(domain) {
            None => return Err(Rejection::StorageMissing { domain: domain.clone() }),
            Some(StorageState::Unusable(why)) => {
                return Err(Rejection::StorageUnusable { domain: domain.clone(), why: why.clone() })
            }
            Some(StorageState::Active) => {}
        }
    }
    let cap = fits(node, vm, s)?;
    if let Some(group) = &vm.anti_affinity {
        let members = node.group_count(group);
        if members > 0 {
            return Err(Rejection::AntiAffinity { group: group.clone(), members });
        }
    }
    if let Some(group) = &vm.affinity {
        if facts.affinity_placed && node.group_count(group) == 0 {
            return Err(Rejection::Affinity { group: group.clone() });
        }
    }
    Ok(cap)
}
