//! kvmesh's replicated cluster state.
//!
//! - [`model`] and [`command`]: the state (nodes, VMs, events) and the commands
//!   that change it. [`ClusterState::apply`] is a pure function of the state and
//!   a command: no clock, no randomness, no I/O, so every replica agrees.
//! - [`types`]: the openraft type configuration.
//! - [`store`]: the sled-backed log store and state machine (storage v2), durable
//!   before openraft is told.
//! - [`networks`]: logical networks, NICs and their MACs.
//! - [`network`]: the tonic transport for openraft's RPCs, client and server.
//! - [`proposer`]: group commit, and forwarding of writes to the leader.

// openraft fixes the error type of its storage traits; it is large by design.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod command;
pub mod error;
pub mod hardware;
mod held;
pub mod model;
pub mod names;
pub mod network;
pub mod networks;
mod placed;
pub mod proposer;
pub mod requests;
pub mod security;
pub mod storage;
pub mod store;
pub mod types;
pub mod view;
pub mod wire;

pub use command::{Command, Response};
pub use error::{Error, Result};
pub use model::ClusterState;
pub use types::{MemberNode, NodeId, TypeConfig};
