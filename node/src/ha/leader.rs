//! The leader's side of HA, in memory and never written to Raft: the table
//! of heartbeats it received this term, what they say runs where
//! (`observed`), and which hosts it counts as live for new placements.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvmesh_proto as pb;
use kvmesh_proto::NOT_A_MEMBER;
use kvmesh_raft::model::{vm_id_hex, ClusterState, VmId, VmState};
use kvmesh_raft::view::HostFacts;
use kvmesh_raft::NodeId;
use kvmesh_scheduler::StorageState;
use tonic::Status;

use super::decide;
use crate::ctx::{forward, NodeCtx};
use crate::storage::probe;

/// One host's latest heartbeat, as the leader received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    /// (vm, epoch, running) for every kvmesh domain the host has.
    pub domains: Vec<(VmId, u64, bool)>,
    /// The host's applied index when it listed them.
    pub applied: u64,
    /// Its storage domains as it sees them.
    pub storage: Vec<pb::HostStorageStatus>,
    /// The cluster's networks as it sees them.
    pub networks: Vec<pb::HostNetworkStatus>,
    /// How it is fenced, and what it reports wrong ("" when healthy).
    pub fencing: String,
    pub problem: String,
    /// Why it cannot boot UEFI guests ("" when it can).
    pub uefi_missing: String,
}

/// The heartbeat table of one term; a new leader starts empty.
#[derive(Debug, Default)]
pub struct Heartbeats {
    pub term: u64,
    pub leader_since: Option<Instant>,
    pub seen: HashMap<NodeId, Seen>,
}

impl Heartbeats {
    /// Resets the table if this node has just become leader in `term`.
    pub fn for_term(&mut self, term: u64, now: Instant) {
        if self.term != term || self.leader_since.is_none() {
            self.term = term;
            self.leader_since = Some(now);
            self.seen.clear();
        }
    }

    /// How long each node has been silent, as this leader sees it.
    pub fn silent_for(&self, node: NodeId, now: Instant) -> Duration {
        let since = self.leader_since.unwrap_or(now);
        let last = self.seen.get(&node).map(|s| s.at.max(since)).unwrap_or(since);
        now.saturating_duration_since(last)
    }

    /// VM -> nodes whose heartbeat, received within `within`, reports it running.
    pub fn observed(&self, now: Instant, within: Duration) -> BTreeMap<VmId, BTreeSet<NodeId>> {
        let mut out: BTreeMap<VmId, BTreeSet<NodeId>> = BTreeMap::new();
        for (node, seen) in &self.seen {
            if now.saturating_duration_since(seen.at) > within {
                continue;
            }
            for (vm, _, running) in &seen.domains {
                if *running {
                    out.entry(*vm).or_default().insert(*node);
                }
            }
        }
        out
    }

    /// For each VM waiting for a disk lease, the host that likely holds it:
    /// one other than its placement whose latest heartbeat this term, of
    /// any age, listed it running (the most recent such). A host that died
    /// or whose daemon died says so no more, but its copy may still run.
    pub fn lease_holders(&self, state: &ClusterState) -> BTreeMap<VmId, NodeId> {
        let waiting = state.vms.values().filter(|v| {
            v.reported.as_ref().is_some_and(|r| r.state == VmState::WaitingForLease) && v.placement.is_some()
        });
        waiting
            .filter_map(|v| {
                let placed_on = v.placement.map(|p| p.node);
                let holder = self
                    .seen
                    .iter()
                    .filter(|(node, seen)| {
                        Some(**node) != placed_on && seen.domains.iter().any(|(vm, _, running)| *vm == v.id && *running)
                    })
                    .max_by_key(|(_, seen)| seen.at)?;
                Some((v.id, *holder.0))
            })
            .collect()
    }
}

/// A copy of what the leader has heard, taken at one instant.
pub struct Liveness {
    leads: bool,
    heard: Heartbeats,
    now: Instant,
    heartbeat: Duration,
}

impl Liveness {
    /// The most free space any responsive host reports on storage `domain`,
    /// and that host's name; `None` on a follower or before any report.
    pub fn most_free(&self, state: &ClusterState, domain: &str) -> Option<(u64, String)> {
        if !self.leads {
            return None;
        }
        let unresponsive = self.unresponsive(state);
        self.heard
            .seen
            .iter()
            .filter(|(id, _)| !unresponsive.contains(id))
            .flat_map(|(id, seen)| seen.storage.iter().map(move |s| (id, s)))
            .filter(|(_, s)| s.domain == domain && s.state == probe::ACTIVE && s.total_bytes > 0)
            .max_by_key(|(_, s)| s.free_bytes)
            .map(|(id, s)| (s.free_bytes, state.nodes.get(id).map(|n| n.name.clone()).unwrap_or_default()))
    }

    /// The `up` hosts this leader would not place anything new on: those it
    /// has not heard from within three heartbeats, or not at all this term.
    /// Empty on a follower, which places nothing.
    pub fn unresponsive(&self, state: &ClusterState) -> BTreeSet<NodeId> {
        if !self.leads {
            return BTreeSet::new();
        }
        decide::unresponsive(state, &self.heard, self.now, self.heartbeat * 3)
    }

    /// What the scheduler needs from heartbeats: the unresponsive and the
    /// impaired hosts, and each host's storage domains as it last reported
    /// them (a host silent for three heartbeats reports nothing usable).
    pub fn host_facts(&self, state: &ClusterState) -> HostFacts {
        let unresponsive = self.unresponsive(state);
        // A host whose libvirt or data disk does not answer still heartbeats
        // (so its guests are not restarted elsewhere) but takes nothing new.
        let impaired: BTreeSet<NodeId> = if self.leads {
            self.heard.seen.iter().filter(|(_, s)| !s.problem.is_empty()).map(|(id, _)| *id).collect()
        } else {
            BTreeSet::new()
        };
        let storage = self
            .heard
            .seen
            .iter()
            .filter(|(id, _)| !unresponsive.contains(id) && !impaired.contains(id))
            .map(|(id, seen)| {
                let domains = seen
                    .storage
                    .iter()
                    .map(|s| {
                        let state = if s.state == probe::ACTIVE {
                            StorageState::Active
                        } else if s.message.is_empty() {
                            StorageState::Unusable(s.state.clone())
                        } else {
                            StorageState::Unusable(format!("{} ({})", s.state, s.message))
                        };
                        (s.domain.clone(), state)
                    })
                    .collect();
                (*id, domains)
            })
            .collect();
        let storage_free = self
            .heard
            .seen
            .iter()
            .map(|(id, seen)| {
                let active = seen.storage.iter().filter(|s| s.state == probe::ACTIVE && s.total_bytes > 0);
                (*id, active.map(|s| (s.domain.clone(), s.free_bytes)).collect())
            })
            .collect();
        // A network counts as ready on a host only as its latest report
        // says; one not listed is "not reported yet" (see `views`).
        let networks = self
            .heard
            .seen
            .iter()
            .map(|(id, seen)| {
                let states = seen
                    .networks
                    .iter()
                    .map(|s| {
                        let state = if s.state == crate::netconf::READY {
                            Ok(())
                        } else {
                            Err(format!("{}: {}", s.state, s.message))
                        };
                        (s.network.clone(), state)
                    })
                    .collect();
                (*id, states)
            })
            .collect();
        let uefi_missing = self
            .heard
            .seen
            .iter()
            .filter(|(_, seen)| !seen.uefi_missing.is_empty())
            .map(|(id, seen)| (*id, seen.uefi_missing.clone()))
            .collect();
        HostFacts {
            unresponsive,
            impaired,
            storage: Some(storage),
            storage_free,
            networks: Some(networks),
            uefi_missing,
        }
    }

    /// Whether this leader is too new to have heard from every live host.
    pub fn is_new(&self) -> bool {
        self.heard.leader_since.is_none_or(|since| self.now.saturating_duration_since(since) < self.heartbeat * 3)
    }
}

/// The leader's HA memory, shared by the controller and the API.
pub struct LeaderView {
    pub table: Mutex<Heartbeats>,
    heartbeat: Duration,
    down_after: Duration,
    /// Whether this node leads, read fresh from Raft.
    leads: Box<dyn Fn() -> bool + Send + Sync>,
}

impl LeaderView {
    pub fn new(ctx: std::sync::Arc<NodeCtx>) -> Self {
        LeaderView {
            table: Mutex::new(Heartbeats::default()),
            heartbeat: Duration::from_millis(ctx.config.heartbeat_ms),
            down_after: Duration::from_millis(ctx.config.down_after_ms),
            leads: Box::new(move || ctx.is_leader()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Heartbeats> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What this leader has heard, copied out under the table's lock alone.
    /// Callers read the replicated state afterwards: the controller holds
    /// this lock while it reads the state, so taking them in the other order
    /// could deadlock behind a waiting writer.
    pub fn liveness(&self) -> Liveness {
        let leads = (self.leads)();
        let hb = self.table();
        let heard = Heartbeats {
            term: hb.term,
            leader_since: hb.leader_since,
            seen: hb
                .seen
                .iter()
                .map(|(id, s)| {
                    let seen = Seen {
                        at: s.at,
                        domains: Vec::new(),
                        applied: s.applied,
                        storage: s.storage.clone(),
                        networks: s.networks.clone(),
                        fencing: s.fencing.clone(),
                        problem: s.problem.clone(),
                        uefi_missing: s.uefi_missing.clone(),
                    };
                    (*id, seen)
                })
                .collect(),
        };
        Liveness { leads, heard, now: Instant::now(), heartbeat: self.heartbeat }
    }
    /// Leader side of `Host.Heartbeat`: confirm quorum, record, acknowledge,
    /// and name the domains the host must destroy.
    pub async fn receive(&self, ctx: &NodeCtx, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatAck, Status> {
        let m = ctx.metrics();
        if m.current_leader != Some(ctx.id) {
            return Err(Status::unavailable("not the leader"));
        }
        // Acknowledge only while a quorum still follows us: a deposed leader
        // must not extend anyone's lease.
        let read_index = match tokio::time::timeout(self.heartbeat, ctx.raft.ensure_linearizable()).await {
            Ok(Ok(read)) => read.map_or(0, |l| l.index),
            _ => return Err(Status::unavailable("cannot confirm this leader still holds a quorum")),
        };
        let mine = ctx.read(|d| d.state.cluster_id().unwrap_or_default().to_string());
        if req.cluster_id != mine {
            return Err(Status::failed_precondition(format!(
                "this leader's cluster is {mine}, not {}; a member's address now serves another cluster",
                req.cluster_id
            )));
        }
        // A node outside the membership was removed (or never joined): no
        // lease, and the answer tells it so. Checked after the quorum, so a
        // deposed leader's stale membership never turns anyone away.
        if ctx.metrics().membership_config.membership().get_node(&req.node_id).is_none() {
            return Err(Status::failed_precondition(format!(
                "{NOT_A_MEMBER}: node {} is not a member of this cluster",
                req.node_id
            )));
        }
        let domains: Vec<(VmId, u64, bool)> = req.domains.iter().map(|d| (d.vm_id, d.epoch, d.running)).collect();
        let stale = ctx.read(|d| decide::stale(&d.state, req.node_id, &domains));
        {
            let now = Instant::now();
            let mut hb = self.table();
            hb.for_term(m.current_term, now);
            let seen = Seen {
                at: now,
                domains,
                applied: req.applied_index,
                storage: req.storage,
                networks: req.networks,
                fencing: req.fencing,
                problem: req.problem,
                uefi_missing: req.uefi_missing,
            };
            hb.seen.insert(req.node_id, seen);
        }
        Ok(pb::HeartbeatAck { leader_id: ctx.id, term: m.current_term, stale, read_index })
    }

    /// The observed map, with node names, for `vm get`/`vm list`/`node list`.
    pub fn observed_pb(&self, ctx: &NodeCtx) -> pb::ObservedReply {
        let now = Instant::now();
        let hb = self.table();
        let observed = hb.observed(now, self.down_after);
        ctx.read(|d| {
            let name = |id: &NodeId| d.state.nodes.get(id).map(|n| n.name.clone()).unwrap_or_else(|| id.to_string());
            let usage = |seen: &Seen| {
                seen.domains
                    .iter()
                    .filter(|x| x.2)
                    .filter_map(|(vm, _, _)| d.state.vms.get(vm))
                    .fold((0, 0), |(c, m), v| (c + v.spec.vcpus as u64, m + v.spec.memory_mib))
            };
            pb::ObservedReply {
                vms: observed
                    .iter()
                    .map(|(vm, nodes)| pb::ObservedVm {
                        vm_id: vm_id_hex(*vm),
                        nodes: nodes.iter().map(name).collect(),
                    })
                    .collect(),
                heartbeat_age_ms: d
                    .state
                    .nodes
                    .keys()
                    .map(|id| (name(id), hb.silent_for(*id, now).as_millis() as u64))
                    .collect(),
                running_vms: hb
                    .seen
                    .iter()
                    .map(|(id, s)| (name(id), s.domains.iter().filter(|d| d.2).count() as u32))
                    .collect(),
                running_vcpus: hb.seen.iter().map(|(id, s)| (name(id), usage(s).0)).collect(),
                running_memory_mib: hb.seen.iter().map(|(id, s)| (name(id), usage(s).1)).collect(),
                storage: hb
                    .seen
                    .values()
                    .filter(|s| now.saturating_duration_since(s.at) <= self.down_after)
                    .flat_map(|s| s.storage.iter().cloned())
                    .collect(),
                networks: hb
                    .seen
                    .values()
                    .filter(|s| now.saturating_duration_since(s.at) <= self.down_after)
                    .flat_map(|s| s.networks.iter().cloned())
                    .collect(),
                fencing: hb.seen.iter().map(|(id, s)| (name(id), s.fencing.clone())).collect(),
                uefi_missing: hb
                    .seen
                    .iter()
                    .filter(|(_, s)| !s.uefi_missing.is_empty())
                    .map(|(id, s)| (name(id), s.uefi_missing.clone()))
                    .collect(),
                problem: hb
                    .seen
                    .iter()
                    .filter(|(_, s)| !s.problem.is_empty())
                    .map(|(id, s)| (name(id), s.problem.clone()))
                    .collect(),
                lease_holder: hb
                    .lease_holders(&d.state)
                    .into_iter()
                    .map(|(vm, node)| (vm_id_hex(vm), name(&node)))
                    .collect(),
            }
        })
    }

    /// The leader's observed map, from any node (followers ask the leader).
    pub async fn observed(&self, ctx: &NodeCtx) -> Option<pb::ObservedReply> {
        match ctx.leader() {
            Some((leader, _)) if leader == ctx.id => Some(self.observed_pb(ctx)),
            Some((_, address)) => {
                let mut client = pb::host_client::HostClient::new(ctx.channel(&address).ok()?);
                let call = client.observed(forward(pb::ObservedRequest {}, Duration::from_millis(800)));
                tokio::time::timeout(Duration::from_secs(1), call).await.ok()?.ok().map(|r| r.into_inner())
            }
            None => None,
        }
    }
}
