//! The cluster's views: its Raft status, its hosts, its event log, the
//! placement policy and what the scheduler says about capacity, balance
//! and a placement.

use std::collections::BTreeMap;

use kvmesh_proto as pb;
use serde::Serialize;
use utoipa::ToSchema;

use crate::cli::output::node_state;

/// A Raft member as `cluster status` lists it.
#[derive(Serialize, ToSchema)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub address: String,
    /// voter, learner.
    pub role: String,
    /// The leader's view of this member's log (only the leader knows).
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
    pub reachable: Option<bool>,
    pub last_contact_ms: Option<u64>,
}

impl From<&pb::Member> for Member {
    fn from(m: &pb::Member) -> Self {
        Member {
            id: m.id,
            name: m.name.clone(),
            address: m.address.clone(),
            role: m.role.clone(),
            matched_index: m.matched_index,
            lag: m.lag,
            reachable: m.reachable,
            last_contact_ms: m.last_contact_ms,
        }
    }
}

/// The node that answered.
#[derive(Serialize, ToSchema)]
pub struct Answered {
    pub id: u64,
    pub name: String,
    /// leader, follower, candidate, learner.
    pub raft_state: String,
}

#[derive(Serialize, ToSchema)]
pub struct Leader {
    pub id: u64,
    pub name: String,
    pub address: String,
}

/// `cluster status`: who answered, who leads, the log's indexes.
#[derive(Serialize, ToSchema)]
pub struct Status {
    pub cluster_id: String,
    pub node: Answered,
    /// None during an election or without a quorum.
    pub leader: Option<Leader>,
    pub term: u64,
    pub commit_index: u64,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub max_voters: u32,
    pub version: String,
    pub members: Vec<Member>,
}

impl From<&pb::ClusterStatus> for Status {
    fn from(s: &pb::ClusterStatus) -> Self {
        Status {
            cluster_id: s.cluster_id.clone(),
            node: Answered { id: s.node_id, name: s.node_name.clone(), raft_state: s.raft_state.clone() },
            leader: s.leader.as_ref().map(|l| Leader { id: l.id, name: l.name.clone(), address: l.address.clone() }),
            term: s.term,
            commit_index: s.commit_index,
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            max_voters: s.max_voters,
            version: s.version.clone(),
            members: s.members.iter().map(Member::from).collect(),
        }
    }
}

/// A storage domain as one host sees it.
#[derive(Serialize, ToSchema)]
pub struct NodeStorage {
    pub domain: String,
    /// active, missing, error, …
    pub state: String,
    pub message: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// A network as one host has it.
#[derive(Serialize, ToSchema)]
pub struct NodeNetwork {
    pub network: String,
    pub state: String,
    pub message: String,
    pub mtu: u32,
}

/// A host: its size, what is placed on it and how it is.
#[derive(Serialize, ToSchema)]
pub struct Node {
    pub id: u64,
    pub name: String,
    pub address: String,
    /// up, down, draining, maintenance.
    pub state: String,
    /// voter, learner.
    pub role: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// VMs placed here.
    pub vms: u32,
    pub allocated_vcpus: u32,
    pub allocated_memory_mib: u64,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_age_ms: Option<u64>,
    pub running_vms: Option<u32>,
    pub running_vcpus: Option<u64>,
    pub running_memory_mib: Option<u64>,
    /// watchdog, guard-only, … (how a lost lease stops its guests).
    pub fencing: Option<String>,
    pub problem: Option<String>,
    pub reachable: Option<bool>,
    pub storage: Vec<NodeStorage>,
    pub networks: Vec<NodeNetwork>,
    /// Whether UEFI guests can run here (None: not reported yet).
    pub uefi: Option<bool>,
    /// Why not.
    pub uefi_missing: Option<String>,
}

impl From<&pb::NodeInfo> for Node {
    fn from(n: &pb::NodeInfo) -> Self {
        Node {
            id: n.id,
            name: n.name.clone(),
            address: n.address.clone(),
            state: node_state(n.state).into(),
            role: n.role.clone(),
            cpus: n.cpus,
            memory_mib: n.memory_mib,
            vms: n.vm_count,
            allocated_vcpus: n.allocated_vcpus,
            allocated_memory_mib: n.allocated_memory_mib,
            labels: super::sorted(&n.labels),
            heartbeat_age_ms: n.heartbeat_age_ms,
            running_vms: n.running_vms,
            running_vcpus: n.running_vcpus,
            running_memory_mib: n.running_memory_mib,
            fencing: n.fencing.clone(),
            problem: n.problem.clone(),
            reachable: n.reachable,
            storage: n
                .storage
                .iter()
                .map(|s| NodeStorage {
                    domain: s.domain.clone(),
                    state: s.state.clone(),
                    message: s.message.clone(),
                    free_bytes: s.free_bytes,
                    total_bytes: s.total_bytes,
                })
                .collect(),
            networks: n
                .networks
                .iter()
                .map(|s| NodeNetwork {
                    network: s.network.clone(),
                    state: s.state.clone(),
                    message: s.message.clone(),
                    mtu: s.mtu,
                })
                .collect(),
            uefi: n.uefi_missing.as_ref().map(|m| m.is_empty()),
            uefi_missing: n.uefi_missing.clone().filter(|m| !m.is_empty()),
        }
    }
}

/// What a drain or an activation left the host in.
#[derive(Serialize, ToSchema)]
pub struct NodeAction {
    pub node: String,
    pub state: String,
}

/// What an event is about.
#[derive(Serialize, ToSchema)]
pub struct Subject {
    /// vm, node, image, storage, cluster.
    pub kind: String,
    pub name: String,
}

/// One entry of the cluster's event log.
#[derive(Serialize, ToSchema)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    /// The same instant, RFC 3339 in UTC.
    pub time: String,
    pub kind: String,
    pub subject: Option<Subject>,
    /// The host it is about, if any.
    pub node: Option<String>,
    /// Who asked for it, for operators' actions.
    pub principal: Option<String>,
    pub message: String,
}

impl Event {
    /// `known`: the cluster's node names, to find the host a message names.
    pub fn new(e: &pb::Event, known: &[String]) -> Self {
        Event {
            seq: e.seq,
            at_ms: e.at_ms,
            time: crate::cli::output::format_ms(e.at_ms),
            kind: e.kind.clone(),
            subject: subject(e).map(|(kind, name)| Subject { kind: kind.into(), name: name.into() }),
            node: node_of(e, known).map(str::to_string),
            principal: (!e.by.is_empty()).then(|| e.by.clone()),
            message: e.message.clone(),
        }
    }
}

/// The subject an event is about: `("vm", "web1")`, `("node", "n2")`, …
/// Every event message starts with it (`vm web1: …`, `node n2 …`).
pub fn subject(e: &pb::Event) -> Option<(&str, &str)> {
    let mut words = e.message.split_whitespace();
    let kind = words.next()?;
    if !matches!(kind, "vm" | "node" | "image" | "storage" | "cluster") {
        return None;
    }
    let name = words.next()?.trim_end_matches([':', ',']);
    Some((kind, name))
}

/// The host an event is about: its subject for a node event, else the
/// first known node its message names ("vm web1 is running on n2").
pub fn node_of<'a>(e: &'a pb::Event, known: &[String]) -> Option<&'a str> {
    match subject(e) {
        Some(("node", name)) => Some(name),
        _ => e.message.split(|c: char| c.is_whitespace() || ",:()".contains(c)).find(|w| known.iter().any(|k| k == w)),
    }
}

/// The placement policy.
#[derive(Serialize, ToSchema)]
pub struct Policy {
    /// spread or pack.
    pub policy: String,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// Whether the leader moves VMs to even the hosts out by itself.
    pub balance: bool,
}

impl From<&pb::PlacementPolicy> for Policy {
    fn from(p: &pb::PlacementPolicy) -> Self {
        Policy {
            policy: p.policy.clone(),
            cpu_overcommit: p.cpu_overcommit,
            memory_overcommit: p.memory_overcommit,
            balance: p.balance,
        }
    }
}

/// What losing one host would mean for its HA VMs.
#[derive(Serialize, ToSchema)]
pub struct HostCapacity {
    pub node: String,
    pub ha_vms: u32,
    pub ha_vcpus: u64,
    pub ha_memory_mib: u64,
    /// HA VMs that could not restart elsewhere.
    pub unplaceable: Vec<String>,
    pub short_vcpus: u64,
    pub short_memory_mib: u64,
    pub fencing: String,
}

/// Whether the HA VMs of any one host could restart on the others (N+1).
#[derive(Serialize, ToSchema)]
pub struct Capacity {
    pub n_plus_1: bool,
    /// The host whose loss hurts most.
    pub worst: Option<String>,
    pub policy: String,
    pub hosts: Vec<HostCapacity>,
}

impl From<&pb::CapacityReport> for Capacity {
    fn from(r: &pb::CapacityReport) -> Self {
        Capacity {
            n_plus_1: r.n_plus_1,
            worst: r.worst.clone(),
            policy: r.policy.clone(),
            hosts: r
                .hosts
                .iter()
                .map(|h| HostCapacity {
                    node: h.node.clone(),
                    ha_vms: h.ha_vms,
                    ha_vcpus: h.ha_vcpus,
                    ha_memory_mib: h.ha_memory_mib,
                    unplaceable: h.unplaceable.clone(),
                    short_vcpus: h.short_vcpus,
                    short_memory_mib: h.short_memory_mib,
                    fencing: h.fencing.clone(),
                })
                .collect(),
        }
    }
}

/// One move a balance run made or would make.
#[derive(Serialize, ToSchema)]
pub struct BalanceMove {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub why: String,
    pub begun: bool,
    pub refused: Option<String>,
}

/// A balance run's moves.
#[derive(Serialize, ToSchema)]
#[serde(transparent)]
pub struct Balance(pub Vec<BalanceMove>);

impl From<&pb::BalanceReply> for Balance {
    fn from(r: &pb::BalanceReply) -> Self {
        Balance(
            r.moves
                .iter()
                .map(|m| BalanceMove {
                    vm: m.vm.clone(),
                    from: m.from.clone(),
                    to: m.to.clone(),
                    why: m.why.clone(),
                    begun: m.begun,
                    refused: (!m.refused.is_empty()).then(|| m.refused.clone()),
                })
                .collect(),
        )
    }
}

/// How the scheduler rated one host for a VM.
#[derive(Serialize, ToSchema)]
pub struct NodeEvaluation {
    pub node: String,
    pub feasible: bool,
    /// Why it was rejected.
    pub reason: String,
    pub score: f64,
    pub policy_score: f64,
    pub label_score: f64,
    pub group_score: f64,
    pub chosen: bool,
}

/// Where the scheduler would place a VM, and why.
#[derive(Serialize, ToSchema)]
pub struct Explanation {
    pub vm: String,
    pub policy: String,
    pub chosen: Option<String>,
    pub nodes: Vec<NodeEvaluation>,
}

impl From<&pb::Explanation> for Explanation {
    fn from(e: &pb::Explanation) -> Self {
        Explanation {
            vm: e.vm.clone(),
            policy: e.policy.clone(),
            chosen: e.chosen.clone(),
            nodes: e
                .nodes
                .iter()
                .map(|n| NodeEvaluation {
                    node: n.node.clone(),
                    feasible: n.feasible,
                    reason: n.reason.clone(),
                    score: n.score,
                    policy_score: n.policy_score,
                    label_score: n.label_score,
                    group_score: n.group_score,
                    chosen: n.chosen,
                })
                .collect(),
        }
    }
}
