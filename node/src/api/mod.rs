//! The gRPC services every node serves: `Cluster`, `Vms` (client-facing),
//! `Host` (internal, between nodes) and `Raft` (internal, from the raft crate).

pub mod attach;
pub mod cluster;
pub mod host;
pub mod http1;
pub mod membership;
pub mod metrics;
pub mod migrate;
pub mod networks;
pub mod rest;
pub mod security;
pub mod storage;
pub mod vms;
