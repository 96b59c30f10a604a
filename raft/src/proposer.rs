//! Group commit for Raft proposals, from any member.
//!
//! openraft 0.9 handles each `client_write` on its own: one log append and
//! one fsync in its core loop, one after another, and one entry to
//! replicate. N writers arriving together would pay N fsyncs on every
//! replica. The proposer folds the writes that queue up while earlier ones
//! are in flight into one [`Command::Batch`] entry: one append, one fsync
//! per replica, one apply. A lone write is proposed as it is, so a single
//! client pays nothing extra.
//!
//! On a follower the batch goes to the leader in one `Raft/Propose` call,
//! as etcd forwards proposals, instead of one API call per write. Every
//! writer still gets its answer only after its command is committed and
//! applied on the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmesh_proto::raft_client::RaftClient;
use kvmesh_proto::{RaftMessage, PROTOCOL_HEADER, PROTOCOL_VERSION, TARGET_HEADER};
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;
use tracing::{debug, Instrument};

use crate::codec;
use crate::command::{Command, Response};
use crate::network::Dial;
use crate::types::{MemberNode, NodeId, Raft};

/// Proposals from this node in flight at once. One: everything that
/// arrives meanwhile waits and goes in the next entry. Measured against 2
/// and 4 (BENCHMARKS.md): on a busy machine fewer, bigger entries win,
/// since each entry costs an fsync and an RPC per replica.
const IN_FLIGHT: usize = 1;
/// The most writes in one entry (~400 bytes a write: ~200 KiB).
const MAX_BATCH: usize = 512;
/// How long a follower waits for the leader to commit a forwarded batch.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a proposal failed; cloned to every writer of a failed batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteFailure {
    /// No leader is known, or the one asked no longer leads: retry.
    NotLeader(String),
    /// The leader did not answer the forwarded batch (down, stalled, the
    /// connection broke): whether it committed is unknown, so retry.
    Unreachable(String),
    Membership(String),
    Fatal(String),
    /// The leader's Raft stopped (a storage error) after the write was
    /// proposed: it may have been committed. A retry under the same request
    /// id gets the first answer if it was.
    OutcomeUnknown(String),
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::NotLeader(m)
            | WriteFailure::Unreachable(m)
            | WriteFailure::Membership(m)
            | WriteFailure::OutcomeUnknown(m)
            | WriteFailure::Fatal(m) => f.write_str(m),
        }
    }
}

type Reply = Result<Response, WriteFailure>;

struct Pending {
    cmd: Command,
    /// Built from this node's leader-only inputs: proposed here or not at all.
    leader_only: bool,
    reply: oneshot::Sender<Reply>,
}

/// The handle writers use; the batching task runs until it is dropped.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    pub fn start(id: NodeId, raft: Raft, dial: Dial) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let submitter = Submitter { id, raft, channels: Default::default(), dial };
        tokio::spawn(run(submitter, rx).instrument(tracing::info_span!("proposer")));
        Proposer { tx }
    }

    /// Proposes `cmd` (here, or through the leader unless `leader_only`) and
    /// waits until it is committed and applied.
    pub async fn write(&self, cmd: Command, leader_only: bool) -> Reply {
        let (reply, answer) = oneshot::channel();
        let gone = || WriteFailure::Fatal("the node is shutting down".into());
        self.tx.send(Pending { cmd, leader_only, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(submitter: Submitter, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let submitter = Arc::new(submitter);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        // Whatever queued while we waited for a slot goes in the same entry.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let submitter = submitter.clone();
        tokio::spawn(async move {
            // A leader-only write is never forwarded: if this node no longer
            // leads, its decision is stale and its writer decides again.
            let leads = submitter.leads();
            let (batch, stale): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| leads || !p.leader_only);
            let local_only = batch.iter().any(|p| p.leader_only);
            for p in stale {
                let _ = p.reply.send(Err(WriteFailure::NotLeader("this node no longer leads".into())));
            }
            if batch.is_empty() {
                drop(slot);
                return;
            }
            let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            let count = cmds.len();
            match submitter.submit(cmds, local_only).await {
                Ok(responses) if responses.len() == count => {
                    for (reply, response) in replies.into_iter().zip(responses) {
                        let _ = reply.send(Ok(response));
                    }
                }
                Ok(responses) => {
                    let f = WriteFailure::Fatal(format!("{count} writes got {} answers", responses.len()));
                    replies.into_iter().for_each(|r| drop(r.send(Err(f.clone()))));
                }
                Err(f) => replies.into_iter().for_each(|r| drop(r.send(Err(f.clone())))),
            }
            drop(slot);
        });
    }
}

struct Submitter {
    id: NodeId,
    raft: Raft,
    channels: Mutex<HashMap<String, Channel>>,
    dial: Dial,
}

impl Submitter {
    fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Proposes here if this node leads, else forwards to the leader unless
    /// `local_only` (the batch holds a leader-only write: then every write
    /// of it fails as `NotLeader`, and the others are retried).
    async fn submit(&self, cmds: Vec<Command>, local_only: bool) -> Result<Vec<Response>, WriteFailure> {
        let leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.current_leader.map(|id| (id, m.membership_config.membership().get_node(&id).map(|n| n.address.clone())))
        };
        match leader {
            Some((id, _)) if id == self.id => propose_local(&self.raft, cmds).await,
            Some(_) if local_only => Err(WriteFailure::NotLeader("this node no longer leads".into())),
            Some((id, Some(address))) => self.forward(id, &address, cmds).await,
            _ => Err(WriteFailure::NotLeader("no leader is known".into())),
        }
    }

    async fn forward(&self, leader: NodeId, address: &str, cmds: Vec<Command>) -> Result<Vec<Response>, WriteFailure> {
        debug!(writes = cmds.len(), leader, "forwarding a batch to the leader");
        let channel = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            match channels.get(address) {
                Some(c) => c.clone(),
                None => {
                    let c = (self.dial)(address, Duration::from_secs(1))
                        .map_err(|e| WriteFailure::Fatal(format!("bad leader address {address}: {e}")))?;
                    channels.insert(address.to_string(), c.clone());
                    c
                }
            }
        };
        let payload = codec::to_wire("proposal", &cmds).map_err(|e| WriteFailure::Fatal(e.to_string()))?;
        let mut request = tonic::Request::new(RaftMessage { payload });
        request.set_timeout(FORWARD_TIMEOUT);
        request.metadata_mut().insert(PROTOCOL_HEADER, PROTOCOL_VERSION.into());
        request.metadata_mut().insert(TARGET_HEADER, leader.into());
        let mut client = RaftClient::new(channel);
        let call = client.propose(request);
        // A leader that stops answering (a SIGSTOP, a partition) would hold
        // this node's one proposal slot for the whole timeout, and with it
        // every write here, even after this node is elected in its place.
        // Give up as soon as this node learns of another leader: the
        // writers retry, a non-idempotent one under its request id.
        let reply = tokio::select! {
            r = call => r,
            () = self.leader_changes_from(leader) => {
                return Err(WriteFailure::Unreachable(format!(
                    "leader {leader} at {address} stopped leading before it answered"
                )));
            }
        };
        let reply = reply.map_err(|s| {
            let message = format!("leader {leader} at {address}: {}", s.message());
            match s.code() {
                // A peer of another protocol version refuses every batch.
                tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => WriteFailure::Fatal(message),
                _ => WriteFailure::Unreachable(message),
            }
        })?;
        codec::from_wire::<Result<Vec<Response>, WriteFailure>>("proposal reply", &reply.into_inner().payload)
            .map_err(|e| WriteFailure::Fatal(e.to_string()))?
    }
}

impl Submitter {
    /// Resolves once this node's view of the leader is no longer `leader`.
    async fn leader_changes_from(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            if metrics.changed().await.is_err() {
                // Raft shut down: nothing will answer.
                return;
            }
        }
    }
}

/// Proposes on this node, which must lead: one entry for the whole batch.
pub async fn propose_local(raft: &Raft, mut cmds: Vec<Command>) -> Result<Vec<Response>, WriteFailure> {
    if cmds.len() == 1 {
        let cmd = cmds.pop().expect("one command");
        return raft.client_write(cmd).await.map(|r| vec![r.data]).map_err(failure);
    }
    debug!(writes = cmds.len(), "proposing a batch");
    match raft.client_write(Command::Batch(cmds)).await.map_err(failure)?.data {
        Response::Batch(responses) => Ok(responses),
        other => Err(WriteFailure::Fatal(format!("a batch got {other:?}"))),
    }
}

fn failure(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> WriteFailure {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            WriteFailure::NotLeader("leadership changed during the write".into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => WriteFailure::Membership(e.to_string()),
        RaftError::Fatal(f) => {
            WriteFailure::OutcomeUnknown(format!("the leader's raft stopped while the write was in flight ({f})"))
        }
    }
}
