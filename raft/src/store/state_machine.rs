//! The state machine on sled: applies committed entries to [`ClusterState`],
//! persists exactly the keys they touched, and builds and installs snapshots.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::snapshot_file::SnapshotFile;
use super::{be, from_be, io_err, Syncer};
use crate::codec;
use crate::command::Response;
use crate::error::Result;
use crate::model::{ClusterState, Event, Key, Meta, Node, Vm};
use crate::requests::{Answer, RequestId};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const META: &[u8] = b"m";
const APPLIED: &[u8] = b"a";
const MEMBERSHIP: &[u8] = b"M";
const NODE: u8 = b'n';
const VM: u8 = b'v';
const EVENT: u8 = b'e';
const REQUEST: u8 = b'r';
const STORAGE: u8 = b's';
const IMAGE: u8 = b'i';

/// What the state machine holds in memory. Readers (the API) take the read
/// lock briefly and never across an await.
#[derive(Clone, Debug, Default)]
pub struct SmData {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

pub type SharedState = Arc<RwLock<SmData>>;

/// The serialized form of a snapshot.
#[derive(Deserialize)]
struct SnapshotBody {
    state: ClusterState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// [`SnapshotBody`] by reference: the same encoding, written straight from
/// the live state without copying it first.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    state: &'a ClusterState,
    last_applied: Option<LogId>,
    membership: &'a StoredMembership,
}

#[derive(Clone)]
pub struct StateMachine {
    syncer: Syncer,
    sm: sled::Tree,
    snapshots: Arc<SnapshotFile>,
    data: SharedState,
}

fn prefixed(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&be(id));
    k
}

/// A request id as a key: prefix, origin, seq (big-endian, so they sort).
fn request_key(id: RequestId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = REQUEST;
    k[1..9].copy_from_slice(&be(id.origin));
    k[9..].copy_from_slice(&be(id.seq));
    k
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

impl StateMachine {
    /// Loads the persisted state, or the stored snapshot if it is newer
    /// (an interrupted snapshot install).
    pub(crate) fn load(db: &sled::Db, syncer: Syncer, snapshots: SnapshotFile) -> Result<Self> {
        let sm = db.open_tree("sm")?;
        let mut data = read_tree(&sm)?;
        if let Some((meta, bytes)) = snapshots.read()? {
            if meta.last_log_id > data.last_applied {
                data = decode_snapshot(&bytes)?;
                write_all(&sm, &data)?;
                db.flush()?;
            }
        }
        Ok(StateMachine { syncer, sm, snapshots: Arc::new(snapshots), data: Arc::new(RwLock::new(data)) })
    }

    /// The in-memory state, shared with the API for local reads.
    pub fn shared(&self) -> SharedState {
        self.data.clone()
    }

    fn persist_dirty(&self, data: &mut SmData) -> std::result::Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in data.state.take_dirty() {
            match key {
                Key::Meta => batch.insert(META, codec::encode("meta", &data.state.meta).map_err(write_err)?),
                Key::Node(id) => match data.state.nodes.get(&id) {
                    Some(n) => batch.insert(&prefixed(NODE, id), codec::encode("node", n).map_err(write_err)?),
                    None => batch.remove(&prefixed(NODE, id)),
                },
                Key::Vm(id) => match data.state.vms.get(&id) {
                    Some(v) => batch.insert(&prefixed(VM, id), codec::encode("vm", v).map_err(write_err)?),
                    None => batch.remove(&prefixed(VM, id)),
                },
                Key::Event(seq) => match data.state.events.iter().find(|e| e.seq == seq) {
                    Some(e) => batch.insert(&prefixed(EVENT, seq), codec::encode("event", e).map_err(write_err)?),
                    None => batch.remove(&prefixed(EVENT, seq)),
                },
                Key::Request(id) => match data.state.requests.get(&id) {
                    Some(a) => batch.insert(&request_key(id), codec::encode("answer", a).map_err(write_err)?),
                    None => batch.remove(&request_key(id)),
                },
                Key::Storage(id) => match data.state.storage.get(&id) {
                    Some(d) => batch.insert(&prefixed(STORAGE, id), codec::encode("storage", d).map_err(write_err)?),
                    None => batch.remove(&prefixed(STORAGE, id)),
                },
                Key::Image(id) => match data.state.images.get(&id) {
                    Some(i) => batch.insert(&prefixed(IMAGE, id), codec::encode("image", i).map_err(write_err)?),
                    None => batch.remove(&prefixed(IMAGE, id)),
                },
            }
        }
        batch.insert(APPLIED, codec::encode("applied", &data.last_applied).map_err(write_err)?);
        batch.insert(MEMBERSHIP, codec::encode("membership", &data.membership).map_err(write_err)?);
        self.sm.apply_batch(batch).map_err(write_err)
    }
}

fn read_tree(sm: &sled::Tree) -> Result<SmData> {
    let mut meta = Meta::default();
    let mut last_applied = None;
    let mut membership = StoredMembership::default();
    let (mut nodes, mut vms, mut events) = (Vec::<Node>::new(), Vec::<Vm>::new(), Vec::<Event>::new());
    let mut answers = Vec::<(RequestId, Answer)>::new();
    let (mut storage, mut images) = (Vec::new(), Vec::new());
    for item in sm.iter() {
        let (key, value) = item?;
        match key.as_ref() {
            META => meta = codec::decode("meta", &value)?,
            APPLIED => last_applied = codec::decode("applied", &value)?,
            MEMBERSHIP => membership = codec::decode("membership", &value)?,
            k if k.len() == 9 && k[0] == NODE => nodes.push(codec::decode("node", &value)?),
            k if k.len() == 9 && k[0] == VM => vms.push(codec::decode("vm", &value)?),
            k if k.len() == 9 && k[0] == EVENT => events.push(codec::decode("event", &value)?),
            k if k.len() == 9 && k[0] == STORAGE => storage.push(codec::decode("storage", &value)?),
            k if k.len() == 9 && k[0] == IMAGE => images.push(codec::decode("image", &value)?),
            k if k.len() == 17 && k[0] == REQUEST => {
                let id = RequestId { origin: from_be(&k[1..9]), seq: from_be(&k[9..]) };
                answers.push((id, codec::decode("answer", &value)?));
            }
            k => return Err(crate::Error::Decode { what: "state machine key", detail: format!("unknown key {k:?}") }),
        }
    }
    events.sort_by_key(|e| e.seq);
    Ok(SmData {
        state: ClusterState::from_parts(meta, nodes, vms, events, answers, storage, images),
        last_applied,
        membership,
    })
}

fn write_all(sm: &sled::Tree, data: &SmData) -> Result<()> {
    sm.clear()?;
    let mut batch = sled::Batch::default();
    batch.insert(META, codec::encode("meta", &data.state.meta)?);
    batch.insert(APPLIED, codec::encode("applied", &data.last_applied)?);
    batch.insert(MEMBERSHIP, codec::encode("membership", &data.membership)?);
    for n in data.state.nodes.values() {
        batch.insert(&prefixed(NODE, n.id), codec::encode("node", n)?);
    }
    for v in data.state.vms.values() {
        batch.insert(&prefixed(VM, v.id), codec::encode("vm", v)?);
    }
    for e in &data.state.events {
        batch.insert(&prefixed(EVENT, e.seq), codec::encode("event", e)?);
    }
    for (id, a) in data.state.requests.iter() {
        batch.insert(&request_key(*id), codec::encode("answer", a)?);
    }
    for d in data.state.storage.values() {
        batch.insert(&prefixed(STORAGE, d.id), codec::encode("storage", d)?);
    }
    for i in data.state.images.values() {
        batch.insert(&prefixed(IMAGE, i.id), codec::encode("image", i)?);
    }
    sm.apply_batch(batch)?;
    Ok(())
}

fn decode_snapshot(bytes: &[u8]) -> Result<SmData> {
    let body: SnapshotBody = codec::decode("snapshot", bytes)?;
    let mut state = body.state;
    state.reindex();
    Ok(SmData { state, last_applied: body.last_applied, membership: body.membership })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> std::result::Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.data.read().map_err(read_err)?;
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> std::result::Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        {
            let mut data = self.data.write().map_err(write_err)?;
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let response = match &entry.payload {
                    EntryPayload::Blank => Response::Done,
                    EntryPayload::Normal(cmd) => data.state.apply(cmd),
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Response::Done
                    }
                };
                responses.push(response);
            }
            self.persist_dirty(&mut data)?;
        }
        // No fsync here: the log is the durable record, and every entry
        // applied was already durable on a majority. After a crash the state
        // may be behind the log (openraft applies the rest again) or, if
        // sled lost log writes it kept for the state, ahead of it (openraft
        // purges the hole at start-up). Snapshots are flushed.
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> std::result::Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let snap_err = |e: crate::Error| io_err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e);
        let new_data = decode_snapshot(&bytes).map_err(snap_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "installing snapshot");
        // Keep the snapshot first: if we crash while rewriting the state tree,
        // `load` restores from it.
        self.save_snapshot(meta.clone(), bytes).await.map_err(snap_err)?;
        {
            let mut data = self.data.write().map_err(write_err)?;
            write_all(&self.sm, &new_data).map_err(snap_err)?;
            let mut new_data = new_data;
            new_data.state.replaces(&data.state);
            *data = new_data;
        }
        self.syncer.sync().await.map_err(write_err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .snapshots
            .read()
            .map_err(read_err)?
            .map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

impl StateMachine {
    /// Stores the snapshot durably (on the blocking pool); hands the bytes back.
    async fn save_snapshot(&self, meta: SnapshotMeta, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let file = self.snapshots.clone();
        tokio::task::spawn_blocking(move || file.write(&meta, &bytes).map(|_| bytes))
            .await
            .map_err(|e| crate::Error::Io { path: "snapshot".into(), source: std::io::Error::other(e) })?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        // Encoded under the read lock, straight from the state: cheaper than
        // copying the state first (apply waits for either).
        let (bytes, last_applied, membership) = {
            let data = self.data.read().map_err(read_err)?;
            let body =
                SnapshotBodyRef { state: &data.state, last_applied: data.last_applied, membership: &data.membership };
            (codec::encode("snapshot", &body).map_err(read_err)?, data.last_applied, data.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, bytes.len()),
            None => format!("empty-{}", bytes.len()),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let bytes = self.save_snapshot(meta.clone(), bytes).await.map_err(write_err)?;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), elapsed_ms, "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}
