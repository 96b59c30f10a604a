//! The agent's pure core: given what the cluster wants on this host, what
//! libvirt reports, and what the agent remembers, decide what to do.
//!
//! No I/O and no clock: `now_ms` is an input, so every rule (crash backoff,
//! the ACPI shutdown timeout, "no retry storm" after a failure, "nothing
//! starts before this host has caught up") is tested with plain values.

use std::collections::{BTreeMap, HashMap};

use kvmesh_raft::model::{Desired, VmState};

use crate::hypervisor::{Domain, OffReason, RunState};

/// One VM placed on this host at its current epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Want {
    pub vm_id: u64,
    pub name: String,
    pub domain: String,
    pub epoch: u64,
    pub desired: Desired,
    pub force_stop: bool,
    pub desired_gen: u64,
    pub restart_gen: u64,
    /// `Some(keep_disks)` while the VM is being deleted.
    pub deleting: Option<bool>,
    /// What the replicated state holds as reported at this epoch.
    pub reported: Option<(VmState, Option<String>)>,
    /// HA guests run only while the host's lease is valid.
    pub ha: bool,
    /// (index, size) of each disk: a change while it runs is made live.
    pub disks: Vec<(u32, u64)>,
    /// (MAC, network) of each NIC: a change while it runs is made live.
    pub nics: Vec<(String, String)>,
    /// The ISO image in its CD-ROM drive: a change while it runs is made live.
    pub cdrom: Option<String>,
    /// Its vCPUs: a change while it runs is plugged live where the guest's
    /// maximum (its host's CPUs at start) allows.
    pub vcpus: u32,
    /// The epoch of a live migration away from this host, while it runs.
    pub migrating_out: Option<u64>,
}

/// What the agent remembers about a VM between passes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    desired_gen: u64,
    restart_done: u64,
    /// The desired generation at which starting failed; no retry until an
    /// operator asks again (a new generation).
    pub failed_gen: Option<u64>,
    crash_restarts: u32,
    next_start_at_ms: u64,
    stop_requested_at_ms: Option<u64>,
    running_since_ms: Option<u64>,
    /// A start refused by a held disk lease is tried again at this time.
    pub lease_retry_at_ms: Option<u64>,
    /// The last report sent and not yet seen in the replicated state.
    pub last_sent: Option<(u64, VmState, Option<String>)>,
    /// The disks the running guest was last given (at its start, or by a
    /// live change); `None` after the agent restarts, which checks once.
    disks_synced: Option<Vec<(u32, u64)>>,
    nics_synced: Option<Vec<(String, String)>>,
    cdrom_synced: Option<Option<String>>,
    vcpus_synced: Option<u32>,
}

impl Memory {
    /// The vCPU count must be given to the running guest again (its
    /// recording did not go through): the next pass syncs it once more.
    pub fn resync_vcpus(&mut self) {
        self.vcpus_synced = None;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Define the domain (and its volumes) if missing, then start it.
    Create {
        vm_id: u64,
    },
    Start {
        vm_id: u64,
    },
    /// ACPI power-off request.
    Shutdown {
        domain: String,
    },
    Destroy {
        domain: String,
    },
    /// Power-cycle: destroy, then start.
    Restart {
        vm_id: u64,
    },
    Remove {
        domain: String,
        vm_id: u64,
        keep_disks: bool,
    },
    Report {
        vm_id: u64,
        epoch: u64,
        state: VmState,
        error: Option<String>,
        /// The spec generation the running guest was defined from (0 when
        /// nothing runs, or unknown: it never clears a pending change).
        spec_gen: u64,
    },
    /// Give a running guest the disks its spec has now: attach new ones,
    /// grow larger ones.
    SyncDisks {
        vm_id: u64,
    },
    /// Give the running guest the NICs of its spec (hot-plug, unplug).
    SyncNics {
        vm_id: u64,
    },
    /// Put the spec's ISO in the running guest's CD-ROM drive (or eject).
    SyncCdrom {
        vm_id: u64,
    },
    /// Give the running guest the spec's vCPU count (hot-plug).
    SyncVcpus {
        vm_id: u64,
    },
    /// Send the running guest to a migration's target (the shell runs it
    /// once per migration, in the background).
    MigrateOut {
        vm_id: u64,
        epoch: u64,
    },
    /// Let a paused guest run: a migrated one, once its move is recorded.
    Resume {
        domain: String,
    },
}

/// Where this host stands with the cluster; it bounds what a pass may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The lease is valid and the local replica has applied everything the
    /// leader had committed when it last acknowledged a heartbeat: the
    /// local state is as new as the cluster's, so the agent acts on it.
    Current,
    /// The lease is valid but the replica is behind (just restarted, or
    /// catching up): what it says may be stale, so nothing is defined,
    /// started, stopped or reported. Only domains the stale state already
    /// proves superseded (their VM was placed again since) are removed.
    Behind,
    /// No valid lease: as `Behind`, and HA guests are destroyed, since the
    /// leader may be restarting them elsewhere.
    Fenced,
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub shutdown_timeout_ms: u64,
    /// First crash-restart delay; doubles per crash up to `max_backoff_ms`.
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A guest up this long has its crash count reset.
    pub stable_after_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { shutdown_timeout_ms: 30_000, base_backoff_ms: 1_000, max_backoff_ms: 60_000, stable_after_ms: 60_000 }
    }
}

fn report(out: &mut Vec<Action>, want: &Want, mem: &mut Memory, state: VmState, error: Option<String>, spec_gen: u64) {
    let already = want.reported.as_ref() == Some(&(state, error.clone()));
    let sent = mem.last_sent.as_ref() == Some(&(want.epoch, state, error.clone()));
    if already {
        mem.last_sent = None;
    } else if !sent {
        mem.last_sent = Some((want.epoch, state, error.clone()));
        out.push(Action::Report { vm_id: want.vm_id, epoch: want.epoch, state, error, spec_gen });
    }
}

/// Plans one reconcile pass. `last_epochs` holds every VM in the cluster
/// state with the highest epoch it was placed at, to tell a VM that moved
/// away (keep its disks) from one that is gone (delete them), and a copy
/// that was provably superseded from one the state may not know of yet.
/// `incoming` holds the live migrations this host is the target of (VM id
/// -> migration epoch): their paused copies are not stale.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    wants: &[Want],
    domains: &[Domain],
    last_epochs: &BTreeMap<u64, u64>,
    incoming: &BTreeMap<u64, u64>,
    memory: &mut HashMap<u64, Memory>,
    now_ms: u64,
    timing: &Timing,
    standing: Standing,
) -> Vec<Action> {
    let mut out = Vec::new();
    let wanted: HashMap<u64, &Want> = wants.iter().map(|w| (w.vm_id, w)).collect();

    // Domains of ours that no current placement covers: destroy them. A stale
    // epoch means the VM was placed again, so this copy must not run.
    for d in domains {
        let current =
            wanted.get(&d.vm_id).is_some_and(|w| w.epoch == d.epoch) || incoming.get(&d.vm_id) == Some(&d.epoch);
        let superseded = last_epochs.get(&d.vm_id).is_some_and(|last| *last > d.epoch);
        // Behind, "not placed here" may only mean "placed here by an entry
        // not applied yet"; a later epoch is proof even in an old state.
        if !current && (standing == Standing::Current || superseded) {
            let keep_disks = last_epochs.contains_key(&d.vm_id);
            out.push(Action::Remove { domain: d.name.clone(), vm_id: d.vm_id, keep_disks });
        }
    }
    memory.retain(|id, _| wanted.contains_key(id));

    for want in wants {
        let have = domains.iter().find(|d| d.vm_id == want.vm_id && d.epoch == want.epoch);
        let mem = memory.entry(want.vm_id).or_insert_with(|| Memory {
            desired_gen: want.desired_gen,
            restart_done: want.restart_gen,
            // First sight (a restarted daemon): a replicated failure holds
            // until the operator asks again, as it did before the restart.
            failed_gen: matches!(want.reported, Some((VmState::Failed, _))).then_some(want.desired_gen),
            ..Memory::default()
        });
        if mem.desired_gen != want.desired_gen {
            // An operator asked again: forget failures and crash backoff.
            *mem = Memory {
                desired_gen: want.desired_gen,
                restart_done: mem.restart_done,
                disks_synced: mem.disks_synced.take(),
                nics_synced: mem.nics_synced.take(),
                cdrom_synced: mem.cdrom_synced.take(),
                vcpus_synced: mem.vcpus_synced.take(),
                ..Memory::default()
            };
        }
        if let Some(keep_disks) = want.deleting {
            if have.is_some() || !keep_disks {
                out.push(Action::Remove { domain: want.domain.clone(), vm_id: want.vm_id, keep_disks });
            }
            report(&mut out, want, mem, VmState::Deleted, None, 0);
            continue;
        }
        if standing == Standing::Fenced && want.ha {
            // Self-fencing: without a valid lease an HA guest must not run
            // here; the leader may be restarting it elsewhere.
            if have.is_some_and(|h| h.state.is_live()) {
                out.push(Action::Destroy { domain: want.domain.clone() });
            }
            continue;
        }
        if standing != Standing::Current {
            continue;
        }
        if let Some(epoch) = want.migrating_out {
            // The guest is on its way out: nothing else is done to it (a
            // domain gone from here is the migration's doing, not a crash).
            // The shell sends it once; without a send in flight (a daemon
            // restarted mid-migration), the send first asks libvirt: it
            // waits for a job still running, finishes if the domain is gone
            // and the target holds the complete copy, aborts otherwise.
            if !have.is_some_and(|h| matches!(h.state, RunState::Paused | RunState::Changing)) {
                out.push(Action::MigrateOut { vm_id: want.vm_id, epoch });
            }
            continue;
        }
        match want.desired {
            Desired::Running => plan_running(&mut out, want, have, mem, now_ms, timing),
            Desired::Stopped => plan_stopped(&mut out, want, have, mem, now_ms, timing),
        }
    }
    out
}

fn plan_running(out: &mut Vec<Action>, want: &Want, have: Option<&Domain>, mem: &mut Memory, now: u64, t: &Timing) {
    mem.stop_requested_at_ms = None;
    if mem.failed_gen == Some(want.desired_gen) || mem.lease_retry_at_ms.is_some_and(|at| now < at) {
        return;
    }
    let Some(have) = have else {
        mem.restart_done = want.restart_gen;
        mem.disks_synced = Some(want.disks.clone());
        mem.nics_synced = Some(want.nics.clone());
        mem.cdrom_synced = Some(want.cdrom.clone());
        mem.vcpus_synced = Some(want.vcpus);
        out.push(Action::Create { vm_id: want.vm_id });
        return;
    };
    match have.state {
        RunState::Running => {
            if want.restart_gen > mem.restart_done {
                mem.restart_done = want.restart_gen;
                out.push(Action::Restart { vm_id: want.vm_id });
                return;
            }
            let since = *mem.running_since_ms.get_or_insert(now);
            if now.saturating_sub(since) >= t.stable_after_ms {
                mem.crash_restarts = 0;
            }
            if mem.disks_synced.as_ref() != Some(&want.disks) {
                mem.disks_synced = Some(want.disks.clone());
                out.push(Action::SyncDisks { vm_id: want.vm_id });
            }
            if mem.nics_synced.as_ref() != Some(&want.nics) {
                mem.nics_synced = Some(want.nics.clone());
                out.push(Action::SyncNics { vm_id: want.vm_id });
            }
            if mem.cdrom_synced.as_ref() != Some(&want.cdrom) {
                mem.cdrom_synced = Some(want.cdrom.clone());
                out.push(Action::SyncCdrom { vm_id: want.vm_id });
            }
            if mem.vcpus_synced != Some(want.vcpus) {
                mem.vcpus_synced = Some(want.vcpus);
                out.push(Action::SyncVcpus { vm_id: want.vm_id });
            }
            report(out, want, mem, VmState::Running, None, have.spec_gen);
        }
        // Paused at an epoch nothing was reported at yet: a live migration
        // brought it here paused, and its move is now recorded. It runs on.
        // (A guest paused later, by an I/O error say, is left as it is.)
        RunState::Paused if want.reported.is_none() => out.push(Action::Resume { domain: want.domain.clone() }),
        RunState::Paused | RunState::Changing => {}
        RunState::Off(reason) => {
            mem.running_since_ms = None;
            mem.restart_done = want.restart_gen;
            // Every start defines the domain with the disks of the spec.
            mem.disks_synced = Some(want.disks.clone());
            mem.nics_synced = Some(want.nics.clone());
            mem.cdrom_synced = Some(want.cdrom.clone());
            mem.vcpus_synced = Some(want.vcpus);
            let was_running = matches!(want.reported, Some((VmState::Running, _)) | Some((VmState::Crashed, _)));
            mem.lease_retry_at_ms = None;
            if !was_running {
                // Defined but never started, or started again after a stop.
                out.push(Action::Start { vm_id: want.vm_id });
                return;
            }
            if now < mem.next_start_at_ms {
                return;
            }
            mem.crash_restarts += 1;
            let backoff = t.base_backoff_ms.saturating_mul(1 << (mem.crash_restarts - 1).min(16)).min(t.max_backoff_ms);
            mem.next_start_at_ms = now + backoff;
            let why = match reason {
                OffReason::Destroyed => "destroyed outside kvmesh",
                OffReason::Crashed => "crashed",
                OffReason::Shutdown => "powered off from inside the guest",
                OffReason::Other => "stopped unexpectedly",
            };
            let note = format!("{why}; restarting (restart {})", mem.crash_restarts);
            report(out, want, mem, VmState::Crashed, Some(note), 0);
            out.push(Action::Start { vm_id: want.vm_id });
        }
    }
}

fn plan_stopped(out: &mut Vec<Action>, want: &Want, have: Option<&Domain>, mem: &mut Memory, now: u64, t: &Timing) {
    mem.running_since_ms = None;
    match have.map(|h| h.state) {
        Some(RunState::Running | RunState::Paused | RunState::Changing) => {
            let domain = want.domain.clone();
            match mem.stop_requested_at_ms {
                _ if want.force_stop => out.push(Action::Destroy { domain }),
                None => {
                    mem.stop_requested_at_ms = Some(now);
                    out.push(Action::Shutdown { domain });
                }
                Some(at) if now.saturating_sub(at) >= t.shutdown_timeout_ms => {
                    // Said once (reports are deduplicated), so the event log
                    // shows that the guest was cut off, not shut down.
                    let note = format!(
                        "forced power-off: the guest did not shut down within {} s of the ACPI request",
                        t.shutdown_timeout_ms.div_ceil(1000)
                    );
                    report(out, want, mem, VmState::Running, Some(note), 0);
                    out.push(Action::Destroy { domain });
                }
                Some(_) => {}
            }
        }
        Some(RunState::Off(_)) | None => {
            mem.stop_requested_at_ms = None;
            report(out, want, mem, VmState::Stopped, None, 0);
        }
    }
}

#[cfg(test)]
mod tests;
