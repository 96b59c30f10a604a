//! The HTTP/1.1 server on the API port: the same gated routes tonic
//! serves over HTTP/2, for clients that speak HTTP/1.1 (curl by default,
//! scripts, browsers' WebSockets).
//!
//! It exists because tonic's server never lets a connection be upgraded:
//! a WebSocket handshake would answer 101 and then fail ("upgrade expected
//! but low level API in use"). gRPC needs HTTP/2 and stays on tonic's
//! server; `tls::listen` sends each connection to one or the other.

use std::convert::Infallible;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tracing::debug;

use crate::tls::listen::Conn;

/// How long a client may take to send a request's headers (slow clients
/// must not hold connections open forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves every connection `connections` yields with `service` (the gated
/// routes), each request carrying its connection's `PeerInfo` as tonic's
/// server would put it there, until the listener ends.
pub async fn serve<S>(mut connections: mpsc::Receiver<Conn>, service: S)
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    while let Some(conn) = connections.recv().await {
        let info = conn.info.clone();
        let service = service.clone();
        let per_request = tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(info.clone());
            service.clone().oneshot(request.map(tonic::body::Body::new))
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(conn), TowerToHyperService::new(per_request))
                .with_upgrades()
                .await;
            if let Err(e) = served {
                debug!(error = %e, "HTTP/1.1 connection ended with an error");
            }
        });
    }
}
