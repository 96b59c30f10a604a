//! Wire types of kvmesh's gRPC API, package `kvmesh.v1`.
//!
//! `Cluster` and `Vms` are the client-facing services; `Raft` carries openraft's
//! messages between members. The encoded file descriptor set is exported so each
//! node can serve gRPC reflection, and `PROTOCOL_VERSION` lets nodes refuse peers
//! that speak an incompatible version.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("kvmesh.v1");
}

pub use v1::*;

/// Encoded `FileDescriptorSet` of `kvmesh.v1`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kvmesh_descriptor");

/// Bumped whenever nodes of different versions could not work together
/// (wire messages or the replicated log format).
/// 2: states as enums, agents' reports through `Raft/Propose`, VM ids as
/// integers in heartbeats. 3: heartbeats carry the applied index and the
/// cluster id, `UpdateNode`, `OutcomeUnknown`. 4: storage domains, images,
/// disks, snapshots. 7: `Command::Note` (events about membership changes).
/// 9: VM hardware and pending changes (`Command::ConfigureVm`), Attach.
/// 10: `Command::VcpusLive`; reports carry the spec generation that runs.
pub const PROTOCOL_VERSION: u32 = 10;

/// gRPC metadata key carrying the sender's `PROTOCOL_VERSION` on Raft RPCs.
pub const PROTOCOL_HEADER: &str = "kvmesh-protocol";

/// gRPC metadata key carrying the sender's cluster id on Raft RPCs, so a
/// node of another cluster (one that took over a member's address) refuses
/// them instead of taking part, or answering for this cluster.
pub const CLUSTER_HEADER: &str = "kvmesh-cluster";

/// gRPC metadata key carrying the node id a Raft RPC is meant for: a node
/// that answers at another member's address (addresses swapped) refuses it
/// rather than voting or appending as someone else.
pub const TARGET_HEADER: &str = "kvmesh-target";

/// gRPC metadata key set when a node forwards a client write to the leader.
pub const FORWARDED_HEADER: &str = "kvmesh-forwarded";

/// Starts the message of a `FAILED_PRECONDITION` that tells a node it is not
/// a member of the answering node's cluster. From the leader (a refused
/// heartbeat) it is final; from a peer (a refused vote) it carries the log
/// index of the peer's committed membership, `"<marker> at <index>: …"`, to
/// be weighed against the node's own.
pub const NOT_A_MEMBER: &str = "kvmesh-not-a-member";

/// Starts the message of a `FAILED_PRECONDITION` from a node that belongs to
/// no cluster yet (never initialized, or its join has not finished), so a
/// client can tell it from every other refusal.
pub const NOT_INITIALIZED: &str = "kvmesh-not-initialized";

/// Starts the message of a `RESOURCE_EXHAUSTED` that says no node can take
/// a VM (placement, `--strict`), as opposed to a full disk: the CLI exits 3
/// for it, a check that did not pass.
pub const NOT_PLACEABLE: &str = "kvmesh-not-placeable";
