//! Even distribution (oVirt's "evenly distributed" policy): live migrations
//! that bring the hosts' loads within a threshold of each other.
//!
//! A host's load is its larger allocated fraction, vCPUs or memory, of its
//! capacity after overcommit. Each round takes the most loaded `up` host
//! and the least loaded one; if they are further apart than the threshold,
//! it moves the movable VM from the first to the second that leaves the two
//! closest (never making the pair worse, and only where the scheduler's
//! rules allow it). Pure and deterministic: the same views give the same
//! moves, each with its reason.

use serde::{Deserialize, Serialize};

use crate::filter::{admits, check, ClusterFacts};
use crate::model::{NodeState, NodeView, Settings, VmRequest};

/// A VM that may move: its request and the host it is on.
#[derive(Clone, Debug)]
pub struct Placed {
    pub vm: VmRequest,
    pub node: u64,
}

/// One proposed live migration, with why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Move {
    pub vm_id: u64,
    pub vm: String,
    pub from: u64,
    pub to: u64,
    pub why: String,
}

fn load(n: &NodeView, s: &Settings) -> f64 {
    let cpu = n.allocated_vcpus as f64 / n.vcpu_capacity(s).max(1) as f64;
    let mem = n.allocated_memory_mib as f64 / n.memory_capacity(s).max(1) as f64;
    cpu.max(mem)
}

fn release(n: &mut NodeView, vm: &VmRequest) {
    n.allocated_vcpus = n.allocated_vcpus.saturating_sub(vm.vcpus as u64);
    n.allocated_memory_mib = n.allocated_memory_mib.saturating_sub(vm.memory_mib);
    for g in vm.groups() {
        if let Some(c) = n.groups.get_mut(g) {
            *c = c.saturating_sub(1);
        }
    }
}

/// Up to `max_moves` moves that even out the loads of the `up` hosts in
/// `nodes` (which count what is placed, `movable` included) to within
/// `threshold` (a fraction: 0.1 is ten points).
pub fn plan_balance(
    nodes: &[NodeView],
    movable: &[Placed],
    s: &Settings,
    threshold: f64,
    max_moves: usize,
) -> Vec<Move> {
    let mut nodes: Vec<NodeView> = nodes.to_vec();
    let mut movable: Vec<Placed> = movable.to_vec();
    let mut moves = Vec::new();
    while moves.len() < max_moves {
        let up: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].state == NodeState::Up).collect();
        let by_load = |i: &usize| (load(&nodes[*i], s), nodes[*i].id);
        let (Some(&hot), Some(&cold)) = (
            up.iter().max_by(|a, b| by_load(a).partial_cmp(&by_load(b)).unwrap_or(std::cmp::Ordering::Equal)),
            up.iter().min_by(|a, b| by_load(a).partial_cmp(&by_load(b)).unwrap_or(std::cmp::Ordering::Equal)),
        ) else {
            break;
        };
        let (hot_load, cold_load) = (load(&nodes[hot], s), load(&nodes[cold], s));
        if hot == cold || hot_load - cold_load <= threshold {
            break;
        }
        // The VM whose move leaves the pair closest, and closer than now.
        let mut best: Option<(f64, usize)> = None;
        for (i, p) in movable.iter().enumerate().filter(|(_, p)| p.node == nodes[hot].id) {
            let facts = ClusterFacts::of(&nodes, &p.vm);
            if check(&nodes[cold], &p.vm, s, facts).and_then(|()| admits(&nodes[cold], &p.vm)).is_err() {
                continue;
            }
            let (mut h, mut c) = (nodes[hot].clone(), nodes[cold].clone());
            release(&mut h, &p.vm);
            c.reserve(&p.vm);
            let gap = (load(&h, s) - load(&c, s)).abs();
            if gap < hot_load - cold_load
                && best.is_none_or(|(g, j)| gap < g || (gap == g && p.vm.id < movable[j].vm.id))
            {
                best = Some((gap, i));
            }
        }
        let Some((_, i)) = best else { break };
        let p = movable.remove(i);
        release(&mut nodes[hot], &p.vm);
        nodes[cold].reserve(&p.vm);
        moves.push(Move {
            vm_id: p.vm.id,
            vm: p.vm.name.clone(),
            from: nodes[hot].id,
            to: nodes[cold].id,
            why: format!(
                "{} is {:.0}% loaded and {} {:.0}% (more than {:.0} points apart)",
                nodes[hot].name,
                hot_load * 100.0,
                nodes[cold].name,
                cold_load * 100.0,
                threshold * 100.0
            ),
        });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, vms: &[&Placed]) -> NodeView {
        let mut n = NodeView::new(id, &format!("n{id}"), 2, 4096);
        for p in vms.iter().filter(|p| p.node == id) {
            n.reserve(&p.vm);
        }
        n
    }

    fn vm(id: u64, node: u64) -> Placed {
        Placed { vm: VmRequest { id, name: format!("v{id}"), vcpus: 1, memory_mib: 128, ..Default::default() }, node }
    }

    #[test]
    fn six_vms_on_one_of_three_hosts_end_two_on_each() {
        let vms: Vec<Placed> = (1..=6).map(|i| vm(i, 1)).collect();
        let refs: Vec<&Placed> = vms.iter().collect();
        let nodes = vec![node(1, &refs), node(2, &refs), node(3, &refs)];
        let s = Settings::default();
        let moves = plan_balance(&nodes, &vms, &s, 0.1, 10);
        assert_eq!(moves.len(), 4, "{moves:?}");
        assert!(moves.iter().all(|m| m.from == 1 && m.to != 1));
        assert_eq!(moves.iter().filter(|m| m.to == 2).count(), 2);
        assert!(moves[0].why.contains("n1 is 75% loaded"), "{}", moves[0].why);
        // The same views give the same moves; a bound is kept.
        assert_eq!(plan_balance(&nodes, &vms, &s, 0.1, 10), moves);
        assert_eq!(plan_balance(&nodes, &vms, &s, 0.1, 2).len(), 2);
    }

    #[test]
    fn balanced_hosts_and_immovable_vms_stay() {
        let vms: Vec<Placed> = vec![vm(1, 1), vm(2, 2), vm(3, 3)];
        let refs: Vec<&Placed> = vms.iter().collect();
        let nodes = vec![node(1, &refs), node(2, &refs), node(3, &refs)];
        assert_eq!(plan_balance(&nodes, &vms, &Settings::default(), 0.1, 10), vec![]);
        // Packed, but nothing may move: no moves.
        let packed: Vec<Placed> = (1..=4).map(|i| vm(i, 1)).collect();
        let refs: Vec<&Placed> = packed.iter().collect();
        let nodes = vec![node(1, &refs), node(2, &refs)];
        assert_eq!(plan_balance(&nodes, &[], &Settings::default(), 0.1, 10), vec![]);
        // A draining host takes nothing.
        let mut nodes = nodes;
        nodes[1].state = NodeState::Draining;
        assert_eq!(plan_balance(&nodes, &packed, &Settings::default(), 0.1, 10), vec![]);
    }
}
