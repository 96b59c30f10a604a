//! `vm migrate` on the leader: pick the target (the operator's, or the
//! scheduler's best host other than the VM's own) and commit the begin;
//! and `cluster balance`: the scheduler's even-distribution moves, begun
//! the same way. Everything after that is the hosts' work
//! (`agent::migrate`).

use std::sync::Arc;

use kvmesh_proto as pb;
use kvmesh_proto::cluster_client::ClusterClient;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_raft::command::{Command, Response as CmdResponse};
use kvmesh_raft::wire::to_pb;
use kvmesh_scheduler as scheduler;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tracing::{info, instrument};

use crate::ctx::{now_ms, LeaderCall, NodeCtx};
use crate::error::{Error, Result};
use crate::ha::LeaderView;

#[derive(Clone)]
pub struct Migrate(pub pb::MigrateVmRequest, pub Arc<LeaderView>);

impl LeaderCall for Migrate {
    type Reply = pb::MigrateVmReply;
    async fn on_leader(&self, ctx: &NodeCtx) -> Result<pb::MigrateVmReply> {
        migrate_on_leader(ctx, &self.1, &self.0).await
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> std::result::Result<pb::MigrateVmReply, Status> {
        VmsClient::new(ch).migrate(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
}

#[instrument(skip_all, fields(node = %ctx.name, vm = %req.name))]
async fn migrate_on_leader(
    ctx: &NodeCtx,
    leader: &LeaderView,
    req: &pb::MigrateVmRequest,
) -> Result<pb::MigrateVmReply> {
    let live = leader.liveness();
    let (target, explanation) = ctx.read(|d| -> Result<_> {
        super::vms::await_liveness(&d.state, &live)?;
        let vm = d.state.vm_by_name(&req.name).ok_or_else(|| Error::NotFound(d.state.unknown_vm(&req.name)))?;
        if let Some(to) = &req.to {
            let node = d.state.node_by_name(to).ok_or_else(|| Error::NotFound(d.state.unknown_node(to)))?;
            // A named host skips the scheduler's choice, not its rules for
            // new decisions (`apply` re-checks the rest).
            if vm.spec.vcpus > node.cpus {
                let why = kvmesh_scheduler::Rejection::MoreVcpusThanHost { vcpus: vm.spec.vcpus, cpus: node.cpus };
                return Err(Error::FailedPrecondition(format!("cannot move {} to {to}: {why}", vm.name)));
            }
            return Ok((Some(node.id), None));
        }
        // Where it would go now, its own host left out.
        let evals = d.state.migration_targets(&live.host_facts(&d.state), vm, req.copy_storage);
        let chosen = evals.iter().find(|e| e.chosen).map(|e| e.node_id);
        Ok((chosen, Some(to_pb::explanation(&vm.name, &d.state.meta.settings.placement, &evals))))
    })?;
    if req.dry_run {
        return Ok(pb::MigrateVmReply { vm: None, explanation });
    }
    let Some(target) = target else {
        let why = explanation
            .as_ref()
            .map(|e| e.nodes.iter().map(|n| format!("\n  {}: {}", n.node, n.reason)).collect::<String>())
            .unwrap_or_default();
        return Err(Error::FailedPrecondition(format!("no other host can take VM {}:{why}", req.name)));
    };
    let cmd = Command::BeginMigration {
        name: req.name.clone(),
        target,
        bandwidth_mib: req.bandwidth_mib,
        copy_storage: req.copy_storage,
        at_ms: now_ms(),
    };
    match ctx.propose_as_leader(cmd).await? {
        CmdResponse::Vm(vm) => {
            info!(target, "live migration begun");
            Ok(pb::MigrateVmReply { vm: Some(ctx.read(|d| to_pb::vm(&d.state, &vm))), explanation })
        }
        CmdResponse::Refused(r) => Err(r.into()),
        other => Err(Error::Raft(format!("unexpected response to BeginMigration: {other:?}"))),
    }
}

#[derive(Clone)]
pub struct Balance(pub pb::BalanceRequest, pub Arc<LeaderView>);

impl LeaderCall for Balance {
    type Reply = pb::BalanceReply;
    async fn on_leader(&self, ctx: &NodeCtx) -> Result<pb::BalanceReply> {
        balance(ctx, &self.1, &self.0).await
    }
    async fn forward(self, ch: Channel, r: Request<Self>) -> std::result::Result<pb::BalanceReply, Status> {
        ClusterClient::new(ch).balance(r.map(|c| c.0)).await.map(|r| r.into_inner())
    }
}

/// Points of load the hosts may be apart, and moves per call, by default.
const BALANCE_THRESHOLD_PCT: u32 = 10;
const BALANCE_MAX_MOVES: u32 = 4;

/// Plans the even-distribution moves and, unless `dry_run`, begins them.
/// Runs on the leader (`cluster balance`, and the automatic balance).
#[instrument(skip_all, fields(node = %ctx.name))]
pub async fn balance(ctx: &NodeCtx, leader: &LeaderView, req: &pb::BalanceRequest) -> Result<pb::BalanceReply> {
    let live = leader.liveness();
    let threshold = if req.threshold_pct == 0 { BALANCE_THRESHOLD_PCT } else { req.threshold_pct.min(100) };
    let max_moves = if req.max_moves == 0 { BALANCE_MAX_MOVES } else { req.max_moves };
    let planned = ctx.read(|d| -> Result<_> {
        super::vms::await_liveness(&d.state, &live)?;
        let nodes = d.state.scheduler_view(&live.host_facts(&d.state), None);
        let movable: Vec<scheduler::Placed> = d
            .state
            .vms
            .values()
            .filter(|v| v.migration.is_none() && d.state.moves_live(v, false).is_ok())
            .filter_map(|v| Some(scheduler::Placed { vm: d.state.request_for(v), node: v.placement?.node }))
            .collect();
        let settings = &d.state.meta.settings.placement;
        let moves = scheduler::plan_balance(&nodes, &movable, settings, threshold as f64 / 100.0, max_moves as usize);
        let name = |id: u64| d.state.nodes.get(&id).map(|n| n.name.clone()).unwrap_or_default();
        Ok(moves
            .into_iter()
            .map(|m| {
                let shown = pb::BalanceMove {
                    vm: m.vm.clone(),
                    from: name(m.from),
                    to: name(m.to),
                    why: m.why,
                    begun: false,
                    refused: String::new(),
                };
                (m.vm, m.to, shown)
            })
            .collect::<Vec<_>>())
    })?;
    let mut moves = Vec::new();
    for (vm, target, mut shown) in planned {
        if !req.dry_run {
            let cmd =
                Command::BeginMigration { name: vm, target, bandwidth_mib: 0, copy_storage: false, at_ms: now_ms() };
            match ctx.propose_as_leader(cmd).await? {
                CmdResponse::Refused(r) => shown.refused = r.to_string(),
                _ => shown.begun = true,
            }
        }
        moves.push(shown);
    }
    Ok(pb::BalanceReply { moves })
}
