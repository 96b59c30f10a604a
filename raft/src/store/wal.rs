//! The Raft log as append-only segment files, fdatasynced.
//!
//! sled is a fine home for the state machine, but as a log it costs a
//! B-tree insert per entry, a hand-off to its I/O threads per flush and a
//! `sync_file_range` that does not reach stable storage. A log needs less:
//! append, read a range, cut the tail, drop the head. So entries go to
//! `<raft dir>/wal/<first index>.seg`, each a sequence of records
//! `len: u32 LE | crc32(payload): u32 LE | payload` (payload: the encoded
//! entry, format byte first). An append is one `pwrite` and one
//! `fdatasync`, like etcd's WAL.
//!
//! Memory holds only where each entry lives (segment, offset, length).
//!
//! Recovery reads every segment. A record that the last segment ends in the
//! middle of, or whose last sectors are zeros (the file grew but the pages
//! never reached the disk), or a zero-filled tail, is a write torn by a
//! crash (it was never acknowledged) and is cut off; any other record that
//! fails its checksum is damage, and opening fails.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::codec;
use crate::error::{Error, Result};
use crate::types::{Entry, LogId};

/// A new segment is started once the current one is this big.
const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;

#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    len: u64,
}

struct Inner {
    /// Segments by the index of their first entry.
    segments: BTreeMap<u64, Segment>,
    /// Where each entry lives; `locations[0]` is entry `first`.
    locations: VecDeque<Location>,
    first: u64,
    last_log_id: Option<LogId>,
}

pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The sector size below which a disk may leave a cut write's pages unwritten.
const SECTOR: usize = 512;

/// Whether a bad record at `at`, ending at `end` (if its header is whole),
/// in the last segment, is a write torn by a crash: the file ends inside it
/// (with a length a record can have, at most a segment); or everything from
/// a sector boundary inside it to the end of the file is zeros (the file
/// grew, but the last write's pages, for one record or several, never
/// reached the disk). A flipped bit is neither. Entries never end in 64
/// zero bytes of their own: their last field is a number or a short enum.
fn torn(bytes: &[u8], at: usize, end: Option<usize>, max_record: u64) -> bool {
    match end {
        // The header itself is cut.
        None => true,
        // The file ends inside the payload: a cut write, if the length is
        // one a write could have had (a flipped high bit is not).
        Some(end) if end > bytes.len() => ((end - at) as u64) <= max_record,
        // Whole, but from a sector boundary inside it to the end of the
        // file all zeros: the pages of the last write (one or several
        // records) never reached the disk.
        Some(end) => {
            let zeros_from = bytes.len() - bytes[at..].iter().rev().take_while(|b| **b == 0).count();
            let boundary = zeros_from.max(at).div_ceil(SECTOR) * SECTOR;
            boundary < end && bytes.len() - boundary >= 64
        }
    }
}

/// Parses one segment's records: `(entries with their locations, valid length)`.
/// `last` tells whether a bad record at the end may be cut off.
fn parse_segment(
    path: &Path,
    first: u64,
    bytes: &[u8],
    last: bool,
    max_record: u64,
) -> Result<(Vec<(LogId, Location)>, u64)> {
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        // A zero-filled tail (a length of 0 would even pass the checksum).
        if last && bytes[at..].iter().all(|b| *b == 0) {
            tracing::warn!(path = %path.display(), offset = at, "cutting off a zero-filled tail left by a crash");
            return Ok((out, at as u64));
        }
        let header = bytes.get(at..at + HEADER);
        let len = header.map(|h| u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize);
        let end = len.map(|l| at + HEADER + l);
        let payload = end.and_then(|e| bytes.get(at + HEADER..e));
        let good = match (header, payload) {
            (Some(h), Some(p)) => u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) == crc32fast::hash(p),
            _ => false,
        };
        if !good {
            // Torn: a write a crash cut short, never acknowledged, so it may
            // go (see `torn`). Any other record that fails its checksum is
            // damage to an entry that may be committed: cutting it would
            // silently drop it, so it is refused.
            if last && torn(bytes, at, end, max_record) {
                tracing::warn!(path = %path.display(), offset = at, "cutting off a log record torn by a crash");
                return Ok((out, at as u64));
            }
            return Err(corrupt(format!("the log record at offset {at} fails its checksum")));
        }
        let payload = payload.expect("checked");
        // An entry starts with its log id: start-up reads only that (and the
        // checksum), not the whole entry.
        let log_id: LogId = codec::decode_prefix("log entry id", payload).map_err(|e| corrupt(e.to_string()))?;
        let expected = first + out.len() as u64;
        if log_id.index != expected {
            return Err(corrupt(format!("entry {} where entry {expected} belongs", log_id.index)));
        }
        out.push((log_id, Location { segment: first, offset: (at + HEADER) as u64, len: payload.len() as u32 }));
        at = end.expect("checked");
    }
    Ok((out, at as u64))
}

impl Wal {
    /// Opens (or creates) the log under `dir`. Entries up to `purged` are
    /// dropped, and segments holding only such entries deleted.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> Result<Self> {
        Self::open_with(dir, purged, SEGMENT_BYTES)
    }

    pub(crate) fn open_with(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> Result<Self> {
        let io = |source: std::io::Error| Error::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut firsts: Vec<u64> = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io)? {
            let name = item.map_err(io)?.file_name().to_string_lossy().into_owned();
            if let Some(first) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let keep_after = purged.map_or(0, |p| p + 1);
        let mut inner =
            Inner { segments: BTreeMap::new(), locations: VecDeque::new(), first: keep_after, last_log_id: None };
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let last = i + 1 == firsts.len();
            // Wholly purged: the next segment starts at or before keep_after.
            if firsts.get(i + 1).is_some_and(|next| *next <= keep_after) {
                std::fs::remove_file(&path).map_err(io)?;
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io)?;
            let (entries, valid) = parse_segment(&path, first, &bytes, last, segment_bytes)?;
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io)?;
            if valid < bytes.len() as u64 {
                file.set_len(valid).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
            for (log_id, location) in entries {
                let index = log_id.index;
                if index < keep_after {
                    continue;
                }
                let next = inner.first + inner.locations.len() as u64;
                if index != next {
                    if inner.locations.is_empty() && index > next {
                        // The log restarts after a snapshot install.
                        inner.first = index;
                    } else {
                        return Err(Error::Corrupt {
                            path: path.clone(),
                            detail: format!("entry {index} where entry {next} belongs"),
                        });
                    }
                }
                inner.locations.push_back(location);
                inner.last_log_id = Some(log_id);
            }
            inner.segments.insert(first, Segment { file: Arc::new(file), len: valid });
        }
        Ok(Wal { dir: dir.to_path_buf(), segment_bytes, inner: Mutex::new(inner) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.lock().last_log_id
    }

    /// Bytes of the records after entry `index` (all of them for `None`).
    pub(crate) fn bytes_after(&self, index: Option<u64>) -> u64 {
        let inner = self.lock();
        let skip = index.map_or(0, |i| (i + 1).saturating_sub(inner.first) as usize);
        inner.locations.iter().skip(skip).map(|l| l.len as u64 + HEADER as u64).sum()
    }

    /// Appends entries (which must follow the last one) and syncs them.
    /// Blocking: call it on the blocking pool.
    pub(crate) fn append(&self, entries: Vec<Entry>) -> Result<()> {
        let Some(first_new) = entries.first().map(|e| e.log_id.index) else { return Ok(()) };
        let io = |source: std::io::Error| Error::Io { path: self.dir.clone(), source };
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(entries.len());
        for entry in &entries {
            let payload = codec::encode("log entry", entry)?;
            spans.push((buf.len() as u64, payload.len() as u32));
            buf.extend_from_slice(&record(&payload));
        }
        let (file, new_segment) = {
            let mut inner = self.lock();
            let next = inner.first + inner.locations.len() as u64;
            if !inner.locations.is_empty() && first_new != next {
                return Err(io(std::io::Error::other(format!("append of entry {first_new}, expected {next}"))));
            }
            if inner.locations.is_empty() {
                inner.first = first_new;
            }
            let current = inner.segments.iter().next_back().map(|(f, s)| (*f, s.len));
            let (segment, offset, new_segment) = match current {
                Some((f, len)) if len < self.segment_bytes && !inner.locations.is_empty() => (f, len, false),
                _ => {
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(segment_path(&self.dir, first_new))
                        .map_err(io)?;
                    inner.segments.insert(first_new, Segment { file: Arc::new(file), len: 0 });
                    (first_new, 0, true)
                }
            };
            let seg = inner.segments.get_mut(&segment).expect("current segment");
            seg.file.write_all_at(&buf, offset).map_err(io)?;
            seg.len = offset + buf.len() as u64;
            let file = seg.file.clone();
            for (rel, len) in spans {
                inner.locations.push_back(Location { segment, offset: offset + rel + HEADER as u64, len });
            }
            inner.last_log_id = entries.last().map(|e| e.log_id);
            (file, new_segment)
        };
        let started = std::time::Instant::now();
        file.sync_data().map_err(io)?;
        super::observe_fsync(started.elapsed());
        if new_segment {
            sync_dir(&self.dir).map_err(io)?;
        }
        Ok(())
    }

    /// Reads the entries in `range` that the log holds.
    pub(crate) fn read<R: RangeBounds<u64>>(&self, range: R) -> Result<Vec<Entry>> {
        use std::ops::Bound;
        let wanted: Vec<(Arc<File>, Location)> = {
            let inner = self.lock();
            let end = inner.first + inner.locations.len() as u64;
            let lo = match range.start_bound() {
                Bound::Included(i) => *i,
                Bound::Excluded(i) => i + 1,
                Bound::Unbounded => inner.first,
            }
            .max(inner.first);
            let hi = match range.end_bound() {
                Bound::Included(i) => i + 1,
                Bound::Excluded(i) => *i,
                Bound::Unbounded => end,
            }
            .min(end);
            (lo..hi.max(lo))
                .map(|i| {
                    let loc = inner.locations[(i - inner.first) as usize];
                    (inner.segments[&loc.segment].file.clone(), loc)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (file, loc) in wanted {
            let mut payload = vec![0u8; loc.len as usize];
            file.read_exact_at(&mut payload, loc.offset)
                .map_err(|source| Error::Io { path: self.dir.clone(), source })?;
            out.push(codec::decode("log entry", &payload)?);
        }
        Ok(out)
    }

    /// Removes entries from `since` on (a follower's conflicting tail).
    pub(crate) fn truncate(&self, since: u64) -> Result<()> {
        let io = |source: std::io::Error| Error::Io { path: self.dir.clone(), source };
        let mut inner = self.lock();
        let end = inner.first + inner.locations.len() as u64;
        if since >= end {
            return Ok(());
        }
        let keep = since.saturating_sub(inner.first) as usize;
        let cut = inner.locations[keep];
        inner.locations.truncate(keep);
        let later: Vec<u64> = inner.segments.range(cut.segment + 1..).map(|(f, _)| *f).collect();
        for first in later {
            inner.segments.remove(&first);
            std::fs::remove_file(segment_path(&self.dir, first)).map_err(io)?;
        }
        let record_start = cut.offset - HEADER as u64;
        let seg = inner.segments.get_mut(&cut.segment).expect("segment of a held entry");
        seg.file.set_len(record_start).map_err(io)?;
        seg.len = record_start;
        seg.file.sync_all().map_err(io)?;
        sync_dir(&self.dir).map_err(io)?;
        let last = inner.locations.back().copied();
        drop(inner);
        self.lock().last_log_id = match last {
            Some(_) => self.read(since - 1..since)?.pop().map(|e| e.log_id),
            None => None,
        };
        Ok(())
    }

    /// Drops entries up to `upto` (covered by a snapshot) and deletes the
    /// segments that hold nothing else.
    pub(crate) fn purge(&self, upto: u64) -> Result<()> {
        let io = |source: std::io::Error| Error::Io { path: self.dir.clone(), source };
        let mut inner = self.lock();
        while inner.first <= upto && inner.locations.pop_front().is_some() {
            inner.first += 1;
        }
        if inner.first <= upto {
            // Purged past the end (a snapshot install): the log restarts.
            inner.first = upto + 1;
        }
        let live = inner.locations.front().map(|l| l.segment);
        let dead: Vec<u64> = inner.segments.keys().copied().filter(|f| live.is_none_or(|l| *f < l)).collect();
        for first in dead {
            inner.segments.remove(&first);
            std::fs::remove_file(segment_path(&self.dir, first)).map_err(io)?;
        }
        if inner.locations.is_empty() {
            inner.last_log_id = None;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
