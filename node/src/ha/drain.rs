//! Live drains, the leader's side. A drain leaves each running VM that can
//! move live placed on the draining host, marked as moving off it; here the
//! leader migrates them, a few at a time (the limits of the migration
//! rules), each to the scheduler's pick. One that can no longer move live
//! (it stopped meanwhile, say) is handed back to the drain, which stops it
//! and starts it elsewhere; a migration that fails does the same (see
//! `abort_migration`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kvmesh_raft::command::migrations::{MAX_IN_CLUSTER, MAX_OUTGOING_PER_HOST};
use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::model::{ClusterState, NodeState, VmId};
use kvmesh_raft::view::HostFacts;
use kvmesh_raft::NodeId;
use kvmesh_scheduler as scheduler;
use tracing::{info, warn};

use super::leader::LeaderView;
use crate::ctx::{now_ms, NodeCtx};

/// What the leader does for live drains on one pass.
#[derive(Debug, Default, PartialEq)]
pub struct DrainStep {
    /// (VM name, target) migrations to begin.
    pub begin: Vec<(String, NodeId)>,
    /// Draining hosts holding a VM that can no longer move live: drained
    /// again, which stops and starts it elsewhere.
    pub redrain: BTreeSet<NodeId>,
    /// VMs that wait, with why (no host fits them now).
    pub waiting: Vec<(VmId, String)>,
}

/// Pure: the VMs still placed on a draining host they are moving off,
/// within what the migration limits leave room for.
pub fn step(state: &ClusterState, facts: &HostFacts) -> DrainStep {
    let mut out = DrainStep::default();
    let in_flight: Vec<_> = state.vms.values().filter_map(|v| v.migration).collect();
    let mut cluster_room = MAX_IN_CLUSTER.saturating_sub(in_flight.len());
    let mut leaving: HashMap<NodeId, usize> = HashMap::new();
    for m in &in_flight {
        *leaving.entry(m.source).or_default() += 1;
    }
    for vm in state.vms.values() {
        let Some(p) = vm.placement else { continue };
        let draining = state.nodes.get(&p.node).is_some_and(|n| n.state == NodeState::Draining);
        if !draining || vm.moving_from != Some(p.node) || vm.migration.is_some() || vm.deleting.is_some() {
            continue;
        }
        if state.moves_live(vm, false).is_err() {
            out.redrain.insert(p.node);
            continue;
        }
        let from_here = leaving.entry(p.node).or_default();
        if cluster_room == 0 || *from_here >= MAX_OUTGOING_PER_HOST {
            continue;
        }
        let evals = state.migration_targets(facts, vm, false);
        match evals.iter().find(|e| e.chosen) {
            Some(chosen) => {
                out.begin.push((vm.name.clone(), chosen.node_id));
                cluster_room -= 1;
                *from_here += 1;
            }
            None => {
                let why = evals
                    .iter()
                    .filter_map(|e| match &e.outcome {
                        scheduler::Outcome::Rejected(r) => Some(format!("{}: {r}", e.node)),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                out.waiting.push((vm.id, format!("no host can take it live: {why}")));
            }
        }
    }
    out
}

/// Runs one pass; `told` remembers what was logged about waiting VMs, so
/// each reason is logged once.
pub async fn migrate_draining(
    ctx: &Arc<NodeCtx>,
    leader: &LeaderView,
    told: &mut HashMap<VmId, String>,
) -> crate::error::Result<()> {
    let liveness = leader.liveness();
    let plan = ctx.read(|d| step(&d.state, &liveness.host_facts(&d.state)));
    for (vm, why) in &plan.waiting {
        if told.get(vm) != Some(why) {
            warn!(vm, reason = %why, "a draining host's VM waits to move live");
            told.insert(*vm, why.clone());
        }
    }
    for (name, target) in plan.begin {
        let cmd = Command::BeginMigration {
            name: name.clone(),
            target,
            bandwidth_mib: 0,
            copy_storage: false,
            at_ms: now_ms(),
        };
        match ctx.propose_as_leader(cmd).await? {
            Response::Refused(r) => info!(vm = %name, reason = %r, "drain: migration not begun; trying again"),
            _ => info!(vm = %name, target, "drain: migrating live"),
        }
    }
    for id in plan.redrain {
        let cold = ctx.read(|d| d.state.nodes.get(&id).is_some_and(|n| n.cold_drain));
        ctx.propose_as_leader(Command::Drain { id, cold, at_ms: now_ms() }).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_raft::command::Command;
    use kvmesh_raft::model::{Node, Reported, Settings, Vm, VmSpec, VmState};

    fn state(vms: u64) -> ClusterState {
        let mut s = ClusterState::default();
        let node = |id: u64| Node {
            id,
            name: format!("n{id}"),
            address: format!("a:{id}"),
            cpus: 64,
            memory_mib: 65536,
            state: NodeState::Up,
            joined_at_ms: 0,
            labels: Default::default(),
            resume_as: None,
            cold_drain: false,
        };
        s.apply(&Command::Init { cluster_id: "c".into(), settings: Settings::default(), node: node(1), at_ms: 0 });
        for id in 2..=3 {
            s.apply(&Command::AddNode { node: node(id), at_ms: 0 });
        }
        for i in 0..vms {
            let mut vm =
                Vm::placed(10 + i, &format!("v{i}"), VmSpec { vcpus: 1, memory_mib: 256, ..Default::default() }, 1, 0);
            vm.reported = Some(Reported { state: VmState::Running, node: 1, epoch: 1, since_ms: 0, last_error: None });
            s.apply(&Command::CreateVm { vm: Box::new(vm), at_ms: 0 });
            s.vms.get_mut(&(10 + i)).unwrap().reported =
                Some(Reported { state: VmState::Running, node: 1, epoch: 1, since_ms: 0, last_error: None });
        }
        s
    }

    #[test]
    fn a_live_drain_moves_two_at_a_time_to_other_hosts() {
        let mut s = state(5);
        s.apply(&Command::Drain { id: 1, cold: false, at_ms: 1 });
        let first = step(&s, &HostFacts::default());
        assert_eq!(first.begin.len(), MAX_OUTGOING_PER_HOST, "{first:?}");
        assert!(first.begin.iter().all(|(_, t)| *t != 1), "never to the draining host");
        for (name, target) in &first.begin {
            s.apply(&Command::BeginMigration {
                name: name.clone(),
                target: *target,
                bandwidth_mib: 0,
                copy_storage: false,
                at_ms: 2,
            });
        }
        assert_eq!(step(&s, &HostFacts::default()).begin, vec![], "the limit holds while two are in flight");
        // One finishes: the next one starts.
        let (vm, m) = s.vms.values().find_map(|v| v.migration.map(|m| (v.id, m))).unwrap();
        s.apply(&Command::FinishMigration { vm, epoch: m.epoch, downtime_ms: None, at_ms: 3 });
        assert_eq!(step(&s, &HostFacts::default()).begin.len(), 1);
        // One stopped meanwhile: the drain takes it back, to stop and start it.
        let other =
            s.vms.values().find(|v| v.migration.is_none() && v.placement.is_some_and(|p| p.node == 1)).unwrap().id;
        s.vms.get_mut(&other).unwrap().reported = None;
        assert!(step(&s, &HostFacts::default()).redrain.contains(&1));
    }
}
