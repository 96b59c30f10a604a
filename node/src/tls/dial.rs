//! Outgoing connections: tonic channels whose every (re)connection does a
//! TLS handshake with the client configuration of the moment, so a renewed
//! node certificate is used from the next connection on, and a channel
//! made before a renewal never reconnects with an expired one.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::ca::SERVER_NAME;

/// How a node or the CLI reaches a node.
#[derive(Clone)]
pub enum Dialer {
    /// `serve --insecure`: plaintext, loopback only.
    Plain,
    Tls(Arc<rustls::ClientConfig>),
}

impl Dialer {
    /// A lazily connecting channel to `address` (`host:port`).
    pub fn channel(&self, address: &str, connect_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
        let endpoint = endpoint(address, connect_timeout)?;
        Ok(match self {
            Dialer::Plain => endpoint.connect_lazy(),
            Dialer::Tls(config) => endpoint.connect_with_connector_lazy(connector(config.clone(), connect_timeout)),
        })
    }

    /// A channel to `address` that is connected now (the CLI: an
    /// unreachable node is reported before anything is sent).
    pub async fn connect(&self, address: &str, connect_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
        let endpoint = endpoint(address, connect_timeout)?;
        match self {
            Dialer::Plain => endpoint.connect().await,
            Dialer::Tls(config) => endpoint.connect_with_connector(connector(config.clone(), connect_timeout)).await,
        }
    }
}

fn endpoint(address: &str, connect_timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10)))
}

/// Dials TCP, then TLS with `config` as it is at that moment.
fn connector(
    config: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |uri: http::Uri| {
        let config = config.clone();
        async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let connect = async {
                let tcp = TcpStream::connect(&authority).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
                TlsConnector::from(config).connect(name, tcp).await
            };
            let tls = tokio::time::timeout(connect_timeout, connect).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS connection to {authority} within {connect_timeout:?}"),
                )
            })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })
}
