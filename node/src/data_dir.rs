//! The node's data dir: its identity file and its Raft store.
//!
//! The identity (`kvmesh-node.json`) is written at first start. It holds the
//! node id, the name it registered under, and, once known, the id of the
//! cluster it belongs to, so a wrong or foreign directory is refused with a
//! message instead of silently starting a second identity.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const IDENTITY: &str = "kvmesh-node.json";
const IDENTITY_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub format: u32,
    pub node_id: u64,
    pub name: String,
    pub cluster_id: Option<String>,
}

pub struct DataDir {
    pub path: PathBuf,
    pub identity: Identity,
}

impl DataDir {
    /// Opens the data dir, creating it (and a new identity) on first start.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        let err = |reason: String| Error::DataDir { path: path.to_path_buf(), reason };
        std::fs::create_dir_all(path).map_err(|e| err(format!("cannot create it: {e}")))?;
        // The Raft store under it holds the cluster CA's key and the nodes'
        // keys live in tls/: only the daemon's user may enter, also for a
        // dir made by an older release or by hand.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("cannot make it private (0700): {e}")))?;
        let id_path = path.join(IDENTITY);
        let identity = if id_path.exists() {
            let text = std::fs::read_to_string(&id_path).map_err(|e| err(format!("cannot read {IDENTITY}: {e}")))?;
            let identity: Identity = serde_json::from_str(&text)
                .map_err(|e| err(format!("{IDENTITY} is damaged ({e}); restore it from a backup")))?;
            if identity.format > IDENTITY_FORMAT {
                return Err(err(format!("it was written by a newer kvmesh (format {}); upgrade", identity.format)));
            }
            if identity.name != name && identity.cluster_id.is_none() && !has_raft_history(path) {
                // Never part of a cluster (a refused join, say): the next
                // attempt may pick another name; the node id stays.
                let renamed = Identity { name: name.to_string(), ..identity };
                write_identity(path, &renamed)?;
                renamed
            } else if identity.name != name {
                return Err(err(format!(
                    "it belongs to node {:?}, not {name:?}; start with --name {} or use another --data-dir",
                    identity.name, identity.name
                )));
            } else {
                identity
            }
        } else {
            let foreign = std::fs::read_dir(path)
                .map_err(|e| err(format!("cannot list it: {e}")))?
                .filter_map(|e| e.ok())
                // A dedicated filesystem mounted here comes with lost+found.
                .any(|e| e.file_name() != "raft" && e.file_name() != "lost+found");
            if foreign || path.join("raft").exists() {
                return Err(err(format!(
                    "it is not empty and has no {IDENTITY}, so it is not a kvmesh data dir; use an empty or new directory"
                )));
            }
            let identity =
                Identity { format: IDENTITY_FORMAT, node_id: new_node_id(), name: name.to_string(), cluster_id: None };
            write_identity(path, &identity)?;
            identity
        };
        Ok(DataDir { path: path.to_path_buf(), identity })
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.path.join("raft")
    }

    /// Records the cluster this node belongs to (after init or join).
    pub fn set_cluster_id(&mut self, cluster_id: &str) -> Result<()> {
        if self.identity.cluster_id.as_deref() == Some(cluster_id) {
            return Ok(());
        }
        self.identity.cluster_id = Some(cluster_id.to_string());
        write_identity(&self.path, &self.identity)
    }
}

fn write_identity(dir: &Path, identity: &Identity) -> Result<()> {
    let err = |reason: String| Error::DataDir { path: dir.to_path_buf(), reason };
    let tmp = dir.join(format!("{IDENTITY}.tmp"));
    let text = serde_json::to_string_pretty(identity).map_err(|e| err(e.to_string()))?;
    // Write, fsync, rename: a crash leaves the old file or the new one.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(format!("cannot write {IDENTITY}: {e}")))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| err(format!("cannot write {IDENTITY}: {e}")))?;
    }
    std::fs::rename(&tmp, dir.join(IDENTITY)).map_err(|e| err(format!("cannot write {IDENTITY}: {e}")))
}

/// Whether the Raft store under `dir` holds anything (log segments or a
/// snapshot): then the node took part in a cluster, even if its identity
/// file missed the cluster id.
fn has_raft_history(dir: &Path) -> bool {
    let raft = dir.join("raft");
    let segments = std::fs::read_dir(raft.join("wal"))
        .map(|entries| entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".seg")))
        .unwrap_or(false);
    segments || raft.join("snapshot.bin").exists()
}

/// A random non-zero id. Node ids only need to be unique within a cluster.
fn new_node_id() -> u64 {
    loop {
        let id: u64 = rand::random::<u64>() >> 1;
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_guards_the_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut d = DataDir::open(&dir, "n1").unwrap();
        let id = d.identity.node_id;
        d.set_cluster_id("c-1").unwrap();
        let again = DataDir::open(&dir, "n1").unwrap();
        assert_eq!(again.identity.node_id, id);
        assert_eq!(again.identity.cluster_id.as_deref(), Some("c-1"));
        // Wrong name for this dir.
        assert!(DataDir::open(&dir, "n2").is_err());
        // Never in a cluster: a new name is taken, the id kept.
        let fresh = tmp.path().join("fresh");
        let first = DataDir::open(&fresh, "a").unwrap().identity.node_id;
        let renamed = DataDir::open(&fresh, "b").unwrap();
        assert_eq!((renamed.identity.name.as_str(), renamed.identity.node_id), ("b", first));
        // With a Raft history it is refused even without a cluster id.
        std::fs::create_dir_all(fresh.join("raft/wal")).unwrap();
        std::fs::write(fresh.join("raft/wal/00000000000000000001.seg"), b"x").unwrap();
        assert!(DataDir::open(&fresh, "c").is_err());
        // A foreign, non-empty directory.
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("photo.jpg"), b"x").unwrap();
        let e = DataDir::open(&foreign, "n1").err().unwrap().to_string();
        assert!(e.contains("not a kvmesh data dir"), "{e}");
        // A filesystem of its own mounted as the data dir: only lost+found.
        let mounted = tmp.path().join("mounted");
        std::fs::create_dir_all(mounted.join("lost+found")).unwrap();
        DataDir::open(&mounted, "n1").unwrap();
        // A damaged identity.
        std::fs::write(dir.join(IDENTITY), b"{nope").unwrap();
        assert!(DataDir::open(&dir, "n1").err().unwrap().to_string().contains("damaged"));
    }
}
