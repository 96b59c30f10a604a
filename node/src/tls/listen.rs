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
//!
//! Finished connections go two ways by the protocol they speak: HTTP/2
//! (gRPC, and REST from HTTP/2 clients) to tonic's server, HTTP/1.1 to the
//! HTTP/1 server of `api::http1`, which, unlike tonic's, lets a request
//! upgrade its connection to a WebSocket (the browser's consoles). TLS
//! says which by ALPN; a connection without ALPN (or without TLS) is told
//! by its first bytes: HTTP/2's preface starts `PRI `.

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
/// TCP keepalive: the first probe after this long without traffic...
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ...then one this often until the peer answers or the kernel gives up.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Bytes read to tell its protocol, given back before the rest.
    sniffed: Vec<u8>,
    pub info: PeerInfo,
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
        let this = self.get_mut();
        if !this.sniffed.is_empty() {
            let n = this.sniffed.len().min(buf.remaining());
            buf.put_slice(&this.sniffed[..n]);
            this.sniffed.drain(..n);
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
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

/// The accepted connections, by protocol.
pub struct Incoming {
    /// HTTP/2: for tonic's server.
    pub h2: tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>>,
    /// HTTP/1.1: for `api::http1`.
    pub http1: mpsc::Receiver<Conn>,
}

/// The protocols a connection may speak.
#[derive(Clone)]
struct Ways {
    h2: mpsc::Sender<std::io::Result<Conn>>,
    http1: mpsc::Sender<Conn>,
}

impl Ways {
    /// Hands `conn` to its server, `alpn` being what TLS agreed on.
    async fn send(&self, mut conn: Conn, alpn: Option<Vec<u8>>) {
        let h2 = match alpn.as_deref() {
            Some(b"h2") => true,
            Some(b"http/1.1") => false,
            _ => match tokio::time::timeout(HANDSHAKE_TIMEOUT, sniff(&mut conn)).await {
                Ok(Ok(h2)) => h2,
                _ => return debug!(remote = ?conn.info.remote, "a connection sent no request in time; closed"),
            },
        };
        if h2 {
            let _ = self.h2.send(Ok(conn)).await;
        } else {
            let _ = self.http1.send(conn).await;
        }
    }
}

/// Reads a connection's first three bytes (kept for its server): whether
/// they begin HTTP/2's preface (`PRI * HTTP/2.0`), which no HTTP/1 method
/// does.
async fn sniff(conn: &mut Conn) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut first = [0u8; 3];
    let mut got = 0;
    while got < first.len() {
        let n = match &mut conn.io {
            Io::Plain(s) => s.read(&mut first[got..]).await?,
            Io::Tls(s) => s.read(&mut first[got..]).await?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    conn.sniffed = first.to_vec();
    Ok(&first == b"PRI")
}

/// Accepts on `listener` for as long as the returned streams are read;
/// `acceptor` is `None` under `--insecure`.
pub fn incoming(listener: TcpListener, acceptor: Option<TlsAcceptor>) -> Incoming {
    let (tx, rx) = mpsc::channel(128);
    let (http1_tx, http1_rx) = mpsc::channel(128);
    let ways = Ways { h2: tx, http1: http1_tx };
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
            // A client that vanished without a word (a browser's console
            // left open on a laptop that went to sleep) is found and its
            // connection closed; HTTP/2 has its own pings, HTTP/1.1 none.
            let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let Some(acceptor) = acceptor.clone() else {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    debug!(%remote, "too many connections telling their protocol; closing the new one");
                    continue;
                };
                let info = PeerInfo { remote: Some(remote), cert: None, tls: false };
                let conn = Conn { io: Io::Plain(tcp), sniffed: Vec::new(), info, _slot: None };
                let ways = ways.clone();
                tokio::spawn(async move {
                    ways.send(conn, None).await;
                    drop(permit);
                });
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
            let ways = ways.clone();
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
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let info = PeerInfo { remote: Some(remote), cert, tls: true };
                let conn = Conn { io: Io::Tls(Box::new(tls)), sniffed: Vec::new(), info, _slot: Some(slot) };
                ways.send(conn, alpn).await;
            });
        }
    });
    Incoming { h2: tokio_stream::wrappers::ReceiverStream::new(rx), http1: http1_rx }
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
