//! A wrong, foreign or damaged data dir, or a hypervisor that cannot be
//! reached, is refused with a message that says what to do; a damaged store
//! is never started as a blank node.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use kvmesh_tests::{free_port, kvmesh_bin, Cluster};

/// Runs `kvmesh serve` expecting it to refuse; returns its stderr.
fn serve_refused(args: &[&str]) -> String {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(kvmesh_bin())
        .args(["serve", "--listen", &listen])
        .args(if args.contains(&"--libvirt-uri") { &[][..] } else { &["--libvirt-uri", "test:///default"][..] })
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("kvmesh serve {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wrong_foreign_and_corrupt_data_dirs_are_refused() -> Result<()> {
    let mut c = Cluster::new();
    c.spawn("a", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    c.cli_ok(0, &["vm", "create", "keep-me", "--memory", "64"])?;
    c.nodes[0].kill();
    let dir = c.nodes[0].data_dir.clone();
    let dir_s = dir.to_str().unwrap();

    // Another node's data dir.
    let err = serve_refused(&["--name", "b", "--data-dir", dir_s]);
    assert!(err.contains("belongs to node \"a\""), "{err}");

    // A directory that is not a kvmesh data dir.
    let foreign = c.dir.path().join("photos");
    std::fs::create_dir_all(&foreign)?;
    std::fs::write(foreign.join("cat.jpg"), b"meow")?;
    let err = serve_refused(&["--name", "a", "--data-dir", foreign.to_str().unwrap()]);
    assert!(err.contains("not a kvmesh data dir"), "{err}");

    // A damaged raft store: refused, not restarted as an empty node.
    let copy = c.dir.path().join("damaged");
    copy_dir(&dir, &copy)?;
    let db = copy.join("raft/db");
    let mut bytes = std::fs::read(&db)?;
    for i in (0..bytes.len()).step_by(97) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(&db, bytes)?;
    let err = serve_refused(&["--name", "a", "--data-dir", copy.to_str().unwrap()]);
    assert!(err.contains("corrupt"), "{err}");

    // A damaged log record with records after it: refused as well.
    let copy = c.dir.path().join("damaged-log");
    copy_dir(&dir, &copy)?;
    let segment = first_segment(&copy)?;
    let mut bytes = std::fs::read(&segment)?;
    bytes[12] ^= 0xff; // inside the first record, which others follow
    std::fs::write(&segment, bytes)?;
    let err = serve_refused(&["--name", "a", "--data-dir", copy.to_str().unwrap()]);
    assert!(err.contains("corrupt") && err.contains("the log record at offset 0 fails its checksum"), "{err}");

    // A bit flip in the last complete record is damage too (it may hold a
    // committed entry), not a torn write: refused, and the file untouched.
    let copy = c.dir.path().join("damaged-last");
    copy_dir(&dir, &copy)?;
    let segment = first_segment(&copy)?;
    let mut bytes = std::fs::read(&segment)?;
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    std::fs::write(&segment, &bytes)?;
    let err = serve_refused(&["--name", "a", "--data-dir", copy.to_str().unwrap()]);
    assert!(err.contains("fails its checksum"), "{err}");
    assert_eq!(std::fs::read(&segment)?, bytes, "the damaged log was changed");

    // The sled files lost, the log kept: the vote is gone, and a voter
    // that forgot its vote could vote twice in a term. Refused.
    let copy = c.dir.path().join("lost-vote");
    copy_dir(&dir, &copy)?;
    for entry in std::fs::read_dir(copy.join("raft"))? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n != "wal") {
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    let err = serve_refused(&["--name", "a", "--data-dir", copy.to_str().unwrap()]);
    assert!(err.contains("the vote is missing"), "{err}");

    // A record torn by a crash at the end of the log (a header promising
    // more than was written) is cut off; everything acknowledged stays.
    let segment = first_segment(&dir)?;
    let mut torn = std::fs::OpenOptions::new().append(true).open(&segment)?;
    std::io::Write::write_all(&mut torn, &[0xe8, 0x03, 0, 0, 1, 2, 3, 4, 5, 6])?;
    drop(torn);

    // The intact original still starts and still has its VM.
    c.restart(0)?;
    kvmesh_tests::wait_for("VM after restart", Duration::from_secs(20), || {
        (c.vm_names(0).ok()? == vec!["keep-me".to_string()]).then_some(())
    })?;
    assert!(c.log_text(0).contains("cutting off a log record torn by a crash"), "{}", c.log_text(0));
    Ok(())
}

/// The first log segment file of a data dir.
fn first_segment(data_dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let mut segments: Vec<_> =
        std::fs::read_dir(data_dir.join("raft/wal"))?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    segments.sort();
    segments.into_iter().next().ok_or_else(|| std::io::Error::other("no log segment"))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Snapshot metadata is trusted at start-up (the log is purged up to its
/// index), so it is under the checksum: a changed byte that still decodes
/// is refused, not believed.
#[test]
fn a_snapshot_with_changed_metadata_is_refused() -> Result<()> {
    let mut c = Cluster::new();
    c.config_toml = "[raft]\nsnapshot_every = 10\nkeep_logs = 0\n".into();
    c.spawn("a", None, &[])?;
    c.cli_ok(0, &["cluster", "init"])?;
    for i in 0..15 {
        c.cli_ok(0, &["vm", "create", &format!("v{i}"), "--memory", "16"])?;
    }
    kvmesh_tests::wait_for("a snapshot", Duration::from_secs(20), || {
        (c.status(0).ok()?["snapshot_index"].as_u64()? >= 10).then_some(())
    })?;
    c.nodes[0].kill();
    let dir = c.nodes[0].data_dir.clone();
    let copy = c.dir.path().join("tampered");
    copy_dir(&dir, &copy)?;
    let path = copy.join("raft/snapshot.bin");
    let mut bytes = std::fs::read(&path)?;
    let meta_len = u32::from_le_bytes(bytes[0..4].try_into()?) as usize;
    // The snapshot id's last character: still a valid snapshot meta.
    bytes[4 + meta_len - 1] ^= 0x01;
    std::fs::write(&path, bytes)?;
    let err = serve_refused(&["--name", "a", "--data-dir", copy.to_str().unwrap()]);
    assert!(err.contains("does not match its checksum"), "{err}");
    // The untouched original starts with all its VMs.
    c.restart(0)?;
    kvmesh_tests::wait_for("VMs after restart", Duration::from_secs(20), || {
        (c.vm_names(0).ok()?.len() == 15).then_some(())
    })?;
    Ok(())
}

#[test]
fn an_unreachable_libvirt_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_refused(&[
        "--name",
        "x",
        "--data-dir",
        dir.path().join("x").to_str().unwrap(),
        "--libvirt-uri",
        "qemu+tcp://127.0.0.1:1/system",
    ]);
    assert!(err.contains("cannot connect to libvirt at qemu+tcp://127.0.0.1:1/system"), "{err}");
    assert!(err.contains("Start libvirtd") && err.contains("test:///default"), "{err}");
}
