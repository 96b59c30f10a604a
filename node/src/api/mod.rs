//! The gRPC services every node serves: `Cluster`, `Vms` (client-facing) and
//! `Raft` (internal, from the raft crate).

pub mod cluster;
pub mod membership;
pub mod vms;
