//! `vm migrate` on the leader: pick the target (the operator's, or the
//! scheduler's best host other than the VM's own) and commit the begin.
//! Everything after that is the hosts' work (`agent::migrate`).

use std::sync::Arc;

use kvmesh_proto as pb;
use kvmesh_proto::vms_client::VmsClient;
use kvmesh_raft::command::{Command, Response as CmdResponse};
use kvmesh_raft::wire::to_pb;
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
        let vm = d
            .state
            .vm_by_name(&req.name)
            .ok_or_else(|| Error::NotFound(format!("no VM named {:?}; see `kvmesh vm list`", req.name)))?;
        if let Some(to) = &req.to {
            let node = d
                .state
                .node_by_name(to)
                .ok_or_else(|| Error::NotFound(format!("no node named {to:?}; see `kvmesh node list`")))?;
            return Ok((Some(node.id), None));
        }
        // Where it would go now, its own host left out.
        let evals = d.state.migration_targets(&live.host_facts(&d.state), vm);
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
    let cmd =
        Command::BeginMigration { name: req.name.clone(), target, bandwidth_mib: req.bandwidth_mib, at_ms: now_ms() };
    match ctx.propose_as_leader(cmd).await? {
        CmdResponse::Vm(vm) => {
            info!(target, "live migration begun");
            Ok(pb::MigrateVmReply { vm: Some(ctx.read(|d| to_pb::vm(&d.state, &vm))), explanation })
        }
        CmdResponse::Refused(r) => Err(r.into()),
        other => Err(Error::Raft(format!("unexpected response to BeginMigration: {other:?}"))),
    }
}
