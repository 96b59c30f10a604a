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
use kvmesh_raft::model::{domain_name, ClusterState, VmId};
use tonic::Status;
use tracing::{info, warn};

use super::leader::LeaderView;
use crate::ctx::{forward, NodeCtx};
use crate::hypervisor::{blocking, Domain, RunState};

/// This host's lease: when the latest acknowledged heartbeat was sent.
#[derive(Debug)]
pub struct Lease {
    sent: Mutex<Option<Instant>>,
    fence_after: Duration,
}

impl Lease {
    pub fn new(fence_after: Duration) -> Self {
        Lease { sent: Mutex::new(None), fence_after }
    }

    /// Whether the lease has run out at `now` (or was never granted).
    pub fn expired_at(&self, now: Instant) -> bool {
        let sent = *self.sent.lock().unwrap_or_else(|p| p.into_inner());
        lease_expired(sent, now, self.fence_after)
    }

    pub fn expired(&self) -> bool {
        self.expired_at(Instant::now())
    }

    /// Extends the lease to a heartbeat sent at `sent` that was acknowledged.
    fn acknowledged(&self, sent: Instant) {
        let mut lease = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        *lease = Some(lease.map_or(sent, |l| l.max(sent)));
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
        .filter(|d| d.state == RunState::Running)
        .filter(|d| ha.contains(&d.vm_id) || !state.vms.contains_key(&d.vm_id))
        .map(|d| d.name.clone())
        .collect()
}

/// Destroys this host's running HA domains (self-fencing).
async fn fence(ctx: &Arc<NodeCtx>) {
    let Ok(domains) = blocking(&ctx.hypervisor, |hv| hv.list()).await else { return };
    for name in ctx.read(|d| fence_targets(&d.state, &domains)) {
        warn!(domain = %name, "fencing: no heartbeat acknowledged within fence_after; destroying HA domain");
        if let Err(e) = blocking(&ctx.hypervisor, move |hv| hv.destroy(&name)).await {
            warn!(error = %e, "fencing destroy failed");
        }
    }
}

/// Heartbeats the leader forever; fences first whenever the lease ran out.
pub async fn heartbeat_loop(ctx: Arc<NodeCtx>, lease: Arc<Lease>, leader: Arc<LeaderView>) {
    let every = Duration::from_millis(ctx.config.heartbeat_ms);
    let mut was_fenced = false;
    loop {
        let registered = ctx.read(|d| d.state.nodes.contains_key(&ctx.id));
        if registered {
            if lease.expired() && !cfg!(feature = "unsafe-no-fencing") {
                if !was_fenced {
                    warn!("lease expired or not yet granted: fencing HA domains until a heartbeat is acknowledged");
                }
                was_fenced = true;
                fence(&ctx).await;
            }
            let sent = Instant::now();
            match send(&ctx, &leader, every).await {
                Ok(ack) => {
                    for vm in ack.stale {
                        let name = domain_name(vm);
                        warn!(domain = %name, "leader reports this domain stale (placed elsewhere now); destroying");
                        let _ = blocking(&ctx.hypervisor, move |hv| hv.destroy(&name)).await;
                    }
                    lease.acknowledged(sent);
                    if was_fenced {
                        info!("heartbeat acknowledged again: lease restored");
                        was_fenced = false;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat not acknowledged"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn send(ctx: &Arc<NodeCtx>, leader: &LeaderView, timeout: Duration) -> Result<pb::HeartbeatAck, Status> {
    let domains = blocking(&ctx.hypervisor, |hv| hv.list()).await.map_err(Status::from)?;
    let req = pb::HeartbeatRequest {
        node_id: ctx.id,
        domains: domains
            .iter()
            .map(|d| pb::RunningDomain { vm_id: d.vm_id, epoch: d.epoch, running: d.state == RunState::Running })
            .collect(),
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
    use kvmesh_raft::command::Command;
    use kvmesh_raft::model::{Node, NodeState, Settings, Vm, VmSpec};

    fn domain(vm_id: VmId, running: bool) -> Domain {
        Domain {
            name: domain_name(vm_id),
            vm_id,
            epoch: 1,
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
    fn the_lease_runs_out_fence_after_its_send_time() {
        let t0 = Instant::now();
        let fence_after = Duration::from_secs(5);
        assert!(lease_expired(None, t0, fence_after), "never granted");
        assert!(!lease_expired(Some(t0), t0 + Duration::from_secs(5), fence_after));
        assert!(lease_expired(Some(t0), t0 + Duration::from_millis(5001), fence_after));
        let lease = Lease::new(fence_after);
        lease.acknowledged(t0 + Duration::from_secs(2));
        lease.acknowledged(t0 + Duration::from_secs(1)); // a late answer does not move it back
        assert!(!lease.expired_at(t0 + Duration::from_secs(7)));
        assert!(lease.expired_at(t0 + Duration::from_millis(7001)));
    }
}
