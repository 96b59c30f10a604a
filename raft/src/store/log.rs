//! The Raft log (segment files, [`super::wal`]) and the vote (sled).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};

use super::wal::Wal;
use super::{io_err, Syncer};
use crate::codec;
use crate::error::{Error, Result};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// Log entries plus the vote. Cheap to clone: it is the reader too.
#[derive(Clone)]
pub struct LogStore {
    syncer: Syncer,
    wal: Arc<Wal>,
    raft: sled::Tree,
    wal_dir: std::path::PathBuf,
}

impl LogStore {
    pub(crate) fn new(db: &sled::Db, syncer: Syncer, wal_dir: &Path) -> Result<Self> {
        // kvmesh before 0.1.1 kept the log in sled; such a dir cannot be
        // read as it is, and must not be taken for an empty log.
        if db.tree_names().iter().any(|n| n.as_ref() == b"log") && !db.open_tree("log")?.is_empty() {
            return Err(Error::Decode {
                what: "raft log",
                detail: "this data dir keeps its log in the old sled format (kvmesh 0.1.0)".into(),
            });
        }
        let raft = db.open_tree("raft")?;
        // Decode what we hold once at open, so damage shows up at start-up
        // with a clear message rather than later as a fatal Raft error.
        get::<Vote>(&raft, VOTE, "vote")?;
        let purged = get::<LogId>(&raft, LAST_PURGED, "last purged log id")?;
        let wal = Wal::open(wal_dir, purged.map(|p| p.index))?;
        Ok(LogStore { syncer, wal: Arc::new(wal), raft, wal_dir: wal_dir.to_path_buf() })
    }

    /// Refuses a store whose vote is gone while its history is not (the
    /// sled files deleted or lost, the log segments or snapshot kept): a
    /// voter that forgot its vote could vote twice in one term. A store with
    /// no history at all is new: it records the initial vote at once, so
    /// from then on a missing vote always means loss.
    pub(crate) fn check_vote(&self, has_snapshot: bool) -> Result<()> {
        if self.get::<Vote>(VOTE, "vote")?.is_some() {
            return Ok(());
        }
        let purged = self.get::<LogId>(LAST_PURGED, "last purged log id")?;
        if self.wal.last_log_id().is_some() || purged.is_some() || has_snapshot {
            return Err(Error::Corrupt {
                path: self.wal_dir.clone(),
                detail: "the vote is missing (the sled files under raft/ were deleted or lost) while the log or snapshot is still there; a voter that forgot its vote could vote twice in one term".into(),
            });
        }
        self.raft.insert(VOTE, codec::encode("vote", &Vote::default())?)?;
        self.syncer.sync_blocking().map_err(|source| Error::Io { path: self.wal_dir.clone(), source })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &'static str) -> Result<Option<T>> {
        get(&self.raft, key, what)
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
        subject: ErrorSubject<u64>,
    ) -> std::result::Result<Option<T>, StorageError> {
        self.get(key, what).map_err(|e| io_err(subject, ErrorVerb::Read, e))
    }

    fn put<T: serde::Serialize>(&self, key: &[u8], what: &'static str, v: &T) -> std::result::Result<(), StorageError> {
        let bytes = codec::encode(what, v).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.raft.insert(key, bytes).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<u64>) -> std::result::Result<(), StorageError> {
        self.syncer.sync().await.map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }

    /// Bytes the log holds after entry `index` (after the last snapshot,
    /// say), so the node can snapshot by size as well as by count.
    pub fn bytes_after(&self, index: Option<u64>) -> u64 {
        self.wal.bytes_after(index)
    }

    /// Runs a blocking log operation on the blocking pool.
    async fn on_log<T: Send + 'static>(
        &self,
        verb: ErrorVerb,
        f: impl FnOnce(&Wal) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, StorageError> {
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || f(&wal))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, verb, e))?
            .map_err(|e| io_err(ErrorSubject::Logs, verb, e))
    }
}

fn get<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8], what: &'static str) -> Result<Option<T>> {
    match tree.get(key)? {
        Some(bytes) => Ok(Some(codec::decode(what, &bytes)?)),
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        // Reads hit the page cache (entries were just written); no hand-off.
        self.wal.read(range).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read(LAST_PURGED, "last purged log id", ErrorSubject::Store)?;
        let last_log_id = self.wal.last_log_id().or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), StorageError> {
        self.put(VOTE, "vote", vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, StorageError> {
        self.read(VOTE, "vote", ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> std::result::Result<(), StorageError> {
        // Not flushed: losing it only means re-deriving the commit index from
        // the leader, which openraft does anyway.
        self.put(COMMITTED, "committed log id", &committed)
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        Ok(self.read::<Option<LogId>>(COMMITTED, "committed log id", ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // One write and one fdatasync for the whole batch; openraft hears of
        // it only once both are done.
        let result = self.on_log(ErrorVerb::Write, move |wal| wal.append(entries)).await;
        callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating log from index");
        self.on_log(ErrorVerb::Delete, move |wal| wal.truncate(log_id.index)).await
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        tracing::debug!(%log_id, "purging log up to index");
        // Record the purge point first: a crash after it leaves extra
        // segments (dropped at the next start) rather than a hole.
        self.put(LAST_PURGED, "last purged log id", &log_id)?;
        self.flush(ErrorSubject::Store).await?;
        self.on_log(ErrorVerb::Delete, move |wal| wal.purge(log_id.index)).await
    }
}
