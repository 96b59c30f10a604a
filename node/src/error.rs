//! Errors of the kvmesh daemon, and their one mapping to gRPC statuses.

use std::path::PathBuf;

use kvmesh_proto::NOT_PLACEABLE;
use kvmesh_raft::command::Refusal;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },

    #[error(transparent)]
    Store(#[from] kvmesh_raft::Error),

    #[error("cannot listen on {address}: {source}. Is another kvmesh (or other program) using that port? Pick another with --listen")]
    Listen { address: String, source: std::io::Error },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("{0}")]
    NotFound(String),

    #[error("{0}")]
    AlreadyExists(String),

    #[error("{0}")]
    FailedPrecondition(String),

    /// No node can take a VM (placement); see [`kvmesh_proto::NOT_PLACEABLE`].
    #[error("{NOT_PLACEABLE}: {0}")]
    NoCapacity(String),

    /// A storage domain ran out of space.
    #[error("{0}")]
    StorageFull(String),

    #[error("{0}")]
    Unavailable(String),

    #[error("raft: {0}")]
    Raft(String),

    /// This node was removed from its cluster.
    #[error("{0}")]
    Removed(String),

    /// A write was proposed but its leader failed before answering: it may
    /// or may not have been committed.
    #[error("{0}")]
    OutcomeUnknown(String),

    #[error("timed out: {0}")]
    Timeout(String),

    /// A certificate or TLS set-up problem.
    #[error("TLS: {0}")]
    Tls(String),

    /// A credential that does not allow what was asked.
    #[error("{0}")]
    PermissionDenied(String),

    #[error("{0}")]
    Hypervisor(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        let msg = r.to_string();
        match r {
            Refusal::AlreadyInitialized { .. }
            | Refusal::NodeHasVms { .. }
            | Refusal::NoLongerFits { .. }
            | Refusal::NodeChangeRefused { .. }
            | Refusal::StorageInUse { .. }
            | Refusal::ImageInUse { .. }
            | Refusal::StorageChange { .. }
            | Refusal::Migration { .. }
            | Refusal::LocalDisksRunning { .. }
            | Refusal::NetworkInUse { .. }
            | Refusal::TooBig { .. }
            | Refusal::HostInMaintenance { .. } => Error::FailedPrecondition(msg),
            Refusal::NetworkInvalid { .. } | Refusal::VmChange { .. } => Error::InvalidArgument(msg),
            Refusal::ImageWrongKind { .. } | Refusal::HaNeedsSharedStorage { .. } => Error::InvalidArgument(msg),
            Refusal::NodeNameTaken { .. }
            | Refusal::NodeAddressTaken { .. }
            | Refusal::VmNameTaken { .. }
            | Refusal::StorageNameTaken { .. }
            | Refusal::NetworkNameTaken { .. }
            | Refusal::MacTaken { .. }
            | Refusal::ImageNameTaken { .. } => Error::AlreadyExists(msg),
            Refusal::UnknownNode { .. }
            | Refusal::UnknownVm { .. }
            | Refusal::UnknownVmId { .. }
            | Refusal::UnknownStorage { .. }
            | Refusal::UnknownNetwork { .. }
            | Refusal::UnknownNic { .. }
            | Refusal::UnknownImage { .. } => Error::NotFound(msg),
            Refusal::StaleReport
            | Refusal::VmBeingDeleted { .. }
            | Refusal::HostNotDown { .. }
            | Refusal::AlreadyPlaced { .. }
            | Refusal::RequestExpired => Error::FailedPrecondition(msg),
            // The leader draws again; reaching a client means it kept losing.
            Refusal::VmIdTaken { .. } => Error::Unavailable(msg),
            Refusal::Denied { .. } => Error::PermissionDenied(msg),
        }
    }
}

/// The single place where daemon errors become gRPC statuses.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Config(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NoCapacity(_) | Error::StorageFull(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::DataDir { .. } | Error::Store(_) | Error::Listen { .. } | Error::Raft(_) => Code::Internal,
            Error::Hypervisor(_) | Error::Tls(_) => Code::Internal,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Removed(_) => Code::FailedPrecondition,
            Error::OutcomeUnknown(_) => Code::Unknown,
        };
        let msg = match e {
            // Status messages reach the CLI as-is; skip the variant prefixes.
            Error::InvalidArgument(m) => m,
            other => other.to_string(),
        };
        Status::new(code, msg)
    }
}
