//! Cold moves that copy local disks: a stopped VM whose disks are on a
//! host's local storage moves to another host with them.
//!
//! The leader records the move as a migration (`copy_storage`, the VM
//! stopped); start, stop, delete, snapshots and disk changes wait for it.
//! The target pulls each local volume from the source in pieces
//! (`ReadVolume`, served only while the record names the move and the
//! domain is not running; callers are not authenticated before issue 15's
//! TLS), checks the file kept its identity from the first piece to the
//! last, writes it beside its final name and renames it over that name
//! once complete, then records the finish: the VM is placed on the target
//! and its volume records name it; the source's files go to the trash. Any
//! failure aborts: the VM stays where it was, the target's copies are
//! trashed. The files are copied as they are (qcow2 with its base image, if
//! any, on shared storage at the same path on every host).
//!
//! A UEFI VM's variables (`<domain>_VARS.fd`, beside its boot disk) come
//! along when that disk is local: they are not a volume of the cluster, but
//! without them the guest would boot on the target with OVMF's defaults and
//! lose its boot entries. (A live move needs no copy: QEMU writes the
//! migrated flash back to the target's file once the guest arrives.)
//!
//! A pull starts only on a replica that has caught up (`Standing::Current`)
//! and is remembered until the replica shows the move's outcome, so a
//! finished copy is never pulled again over the file the VM now uses.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_proto as pb;
use kvmesh_raft::model::{domain_name, parse_vm_id, vm_id_hex, ClusterState, Desired, Migration};
use tracing::{info, warn};

use crate::ctx::NodeCtx;
use crate::error::{Error, Result};
use crate::hypervisor::blocking;
use crate::storage::volumes;

/// `ReadVolume`'s index for the VM's UEFI variables, not a disk.
pub const UEFI_VARS: u32 = u32::MAX;

/// The most one `ReadVolume` answer carries (below tonic's 4 MiB message limit).
const CHUNK: u64 = 2 << 20;

/// The cold copies `node` is the target of: (VM id, migration epoch).
pub fn incoming(state: &ClusterState, node: u64) -> Vec<(u64, u64)> {
    state
        .vms
        .values()
        .filter(|v| v.desired == Desired::Stopped)
        .filter_map(|v| v.migration.filter(|m| m.target == node && m.copy_storage).map(|m| (v.id, m.epoch)))
        .collect()
}

/// The record of a cold copy of `vm_id` at `epoch`, if it still runs.
fn current(ctx: &NodeCtx, vm_id: u64, epoch: u64) -> Option<Migration> {
    ctx.read(|d| {
        let vm = d.state.vms.get(&vm_id).filter(|v| v.desired == Desired::Stopped)?;
        vm.migration.filter(|m| m.epoch == epoch && m.copy_storage)
    })
}

/// The source's side: a piece of a local volume, for the record's target.
pub async fn read_volume(ctx: &Arc<NodeCtx>, req: pb::ReadVolumeRequest) -> Result<pb::VolumeChunk> {
    let vm_id = parse_vm_id(&req.vm_id).ok_or_else(|| Error::InvalidArgument(format!("bad VM id {:?}", req.vm_id)))?;
    current(ctx, vm_id, req.epoch).filter(|m| m.source == ctx.id).ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "no cold move of VM {} at epoch {} leaves {}",
            req.vm_id, req.epoch, ctx.name
        ))
    })?;
    // Never a disk a running guest writes to (a start waits for the move).
    let domain = domain_name(vm_id);
    let live =
        blocking(&ctx.hypervisor, move |hv| Ok(hv.list()?.iter().any(|d| d.name == domain && d.state.is_live())))
            .await?;
    if live {
        return Err(Error::FailedPrecondition(format!(
            "VM {} runs on {}; its disks are not copied",
            req.vm_id, ctx.name
        )));
    }
    let path = match req.index {
        UEFI_VARS => match local_uefi_vars(ctx, vm_id)? {
            Some(vars) if vars.exists() => vars.to_string_lossy().into_owned(),
            // Never started (OVMF makes them at the first start): nothing to copy.
            _ => return Ok(pb::VolumeChunk { data: Vec::new(), file_bytes: 0, identity: "none".into() }),
        },
        index => volumes::local_files(ctx, vm_id)?
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, p)| p.to_string_lossy().into_owned())
            .ok_or_else(|| Error::NotFound(format!("VM {} has no disk {index} on local storage", req.vm_id)))?,
    };
    let offset = req.offset;
    tokio::task::spawn_blocking(move || -> Result<pb::VolumeChunk> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(&path).map_err(|e| Error::Hypervisor(format!("open {path}: {e}")))?;
        let meta = file.metadata().map_err(|e| Error::Hypervisor(format!("stat {path}: {e}")))?;
        let file_bytes = meta.len();
        let identity = format!("{}:{}.{}:{}", meta.ino(), meta.ctime(), meta.ctime_nsec(), file_bytes);
        let want = CHUNK.min(file_bytes.saturating_sub(offset)) as usize;
        let mut data = vec![0u8; want];
        file.read_exact_at(&mut data, offset).map_err(|e| Error::Hypervisor(format!("read {path}: {e}")))?;
        Ok(pb::VolumeChunk { data, file_bytes, identity })
    })
    .await
    .map_err(|e| Error::Hypervisor(format!("read task failed: {e}")))?
}

/// Starts pulling a cold copy's volumes to this host, unless that copy is
/// already running in this process.
pub fn start(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64) {
    if !super::migrate::claim(ctx, vm_id, epoch) {
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = pull(&ctx, vm_id, epoch).await;
        match &outcome {
            Ok(bytes) => {
                info!(vm = %vm_id_hex(vm_id), bytes, took_ms = started.elapsed().as_millis() as u64, "copied a stopped VM's local disks here")
            }
            Err(e) => {
                warn!(vm = %vm_id_hex(vm_id), error = %e, "copying a stopped VM's local disks failed; it stays where it was")
            }
        }
        super::migrate::settle(&ctx, vm_id, epoch, outcome.map(|_| None)).await;
        // Remembered until this replica shows the outcome: pulling again
        // after a finish would replace the file the VM now uses.
        while current(&ctx, vm_id, epoch).is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ctx.migrating.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm_id);
    });
}

/// Copies every local volume of the VM from its source; the bytes copied.
async fn pull(ctx: &Arc<NodeCtx>, vm_id: u64, epoch: u64) -> Result<u64> {
    let m = current(ctx, vm_id, epoch).ok_or_else(|| Error::FailedPrecondition("the move was aborted".into()))?;
    let address = ctx
        .read(|d| d.state.nodes.get(&m.source).map(|n| n.address.clone()))
        .ok_or_else(|| Error::FailedPrecondition("the source host is gone".into()))?;
    let mut client = pb::host_client::HostClient::new(ctx.channel(&address)?);
    let mut copied = 0;
    for (index, path) in volumes::copy_paths(ctx, vm_id).await? {
        let partial = PathBuf::from(format!("{}.part", path.display()));
        let result = pull_one(ctx, &mut client, &address, (vm_id, epoch, index), &partial).await;
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        let (from, to, shown) = (partial.clone(), path.clone(), path.display().to_string());
        let rename = || async move {
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::rename(&from, &to)?;
                // The rename itself survives a crash only once the directory is.
                std::fs::File::open(to.parent().unwrap_or(std::path::Path::new("/")))?.sync_all()
            })
            .await
            .map_err(|e| Error::Hypervisor(format!("rename task failed: {e}")))?
            .map_err(|e| Error::Hypervisor(format!("rename to {shown}: {e}")))
        };
        if let Err(e) = volumes::when_trash_cleared(ctx, vm_id, rename).await {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        info!(disk = index, bytes, path = %path.display(), "copied a local disk");
        copied += bytes;
    }
    copied += pull_uefi_vars(ctx, &mut client, &address, (vm_id, epoch)).await?;
    Ok(copied)
}

/// Where a UEFI VM's variables are on this host when its boot disk is on
/// local storage (they follow a shared disk by themselves); `None` for a
/// BIOS VM or a boot disk elsewhere.
fn local_uefi_vars(ctx: &NodeCtx, vm_id: u64) -> Result<Option<PathBuf>> {
    let uefi = ctx.read(|d| {
        d.state.vms.get(&vm_id).is_some_and(|v| v.spec.hardware.firmware == kvmesh_raft::hardware::Firmware::Uefi)
    });
    if !uefi {
        return Ok(None);
    }
    let boot = volumes::local_files(ctx, vm_id)?.into_iter().find(|(index, _)| *index == 0);
    Ok(boot.map(|(_, disk)| {
        let disk = disk.to_string_lossy().into_owned();
        crate::hypervisor::guest::nvram_path(Some(&disk), std::path::Path::new("/"), &domain_name(vm_id))
    }))
}

/// Copies the VM's UEFI variables next to the boot disk's copy here (when
/// it has them and that disk is local); the bytes copied.
async fn pull_uefi_vars(
    ctx: &Arc<NodeCtx>,
    client: &mut pb::host_client::HostClient<tonic::transport::Channel>,
    address: &str,
    (vm_id, epoch): (u64, u64),
) -> Result<u64> {
    let Some(vars) = local_uefi_vars(ctx, vm_id)? else { return Ok(0) };
    let partial = PathBuf::from(format!("{}.part", vars.display()));
    let bytes = match pull_one(ctx, client, address, (vm_id, epoch, UEFI_VARS), &partial).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if bytes == 0 {
        // The source never started it: OVMF's template will do, as there.
        let _ = std::fs::remove_file(&partial);
        return Ok(0);
    }
    let (from, to) = (partial.clone(), vars.clone());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::rename(&from, &to)?;
        std::fs::File::open(to.parent().unwrap_or(std::path::Path::new("/")))?.sync_all()
    })
    .await
    .map_err(|e| Error::Hypervisor(format!("rename task failed: {e}")))?
    .map_err(|e| Error::Hypervisor(format!("rename to {}: {e}", vars.display())))?;
    info!(bytes, path = %vars.display(), "copied the VM's UEFI variables");
    Ok(bytes)
}

/// Pulls one volume into `partial`, synced; its length.
async fn pull_one(
    ctx: &Arc<NodeCtx>,
    client: &mut pb::host_client::HostClient<tonic::transport::Channel>,
    address: &str,
    (vm_id, epoch, index): (u64, u64, u32),
    partial: &std::path::Path,
) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)
        .map_err(|e| Error::Hypervisor(format!("create {}: {e}", partial.display())))?;
    let file = Arc::new(file);
    let (mut offset, mut identity) = (0u64, None::<String>);
    loop {
        if current(ctx, vm_id, epoch).is_none() {
            return Err(Error::FailedPrecondition("the move was aborted".into()));
        }
        let mut request = tonic::Request::new(pb::ReadVolumeRequest { vm_id: vm_id_hex(vm_id), epoch, index, offset });
        request.set_timeout(Duration::from_secs(30));
        let chunk = client
            .read_volume(request)
            .await
            .map_err(|s| Error::Unavailable(format!("reading disk {index} from {address}: {}", s.message())))?
            .into_inner();
        if identity.get_or_insert_with(|| chunk.identity.clone()) != &chunk.identity {
            return Err(Error::FailedPrecondition(format!("disk {index} changed on the source while it was copied")));
        }
        if chunk.data.is_empty() {
            if offset != chunk.file_bytes {
                return Err(Error::Hypervisor(format!("disk {index} ended at {offset} of {} bytes", chunk.file_bytes)));
            }
            break;
        }
        let (f, at, len) = (file.clone(), offset, chunk.data.len() as u64);
        tokio::task::spawn_blocking(move || f.write_all_at(&chunk.data, at))
            .await
            .map_err(|e| Error::Hypervisor(format!("write task failed: {e}")))?
            .map_err(|e| Error::Hypervisor(format!("write {}: {e}", partial.display())))?;
        offset += len;
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(|e| Error::Hypervisor(format!("sync task failed: {e}")))?
        .map_err(|e| Error::Hypervisor(format!("sync {}: {e}", partial.display())))?;
    Ok(offset)
}
