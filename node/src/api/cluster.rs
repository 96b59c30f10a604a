//! The `Cluster` gRPC service: init, status, join, remove, nodes and events.

use std::sync::Arc;
use std::time::Duration;

use kvmesh_proto as pb;
use kvmesh_proto::cluster_client::ClusterClient;
use kvmesh_raft::store::SmData;
use kvmesh_raft::types::RaftMetrics;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::membership;
use crate::ctx::{forward, is_forwarded, now_ms, LeaderCall, NodeCtx};
use crate::ha::LeaderView;
use kvmesh_raft::command::{Command, Response as CmdResponse};
use kvmesh_raft::model::{ClusterState, NodeState};
use kvmesh_raft::wire::{from_pb, to_pb};
use tonic::transport::Channel;

pub struct ClusterService {
    ctx: Arc<NodeCtx>,
    leader: Arc<LeaderView>,
}

impl ClusterService {
    pub fn new(ctx: Arc<NodeCtx>, leader: Arc<LeaderView>) -> Self {
        ClusterService { ctx, leader }
    }
}

/// The leader-only requests of this service, each forwarded to the same RPC.
#[derive(Clone)]
struct Join(pb::JoinRequest);
#[derive(Clone)]
struct Remove(pb::RemoveRequest);
#[derive(Clone)]
struct ConsistentNodes(pb::ListNodesRequest);
#[derive(Clone)]
struct UpdateAddress(pb::UpdateAddressRequest);
#[derive(Clone)]
struct Enroll(pb::EnrollRequest);

impl LeaderCall for Enroll {
    type Reply = pb::EnrollReply;
    async fn on_leader(&self, ctx: &NodeCtx) -> crate::error::Result<pb::EnrollReply> {
        super::security::enroll(ctx, self.0.clone()).await
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> Result<pb::EnrollReply, Status> {
        ClusterClient::new(ch).enroll(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

impl LeaderCall for UpdateAddress {
    type Reply = pb::UpdateAddressReply;
    async fn on_leader(&self, ctx: &NodeCtx) -> crate::error::Result<pb::UpdateAddressReply> {
        membership::update_address(ctx, self.0.clone()).await
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> Result<pb::UpdateAddressReply, Status> {
        ClusterClient::new(ch).update_address(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(15)
    }
}

impl LeaderCall for Join {
    type Reply = pb::JoinResponse;
    async fn on_leader(&self, ctx: &NodeCtx) -> crate::error::Result<pb::JoinResponse> {
        membership::join(ctx, self.0.clone()).await
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> Result<pb::JoinResponse, Status> {
        ClusterClient::new(ch).join(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
    /// A join waits for the new node to catch up.
    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(90)
    }
}

impl LeaderCall for Remove {
    type Reply = pb::RemoveResponse;
    async fn on_leader(&self, ctx: &NodeCtx) -> crate::error::Result<pb::RemoveResponse> {
        membership::remove(ctx, self.0.clone()).await
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> Result<pb::RemoveResponse, Status> {
        ClusterClient::new(ch).remove(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
    /// Two membership changes and the probes of the remaining voters.
    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

impl LeaderCall for ConsistentNodes {
    type Reply = pb::ListNodesResponse;
    async fn on_leader(&self, ctx: &NodeCtx) -> crate::error::Result<pb::ListNodesResponse> {
        ctx.ensure_linearizable().await?;
        Ok(list_nodes(ctx))
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> Result<pb::ListNodesResponse, Status> {
        ClusterClient::new(ch).list_nodes(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
}

fn raft_state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

/// Builds this node's view of the cluster. Replication lag is filled in only
/// on the leader, the one node that tracks it.
fn local_status(ctx: &NodeCtx, m: &RaftMetrics, data: &SmData) -> pb::ClusterStatus {
    let membership = m.membership_config.membership();
    let last_log = m.last_log_index.unwrap_or(0);
    let mut members: Vec<pb::Member> = membership
        .nodes()
        .map(|(id, node)| {
            let matched = m.replication.as_ref().and_then(|r| r.get(id)).map(|l| l.map(|l| l.index).unwrap_or(0));
            let matched =
                if Some(*id) == m.current_leader && m.state == ServerState::Leader { Some(last_log) } else { matched };
            pb::Member {
                id: *id,
                name: node.name.clone(),
                address: node.address.clone(),
                role: if membership.voter_ids().any(|v| v == *id) { "voter" } else { "learner" }.into(),
                matched_index: matched,
                lag: matched.map(|mi| last_log.saturating_sub(mi)),
                reachable: None,
                last_contact_ms: None,
            }
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let leader = m.current_leader.and_then(|l| members.iter().find(|x| x.id == l).cloned());
    pb::ClusterStatus {
        cluster_id: data.state.cluster_id().unwrap_or_default().to_string(),
        node_id: ctx.id,
        node_name: ctx.name.clone(),
        raft_state: raft_state_name(m.state).into(),
        leader,
        term: m.current_term,
        commit_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        last_log_index: last_log,
        last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        members,
        max_voters: data.state.meta.settings.max_voters,
        snapshot_index: m.snapshot.map(|s| s.index),
        purged_index: m.purged.map(|p| p.index),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn init(&self, request: Request<pb::InitRequest>) -> Result<Response<pb::InitResponse>, Status> {
        let r = membership::init(&self.ctx, request.into_inner().max_voters).await?;
        Ok(Response::new(r))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        let m = self.ctx.metrics();
        let mut status = self.ctx.read(|d| local_status(&self.ctx, &m, d));
        // A follower asks the leader for replication lag, which only it knows.
        if !is_forwarded(&request) && m.state != ServerState::Leader {
            if let Some((_, address)) = self.ctx.leader() {
                let mut client = ClusterClient::new(self.ctx.channel(&address)?);
                let call = client.status(forward(pb::StatusRequest {}, Duration::from_millis(800)));
                if let Ok(Ok(leader_view)) = tokio::time::timeout(Duration::from_secs(1), call).await {
                    let leader_view = leader_view.into_inner();
                    for member in &mut status.members {
                        if let Some(lm) = leader_view.members.iter().find(|x| x.id == member.id) {
                            member.matched_index = lm.matched_index;
                            member.lag = lm.lag;
                        }
                    }
                    status.commit_index = status.commit_index.max(leader_view.commit_index);
                }
            }
        }
        if let Some(obs) = self.leader.observed(&self.ctx).await {
            for member in &mut status.members {
                member.last_contact_ms = obs.heartbeat_age_ms.get(&member.name).copied();
                member.reachable = member.last_contact_ms.map(|age| age <= self.unreachable_after_ms());
            }
        }
        Ok(Response::new(status))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let forwarded = is_forwarded(&request);
        // A node joins under the name its certificate carries, never another.
        if let (false, Some(crate::auth::Principal::Node(cert_name))) =
            (forwarded, crate::auth::caller().map(|c| c.principal))
        {
            if cert_name != request.get_ref().name {
                return Err(Status::permission_denied(format!(
                    "node {cert_name} may not join as {:?}: a node joins under the name in its certificate",
                    request.get_ref().name
                )));
            }
        }
        Ok(Response::new(self.ctx.leader_call(forwarded, Join(request.into_inner())).await?))
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        Ok(Response::new(self.ctx.leader_call(forwarded, Remove(request.into_inner())).await?))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let r = if req.consistent {
            self.ctx.leader_call(forwarded, ConsistentNodes(req)).await?
        } else {
            list_nodes(&self.ctx)
        };
        Ok(Response::new(self.with_live_usage(r).await))
    }

    async fn drain(&self, request: Request<pb::NodeActionRequest>) -> Result<Response<pb::NodeActionReply>, Status> {
        let mut request = request;
        // The embedded test hypervisor cannot migrate: its drains stop and
        // start (what its fencing level, `embedded`, says about it).
        let name = request.get_ref().name.clone();
        if let Some(obs) = self.leader.observed(&self.ctx).await {
            if obs.fencing.get(&name).is_some_and(|f| f == "embedded") {
                request.get_mut().cold = true;
            }
        }
        self.node_state(request, NodeState::Draining).await
    }

    async fn activate(&self, request: Request<pb::NodeActionRequest>) -> Result<Response<pb::NodeActionReply>, Status> {
        self.node_state(request, NodeState::Up).await
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let all = pb::ListNodesRequest { consistent: req.consistent };
        let r = if req.consistent {
            self.ctx.leader_call(forwarded, ConsistentNodes(all)).await?
        } else {
            list_nodes(&self.ctx)
        };
        let r = self.with_live_usage(r).await;
        let node = r.nodes.into_iter().find(|n| n.name == req.name);
        node.map(Response::new).ok_or_else(|| Status::not_found(no_such_node(&self.ctx, &req.name)))
    }

    async fn set_node(&self, request: Request<pb::SetNodeRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        let req = request.into_inner();
        let cmd = self.ctx.read(|d| update_node_command(&d.state, &req))?;
        if let CmdResponse::Refused(r) = self.ctx.propose(cmd).await? {
            return Err(crate::error::Error::from(r).into());
        }
        let node = list_nodes(&self.ctx).nodes.into_iter().find(|n| n.name == req.name);
        let node = self.with_live_usage(pb::ListNodesResponse { nodes: node.into_iter().collect() }).await;
        node.nodes
            .into_iter()
            .next()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(no_such_node(&self.ctx, &req.name)))
    }

    async fn update_address(
        &self,
        request: Request<pb::UpdateAddressRequest>,
    ) -> Result<Response<pb::UpdateAddressReply>, Status> {
        let forwarded = is_forwarded(&request);
        // Only a node itself moves its address.
        if let (false, Some(crate::auth::Principal::Node(cert_name))) =
            (forwarded, crate::auth::caller().map(|c| c.principal))
        {
            let id = request.get_ref().node_id;
            let owner = self.ctx.read(|d| d.state.nodes.get(&id).map(|n| n.name.clone()));
            if owner.as_deref() != Some(cert_name.as_str()) {
                return Err(Status::permission_denied(format!(
                    "node {cert_name} may not change the address of node id {id}"
                )));
            }
        }
        Ok(Response::new(self.ctx.leader_call(forwarded, UpdateAddress(request.into_inner())).await?))
    }

    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollReply>, Status> {
        let forwarded = is_forwarded(&request);
        Ok(Response::new(self.ctx.leader_call(forwarded, Enroll(request.into_inner())).await?))
    }

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PlacementPolicy>, Status> {
        Ok(Response::new(self.ctx.read(|d| to_pb::policy(&d.state.meta.settings.placement))))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::PlacementPolicy>, Status> {
        let req = request.into_inner();
        let current = self.ctx.read(|d| d.state.meta.settings.placement);
        let placement = from_pb::placement(&req, &current).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.ctx.propose(Command::SetPlacement { placement, at_ms: now_ms() }).await?;
        Ok(Response::new(to_pb::policy(&placement)))
    }

    async fn balance(&self, request: Request<pb::BalanceRequest>) -> Result<Response<pb::BalanceReply>, Status> {
        let forwarded = is_forwarded(&request);
        let call = super::migrate::Balance(request.into_inner(), self.leader.clone());
        Ok(Response::new(self.ctx.leader_call(forwarded, call).await?))
    }

    async fn capacity(&self, _request: Request<pb::CapacityRequest>) -> Result<Response<pb::CapacityReport>, Status> {
        let report = self.ctx.read(|d| {
            let settings = &d.state.meta.settings.placement;
            // A planning question about the replicated state: answered the
            // same by every node, without the leader's heartbeat liveness
            // (a host that is down is already `down` in the state).
            let nodes = d.state.scheduler_view(&Default::default(), None);
            to_pb::capacity(&kvmesh_scheduler::ha_reservation(&nodes, &d.state.ha_requests(), settings), settings)
        });
        let mut report = report;
        if let Some(obs) = self.leader.observed(&self.ctx).await {
            for h in &mut report.hosts {
                h.fencing = obs.fencing.get(&h.node).cloned().unwrap_or_default();
            }
        }
        Ok(Response::new(report))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let after = request.into_inner().after;
        let events = self.ctx.read(|d| d.state.events.iter().filter(|e| e.seq > after).map(to_pb::event).collect());
        Ok(Response::new(pb::ListEventsResponse { events }))
    }
}

impl ClusterService {
    /// Adds what only the leader knows, from heartbeats: how long since each
    /// node was heard from, and how many guests it reports running.
    async fn with_live_usage(&self, mut r: pb::ListNodesResponse) -> pb::ListNodesResponse {
        if let Some(obs) = self.leader.observed(&self.ctx).await {
            for n in &mut r.nodes {
                n.heartbeat_age_ms = obs.heartbeat_age_ms.get(&n.name).copied();
                n.reachable = n.heartbeat_age_ms.map(|age| age <= self.unreachable_after_ms());
                n.storage = obs.storage.iter().filter(|s| s.node == n.name).cloned().collect();
                n.networks = obs.networks.iter().filter(|s| s.node == n.name).cloned().collect();
                // Known only from a heartbeat: unset while none was heard.
                if n.heartbeat_age_ms.is_some() {
                    n.uefi_missing = Some(obs.uefi_missing.get(&n.name).cloned().unwrap_or_default());
                }
                n.fencing = obs.fencing.get(&n.name).cloned();
                n.problem = obs.problem.get(&n.name).cloned();
                // A silent or down host's last report is history: its
                // guests may already run elsewhere.
                if n.reachable == Some(true) && n.state != pb::NodeState::Down as i32 {
                    n.running_vms = obs.running_vms.get(&n.name).copied();
                    n.running_vcpus = obs.running_vcpus.get(&n.name).copied();
                    n.running_memory_mib = obs.running_memory_mib.get(&n.name).copied();
                }
            }
        }
        r
    }

    /// A host is unreachable once three heartbeats in a row went unheard.
    fn unreachable_after_ms(&self) -> u64 {
        3 * self.ctx.config.heartbeat_ms
    }

    /// `node drain` and `node activate`, proposed from this node.
    async fn node_state(
        &self,
        request: Request<pb::NodeActionRequest>,
        target: NodeState,
    ) -> Result<Response<pb::NodeActionReply>, Status> {
        let req = request.into_inner();
        let node = self.ctx.read(|d| d.state.node_by_name(&req.name).map(|n| (n.id, n.state)));
        let Some((id, state)) = node else {
            return Err(Status::not_found(no_such_node(&self.ctx, &req.name)));
        };
        // A down node takes the request when it returns (see `apply`).
        if !(target == NodeState::Up && state == NodeState::Up) {
            let cmd = match target {
                NodeState::Draining => Command::Drain { id, cold: req.cold, at_ms: now_ms() },
                _ => Command::SetNodeState { id, state: target, at_ms: now_ms() },
            };
            if let CmdResponse::Refused(r) = self.ctx.propose(cmd).await? {
                return Err(crate::error::Error::from(r).into());
            }
        }
        Ok(Response::new(pb::NodeActionReply { state: to_pb::node_state(target) as i32 }))
    }
}

fn no_such_node(ctx: &NodeCtx, name: &str) -> String {
    ctx.read(|d| d.state.unknown_node(name))
}

/// `node set` as a command, with its arguments checked.
fn update_node_command(state: &ClusterState, req: &pb::SetNodeRequest) -> Result<Command, Status> {
    let id =
        state.node_by_name(&req.name).map(|n| n.id).ok_or_else(|| Status::not_found(state.unknown_node(&req.name)))?;
    if req.cpus == Some(0) || req.memory_mib == Some(0) {
        return Err(Status::invalid_argument("--cpus and --memory-mib must be at least 1"));
    }
    if let Some(both) = req.unlabel.iter().find(|k| req.labels.contains_key(*k)) {
        return Err(Status::invalid_argument(format!("label {both:?} is both set and removed")));
    }
    if req.labels.keys().chain(req.unlabel.iter()).any(|k| k.is_empty()) {
        return Err(Status::invalid_argument("a label key cannot be empty"));
    }
    Ok(Command::UpdateNode {
        id,
        address: None,
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        set_labels: req.labels.clone().into_iter().collect(),
        unset_labels: req.unlabel.iter().cloned().collect(),
        at_ms: now_ms(),
    })
}

fn list_nodes(ctx: &NodeCtx) -> pb::ListNodesResponse {
    let m = ctx.metrics();
    let membership = m.membership_config.membership().clone();
    let mut nodes: Vec<pb::NodeInfo> = ctx.read(|d| {
        d.state
            .nodes
            .values()
            .map(|n| {
                let (cpus, mem, count) = d.state.allocated_indexed(n.id);
                let role = if membership.voter_ids().any(|v| v == n.id) {
                    "voter"
                } else if membership.get_node(&n.id).is_some() {
                    "learner"
                } else {
                    "none"
                };
                pb::NodeInfo {
                    id: n.id,
                    name: n.name.clone(),
                    address: n.address.clone(),
                    cpus: n.cpus,
                    memory_mib: n.memory_mib,
                    state: to_pb::node_state(n.state) as i32,
                    vm_count: count,
                    allocated_vcpus: cpus,
                    allocated_memory_mib: mem,
                    role: role.into(),
                    labels: n.labels.clone().into_iter().collect(),
                    heartbeat_age_ms: None,
                    running_vms: None,
                    running_vcpus: None,
                    running_memory_mib: None,
                    fencing: None,
                    problem: None,
                    storage: Vec::new(),
                    networks: Vec::new(),
                    reachable: None,
                    uefi_missing: None,
                }
            })
            .collect()
    });
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListNodesResponse { nodes }
}
