//! What every request handler shares: the local Raft, the replicated state,
//! this node's identity, and the write path to the leader.
//!
//! Writes go through [`NodeCtx::on_leader`]: run locally when this node leads,
//! otherwise forward to the leader it knows, and retry with backoff through
//! elections until the write deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvmesh_proto::FORWARDED_HEADER;
use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::network::lazy_channel;
use kvmesh_raft::store::{SharedState, SmData};
use kvmesh_raft::types::{Raft, RaftMetrics};
use kvmesh_raft::NodeId;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::config::ServeConfig;
use crate::data_dir::DataDir;
use crate::error::{Error, Result};
use kvmesh_raft::proposer::{Proposer, WriteFailure};

pub struct NodeCtx {
    pub id: NodeId,
    pub name: String,
    /// The address others reach this node at.
    pub address: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub raft: Raft,
    pub state: SharedState,
    pub config: ServeConfig,
    pub data_dir: Mutex<DataDir>,
    /// Serializes membership changes on the leader (Raft allows one at a time).
    pub membership_lock: tokio::sync::Mutex<()>,
    /// Set while `serve --join` is in progress, so `cluster init` is refused.
    pub joining: std::sync::atomic::AtomicBool,
    /// Notified when the leader reports that it removed this node.
    pub removed: std::sync::Arc<tokio::sync::Notify>,
    /// This host's hypervisor (libvirt).
    pub hypervisor: std::sync::Arc<dyn crate::hypervisor::Hypervisor>,
    /// When the latest heartbeat that the leader acknowledged was *sent*.
    /// HA guests may run only while this is younger than fence_after.
    pub lease: Mutex<Option<Instant>>,
    /// The leader's memory of heartbeats (empty on followers).
    pub heartbeats: Mutex<crate::ha::Heartbeats>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Batches concurrent writes into one log entry (group commit).
    proposer: Proposer,
}

impl NodeCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        config: ServeConfig,
        cpus: u32,
        memory_mib: u64,
        raft: Raft,
        state: SharedState,
        data_dir: DataDir,
        hypervisor: std::sync::Arc<dyn crate::hypervisor::Hypervisor>,
    ) -> Self {
        NodeCtx {
            id,
            name: config.name.clone(),
            address: config.advertise().to_string(),
            cpus,
            memory_mib,
            raft: raft.clone(),
            state,
            config,
            data_dir: Mutex::new(data_dir),
            membership_lock: tokio::sync::Mutex::new(()),
            joining: std::sync::atomic::AtomicBool::new(false),
            removed: Default::default(),
            hypervisor,
            lease: Mutex::new(None),
            heartbeats: Mutex::new(crate::ha::Heartbeats::default()),
            channels: Mutex::new(HashMap::new()),
            proposer: Proposer::start(id, raft.clone()),
        }
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Runs `f` on the replicated state under the read lock.
    pub fn read<T>(&self, f: impl FnOnce(&SmData) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// A (cached, lazily connecting) channel to another node.
    pub fn channel(&self, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let c = lazy_channel(address, Duration::from_secs(1))
            .map_err(|e| Error::Unavailable(format!("bad peer address {address}: {e}")))?;
        channels.insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// Proposes a command and waits until it is committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<Response> {
        match self.proposer.write(cmd).await {
            Ok(r) => Ok(r),
            Err(WriteFailure::NotLeader(m)) => Err(Error::Unavailable(m)),
            Err(WriteFailure::Membership(e)) => Err(Error::FailedPrecondition(e)),
            Err(WriteFailure::Fatal(f)) => Err(Error::Raft(f)),
        }
    }

    /// Proposes a command from any node: through the proposer, which batches
    /// it with concurrent writes and forwards the batch to the leader when
    /// this node does not lead. Retried through elections until the write
    /// deadline. For commands built without leader-only state.
    pub async fn submit(&self, cmd: Command) -> Result<Response> {
        let deadline = Instant::now() + Duration::from_millis(self.config.write_timeout_ms);
        let mut backoff = Duration::from_millis(20);
        loop {
            let last_error = match self.proposer.write(cmd.clone()).await {
                Ok(r) => return Ok(r),
                Err(WriteFailure::NotLeader(m)) => m,
                Err(WriteFailure::Membership(e)) => return Err(Error::FailedPrecondition(e)),
                Err(WriteFailure::Fatal(f)) => return Err(Error::Raft(f)),
            };
            if Instant::now() + backoff >= deadline {
                return Err(Error::Unavailable(self.no_leader_message(&last_error)));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    fn no_leader_message(&self, last_error: &str) -> String {
        format!(
            "no leader accepted the request within {} ms ({last_error}); a majority of voters must be up: check `kvmesh cluster status` and start the stopped nodes",
            self.config.write_timeout_ms
        )
    }

    /// The leader's id and address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.metrics();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some((leader, node.address.clone()))
    }

    /// Runs a request on the leader. `local` runs here if this node leads;
    /// `remote` forwards to the leader over `Channel`. Unavailability (no
    /// leader yet, a leader change, a dead leader) is retried with backoff
    /// until the write deadline.
    pub async fn on_leader<T, L, LF, R, RF>(
        &self,
        forwarded: bool,
        local: L,
        remote: R,
    ) -> std::result::Result<T, Status>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T>>,
        R: Fn(Channel, Duration) -> RF,
        RF: Future<Output = std::result::Result<T, Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(self.config.write_timeout_ms);
        let mut backoff = Duration::from_millis(20);
        let mut last_error = String::from("no leader is known");
        loop {
            match self.leader() {
                Some((leader, _)) if leader == self.id => match local().await {
                    Err(Error::Unavailable(msg)) => last_error = msg,
                    other => return other.map_err(Status::from),
                },
                // A forwarded request that reaches a non-leader goes back to
                // its origin, which retries with a fresh view of the leader.
                Some(_) if forwarded => return Err(Status::unavailable("this node is no longer the leader")),
                Some((leader, address)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
                    match remote(self.channel(&address)?, remaining).await {
                        Err(s) if s.code() == Code::Unavailable => {
                            last_error = format!("leader {leader} at {address}: {}", s.message())
                        }
                        other => return other,
                    }
                }
                None => {}
            }
            if Instant::now() + backoff >= deadline {
                return Err(Status::unavailable(self.no_leader_message(&last_error)));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    /// Whether this host's lease has run out: no acknowledged heartbeat sent
    /// within fence_after (or none yet since start).
    pub fn fenced(&self) -> bool {
        let lease = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        match lease {
            None => true,
            Some(sent) => sent.elapsed() > Duration::from_millis(self.config.fence_after_ms),
        }
    }

    /// Checks with a quorum that this node still leads, for linearizable reads.
    pub async fn ensure_linearizable(&self) -> Result<()> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("cannot confirm leadership for a consistent read: {e}")))
    }
}

/// Wraps a message for forwarding: marks it forwarded and bounds its time.
pub fn forward<T>(message: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(timeout);
    r.metadata_mut().insert(FORWARDED_HEADER, "1".parse().expect("static header"));
    r
}

/// Whether a request was forwarded by another node.
pub fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER)
}

/// Milliseconds since the Unix epoch, stamped into commands by the leader.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
