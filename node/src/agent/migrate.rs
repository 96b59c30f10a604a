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
//!
//! With `copy_storage`, the target first makes fresh volumes for the disks
//! on local storage, and libvirt mirrors them as the guest runs. A source
//! daemon that restarts mid-migration asks its libvirt before anything
//! else: a job still running is waited for, and a domain gone from here
//! (libvirt completed and undefined it) is finished only if the target
//! holds the complete paused copy at the migration's epoch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::model::{domain_name, parse_vm_id, vm_id_hex, ClusterState, Migration};
use tracing::{info, warn};

use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::guard::kill::QemuProcess;
use crate::hypervisor::{blocking, CopiedDisk, MigrationTarget, Outgoing};
use crate::storage::volumes;

/// The live migrations `node` is the target of: VM id -> migration epoch.
pub fn incoming(state: &ClusterState, node: u64) -> BTreeMap<u64, u64> {
    state.vms.values().filter_map(|v| v.migration.filter(|m| m.target == node).map(|m| (v.id, m.epoch))).collect()
}

/// The target's answer to its source: ready once this host has applied the
/// migration's begin (so its agent keeps the incoming copy), with the
/// volumes it made for the disks the migration copies. With `check_only`,
/// only whether it holds the complete incoming copy.
pub async fn prepare_incoming(ctx: &Arc<NodeCtx>, req: pb::PrepareIncomingRequest) -> Result<pb::PrepareIncomingReply> {
    let vm_id = parse_vm_id(&req.vm_id).ok_or_else(|| Error::InvalidArgument(format!("bad VM id {:?}", req.vm_id)))?;
    let mut reply =
        pb::PrepareIncomingReply { node_id: ctx.id, consoles_dir: ctx.hypervisor.consoles_dir(), ..Default::default() };
    if req.check_only {
        let (domain, epoch) = (domain_name(vm_id), req.epoch);
        let held = blocking(&ctx.hypervisor, move |hv| hv.incoming_complete(&domain, epoch)).await?;
        reply.complete = held.is_some();
        reply.downtime_ms = held.unwrap_or(0);
        return Ok(reply);
    }
    let applied = |ctx: &NodeCtx| {
        ctx.read(|d| d.state.vms.get(&vm_id).and_then(|v| v.migration))
            .filter(|m| m.target == ctx.id && m.epoch == req.epoch)
    };
    let migration = wait_until(Duration::from_secs(5), || applied(ctx)).await.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "{} has not applied the migration of VM {} at epoch {} (or it was aborted)",
            ctx.name, req.vm_id, req.epoch
        ))
    })?;
    // A copy of the VM still here (this host sent it away a moment ago, and
    // libvirt is still tearing that copy down under its migration job, or a
    // copy of this migration from a source that restarted and asks again)
    // holds the domain's name and, with copied disks, the volumes: wait for
    // it to go (libvirt undefines a sent copy; this host's agent removes any
    // other, since the VM is placed elsewhere).
    let domain = domain_name(vm_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = domain.clone();
        let here = blocking(&ctx.hypervisor, move |hv| Ok(hv.list()?.iter().any(|x| x.name == d))).await?;
        if !here {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::FailedPrecondition(format!(
                "{} still holds a copy of the VM after 30 s (see its log)",
                ctx.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if migration.copy_storage {
        let copies = volumes::when_trash_cleared(ctx, vm_id, || volumes::make_copies(ctx, vm_id)).await?;
        reply.copies = copies.into_iter().collect();
    }
    // The definition the source sends names this host's consoles folder for
    // the cloud-init seed (`retarget`): it must be there before QEMU opens it.
    let files = ctx.read(|d| {
        let vm = d.state.vms.get(&vm_id)?;
        vm.spec.hardware.cloud_init.as_ref().map(|ci| crate::cloud_init::seed_files(vm.id, &vm.name, ci))
    });
    if let Some(files) = files {
        blocking(&ctx.hypervisor, move |hv| hv.build_seed(&domain, &files)).await?;
    }
    Ok(reply)
}

/// Polls `f` every 50 ms until it gives a value or `within` passed.
async fn wait_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Marks the move of `vm_id` at `epoch` as handled by this process: false
/// if it already is (a send or a pull runs, or waits for its outcome).
pub(super) fn claim(ctx: &NodeCtx, vm_id: u64, epoch: u64) -> bool {
    let mut migrating = ctx.migrating.lock().unwrap_or_else(|p| p.into_inner());
    migrating.insert(vm_id, epoch) != Some(epoch)
}

/// Starts sending a VM to its migration's target, unless that migration is
/// already in flight from this process.
pub fn start(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64) {
    // A pass planned before the migration ended (its libvirt calls can take
    // seconds while libvirtd cleans up) must not send again.
    if current(ctx, vm_id, epoch).is_none() || !claim(ctx, vm_id, epoch) {
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = send(&ctx, vm_id, epoch).await;
        let downtime = outcome.as_ref().ok().map(|d| d.map(Duration::from_millis));
        crate::telemetry::get().migration(started.elapsed(), downtime);
        match &outcome {
            Ok(downtime_ms) => info!(
                vm = %vm_id_hex(vm_id),
                took_ms = started.elapsed().as_millis() as u64,
                ?downtime_ms,
                "live migration completed"
            ),
            Err(e) => warn!(vm = %vm_id_hex(vm_id), error = %e, "live migration failed; the guest stays here"),
        }
        settle(&ctx, vm_id, epoch, outcome).await;
        ctx.migrating.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm_id);
    });
}

/// The migration itself: what libvirt here already did (after a restart of
/// this daemon), the target's readiness, then libvirt's job. The guest's
/// downtime, when the target could tell it.
async fn send(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64) -> Result<Option<u64>> {
    let m = current(ctx, vm_id, epoch).ok_or_else(|| Error::FailedPrecondition("the migration was aborted".into()))?;
    let address = ctx
        .read(|d| d.state.nodes.get(&m.target).map(|n| n.address.clone()))
        .ok_or_else(|| Error::FailedPrecondition("the target host is gone".into()))?;
    let mut target = Target { client: pb::host_client::HostClient::new(ctx.channel(&address)?), address, vm_id, epoch };
    let domain = domain_name(vm_id);
    let mut waiting = false;
    loop {
        let d = domain.clone();
        match blocking(&ctx.hypervisor, move |hv| hv.outgoing(&d)).await? {
            Outgoing::Idle => break,
            // Begun by this daemon before it restarted: libvirt drives it on.
            Outgoing::Sending => {
                if !std::mem::replace(&mut waiting, true) {
                    info!(%domain, "a migration begun before this daemon restarted still runs; waiting for it");
                }
                if current(ctx, vm_id, epoch).is_none() {
                    // Aborted meanwhile: the target would throw the copy away.
                    let d = domain.clone();
                    blocking(&ctx.hypervisor, move |hv| hv.cancel_migration(&d)).await?;
                    return Err(Error::FailedPrecondition("the migration was aborted".into()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // libvirt completed it (and undefined the domain here) before
            // this daemon learned of it: the target's copy decides.
            Outgoing::Gone => {
                let held = target.ask(true).await?;
                return match held.complete {
                    true => Ok(Some(held.downtime_ms).filter(|d| *d > 0)),
                    false => Err(Error::FailedPrecondition(
                        "the VM's domain is gone from its source and the target holds no complete copy".into(),
                    )),
                };
            }
            // Stopped for the switch-over with no job left (libvirtd
            // restarted before it learned how the target's Finish went; it
            // leaves that to its caller): the target's copy decides, and if
            // there is none, the guest goes on here.
            Outgoing::Paused => {
                let held = target.ask(true).await?;
                if held.complete {
                    return Ok(Some(held.downtime_ms).filter(|d| *d > 0));
                }
                let d = domain.clone();
                blocking(&ctx.hypervisor, move |hv| hv.resume(&d)).await?;
                return Err(Error::FailedPrecondition(
                    "libvirt lost track of the migration and the target holds no complete copy; the guest goes on here"
                        .into(),
                ));
            }
        }
    }
    let ready = target.ask(false).await?;
    let host = target.host();
    let copy_disks = match m.copy_storage {
        true => volumes::local_paths(ctx, vm_id)
            .await?
            .into_iter()
            .map(|(dev, from)| {
                let to =
                    ready.copies.get(&dev).cloned().ok_or_else(|| {
                        Error::FailedPrecondition(format!("the target made no volume for disk {dev}"))
                    })?;
                Ok(CopiedDisk { dev, from, to })
            })
            .collect::<Result<Vec<_>>>()?,
        false => Vec::new(),
    };
    let to = MigrationTarget {
        libvirt_uri: ctx.config.migration_uri.replace("{host}", &host),
        data_uri: Some(format!("tcp://{host}")),
        node_id: ready.node_id,
        epoch,
        consoles_dir: ready.consoles_dir,
        bandwidth_mib: m.bandwidth_mib,
        copy_disks,
    };
    info!(%domain, to = %to.libvirt_uri, epoch, disks = to.copy_disks.len(), "migrating live");
    // The source's QEMU, held before the job begins: whether it still runs
    // is then known without asking libvirtd, which is busy with the domain.
    let pid_dir = crate::guard::kill::qemu_pid_dir(&ctx.config.libvirt_uri);
    let source = pid_dir.as_deref().and_then(|dir| QemuProcess::of(dir, &domain));
    let hv = ctx.hypervisor.clone();
    let name = domain.clone();
    let mut job = tokio::task::spawn_blocking(move || hv.migrate(&name, &to));
    // libvirt's call returns only after the source's clean-up, a second or
    // more under TCG, with the guest paused all along (the target resumes
    // it only once the finish is recorded). The move is done, and recorded
    // at once, when both hold: the target has the complete copy (its
    // Finish succeeded), and the source's QEMU has exited, which libvirt
    // does only on success (a lost Finish reply resumes the source).
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            done = &mut job => {
                let failed = match done {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => e,
                    Err(e) => Error::Hypervisor(format!("migration task failed: {e}")),
                };
                // Failed, as libvirt's caller sees it. Finished only if the
                // source's copy is dead and the target has the whole guest.
                let d = domain.clone();
                let dead = match &source {
                    Some(qemu) => qemu.exited(),
                    None => matches!(blocking(&ctx.hypervisor, move |hv| hv.outgoing(&d)).await, Ok(Outgoing::Gone)),
                };
                return match (dead, target.ask(true).await) {
                    (true, Ok(held)) if held.complete => Ok(Some(held.downtime_ms).filter(|d| *d > 0)),
                    _ => Err(failed),
                };
            }
            _ = poll.tick() => {
                if !source.as_ref().is_some_and(QemuProcess::exited) {
                    continue;
                }
                if let Ok(held) = target.ask(true).await {
                    if held.complete {
                        info!(%domain, "the source's QEMU has exited and the target holds the complete copy");
                        // libvirt's call ends on its own.
                        return Ok(Some(held.downtime_ms).filter(|d| *d > 0));
                    }
                }
            }
        }
    }
    // The downtime is in the target's job statistics; the move is done
    // whether or not it can be read.
    Ok(target.ask(true).await.ok().filter(|h| h.complete && h.downtime_ms > 0).map(|h| h.downtime_ms))
}

/// The target host, as the source asks it.
struct Target {
    client: pb::host_client::HostClient<tonic::transport::Channel>,
    address: String,
    vm_id: u64,
    epoch: u64,
}

impl Target {
    /// Prepares the target (or, `check_only`, asks what it holds).
    async fn ask(&mut self, check_only: bool) -> Result<pb::PrepareIncomingReply> {
        let req = pb::PrepareIncomingRequest { vm_id: vm_id_hex(self.vm_id), epoch: self.epoch, check_only };
        let mut request = tonic::Request::new(req);
        // Making copies of large disks takes a while; a check does not.
        request.set_timeout(Duration::from_secs(if check_only { 10 } else { 60 }));
        let reply = self.client.prepare_incoming(request).await;
        let address = &self.address;
        reply
            .map(|r| r.into_inner())
            .map_err(|s| Error::Unavailable(format!("the target at {address} is not ready: {}", s.message())))
    }

    /// The host part of its address, as libvirt's URIs take it.
    fn host(&self) -> String {
        let a = self.address.as_str();
        a.rsplit_once(':').map_or(a, |(h, _)| h).trim_matches(['[', ']']).to_string()
    }
}

/// The migration of `vm_id` at `epoch`, while the local replica still holds it.
fn current(ctx: &NodeCtx, vm_id: u64, epoch: u64) -> Option<Migration> {
    ctx.read(|d| d.state.vms.get(&vm_id).and_then(|v| v.migration).filter(|m| m.epoch == epoch))
}

/// Records the outcome, retrying until the cluster has it (or the record
/// is gone: a host went down and the leader aborted it).
pub(super) async fn settle(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64, outcome: Result<Option<u64>>) {
    let cmd = match outcome {
        Ok(downtime_ms) => Command::FinishMigration { vm: vm_id, epoch, downtime_ms, at_ms: now_ms() },
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
