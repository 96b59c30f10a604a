//! `kvmesh storage …`, `kvmesh image …`, and a VM's disks and snapshots
//! (`vm disk …`, `vm snapshot …`). An import streams the file to the node
//! in 1 MiB messages, with a progress line on a terminal.

use std::io::IsTerminal;
use std::time::Instant;

use super::client::Ch;
use anyhow::{anyhow, Context, Result};
use kvmesh_proto as pb;
use pb::images_client::ImagesClient;
use pb::storage_client::StorageClient;
use pb::vms_client::VmsClient;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::client::{req, status_err};
use super::output::{format_ms, human_bytes, table};
use super::vm_view::{print_disks, print_vm};
use super::{DiskCmd, ImageCmd, Output, SnapshotCmd, StorageCmd};

const CHUNK: usize = 1 << 20;

pub async fn storage(channel: Ch, output: Output, command: StorageCmd) -> Result<()> {
    let mut client = StorageClient::new(channel);
    match command {
        StorageCmd::Add { name, kind, path, server, export, nodes } => {
            let r = pb::AddStorageRequest { name, kind, path, server, export, nodes };
            let d = client.add(req(r)).await.map_err(status_err)?.into_inner();
            print_domains(output, &[d], true);
        }
        StorageCmd::List => {
            let r = client.list(req(pb::ListStorageRequest {})).await.map_err(status_err)?.into_inner();
            print_domains(output, &r.domains, false);
        }
        StorageCmd::Get { name } => {
            let d = client.get(req(pb::GetStorageRequest { name })).await.map_err(status_err)?.into_inner();
            print_domains(output, &[d], true);
        }
        StorageCmd::Remove { name } => {
            client.remove(req(pb::RemoveStorageRequest { name: name.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"removed": name})),
                Output::Table => outln!("removed storage {name}"),
            }
        }
    }
    Ok(())
}

fn domain_json(d: &pb::StorageDomainInfo) -> Value {
    crate::view::json(crate::view::StorageDomain::from(d))
}

fn print_domains(output: Output, domains: &[pb::StorageDomainInfo], detail: bool) {
    if output == Output::Json {
        let all: Vec<Value> = domains.iter().map(domain_json).collect();
        outln!("{}", if detail && all.len() == 1 { all[0].clone() } else { Value::Array(all) });
        return;
    }
    if !detail {
        let rows = domains
            .iter()
            .map(|d| {
                let active = d.hosts.iter().filter(|h| h.state == "active").count();
                let problems: Vec<String> = d
                    .hosts
                    .iter()
                    .filter(|h| h.state != "active")
                    .map(|h| format!("{}: {}", h.node, h.state))
                    .collect();
                vec![
                    d.name.clone(),
                    d.kind.clone(),
                    d.location.clone(),
                    format!("{active}/{}", d.hosts.len()),
                    format!("{} disks, {} images", d.disks, d.images),
                    if problems.is_empty() { "-".into() } else { problems.join(", ") },
                ]
            })
            .collect();
        table(&["NAME", "KIND", "LOCATION", "ACTIVE", "HOLDS", "NOT ACTIVE ON"], rows);
        return;
    }
    for d in domains {
        outln!("name:     {}", d.name);
        outln!(
            "kind:     {}{}",
            d.kind,
            if d.shared { " (shared: VMs on it can move)" } else { " (per host: its VMs stay on their host)" }
        );
        outln!("location: {}", d.location);
        outln!("nodes:    {}", if d.nodes.is_empty() { "all".into() } else { d.nodes.join(", ") });
        let pending = if d.pending_deletions > 0 {
            format!(" ({} deleted volumes waiting for a host to remove them)", d.pending_deletions)
        } else {
            String::new()
        };
        outln!("holds:    {} disks, {} images{pending}", d.disks, d.images);
        let rows = d
            .hosts
            .iter()
            .map(|h| {
                vec![
                    h.node.clone(),
                    h.state.clone(),
                    if h.total_bytes > 0 { human_bytes(h.free_bytes) } else { "-".into() },
                    if h.total_bytes > 0 { human_bytes(h.total_bytes) } else { "-".into() },
                    h.message.clone(),
                ]
            })
            .collect();
        table(&["HOST", "STATE", "FREE", "TOTAL", "MESSAGE"], rows);
    }
}

pub async fn image(channel: Ch, output: Output, command: ImageCmd) -> Result<()> {
    let mut client = ImagesClient::new(channel);
    match command {
        ImageCmd::Import { name, file, storage, kind } => {
            let image = import(&mut client, output, name, &file, storage, kind).await?;
            print_image(output, &image);
        }
        ImageCmd::List => {
            let r = client.list(req(pb::ListImagesRequest {})).await.map_err(status_err)?.into_inner();
            match output {
                Output::Json => outln!("{}", Value::Array(r.images.iter().map(image_json).collect())),
                Output::Table => {
                    let rows = r
                        .images
                        .iter()
                        .map(|i| {
                            vec![
                                i.name.clone(),
                                i.kind.clone(),
                                i.format.clone(),
                                human_bytes(i.virtual_bytes),
                                i.storage.clone(),
                                i.host.clone().unwrap_or_else(|| "-".into()),
                                i.used_by.len().to_string(),
                            ]
                        })
                        .collect();
                    table(&["NAME", "KIND", "FORMAT", "SIZE", "STORAGE", "HOST", "USED BY"], rows);
                }
            }
        }
        ImageCmd::Get { name } => {
            let i = client.get(req(pb::GetImageRequest { name })).await.map_err(status_err)?.into_inner();
            print_image(output, &i);
        }
        ImageCmd::Delete { name } => {
            client.delete(req(pb::DeleteImageRequest { name: name.clone() })).await.map_err(status_err)?;
            match output {
                Output::Json => outln!("{}", json!({"deleted": name})),
                Output::Table => outln!("deleted image {name}"),
            }
        }
    }
    Ok(())
}

/// Streams `file` to the node; the node answers once the image is recorded.
async fn import(
    client: &mut ImagesClient<Ch>,
    output: Output,
    name: String,
    file: &std::path::Path,
    storage: String,
    kind: String,
) -> Result<pb::ImageInfo> {
    let mut f = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().await.with_context(|| format!("cannot read {}", file.display()))?.len();
    if !f.metadata().await?.is_file() {
        return Err(anyhow!("{} is not a regular file", file.display()));
    }
    let progress = output == Output::Table && std::io::stderr().is_terminal();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportChunk>(8);
    let header = pb::ImportHeader { name, storage, kind, size_bytes: size };
    let reader = tokio::spawn(async move {
        let part = |p| pb::ImportChunk { part: Some(p) };
        if tx.send(part(pb::import_chunk::Part::Header(header))).await.is_err() {
            return Ok(());
        }
        let (started, mut sent) = (Instant::now(), 0u64);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sent += n as u64;
            if tx.send(part(pb::import_chunk::Part::Data(buf))).await.is_err() {
                break; // the node answered early (an error); it says why
            }
            if progress {
                let rate = sent as f64 / started.elapsed().as_secs_f64().max(0.001);
                eprint!(
                    "\r{:>5.1}%  {} of {}  {}/s   ",
                    sent as f64 * 100.0 / size.max(1) as f64,
                    human_bytes(sent),
                    human_bytes(size),
                    human_bytes(rate as u64)
                );
            }
        }
        if progress {
            eprintln!();
        }
        Ok::<(), std::io::Error>(())
    });
    // An upload takes as long as it takes; only the connection's own
    // liveness bounds it.
    let answer = client.import(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    reader
        .await
        .map_err(|e| anyhow!("reading the file failed: {e}"))?
        .with_context(|| format!("read {}", file.display()))?;
    Ok(answer.map_err(status_err)?.into_inner())
}

fn image_json(i: &pb::ImageInfo) -> Value {
    crate::view::json(crate::view::Image::from(i))
}

pub fn print_image(output: Output, i: &pb::ImageInfo) {
    match output {
        Output::Json => outln!("{}", image_json(i)),
        Output::Table => {
            outln!("name:     {}", i.name);
            outln!("kind:     {} ({})", i.kind, i.format);
            outln!("size:     {} ({} bytes in its file)", human_bytes(i.virtual_bytes), i.file_bytes);
            outln!("storage:  {}{}", i.storage, i.host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default());
            outln!("sha256:   {}", i.sha256);
            outln!("used by:  {}", if i.used_by.is_empty() { "-".into() } else { i.used_by.join(", ") });
        }
    }
}

pub async fn disk(vms: &mut VmsClient<Ch>, output: Output, command: DiskCmd) -> Result<()> {
    let vm = match command {
        DiskCmd::List { name } => {
            let vm = vms.get(req(pb::GetVmRequest { name, consistent: false })).await.map_err(status_err)?;
            print_disks(output, &vm.into_inner().disks);
            return Ok(());
        }
        DiskCmd::Add { name, size, storage } => {
            let disk = pb::DiskSpec { size_bytes: size, storage: storage.unwrap_or_default() };
            vms.add_disk(req(pb::AddDiskRequest { name, disk: Some(disk) })).await
        }
        DiskCmd::Resize { name, index, size } => {
            vms.resize_disk(req(pb::ResizeDiskRequest { name, index, size_bytes: size })).await
        }
        DiskCmd::Remove { name, index } => vms.remove_disk(req(pb::RemoveDiskRequest { name, index })).await,
    };
    print_disks(output, &vm.map_err(status_err)?.into_inner().disks);
    Ok(())
}

pub async fn snapshot(vms: &mut VmsClient<Ch>, output: Output, command: SnapshotCmd) -> Result<()> {
    let (name, snapshot, action) = match command {
        SnapshotCmd::List { name } => {
            let vm = vms.get(req(pb::GetVmRequest { name, consistent: false })).await.map_err(status_err)?;
            let vm = vm.into_inner();
            match output {
                Output::Json => outln!(
                    "{}",
                    Value::Array(
                        vm.snapshots
                            .iter()
                            .map(|s| json!({"name": s.name, "created_at_ms": s.created_at_ms}))
                            .collect()
                    )
                ),
                Output::Table => {
                    let rows = vm.snapshots.iter().map(|s| vec![s.name.clone(), format_ms(s.created_at_ms)]).collect();
                    table(&["NAME", "CREATED"], rows);
                }
            }
            return Ok(());
        }
        SnapshotCmd::Create { name, snapshot } => (name, snapshot, pb::SnapshotAction::Create),
        SnapshotCmd::Revert { name, snapshot } => (name, snapshot, pb::SnapshotAction::Revert),
        SnapshotCmd::Delete { name, snapshot } => (name, snapshot, pb::SnapshotAction::Delete),
    };
    let r = pb::SnapshotRequest { name, snapshot, action: action as i32 };
    let vm = vms.snapshot(req(r)).await.map_err(status_err)?.into_inner();
    print_vm(output, &vm);
    Ok(())
}
