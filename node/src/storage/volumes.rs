//! A VM's volumes on the host that runs it: created once, recorded, and
//! opened ever after; and the trash of volumes whose owner is gone.
//!
//! Before every start the host walks the VM's disks. A disk whose volume is
//! not recorded yet gets one (a blank qcow2, or a thin clone of its image),
//! and the host records it through Raft before anything uses it. So an
//! unrecorded volume never held guest data, and a host that finds one left
//! over (created, then the VM moved before the record) may adopt it. A
//! recorded volume is only ever opened: if it is missing the start fails,
//! rather than boot the VM on an empty disk.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::model::ClusterState;
use kvmesh_raft::storage::{volume_name, Trashed};
use kvmesh_raft::NodeId;
use tracing::{info, warn};

use super::probe;
use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::hypervisor::xml::disk_target;
use crate::hypervisor::{blocking, Backing, PoolSpec};

/// One disk as the host prepares it.
#[derive(Clone, Debug)]
struct DiskPlan {
    index: u32,
    pool: PoolSpec,
    volume: String,
    size_bytes: u64,
    backing: Option<Backing>,
    /// The image it is a clone of.
    image: Option<String>,
    recorded: bool,
    /// On a domain local to each host (copied when the VM migrates).
    local: bool,
}

/// What a domain definition takes from storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// (index, volume path, size) in disk order (`vda` first).
    pub disks: Vec<(u32, String, u64)>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// The ISO in its CD-ROM drive.
    pub cdrom: Option<String>,
}

/// Fails (with QEMU's "Is another process using the image" message) when
/// another QEMU holds one of the VM's disks open: `qemu-img info` takes
/// the shared locks QEMU takes, so it is refused exactly while the disk's
/// lease is held. Checked before libvirt is asked to start, so a start that
/// cannot get its disks never shows up as a running domain, not even for
/// the moment QEMU needs to fail.
pub async fn leases_free(ctx: &NodeCtx, prepared: &Prepared) -> Result<()> {
    if !ctx.hypervisor.stores_files() {
        return Ok(());
    }
    let paths: Vec<String> = prepared.disks.iter().map(|(_, path, _)| path.clone()).collect();
    let check = tokio::task::spawn_blocking(move || {
        paths.iter().try_for_each(|p| super::disk_ops::qemu_img(&["info", "--output=json", p]))
    });
    match tokio::time::timeout(std::time::Duration::from_secs(10), check).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(Error::Hypervisor(format!("disk lease check failed: {e}"))),
        Err(_) => Err(Error::Hypervisor("checking the disks' leases took over 10 s (a hung mount?)".into())),
    }
}

/// The pool and file of an image.
fn image_file(
    state: &ClusterState,
    name: &str,
    node: NodeId,
    data_dir: &std::path::Path,
) -> Result<(PoolSpec, String)> {
    let image =
        state.image_by_name(name).ok_or_else(|| Error::FailedPrecondition(format!("image {name} no longer exists")))?;
    let domain = state.storage_by_name(&image.storage).ok_or_else(|| {
        Error::FailedPrecondition(format!("storage {} of image {name} no longer exists", image.storage))
    })?;
    Ok((PoolSpec::of(domain, node, data_dir), image.volume.clone()))
}

/// An image file: the pool it is in and its name there.
type ImageFile = (PoolSpec, String);

/// What a start needs from storage, read from the local replica.
struct VmPlan {
    epoch: u64,
    disks: Vec<DiskPlan>,
    kernel: Option<ImageFile>,
    initrd: Option<ImageFile>,
    cdrom: Option<ImageFile>,
}

/// The plan for a VM's disks and boot files, from the local replica.
fn plan(ctx: &NodeCtx, vm_id: u64) -> Result<VmPlan> {
    let data_dir = ctx.config.data_dir.clone();
    ctx.read(|d| {
        let vm = d.state.vms.get(&vm_id).ok_or_else(|| Error::NotFound(format!("VM {vm_id:016x} is gone")))?;
        let epoch = vm.placement.map(|p| p.epoch).unwrap_or(0);
        let mut disks = Vec::new();
        for disk in &vm.spec.disks {
            let domain = d.state.storage_by_name(&disk.storage).ok_or_else(|| {
                Error::FailedPrecondition(format!("storage {} of disk {} no longer exists", disk.storage, disk.index))
            })?;
            let pool = PoolSpec::of(domain, ctx.id, &data_dir);
            let backing = match &disk.image {
                Some(image) => {
                    let (image_pool, file) = image_file(&d.state, image, ctx.id, &data_dir)?;
                    let format = d.state.image_by_name(image).map(|i| i.format.clone()).unwrap_or_default();
                    Some(Backing { path: image_pool.path().join(file).to_string_lossy().into_owned(), format })
                }
                None => None,
            };
            disks.push(DiskPlan {
                index: disk.index,
                pool,
                volume: volume_name(vm_id, disk.index),
                size_bytes: disk.size_bytes,
                backing,
                image: disk.image.clone(),
                recorded: disk.volume.is_some(),
                local: !domain.kind.is_shared(),
            });
        }
        let boot =
            |name: &Option<String>| name.as_deref().map(|n| image_file(&d.state, n, ctx.id, &data_dir)).transpose();
        Ok(VmPlan {
            epoch,
            disks,
            kernel: boot(&vm.spec.kernel)?,
            initrd: boot(&vm.spec.initrd)?,
            cdrom: boot(&vm.spec.hardware.cdrom)?,
        })
    })
}

/// Creates and records the VM's missing volumes, then opens them all.
/// Offline (before a start) a volume smaller than its disk is grown here;
/// `live`, a running guest holds them, and the hypervisor grows them.
pub async fn prepare(ctx: &Arc<NodeCtx>, vm_id: u64, live: bool) -> Result<Prepared> {
    let VmPlan { epoch, disks, kernel, initrd, cdrom } = plan(ctx, vm_id)?;
    let files = [&kernel, &initrd, &cdrom];
    for pool in disks.iter().map(|d| &d.pool).chain(files.into_iter().flatten().map(|f| &f.0)) {
        if !probe::active_here(ctx, &pool.domain) {
            return Err(Error::FailedPrecondition(format!(
                "storage {} is not active on this host (see `kvmesh storage get {}`)",
                pool.domain, pool.domain
            )));
        }
    }
    // Images are files in their domain on every driver: check them before
    // anything is made from them.
    let images = disks
        .iter()
        .filter_map(|d| {
            Some((d.image.clone()?, std::path::PathBuf::from(&d.backing.as_ref()?.path), d.pool.domain.clone()))
        })
        .chain(
            files.into_iter().flatten().map(|(pool, file)| (file.clone(), pool.path().join(file), pool.domain.clone())),
        );
    for (image, path, storage) in images {
        if !path.is_file() {
            let name = ctx.read(|d| d.state.images.values().find(|i| i.volume == image).map(|i| i.name.clone()));
            return Err(Error::FailedPrecondition(format!(
                "image {} is missing its file {} in storage {storage} on this host; restore the file, or delete the image and import it again",
                name.unwrap_or(image),
                path.display()
            )));
        }
    }
    let unrecorded: Vec<DiskPlan> = disks.iter().filter(|d| !d.recorded).cloned().collect();
    if !unrecorded.is_empty() {
        let made = unrecorded.clone();
        blocking(&ctx.hypervisor, move |hv| {
            for d in &made {
                // A leftover of an earlier try never held guest data (see the
                // module's note): adopt it.
                if !hv.volume_exists(&d.pool, &d.volume)? {
                    hv.create_volume(&d.pool, &d.volume, d.size_bytes, d.backing.as_ref())?;
                    info!(volume = %d.volume, storage = %d.pool.domain, "created volume");
                }
            }
            Ok(())
        })
        .await?;
        for d in &unrecorded {
            let cmd = Command::RecordVolume { vm: vm_id, index: d.index, node: ctx.id, epoch, at_ms: now_ms() };
            if let Response::Refused(r) = ctx.propose(cmd).await? {
                return Err(Error::FailedPrecondition(format!("volume {} not recorded: {r}", d.volume)));
            }
        }
    }
    blocking(&ctx.hypervisor, move |hv| {
        let mut out = Prepared::default();
        for d in &disks {
            let grow_to = if live { 0 } else { d.size_bytes };
            out.disks.push((d.index, hv.open_volume(&d.pool, &d.volume, grow_to)?, d.size_bytes));
        }
        out.kernel = kernel.map(|(pool, file)| hv.open_volume(&pool, &file, 0)).transpose()?;
        out.initrd = initrd.map(|(pool, file)| hv.open_volume(&pool, &file, 0)).transpose()?;
        out.cdrom = cdrom.map(|(pool, file)| hv.open_volume(&pool, &file, 0)).transpose()?;
        Ok(out)
    })
    .await
}

/// The file of image `name` on this host, for a live CD-ROM change.
pub async fn image_path(ctx: &Arc<NodeCtx>, name: &str) -> Result<String> {
    let data_dir = ctx.config.data_dir.clone();
    let (pool, file) = ctx.read(|d| image_file(&d.state, name, ctx.id, &data_dir))?;
    if !probe::active_here(ctx, &pool.domain) {
        return Err(Error::FailedPrecondition(format!("storage {} is not active on this host", pool.domain)));
    }
    blocking(&ctx.hypervisor, move |hv| hv.open_volume(&pool, &file, 0)).await
}

/// The files of the VM's disks on local storage here, the source of a
/// live migration that copies them: (guest device, path).
pub async fn local_paths(ctx: &Arc<NodeCtx>, vm_id: u64) -> Result<Vec<(String, String)>> {
    let local: Vec<DiskPlan> = plan(ctx, vm_id)?.disks.into_iter().filter(|d| d.local).collect();
    blocking(&ctx.hypervisor, move |hv| {
        local.iter().map(|d| Ok((disk_target(d.index), hv.open_volume(&d.pool, &d.volume, 0)?))).collect()
    })
    .await
}

/// The files of the VM's disks on local storage here, from the replica
/// alone (no libvirt call): (disk index, path).
pub fn local_files(ctx: &NodeCtx, vm_id: u64) -> Result<Vec<(u32, std::path::PathBuf)>> {
    let local = plan(ctx, vm_id)?.disks.into_iter().filter(|d| d.local);
    Ok(local.map(|d| (d.index, d.pool.path().join(&d.volume))).collect())
}

/// A live migration's target: fresh volumes for the VM's disks on local
/// storage, over the same base images, for the source to copy into:
/// (guest device, path). A file of the same name found here is stale (the
/// record says the volume is the source's, and no incoming copy of this
/// migration exists yet), so it is replaced.
pub async fn make_copies(ctx: &Arc<NodeCtx>, vm_id: u64) -> Result<Vec<(String, String)>> {
    let local: Vec<DiskPlan> = plan(ctx, vm_id)?.disks.into_iter().filter(|d| d.local).collect();
    for d in &local {
        if !probe::active_here(ctx, &d.pool.domain) {
            return Err(Error::FailedPrecondition(format!(
                "storage {} is not active on {} (see `kvmesh storage get {}`)",
                d.pool.domain, ctx.name, d.pool.domain
            )));
        }
    }
    blocking(&ctx.hypervisor, move |hv| {
        let mut out = Vec::new();
        for d in &local {
            if hv.delete_volume(&d.pool, &d.volume)? {
                warn!(volume = %d.volume, "replaced a stale copy of a migrating VM's volume");
            }
            hv.create_volume(&d.pool, &d.volume, d.size_bytes, d.backing.as_ref())?;
            out.push((disk_target(d.index), hv.open_volume(&d.pool, &d.volume, 0)?));
        }
        Ok(out)
    })
    .await
}

/// A cold move's target: where each of the VM's volumes on local storage
/// goes on this host, (disk index, path). A stale file of that name (the
/// record says the volume is the source's) is replaced by the rename of a
/// complete copy, never deleted first.
pub async fn copy_paths(ctx: &Arc<NodeCtx>, vm_id: u64) -> Result<Vec<(u32, std::path::PathBuf)>> {
    if !ctx.hypervisor.stores_files() {
        return Err(Error::FailedPrecondition(
            "copying disks between hosts needs storage in files; the embedded test hypervisor keeps volumes in memory"
                .into(),
        ));
    }
    let local: Vec<DiskPlan> = plan(ctx, vm_id)?.disks.into_iter().filter(|d| d.local).collect();
    for d in &local {
        if !probe::active_here(ctx, &d.pool.domain) {
            return Err(Error::FailedPrecondition(format!("storage {} is not active on {}", d.pool.domain, ctx.name)));
        }
    }
    Ok(local.iter().map(|d| (d.index, d.pool.path().join(&d.volume))).collect())
}

/// Held while the trash is emptied, and while a migration's copy appears
/// under a volume's name: the trash deletes by name what it read a moment
/// before, so a copy made in between would go with the stale file.
pub static TRASH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `make` (which makes files under the VM's volume names) once no
/// volume of the VM is in this host's trash (from an earlier stay here, or
/// an aborted copy), holding the trash's lock: the stale file must be gone
/// first, or the trash would delete the copy.
pub async fn when_trash_cleared<T, F>(ctx: &Arc<NodeCtx>, vm_id: u64, make: impl FnOnce() -> F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let prefix = format!("{vm_id:016x}-disk");
    let trashed =
        || ctx.read(|d| d.state.meta.trash.iter().any(|t| t.host == Some(ctx.id) && t.volume.starts_with(&prefix)));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if !trashed() {
            let _trash = TRASH.lock().await;
            // Looked at again under the lock: the trash may have been read
            // before its entry went.
            if !trashed() {
                return make().await;
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::FailedPrecondition(format!(
                "an old copy of the VM's disks on {} is still waiting to be deleted (is its storage active there?); \
                 retry in a moment",
                ctx.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the trashed volumes this host can reach and records that.
pub async fn empty_trash(ctx: &Arc<NodeCtx>) {
    let _trash = TRASH.lock().await;
    let data_dir = ctx.config.data_dir.clone();
    let work: Vec<(Trashed, PoolSpec)> = ctx.read(|d| {
        d.state
            .meta
            .trash
            .iter()
            .filter(|t| t.host.is_none_or(|h| h == ctx.id))
            .filter_map(|t| {
                let domain = d.state.storage_by_name(&t.storage)?;
                Some((t.clone(), PoolSpec::of(domain, ctx.id, &data_dir)))
            })
            .filter(|(t, _)| probe::active_here(ctx, &t.storage))
            .collect()
    });
    if work.is_empty() {
        return;
    }
    let deleted = blocking(&ctx.hypervisor, move |hv| {
        let mut done = BTreeSet::new();
        for (t, pool) in work {
            match hv.delete_volume(&pool, &t.volume) {
                Ok(_) => {
                    // Files libvirt does not list (the test driver's pools
                    // live in memory) go too.
                    let file = pool.path().join(&t.volume);
                    let _ = std::fs::remove_file(&file);
                    info!(volume = %t.volume, storage = %t.storage, "deleted volume from the trash");
                    done.insert(t);
                }
                Err(e) => warn!(volume = %t.volume, error = %e, "could not delete a trashed volume; will retry"),
            }
        }
        Ok(done)
    })
    .await;
    match deleted {
        Ok(done) if !done.is_empty() => {
            let volumes = done.into_iter().collect();
            if let Err(e) = ctx.propose(Command::VolumesDeleted { volumes }).await {
                warn!(error = %e, "could not record deleted volumes; will retry");
            }
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "emptying the trash failed"),
    }
}
