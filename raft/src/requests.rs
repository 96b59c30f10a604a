//! Answers to recent writes, so a retried write is applied once.
//!
//! A node proposes every write with a [`RequestId`] (its own id and a number
//! it does not reuse) and retries it, with the same id, whenever it cannot
//! tell whether the first try committed: a leader that died after
//! appending, a forward that timed out, an election. `apply` remembers the
//! answer to each id, per proposing node, for its newest
//! [`WINDOW`] writes, and answers a retry with the first answer instead of
//! applying it again (Raft's client sessions, in Ongaro's thesis §6.3). A
//! retry older than the window is refused, never re-applied.
//!
//! The table is part of the replicated state (persisted key by key, and in
//! snapshots): replicas must agree on which retries they skip.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::{Refusal, Response};
use crate::model::VmId;
use crate::types::NodeId;

/// Answers kept per proposing node. A node has at most one batch of 512
/// writes in flight, plus the retries of earlier ones.
pub const WINDOW: usize = 4096;

/// Identifies one write across its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The node that proposed it.
    pub origin: NodeId,
    /// Grows with every write that node proposes.
    pub seq: u64,
}

/// What a write was answered, in a compact form: a VM is named by id and
/// re-read on replay, so the table does not hold copies of VM records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Done,
    Vm(VmId),
    Refused(Refusal),
}

impl Answer {
    pub(crate) fn of(r: &Response) -> Answer {
        match r {
            Response::Vm(vm) => Answer::Vm(vm.id),
            Response::Refused(r) => Answer::Refused(r.clone()),
            Response::Done | Response::Batch(_) => Answer::Done,
        }
    }
}

/// The remembered answers, by request id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Requests {
    answers: BTreeMap<RequestId, Answer>,
    /// Derived: answers kept per origin (rebuilt by [`Requests::reindex`]).
    #[serde(skip)]
    counts: HashMap<NodeId, usize>,
}

impl PartialEq for Requests {
    fn eq(&self, other: &Self) -> bool {
        self.answers == other.answers
    }
}

/// What to do with a request id.
pub(crate) enum Seen<'a> {
    New,
    Answered(&'a Answer),
    /// Older than every answer kept for its origin, whose window is full:
    /// its outcome is forgotten.
    Expired,
}

impl Requests {
    pub(crate) fn from_answers(answers: impl IntoIterator<Item = (RequestId, Answer)>) -> Self {
        let mut r = Requests { answers: answers.into_iter().collect(), counts: HashMap::new() };
        r.reindex();
        r
    }

    /// Rebuilds the per-origin counts (after decoding a snapshot).
    pub(crate) fn reindex(&mut self) {
        self.counts.clear();
        for id in self.answers.keys() {
            *self.counts.entry(id.origin).or_default() += 1;
        }
    }

    fn count(&self, origin: NodeId) -> usize {
        self.counts.get(&origin).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RequestId, &Answer)> {
        self.answers.iter()
    }

    pub fn get(&self, id: &RequestId) -> Option<&Answer> {
        self.answers.get(id)
    }

    /// The highest sequence number kept for a node's writes.
    pub fn last_seq(&self, origin: NodeId) -> Option<u64> {
        self.of_origin(origin).next_back().map(|(k, _)| k.seq)
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    pub(crate) fn seen(&self, id: RequestId) -> Seen<'_> {
        if let Some(a) = self.answers.get(&id) {
            return Seen::Answered(a);
        }
        let full = self.count(id.origin) >= WINDOW;
        match self.of_origin(id.origin).next() {
            Some((oldest, _)) if full && id.seq < oldest.seq => Seen::Expired,
            _ => Seen::New,
        }
    }

    /// Records an answer; returns the id it pushed out of the window, if any.
    pub(crate) fn record(&mut self, id: RequestId, answer: Answer) -> Option<RequestId> {
        if self.answers.insert(id, answer).is_none() {
            *self.counts.entry(id.origin).or_default() += 1;
        }
        if self.count(id.origin) > WINDOW {
            let oldest = *self.of_origin(id.origin).next().map(|(k, _)| k)?;
            self.answers.remove(&oldest);
            *self.counts.entry(id.origin).or_default() -= 1;
            return Some(oldest);
        }
        None
    }

    /// Forgets a removed node's answers; returns their ids.
    pub(crate) fn forget_origin(&mut self, origin: NodeId) -> Vec<RequestId> {
        let ids: Vec<RequestId> = self.of_origin(origin).map(|(k, _)| *k).collect();
        for id in &ids {
            self.answers.remove(id);
        }
        self.counts.remove(&origin);
        ids
    }

    fn of_origin(&self, origin: NodeId) -> std::collections::btree_map::Range<'_, RequestId, Answer> {
        self.answers.range(RequestId { origin, seq: 0 }..=RequestId { origin, seq: u64::MAX })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_per_origin_for_a_window_and_older_retries_expire() {
        let mut r = Requests::default();
        let id = |origin, seq| RequestId { origin, seq };
        assert!(matches!(r.seen(id(1, 5)), Seen::New));
        for seq in 0..WINDOW as u64 {
            assert_eq!(r.record(id(1, 100 + seq), Answer::Done), None);
        }
        r.record(id(2, 1), Answer::Vm(7));
        // A full window: ids below it are expired, ids above it new.
        assert!(matches!(r.seen(id(1, 99)), Seen::Expired));
        assert!(matches!(r.seen(id(1, 100)), Seen::Answered(Answer::Done)));
        assert!(matches!(r.seen(id(1, 100 + WINDOW as u64)), Seen::New));
        assert_eq!(r.record(id(1, 100 + WINDOW as u64), Answer::Done), Some(id(1, 100)));
        assert!(matches!(r.seen(id(1, 100)), Seen::Expired));
        // Another origin's window is its own.
        assert!(matches!(r.seen(id(2, 1)), Seen::Answered(Answer::Vm(7))));
        assert!(matches!(r.seen(id(2, 0)), Seen::New));
        assert_eq!(r.forget_origin(2), vec![id(2, 1)]);
        assert_eq!(r.len(), WINDOW);
    }
}
