//! What every request handler shares: the local Raft, the replicated state,
//! this node's identity, and the write path to the leader.
//!
//! Writes take one of two paths, each written once: [`NodeCtx::propose`] for
//! commands any node can build (batched, forwarded to the leader through the
//! internal `Raft/Propose` call, retried safely under one request id), and
//! [`NodeCtx::leader_call`] for requests that need the leader's own inputs
//! (placement, membership, linearizable reads).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvmesh_proto::FORWARDED_HEADER;
use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::network::{Dial, MembershipRefusals};
use kvmesh_raft::store::{SharedState, SmData};
use kvmesh_raft::types::{Raft, RaftMetrics};
use kvmesh_raft::NodeId;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::config::ServeConfig;
use crate::data_dir::DataDir;
use crate::error::{Error, Result};
use kvmesh_raft::proposer::{Proposer, WriteFailure};
use kvmesh_raft::requests::RequestId;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Notified once this node knows it was removed (the leader refused its
    /// heartbeat, or a newer committed membership leaves it out).
    pub removed: std::sync::Arc<tokio::sync::Notify>,
    /// Notified by a `Removed` notice: heartbeat the leader now.
    pub recheck: std::sync::Arc<tokio::sync::Notify>,
    /// Peers' refusals of this node's votes (see [`MembershipRefusals`]).
    pub refusals: std::sync::Arc<MembershipRefusals>,
    /// VMs (with their epoch) the agent is starting right now: the
    /// heartbeat reports them as running, so the leader never takes a
    /// "not running" for proof while a start is in flight.
    pub starting: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Outgoing live migrations in flight here: VM id -> migration epoch.
    pub migrating: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// How each storage domain looks from this host, and when the probe
    /// last finished (`storage::probe`); sent with every heartbeat.
    pub storage_status: Mutex<(Option<std::time::Instant>, Vec<kvmesh_proto::HostStorageStatus>)>,
    /// How each network looks on this host (`netconf`); sent with every heartbeat.
    pub network_status: Mutex<Vec<kvmesh_proto::HostNetworkStatus>>,
    /// This host's hypervisor (libvirt).
    pub hypervisor: std::sync::Arc<dyn crate::hypervisor::Hypervisor>,
    /// The newest list of this node's domains, for heartbeats and fencing
    /// that must not wait on libvirt.
    pub listing: std::sync::Arc<crate::ha::health::Listing>,
    /// Whether the data dir's disk answers.
    pub disk_probe: std::sync::Arc<crate::ha::health::DiskProbe>,
    /// The fence guard, which outlives this process.
    pub guard: std::sync::Arc<crate::guard::GuardLink>,
    channels: Mutex<HashMap<String, Channel>>,
    /// How this node reaches others (TLS with its certificate).
    pub dial: Dial,
    /// This node's certificate (`None` under `--insecure`).
    pub tls: Option<std::sync::Arc<crate::tls::NodeTls>>,
    /// Batches concurrent writes into one log entry (group commit).
    proposer: Proposer,
    /// The sequence number of this node's next write (see [`RequestId`]).
    next_request: AtomicU64,
}

impl NodeCtx {
    /// A refusal as the caller reads it: an unknown VM's name answered with
    /// the nearest known one ("did you mean").
    pub fn refused(&self, refusal: kvmesh_raft::command::Refusal) -> Error {
        use kvmesh_raft::command::Refusal;
        match &refusal {
            Refusal::UnknownVm { name } => Error::NotFound(self.read(|d| d.state.unknown_vm(name))),
            _ => Error::from(refusal),
        }
    }

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
        refusals: std::sync::Arc<MembershipRefusals>,
        dial: Dial,
        tls: Option<std::sync::Arc<crate::tls::NodeTls>>,
    ) -> Self {
        let raft_state = state.clone();
        let guard = crate::guard::GuardLink::start(&config);
        let disk_probe = crate::ha::health::DiskProbe::start(config.data_dir.clone());
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
            recheck: Default::default(),
            refusals,
            starting: Mutex::new(Default::default()),
            migrating: Mutex::new(Default::default()),
            storage_status: Mutex::new((None, Vec::new())),
            network_status: Mutex::new(Vec::new()),
            hypervisor,
            listing: Default::default(),
            disk_probe,
            guard,
            channels: Mutex::new(HashMap::new()),
            proposer: Proposer::start(id, raft.clone(), dial.clone()),
            dial,
            tls,
            next_request: AtomicU64::new(first_request_seq(id, &raft_state)),
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

    /// Reads what a write from this node just made. A write forwarded to
    /// the leader is answered once the leader applied it; this node applies
    /// it when the next heartbeat brings the commit index, a moment later.
    /// `None` if it has not within 5 s (this node is cut off).
    pub async fn read_written<T>(&self, f: impl Fn(&SmData) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(found) = self.read(&f) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A (cached, lazily connecting) channel to another node.
    pub fn channel(&self, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let c = (self.dial)(address, Duration::from_secs(1))
            .map_err(|e| Error::Unavailable(format!("bad peer address {address}: {e}")))?;
        channels.insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// The one write path. Proposes `cmd` from this node: batched with
    /// concurrent writes into one log entry, forwarded to the leader in one
    /// internal call when this node does not lead, and retried through
    /// elections and lost answers until the write deadline. A write that is
    /// not idempotent ([`Command::needs_request_id`]) carries one request id
    /// on every try, so if its first try did commit, its retry gets the
    /// first answer instead of applying it twice. For commands built without
    /// leader-only inputs.
    pub async fn propose(&self, cmd: Command) -> Result<Response> {
        self.propose_with(cmd, Route::AnyNode).await
    }

    /// Proposes a command built from leader-only inputs (a placement, a
    /// liveness verdict, a membership step), on this node only. If this node
    /// no longer leads, the command is not forwarded: the caller's decision
    /// is stale, and it answers `Unavailable` so the caller decides again on
    /// the new leader.
    pub async fn propose_as_leader(&self, cmd: Command) -> Result<Response> {
        self.propose_with(cmd, Route::LeaderOnly).await
    }

    async fn propose_with(&self, cmd: Command, route: Route) -> Result<Response> {
        let started = Instant::now();
        let answer = self.propose_timed(cmd, route).await;
        crate::telemetry::get().proposal(started.elapsed());
        answer
    }

    async fn propose_timed(&self, cmd: Command, route: Route) -> Result<Response> {
        // The event log records who asked (README, "Security").
        let cmd = match crate::auth::audit_by() {
            Some(by) => Command::Audited { by, cmd: Box::new(cmd) },
            None => cmd,
        };
        // Retried under one request id when applying twice would differ
        // from once; the rest are idempotent and retried as they are.
        let cmd = if cmd.needs_request_id() {
            let id = RequestId { origin: self.id, seq: self.next_request.fetch_add(1, Ordering::Relaxed) };
            Command::Request { id, cmd: Box::new(cmd) }
        } else {
            cmd
        };
        let deadline = Instant::now() + Duration::from_millis(self.config.write_timeout_ms);
        let mut backoff = Duration::from_millis(20);
        let mut unknown = None;
        loop {
            let last_error = match self.proposer.write(cmd.clone(), route == Route::LeaderOnly).await {
                Ok(r) => return Ok(r),
                Err(WriteFailure::NotLeader(m)) if route == Route::LeaderOnly => return Err(Error::Unavailable(m)),
                Err(WriteFailure::OutcomeUnknown(m)) if route == Route::LeaderOnly => {
                    return Err(Error::OutcomeUnknown(outcome_unknown(&m)))
                }
                Err(WriteFailure::NotLeader(m)) | Err(WriteFailure::Unreachable(m)) => m,
                // Retried under the same request id: if the first try was
                // committed, a new leader answers with its result.
                Err(WriteFailure::OutcomeUnknown(m)) => {
                    // This node's own Raft stopped: no retry can leave it.
                    if self.metrics().running_state.is_err() {
                        return Err(Error::OutcomeUnknown(outcome_unknown(&m)));
                    }
                    unknown = Some(m.clone());
                    m
                }
                Err(WriteFailure::Membership(e)) => return Err(Error::FailedPrecondition(e)),
                Err(WriteFailure::Fatal(f)) => return Err(Error::Raft(f)),
            };
            if Instant::now() + backoff >= deadline {
                return Err(match unknown {
                    Some(m) => Error::OutcomeUnknown(outcome_unknown(&m)),
                    None => Error::Unavailable(self.no_leader_message(&last_error)),
                });
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

    /// Whether this node leads, as far as it knows.
    pub fn is_leader(&self) -> bool {
        self.metrics().current_leader == Some(self.id)
    }

    /// The one path for requests that need the leader itself (a placement,
    /// a membership change, a linearizable read): answered here when this
    /// node leads, otherwise forwarded to the leader's same RPC. No leader,
    /// a leader change, a dead or stalled leader are retried with backoff
    /// until the request's deadline; the error then says why.
    pub async fn leader_call<C: LeaderCall>(&self, forwarded: bool, call: C) -> std::result::Result<C::Reply, Status> {
        let deadline = Instant::now() + call.deadline(&self.config);
        let mut backoff = Duration::from_millis(20);
        let mut last_error = String::from("no leader is known");
        loop {
            match self.leader() {
                Some((leader, _)) if leader == self.id => match call.on_leader(self).await {
                    Err(Error::Unavailable(msg)) => last_error = msg,
                    other => return other.map_err(Status::from),
                },
                // A forwarded request that reaches a non-leader goes back to
                // its origin, which retries with a fresh view of the leader.
                Some(_) if forwarded => return Err(Status::unavailable("this node is no longer the leader")),
                Some((leader, address)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let attempt = remaining.min(call.attempt_timeout()).max(Duration::from_millis(100));
                    match call.clone().forward(self.channel(&address)?, forward(call.clone(), attempt)).await {
                        Err(s) if retryable(&s) => {
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

    /// Checks with a quorum that this node still leads, for linearizable reads.
    pub async fn ensure_linearizable(&self) -> Result<()> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("cannot confirm leadership for a consistent read: {e}")))
    }
}

fn outcome_unknown(detail: &str) -> String {
    format!("the outcome of this write is unknown: {detail}. It may have been committed; look before retrying (`kvmesh vm list`, `kvmesh events`)")
}

/// Which node may propose a command.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    AnyNode,
    LeaderOnly,
}

/// A request only the leader answers, and the RPC that forwards it there.
/// Each kind says how to answer it and which client call carries it; the
/// retrying and forwarding are [`NodeCtx::leader_call`]'s alone.
pub trait LeaderCall: Clone + Send + Sync + 'static {
    type Reply: Send;

    /// Answers on the leader.
    fn on_leader(&self, ctx: &NodeCtx) -> impl Future<Output = Result<Self::Reply>> + Send;

    /// Sends the request to the leader's same RPC.
    fn forward(
        self,
        channel: Channel,
        request: Request<Self>,
    ) -> impl Future<Output = std::result::Result<Self::Reply, Status>> + Send;

    /// How long to keep trying in all.
    fn deadline(&self, config: &ServeConfig) -> Duration {
        Duration::from_millis(config.write_timeout_ms)
    }

    /// How long one forwarded try may take before the leader counts as
    /// stalled and is asked again (it may have changed meanwhile).
    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(3)
    }
}

/// Errors after which the same request may be sent again: the leader could
/// not be reached, stalled, or stopped leading.
fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

/// Where this node's request numbers start: above any it used before (its
/// answers in the state) and above the clock in microseconds, so a
/// restarted node does not reuse a number whose answer is still kept.
fn first_request_seq(id: NodeId, state: &SharedState) -> u64 {
    let used = state.read().unwrap_or_else(|p| p.into_inner()).state.requests.last_seq(id).map_or(0, |s| s + 1);
    used.max(now_ms().saturating_mul(1000))
}

/// Wraps a message for forwarding: marks it forwarded and bounds its time.
pub fn forward<T>(message: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(timeout);
    r.metadata_mut().insert(FORWARDED_HEADER, "1".parse().expect("static header"));
    // The caller travels with the request; the receiving node believes it
    // because this node's certificate vouches for it.
    if let Some(value) = crate::auth::forwarded_principal().and_then(|p| p.parse().ok()) {
        r.metadata_mut().insert(crate::auth::PRINCIPAL_HEADER, value);
    }
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
