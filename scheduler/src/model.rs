//! The scheduler's own input types: what it needs of nodes and VMs, nothing more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How free capacity is valued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// Most free resources wins: VMs spread out (the default).
    #[default]
    Spread,
    /// Fullest node that fits wins: fewest hosts in use.
    Pack,
    /// Keeps each node's CPU and memory use even.
    Balanced,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Spread => "spread",
            Policy::Pack => "pack",
            Policy::Balanced => "balanced",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "spread" => Ok(Policy::Spread),
            "pack" => Ok(Policy::Pack),
            "balanced" => Ok(Policy::Balanced),
            other => Err(Error::UnknownPolicy(other.to_string())),
        }
    }
}

/// Cluster-wide placement settings, as the replicated state keeps them.
///
/// Overcommit ratios are integers in thousandths (4000 = 4.0 vCPUs per CPU),
/// so the capacity rule is integer arithmetic that every replica and the
/// leader's scheduler compute identically (see [`crate::fits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub policy: Policy,
    /// vCPUs placed per physical CPU, in thousandths. Default 4000 (4.0).
    pub cpu_overcommit_milli: u32,
    /// Memory placed per MiB of RAM, in thousandths. Default 1000 (no overcommit).
    pub memory_overcommit_milli: u32,
    /// The leader evens the hosts out on its own, now and then (what
    /// `cluster balance` does when asked). Off by default.
    pub balance: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { policy: Policy::Spread, cpu_overcommit_milli: 4000, memory_overcommit_milli: 1000, balance: false }
    }
}

/// The overcommit ratios accepted, in thousandths: 0.1 to 100.
pub const OVERCOMMIT_MILLI: std::ops::RangeInclusive<u32> = 100..=100_000;

impl Settings {
    /// Settings from ratios as operators write them (`--cpu-overcommit 4.0`),
    /// rounded to thousandths and checked.
    pub fn with_ratios(policy: Policy, cpu: f64, memory: f64) -> Result<Self> {
        let milli = |name: &'static str, value: f64| -> Result<u32> {
            let m = (value * 1000.0).round();
            if !(m >= *OVERCOMMIT_MILLI.start() as f64 && m <= *OVERCOMMIT_MILLI.end() as f64) {
                return Err(Error::BadOvercommit { name, value });
            }
            Ok(m as u32)
        };
        Ok(Settings {
            policy,
            cpu_overcommit_milli: milli("cpu", cpu)?,
            memory_overcommit_milli: milli("memory", memory)?,
            balance: false,
        })
    }

    pub fn validate(&self) -> Result<()> {
        for (name, milli) in [("cpu", self.cpu_overcommit_milli), ("memory", self.memory_overcommit_milli)] {
            if !OVERCOMMIT_MILLI.contains(&milli) {
                return Err(Error::BadOvercommit { name, value: milli as f64 / 1000.0 });
            }
        }
        Ok(())
    }

    pub fn cpu_overcommit(&self) -> f64 {
        self.cpu_overcommit_milli as f64 / 1000.0
    }

    pub fn memory_overcommit(&self) -> f64 {
        self.memory_overcommit_milli as f64 / 1000.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Up,
    Down,
    Draining,
    Maintenance,
    /// Up in the replicated state, but the leader has not heard from it for
    /// several heartbeats: place nothing new there.
    Unresponsive,
    /// Heartbeating, but its hypervisor or data disk does not answer: its
    /// guests stay where they are, nothing new goes there.
    Impaired,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
            NodeState::Maintenance => "maintenance",
            NodeState::Unresponsive => "unresponsive (no recent heartbeat)",
            NodeState::Impaired => "impaired (its libvirt or data disk does not answer; see `node list`)",
        }
    }
}

/// What the scheduler needs to know about one host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u64,
    pub name: String,
    pub state: NodeState,
    pub cpus: u32,
    pub memory_mib: u64,
    pub labels: BTreeMap<String, String>,
    /// vCPUs already placed on this node.
    pub allocated_vcpus: u64,
    /// Memory already placed on this node.
    pub allocated_memory_mib: u64,
    /// VMs per group (anti-affinity, soft anti-affinity and affinity groups
    /// share one namespace) placed on this node.
    pub groups: BTreeMap<String, u32>,
    /// The storage domains this node has, and whether each is usable here
    /// now. A domain not listed is not available on this node at all.
    pub storage: BTreeMap<String, StorageState>,
    /// Free bytes on each domain as the host last reported them (the
    /// leader's heartbeats); a domain not listed: not known.
    pub storage_free: BTreeMap<String, u64>,
    /// The cluster's networks that are not ready on this host, with why
    /// and whether the network is required (as the leader heard from the
    /// host). Empty when not known: only new decisions read it.
    pub networks_down: BTreeMap<String, NetworkDown>,
    /// Why this host cannot boot UEFI guests (no OVMF), as the leader heard
    /// from it; `None` when it can or when not known.
    pub uefi_missing: Option<String>,
}

/// A network a host cannot give guests now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDown {
    /// Every host must have it: a host without it takes no new VMs.
    pub required: bool,
    /// "unsupported: ...", "error: ...", "not reported yet".
    pub why: String,
}

/// A storage domain on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageState {
    Active,
    /// Configured for the host but not usable there now, with why
    /// ("not-shared", "missing: ...", "no status reported yet").
    Unusable(String),
}

impl NodeView {
    /// A node with nothing placed on it.
    pub fn new(id: u64, name: &str, cpus: u32, memory_mib: u64) -> Self {
        NodeView {
            id,
            name: name.to_string(),
            state: NodeState::Up,
            cpus,
            memory_mib,
            labels: BTreeMap::new(),
            allocated_vcpus: 0,
            allocated_memory_mib: 0,
            groups: BTreeMap::new(),
            storage: BTreeMap::new(),
            storage_free: BTreeMap::new(),
            networks_down: BTreeMap::new(),
            uefi_missing: None,
        }
    }

    /// vCPUs that may be placed here in all, after overcommit.
    pub fn vcpu_capacity(&self, s: &Settings) -> u64 {
        self.cpus as u64 * s.cpu_overcommit_milli as u64 / 1000
    }

    /// Memory that may be placed here in all, after overcommit.
    pub fn memory_capacity(&self, s: &Settings) -> u64 {
        // u128: 2^64 MiB times 100000 must not wrap.
        (self.memory_mib as u128 * s.memory_overcommit_milli as u128 / 1000).min(u64::MAX as u128) as u64
    }

    pub fn free_vcpus(&self, s: &Settings) -> u64 {
        self.vcpu_capacity(s).saturating_sub(self.allocated_vcpus)
    }

    pub fn free_memory_mib(&self, s: &Settings) -> u64 {
        self.memory_capacity(s).saturating_sub(self.allocated_memory_mib)
    }

    pub fn group_count(&self, group: &str) -> u32 {
        self.groups.get(group).copied().unwrap_or(0)
    }

    /// Records a VM as placed here (used when planning several at once).
    pub fn reserve(&mut self, vm: &VmRequest) {
        self.reserve_placed(vm.vcpus, vm.memory_mib, [&vm.anti_affinity, &vm.soft_anti_affinity, &vm.affinity]);
    }

    /// [`NodeView::reserve`] from a VM's parts: a view of thousands of
    /// placed VMs is built without a [`VmRequest`] (and its allocations)
    /// per VM.
    pub fn reserve_placed(&mut self, vcpus: u32, memory_mib: u64, groups: [&Option<String>; 3]) {
        self.allocated_vcpus = self.allocated_vcpus.saturating_add(vcpus as u64);
        self.allocated_memory_mib = self.allocated_memory_mib.saturating_add(memory_mib);
        for g in distinct_groups(groups) {
            match self.groups.get_mut(g) {
                Some(n) => *n += 1,
                None => {
                    self.groups.insert(g.to_string(), 1);
                }
            }
        }
    }
}

/// The VM to place and its constraints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRequest {
    /// Seeds the tie-break, so the same VM always breaks ties the same way.
    pub id: u64,
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Higher restarts first in `plan_restarts`.
    pub priority: i32,
    /// Only nodes with a node named so.
    pub pin: Option<String>,
    /// Only nodes carrying all these labels.
    pub required_labels: BTreeMap<String, String>,
    /// Nodes carrying these labels score higher.
    pub preferred_labels: BTreeMap<String, String>,
    /// Hard: never on a node that runs another member of this group.
    pub anti_affinity: Option<String>,
    /// Soft: nodes with members of this group score lower.
    pub soft_anti_affinity: Option<String>,
    /// Hard: on a node with other members of this group, once one is placed.
    pub affinity: Option<String>,
    /// Storage domains its disks and images live on: each must be active.
    pub storage: Vec<String>,
    /// Its volumes live on this host alone (a `local` domain): only there.
    pub volumes_on: Option<String>,
    /// Bytes its blank disks not created yet take on each domain (a
    /// clone of an image starts thin and is not counted).
    pub new_disk_bytes: BTreeMap<String, u64>,
    /// Networks its NICs are on: each must be ready on the host.
    pub networks: Vec<String>,
    /// It boots UEFI firmware: only on hosts that have OVMF.
    pub uefi: bool,
}

impl VmRequest {
    pub fn new(id: u64, name: &str, vcpus: u32, memory_mib: u64) -> Self {
        VmRequest { id, name: name.to_string(), vcpus, memory_mib, ..Default::default() }
    }

    /// Rejects requests that can never be placed meaningfully.
    pub fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.memory_mib == 0 {
            return Err(Error::EmptyRequest { vcpus: self.vcpus, memory_mib: self.memory_mib });
        }
        Ok(())
    }

    /// The groups this VM counts in.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        distinct_groups([&self.anti_affinity, &self.soft_anti_affinity, &self.affinity])
    }
}

/// The groups a VM belongs to, each once.
fn distinct_groups<'a>(groups: [&'a Option<String>; 3]) -> impl Iterator<Item = &'a str> {
    let mut seen: [Option<&str>; 3] = [None; 3];
    for (i, g) in groups.into_iter().flatten().enumerate() {
        if !seen.contains(&Some(g.as_str())) {
            seen[i] = Some(g.as_str());
        }
    }
    seen.into_iter().flatten()
}
