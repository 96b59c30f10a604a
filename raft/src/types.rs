//! The openraft type configuration for kvmesh.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

pub type NodeId = u64;

/// What Raft membership records about a member: enough to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    /// gRPC address (host:port) serving the Raft and client services.
    pub address: String,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.address)
    }
}

openraft::declare_raft_types!(
    /// kvmesh's Raft types: commands are [`Command`], responses [`Response`].
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = MemberNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, MemberNode>;
