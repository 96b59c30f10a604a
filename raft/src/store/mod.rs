//! Durable Raft storage (openraft storage v2): log files, sled, a snapshot file.
//!
//! The log is a directory of append-only segment files ([`wal`]); one sled
//! `Db` per node holds two trees:
//! - `raft`: the vote, the last purged log id and the committed log id;
//! - `sm`: the state machine, every key in one tree so each applied batch is a
//!   single atomic `Batch` (the state and its `applied` marker never diverge).
//!
//! The current snapshot is `snapshot.bin` ([`snapshot_file`]), replaced
//! atomically.
//!
//! Every method that openraft relies on for durability syncs before it
//! reports success ([`Syncer`]): sled's own background fsync runs only every
//! 500 ms.
//! Applying entries does not flush: the state machine can always be rebuilt
//! from the log and the snapshot, which are.

mod log;
mod snapshot_file;
mod state_machine;
mod wal;

pub use log::LogStore;

/// Who hears of each WAL fsync and how long it took (the node's metrics);
/// set once, at start.
static FSYNC_OBSERVER: std::sync::OnceLock<fn(std::time::Duration)> = std::sync::OnceLock::new();

/// Sets the WAL's fsync observer (the first call wins).
pub fn on_wal_fsync(observer: fn(std::time::Duration)) {
    let _ = FSYNC_OBSERVER.set(observer);
}

fn observe_fsync(took: std::time::Duration) {
    if let Some(observer) = FSYNC_OBSERVER.get() {
        observer(took);
    }
}
pub use state_machine::{SharedState, SmData, StateMachine};

use std::path::Path;
use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};

use crate::error::{Error, Result};
use crate::types::{NodeId, StorageError};

/// Opens (or creates) the store under `dir` and returns both halves.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine)> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|source| Error::Open { path: dir.to_path_buf(), source })?;
    let file =
        std::fs::File::open(dir.join("db")).map_err(|e| Error::Open { path: dir.to_path_buf(), source: e.into() })?;
    let syncer = Syncer { db: db.clone(), file: Arc::new(file) };
    let log = LogStore::new(&db, syncer.clone(), &dir.join("wal")).map_err(|e| corrupt(dir, e))?;
    let has_snapshot = dir.join(snapshot_file::FILE_NAME).exists();
    log.check_vote(has_snapshot).map_err(|e| corrupt(dir, e))?;
    let sm = StateMachine::load(&db, syncer, snapshot_file::SnapshotFile::new(dir)).map_err(|e| corrupt(dir, e))?;
    Ok((log, sm))
}

/// Makes everything written to the sled `Db` so far durable.
///
/// sled's `flush` writes its buffers with `sync_file_range`, which neither
/// empties the drive's write cache nor records a grown file size, so after a
/// power cut an acknowledged entry could be gone. Raft's safety argument
/// (and etcd, whose WAL is fdatasynced) need it on stable storage: the sync
/// follows sled's flush with an `fdatasync` of sled's data file. Both run
/// on the blocking pool.
#[derive(Clone)]
pub(crate) struct Syncer {
    db: sled::Db,
    file: Arc<std::fs::File>,
}

impl Syncer {
    pub(crate) async fn sync(&self) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sync_blocking()).await.map_err(std::io::Error::other)?
    }

    pub(crate) fn sync_blocking(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.file.sync_data()
    }
}

fn corrupt(dir: &Path, e: Error) -> Error {
    match e {
        Error::Decode { what, detail } => {
            Error::Corrupt { path: dir.to_path_buf(), detail: format!("{what}: {detail}") }
        }
        Error::Sled(source) => Error::Open { path: dir.to_path_buf(), source },
        other => other,
    }
}

pub(crate) fn be(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

pub(crate) fn from_be(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(a)
}

/// Wraps a storage failure in openraft's error type. openraft treats any
/// `StorageError` as fatal and stops the node, which is what a failing disk
/// deserves.
pub(crate) fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

#[cfg(test)]
mod suite_test;
