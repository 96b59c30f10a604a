//! Every host's side of HA: the heartbeat loop, the lease it earns, and
//! self-fencing when the lease runs out.
//!
//! The lease is the *send* time of the latest heartbeat the leader
//! acknowledged (after confirming its quorum). A host whose lease is older
//! than `fence_after` destroys its HA domains and starts none until a
//! heartbeat is acknowledged again; which domains go is decided by the pure
//! [`fence_targets`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmesh_proto as pb;
use kvmesh_proto::NOT_A_MEMBER;
use kvmesh_raft::model::{domain_name, ClusterState, VmId};
use tonic::Status;
use tracing::{debug, error, info, warn};

use super::leader::LeaderView;
use crate::agent::plan::Standing;
use crate::ctx::{forward, NodeCtx};
use crate::guard::kill::{fence_all, qemu_pid_dir};
use crate::guard::rule::Pet;
use crate::guard::{boottime_ns, FENCE_BUDGET};
use crate::hypervisor::{blocking, Domain};

/// This host's lease: when the latest acknowledged heartbeat was sent, and
/// the leader's commit index it carried (its read index).
#[derive(Debug)]
pub struct Lease {
    granted: Mutex<Option<Grant>>,
    fence_after: Duration,
    /// Set once the replica reached a read index under this lease; cleared
    /// when the lease runs out. In between, the replica only lags by the
    /// replication delay, and waiting for every newer read index would
    /// hold up the agent under a steady stream of writes.
    caught_up: std::sync::atomic::AtomicBool,
    /// Where the send time of the latest acknowledged heartbeat is kept
    /// (as CLOCK_BOOTTIME, which every process of this boot shares and no
    /// clock setting moves), so a restarted daemon inherits its lease.
    file: Option<std::path::PathBuf>,
    /// Set while the file is being written, so a slow disk gets one write
    /// at a time and never holds up a heartbeat.
    writing: Arc<std::sync::atomic::AtomicBool>,
    /// How often this process saw the lease run out (and fenced): a start
    /// under way across one may have had its QEMU killed by the fencing.
    losses: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Grant {
    sent: Instant,
    /// `None` for a lease inherited from the previous process: the read
    /// index is unknown, so the node is behind until a heartbeat answers.
    read_index: Option<u64>,
}

impl Lease {
    /// A lease that starts expired, or, with `file`, as the previous
    /// process of this node left it: a daemon restarted within fence_after
    /// of its last acknowledged heartbeat does not destroy its HA guests
    /// (the leader cannot have declared it down yet), but starts nothing
    /// until a heartbeat is answered and it has caught up.
    pub fn new(fence_after: Duration, file: Option<std::path::PathBuf>) -> Self {
        let inherited = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).and_then(|text| {
            let stored: u64 = text.trim().parse().ok()?;
            // A value from an earlier boot is larger than now, or says nothing.
            let age = Duration::from_nanos(boottime_ns()?.checked_sub(stored)?);
            (age < fence_after).then(|| Grant { sent: Instant::now() - age, read_index: None })
        });
        if inherited.is_some() {
            info!("inherited a valid lease from the previous process: no fencing until it runs out");
        }
        Lease {
            granted: Mutex::new(inherited),
            fence_after,
            caught_up: Default::default(),
            file,
            writing: Default::default(),
            losses: Default::default(),
        }
    }

    fn grant(&self) -> Option<Grant> {
        *self.granted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the lease has run out at `now` (or was never granted).
    pub fn expired_at(&self, now: Instant) -> bool {
        lease_expired(self.grant().map(|g| g.sent), now, self.fence_after)
    }

    pub fn expired(&self) -> bool {
        self.expired_at(Instant::now())
    }

    /// How many times the lease ran out so far (see [`fence_loop`]).
    pub fn losses(&self) -> u64 {
        self.losses.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When the lease runs out, as CLOCK_BOOTTIME nanoseconds (what the
    /// guard compares against); `None` without a lease.
    pub fn deadline_ns(&self) -> Option<u64> {
        if cfg!(feature = "unsafe-no-fencing") {
            return Some(u64::MAX);
        }
        let sent = self.grant()?.sent;
        let sent_ns = boottime_ns()?.saturating_sub(sent.elapsed().as_nanos() as u64);
        Some(sent_ns + self.fence_after.as_nanos() as u64)
    }

    /// The agent's [`Standing`]: fenced without a valid lease; current once
    /// the local replica has applied up to the read index of the latest
    /// acknowledged heartbeat (so a restarted node starts nothing from the
    /// state it had before it went down); behind until then.
    pub fn standing(&self, applied: Option<u64>) -> Standing {
        self.standing_at(Instant::now(), applied)
    }

    fn standing_at(&self, now: Instant, applied: Option<u64>) -> Standing {
        use std::sync::atomic::Ordering::Relaxed;
        let standing = match self.grant() {
            _ if cfg!(feature = "unsafe-no-fencing") => Standing::Current,
            None => Standing::Fenced,
            Some(g) if lease_expired(Some(g.sent), now, self.fence_after) => Standing::Fenced,
            _ if self.caught_up.load(Relaxed) => Standing::Current,
            Some(g) if g.read_index.is_some_and(|r| applied.is_some_and(|a| a >= r)) => Standing::Current,
            Some(_) => Standing::Behind,
        };
        self.caught_up.store(standing == Standing::Current, Relaxed);
        standing
    }

    /// Extends the lease to a heartbeat sent at `sent` that was acknowledged.
    fn acknowledged(&self, sent: Instant, read_index: u64) {
        let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        // Acks can arrive out of order; keep the newest send time and the
        // highest read index seen with it.
        let read_index = granted.and_then(|g| g.read_index).map_or(read_index, |r| r.max(read_index));
        let sent = granted.map_or(sent, |g| g.sent.max(sent));
        *granted = Some(Grant { sent, read_index: Some(read_index) });
        drop(granted);
        // Best effort, not synced, and off this task: a lost write only means
        // fencing after a restart, as without the file, and a frozen disk
        // must not stop the heartbeat.
        if let (Some(file), Some(now)) = (&self.file, boottime_ns()) {
            use std::sync::atomic::Ordering::SeqCst;
            if self.writing.compare_exchange(false, true, SeqCst, SeqCst).is_ok() {
                let sent_ns = now.saturating_sub(sent.elapsed().as_nanos() as u64);
                let (file, writing) = (file.clone(), self.writing.clone());
                std::thread::spawn(move || {
                    let _ = std::fs::write(file, sent_ns.to_string());
                    writing.store(false, SeqCst);
                });
            }
        }
    }
}

/// The lease rule: no acknowledged heartbeat, or the latest was sent more
/// than `fence_after` before `now`.
pub fn lease_expired(sent: Option<Instant>, now: Instant, fence_after: Duration) -> bool {
    sent.is_none_or(|sent| now.saturating_duration_since(sent) > fence_after)
}

/// The running domains a fenced host must destroy: its HA VMs, and any VM
/// the state does not know (when in doubt, do not run it).
pub fn fence_targets(state: &ClusterState, domains: &[Domain]) -> Vec<String> {
    let ha: BTreeSet<VmId> = state.vms.values().filter(|v| v.spec.ha).map(|v| v.id).collect();
    domains
        .iter()
        .filter(|d| d.state.is_live())
        .filter(|d| ha.contains(&d.vm_id) || !state.vms.contains_key(&d.vm_id))
        .map(|d| d.name.clone())
        .collect()
}

/// What the guard must kill when the lease runs out: the HA VMs placed
/// here (before they even start, so none is ever unguarded) and every
/// running domain [`fence_targets`] names.
pub fn guard_targets(state: &ClusterState, me: u64, domains: &[Domain]) -> BTreeSet<String> {
    let placed_ha = state.vms.values().filter(|v| v.spec.ha && v.placement.is_some_and(|p| p.node == me));
    placed_ha.map(|v| domain_name(v.id)).chain(fence_targets(state, domains)).collect()
}

/// The guard's pet: the lease deadline and what to kill after it. `None`
/// until this process has listed its domains once: until then it cannot
/// name every running one, and the guard keeps what it was last told.
pub fn pet_for(ctx: &NodeCtx, lease: &Lease) -> Option<Pet> {
    let domains = ctx.listing.last()?.domains;
    Some(Pet { deadline_ns: lease.deadline_ns(), targets: ctx.read(|d| guard_targets(&d.state, ctx.id, &domains)) })
}

/// Destroys this host's running HA domains (self-fencing), all at once and
/// within the fencing budget: QEMU is killed by pid where libvirt keeps pid
/// files, so a libvirtd that does not answer cannot hold fencing up. Also
/// what a node does before it stops on a storage failure: once it is gone,
/// the leader restarts its HA VMs elsewhere.
pub async fn fence(ctx: &Arc<NodeCtx>) {
    // The newest list (kept by the heartbeat, one libvirt call at a time),
    // and every HA VM placed here, listed yet or not.
    let listed = ctx.listing.last().map(|l| l.domains).unwrap_or_default();
    // What runs, and the HA VMs placed here that the list does not show yet
    // (started since); not the ones it shows stopped, or every pass while the
    // lease is out would "kill" them again.
    let targets: Vec<String> = ctx
        .read(|d| guard_targets(&d.state, ctx.id, &listed))
        .into_iter()
        .filter(|name| listed.iter().all(|l| &l.name != name || l.state.is_live()))
        .collect();
    if targets.is_empty() {
        return;
    }
    // A warning only for guests seen running; the others are made sure of.
    if targets.iter().any(|t| listed.iter().any(|l| &l.name == t)) {
        warn!(domains = ?targets, "fencing: no heartbeat acknowledged within fence_after; destroying HA domains");
    } else {
        debug!(domains = ?targets, "fencing: making sure HA domains placed here do not run");
    }
    let (hv, pid_dir) = (ctx.hypervisor.clone(), qemu_pid_dir(&ctx.config.libvirt_uri));
    // A domain that does not exist is not running: nothing to kill.
    let destroy = move |name: &str| match hv.destroy(name) {
        Ok(()) => Ok(true),
        Err(e) if e.to_string().contains("Domain not found") => Ok(false),
        Err(e) => Err(e.to_string()),
    };
    // A plain thread, not the blocking pool, which hung libvirt calls may
    // have filled.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || tx.send(fence_all(&targets, pid_dir.as_deref(), FENCE_BUDGET, destroy)));
    match rx.await {
        Ok(r) if r.failed.is_empty() && r.killed.is_empty() => {}
        // A guest killed is fencing happening, whatever the listing said.
        Ok(r) if r.failed.is_empty() => warn!(killed = ?r.killed, took_ms = r.took.as_millis() as u64, "fenced"),
        Ok(r) => {
            error!(killed = ?r.killed, failed = ?r.failed, took_ms = r.took.as_millis() as u64, "fencing incomplete")
        }
        Err(_) => error!("fencing thread failed"),
    }
}

/// Whether this node belongs to the cluster (latched by the caller): in the
/// state, or a Raft member.
fn registered(ctx: &NodeCtx) -> bool {
    ctx.read(|d| d.state.nodes.contains_key(&ctx.id))
        || ctx.metrics().membership_config.membership().get_node(&ctx.id).is_some()
}

/// Keeps the guard petted and fences the moment the lease runs out. Its
/// own task on a short tick, so fencing never waits for a heartbeat (which
/// may hang on a dead leader for its whole timeout) and a heartbeat never
/// waits for fencing.
pub async fn fence_loop(ctx: Arc<NodeCtx>, lease: Arc<Lease>) {
    let mut registered_once = false;
    let mut fenced_at: Option<Instant> = None;
    let mut granted_once = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Latched, and a Raft member counts too: once removed from the state
        // (`RemoveNode` applies before the membership change, which may fail or
        // not reach it, and the daemon may restart in between), the node must
        // go on fencing and asking the leader, whose refusal is how it learns
        // it is out.
        registered_once = registered_once || registered(&ctx);
        if !registered_once {
            continue;
        }
        if let Some(pet) = pet_for(&ctx, &lease) {
            ctx.guard.pet(pet);
        }
        if !lease.expired() || cfg!(feature = "unsafe-no-fencing") {
            if fenced_at.take().is_some() && granted_once {
                info!("heartbeat acknowledged again: lease restored");
            }
            granted_once = true;
            continue;
        }
        // A warning when a lease is lost; at start, before the first
        // acknowledgement, this is the normal course of things. Fencing
        // itself warns when it finds HA domains to kill.
        if fenced_at.is_none() {
            lease.losses.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        match (fenced_at.is_none(), granted_once) {
            (true, true) => {
                crate::telemetry::get().fenced();
                warn!("lease expired: fencing HA domains until a heartbeat is acknowledged")
            }
            (true, false) => {
                info!("waiting for the leader to acknowledge a heartbeat; HA domains here stay fenced until then")
            }
            _ => {}
        }
        // Again every second while the lease stays out: nothing may have
        // started since, but a kill may have failed.
        if fenced_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            fenced_at = Some(Instant::now());
            fence(&ctx).await;
        }
    }
}

/// Heartbeats the leader forever. Never waits on libvirt or the disk: it
/// sends the newest domain list it has, and says what does not answer.
pub async fn heartbeat_loop(ctx: Arc<NodeCtx>, lease: Arc<Lease>, leader: Arc<LeaderView>) {
    let every = Duration::from_millis(ctx.config.heartbeat_ms);
    let mut registered_once = false;
    loop {
        registered_once = registered_once || registered(&ctx);
        if registered_once {
            let sent = Instant::now();
            match send(&ctx, &leader, every).await {
                // The leader, with its quorum confirmed, does not count this
                // node as a member: it was removed. Final.
                Err(s) if s.code() == tonic::Code::FailedPrecondition && s.message().starts_with(NOT_A_MEMBER) => {
                    warn!(reason = %s.message(), "the leader refused this node's heartbeat: it is not a member");
                    ctx.removed.notify_one();
                    return;
                }
                Ok(ack) => {
                    for vm in ack.stale {
                        let name = domain_name(vm);
                        warn!(domain = %name, "leader reports this domain stale (placed elsewhere now); destroying");
                        // Not awaited: a hung libvirt must not stop the heartbeat.
                        let hv = ctx.hypervisor.clone();
                        tokio::spawn(async move { blocking(&hv, move |hv| hv.destroy(&name)).await });
                    }
                    lease.acknowledged(sent, ack.read_index);
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat not acknowledged"),
            }
        }
        // A `Removed` notice asks for a heartbeat now: the leader's answer
        // to it, not the notice, decides.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = ctx.recheck.notified() => {}
        }
    }
}

/// What a node does once it knows it was removed: its domains must not run
/// on (the leader places its HA VMs elsewhere, an operator recovers the
/// rest), and must not linger in libvirt under an identity that is gone.
/// They are destroyed and undefined; their disks stay, so nothing is lost.
pub async fn leave(ctx: &Arc<NodeCtx>) {
    let mut listed = Err(crate::error::Error::Hypervisor("not asked yet".into()));
    for _ in 0..5 {
        listed = blocking(&ctx.hypervisor, |hv| hv.list()).await;
        if listed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let domains = match listed {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "cannot list this node's domains to remove them: destroy the kvmesh-* domains of this host by hand");
            return;
        }
    };
    for d in domains {
        warn!(domain = %d.name, "removed from the cluster: destroying and undefining (disks kept)");
        let name = d.name.clone();
        if let Err(e) = blocking(&ctx.hypervisor, move |hv| hv.remove(&name, true)).await {
            warn!(domain = %d.name, error = %e, "could not remove the domain");
        }
    }
    // Its guests gone, so are the networks' devices kvmesh made here.
    crate::netconf::remove_all(ctx).await;
}

async fn send(ctx: &Arc<NodeCtx>, leader: &LeaderView, timeout: Duration) -> Result<pb::HeartbeatAck, Status> {
    // The applied index is read before listing, with the starts in flight
    // (see the agent's `StartGuard`): whatever the list lacks, the host had
    // applied this far when it looked, and will not start it from an older
    // plan. A list libvirt has not answered within half a heartbeat is
    // replaced by the last one, with the index read for *it*.
    let before = {
        let ctx = ctx.clone();
        move || {
            let starting = ctx.starting.lock().unwrap_or_else(|p| p.into_inner());
            let applied = ctx.read(|d| d.last_applied.map_or(0, |l| l.index));
            (applied, starting.clone())
        }
    };
    let (listed, hypervisor_problem) = ctx.listing.fresh(&ctx.hypervisor, timeout / 2, before).await;
    let Some(listed) = listed else {
        // Nothing was ever listed: there is nothing true to say yet.
        return Err(Status::unavailable(hypervisor_problem.unwrap_or_else(|| "no domain list yet".into())));
    };
    let cluster_id = ctx.read(|d| d.state.cluster_id().unwrap_or_default().to_string());
    let (domains, starting) = (&listed.domains, &listed.starting);
    let mut reported: Vec<pb::RunningDomain> = domains
        .iter()
        .map(|d| pb::RunningDomain {
            vm_id: d.vm_id,
            epoch: d.epoch,
            running: d.state.is_live() || starting.contains_key(&d.vm_id),
        })
        .collect();
    for (&vm_id, &epoch) in starting {
        if !domains.iter().any(|d| d.vm_id == vm_id) {
            reported.push(pb::RunningDomain { vm_id, epoch, running: true });
        }
    }
    let storage = crate::storage::probe::current(ctx);
    let problem = [hypervisor_problem, ctx.disk_probe.problem()].into_iter().flatten().collect::<Vec<_>>().join("; ");
    let req = pb::HeartbeatRequest {
        node_id: ctx.id,
        applied_index: listed.applied_index,
        cluster_id,
        domains: reported,
        storage,
        fencing: ctx.guard.level().as_str().to_string(),
        problem,
        networks: crate::netconf::current(ctx),
        uefi_missing: ctx.hypervisor.uefi_missing().unwrap_or_default(),
    };
    match ctx.leader() {
        Some((id, _)) if id == ctx.id => leader.receive(ctx, req).await,
        Some((_, address)) => {
            let mut client = pb::host_client::HostClient::new(ctx.channel(&address).map_err(Status::from)?);
            match tokio::time::timeout(timeout, client.heartbeat(forward(req, timeout))).await {
                Ok(r) => r.map(|r| r.into_inner()),
                Err(_) => Err(Status::deadline_exceeded("heartbeat timed out")),
            }
        }
        None => Err(Status::unavailable("no leader")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::RunState;
    use kvmesh_raft::command::Command;
    use kvmesh_raft::model::{Node, NodeState, Settings, Vm, VmSpec};

    fn domain(vm_id: VmId, running: bool) -> Domain {
        Domain {
            name: domain_name(vm_id),
            vm_id,
            epoch: 1,
            spec_gen: 0,
            state: if running { RunState::Running } else { RunState::Off(crate::hypervisor::OffReason::Shutdown) },
        }
    }

    #[test]
    fn a_fenced_host_destroys_running_ha_and_unknown_domains_only() {
        let mut s = ClusterState::default();
        let node = Node {
            id: 1,
            name: "a".into(),
            address: "a:1".into(),
            cpus: 8,
            memory_mib: 8192,
            state: NodeState::Up,
            joined_at_ms: 0,
            labels: Default::default(),
            resume_as: None,
            cold_drain: false,
        };
        s.apply(&Command::Init { cluster_id: "c".into(), settings: Settings::default(), node, at_ms: 0 });
        for (id, ha) in [(10, true), (11, false)] {
            let spec = VmSpec { vcpus: 1, memory_mib: 64, ha, ..Default::default() };
            s.apply(&Command::CreateVm { vm: Box::new(Vm::placed(id, &format!("v{id}"), spec, 1, 0)), at_ms: 0 });
        }
        let domains = [domain(10, true), domain(11, true), domain(12, true), domain(13, false)];
        assert_eq!(fence_targets(&s, &domains), vec![domain_name(10), domain_name(12)]);
    }

    #[test]
    fn a_restarted_daemon_inherits_a_lease_that_has_not_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lease");
        let fence_after = Duration::from_secs(5);
        let now = boottime_ns().unwrap();
        // Acknowledged 1 s ago: valid, but behind (nothing starts, nothing is
        // fenced) until a heartbeat answers.
        std::fs::write(&file, (now - 1_000_000_000).to_string()).unwrap();
        let lease = Lease::new(fence_after, Some(file.clone()));
        assert_eq!(lease.standing(Some(1_000)), Standing::Behind);
        assert!(!lease.expired());
        lease.acknowledged(Instant::now(), 7);
        assert_eq!(lease.standing(Some(7)), Standing::Current);
        // The file follows the acks (written off the caller's thread).
        let newer = || std::fs::read_to_string(&file).ok()?.parse::<u64>().ok().filter(|s| *s > now - 1_000_000_000);
        let until = Instant::now() + Duration::from_secs(5);
        while newer().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(newer().is_some(), "the lease file follows the acks");
        // Too old, from an earlier boot, or damaged: no lease.
        for text in [(now - 6_000_000_000).to_string(), (now + 1_000_000_000_000).to_string(), "x".into()] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(Lease::new(fence_after, Some(file.clone())).standing(Some(1)), Standing::Fenced);
        }
    }

    #[test]
    fn the_lease_runs_out_fence_after_its_send_time() {
        let t0 = Instant::now();
        let fence_after = Duration::from_secs(5);
        assert!(lease_expired(None, t0, fence_after), "never granted");
        assert!(!lease_expired(Some(t0), t0 + Duration::from_secs(5), fence_after));
        assert!(lease_expired(Some(t0), t0 + Duration::from_millis(5001), fence_after));
        let lease = Lease::new(fence_after, None);
        assert_eq!(lease.standing_at(t0, Some(100)), Standing::Fenced, "no lease yet");
        lease.acknowledged(t0 + Duration::from_secs(2), 40);
        lease.acknowledged(t0 + Duration::from_secs(1), 30); // a late answer does not move it back
        assert!(!lease.expired_at(t0 + Duration::from_secs(7)));
        assert!(lease.expired_at(t0 + Duration::from_millis(7001)));
        // Current only once the replica has applied the leader's read index.
        let at = t0 + Duration::from_secs(3);
        assert_eq!(lease.standing_at(at, None), Standing::Behind);
        assert_eq!(lease.standing_at(at, Some(39)), Standing::Behind);
        assert_eq!(lease.standing_at(at, Some(40)), Standing::Current);
        // Caught up once under this lease: a newer read index does not hold
        // the agent up again while the lease lasts ...
        lease.acknowledged(t0 + Duration::from_secs(3), 90);
        assert_eq!(lease.standing_at(at, Some(41)), Standing::Current);
        // ... but after it ran out, the replica must catch up anew.
        assert_eq!(lease.standing_at(t0 + Duration::from_secs(9), Some(41)), Standing::Fenced);
        lease.acknowledged(t0 + Duration::from_secs(9), 100);
        assert_eq!(lease.standing_at(t0 + Duration::from_secs(9), Some(99)), Standing::Behind);
        assert_eq!(lease.standing_at(t0 + Duration::from_secs(9), Some(100)), Standing::Current);
    }
}
