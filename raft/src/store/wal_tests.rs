use super::*;
use crate::command::Command;
use openraft::{CommittedLeaderId, EntryPayload};

fn entry(term: u64, index: u64) -> Entry {
    let cmd = Command::UpdateVm { name: format!("vm{index}"), description: Some("x".repeat(100)), priority: None };
    Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Normal(cmd) }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

fn indexes(wal: &Wal) -> Vec<u64> {
    wal.read(..).unwrap().iter().map(|e| e.log_id.index).collect()
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
        .count()
}

/// Small segments, so a few entries span several files.
const SMALL: u64 = 1024;

#[test]
fn appends_survive_a_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, SMALL).unwrap();
    wal.append(entries(1, 1..=10)).unwrap();
    wal.append(entries(1, 11..=30)).unwrap();
    assert_eq!(indexes(&wal), (1..=30).collect::<Vec<_>>());
    assert_eq!(wal.read(5..8).unwrap().iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![5, 6, 7]);
    assert!(segments(dir.path()) > 1, "expected several segments");
    drop(wal);
    let wal = Wal::open_with(dir.path(), None, SMALL).unwrap();
    assert_eq!(indexes(&wal), (1..=30).collect::<Vec<_>>());
    assert_eq!(wal.last_log_id().map(|l| l.index), Some(30));
    assert_eq!(wal.read(29..=40).unwrap().len(), 2);
    let all = wal.bytes_after(None);
    assert_eq!((wal.bytes_after(Some(0)), wal.bytes_after(Some(30))), (all, 0));
    let last = wal.bytes_after(Some(29));
    assert!(last > 100 && last < all / 20, "{last} of {all}");
    // An append that does not follow the last entry is refused.
    assert!(wal.append(entries(1, 40..=40)).is_err());
}

#[test]
fn truncate_cuts_the_tail_durably() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, SMALL).unwrap();
    wal.append(entries(1, 1..=30)).unwrap();
    wal.truncate(12).unwrap();
    assert_eq!(indexes(&wal), (1..=11).collect::<Vec<_>>());
    assert_eq!(wal.last_log_id(), Some(LogId::new(CommittedLeaderId::new(1, 1), 11)));
    wal.append(entries(2, 12..=14)).unwrap();
    drop(wal);
    let wal = Wal::open_with(dir.path(), None, SMALL).unwrap();
    assert_eq!(indexes(&wal), (1..=14).collect::<Vec<_>>());
    assert_eq!(wal.read(12..=12).unwrap()[0].log_id.leader_id.term, 2);
    wal.truncate(1).unwrap();
    assert_eq!((indexes(&wal), wal.last_log_id()), (vec![], None));
}

#[test]
fn purge_drops_the_head_and_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open_with(dir.path(), None, SMALL).unwrap();
    for i in 1..=30 {
        wal.append(entries(1, i..=i)).unwrap();
    }
    let before = segments(dir.path());
    wal.purge(20).unwrap();
    assert_eq!(indexes(&wal), (21..=30).collect::<Vec<_>>());
    assert!(segments(dir.path()) < before);
    drop(wal);
    let wal = Wal::open_with(dir.path(), Some(20), SMALL).unwrap();
    assert_eq!(indexes(&wal), (21..=30).collect::<Vec<_>>());
    // Purged past the end (a snapshot install): the log starts again later.
    wal.purge(50).unwrap();
    assert_eq!((indexes(&wal), wal.last_log_id()), (vec![], None));
    wal.append(entries(3, 51..=52)).unwrap();
    drop(wal);
    let wal = Wal::open_with(dir.path(), Some(50), SMALL).unwrap();
    assert_eq!(indexes(&wal), vec![51, 52]);
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    all.pop().unwrap()
}

#[test]
fn a_write_torn_by_a_crash_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(entries(1, 1..=5)).unwrap();
    drop(wal);
    let path = last_segment(dir.path());
    let good = std::fs::metadata(&path).unwrap().len();
    // Half a record: its header promises more than the file holds.
    let torn = record(&codec::encode("log entry", &entry(1, 6)).unwrap());
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, &torn[..torn.len() / 2]).unwrap();
    drop(f);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
    wal.append(entries(1, 6..=6)).unwrap();
    drop(wal);
    // A whole last record with a bad checksum is damage, not a torn write:
    // it may be a committed entry, so opening refuses instead of cutting it.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = Wal::open(dir.path(), None).err().expect("a damaged last record is refused").to_string();
    assert!(err.contains("fails its checksum"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the damaged file is left as it was");
}

/// A log holding entries 1..=3: its dir, its last segment and that
/// segment's length.
fn log_of_three() -> (tempfile::TempDir, PathBuf, usize) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(entries(1, 1..=3)).unwrap();
    drop(wal);
    let path = last_segment(dir.path());
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    (dir, path, len)
}

/// Appends raw bytes to a segment, as a crash or damage would leave them.
fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
}

#[test]
fn a_last_record_whose_page_never_reached_the_disk_is_torn_not_damage() {
    // The file grew by the whole write, but a sector of it stayed zeros
    // (unwritten extent after a power cut): never acknowledged, so cut.
    let (dir, path, good) = log_of_three();
    let mut torn = record(&vec![7u8; 3000]);
    // Everything from the second sector boundary inside it on is zeros.
    let zero_from = (good + 1024) / 512 * 512 - good;
    torn[zero_from..].fill(0);
    append_raw(&path, &torn);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&wal), vec![1, 2, 3]);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, good);
    drop(wal);
    // A zero-filled tail (preallocated, never written) is the end too.
    append_raw(&path, &[0u8; 4096]);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&wal), vec![1, 2, 3]);
}

#[test]
fn a_zeroed_sector_in_the_middle_of_the_last_record_is_damage() {
    // Only trailing pages that never reached the disk make a torn write; a
    // hole of zeros with data after it is refused like any damage.
    let (dir, path, good) = log_of_three();
    let mut hole = record(&vec![7u8; 3000]);
    let from = (good + 1024) / 512 * 512 - good;
    hole[from..from + 512].fill(0);
    append_raw(&path, &hole);
    let err = Wal::open(dir.path(), None).err().expect("refused").to_string();
    assert!(err.contains("fails its checksum"), "{err}");
}

#[test]
fn a_torn_write_of_several_records_is_cut_from_the_first_bad_one() {
    // One append wrote records 4..=6; the pages from inside record 4 on
    // never reached the disk: all three go, 1..=3 stay.
    let (dir, path, good) = log_of_three();
    let big = |i: u64| {
        let cmd = Command::UpdateVm { name: format!("vm{i}"), description: Some("y".repeat(900)), priority: None };
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), i), payload: EntryPayload::Normal(cmd) }
    };
    let mut write = Vec::new();
    for i in 4..=6 {
        write.extend(record(&codec::encode("log entry", &big(i)).unwrap()));
    }
    // The first sector boundary at least 100 bytes into record 4 (of ~950).
    let from = (good + 100).div_ceil(512) * 512 - good;
    write[from..].fill(0);
    append_raw(&path, &write);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&wal), vec![1, 2, 3]);
}

#[test]
fn a_flipped_high_bit_in_a_length_is_damage_not_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(entries(1, 1..=5)).unwrap();
    drop(wal);
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 0x40; // record 1's length now claims about a GiB
    std::fs::write(&path, &bytes).unwrap();
    let err = Wal::open(dir.path(), None).err().expect("refused").to_string();
    assert!(err.contains("fails its checksum"), "{err}");
}

#[test]
fn damage_before_the_tail_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(entries(1, 1..=5)).unwrap();
    drop(wal);
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER + 3] ^= 0xff; // inside entry 1, with four entries after it
    std::fs::write(&path, &bytes).unwrap();
    let err = Wal::open(dir.path(), None).err().expect("damaged log refused").to_string();
    assert!(err.contains("the log record at offset 0 fails its checksum"), "{err}");
    assert!(err.contains("rejoin it with an empty --data-dir"), "{err}");
}

#[test]
fn start_up_reads_log_ids_without_decoding_whole_entries() {
    // The log id is a prefix of an encoded entry; a reopened log reports
    // the same last id and reads the same entries.
    let e = entry(7, 42);
    let bytes = codec::encode("log entry", &e).unwrap();
    let id: LogId = codec::decode_prefix("log entry id", &bytes).unwrap();
    assert_eq!(id, e.log_id);
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None).unwrap();
    wal.append(entries(7, 1..=3)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), None).unwrap();
    assert_eq!(wal.last_log_id(), Some(LogId::new(CommittedLeaderId::new(7, 1), 3)));
    assert_eq!(wal.read(..).unwrap(), entries(7, 1..=3));
}
