//! Errors of the raft crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the raft store at {path}: {source}. If another kvmesh process uses this data dir, stop it; if the files are damaged, restore them from a backup or remove this node with `kvmesh cluster remove` and rejoin it with an empty --data-dir")]
    Open { path: PathBuf, source: sled::Error },

    #[error("raft store at {path} is corrupt: {detail}. Restore it from a backup, or remove this node with `kvmesh cluster remove` and rejoin it with an empty --data-dir")]
    Corrupt { path: PathBuf, detail: String },

    #[error("raft log I/O failed in {path}: {source}. Check the disk (space, permissions, errors in dmesg)")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("storage I/O failed: {0}")]
    Sled(#[from] sled::Error),

    #[error("cannot decode {what}: {detail}")]
    Decode { what: &'static str, detail: String },

    #[error(
        "{what} was written by a newer kvmesh (format {found}, this build reads up to {supported}); upgrade this node"
    )]
    FormatTooNew { what: &'static str, found: u8, supported: u8 },

    #[error(
        "{what} was written by an older kvmesh (format {found}; this build reads format {supported}) and pre-release formats are not migrated: remove this node with `kvmesh cluster remove` and rejoin it with an empty --data-dir"
    )]
    FormatTooOld { what: &'static str, found: u8, supported: u8 },

    /// A client request that cannot become a model value.
    #[error("{0}")]
    InvalidRequest(String),

    #[error("cannot encode {what}: {detail}")]
    Encode { what: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;
