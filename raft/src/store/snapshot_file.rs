//! The current snapshot as one file, replaced atomically.
//!
//! sled keeps values over ~128 KiB (the snapshot of any real cluster) in
//! blob files that it never fsyncs, and the log is purged against the
//! snapshot, so the snapshot gets a file of its own: written under a
//! temporary name, fdatasynced, renamed over the previous one, and the
//! directory synced. Layout: `meta length: u32 LE | meta (encoded) |
//! crc32(meta, data): u32 LE | data`. The checksum covers the metadata too:
//! start-up trusts its last log id (the log is purged up to it), so a
//! flipped index must be refused, not believed.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{Error, Result};
use crate::types::SnapshotMeta;

pub(crate) const FILE_NAME: &str = "snapshot.bin";

pub(crate) struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub(crate) fn new(dir: &Path) -> Self {
        SnapshotFile { path: dir.join(FILE_NAME) }
    }

    fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::Corrupt { path: self.path.clone(), detail: detail.into() }
    }

    /// The stored snapshot, if there is one.
    pub(crate) fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path: self.path.clone(), source }),
        };
        let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        let meta_len = u32_at(0).ok_or_else(|| self.corrupt("snapshot file too short"))? as usize;
        let meta_bytes = bytes.get(4..4 + meta_len).ok_or_else(|| self.corrupt("snapshot meta cut short"))?;
        let crc = u32_at(4 + meta_len).ok_or_else(|| self.corrupt("snapshot checksum missing"))?;
        let data = &bytes[8 + meta_len..];
        if checksum(meta_bytes, data) != crc {
            // An older layout's checksum covered the data alone: say which
            // release wrote it rather than calling it damaged.
            if meta_bytes.first().is_some_and(|f| *f < codec::FORMAT) {
                codec::decode::<SnapshotMeta>("snapshot meta", meta_bytes)?;
            }
            return Err(self.corrupt("snapshot (metadata or data) does not match its checksum"));
        }
        let meta: SnapshotMeta = codec::decode("snapshot meta", meta_bytes)?;
        Ok(Some((meta, data.to_vec())))
    }

    /// Replaces the stored snapshot; durable when it returns. Blocking.
    pub(crate) fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<()> {
        let io = |source| Error::Io { path: self.path.clone(), source };
        let meta_bytes = codec::encode("snapshot meta", meta)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&(meta_bytes.len() as u32).to_le_bytes()).map_err(io)?;
        f.write_all(&meta_bytes).map_err(io)?;
        f.write_all(&checksum(&meta_bytes, data).to_le_bytes()).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_data().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

fn checksum(meta: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(meta);
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredMembership;

    fn meta(id: &str) -> SnapshotMeta {
        SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default(), snapshot_id: id.into() }
    }

    #[test]
    fn replaces_and_reads_back_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path());
        assert!(file.read().unwrap().is_none());
        file.write(&meta("a"), &[1, 2, 3]).unwrap();
        file.write(&meta("b"), &vec![7u8; 300_000]).unwrap();
        let (m, data) = file.read().unwrap().unwrap();
        assert_eq!((m.snapshot_id.as_str(), data.len()), ("b", 300_000));
        let mut bytes = std::fs::read(dir.path().join("snapshot.bin")).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        std::fs::write(dir.path().join("snapshot.bin"), bytes).unwrap();
        let err = file.read().unwrap_err().to_string();
        assert!(err.contains("does not match its checksum"), "{err}");
    }

    #[test]
    fn a_changed_metadata_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path());
        file.write(&meta("abcdef"), &[1, 2, 3]).unwrap();
        let path = dir.path().join("snapshot.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        // The last byte of the metadata: the snapshot id's last character,
        // which still decodes (as the flipped index of the issue did).
        let meta_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        bytes[4 + meta_len - 1] = b'x';
        std::fs::write(&path, bytes).unwrap();
        let err = file.read().unwrap_err().to_string();
        assert!(err.contains("does not match its checksum"), "{err}");
    }
}
