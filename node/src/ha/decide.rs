//! The leader's HA decisions, as plain functions of the replicated state,
//! what heartbeats said, and elapsed time. No clock, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use kvmesh_raft::model::{ClusterState, Desired, NodeState, VmId};
use kvmesh_raft::NodeId;

use super::leader::{Heartbeats, Seen};

/// The nodes a leader must not place anything new on: those it has not
/// heard from in this term at all (a newly elected leader knows nothing of
/// any host yet), or not within `limit`.
pub fn unresponsive(state: &ClusterState, hb: &Heartbeats, now: Instant, limit: Duration) -> BTreeSet<NodeId> {
    state.nodes.keys().copied().filter(|id| !hb.seen.contains_key(id) || hb.silent_for(*id, now) > limit).collect()
}

/// A voter down longer than `limit`, and a healthy learner to promote in
/// its place (Incus-style role rebalancing), if there are both.
pub fn voter_to_replace(
    state: &ClusterState,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    down_since: &HashMap<NodeId, Instant>,
    now: Instant,
    limit: Duration,
) -> Option<(NodeId, NodeId)> {
    let dead = voters
        .iter()
        .find(|v| down_since.get(v).is_some_and(|t| now.saturating_duration_since(*t) > limit))
        .copied()?;
    let learner = learners.iter().copied().find(|l| state.nodes.get(l).is_some_and(|n| n.state == NodeState::Up))?;
    Some((dead, learner))
}

/// What the leader knows of one node's liveness.
#[derive(Clone, Debug, PartialEq)]
pub struct Liveness {
    /// Time since its last heartbeat reached this leader, or since this
    /// leader was elected if it has heard nothing yet.
    pub silent_for: Duration,
    /// Its latest heartbeat lists no domain that the state does not place
    /// on it at that epoch.
    pub clean: bool,
    /// Domains it reported running.
    pub running: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAction {
    Down(NodeId),
    Up(NodeId),
    /// A drained node is empty: put it in maintenance.
    Maintenance(NodeId),
}

/// Node state changes. `fresh` is how recent a heartbeat must be to count
/// as "heartbeating again"; `released` are the moves off draining hosts
/// that those hosts have confirmed (see [`released_moves`]).
pub fn node_actions(
    state: &ClusterState,
    live: &BTreeMap<NodeId, Liveness>,
    released: &BTreeSet<VmId>,
    down_after: Duration,
    fresh: Duration,
) -> Vec<NodeAction> {
    let mut out = Vec::new();
    for node in state.nodes.values() {
        let Some(l) = live.get(&node.id) else { continue };
        match node.state {
            NodeState::Up | NodeState::Draining if l.silent_for > down_after => out.push(NodeAction::Down(node.id)),
            NodeState::Down if l.silent_for <= fresh && l.clean => out.push(NodeAction::Up(node.id)),
            NodeState::Draining if l.silent_for <= fresh && l.running == 0 => {
                // Finished only when every VM that was on it runs elsewhere,
                // except stopped ones whose disks are local to it. A stopped
                // VM that moved off has nowhere to run: it is gone once the
                // host has confirmed it (a VM still shutting down is not).
                let left = state.vms.values().any(|v| {
                    (v.placement.map(|p| p.node) == Some(node.id) && !state.pinned_to(v, node.id))
                        || (v.moving_from == Some(node.id)
                            && (v.desired == Desired::Running || !released.contains(&v.id)))
                });
                if !left {
                    out.push(NodeAction::Maintenance(node.id));
                }
            }
            _ => {}
        }
    }
    // Removed hosts that VMs are still placed on: once silent for
    // down_after (fenced by then, if alive), handled as a down host.
    for id in removed_hosts(state) {
        let silent = live.get(&id).is_some_and(|l| l.silent_for > down_after);
        let releasable = state.vms.values().any(|v| {
            v.placement.map(|p| p.node) == Some(id)
                && (v.deleting.is_some() || (v.spec.ha && v.desired == Desired::Running))
        });
        if silent && releasable {
            out.push(NodeAction::Down(id));
        }
    }
    out
}

/// Hosts that VMs are placed on but that are no longer in the cluster
/// (removed with `--force` while they had VMs).
pub fn removed_hosts(state: &ClusterState) -> BTreeSet<NodeId> {
    state.vms.values().filter_map(|v| v.placement.map(|p| p.node)).filter(|n| !state.nodes.contains_key(n)).collect()
}

/// VMs that should run but have no host, and that no live host reports
/// running: these may be placed now. A VM moving off a draining host also
/// needs that host's word that it stopped it (`released`, see
/// [`released_moves`]): silence is not enough, since a partitioned host
/// that never heard of the drain keeps running it.
pub fn placeable(
    state: &ClusterState,
    observed: &BTreeMap<VmId, BTreeSet<NodeId>>,
    released: &BTreeSet<VmId>,
) -> Vec<VmId> {
    state
        .vms
        .values()
        .filter(|v| v.placement.is_none() && v.desired == Desired::Running && v.deleting.is_none())
        .filter(|v| observed.get(&v.id).is_none_or(|nodes| nodes.is_empty()))
        .filter(|v| v.moving_from.is_none() || released.contains(&v.id))
        .map(|v| v.id)
        .collect()
}

/// VMs moving off a host (a drain) that may start elsewhere: the host's
/// latest heartbeat, at most `fresh` old and sent after it applied the move
/// (`moving_since`: the leader's applied index when it first saw the VM
/// moving, at or after the drain's entry), no longer lists them; or the VM
/// is HA and the host has been silent for `down_after`, so it has fenced it.
/// A non-HA VM of a silent host waits for it, or for `vm recover`.
pub fn released_moves(
    state: &ClusterState,
    hb: &Heartbeats,
    moving_since: &HashMap<VmId, u64>,
    now: Instant,
    fresh: Duration,
    down_after: Duration,
) -> BTreeSet<VmId> {
    state
        .vms
        .values()
        .filter(|v| v.placement.is_none())
        .filter_map(|v| v.moving_from.map(|from| (v, from)))
        .filter(|(v, from)| {
            // From a host that had applied the move: it will not start the
            // VM again (a heartbeat from before, taken while the VM was
            // off, proves nothing).
            let applied_move = |seen: &Seen| moving_since.get(&v.id).is_some_and(|at| seen.applied >= *at);
            let stopped_there = hb.seen.get(from).is_some_and(|seen| {
                now.saturating_duration_since(seen.at) <= fresh
                    && applied_move(seen)
                    && !seen.domains.iter().any(|(id, _, running)| *id == v.id && *running)
            });
            stopped_there || (v.spec.ha && hb.silent_for(*from, now) > down_after)
        })
        .map(|(v, _)| v.id)
        .collect()
}

/// Whether a heartbeat's domains all match current placements on `node`.
pub fn is_clean(state: &ClusterState, node: NodeId, domains: &[(VmId, u64, bool)]) -> bool {
    domains.iter().all(|(vm, epoch, _)| {
        state.vms.get(vm).and_then(|v| v.placement).is_some_and(|p| p.node == node && p.epoch == *epoch)
    })
}

/// Domains a heartbeat lists that are not current placements on `node`:
/// the host must destroy them.
pub fn stale(state: &ClusterState, node: NodeId, domains: &[(VmId, u64, bool)]) -> Vec<VmId> {
    domains
        .iter()
        .filter(|(vm, epoch, running)| {
            let vm = state.vms.get(vm);
            let placed = vm.and_then(|v| v.placement).is_some_and(|p| p.node == node && p.epoch == *epoch);
            // A live migration's paused copy on its target is not stale.
            let incoming = vm.and_then(|v| v.migration).is_some_and(|m| m.target == node && m.epoch == *epoch);
            *running && !placed && !incoming
        })
        .map(|(vm, _, _)| *vm)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_raft::command::Command;
    use kvmesh_raft::model::{Node, Settings, Vm, VmSpec};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let node = |id: u64| Node {
            id,
            name: format!("n{id}"),
            address: format!("a:{id}"),
            cpus: 8,
            memory_mib: 8192,
            state: NodeState::Up,
            joined_at_ms: 0,
            labels: Default::default(),
            resume_as: None,
            cold_drain: false,
        };
        s.apply(&Command::Init { cluster_id: "c".into(), settings: Settings::default(), node: node(1), at_ms: 0 });
        s.apply(&Command::AddNode { node: node(2), at_ms: 0 });
        let vm = Vm::placed(10, "web", VmSpec { vcpus: 1, memory_mib: 64, ha: true, ..Default::default() }, 1, 0);
        s.apply(&Command::CreateVm { vm: Box::new(vm), at_ms: 0 });
        s
    }

    fn live(silent_ms: u64, clean: bool, running: usize) -> Liveness {
        Liveness { silent_for: Duration::from_millis(silent_ms), clean, running }
    }

    #[test]
    fn down_after_silence_and_up_only_when_clean() {
        let mut s = state();
        let (down, fresh) = (Duration::from_secs(8), Duration::from_secs(2));
        let l: BTreeMap<_, _> = [(1, live(8_001, true, 1)), (2, live(100, true, 0))].into();
        assert_eq!(node_actions(&s, &l, &BTreeSet::new(), down, fresh), vec![NodeAction::Down(1)]);
        s.apply(&Command::NodeDown { id: 1, at_ms: 1 });
        // The HA VM is unplaced and may be placed once nobody reports it running.
        assert_eq!(placeable(&s, &BTreeMap::new(), &BTreeSet::new()), vec![10]);
        assert!(placeable(&s, &[(10, [1].into())].into(), &BTreeSet::new()).is_empty());
        // Back with a stale copy: not up until it is gone.
        let back: BTreeMap<_, _> = [(1, live(500, false, 1))].into();
        assert!(node_actions(&s, &back, &BTreeSet::new(), down, fresh).is_empty());
        let clean: BTreeMap<_, _> = [(1, live(500, true, 0))].into();
        assert_eq!(node_actions(&s, &clean, &BTreeSet::new(), down, fresh), vec![NodeAction::Up(1)]);
    }

    #[test]
    fn a_new_leader_counts_a_host_live_only_once_it_heard_from_it() {
        let s = state();
        let t0 = Instant::now();
        let limit = Duration::from_secs(3);
        let mut hb = Heartbeats::default();
        hb.for_term(2, t0);
        // Just elected: nobody heard from yet, so nobody is live.
        assert_eq!(unresponsive(&s, &hb, t0 + Duration::from_millis(10), limit), [1, 2].into());
        hb.seen.insert(
            1,
            Seen {
                at: t0 + Duration::from_millis(500),
                domains: vec![],
                applied: 0,
                storage: vec![],
                networks: vec![],
                fencing: String::new(),
                problem: String::new(),
                uefi_missing: String::new(),
            },
        );
        assert_eq!(unresponsive(&s, &hb, t0 + Duration::from_secs(1), limit), [2].into());
        // Heard from, then silent for longer than the limit.
        assert_eq!(unresponsive(&s, &hb, t0 + Duration::from_millis(3501), limit), [1, 2].into());
    }

    #[test]
    fn a_voter_down_too_long_is_replaced_by_an_up_learner() {
        let mut s = state();
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        let voters: BTreeSet<NodeId> = [1].into();
        let learners: BTreeSet<NodeId> = [2].into();
        let down: HashMap<NodeId, Instant> = [(1, t0)].into();
        assert_eq!(voter_to_replace(&s, &voters, &learners, &down, t0 + Duration::from_secs(60), limit), None);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(voter_to_replace(&s, &voters, &learners, &down, later, limit), Some((1, 2)));
        // No healthy learner: nothing to do.
        s.apply(&Command::NodeDown { id: 2, at_ms: 1 });
        assert_eq!(voter_to_replace(&s, &voters, &learners, &down, later, limit), None);
        assert_eq!(voter_to_replace(&s, &voters, &learners, &HashMap::new(), later, limit), None);
    }

    #[test]
    fn stale_domains_are_named() {
        let s = state();
        assert!(is_clean(&s, 1, &[(10, 1, true)]));
        assert!(!is_clean(&s, 1, &[(10, 0, true)]));
        assert!(!is_clean(&s, 2, &[(10, 1, true)]));
        assert_eq!(stale(&s, 2, &[(10, 1, true), (99, 1, false)]), vec![10]);
    }

    #[test]
    fn an_empty_draining_node_goes_to_maintenance() {
        let mut s = state();
        s.apply(&Command::SetNodeState { id: 1, state: NodeState::Draining, at_ms: 1 });
        assert!(s.vms[&10].placement.is_none(), "drain unplaces");
        let l: BTreeMap<_, _> = [(1, live(100, true, 1))].into();
        assert!(
            node_actions(&s, &l, &BTreeSet::new(), Duration::from_secs(8), Duration::from_secs(2)).is_empty(),
            "still running"
        );
        let l: BTreeMap<_, _> = [(1, live(100, true, 0))].into();
        assert!(
            node_actions(&s, &l, &BTreeSet::new(), Duration::from_secs(8), Duration::from_secs(2)).is_empty(),
            "VM not moved yet"
        );
        s.apply(&Command::PlaceVm { vm: 10, node: 2, at_ms: 2 });
        assert_eq!(
            node_actions(&s, &l, &BTreeSet::new(), Duration::from_secs(8), Duration::from_secs(2)),
            vec![NodeAction::Maintenance(1)]
        );
    }

    #[test]
    fn a_stopped_vm_moved_off_a_draining_node_does_not_hold_up_maintenance_once_released() {
        let mut s = state();
        add_vm(&mut s, 11, "idle", false, 1);
        s.apply(&Command::SetDesired { name: "idle".into(), desired: Desired::Stopped, force: false, at_ms: 1 });
        s.apply(&Command::SetNodeState { id: 1, state: NodeState::Draining, at_ms: 2 });
        s.apply(&Command::PlaceVm { vm: 10, node: 2, at_ms: 3 });
        assert_eq!((s.vms[&11].placement, s.vms[&11].moving_from), (None, Some(1)));
        let (down, fresh) = (Duration::from_secs(8), Duration::from_secs(2));
        let l: BTreeMap<_, _> = [(1, live(100, true, 0))].into();
        // Until its host says it no longer runs it (it may still be
        // shutting down), the drain is not over.
        assert!(node_actions(&s, &l, &BTreeSet::new(), down, fresh).is_empty());
        assert_eq!(node_actions(&s, &l, &[11].into(), down, fresh), vec![NodeAction::Maintenance(1)]);
        // Started again before that: it must run elsewhere first.
        s.apply(&Command::SetDesired { name: "idle".into(), desired: Desired::Running, force: false, at_ms: 4 });
        assert!(node_actions(&s, &l, &[11].into(), down, fresh).is_empty());
        s.apply(&Command::SetDesired { name: "idle".into(), desired: Desired::Stopped, force: false, at_ms: 5 });
        // Maintenance ends the move: nothing about the old host stays on it.
        s.apply(&Command::SetNodeState { id: 1, state: NodeState::Maintenance, at_ms: 6 });
        assert_eq!(s.vms[&11].moving_from, None);
    }

    fn add_vm(s: &mut ClusterState, id: VmId, name: &str, ha: bool, node: NodeId) {
        let vm = Vm::placed(id, name, VmSpec { vcpus: 1, memory_mib: 64, ha, ..Default::default() }, node, 0);
        s.apply(&Command::CreateVm { vm: Box::new(vm), at_ms: 0 });
    }

    fn heard(hb: &mut Heartbeats, node: NodeId, at: Instant, running: &[VmId], applied: u64) {
        let domains = running.iter().map(|v| (*v, 1, true)).collect();
        hb.seen.insert(
            node,
            Seen {
                at,
                domains,
                applied,
                storage: vec![],
                networks: vec![],
                fencing: String::new(),
                problem: String::new(),
                uefi_missing: String::new(),
            },
        );
    }

    #[test]
    fn a_drained_vm_moves_only_once_its_host_says_it_stopped_it_or_fenced_it() {
        let mut s = state();
        add_vm(&mut s, 11, "db", false, 1);
        s.apply(&Command::SetNodeState { id: 1, state: NodeState::Draining, at_ms: 1 });
        let (fresh, down) = (Duration::from_secs(2), Duration::from_secs(8));
        let t0 = Instant::now();
        let mut hb = Heartbeats::default();
        hb.for_term(1, t0);
        // The leader saw the move at index 7.
        let since: HashMap<VmId, u64> = [(10, 7), (11, 7)].into();
        heard(&mut hb, 1, t0, &[10, 11], 7);
        // Still listed: nothing moves.
        assert!(released_moves(&s, &hb, &since, t0, fresh, down).is_empty());
        // Not listed (off for a moment), but from before the host applied
        // the drain: it may still start them, so nothing moves.
        heard(&mut hb, 1, t0, &[], 6);
        assert!(released_moves(&s, &hb, &since, t0, fresh, down).is_empty());
        // Host 1 goes silent (a partition): silence is no proof for the
        // non-HA VM, ever; the HA one is fenced after down_after.
        let later = t0 + Duration::from_secs(9);
        assert_eq!(released_moves(&s, &hb, &since, later, fresh, down), [10].into());
        let released = released_moves(&s, &hb, &since, later, fresh, down);
        assert_eq!(placeable(&s, &BTreeMap::new(), &released), vec![10]);
        // The host answers again, having applied the drain, without the VMs:
        // both may move.
        heard(&mut hb, 1, later, &[], 8);
        assert_eq!(released_moves(&s, &hb, &since, later, fresh, down), [10, 11].into());
    }

    #[test]
    fn a_drain_survives_an_outage_and_a_silent_drained_vm_waits_for_recover() {
        let mut s = state();
        add_vm(&mut s, 11, "db", false, 1);
        s.apply(&Command::SetNodeState { id: 1, state: NodeState::Draining, at_ms: 1 });
        s.apply(&Command::NodeDown { id: 1, at_ms: 2 });
        assert_eq!(s.nodes[&1].state, NodeState::Down);
        // `vm recover` vouches for the non-HA VM of the down host.
        s.apply(&Command::RecoverVm { name: "db".into(), at_ms: 3 });
        assert_eq!(s.vms[&11].moving_from, None);
        assert!(placeable(&s, &BTreeMap::new(), &BTreeSet::new()).contains(&11));
        // Back: still draining, not up.
        s.apply(&Command::NodeUp { id: 1, at_ms: 4 });
        assert_eq!(s.nodes[&1].state, NodeState::Draining);
    }

    #[test]
    fn a_drain_asked_for_while_down_moves_what_stayed_once_back() {
        let mut s = state();
        add_vm(&mut s, 11, "db", false, 1);
        s.apply(&Command::NodeDown { id: 1, at_ms: 1 });
        s.apply(&Command::SetNodeState { id: 1, state: NodeState::Draining, at_ms: 2 });
        assert_eq!(s.nodes[&1].state, NodeState::Down);
        assert!(s.vms[&11].placement.is_some(), "waits for the host");
        s.apply(&Command::NodeUp { id: 1, at_ms: 3 });
        assert_eq!(s.nodes[&1].state, NodeState::Draining);
        assert_eq!((s.vms[&11].placement, s.vms[&11].moving_from), (None, Some(1)));
    }

    #[test]
    fn a_force_removed_hosts_vms_wait_until_it_has_been_silent_for_down_after() {
        let mut s = state();
        add_vm(&mut s, 11, "db", false, 1);
        s.apply(&Command::RemoveNode { id: 1, force: true, at_ms: 1 });
        assert!(!s.nodes.contains_key(&1));
        assert_eq!(s.vms[&10].placement.map(|p| p.node), Some(1), "HA VM still placed on the removed host");
        assert_eq!(removed_hosts(&s), [1].into());
        let (down, fresh) = (Duration::from_secs(8), Duration::from_secs(2));
        let l: BTreeMap<_, _> = [(1, live(7_000, true, 0)), (2, live(100, true, 0))].into();
        assert!(node_actions(&s, &l, &BTreeSet::new(), down, fresh).is_empty(), "not silent long enough");
        let l: BTreeMap<_, _> = [(1, live(8_001, true, 0)), (2, live(100, true, 0))].into();
        assert_eq!(node_actions(&s, &l, &BTreeSet::new(), down, fresh), vec![NodeAction::Down(1)]);
        s.apply(&Command::NodeDown { id: 1, at_ms: 2 });
        assert_eq!(placeable(&s, &BTreeMap::new(), &BTreeSet::new()), vec![10]);
        // The non-HA VM waits for `vm recover`, after which nothing repeats.
        assert_eq!(s.vms[&11].placement.map(|p| p.node), Some(1));
        assert!(node_actions(&s, &l, &BTreeSet::new(), down, fresh).is_empty());
        s.apply(&Command::RecoverVm { name: "db".into(), at_ms: 3 });
        assert!(placeable(&s, &BTreeMap::new(), &BTreeSet::new()).contains(&11));
    }
}
