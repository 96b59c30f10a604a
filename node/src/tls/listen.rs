//! The listener: accepts TCP connections, does their TLS handshakes, and
//! hands finished connections to tonic with who is on the other end.
//!
//! A connection that never finishes its handshake must not hold a file
//! descriptor for long, nor lock others out: each handshake has
//! [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] run at once, and one
//! source address may have at most [`HANDSHAKES_PER_SOURCE`] of them in
//! flight; connections beyond that are closed at once. Finished connections
//! are bounded per source too ([`CONNECTIONS_PER_SOURCE`]; the server's
//! HTTP/2 keepalive closes dead ones). Accept errors (out of file
//! descriptors) pause accepting briefly instead of ending the server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use super::ca::{self, CertInfo};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_HANDSHAKES: usize = 512;
pub const HANDSHAKES_PER_SOURCE: usize = 64;
pub const CONNECTIONS_PER_SOURCE: usize = 1024;

/// Who is on the other end of a connection: in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The client certificate, verified against the cluster CA.
    pub cert: Option<CertInfo>,
    /// Whether the connection is TLS (false only under `--insecure`).
    pub tls: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection.
pub struct Conn {
    io: Io,
    info: PeerInfo,
    /// Counts it against its source's established connections until dropped.
    _slot: Option<InFlightGuard>,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections (in handshake, or established) per source address, up to
/// a limit.
struct InFlight(Mutex<HashMap<IpAddr, usize>>, usize);

impl InFlight {
    fn new(limit: usize) -> Self {
        InFlight(Mutex::new(HashMap::new()), limit)
    }

    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<InFlightGuard> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= self.1 {
            return None;
        }
        *n += 1;
        Some(InFlightGuard(self.clone(), ip))
    }
}

struct InFlightGuard(Arc<InFlight>, IpAddr);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Accepts on `listener` for as long as the returned stream is read;
/// `acceptor` is `None` under `--insecure`.
pub fn incoming(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let in_flight = Arc::new(InFlight::new(HANDSHAKES_PER_SOURCE));
        let established = Arc::new(InFlight::new(CONNECTIONS_PER_SOURCE));
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "cannot accept a connection (out of file descriptors?); pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                let info = PeerInfo { remote: Some(remote), cert: None, tls: false };
                let conn = Conn { io: Io::Plain(tcp), info, _slot: None };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let Some(slot) = established.enter(remote.ip()) else {
                debug!(%remote, "too many connections from this source; closing the new one");
                continue;
            };
            let (Ok(permit), Some(guard)) = (handshakes.clone().try_acquire_owned(), in_flight.enter(remote.ip()))
            else {
                debug!(%remote, "too many TLS handshakes in flight; closing the connection");
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop((permit, guard));
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => return debug!(%remote, "TLS handshake timed out"),
                };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|der| ca::info(der).ok());
                let info = PeerInfo { remote: Some(remote), cert, tls: true };
                let conn = Conn { io: Io::Tls(Box::new(tls)), info, _slot: Some(slot) };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Raises the soft open-file limit to the hard one: every connection and
/// every handshake holds a descriptor, and 1,024 is a small default.
pub fn raise_nofile_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
