//! Voter arithmetic, as plain functions: which learner takes a voter's
//! place, and what removing a node takes. Shared by `cluster remove`
//! (`api::membership::remove`) and the leader's dead-voter replacement
//! (`ha::decide::voter_to_replace`); the shells around them probe peers and
//! change membership, and these decide.

use std::collections::BTreeSet;

use kvmesh_raft::NodeId;

/// The first learner (in id order) that may take a voter's seat.
pub fn replacement(learners: &BTreeSet<NodeId>, except: NodeId, fit: impl Fn(NodeId) -> bool) -> Option<NodeId> {
    learners.iter().copied().filter(|l| *l != except).find(|l| fit(*l))
}

/// What removing one node takes, once it has been decided that it may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovalPlan {
    pub id: NodeId,
    /// Its record in the replicated state goes (`RemoveNode`).
    pub in_state: bool,
    /// It is a Raft member (voter or learner) and leaves the membership.
    pub in_raft: bool,
    pub is_voter: bool,
    /// A reachable learner promoted first, to keep the voter count.
    pub promote: Option<NodeId>,
    /// Its VMs, if any, are left unplaced (`apply` re-checks this).
    pub force: bool,
}

/// Why a removal is refused, with what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    LastVoter,
    HasVms(u32),
    /// The voters left would not form a working majority: (how many remain,
    /// how many of them answer, the ids that do not).
    NoQuorum {
        remaining: usize,
        alive: usize,
        dead: Vec<NodeId>,
    },
    /// A membership change commits in the old configuration too (joint
    /// consensus): the current voters must have a majority that answers.
    NoCurrentQuorum {
        voters: usize,
        alive: usize,
        dead: Vec<NodeId>,
    },
}

/// Facts the removal plan needs, gathered by the shell.
pub struct RemovalFacts<'a> {
    pub id: NodeId,
    pub in_state: bool,
    pub in_raft: bool,
    pub voters: &'a BTreeSet<NodeId>,
    pub learners: &'a BTreeSet<NodeId>,
    /// Members that answered a probe (the leader counts itself).
    pub reachable: &'a BTreeSet<NodeId>,
    pub placed_vms: u32,
    pub force: bool,
}

/// Decides a removal: refused while VMs are placed (unless forced), for the
/// last voter, and when the voters left (with a promoted learner) would
/// not have a majority that answers.
pub fn plan_removal(f: &RemovalFacts) -> Result<RemovalPlan, Refused> {
    let is_voter = f.voters.contains(&f.id);
    if is_voter && f.voters.len() == 1 {
        return Err(Refused::LastVoter);
    }
    if f.placed_vms > 0 && !f.force {
        return Err(Refused::HasVms(f.placed_vms));
    }
    let promote = if is_voter { replacement(f.learners, f.id, |l| f.reachable.contains(&l)) } else { None };
    if f.in_raft {
        let dead: Vec<NodeId> = f.voters.iter().copied().filter(|v| !f.reachable.contains(v)).collect();
        let alive = f.voters.len() - dead.len();
        if alive * 2 <= f.voters.len() {
            return Err(Refused::NoCurrentQuorum { voters: f.voters.len(), alive, dead });
        }
    }
    if is_voter {
        let remaining: BTreeSet<NodeId> = f.voters.iter().copied().filter(|v| *v != f.id).chain(promote).collect();
        let dead: Vec<NodeId> = remaining.iter().copied().filter(|v| !f.reachable.contains(v)).collect();
        let alive = remaining.len() - dead.len();
        if alive * 2 <= remaining.len() {
            return Err(Refused::NoQuorum { remaining: remaining.len(), alive, dead });
        }
    }
    Ok(RemovalPlan { id: f.id, in_state: f.in_state, in_raft: f.in_raft, is_voter, promote, force: f.force })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        id: NodeId,
        voters: &'a BTreeSet<NodeId>,
        learners: &'a BTreeSet<NodeId>,
        reachable: &'a BTreeSet<NodeId>,
    ) -> RemovalFacts<'a> {
        RemovalFacts { id, in_state: true, in_raft: true, voters, learners, reachable, placed_vms: 0, force: false }
    }

    #[test]
    fn a_voter_is_replaced_by_a_reachable_learner() {
        let (voters, learners, up) = ([1, 2, 3].into(), [4, 5].into(), [1, 2, 3, 5].into());
        let plan = plan_removal(&facts(3, &voters, &learners, &up)).unwrap();
        assert_eq!(
            plan,
            RemovalPlan { id: 3, in_state: true, in_raft: true, is_voter: true, promote: Some(5), force: false }
        );
        // A learner leaves without a promotion.
        let plan = plan_removal(&facts(4, &voters, &learners, &up)).unwrap();
        assert_eq!((plan.is_voter, plan.promote), (false, None));
    }

    #[test]
    fn refusals_last_voter_vms_and_quorum() {
        let none = BTreeSet::new();
        let one: BTreeSet<NodeId> = [1].into();
        assert_eq!(plan_removal(&facts(1, &one, &none, &one)), Err(Refused::LastVoter));
        let (voters, up) = ([1, 2, 3].into(), [1, 2, 3].into());
        let mut f = facts(3, &voters, &none, &up);
        f.placed_vms = 2;
        assert_eq!(plan_removal(&f), Err(Refused::HasVms(2)));
        f.force = true;
        assert!(plan_removal(&f).is_ok(), "--force leaves its VMs unplaced");
        // Removing 3 of {1,2,3} while 2 is down leaves {1,2}: one of two answers.
        let up: BTreeSet<NodeId> = [1, 3].into();
        assert_eq!(
            plan_removal(&facts(3, &voters, &none, &up)),
            Err(Refused::NoQuorum { remaining: 2, alive: 1, dead: vec![2] })
        );
        // The dead one of two voters cannot be removed: the change must
        // also commit in the old configuration, which needs both.
        let (two, up): (BTreeSet<NodeId>, BTreeSet<NodeId>) = ([1, 2].into(), [1].into());
        assert_eq!(
            plan_removal(&facts(2, &two, &none, &up)),
            Err(Refused::NoCurrentQuorum { voters: 2, alive: 1, dead: vec![2] })
        );
        // Alive, it can.
        assert!(plan_removal(&facts(2, &two, &none, &[1, 2].into())).is_ok());
    }

    #[test]
    fn the_replacement_is_the_first_learner_that_fits() {
        let learners: BTreeSet<NodeId> = [4, 5, 6].into();
        assert_eq!(replacement(&learners, 4, |l| l > 4), Some(5));
        assert_eq!(replacement(&learners, 5, |l| l == 5), None);
    }
}
