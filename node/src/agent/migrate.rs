//! Live migration, the hosts' side.
//!
//! The source's agent sends the guest: it asks the target to get ready
//! (`PrepareIncoming`, answered once the target has applied the begin, with
//! what the incoming definition needs), has its libvirtd migrate the
//! domain peer to peer, leaving it paused on the target, then settles the
//! record: `FinishMigration` when libvirt completed, `AbortMigration`
//! otherwise. The target resumes the guest only when the finish is applied
//! (the planner's `Resume`), and keeps its paused copy until then (the
//! planner's `incoming`). The record decides every race: a finish after an
//! abort is refused, an abort after a finish changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::model::{domain_name, parse_vm_id, vm_id_hex, ClusterState, Migration};
use tracing::{info, warn};

use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::hypervisor::{blocking, MigrationTarget};

/// The live migrations `node` is the target of: VM id -> migration epoch.
pub fn incoming(state: &ClusterState, node: u64) -> BTreeMap<u64, u64> {
    state.vms.values().filter_map(|v| v.migration.filter(|m| m.target == node).map(|m| (v.id, m.epoch))).collect()
}

/// The target's answer to its source: ready once this host has applied the
/// migration's begin (so its agent keeps the incoming copy).
pub async fn prepare_incoming(ctx: &Arc<NodeCtx>, req: pb::PrepareIncomingRequest) -> Result<pb::PrepareIncomingReply> {
    let vm_id = parse_vm_id(&req.vm_id).ok_or_else(|| Error::InvalidArgument(format!("bad VM id {:?}", req.vm_id)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let known = ctx.read(|d| {
            d.state
                .vms
                .get(&vm_id)
                .and_then(|v| v.migration)
                .is_some_and(|m| m.target == ctx.id && m.epoch == req.epoch)
        });
        if known {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::FailedPrecondition(format!(
                "{} has not applied the migration of VM {} at epoch {} (or it was aborted)",
                ctx.name, req.vm_id, req.epoch
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(pb::PrepareIncomingReply { node_id: ctx.id, consoles_dir: ctx.hypervisor.consoles_dir() })
}

/// How far this host's migration of VM `name` is (`None`: no job runs).
pub async fn local_progress(ctx: &Arc<NodeCtx>, name: &str) -> Result<pb::MigrationProgress> {
    let id = ctx
        .read(|d| d.state.vm_by_name(name).map(|v| v.id))
        .ok_or_else(|| Error::NotFound(format!("no VM named {name:?}")))?;
    let domain = domain_name(id);
    let progress = blocking(&ctx.hypervisor, move |hv| hv.migration_progress(&domain)).await?;
    progress.ok_or_else(|| Error::FailedPrecondition(format!("no migration of {name} runs on {}", ctx.name)))
}

/// Starts sending a VM to its migration's target, unless that migration is
/// already in flight from this process.
pub fn start(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64) {
    {
        let mut migrating = ctx.migrating.lock().unwrap_or_else(|p| p.into_inner());
        if migrating.get(&vm_id) == Some(&epoch) {
            return;
        }
        migrating.insert(vm_id, epoch);
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = send(&ctx, vm_id, epoch).await;
        match &outcome {
            Ok(()) => {
                info!(vm = %vm_id_hex(vm_id), took_ms = started.elapsed().as_millis() as u64, "live migration completed")
            }
            Err(e) => warn!(vm = %vm_id_hex(vm_id), error = %e, "live migration failed; the guest stays here"),
        }
        settle(&ctx, vm_id, epoch, outcome).await;
        ctx.migrating.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm_id);
    });
}

/// The migration itself: the target's readiness, then libvirt's job.
async fn send(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64) -> Result<()> {
    let m = current(ctx, vm_id, epoch).ok_or_else(|| Error::FailedPrecondition("the migration was aborted".into()))?;
    let address = ctx
        .read(|d| d.state.nodes.get(&m.target).map(|n| n.address.clone()))
        .ok_or_else(|| Error::FailedPrecondition("the target host is gone".into()))?;
    let mut client = pb::host_client::HostClient::new(ctx.channel(&address)?);
    let mut request = tonic::Request::new(pb::PrepareIncomingRequest { vm_id: vm_id_hex(vm_id), epoch });
    request.set_timeout(Duration::from_secs(10));
    let ready = client
        .prepare_incoming(request)
        .await
        .map_err(|s| Error::Unavailable(format!("the target at {address} is not ready: {}", s.message())))?
        .into_inner();
    let host = address.rsplit_once(':').map_or(address.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_string();
    let target = MigrationTarget {
        libvirt_uri: ctx.config.migration_uri.replace("{host}", &host),
        data_uri: Some(format!("tcp://{host}")),
        node_id: ready.node_id,
        epoch,
        consoles_dir: ready.consoles_dir,
        bandwidth_mib: m.bandwidth_mib,
    };
    let domain = domain_name(vm_id);
    info!(%domain, to = %target.libvirt_uri, epoch, "migrating live");
    blocking(&ctx.hypervisor, move |hv| hv.migrate(&domain, &target)).await
}

/// The migration of `vm_id` at `epoch`, while the local replica still holds it.
fn current(ctx: &NodeCtx, vm_id: u64, epoch: u64) -> Option<Migration> {
    ctx.read(|d| d.state.vms.get(&vm_id).and_then(|v| v.migration).filter(|m| m.epoch == epoch))
}

/// Records the outcome, retrying until the cluster has it (or the record
/// is gone: a host went down and the leader aborted it).
async fn settle(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64, outcome: Result<()>) {
    let cmd = match outcome {
        Ok(()) => Command::FinishMigration { vm: vm_id, epoch, at_ms: now_ms() },
        Err(e) => Command::AbortMigration { vm: vm_id, epoch, reason: e.to_string(), at_ms: now_ms() },
    };
    let mut backoff = Duration::from_millis(100);
    while current(ctx, vm_id, epoch).is_some() {
        match ctx.propose(cmd.clone()).await {
            Ok(Response::Refused(r)) => {
                warn!(vm = %vm_id_hex(vm_id), refusal = %r, "the migration's outcome was refused");
                break;
            }
            Ok(_) => {
                // Until the local replica has it, the planner would still
                // see the migration and send again.
                let until = Instant::now() + Duration::from_secs(5);
                while current(ctx, vm_id, epoch).is_some() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                break;
            }
            Err(e) => {
                warn!(vm = %vm_id_hex(vm_id), error = %e, "could not record the migration's outcome; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
