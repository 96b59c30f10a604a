//! Interactive sessions with a running guest from any node: its serial
//! console (`vm console`) and its VNC display (`vm vnc`).
//!
//! A session is one bidirectional gRPC stream. The client's first frame
//! names the VM and what to open. The node that takes it relays the stream,
//! unchanged, to the VM's host (`Host/Attach`), which opens the guest's
//! serial pty or VNC socket and pumps bytes both ways until either side
//! ends. The host's first frame names itself, so the client can say where
//! it is connected. Nothing of a session is written to Raft.
//!
//! A serial console takes one session at a time, as `virsh console` does:
//! two readers of one pty would each get half of the guest's output. A
//! session opened with `force` ends the one there (`vm console --force`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kvmesh_proto as pb;
use kvmesh_raft::model::{domain_name, VmState};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{info, info_span, Instrument};

use crate::ctx::NodeCtx;
use crate::error::Error;
use crate::hypervisor::{blocking, guest};

pub type AttachStream = Pin<Box<dyn Stream<Item = Result<pb::AttachFrame, Status>> + Send>>;

/// What a client sends: a gRPC stream, or a browser's WebSocket as frames.
pub type Inbound = AttachStream;

/// How long a client has to name the VM.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 16 * 1024;

/// Serial consoles with a session on this host, by domain: the session's
/// number and what ends it.
static SERIAL_SESSIONS: Mutex<BTreeMap<String, (u64, Arc<tokio::sync::Notify>)>> = Mutex::new(BTreeMap::new());
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// `Vms/Attach`: served here if the VM runs here, else relayed to its host.
pub async fn attach(ctx: &Arc<NodeCtx>, mut inbound: Inbound) -> Result<AttachStream, Status> {
    let open = first_frame(&mut inbound).await?;
    let (host_id, address, host) = running_host(ctx, &open.vm)?;
    if host_id == ctx.id {
        return serve_here(ctx, open, inbound).await;
    }
    let mut client = pb::host_client::HostClient::new(ctx.channel(&address)?);
    let (up, up_rx) = mpsc::channel(16);
    let _ = up.send(pb::AttachFrame { open: Some(open), ..Default::default() }).await;
    tokio::spawn(async move {
        while let Some(Ok(frame)) = inbound.next().await {
            if up.send(frame).await.is_err() {
                break;
            }
        }
    });
    let down = client.attach(ReceiverStream::new(up_rx)).await.map_err(|s| {
        if s.code() == tonic::Code::Unavailable {
            Status::unavailable(format!("host {host} ({address}) that runs this VM does not answer: {}", s.message()))
        } else {
            s
        }
    })?;
    Ok(Box::pin(down.into_inner()))
}

/// `Host/Attach`: the VM must run on this host.
pub async fn host_attach(ctx: &Arc<NodeCtx>, mut inbound: Inbound) -> Result<AttachStream, Status> {
    let open = first_frame(&mut inbound).await?;
    serve_here(ctx, open, inbound).await
}

async fn first_frame(inbound: &mut Inbound) -> Result<pb::AttachOpen, Status> {
    match tokio::time::timeout(OPEN_TIMEOUT, inbound.next()).await {
        Ok(Some(Ok(frame))) => frame
            .open
            .filter(|o| !o.vm.is_empty())
            .ok_or_else(|| Status::invalid_argument("an attach's first frame names the VM (`open`)")),
        Ok(None) => Err(Status::invalid_argument("the attach ended before it named a VM")),
        Ok(Some(Err(s))) => Err(s),
        Err(_) => Err(Status::deadline_exceeded("no VM named within 10 s of the attach")),
    }
}

/// The host a VM runs on: (id, address, name). A VM that does not run has
/// no console to attach to.
pub fn running_host(ctx: &NodeCtx, name: &str) -> Result<(u64, String, String), Status> {
    let found = ctx.read(|d| {
        let vm = d.state.vm_by_name(name)?;
        let node =
            vm.placement.and_then(|p| d.state.nodes.get(&p.node)).map(|n| (n.id, n.address.clone(), n.name.clone()));
        let state = vm.reported.as_ref().filter(|r| Some(r.node) == node.as_ref().map(|n| n.0)).map(|r| r.state);
        Some((node, state))
    });
    match found {
        None => Err(Error::NotFound(format!("no VM named {name:?}; see `kvmesh vm list`")).into()),
        Some((Some(node), Some(VmState::Running))) => Ok(node),
        Some((_, state)) => Err(Status::failed_precondition(format!(
            "VM {name} is not running ({}); start it first with `kvmesh vm start {name}`",
            state.map_or("not started", |s| s.as_str())
        ))),
    }
}

async fn serve_here(ctx: &Arc<NodeCtx>, open: pb::AttachOpen, inbound: Inbound) -> Result<AttachStream, Status> {
    let (host_id, _, _) = running_host(ctx, &open.vm)?;
    if host_id != ctx.id {
        return Err(Status::failed_precondition(format!("VM {} does not run on {}", open.vm, ctx.name)));
    }
    let id = ctx.read(|d| d.state.vm_by_name(&open.vm).map(|v| v.id)).unwrap_or_default();
    let domain = domain_name(id);
    let kind = pb::AttachKind::try_from(open.kind).unwrap_or(pb::AttachKind::Serial);
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(Ok(pb::AttachFrame { host: Some(ctx.name.clone()), ..Default::default() })).await;
    let span = info_span!("attach", vm = %open.vm, kind = kind.as_str_name());
    match kind {
        pb::AttachKind::Serial => {
            let d = domain.clone();
            let pty = blocking(&ctx.hypervisor, move |hv| hv.serial_pty(&d)).await?;
            let session = SerialSession::claim(&domain, &open.vm, open.force)?;
            let file = guest::open_pty(&pty)?;
            // SAFETY: the File owns its descriptor, and the AsyncFd owns the
            // File: the descriptor stays open exactly as long as it is
            // registered.
            let fd = unsafe { AsyncFd::register(file) };
            let io = Pty(fd.map_err(|e| Status::internal(format!("watch {pty}: {e}")))?);
            let ended = session.1.clone();
            tokio::spawn(
                async move {
                    pump(io, inbound, tx, ended.notified()).await;
                    drop(session);
                }
                .instrument(span),
            );
        }
        pb::AttachKind::Vnc => {
            let d = domain.clone();
            let path = blocking(&ctx.hypervisor, move |hv| hv.vnc_socket(&d)).await?;
            let socket = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                Status::unavailable(format!("the VM's display ({}) does not answer: {e}", path.display()))
            })?;
            tokio::spawn(pump(socket, inbound, tx, std::future::pending()).instrument(span));
        }
    }
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Copies the client's bytes to the guest and the guest's to the client
/// until either side ends, or `taken_over` (another session forced its way).
async fn pump<T>(
    io: T,
    mut inbound: Inbound,
    tx: mpsc::Sender<Result<pb::AttachFrame, Status>>,
    taken_over: impl std::future::Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    info!("session opened");
    let (mut rd, mut wr) = tokio::io::split(io);
    let to_guest = async {
        while let Some(Ok(frame)) = inbound.next().await {
            if !frame.data.is_empty() && wr.write_all(&frame.data).await.is_err() {
                break;
            }
        }
    };
    let from_guest = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    let frame = pb::AttachFrame { data: buf[..n].to_vec(), ..Default::default() };
                    if tx.send(Ok(frame)).await.is_err() {
                        break;
                    }
                }
                // A pty whose guest stopped reads EIO.
                Err(_) => break,
            }
        }
    };
    tokio::select! {
        _ = to_guest => {}
        _ = from_guest => {}
        _ = taken_over => {
            let _ = tx.send(Err(Status::aborted("another session took this console over (vm console --force)"))).await;
        }
    }
    info!("session closed");
}

/// The claim on a serial console (domain, what ends it, its number),
/// released when the session ends.
struct SerialSession(String, Arc<tokio::sync::Notify>, u64);

impl SerialSession {
    fn claim(domain: &str, vm: &str, force: bool) -> Result<Self, Status> {
        let mut held = SERIAL_SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, other)) = held.get(domain) {
            if !force {
                return Err(Status::failed_precondition(format!(
                    "VM {vm}'s serial console already has a session; it is free once that one leaves (Ctrl-]), or take it over with `kvmesh vm console {vm} --force`"
                )));
            }
            other.notify_one();
        }
        let number = NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ends = Arc::new(tokio::sync::Notify::new());
        held.insert(domain.to_string(), (number, ends.clone()));
        Ok(SerialSession(domain.to_string(), ends, number))
    }
}

impl Drop for SerialSession {
    fn drop(&mut self) {
        let mut held = SERIAL_SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
        // A session taken over leaves the new one's claim alone.
        if held.get(&self.0).is_some_and(|(n, _)| *n == self.2) {
            held.remove(&self.0);
        }
    }
}

/// A non-blocking pty as tokio reads and writes it.
struct Pty(AsyncFd<std::fs::File>);

impl AsyncRead for Pty {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        use std::io::Read;
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        use std::io::Write;
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
