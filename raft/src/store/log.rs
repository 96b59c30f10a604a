//! The Raft log and vote, on sled.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};

use super::{be, io_err, Syncer};
use crate::codec;
use crate::error::Result;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// Log entries plus the vote. Cheap to clone: it is the reader too.
#[derive(Clone)]
pub struct LogStore {
    syncer: Syncer,
    log: sled::Tree,
    raft: sled::Tree,
}

impl LogStore {
    pub(crate) fn new(db: &sled::Db, syncer: Syncer) -> Result<Self> {
        let store = LogStore { syncer, log: db.open_tree("log")?, raft: db.open_tree("raft")? };
        // Decode what we hold once at open, so damage shows up at start-up with
        // a clear message rather than later as a fatal Raft error.
        store.get::<Vote>(VOTE, "vote")?;
        store.get::<LogId>(LAST_PURGED, "last purged log id")?;
        if let Some(last) = store.log.last()? {
            codec::decode::<Entry>("last log entry", &last.1)?;
        }
        Ok(store)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &'static str) -> Result<Option<T>> {
        match self.raft.get(key)? {
            Some(bytes) => Ok(Some(codec::decode(what, &bytes)?)),
            None => Ok(None),
        }
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

    fn last_log_id(&self) -> std::result::Result<Option<LogId>, StorageError> {
        let last = self.log.last().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        match last {
            None => Ok(None),
            Some((_, bytes)) => {
                let entry: Entry =
                    codec::decode("log entry", &bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

fn to_sled_range<RB: RangeBounds<u64>>(range: &RB) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(be(*i)),
        Bound::Excluded(i) => Bound::Excluded(be(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(be(*i)),
        Bound::Excluded(i) => Bound::Excluded(be(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        for item in self.log.range(to_sled_range(&range)) {
            let (_, bytes) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let entry: Entry =
                codec::decode("log entry", &bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read(LAST_PURGED, "last purged log id", ErrorSubject::Store)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode("log entry", &entry)
                .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
            batch.insert(&be(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Readable now; durable only after the flush, and only then is openraft told.
        let flushed = self.syncer.sync().await;
        let failed = flushed.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(flushed);
        match failed {
            Some(e) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating log from index");
        let mut batch = sled::Batch::default();
        for item in self.log.range(be(log_id.index)..) {
            let (key, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        tracing::debug!(%log_id, "purging log up to index");
        // Record the purge point first: a crash after it leaves extra entries
        // (harmless) rather than a hole before the first entry.
        self.put(LAST_PURGED, "last purged log id", &log_id)?;
        self.flush(ErrorSubject::Store).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=be(log_id.index)) {
            let (key, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }
}
