//! The leader's HA loop: turns heartbeats into node state changes, places
//! VMs that lost their host, finishes drains (migrating live what can move
//! live: `drain`), and replaces dead voters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::model::{NodeState, VmId};
use kvmesh_raft::NodeId;
use kvmesh_scheduler::{self as scheduler};
use openraft::ServerState;
use tracing::{info, instrument, warn};

use super::decide::{self, Liveness, NodeAction};
use super::leader::LeaderView;
use crate::ctx::{now_ms, NodeCtx};

const TICK: Duration = Duration::from_millis(250);

pub async fn run(ctx: Arc<NodeCtx>, leader: Arc<LeaderView>) {
    let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
    // VMs moving off a host -> (the VM's last epoch, this leader's applied
    // index when it first saw that move). Leader memory, dropped whenever
    // this node does not lead: a new term starts from its own index.
    let mut moving_since: HashMap<VmId, (u64, u64)> = HashMap::new();
    // What was logged about draining VMs that wait to move live.
    let mut told: HashMap<VmId, String> = HashMap::new();
    let mut balanced_at = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        let m = ctx.metrics();
        if m.state != ServerState::Leader {
            moving_since.clear();
            leader.table.lock().unwrap_or_else(|p| p.into_inner()).leader_since = None;
            continue;
        }
        let leader_since = {
            let mut hb = leader.table.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            hb.for_term(m.current_term, now);
            hb.leader_since.unwrap_or(now)
        };
        // A new leader knows nothing of the hosts' leases: it waits a full
        // down_after before it declares or places anything.
        if leader_since.elapsed() < Duration::from_millis(ctx.config.down_after_ms) {
            continue;
        }
        if let Err(e) = tick(&ctx, &leader, &mut down_since, &mut moving_since).await {
            warn!(error = %e, "HA controller pass failed; retrying");
        }
        if let Err(e) = super::drain::migrate_draining(&ctx, &leader, &mut told).await {
            warn!(error = %e, "live drain pass failed; retrying");
        }
        let every = Duration::from_millis(ctx.config.balance_every_ms);
        if ctx.read(|d| d.state.meta.settings.placement.balance) && balanced_at.elapsed() >= every {
            balanced_at = Instant::now();
            match crate::api::migrate::balance(&ctx, &leader, &Default::default()).await {
                Ok(r) => {
                    for m in r.moves.iter().filter(|m| m.begun) {
                        info!(vm = %m.vm, from = %m.from, to = %m.to, why = %m.why, "automatic balance: moving live");
                    }
                }
                Err(e) => warn!(error = %e, "automatic balance failed; trying again later"),
            }
        }
    }
}

#[instrument(skip_all, fields(node = %ctx.name))]
async fn tick(
    ctx: &Arc<NodeCtx>,
    leader: &LeaderView,
    down_since: &mut HashMap<NodeId, Instant>,
    moving_since: &mut HashMap<VmId, (u64, u64)>,
) -> crate::error::Result<()> {
    let now = Instant::now();
    let down_after = Duration::from_millis(ctx.config.down_after_ms);
    let fresh = Duration::from_millis(ctx.config.heartbeat_ms * 3);
    let (actions, observed, released) = {
        let hb = leader.table.lock().unwrap_or_else(|p| p.into_inner());
        let observed = hb.observed(now, down_after);
        let released = ctx.read(|d| {
            let applied = d.last_applied.map_or(0, |l| l.index);
            // A move is known by the VM's last epoch: placed and moved again
            // between two ticks, it is a new move with a new threshold.
            let moving: HashMap<VmId, u64> = d
                .state
                .vms
                .values()
                .filter(|v| v.placement.is_none() && v.moving_from.is_some())
                .map(|v| (v.id, v.last_epoch))
                .collect();
            moving_since.retain(|vm, (epoch, _)| moving.get(vm) == Some(epoch));
            for (vm, epoch) in moving {
                moving_since.entry(vm).or_insert((epoch, applied));
            }
            let thresholds: HashMap<VmId, u64> = moving_since.iter().map(|(vm, (_, at))| (*vm, *at)).collect();
            decide::released_moves(&d.state, &hb, &thresholds, now, fresh, down_after)
        });
        let actions = ctx.read(|d| {
            let live: BTreeMap<NodeId, Liveness> = d
                .state
                .nodes
                .keys()
                .copied()
                .chain(decide::removed_hosts(&d.state))
                .collect::<Vec<_>>()
                .iter()
                .map(|id| {
                    let seen = hb.seen.get(id);
                    let domains = seen.map(|s| s.domains.as_slice()).unwrap_or(&[]);
                    // A host that joined moments ago (it is still catching
                    // up before its first heartbeat) has not been silent
                    // for longer than it has been a member.
                    let member_for = d.state.nodes.get(id).map(|n| now_ms().saturating_sub(n.joined_at_ms));
                    let silent_for = hb.silent_for(*id, now);
                    let l = Liveness {
                        silent_for: member_for.map_or(silent_for, |ms| silent_for.min(Duration::from_millis(ms))),
                        clean: decide::is_clean(&d.state, *id, domains),
                        running: domains.iter().filter(|x| x.2).count(),
                    };
                    (*id, l)
                })
                .collect();
            decide::node_actions(&d.state, &live, &released, down_after, fresh)
        });
        (actions, observed, released)
    };
    for action in actions {
        let cmd = match action {
            NodeAction::Down(id) => {
                warn!(node = id, "no heartbeat for down_after: declaring the node down");
                down_since.insert(id, now);
                Command::NodeDown { id, at_ms: now_ms() }
            }
            NodeAction::Up(id) => {
                info!(node = id, "node heartbeats again with no stale domains: up");
                down_since.remove(&id);
                Command::NodeUp { id, at_ms: now_ms() }
            }
            NodeAction::Maintenance(id) => Command::SetNodeState { id, state: NodeState::Maintenance, at_ms: now_ms() },
        };
        ctx.propose_as_leader(cmd).await?;
    }
    place_pending(ctx, leader, &observed, &released).await?;
    replace_dead_voters(ctx, down_since).await;
    Ok(())
}

/// Places every VM that wants to run but has no host, in priority order,
/// with capacity reserved as it goes; records why the rest wait.
async fn place_pending(
    ctx: &Arc<NodeCtx>,
    leader: &LeaderView,
    observed: &BTreeMap<VmId, BTreeSet<NodeId>>,
    released: &BTreeSet<VmId>,
) -> crate::error::Result<()> {
    let liveness = leader.liveness();
    let plan = ctx.read(|d| {
        let vms: Vec<scheduler::VmRequest> = decide::placeable(&d.state, observed, released)
            .iter()
            .filter_map(|id| d.state.vms.get(id))
            .map(|vm| d.state.request_for(vm))
            .collect();
        if vms.is_empty() {
            return None;
        }
        let nodes = d.state.scheduler_view(&liveness.host_facts(&d.state), None);
        Some(scheduler::plan_restarts(&vms, &nodes, &d.state.meta.settings.placement))
    });
    let Some(plan) = plan else { return Ok(()) };
    for (vm, node) in plan.placements {
        match ctx.propose_as_leader(Command::PlaceVm { vm, node, at_ms: now_ms() }).await? {
            Response::Refused(r) => info!(vm, reason = %r, "placement refused; planning again next pass"),
            _ => {
                crate::telemetry::get().ha_restart();
                info!(vm, node, "placed a VM that had lost its host")
            }
        }
    }
    for u in plan.unplaced {
        let reason = format!("no node fits: {}", scheduler::explain_rejections(&u.rejections).replace('\n', "; "));
        ctx.propose_as_leader(Command::SetPending { vm: u.vm_id, reason, at_ms: now_ms() }).await?;
    }
    Ok(())
}

/// Incus-style role rebalancing: a voter down longer than
/// voter_replace_after is demoted, and a healthy learner promoted.
async fn replace_dead_voters(ctx: &Arc<NodeCtx>, down_since: &HashMap<NodeId, Instant>) {
    let limit = Duration::from_millis(ctx.config.voter_replace_after_ms);
    let membership = ctx.metrics().membership_config.membership().clone();
    let voters = membership.voter_ids().collect();
    let learners = membership.learner_ids().collect();
    let replace =
        ctx.read(|d| decide::voter_to_replace(&d.state, &voters, &learners, down_since, Instant::now(), limit));
    let Some((dead, learner)) = replace else { return };
    let _guard = ctx.membership_lock.lock().await;
    info!(dead, learner, "voter down for voter_replace_after: promoting a learner in its place");
    // The dead voter stays a learner, so it can catch up if it returns.
    if let Err(e) = crate::api::membership::replace_voter(ctx, Some(learner), dead, true).await {
        warn!(error = %e, "could not replace the dead voter");
    }
}
