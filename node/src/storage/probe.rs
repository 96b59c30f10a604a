//! How each storage domain looks from this host, reported in heartbeats.
//!
//! Every couple of seconds the host activates the pool of each domain it
//! has and, for a shared kind, proves the sharing: it writes a marker file
//! `<dir>/.kvmesh/<domain id>/<node id>` and lists the markers it sees. A
//! directory that really is shared shows other hosts' markers; a host that
//! sees none of the other hosts that have the domain is `not-shared` there
//! (a local disk where an NFS mount was meant to be) and gets no VM that
//! needs the domain. A domain only one host has cannot be checked and
//! counts as shared. (With two hosts, one broken mount makes both
//! `not-shared`: neither can tell which side is wrong.) The same loop
//! empties the trash of the domains active here.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvmesh_proto as pb;
use kvmesh_raft::storage::StorageDomain;
use kvmesh_raft::NodeId;
use tracing::{debug, warn};

use crate::ctx::NodeCtx;
use crate::hypervisor::{blocking, Hypervisor, PoolSpec};

/// How often the host looks at its storage.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

pub const ACTIVE: &str = "active";
pub const MISSING: &str = "missing";
pub const NOT_SHARED: &str = "not-shared";
pub const ERROR: &str = "error";

/// The sharing verdict: `others` are the other members that have the
/// domain, `seen` the node ids whose markers this host sees.
pub fn proven_shared(me: NodeId, others: &BTreeSet<NodeId>, seen: &BTreeSet<NodeId>) -> bool {
    others.iter().all(|o| *o == me) || seen.iter().any(|s| *s != me && others.contains(s))
}

/// Writes this host's marker and reads everyone's.
fn markers(dir: &Path, domain_id: u64, me: NodeId, my_name: &str) -> std::io::Result<BTreeSet<NodeId>> {
    let markers = dir.join(".kvmesh").join(format!("{domain_id:016x}"));
    std::fs::create_dir_all(&markers)?;
    let mine = markers.join(me.to_string());
    if !mine.exists() {
        std::fs::write(&mine, format!("{my_name}\n"))?;
    }
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&markers)? {
        if let Some(id) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            seen.insert(id);
        }
    }
    Ok(seen)
}

/// An import or template still being written touches its file all the
/// time; one untouched for this long was cut off (its host died).
const PARTIAL_ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// Deletes abandoned `.import-*.part` and `.template-*.part` files.
fn sweep_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let partial = (name.starts_with(".import-") || name.starts_with(".template-")) && name.ends_with(".part");
        let idle = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        let abandoned = partial && idle.is_some_and(|idle| idle > PARTIAL_ABANDONED_AFTER);
        if abandoned && std::fs::remove_file(entry.path()).is_ok() {
            debug!(file = %entry.path().display(), "deleted an abandoned partial import");
        }
    }
}

/// One domain's status on this host.
fn probe_one(
    hv: &dyn Hypervisor,
    domain: &StorageDomain,
    pool: &PoolSpec,
    me: (NodeId, &str),
    others: &BTreeSet<NodeId>,
) -> pb::HostStorageStatus {
    let status = |state: &str, message: String, free: u64, total: u64| pb::HostStorageStatus {
        node: me.1.to_string(),
        domain: domain.name.clone(),
        state: state.into(),
        message,
        free_bytes: free,
        total_bytes: total,
    };
    // A directory kind needs the directory; an NFS pool makes its mount point.
    let needs_dir = !matches!(domain.kind, kvmesh_raft::storage::StorageKind::Nfs { .. })
        && !matches!(domain.kind, kvmesh_raft::storage::StorageKind::Local { path: None });
    if needs_dir && !pool.path().is_dir() {
        let why = format!("{} is not a directory on this host", pool.path().display());
        return status(MISSING, why, 0, 0);
    }
    let state = match hv.activate_pool(pool) {
        Ok(state) => state,
        Err(e) => return status(ERROR, e.to_string(), 0, 0),
    };
    sweep_partials(&state.path);
    if pool.shared {
        match markers(&state.path, domain.id, me.0, me.1) {
            Ok(seen) if proven_shared(me.0, others, &seen) => {}
            Ok(_) => {
                let why = format!(
                    "{} shows none of the markers the other hosts wrote there, so it is not the same storage as theirs",
                    state.path.display()
                );
                return status(NOT_SHARED, why, state.free_bytes, state.total_bytes);
            }
            Err(e) => return status(ERROR, format!("marker file in {}: {e}", state.path.display()), 0, 0),
        }
    }
    status(ACTIVE, String::new(), state.free_bytes, state.total_bytes)
}

/// Keeps `ctx.storage_status` up to date; runs for the node's life. It
/// looks every [`PROBE_EVERY`], and at once when the domains or the hosts
/// change (a domain just added is reported in the next heartbeat) or the
/// libvirt connection was opened again.
pub async fn run(ctx: Arc<NodeCtx>) {
    let mut metrics = ctx.raft.metrics();
    let config = |ctx: &NodeCtx| {
        ctx.read(|d| {
            let domains: Vec<(u64, Vec<String>)> =
                d.state.storage.values().map(|s| (s.id, s.nodes.iter().cloned().collect())).collect();
            (domains, d.state.nodes.keys().copied().collect::<Vec<_>>())
        })
    };
    loop {
        let seen = config(&ctx);
        let connection = ctx.hypervisor.reconnects();
        refresh(&ctx).await;
        // Here rather than in the agent's passes: a hung mount stalls only
        // this loop, never the starts and stops of the host's guests.
        super::volumes::empty_trash(&ctx).await;
        let next = tokio::time::sleep(PROBE_EVERY);
        tokio::pin!(next);
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if config(&ctx) != seen {
                        break;
                    }
                }
                _ = &mut next => break,
                // libvirtd came back: its storage is usable again now, not
                // at the next round.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if ctx.hypervisor.reconnects() != connection {
                        break;
                    }
                }
            }
        }
    }
}

/// Looks at every domain this host has once, now (also when a request
/// needs a domain added moments ago).
pub async fn refresh(ctx: &Arc<NodeCtx>) {
    {
        let work = ctx.read(|d| {
            let me = d.state.nodes.get(&ctx.id)?;
            let domains: Vec<(StorageDomain, BTreeSet<NodeId>)> = d
                .state
                .storage
                .values()
                .filter(|s| s.on_node(&me.name))
                .map(|s| {
                    let others = d.state.nodes.values().filter(|n| s.on_node(&n.name)).map(|n| n.id).collect();
                    (s.clone(), others)
                })
                .collect();
            Some((me.name.clone(), domains))
        });
        if let Some((name, domains)) = work {
            let (id, data_dir) = (ctx.id, ctx.config.data_dir.clone());
            let probed = blocking(&ctx.hypervisor, move |hv| {
                Ok(domains
                    .iter()
                    .map(|(d, others)| probe_one(hv, d, &PoolSpec::of(d, id, &data_dir), (id, &name), others))
                    .collect::<Vec<_>>())
            })
            .await;
            match probed {
                Ok(statuses) => {
                    for s in statuses.iter().filter(|s| s.state != ACTIVE) {
                        debug!(storage = %s.domain, state = %s.state, message = %s.message, "storage not usable here");
                    }
                    *ctx.storage_status.lock().unwrap_or_else(|p| p.into_inner()) =
                        (Some(std::time::Instant::now()), statuses);
                }
                Err(e) => warn!(error = %e, "storage probe failed"),
            }
        }
    }
}

/// A probe older than this is stuck (a hung mount): what it last said no
/// longer counts.
const STALE_AFTER: Duration = Duration::from_secs(10);

/// The statuses to report now: the last probe's, or, if the probe has not
/// finished for [`STALE_AFTER`], every domain as an error.
pub fn current(ctx: &NodeCtx) -> Vec<pb::HostStorageStatus> {
    let (at, statuses) = ctx.storage_status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let age = at.map(|t| t.elapsed());
    match age {
        Some(age) if age > STALE_AFTER => statuses
            .into_iter()
            .map(|s| pb::HostStorageStatus {
                state: ERROR.into(),
                message: format!("the storage probe has not finished for {}s (a hung mount?)", age.as_secs()),
                ..s
            })
            .collect(),
        _ => statuses,
    }
}

/// Whether this host last found the domain active.
pub fn active_here(ctx: &NodeCtx, domain: &str) -> bool {
    current(ctx).iter().any(|s| s.domain == domain && s.state == ACTIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_host_that_sees_another_hosts_marker_is_shared() {
        assert!(proven_shared(1, &set(&[1, 2, 3]), &set(&[1, 2])));
        // Only its own marker, while others have the domain: not shared.
        assert!(!proven_shared(3, &set(&[1, 2, 3]), &set(&[3])));
        // Markers of hosts that do not have the domain (or left) prove nothing.
        assert!(!proven_shared(3, &set(&[1, 3]), &set(&[3, 9])));
        // The only host with the domain cannot check, and counts as shared.
        assert!(proven_shared(1, &set(&[1]), &set(&[1])));
        assert!(proven_shared(1, &set(&[]), &set(&[])));
    }

    #[test]
    fn only_abandoned_partial_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".import-00ab.part");
        let fresh = dir.path().join(".import-00cd.part");
        let image = dir.path().join("image-00ef.qcow2");
        for f in [&old, &fresh, &image] {
            std::fs::write(f, b"x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
        std::fs::File::options().write(true).open(&image).unwrap().set_modified(long_ago).unwrap();
        sweep_partials(dir.path());
        assert!(!old.exists() && fresh.exists() && image.exists());
    }

    #[test]
    fn markers_are_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(markers(dir.path(), 0xab, 1, "h1").unwrap(), set(&[1]));
        assert_eq!(markers(dir.path(), 0xab, 2, "h2").unwrap(), set(&[1, 2]));
        // Another domain in the same directory keeps its own markers.
        assert_eq!(markers(dir.path(), 0xcd, 3, "h3").unwrap(), set(&[3]));
    }
}
