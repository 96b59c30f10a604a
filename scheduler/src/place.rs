//! Placing one VM: the fast path the leader uses, and the full explanation
//! that `vm explain` and refusals show.

use serde::{Deserialize, Serialize};

use crate::filter::{admits, check, check_capacity, ClusterFacts, Rejection};
use crate::model::{NodeView, Settings, VmRequest};
use crate::score::{score, score_with, tie_break, Score};

/// A node that was ruled out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRejection {
    pub node: String,
    pub reason: Rejection,
}

/// The outcome of placing one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Place {
        node_id: u64,
        node: String,
    },
    /// No node fits; one reason per node (empty when there are no nodes).
    Unplaceable {
        rejections: Vec<NodeRejection>,
    },
}

/// One node's result in an explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Rejected(Rejection),
    Feasible(Score),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub node_id: u64,
    pub node: String,
    pub outcome: Outcome,
    /// The node the decision picked.
    pub chosen: bool,
}

/// Bigger wins: total score, then the seeded tie-break.
fn better(a: (f64, u64), b: (f64, u64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// Places one VM. Allocates nothing unless the VM fits nowhere.
pub fn place(nodes: &[NodeView], vm: &VmRequest, s: &Settings) -> Decision {
    let facts = ClusterFacts::of(nodes, vm);
    let mut best: Option<(usize, f64)> = None;
    for (i, node) in nodes.iter().enumerate() {
        let Ok(cap) = check_capacity(node, vm, s, facts).and_then(|cap| admits(node, vm).map(|()| cap)) else {
            continue;
        };
        let total = score_with(node, vm, s, cap).total();
        // The tie-break hash is only needed on an exact tie.
        let wins = match best {
            None => true,
            Some((_, b)) if total != b => total > b,
            Some((j, _)) => tie_break(vm.id, node.id) > tie_break(vm.id, nodes[j].id),
        };
        if wins {
            best = Some((i, total));
        }
    }
    match best {
        Some((i, _)) => Decision::Place { node_id: nodes[i].id, node: nodes[i].name.clone() },
        None => Decision::Unplaceable {
            rejections: nodes
                .iter()
                .filter_map(|n| {
                    check(n, vm, s, facts)
                        .and_then(|()| admits(n, vm))
                        .err()
                        .map(|reason| NodeRejection { node: n.name.clone(), reason })
                })
                .collect(),
        },
    }
}

/// Every node's filter result and score, best first; the chosen one marked.
pub fn explain(nodes: &[NodeView], vm: &VmRequest, s: &Settings) -> Vec<Evaluation> {
    let facts = ClusterFacts::of(nodes, vm);
    let mut evals: Vec<(Evaluation, (f64, u64))> = nodes
        .iter()
        .map(|n| {
            let (outcome, key) = match check(n, vm, s, facts).and_then(|()| admits(n, vm)) {
                Err(r) => (Outcome::Rejected(r), (f64::NEG_INFINITY, 0)),
                Ok(()) => {
                    let sc = score(n, vm, s);
                    (Outcome::Feasible(sc), (sc.total(), tie_break(vm.id, n.id)))
                }
            };
            (Evaluation { node_id: n.id, node: n.name.clone(), outcome, chosen: false }, key)
        })
        .collect();
    evals.sort_by(|a, b| {
        if better(a.1, b.1) {
            std::cmp::Ordering::Less
        } else if better(b.1, a.1) {
            std::cmp::Ordering::Greater
        } else {
            a.0.node.cmp(&b.0.node)
        }
    });
    if let Some(first) = evals.first_mut() {
        first.0.chosen = matches!(first.0.outcome, Outcome::Feasible(_));
    }
    evals.into_iter().map(|(e, _)| e).collect()
}

/// Formats an unplaceable decision as one line per node.
pub fn explain_rejections(rejections: &[NodeRejection]) -> String {
    if rejections.is_empty() {
        return "the cluster has no nodes".to_string();
    }
    rejections.iter().map(|r| format!("{}: {}", r.node, r.reason)).collect::<Vec<_>>().join("\n")
}
