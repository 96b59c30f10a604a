//! HA: heartbeats, failure detection, self-fencing, HA restarts and
//! maintenance.
//!
//! ```text
//!  every host: heartbeat loop ──Heartbeat{domains}──▶ leader
//!              (fence first if its lease ran out)      │ ensure_linearizable (still has quorum?)
//!              lease = send time of the latest ack ◀───┘ ack {stale domains to destroy}
//!  leader: controller loop (every 250 ms)
//!     silent > down_after ─▶ NodeDown (HA VMs unplaced)     new leader: waits down_after first
//!     unplaced & nobody runs it ─▶ plan_restarts ─▶ PlaceVm (new epoch) / SetPending(reason)
//!     drained & empty ─▶ Maintenance; back & clean ─▶ NodeUp; dead voter ─▶ promote a learner
//! ```
//!
//! Safety (DESIGN.md): a host destroys its HA domains once its last
//! acknowledged heartbeat was *sent* more than fence_after ago; the leader
//! declares it down only after down_after (> fence_after + 2 heartbeats)
//! since it last *received* one; so the host has fenced itself before its
//! HA VMs are placed elsewhere. The pure decisions are in [`decide`].

pub mod controller;
pub mod decide;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_proto as pb;
use kvmesh_raft::model::{domain_name, parse_vm_id, vm_id_hex, VmId};
use kvmesh_raft::NodeId;
use tonic::Status;
use tracing::{info, warn};

use crate::ctx::{forward, NodeCtx};
use crate::hypervisor::{blocking, RunState};

/// One host's latest heartbeat, as the leader received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    /// (vm, epoch, running) for every kvmesh domain the host has.
    pub domains: Vec<(VmId, u64, bool)>,
}

/// The leader's in-memory heartbeat table; never written to Raft.
#[derive(Debug, Default)]
pub struct Heartbeats {
    /// The term this table belongs to; a new leader starts empty.
    pub term: u64,
    pub leader_since: Option<Instant>,
    pub seen: HashMap<NodeId, Seen>,
}

impl Heartbeats {
    /// Resets the table if this node has just become leader in `term`.
    pub fn for_term(&mut self, term: u64) {
        if self.term != term || self.leader_since.is_none() {
            self.term = term;
            self.leader_since = Some(Instant::now());
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
}

/// Nodes this leader has not heard from for three heartbeats (empty on a
/// follower, or while this leader is too new to know).
pub fn unresponsive(ctx: &NodeCtx) -> BTreeSet<NodeId> {
    let limit = Duration::from_millis(ctx.config.heartbeat_ms * 3);
    let hb = ctx.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
    if hb.leader_since.is_none() || ctx.leader().map(|l| l.0) != Some(ctx.id) {
        return BTreeSet::new();
    }
    let now = Instant::now();
    ctx.read(|d| d.state.nodes.keys().copied().filter(|id| hb.silent_for(*id, now) > limit).collect())
}

/// Leader side of `Host.Heartbeat`: confirm quorum, record, acknowledge, and
/// name the domains the host must destroy.
pub async fn receive(ctx: &NodeCtx, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatAck, Status> {
    let m = ctx.metrics();
    if m.current_leader != Some(ctx.id) {
        return Err(Status::unavailable("not the leader"));
    }
    // Acknowledge only while a quorum still follows us: a deposed leader
    // must not extend anyone's lease.
    match tokio::time::timeout(Duration::from_millis(ctx.config.heartbeat_ms), ctx.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {}
        _ => return Err(Status::unavailable("cannot confirm this leader still holds a quorum")),
    }
    let domains: Vec<(VmId, u64, bool)> =
        req.domains.iter().filter_map(|d| Some((parse_vm_id(&d.vm_id)?, d.epoch, d.running))).collect();
    let stale = ctx.read(|d| decide::stale(&d.state, req.node_id, &domains));
    {
        let mut hb = ctx.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        hb.for_term(m.current_term);
        hb.seen.insert(req.node_id, Seen { at: Instant::now(), domains });
    }
    Ok(pb::HeartbeatAck { leader_id: ctx.id, term: m.current_term, stale: stale.into_iter().map(vm_id_hex).collect() })
}

/// Destroys this host's running HA domains (self-fencing).
async fn fence(ctx: &Arc<NodeCtx>) {
    let ha: BTreeSet<VmId> = ctx.read(|d| d.state.vms.values().filter(|v| v.spec.ha).map(|v| v.id).collect());
    let Ok(domains) = blocking(&ctx.hypervisor, |hv| hv.list()).await else { return };
    for d in domains.into_iter().filter(|d| d.state == RunState::Running) {
        // Unknown VMs count as HA: when in doubt, do not run it.
        if ha.contains(&d.vm_id) || !ctx.read(|s| s.state.vms.contains_key(&d.vm_id)) {
            warn!(domain = %d.name, "fencing: no heartbeat acknowledged within fence_after; destroying HA domain");
            let name = d.name.clone();
            if let Err(e) = blocking(&ctx.hypervisor, move |hv| hv.destroy(&name)).await {
                warn!(error = %e, "fencing destroy failed");
            }
        }
    }
}

/// Every host: heartbeat the leader; fence first whenever the lease ran out.
pub async fn heartbeat_loop(ctx: Arc<NodeCtx>) {
    let every = Duration::from_millis(ctx.config.heartbeat_ms);
    let mut was_fenced = false;
    loop {
        let registered = ctx.read(|d| d.state.nodes.contains_key(&ctx.id));
        if registered {
            if ctx.fenced() && !cfg!(feature = "unsafe-no-fencing") {
                if !was_fenced {
                    warn!("lease expired or not yet granted: fencing HA domains until a heartbeat is acknowledged");
                }
                was_fenced = true;
                fence(&ctx).await;
            }
            let sent = Instant::now();
            match send(&ctx, every).await {
                Ok(ack) => {
                    for vm in ack.stale.iter().filter_map(|v| parse_vm_id(v)) {
                        let name = domain_name(vm);
                        warn!(domain = %name, "leader reports this domain stale (placed elsewhere now); destroying");
                        let n = name.clone();
                        let _ = blocking(&ctx.hypervisor, move |hv| hv.destroy(&n)).await;
                    }
                    let mut lease = ctx.lease.lock().unwrap_or_else(|p| p.into_inner());
                    *lease = Some(lease.map_or(sent, |l| l.max(sent)));
                    if was_fenced {
                        info!("heartbeat acknowledged again: lease restored");
                        was_fenced = false;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat not acknowledged"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn send(ctx: &Arc<NodeCtx>, timeout: Duration) -> Result<pb::HeartbeatAck, Status> {
    let domains = blocking(&ctx.hypervisor, |hv| hv.list()).await.map_err(Status::from)?;
    let req = pb::HeartbeatRequest {
        node_id: ctx.id,
        domains: domains
            .iter()
            .map(|d| pb::RunningDomain {
                vm_id: vm_id_hex(d.vm_id),
                epoch: d.epoch,
                running: d.state == RunState::Running,
            })
            .collect(),
    };
    match ctx.leader() {
        Some((leader, _)) if leader == ctx.id => receive(ctx, req).await,
        Some((_, address)) => {
            let mut client = pb::host_client::HostClient::new(ctx.channel(&address).map_err(Status::from)?);
            let r = tokio::time::timeout(timeout, client.heartbeat(forward(req, timeout))).await;
            match r {
                Ok(r) => r.map(|r| r.into_inner()),
                Err(_) => Err(Status::deadline_exceeded("heartbeat timed out")),
            }
        }
        None => Err(Status::unavailable("no leader")),
    }
}

/// The leader's observed map, with node names, for `vm get`/`vm list`.
pub fn observed_pb(ctx: &NodeCtx) -> pb::ObservedReply {
    let now = Instant::now();
    let hb = ctx.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
    let within = Duration::from_millis(ctx.config.down_after_ms);
    let observed = hb.observed(now, within);
    ctx.read(|d| {
        let name = |id: &NodeId| d.state.nodes.get(id).map(|n| n.name.clone()).unwrap_or_else(|| id.to_string());
        pb::ObservedReply {
            vms: observed
                .iter()
                .map(|(vm, nodes)| pb::ObservedVm { vm_id: vm_id_hex(*vm), nodes: nodes.iter().map(name).collect() })
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
            running_vcpus: hb.seen.iter().map(|(id, s)| (name(id), usage(d, s).0)).collect(),
            running_memory_mib: hb.seen.iter().map(|(id, s)| (name(id), usage(d, s).1)).collect(),
        }
    })
}

/// vCPUs and memory of the guests a heartbeat reports running.
fn usage(d: &kvmesh_raft::store::SmData, seen: &Seen) -> (u64, u64) {
    seen.domains
        .iter()
        .filter(|x| x.2)
        .filter_map(|(vm, _, _)| d.state.vms.get(vm))
        .fold((0, 0), |(c, m), v| (c + v.spec.vcpus as u64, m + v.spec.memory_mib))
}

/// The leader's observed map, from any node (followers ask the leader).
pub async fn observed(ctx: &NodeCtx) -> Option<pb::ObservedReply> {
    match ctx.leader() {
        Some((leader, _)) if leader == ctx.id => Some(observed_pb(ctx)),
        Some((_, address)) => {
            let mut client = pb::host_client::HostClient::new(ctx.channel(&address).ok()?);
            let call = client.observed(forward(pb::ObservedRequest {}, Duration::from_millis(800)));
            tokio::time::timeout(Duration::from_secs(1), call).await.ok()?.ok().map(|r| r.into_inner())
        }
        None => None,
    }
}
