//! A WebSocket client as a browser's page opens the UI's consoles: over
//! TLS with the cluster CA, HTTP/1.1 (ALPN), any headers (Origin, Cookie,
//! a token), some bytes sent, and whatever comes back until the server
//! closes or the wait ends.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};

/// What a WebSocket open came to.
#[derive(Debug, Default)]
pub struct Opened {
    /// 101 if it opened; else the refusal's status and body.
    pub status: u16,
    pub refusal: String,
    /// The binary messages' bytes, in order.
    pub received: Vec<u8>,
    /// The server's close frame (code, reason), if it closed.
    pub close: Option<(u16, String)>,
}

/// Opens `wss://kvmesh-node:PORT{path}` at `address` (trusting `ca_pem`),
/// sends `send` (if any) once open, and reads until closed or `wait` ends.
pub fn websocket(
    address: &str,
    ca_pem: &str,
    path: &str,
    headers: &[(&str, &str)],
    send: &[u8],
    wait: Duration,
) -> Result<Opened> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // As browsers open WebSockets: HTTP/1.1.
        let tls = crate::tls_client_config(ca_pem, b"http/1.1")?;
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let name = rustls::pki_types::ServerName::try_from("kvmesh-node")?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await?;
        let port = address.rsplit(':').next().unwrap_or_default();
        let mut request = format!("wss://kvmesh-node:{port}{path}").into_client_request()?;
        for (k, v) in headers {
            request.headers_mut().insert(http_name(k)?, v.parse()?);
        }
        let (mut socket, _) = match tokio_tungstenite::client_async(request, stream).await {
            Ok(opened) => opened,
            Err(Error::Http(response)) => {
                let refusal =
                    response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                return Ok(Opened { status: response.status().as_u16(), refusal, ..Default::default() });
            }
            Err(e) => return Err(e.into()),
        };
        let mut opened = Opened { status: 101, ..Default::default() };
        if !send.is_empty() {
            socket.send(Message::Binary(send.to_vec().into())).await?;
        }
        let _ = tokio::time::timeout(wait, async {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(Message::Binary(b)) => opened.received.extend_from_slice(&b),
                    Ok(Message::Close(frame)) => {
                        opened.close =
                            Some(frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string())));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
        Ok(opened)
    })
}

fn http_name(name: &str) -> Result<tokio_tungstenite::tungstenite::http::HeaderName> {
    Ok(name.parse()?)
}
