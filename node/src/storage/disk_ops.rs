//! Disk operations on a stopped VM, run by the host that holds it:
//! snapshots of all its disks and templates made from its boot disk.
//!
//! Snapshots are qcow2 *internal* snapshots (`qemu-img snapshot`): they
//! live inside each volume file, so they travel with the volume on shared
//! storage and need no libvirt metadata on any one host, and revert is a
//! plain `qemu-img snapshot -a`. Libvirt's own snapshot API keeps its
//! metadata per host, which would not follow a VM that moves; external
//! (overlay) snapshots would change the volumes' names under the recorded
//! ones. The cost is that a snapshot needs the VM stopped (qemu-img must
//! not write an image a running QEMU holds; QEMU's image lock enforces it).
//! A template is the boot disk flattened (`qemu-img convert`), backing
//! image included, into a new image file on the same domain.

use std::path::Path;
use std::process::Command as Process;
use std::sync::Arc;

use kvmesh_proto as pb;
use kvmesh_raft::model::{domain_name, Desired};
use kvmesh_raft::storage::{image_volume_name, volume_name};
use sha2::{Digest, Sha256};
use tracing::{info, instrument, warn};

use super::images::hex;
use crate::ctx::NodeCtx;
use crate::error::{Error, Result};
use crate::hypervisor::{blocking, PoolSpec};

pub(crate) fn qemu_img(args: &[&str]) -> Result<()> {
    let out = Process::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| Error::Hypervisor(format!("cannot run qemu-img ({e}); install qemu-utils on this host")))?;
    if !out.status.success() {
        return Err(Error::FailedPrecondition(format!(
            "qemu-img {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Whether the qcow2 file at `path` has an internal snapshot tagged `name`.
fn has_snapshot(path: &str, name: &str) -> Result<bool> {
    let out = Process::new("qemu-img")
        .args(["snapshot", "-l", path])
        .output()
        .map_err(|e| Error::Hypervisor(format!("cannot run qemu-img ({e}); install qemu-utils on this host")))?;
    if !out.status.success() {
        return Err(Error::FailedPrecondition(format!(
            "qemu-img snapshot -l {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Rows after the header: ID, TAG, sizes, dates.
    Ok(String::from_utf8_lossy(&out.stdout).lines().skip(2).any(|l| l.split_whitespace().nth(1) == Some(name)))
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::Hypervisor(format!("read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| Error::Hypervisor(format!("read {}: {e}", path.display())))?;
    Ok(hex(&hasher.finalize()))
}

/// One disk operation at a time on this host: two snapshots of the same
/// VM at once would race on its files (and qemu-img's image lock would
/// answer one of them with a raw error).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `req` on this host, which must hold the VM, stopped.
#[instrument(skip_all, fields(node = %ctx.name, vm = %req.vm))]
pub async fn run_local(ctx: &Arc<NodeCtx>, req: pb::DiskOpRequest) -> Result<pb::DiskOpReply> {
    let _one = ONE_AT_A_TIME.lock().await;
    let op = pb::DiskOpKind::try_from(req.op).unwrap_or(pb::DiskOpKind::DiskOpUnspecified);
    let data_dir = ctx.config.data_dir.clone();
    let (vm_id, disks) = ctx.read(|d| {
        let vm = d.state.vm_by_name(&req.vm).ok_or_else(|| Error::NotFound(format!("no VM named {:?}", req.vm)))?;
        if vm.placement.map(|p| p.node) != Some(ctx.id) {
            return Err(Error::FailedPrecondition(format!("VM {} is not held by {}", req.vm, ctx.name)));
        }
        if vm.desired != Desired::Stopped {
            return Err(Error::FailedPrecondition(format!(
                "VM {} must be stopped first: `kvmesh vm stop {} --wait`",
                req.vm, req.vm
            )));
        }
        if vm.migration.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "VM {} is moving to another host; retry once the move has finished (`kvmesh vm get {}`)",
                req.vm, req.vm
            )));
        }
        let mut disks = Vec::new();
        for disk in &vm.spec.disks {
            if disk.volume.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "disk {} of VM {} has no volume yet (it is made at the first start); start the VM once first",
                    disk.index, req.vm
                )));
            }
            let domain = d
                .state
                .storage_by_name(&disk.storage)
                .ok_or_else(|| Error::FailedPrecondition(format!("storage {} no longer exists", disk.storage)))?;
            disks.push((disk.index, PoolSpec::of(domain, ctx.id, &data_dir)));
        }
        Ok((vm.id, disks))
    })?;
    if disks.is_empty() {
        return Err(Error::FailedPrecondition(format!("VM {} has no disks", req.vm)));
    }
    let name = req.name.clone();
    let domain = domain_name(vm_id);
    blocking(&ctx.hypervisor, move |hv| {
        if hv.list()?.iter().any(|d| d.name == domain && d.state.is_live()) {
            return Err(Error::FailedPrecondition(format!("the guest of {domain} still runs; wait for it to stop")));
        }
        if !hv.stores_files() {
            return match op {
                // The test driver stores no disk contents: the record is all
                // there is to a snapshot.
                pb::DiskOpKind::DiskOpTemplate => Err(Error::FailedPrecondition(
                    "templates need a hypervisor that stores disks (this node runs libvirt's test driver)".into(),
                )),
                _ => Ok(pb::DiskOpReply::default()),
            };
        }
        let mut paths = Vec::new();
        for (index, pool) in &disks {
            paths.push((pool.clone(), hv.open_volume(pool, &volume_name(vm_id, *index), 0)?));
        }
        match op {
            pb::DiskOpKind::DiskOpSnapshotCreate => {
                // The record has no snapshot of this name (checked before
                // this ran), so one on a disk is the leftover of a create
                // whose record never committed: qemu-img would add a second
                // of the same name, and a revert could pick the old one.
                for (_, path) in &paths {
                    while has_snapshot(path, &name)? {
                        qemu_img(&["snapshot", "-d", &name, path])?;
                    }
                }
                for (i, (_, path)) in paths.iter().enumerate() {
                    if let Err(e) = qemu_img(&["snapshot", "-c", &name, path]) {
                        // All disks or none.
                        for (_, done) in &paths[..i] {
                            let _ = qemu_img(&["snapshot", "-d", &name, done]);
                        }
                        return Err(e);
                    }
                }
                Ok(pb::DiskOpReply::default())
            }
            pb::DiskOpKind::DiskOpSnapshotRevert => {
                // Every disk has it, or none is touched.
                for (_, path) in &paths {
                    if !has_snapshot(path, &name)? {
                        return Err(Error::FailedPrecondition(format!(
                            "{path} has no snapshot {name}; nothing reverted"
                        )));
                    }
                }
                for (_, path) in &paths {
                    qemu_img(&["snapshot", "-a", &name, path])?;
                }
                Ok(pb::DiskOpReply::default())
            }
            pb::DiskOpKind::DiskOpSnapshotDelete => {
                // A disk without it (an earlier delete stopped half-way) is
                // done; every copy of the name goes.
                for (_, path) in &paths {
                    while has_snapshot(path, &name)? {
                        qemu_img(&["snapshot", "-d", &name, path])?;
                    }
                }
                Ok(pb::DiskOpReply::default())
            }
            pb::DiskOpKind::DiskOpTemplate => {
                let (pool, source) = &paths[0];
                let id = rand::random::<u64>() >> 1;
                let volume = image_volume_name(id, "qcow2");
                let target = pool.path().join(&volume);
                let partial = pool.path().join(format!(".template-{id:016x}.part"));
                let result = qemu_img(&["convert", "-O", "qcow2", source, &partial.to_string_lossy()])
                    .and_then(|_| sha256_of(&partial))
                    .and_then(|sum| {
                        std::fs::rename(&partial, &target)
                            .map_err(|e| Error::Hypervisor(format!("rename {}: {e}", target.display())))?;
                        Ok(sum)
                    });
                let sha256 = match result {
                    Ok(sum) => sum,
                    Err(e) => {
                        let _ = std::fs::remove_file(&partial);
                        return Err(e);
                    }
                };
                let file_bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
                let mut head = vec![0u8; 64];
                let _ = std::io::Read::read(
                    &mut std::fs::File::open(&target).map_err(|e| Error::Hypervisor(e.to_string()))?,
                    &mut head,
                );
                let virtual_bytes = u64::from_be_bytes(head[24..32].try_into().unwrap_or([0; 8]));
                info!(%volume, "template written");
                Ok(pb::DiskOpReply { format: "qcow2".into(), virtual_bytes, file_bytes, sha256, volume, image_id: id })
            }
            pb::DiskOpKind::DiskOpUnspecified => Err(Error::InvalidArgument("no disk operation given".into())),
        }
    })
    .await
}

/// Runs `req` on the VM's host, here or over `Host/DiskOp`.
pub async fn run(ctx: &Arc<NodeCtx>, req: pb::DiskOpRequest) -> Result<(pb::DiskOpReply, u64)> {
    let owner = ctx.read(|d| {
        let vm = d
            .state
            .vm_by_name(&req.vm)
            .ok_or_else(|| Error::NotFound(format!("no VM named {:?}; see `kvmesh vm list`", req.vm)))?;
        let node = vm.placement.and_then(|p| d.state.nodes.get(&p.node)).ok_or_else(|| {
            Error::FailedPrecondition(format!("VM {} is on no host now; start it first (or wait for its move)", req.vm))
        })?;
        Ok::<_, Error>((node.id, node.address.clone(), node.name.clone()))
    })?;
    if owner.0 == ctx.id {
        return Ok((run_local(ctx, req).await?, owner.0));
    }
    let req_vm = req.vm.clone();
    let mut client = pb::host_client::HostClient::new(ctx.channel(&owner.1)?);
    let mut r = tonic::Request::new(req);
    // A template copies a whole disk.
    r.set_timeout(std::time::Duration::from_secs(600));
    match client.disk_op(r).await {
        Ok(reply) => Ok((reply.into_inner(), owner.0)),
        Err(s) if s.code() == tonic::Code::Unavailable => {
            warn!(host = %owner.2, "the VM's host does not answer");
            Err(Error::Unavailable(format!("host {} that holds this VM does not answer: {}", owner.2, s.message())))
        }
        Err(s) if matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown) => {
            Err(Error::OutcomeUnknown(format!(
                "host {} did not finish answering ({}); the operation may or may not have happened on its disks: check `kvmesh vm snapshot list {}` and try again",
                owner.2,
                s.message(),
                req_vm
            )))
        }
        Err(s) => Err(Error::FailedPrecondition(s.message().to_string())),
    }
}
