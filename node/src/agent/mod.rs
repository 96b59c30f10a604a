//! The per-host agent: makes this host's libvirt match the replicated state.
//!
//! Each pass reads the VMs placed on this node (local replica) and the
//! node's tagged domains (libvirt), asks the pure [`plan`] what to do, does
//! it on the blocking pool, and reports state *transitions* to the cluster
//! through Raft. A pass runs whenever an applied entry changes what this
//! node should run, and at least every `resync_ms`, which is how guests that
//! die behind kvmesh's back are noticed. Entries about other hosts' VMs cost
//! one scan of the local replica, not a round of libvirt calls.

mod cold_copy;
mod migrate;
pub mod plan;

pub use cold_copy::read_volume;
pub use migrate::{local_progress, prepare_incoming};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::model::{domain_name, vm_id_hex, ClusterState, VmState};
use tracing::{debug, info, instrument, warn};

use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::ha::Lease;
use crate::hypervisor::{blocking, xml, DomainSpec};
use crate::storage::volumes::{self, Prepared};
use plan::{Action, Memory, Standing, Timing, Want};

/// The VMs placed on `node`, and every VM in the cluster with the highest
/// epoch it was ever placed at.
pub fn wants_for(state: &ClusterState, node: u64) -> (Vec<Want>, BTreeMap<u64, u64>) {
    let last_epochs =
        state.vms.values().map(|v| (v.id, v.last_epoch.max(v.placement.map_or(0, |p| p.epoch)))).collect();
    (wants(state, node), last_epochs)
}

/// The VMs placed on `node`.
fn wants(state: &ClusterState, node: u64) -> Vec<Want> {
    state
        .vms_on(node)
        .filter_map(|vm| {
            let p = vm.placement.filter(|p| p.node == node)?;
            let reported = vm
                .reported
                .as_ref()
                .filter(|r| r.node == node && r.epoch == p.epoch)
                .map(|r| (r.state, r.last_error.clone()));
            Some(Want {
                vm_id: vm.id,
                name: vm.name.clone(),
                domain: domain_name(vm.id),
                epoch: p.epoch,
                desired: vm.desired,
                force_stop: vm.force_stop,
                desired_gen: vm.desired_gen,
                restart_gen: vm.restart_gen,
                deleting: vm.deleting.map(|d| d.keep_disks),
                reported,
                ha: vm.spec.ha,
                disks: vm.spec.disks.iter().map(|d| (d.index, d.size_bytes)).collect(),
                nics: vm.spec.nics.iter().map(|n| (n.mac.to_string(), n.network.clone())).collect(),
                cdrom: vm.spec.hardware.cdrom.clone(),
                vcpus: vm.spec.vcpus,
                // A stopped VM's move (a cold copy) is the target's to pull.
                migrating_out: vm
                    .migration
                    .filter(|m| m.source == node && vm.desired == kvmesh_raft::model::Desired::Running)
                    .map(|m| m.epoch),
            })
        })
        .collect()
}

pub async fn run(ctx: Arc<NodeCtx>, lease: Arc<Lease>) {
    let timing = Timing { shutdown_timeout_ms: ctx.config.shutdown_timeout_ms, ..Timing::default() };
    let resync = Duration::from_millis(ctx.config.resync_ms);
    let mut memory: HashMap<u64, Memory> = HashMap::new();
    let mut metrics = ctx.raft.metrics();
    // This node's wants at the last pass: a change elsewhere in the cluster
    // (another host's VM, a description) needs no look at libvirt.
    let mut seen: Option<Vec<Want>> = None;
    let mut seen_changes = None;
    loop {
        let registered = ctx.read(|d| d.state.nodes.contains_key(&ctx.id));
        let mut acted = false;
        let mut waiting = false;
        if registered {
            seen_changes = Some(ctx.read(|d| d.state.changes_on(ctx.id)));
            seen = Some(ctx.read(|d| wants(&d.state, ctx.id)));
            match reconcile(&ctx, &lease, &mut memory, &timing).await {
                Ok(n) => acted = n > 0,
                Err(e) => warn!(error = %e, "reconcile pass failed"),
            }
            // Not yet caught up (or fenced): look again soon rather than at
            // the next change, which may never come.
            waiting = lease.standing(ctx.read(|d| d.last_applied.map(|l| l.index))) != Standing::Current;
        }
        if acted || waiting {
            // Soon after acting (what we did changes what libvirt says); a
            // little later while waiting for the lease or the catch-up.
            tokio::time::sleep(Duration::from_millis(if acted { 50 } else { 250 })).await;
            continue;
        }
        let resync_at = tokio::time::Instant::now() + resync;
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // O(1) when none of this node's VMs changed; O(its VMs) otherwise.
                    let changes = ctx.read(|d| d.state.changes_on(ctx.id));
                    if seen_changes == Some(changes) {
                        continue;
                    }
                    seen_changes = Some(changes);
                    let now = ctx.read(|d| wants(&d.state, ctx.id));
                    if seen.as_ref() != Some(&now) {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(resync_at) => break,
            }
        }
    }
}

/// One pass; returns how many actions it took.
#[instrument(skip_all, fields(node = %ctx.name))]
async fn reconcile(
    ctx: &Arc<NodeCtx>,
    lease: &Lease,
    memory: &mut HashMap<u64, Memory>,
    timing: &Timing,
) -> Result<usize> {
    let (wants, last_epochs, incoming, cold_copies, applied) = ctx.read(|d| {
        let (w, l) = wants_for(&d.state, ctx.id);
        let cold = cold_copy::incoming(&d.state, ctx.id);
        (w, l, migrate::incoming(&d.state, ctx.id), cold, d.last_applied.map(|l| l.index))
    });

    let domains = blocking(&ctx.hypervisor, |hv| hv.list()).await?;
    // Checked first on every pass, so a host resuming from a pause does not
    // run an HA guest on an expired lease, and a restarted one acts on
    // nothing it has not caught up on.
    let standing = lease.standing(applied);
    if standing != Standing::Current {
        debug!(?standing, "not acting on the local replica yet");
    }
    // A cold copy is pulled only on a replica that has caught up: one
    // behind could still show a move that has finished.
    if standing == Standing::Current {
        for (vm_id, epoch) in cold_copies {
            cold_copy::start(ctx, vm_id, epoch);
        }
    }
    let actions = plan::plan(&wants, &domains, &last_epochs, &incoming, memory, now_ms(), timing, standing);
    let count = actions.len();

    for action in actions {
        debug!(?action, "agent action");
        let power_cycle = matches!(action, Action::Restart { .. });
        match action {
            Action::Report { vm_id, epoch, state, error, spec_gen } => {
                if let Err(e) = report(ctx, vm_id, epoch, state, error, spec_gen).await {
                    warn!(vm = %vm_id_hex(vm_id), error = %e, "could not report VM state; will retry");
                    if let Some(m) = memory.get_mut(&vm_id) {
                        m.last_sent = None;
                    }
                }
            }
            Action::Create { vm_id } | Action::Start { vm_id } | Action::Restart { vm_id } => {
                // Every start (a restart too) defines the domain again over
                // its prepared volumes, so a disk added, grown or removed
                // while the VM was stopped, and every pending change, take
                // effect.
                let Some(starting) = StartGuard::begin(ctx, lease, vm_id) else { continue };
                let Some(gen) = ctx.read(|d| d.state.vms.get(&vm_id).map(|v| v.desired_gen)) else { continue };
                let losses = lease.losses();
                guard_knows(ctx, lease, vm_id).await;
                if power_cycle {
                    let domain = domain_name(vm_id);
                    info!(%domain, "power-cycling domain");
                    if let Err(e) = blocking(&ctx.hypervisor, move |hv| hv.destroy(&domain)).await {
                        drop(starting);
                        fail(ctx, memory, vm_id, gen, e).await;
                        continue;
                    }
                }
                let result = match prepare_to_start(ctx, vm_id).await {
                    Ok(_) if !starting.still_current(lease) => {
                        debug!(vm = %vm_id_hex(vm_id), "not starting: the state or the lease moved on while its volumes were prepared");
                        Ok(())
                    }
                    Ok(prepared) => match ctx.read(|d| domain_spec(&d.state, vm_id, ctx, prepared)) {
                        Some(spec) => {
                            info!(vm = %spec.vm_name, domain = %spec.domain, "defining and starting domain");
                            blocking(&ctx.hypervisor, move |hv| {
                                hv.define(&spec)?;
                                hv.start(&spec.domain)
                            })
                            .await
                        }
                        None => Ok(()),
                    },
                    Err(e) => Err(e),
                };
                drop(starting);
                match result {
                    // This host fenced while the guest was starting: its own
                    // guard may have killed the new QEMU. That says nothing
                    // about the VM; the next pass starts it again if the
                    // lease and the placement still allow.
                    Err(e) if lease.losses() != losses => {
                        warn!(vm = %vm_id_hex(vm_id), error = %e, "a start cut short by this host's fencing; trying again");
                        if let Some(m) = memory.get_mut(&vm_id) {
                            m.lease_retry_at_ms = Some(now_ms() + LEASE_RETRY_MS);
                        }
                    }
                    Err(e) => fail(ctx, memory, vm_id, gen, e).await,
                    Ok(()) => {}
                }
            }
            Action::SyncDisks { vm_id } => {
                let domain = domain_name(vm_id);
                let result = match volumes::prepare(ctx, vm_id, true).await {
                    Ok(prepared) => {
                        let disks = prepared.disks;
                        blocking(&ctx.hypervisor, move |hv| hv.sync_disks(&domain, &disks)).await
                    }
                    Err(e) => Err(e),
                };
                live_change(ctx, vm_id, "disk", result).await;
            }
            Action::SyncNics { vm_id } => {
                let domain = domain_name(vm_id);
                let nics = ctx
                    .read(|d| d.state.vms.get(&vm_id).map(|v| crate::netconf::nics_xml(ctx, &d.state, &v.spec.nics)));
                let Some(nics) = nics else { continue };
                let result = blocking(&ctx.hypervisor, move |hv| hv.sync_nics(&domain, &nics)).await;
                live_change(ctx, vm_id, "NIC", result).await;
            }
            Action::SyncCdrom { vm_id } => {
                let domain = domain_name(vm_id);
                let Some((machine, iso)) = ctx.read(|d| {
                    let vm = d.state.vms.get(&vm_id)?;
                    Some((vm.spec.hardware.machine, vm.spec.hardware.cdrom.clone()))
                }) else {
                    continue;
                };
                let iso = match iso {
                    Some(name) => match crate::storage::volumes::image_path(ctx, &name).await {
                        Ok(path) => Some(path),
                        Err(e) => {
                            live_change(ctx, vm_id, "CD-ROM", Err(e)).await;
                            continue;
                        }
                    },
                    None => None,
                };
                let result = blocking(&ctx.hypervisor, move |hv| hv.set_cdrom(&domain, machine, iso.as_deref())).await;
                live_change(ctx, vm_id, "CD-ROM", result).await;
            }
            Action::SyncVcpus { vm_id } => {
                let domain = domain_name(vm_id);
                let Some((vcpus, epoch)) =
                    ctx.read(|d| d.state.vms.get(&vm_id).and_then(|v| Some((v.spec.vcpus, v.placement?.epoch))))
                else {
                    continue;
                };
                let result = blocking(&ctx.hypervisor, move |hv| hv.set_vcpus(&domain, vcpus)).await;
                let plugged = result.is_ok() && pending(ctx, vm_id, "vcpus: ");
                live_change(ctx, vm_id, "vCPU", result).await;
                if plugged {
                    let cmd = Command::VcpusLive { vm: vm_id, node: ctx.id, epoch, vcpus, at_ms: now_ms() };
                    // Unrecorded, the entry would stay pending until the next
                    // start: try again (plugging an equal count does nothing).
                    if let Err(e) = ctx.propose(cmd).await {
                        warn!(vm = %vm_id_hex(vm_id), error = %e, "could not record the vCPUs plugged in; will retry");
                        if let Some(m) = memory.get_mut(&vm_id) {
                            m.resync_vcpus();
                        }
                    }
                }
            }
            Action::Shutdown { domain } => {
                info!(%domain, "asking the guest to shut down (its agent, else ACPI)");
                // A guest agent that hangs can hold the call for a minute:
                // it runs on its own, and the loop goes on (fencing,
                // reports, the destroy after the shutdown timeout).
                let hv = ctx.hypervisor.clone();
                tokio::spawn(async move {
                    if let Err(e) = blocking(&hv, move |hv| hv.shutdown(&domain)).await {
                        warn!(error = %e, "shutdown request failed; will destroy after the timeout");
                    }
                });
            }
            Action::Destroy { domain } => {
                info!(%domain, "destroying domain");
                if let Err(e) = blocking(&ctx.hypervisor, move |hv| hv.destroy(&domain)).await {
                    warn!(error = %e, "destroy failed");
                }
            }
            Action::MigrateOut { vm_id, epoch } => migrate::start(ctx, vm_id, epoch),
            Action::Resume { domain } => {
                info!(%domain, "resuming the guest a live migration brought here");
                if let Err(e) = blocking(&ctx.hypervisor, move |hv| hv.resume(&domain)).await {
                    warn!(error = %e, "resume failed; retrying on the next pass");
                }
            }
            Action::Remove { domain, vm_id: _, keep_disks } => {
                info!(%domain, keep_disks, "removing domain that is no longer placed here");
                if let Err(e) = blocking(&ctx.hypervisor, move |hv| hv.remove(&domain, keep_disks)).await {
                    warn!(error = %e, "remove failed");
                }
            }
        }
    }
    Ok(count)
}

/// A VM's volumes, ready for a start: prepared, and with every disk's lease
/// free (a held one is `waiting-for-lease`, see [`fail`]).
async fn prepare_to_start(ctx: &Arc<NodeCtx>, vm_id: u64) -> Result<Prepared> {
    let prepared = volumes::prepare(ctx, vm_id, false).await?;
    volumes::leases_free(ctx, &prepared).await?;
    Ok(prepared)
}

/// Makes sure the fence guard knows an HA VM before its domain runs, so
/// that no HA guest is ever left unguarded if the daemon dies right after
/// starting it. Bounded: without an answer the start goes ahead, fenced by
/// the daemon alone (the host's fencing level says so).
async fn guard_knows(ctx: &NodeCtx, lease: &Lease, vm_id: u64) {
    if !ctx.read(|d| d.state.vms.get(&vm_id).is_some_and(|v| v.spec.ha)) {
        return;
    }
    // A start comes after an acknowledged heartbeat, so there is a list.
    let Some(pet) = crate::ha::host::pet_for(ctx, lease) else { return };
    let guard = ctx.guard.clone();
    let told = tokio::task::spawn_blocking(move || guard.sync(pet, Duration::from_secs(1))).await.unwrap_or(false);
    if !told {
        warn!(vm = %vm_id_hex(vm_id), "the fence guard did not confirm it guards this HA VM; starting it fenced by the daemon alone");
    }
}

/// A start in flight, registered in [`NodeCtx::starting`] while it lasts.
/// A pass is planned on the state of its start; by the time an action runs
/// (after a slow report, say), the VM may have been moved away (a drain
/// applied since) and even placed elsewhere, or the lease may have run out.
/// So the start checks the *current* state and standing, under the same
/// lock the heartbeat takes to read its applied index: either the heartbeat
/// sees this start, or the start sees the move and does not happen.
struct StartGuard<'a> {
    ctx: &'a NodeCtx,
    vm_id: u64,
}

impl<'a> StartGuard<'a> {
    fn begin(ctx: &'a NodeCtx, lease: &Lease, vm_id: u64) -> Option<Self> {
        let mut starting = ctx.starting.lock().unwrap_or_else(|p| p.into_inner());
        let Some(epoch) = Self::may_start(ctx, lease, vm_id) else {
            debug!(vm = %vm_id_hex(vm_id), "not starting: the state moved on since this pass was planned");
            return None;
        };
        starting.insert(vm_id, epoch);
        Some(StartGuard { ctx, vm_id })
    }

    /// The epoch it may start at: the lease is current and the VM should
    /// run here.
    fn may_start(ctx: &NodeCtx, lease: &Lease, vm_id: u64) -> Option<u64> {
        ctx.read(|d| {
            if lease.standing(d.last_applied.map(|l| l.index)) != Standing::Current {
                return None;
            }
            let vm = d.state.vms.get(&vm_id)?;
            let here = vm.placement.filter(|p| p.node == ctx.id)?;
            (vm.desired == kvmesh_raft::model::Desired::Running && vm.deleting.is_none()).then_some(here.epoch)
        })
    }

    /// Checked again right before the guest starts: preparing its volumes
    /// (a create, a Raft round trip, a slow mount) may outlast the lease or
    /// see the VM moved meanwhile, and a second QEMU must not open volumes
    /// another host now uses.
    fn still_current(&self, lease: &Lease) -> bool {
        let starting = self.ctx.starting.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = starting.get(&self.vm_id).copied();
        let now = Self::may_start(self.ctx, lease, self.vm_id);
        drop(starting);
        epoch.is_some() && epoch == now
    }
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        self.ctx.starting.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.vm_id);
    }
}

/// How often a start refused by a held disk lease is tried again.
const LEASE_RETRY_MS: u64 = 2_000;

/// Records a failed start: reported once, not retried until the operator
/// acts; or, when a disk lease is held elsewhere, `waiting-for-lease`,
/// retried every [`LEASE_RETRY_MS`] until the holder is gone.
async fn fail(ctx: &Arc<NodeCtx>, memory: &mut HashMap<u64, Memory>, vm_id: u64, gen: u64, e: Error) {
    let message = e.to_string();
    let waiting = crate::hypervisor::lease_held(&message);
    if waiting {
        info!(vm = %vm_id_hex(vm_id), error = %message, "a disk lease is held elsewhere: waiting for it");
    } else {
        warn!(vm = %vm_id_hex(vm_id), error = %message, "VM failed");
    }
    if let Some(m) = memory.get_mut(&vm_id) {
        if waiting {
            m.lease_retry_at_ms = Some(now_ms() + LEASE_RETRY_MS);
        } else {
            m.failed_gen = Some(gen);
        }
    }
    let Some((epoch, waiting_since)) = ctx.read(|d| {
        let vm = d.state.vms.get(&vm_id)?;
        let epoch = vm.placement?.epoch;
        let waiting_since = vm
            .reported
            .as_ref()
            .filter(|r| r.node == ctx.id && r.epoch == epoch && r.state == VmState::WaitingForLease)
            .map(|r| r.last_error.clone());
        Some((epoch, waiting_since))
    }) else {
        return;
    };
    let (state, error) = if waiting {
        let error = format!("a disk is locked by another process (the copy of a host not fenced yet?): {message}");
        // A retry refused the same way is no news: nothing to write.
        if waiting_since == Some(Some(error.clone())) {
            return;
        }
        (VmState::WaitingForLease, error)
    } else {
        (VmState::Failed, message)
    };
    if let Err(e) = report(ctx, vm_id, epoch, state, Some(error), 0).await {
        warn!(error = %e, "could not report the failure");
    }
}

/// Logs what a live disk or NIC change did; a failure shows on the VM (the
/// guest runs on, and the change applies at its next start).
async fn live_change(ctx: &NodeCtx, vm_id: u64, what: &str, result: Result<Vec<String>>) {
    match result {
        Ok(done) if !done.is_empty() => {
            info!(vm = %vm_id_hex(vm_id), changes = ?done, "changed the running guest's {what}s")
        }
        Ok(_) => {}
        Err(e) => {
            warn!(vm = %vm_id_hex(vm_id), error = %e, "live {what} change failed");
            let epoch = ctx.read(|d| d.state.vms.get(&vm_id).and_then(|v| v.placement).map(|p| p.epoch));
            if let Some(epoch) = epoch {
                let error = Some(format!("{what} change not applied live: {e}; it applies at the next start"));
                let _ = report(ctx, vm_id, epoch, VmState::Running, error, 0).await;
            }
        }
    }
}

/// Whether a change of `field` ("vcpus: ") waits for the VM's next start.
fn pending(ctx: &NodeCtx, vm_id: u64, field: &str) -> bool {
    ctx.read(|d| d.state.vms.get(&vm_id).is_some_and(|v| v.pending_changes.iter().any(|p| p.starts_with(field))))
}

/// The domain definition of a VM placed here, from the replicated spec and
/// its prepared volumes.
fn domain_spec(state: &ClusterState, vm_id: u64, ctx: &NodeCtx, prepared: Prepared) -> Option<DomainSpec> {
    let vm = state.vms.get(&vm_id)?;
    let p = vm.placement?;
    Some(DomainSpec {
        domain: domain_name(vm.id),
        vm_id: vm.id,
        vm_name: vm.name.clone(),
        node_id: ctx.id,
        epoch: p.epoch,
        domain_type: ctx.config.virt_type.clone(),
        spec_gen: vm.spec_gen,
        vcpus: vm.spec.vcpus,
        // Room to plug vCPUs into the running guest, up to the host's CPUs.
        max_vcpus: xml::vcpu_room(vm.spec.vcpus, state.nodes.get(&ctx.id).map_or(0, |n| n.cpus)),
        memory_mib: vm.spec.memory_mib,
        disks: prepared.disks.iter().map(|(index, path, _)| (*index, path.clone())).collect(),
        kernel: prepared.kernel.clone(),
        initrd: prepared.initrd.clone(),
        cmdline: vm.spec.cmdline.clone(),
        nics: crate::netconf::nics_xml(ctx, state, &vm.spec.nics),
        console_log: None,
        uuid: None,
        machine: vm.spec.hardware.machine,
        firmware: vm.spec.hardware.firmware,
        cpu_model: vm.spec.hardware.cpu_model.clone(),
        boot_order: vm.spec.hardware.boot_order(),
        cdrom: prepared.cdrom,
        uefi: None,
        vnc_socket: None,
        guest_agent: false,
        cloud_init: vm.spec.hardware.cloud_init.as_ref().map(|ci| crate::cloud_init::seed_files(vm.id, &vm.name, ci)),
        seed: None,
    })
}

/// Records a state transition through the one write path; `false` if the
/// cluster refused it as stale (the VM moved on or is gone). `spec_gen` is
/// the spec generation a running guest was defined from (0: unknown).
pub async fn report(
    ctx: &NodeCtx,
    vm: u64,
    epoch: u64,
    state: VmState,
    error: Option<String>,
    spec_gen: u64,
) -> Result<bool> {
    let cmd = Command::ReportVm { vm, node: ctx.id, epoch, state, error, spec_gen, at_ms: now_ms() };
    Ok(!matches!(ctx.propose(cmd).await?, Response::Refused(_)))
}

/// What the guest agent of a VM this host runs says.
pub async fn local_guest_info(ctx: &Arc<NodeCtx>, name: &str) -> Result<pb::GuestInfo> {
    let id = ctx
        .read(|d| d.state.vm_by_name(name).filter(|v| v.placement.is_some_and(|p| p.node == ctx.id)).map(|v| v.id))
        .ok_or_else(|| Error::FailedPrecondition(format!("VM {name} does not run on {}", ctx.name)))?;
    let domain = domain_name(id);
    blocking(&ctx.hypervisor, move |hv| hv.guest_info(&domain))
        .await?
        .ok_or_else(|| Error::NotFound(format!("no guest agent answers in {name}")))
}

/// Reads the console of a VM that this host runs.
pub async fn local_console(ctx: &Arc<NodeCtx>, name: &str, bytes: u64) -> Result<pb::ConsoleReply> {
    let vm = ctx
        .read(|d| d.state.vm_by_name(name).map(|v| (v.id, v.placement)))
        .ok_or_else(|| Error::NotFound(format!("no VM named {name:?}")))?;
    if vm.1.map(|p| p.node) != Some(ctx.id) {
        return Err(Error::FailedPrecondition(format!("VM {name} does not run on {}", ctx.name)));
    }
    let domain = domain_name(vm.0);
    let bytes = if bytes == 0 { 64 * 1024 } else { bytes };
    let data = blocking(&ctx.hypervisor, move |hv| hv.console(&domain, bytes)).await?;
    Ok(pb::ConsoleReply { data, node: ctx.name.clone() })
}
