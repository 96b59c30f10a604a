//! openraft's RPCs over tonic, both directions.
//!
//! The client side ([`Network`]) never connects in `new_client`: RaftCore awaits
//! that inline, so it only builds a lazy channel. Every request carries a
//! deadline no longer than openraft's hard TTL, and a peer that cannot be
//! reached is reported as `Unreachable`, so openraft backs off instead of
//! spinning. Payloads are bincode; the server returns the whole `Result` so
//! remote Raft errors are rebuilt faithfully. Both sides stamp and check
//! [`PROTOCOL_VERSION`], so mismatched releases refuse each other clearly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use kvmesh_proto::raft_client::RaftClient;
use kvmesh_proto::raft_server;
use kvmesh_proto::{RaftMessage, CLUSTER_HEADER, NOT_A_MEMBER, PROTOCOL_HEADER, PROTOCOL_VERSION, TARGET_HEADER};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::store::SharedState;
use crate::types::{MemberNode, NodeId, Raft, TypeConfig};

/// Builds a lazily connecting channel to a peer's gRPC address.
/// Makes a lazily connecting channel to a peer's address. The node supplies
/// it: TLS with its own certificate, or plaintext under `--insecure`.
pub type Dial = Arc<dyn Fn(&str, Duration) -> Result<Channel, String> + Send + Sync>;

/// Plaintext channels (`serve --insecure`, and tests of this crate).
pub fn plain_dial() -> Dial {
    Arc::new(|address, timeout| lazy_channel(address, timeout).map_err(|e| e.to_string()))
}

pub fn lazy_channel(address: &str, connect_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect_lazy())
}

/// Creates one [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct Network {
    refusals: Arc<MembershipRefusals>,
    state: SharedState,
    dial: Dial,
}

impl Network {
    /// Peers' refusals of this node's votes are recorded in `refusals`;
    /// `state` gives the cluster id every request carries.
    pub fn new(refusals: Arc<MembershipRefusals>, state: SharedState, dial: Dial) -> Self {
        Network { refusals, state, dial }
    }
}

/// The cluster id in a replica, once it has one.
pub fn cluster_of(state: &SharedState) -> Option<String> {
    state.read().unwrap_or_else(|p| p.into_inner()).state.cluster_id().map(str::to_string)
}

/// Peers that refused this node's vote requests because their committed
/// membership does not hold it: the highest log index of such a membership.
/// The daemon weighs it against its own membership's index: a newer
/// committed membership without this node means it was removed; an older
/// one means the peer lags, and is ignored.
#[derive(Debug, Default)]
pub struct MembershipRefusals {
    highest: Mutex<Option<u64>>,
    pub changed: Notify,
}

impl MembershipRefusals {
    fn record(&self, index: u64) {
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        *highest = Some(highest.map_or(index, |h| h.max(index)));
        drop(highest);
        self.changed.notify_one();
    }

    pub fn highest(&self) -> Option<u64> {
        *self.highest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The index a peer's "not a member" refusal carries (see [`NOT_A_MEMBER`]).
fn refusal_index(message: &str) -> Option<u64> {
    let rest = message.split(NOT_A_MEMBER).nth(1)?.strip_prefix(" at ")?;
    rest.split(':').next()?.trim().parse().ok()
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        let channel = (self.dial)(&node.address, Duration::from_millis(500));
        PeerClient {
            target,
            address: node.address.clone(),
            client: channel.ok().map(RaftClient::new),
            refusals: self.refusals.clone(),
            state: self.state.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    address: String,
    /// `None` if the address does not even parse; every call is then unreachable.
    client: Option<RaftClient<Channel>>,
    refusals: Arc<MembershipRefusals>,
    state: SharedState,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, rpc: Rpc, req: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(unreachable(format!("invalid peer address {:?}", self.address)));
        };
        let payload = codec::to_wire("raft request", req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = Request::new(RaftMessage { payload });
        request.set_timeout(ttl);
        request.metadata_mut().insert(PROTOCOL_HEADER, PROTOCOL_VERSION.into());
        if let Some(id) = cluster_of(&self.state).and_then(|id| id.parse().ok()) {
            request.metadata_mut().insert(CLUSTER_HEADER, id);
        }
        request.metadata_mut().insert(TARGET_HEADER, self.target.into());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        if let Err(status) = &reply {
            if let Some(index) = refusal_index(status.message()) {
                self.refusals.record(index);
            }
        }
        let reply = reply.map_err(|status| status_to_rpc_error(&self.address, status))?;
        let result: Result<Resp, RaftError<NodeId, E>> = codec::from_wire("raft reply", &reply.into_inner().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<NodeId, MemberNode, RaftError<NodeId, E>> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
}

fn status_to_rpc_error<E: std::error::Error>(
    address: &str,
    status: Status,
) -> RPCError<NodeId, MemberNode, RaftError<NodeId, E>> {
    use tonic::Code;
    let msg = format!("{address}: {}", status.message());
    match status.code() {
        // Connection refused, reset, DNS failure, or a peer refusing our
        // protocol version: nothing to gain by retrying at once.
        // Also a node at that address that is not the one meant (another
        // cluster's, or addresses swapped): back off, do not spin.
        Code::Unavailable | Code::FailedPrecondition | Code::Unimplemented | Code::PermissionDenied => unreachable(msg),
        _ => RPCError::Network(NetworkError::new(&std::io::Error::other(msg))),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}

/// The server half: decodes a request, hands it to the local Raft, and
/// returns the encoded `Result`.
pub struct RaftService {
    raft: Raft,
    state: SharedState,
    recheck: Arc<Notify>,
}

impl RaftService {
    /// `recheck` is notified when a `Removed` notice arrives: the node then
    /// asks its leader at once (a notice alone stops nothing, so a forged
    /// one cannot take a healthy voter down).
    pub fn new(raft: Raft, state: SharedState, recheck: Arc<Notify>) -> Self {
        RaftService { raft, state, recheck }
    }

    fn id(&self) -> NodeId {
        self.raft.metrics().borrow().id
    }

    /// Refuses a vote request from a node outside this node's committed
    /// membership (a removed node that missed its removal keeps asking):
    /// denying a vote never costs safety, and the answer tells the
    /// candidate which membership left it out.
    fn check_candidate(&self, candidate: NodeId) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = &m.membership_config;
        let Some(at) = membership.log_id().map(|l| l.index) else { return Ok(()) };
        let committed = m.last_applied.is_some_and(|a| a.index >= at);
        let known = membership.membership().get_node(&candidate).is_some();
        let empty = membership.membership().voter_ids().next().is_none();
        if committed && !known && !empty {
            return Err(Status::failed_precondition(format!(
                "{NOT_A_MEMBER} at {at}: node {candidate} is not in the membership this node committed at log index {at}"
            )));
        }
        Ok(())
    }
}

fn check_protocol<T>(request: &Request<T>) -> Result<(), Status> {
    let theirs: Option<u32> =
        request.metadata().get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    match theirs {
        Some(v) if v == PROTOCOL_VERSION => Ok(()),
        Some(v) => Err(Status::failed_precondition(format!(
            "peer speaks kvmesh protocol {v}, this node speaks {PROTOCOL_VERSION}; run the same kvmesh release on every node"
        ))),
        None => Err(Status::failed_precondition("raft request without a kvmesh protocol version")),
    }
}

/// Refuses a request from a node of another cluster (when both know theirs)
/// or meant for another node (addresses swapped).
fn check_peer<T>(request: &Request<T>, state: &SharedState, me: NodeId) -> Result<(), Status> {
    let target: Option<NodeId> =
        request.metadata().get(TARGET_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if let Some(target) = target.filter(|t| *t != me) {
        return Err(Status::permission_denied(format!(
            "this is node {me}, not {target}: its address now serves another node"
        )));
    }
    let theirs = request.metadata().get(CLUSTER_HEADER).and_then(|v| v.to_str().ok());
    match (theirs, cluster_of(state)) {
        (Some(theirs), Some(mine)) if theirs != mine => Err(Status::permission_denied(format!(
            "this node belongs to cluster {mine}, not {theirs}; a member's address now serves another cluster"
        ))),
        _ => Ok(()),
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    check_protocol(&request)?;
    codec::from_wire("raft request", &request.into_inner().payload).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::to_wire("raft reply", value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        check_peer(&request, &self.state, self.id())?;
        let req: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        check_peer(&request, &self.state, self.id())?;
        let req: VoteRequest<NodeId> = decode(request)?;
        self.check_candidate(req.vote.leader_id().voted_for().unwrap_or_default())?;
        encode(&self.raft.vote(req).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        check_peer(&request, &self.state, self.id())?;
        let req: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(req).await)
    }

    async fn propose(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        check_peer(&request, &self.state, self.id())?;
        let cmds: Vec<crate::command::Command> = decode(request)?;
        // Proposed here only if this node leads; otherwise the caller hears
        // NotLeader and retries with a fresh view of the leader (no chains).
        encode(&crate::proposer::propose_local(&self.raft, cmds).await)
    }

    async fn removed(
        &self,
        request: Request<kvmesh_proto::RemovedNotice>,
    ) -> Result<Response<kvmesh_proto::RemovedAck>, Status> {
        let notice = request.into_inner();
        let me = self.raft.metrics().borrow().id;
        if notice.node_id != me {
            return Err(Status::invalid_argument(format!("this is node {me}, not {}", notice.node_id)));
        }
        let mine = self.state.read().unwrap_or_else(|p| p.into_inner()).state.cluster_id().map(str::to_string);
        if mine.as_deref() != Some(notice.cluster_id.as_str()) {
            return Err(Status::permission_denied(format!(
                "this node belongs to cluster {}, not {}",
                mine.as_deref().unwrap_or("(none)"),
                notice.cluster_id
            )));
        }
        tracing::warn!(cluster = %notice.cluster_id, "told this node was removed; asking the leader");
        self.recheck.notify_one();
        Ok(Response::new(kvmesh_proto::RemovedAck {}))
    }
}
