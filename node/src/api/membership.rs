//! Leader-side membership changes: bootstrap, join and remove.
//!
//! Joins and removals run only on the leader, one at a time. A join first
//! records the node (so names and addresses stay unique), then adds it as a
//! learner and waits for it to catch up, then promotes it while the cluster
//! has fewer than `max_voters` voters. A removal is decided by the pure
//! [`plan_removal`] (crate::voters) and carried out here; it refuses what
//! would leave the cluster without a working quorum.

use std::collections::BTreeSet;
use std::time::Duration;

use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Refusal, Response};
use kvmesh_raft::model::{Node, NodeState, Settings};
use kvmesh_raft::{MemberNode, NodeId};
use openraft::ChangeMembers;
use tracing::{info, instrument, warn};

use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::voters::{plan_removal, Refused, RemovalFacts, RemovalPlan};

const ADD_LEARNER_TIMEOUT: Duration = Duration::from_secs(60);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Bootstraps a one-member cluster on this (fresh) node.
#[instrument(skip_all, fields(node = %ctx.name))]
pub async fn init(ctx: &NodeCtx, max_voters: u32) -> Result<pb::InitResponse> {
    let max_voters = if max_voters == 0 { 3 } else { max_voters };
    if ![3, 5, 7].contains(&max_voters) {
        return Err(Error::InvalidArgument(format!("--max-voters must be 3, 5 or 7 (got {max_voters})")));
    }
    if ctx.joining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::FailedPrecondition(
            "this node was started with --join and is joining a cluster; `cluster init` is only for the first node"
                .into(),
        ));
    }
    let already = ctx.raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))?;
    if already {
        let cluster = ctx.read(|d| d.state.cluster_id().map(str::to_string)).unwrap_or_else(|| "(unknown)".into());
        return Err(Error::FailedPrecondition(format!(
            "node {} is already part of cluster {cluster}; `cluster init` runs once, on the first node. Join other nodes with `kvmesh serve --join {}`",
            ctx.name, ctx.address
        )));
    }
    let member = MemberNode { name: ctx.name.clone(), address: ctx.address.clone() };
    ctx.raft
        .initialize([(ctx.id, member)].into_iter().collect::<std::collections::BTreeMap<_, _>>())
        .await
        .map_err(|e| Error::FailedPrecondition(format!("cannot initialize: {e}")))?;
    ctx.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(ctx.id, "self elected after init")
        .await
        .map_err(|e| Error::Timeout(format!("this node did not become leader after init: {e}")))?;
    let cluster_id = new_cluster_id();
    let cmd = Command::Init {
        cluster_id: cluster_id.clone(),
        settings: Settings { max_voters, ..Settings::default() },
        node: self_record(ctx),
        at_ms: now_ms(),
    };
    match ctx.propose_as_leader(cmd).await? {
        Response::Refused(r) => return Err(r.into()),
        _ => info!(%cluster_id, max_voters, "cluster initialized"),
    }
    ctx.data_dir.lock().unwrap_or_else(|p| p.into_inner()).set_cluster_id(&cluster_id)?;
    let (ca_cert_pem, admin_token) = super::security::found(ctx).await?;
    Ok(pb::InitResponse { cluster_id, node_id: ctx.id, node_name: ctx.name.clone(), ca_cert_pem, admin_token })
}

fn new_cluster_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn self_record(ctx: &NodeCtx) -> Node {
    Node {
        id: ctx.id,
        name: ctx.name.clone(),
        address: ctx.address.clone(),
        cpus: ctx.cpus,
        memory_mib: ctx.memory_mib,
        state: NodeState::Up,
        joined_at_ms: now_ms(),
        labels: ctx.config.labels.clone(),
        resume_as: None,
        cold_drain: false,
    }
}

fn voters_and_learners(ctx: &NodeCtx) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
    let m = ctx.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    (voters, learners)
}

/// Adds a node to the cluster. Runs on the leader.
#[instrument(skip_all, fields(node = %ctx.name, joining = %req.name))]
pub async fn join(ctx: &NodeCtx, req: pb::JoinRequest) -> Result<pb::JoinResponse> {
    if req.protocol_version != kvmesh_proto::PROTOCOL_VERSION {
        return Err(Error::FailedPrecondition(format!(
            "node {} speaks kvmesh protocol {}, the cluster speaks {}; run the same kvmesh release on every node",
            req.name,
            req.protocol_version,
            kvmesh_proto::PROTOCOL_VERSION
        )));
    }
    crate::config::validate_node_name(&req.name).map_err(Error::InvalidArgument)?;
    if req.node_id == 0 || req.cpus == 0 || req.memory_mib == 0 {
        return Err(Error::InvalidArgument("join needs a node id, cpus and memory".into()));
    }
    let _guard = ctx.membership_lock.lock().await;
    let (cluster_id, max_voters) =
        ctx.read(|d| (d.state.cluster_id().map(str::to_string), d.state.meta.settings.max_voters));
    let cluster_id = cluster_id.ok_or_else(|| Error::Unavailable("the cluster is still initializing".into()))?;

    let node = Node {
        id: req.node_id,
        name: req.name.clone(),
        address: req.address.clone(),
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        state: NodeState::Up,
        joined_at_ms: now_ms(),
        labels: req.labels.clone().into_iter().collect(),
        resume_as: None,
        cold_drain: false,
    };
    if let Response::Refused(r) = ctx.propose_as_leader(Command::AddNode { node, at_ms: now_ms() }).await? {
        return Err(r.into());
    }

    let (voters, learners) = voters_and_learners(ctx);
    if !voters.contains(&req.node_id) && !learners.contains(&req.node_id) {
        info!(id = req.node_id, address = %req.address, "adding learner and waiting for it to catch up");
        let member = MemberNode { name: req.name.clone(), address: req.address.clone() };
        match tokio::time::timeout(ADD_LEARNER_TIMEOUT, ctx.raft.add_learner(req.node_id, member, true)).await {
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "node {} did not catch up within {}s; is {} reachable from the leader?",
                    req.name,
                    ADD_LEARNER_TIMEOUT.as_secs(),
                    req.address
                )))
            }
            Ok(Err(e)) => return Err(raft_change_error(e)),
            Ok(Ok(_)) => {}
        }
    }
    let (voters, _) = voters_and_learners(ctx);
    let role = if voters.contains(&req.node_id) {
        "voter"
    } else if (voters.len() as u32) < max_voters {
        change(ctx, ChangeMembers::AddVoterIds([req.node_id].into()), false).await?;
        info!(id = req.node_id, "promoted to voter");
        "voter"
    } else {
        "learner"
    };
    Ok(pb::JoinResponse { cluster_id, role: role.into() })
}

/// Records a member's new address: first in the Raft membership (so the
/// leader reaches it there), then in its state record. Runs on the leader,
/// asked by the member itself after a restart with another
/// `--listen/--advertise`; until it is done, that member does not campaign.
#[instrument(skip_all, fields(node = %ctx.name, member = req.node_id, address = %req.address))]
pub async fn update_address(ctx: &NodeCtx, req: pb::UpdateAddressRequest) -> Result<pb::UpdateAddressReply> {
    let _guard = ctx.membership_lock.lock().await;
    // A deposed leader's older membership must not turn a member away.
    ctx.ensure_linearizable().await?;
    let cluster_id = ctx.read(|d| d.state.cluster_id().map(str::to_string));
    if cluster_id.as_deref() != Some(req.cluster_id.as_str()) {
        return Err(Error::FailedPrecondition(format!(
            "this is cluster {}, not {}",
            cluster_id.unwrap_or_default(),
            req.cluster_id
        )));
    }
    let membership = ctx.metrics().membership_config.membership().clone();
    let Some(member) = membership.get_node(&req.node_id).cloned() else {
        return Err(Error::FailedPrecondition(format!(
            "{}: node {} is not a member of this cluster",
            kvmesh_proto::NOT_A_MEMBER,
            req.node_id
        )));
    };
    if member.address == req.address {
        return Ok(pb::UpdateAddressReply {});
    }
    let taken = membership.nodes().find(|(id, n)| **id != req.node_id && n.address == req.address);
    if let Some((_, other)) = taken {
        return Err(Error::AlreadyExists(format!("address {} is already used by node {:?}", req.address, other.name)));
    }
    info!(from = %member.address, to = %req.address, "a member moved: recording its new address");
    let moved = MemberNode { name: member.name.clone(), address: req.address.clone() };
    change(ctx, ChangeMembers::SetNodes([(req.node_id, moved)].into()), false).await?;
    let cmd = Command::UpdateNode {
        id: req.node_id,
        address: Some(req.address.clone()),
        cpus: None,
        memory_mib: None,
        set_labels: Default::default(),
        unset_labels: Default::default(),
        at_ms: now_ms(),
    };
    if let Response::Refused(r) = ctx.propose_as_leader(cmd).await? {
        warn!(reason = %r, "the membership has the new address, the node record not");
    }
    Ok(pb::UpdateAddressReply {})
}

/// Removes a node from the cluster. Runs on the leader: gathers the facts
/// (membership, probes), asks the pure [`plan_removal`], and carries the
/// plan out.
#[instrument(skip_all, fields(node = %ctx.name, removing = %req.name))]
pub async fn remove(ctx: &NodeCtx, req: pb::RemoveRequest) -> Result<pb::RemoveResponse> {
    let _guard = ctx.membership_lock.lock().await;
    let membership = ctx.metrics().membership_config.membership().clone();
    let in_state = ctx.read(|d| d.state.node_by_name(&req.name).map(|n| n.id));
    let in_raft = membership.nodes().find(|(_, n)| n.name == req.name).map(|(id, _)| *id);
    let Some(id) = in_state.or(in_raft) else {
        return Err(Error::NotFound(ctx.read(|d| d.state.unknown_node(&req.name))));
    };
    let (voters, learners) = voters_and_learners(ctx);
    // Probed: the other voters, and learners in id order up to the first
    // that answers (the one a plan would promote).
    let mut reachable = BTreeSet::from([ctx.id]);
    let address = |m: NodeId| membership.get_node(&m).map(|n| n.address.clone());
    // The node itself too: a membership change also needs a majority of the
    // current voters, which it may be part of.
    for v in voters.iter().copied().filter(|v| *v != ctx.id) {
        if let Some(a) = address(v) {
            if probe(ctx, &a).await {
                reachable.insert(v);
            }
        }
    }
    if voters.contains(&id) {
        for l in learners.iter().copied().filter(|l| *l != id) {
            if let Some(a) = address(l) {
                if probe(ctx, &a).await {
                    reachable.insert(l);
                    break;
                }
            }
        }
    }
    let placed_vms = ctx.read(|d| d.state.allocated_indexed(id).2);
    let facts = RemovalFacts {
        id,
        in_state: in_state.is_some(),
        in_raft: in_raft.is_some(),
        voters: &voters,
        learners: &learners,
        reachable: &reachable,
        placed_vms,
        force: req.force,
    };
    let plan = plan_removal(&facts).map_err(|r| refusal(&req.name, r, &membership))?;
    execute_removal(ctx, &plan).await?;
    info!(id, "node removed");
    if id != ctx.id {
        if let Some(a) = address(id) {
            tell_removed(ctx, &a, id).await;
        }
    }
    Ok(pb::RemoveResponse {})
}

fn refusal(name: &str, r: Refused, membership: &openraft::Membership<NodeId, MemberNode>) -> Error {
    let names = |ids: &[NodeId]| {
        let names: Vec<String> = ids
            .iter()
            .map(|v| membership.get_node(v).map(|n| n.name.clone()).unwrap_or_else(|| v.to_string()))
            .collect();
        names.join(", ")
    };
    match r {
        Refused::LastVoter => Error::FailedPrecondition(format!(
            "{name} is the last voter; removing it would leave no one to hold the cluster state"
        )),
        Refused::HasVms(vms) => Refusal::NodeHasVms { name: name.to_string(), vms }.into(),
        Refused::NoCurrentQuorum { voters, alive, dead } => {
            Error::FailedPrecondition(format!(
                "a membership change must be accepted by a majority of the current {voters} voters, and only {alive} answer (down: {}); bring one back first",
                names(&dead)
            ))
        }
        Refused::NoQuorum { remaining, alive, dead } => {
            Error::FailedPrecondition(format!(
                "removing {name} would leave {remaining} voter(s) of which only {alive} answer (down: {}); bring those nodes back first",
                names(&dead)
            ))
        }
    }
}

/// Carries out a removal: the state record, then the voter seat.
async fn execute_removal(ctx: &NodeCtx, plan: &RemovalPlan) -> Result<()> {
    if plan.in_state {
        // Decided on the leader's view of who is placed where: leader-only.
        let cmd = Command::RemoveNode { id: plan.id, force: plan.force, at_ms: now_ms() };
        if let Response::Refused(r) = ctx.propose_as_leader(cmd).await? {
            return Err(r.into());
        }
    }
    if plan.is_voter {
        replace_voter(ctx, plan.promote, plan.id, false).await
    } else if plan.in_raft {
        change(ctx, ChangeMembers::RemoveNodes([plan.id].into()), false).await
    } else {
        Ok(())
    }
}

/// Moves a voter seat: promotes `promote` (if any) first, so the voter
/// count never dips, then demotes `voter` — to a learner that can catch up
/// if `keep_as_learner` (a dead voter that may return), out of the cluster
/// otherwise (a removal). Used by `cluster remove` and by the leader's
/// dead-voter replacement.
pub async fn replace_voter(ctx: &NodeCtx, promote: Option<NodeId>, voter: NodeId, keep_as_learner: bool) -> Result<()> {
    // Names from Raft's membership: a removed node has left the state.
    let membership = ctx.metrics().membership_config.membership().clone();
    let name = |id: NodeId| membership.get_node(&id).map(|n| n.name.clone()).unwrap_or(id.to_string());
    if let Some(learner) = promote {
        info!(learner, "promoting a learner to keep the voter count");
        change(ctx, ChangeMembers::AddVoterIds([learner].into()), false).await?;
    }
    change(ctx, ChangeMembers::RemoveVoters([voter].into()), keep_as_learner).await?;
    // Raft's membership is not in the state machine: say it in the events.
    let message = match (promote, keep_as_learner) {
        (Some(p), true) => {
            format!("node {} became a voter in place of {} (a learner until it is back)", name(p), name(voter))
        }
        (Some(p), false) => format!("node {} became a voter in place of {}", name(p), name(voter)),
        (None, true) => format!("node {} is a learner now (no learner could take its voter seat)", name(voter)),
        (None, false) => format!("node {} gave up its voter seat", name(voter)),
    };
    let note = Command::Note { kind: "node".into(), message, at_ms: now_ms() };
    if let Err(e) = ctx.propose(note).await {
        warn!(error = %e, "the voter change is done, but its event was not recorded");
    }
    Ok(())
}

/// Applies one membership change, retrying while another is in progress.
async fn change(ctx: &NodeCtx, changes: ChangeMembers<NodeId, MemberNode>, retain: bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    loop {
        let attempt = tokio::time::timeout_at(deadline, ctx.raft.change_membership(changes.clone(), retain)).await;
        match attempt {
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "membership change did not commit within {}s; a majority of voters must be up",
                    CHANGE_TIMEOUT.as_secs()
                )))
            }
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ),
            ))) => {
                warn!("another membership change is in progress; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(raft_change_error(e)),
        }
    }
}

fn raft_change_error(
    e: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, MemberNode>>,
) -> Error {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Error::Unavailable("leadership changed during the membership change".into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Error::FailedPrecondition(c.to_string()),
        RaftError::Fatal(f) => Error::Raft(f.to_string()),
    }
}

/// Tells a removed node to stop. Best effort: a node that is down learns it
/// from its own log (or its operator) when it comes back.
async fn tell_removed(ctx: &NodeCtx, address: &str, id: NodeId) {
    let Ok(channel) = ctx.channel(address) else {
        return;
    };
    let cluster_id = ctx.read(|d| d.state.cluster_id().unwrap_or_default().to_string());
    let mut request = tonic::Request::new(pb::RemovedNotice { node_id: id, cluster_id });
    request.set_timeout(Duration::from_secs(2));
    if let Err(e) = pb::raft_client::RaftClient::new(channel).removed(request).await {
        warn!(id, error = %e.message(), "could not tell the removed node to stop");
    }
}

/// Whether a node answers a status call within a second.
async fn probe(ctx: &NodeCtx, address: &str) -> bool {
    let Ok(channel) = ctx.channel(address) else {
        return false;
    };
    let mut client = pb::cluster_client::ClusterClient::new(channel);
    // Marked forwarded so the peer answers alone, without asking the leader.
    let request = crate::ctx::forward(pb::StatusRequest {}, Duration::from_secs(1));
    matches!(tokio::time::timeout(Duration::from_millis(1500), client.status(request)).await, Ok(Ok(_)))
}
