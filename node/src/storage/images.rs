//! Receiving an image: the bytes a client streams become a file in a
//! storage domain, checked and checksummed, then an image record.
//!
//! The file is written under a hidden temporary name, synced, checked
//! ([`super::format`]) and renamed into place before the record is
//! proposed; whatever fails on the way (a short stream, a full disk, a bad
//! header, a name taken meanwhile) removes the file, so a failed import
//! leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kvmesh_proto as pb;
use kvmesh_raft::command::{Command, Response};
use kvmesh_raft::storage::{image_volume_name, Image, ImageKind};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, instrument};

use super::format::{self, HEADER_BYTES};
use super::probe;
use crate::ctx::{now_ms, NodeCtx};
use crate::error::{Error, Result};
use crate::hypervisor::PoolSpec;

/// A file being written; removed on drop unless kept.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error, storage: &str) -> Error {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        Error::StorageFull(format!(
            "storage {storage} is full ({}): free space there or import into another domain",
            path.display()
        ))
    } else {
        Error::Hypervisor(format!("{what} {}: {e}", path.display()))
    }
}

/// Where an image named `name` of `kind` would go on `storage`, checked
/// before any byte is written.
fn destination(ctx: &NodeCtx, header: &pb::ImportHeader) -> Result<(ImageKind, PoolSpec, Option<u64>)> {
    crate::config::validate_object_name("image", &header.name).map_err(Error::InvalidArgument)?;
    let kind = ImageKind::parse(&header.kind).ok_or_else(|| {
        Error::InvalidArgument(format!("unknown image kind {:?}: use disk, kernel, initrd or iso", header.kind))
    })?;
    ctx.read(|d| {
        if d.state.image_by_name(&header.name).is_some() {
            return Err(Error::AlreadyExists(format!("an image named {:?} already exists", header.name)));
        }
        let domain = d.state.storage_by_name(&header.storage).ok_or_else(|| {
            Error::NotFound(format!("no storage domain named {:?}; see `kvmesh storage list`", header.storage))
        })?;
        let host = (!domain.kind.is_shared()).then_some(ctx.id);
        Ok((kind, PoolSpec::of(domain, ctx.id, &ctx.config.data_dir), host))
    })
}

/// Receives one import stream and records the image.
#[instrument(skip_all, fields(node = %ctx.name))]
pub async fn import(
    ctx: &Arc<NodeCtx>,
    mut stream: impl Stream<Item = std::result::Result<pb::ImportChunk, tonic::Status>> + Unpin,
) -> Result<pb::ImageInfo> {
    let first = stream.next().await.transpose().map_err(|s| Error::InvalidArgument(s.message().to_string()))?;
    let Some(pb::ImportChunk { part: Some(pb::import_chunk::Part::Header(header)) }) = first else {
        return Err(Error::InvalidArgument("an import starts with its header (name, storage, kind, size)".into()));
    };
    let (kind, pool, host) = destination(ctx, &header)?;
    if !probe::active_here(ctx, &pool.domain) {
        probe::refresh(ctx).await;
    }
    if !probe::active_here(ctx, &pool.domain) {
        return Err(Error::FailedPrecondition(format!(
            "storage {} is not active on {} (see `kvmesh storage get {}`); send the import to a node where it is (--endpoint)",
            pool.domain, ctx.name, pool.domain
        )));
    }
    let id = rand::random::<u64>() >> 1;
    let dir = pool.path().to_path_buf();
    let mut partial = Partial { path: dir.join(format!(".import-{id:016x}.part")), keep: false };
    let mut file =
        tokio::fs::File::create(&partial.path).await.map_err(|e| io_error("create", &partial.path, e, &pool.domain))?;
    let (mut hasher, mut head, mut received) = (Sha256::new(), Vec::with_capacity(HEADER_BYTES), 0u64);
    while let Some(chunk) = stream
        .next()
        .await
        .transpose()
        .map_err(|s| Error::Unavailable(format!("import interrupted: {}", s.message())))?
    {
        let Some(pb::import_chunk::Part::Data(data)) = chunk.part else {
            return Err(Error::InvalidArgument("only one header per import".into()));
        };
        received += data.len() as u64;
        if received > header.size_bytes {
            return Err(Error::InvalidArgument(format!("more bytes arrived than the {} announced", header.size_bytes)));
        }
        if head.len() < HEADER_BYTES {
            let take = (HEADER_BYTES - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
        }
        hasher.update(&data);
        file.write_all(&data).await.map_err(|e| io_error("write", &partial.path, e, &pool.domain))?;
    }
    if received != header.size_bytes {
        return Err(Error::InvalidArgument(format!(
            "the import ended after {received} of {} bytes; nothing was kept",
            header.size_bytes
        )));
    }
    file.sync_all().await.map_err(|e| io_error("sync", &partial.path, e, &pool.domain))?;
    drop(file);
    let inspected = format::inspect(kind, &head, received).map_err(|why| {
        Error::InvalidArgument(format!("{} is not a usable {} image: {why}", header.name, kind.as_str()))
    })?;
    let volume = image_volume_name(id, inspected.format);
    let final_path = dir.join(&volume);
    std::fs::rename(&partial.path, &final_path).map_err(|e| io_error("rename", &final_path, e, &pool.domain))?;
    partial.path = final_path;
    let image = Image {
        id,
        name: header.name.clone(),
        storage: pool.domain.clone(),
        kind,
        format: inspected.format.into(),
        virtual_bytes: inspected.virtual_bytes,
        file_bytes: received,
        sha256: hex(&hasher.finalize()),
        volume,
        host,
        created_at_ms: now_ms(),
    };
    match ctx.propose(Command::AddImage { image: image.clone(), at_ms: now_ms() }).await {
        Ok(Response::Refused(r)) => return Err(r.into()),
        Ok(_) => {}
        Err(e @ Error::OutcomeUnknown(_)) => {
            // It may be recorded: the file stays with it.
            partial.keep = true;
            return Err(Error::OutcomeUnknown(format!(
                "{e}; see `kvmesh image get {}` (if it is not there, import again)",
                image.name
            )));
        }
        Err(e) => return Err(e),
    }
    partial.keep = true;
    info!(image = %image.name, storage = %image.storage, bytes = received, "image imported");
    Ok(ctx.read(|d| kvmesh_raft::wire::to_pb::image(&d.state, &image)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
