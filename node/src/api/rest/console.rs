//! The guest's consoles as WebSockets, for the web UI: the serial console
//! (xterm.js) and the display (noVNC). Each is `Vms/Attach` with the
//! socket's binary messages as its frames, so it reaches the VM from any
//! node, as `vm console` and `vm vnc` do, and takes one serial session at
//! a time the same way (`?force=true` takes it over).
//!
//! What can be checked before the upgrade is (the VM exists and runs), so
//! a refusal is a problem document; what fails after it closes the socket
//! with code 4000 + the gRPC code and the message as its reason (a
//! browser cannot read the body of a refused handshake).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, State};
use axum::response::Response;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use kvmesh_proto as pb;
use serde::Deserialize;
use tonic::Status;
use utoipa::IntoParams;

use super::body::{params, query, Q};
use super::{problem, Answer, Body, Rest, Route};

pub const SERIAL: Route = Route {
    method: "GET",
    path: "/api/v1/vms/{name}/serial",
    grpc: "/kvmesh.v1.Vms/Attach",
    summary: "The VM's serial console as a WebSocket (binary messages: the bytes both ways)",
    handler: || get(serial),
    query: params::<AttachQuery>,
    body: Body::None,
    answer: Answer::WebSocket,
};
pub const VNC: Route = Route {
    method: "GET",
    path: "/api/v1/vms/{name}/vnc",
    grpc: "/kvmesh.v1.Vms/Attach",
    summary: "The VM's display as a WebSocket carrying RFB (what noVNC speaks)",
    handler: || get(vnc),
    query: params::<AttachQuery>,
    body: Body::None,
    answer: Answer::WebSocket,
};

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
struct AttachQuery {
    /// Take the serial console over from the session that holds it.
    #[serde(default)]
    force: bool,
}

/// The upgrade, if the request asked for one.
pub struct Upgrade(Result<WebSocketUpgrade, String>);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Upgrade(WebSocketUpgrade::from_request_parts(parts, state).await.map_err(|e| e.body_text())))
    }
}

async fn serial(State(r): State<Rest>, Path(name): Path<String>, q: Q<AttachQuery>, ws: Upgrade) -> Response {
    open(r, name, pb::AttachKind::Serial, q, ws)
}

async fn vnc(State(r): State<Rest>, Path(name): Path<String>, q: Q<AttachQuery>, ws: Upgrade) -> Response {
    open(r, name, pb::AttachKind::Vnc, q, ws)
}

fn open(r: Rest, name: String, kind: pb::AttachKind, q: Q<AttachQuery>, Upgrade(ws): Upgrade) -> Response {
    let force = match query(q) {
        Ok(q) => q.force,
        Err(status) => return problem(&status),
    };
    if let Err(status) = crate::api::attach::running_host(&r.ctx, &name) {
        return problem(&status);
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(why) => {
            return problem(&Status::invalid_argument(format!(
                "this is a WebSocket: open it with an HTTP/1.1 GET with `Upgrade: websocket` ({why})"
            )))
        }
    };
    let caller = crate::auth::caller();
    // noVNC offers no subprotocol; websockify's clients offer `binary`.
    ws.protocols(["binary"]).on_upgrade(move |socket| async move {
        let bridged = bridge(r, name, kind, force, socket);
        match caller {
            Some(caller) => crate::auth::CALLER.scope(caller, bridged).await,
            None => bridged.await,
        }
    })
}

/// How often the server pings an open console...
const PING_EVERY: Duration = Duration::from_secs(20);
/// ...and how long a browser may stay silent (no pong, no keystroke)
/// before its session is ended: a vanished page must not hold the serial
/// console, nor the relay to the VM's host, for good.
const SILENT_FOR: Duration = Duration::from_secs(60);

/// Pumps the socket's messages into an attach and the attach's bytes back,
/// until either ends, or the browser goes silent. Whatever ends it ends
/// the attach too (its input stops), so the console's claim and the relay
/// to the VM's host go with it.
async fn bridge(r: Rest, vm: String, kind: pb::AttachKind, force: bool, socket: WebSocket) {
    let (mut to_browser, from_browser) = socket.split();
    let first = pb::AttachFrame { open: Some(pb::AttachOpen { vm, kind: kind as i32, force }), ..Default::default() };
    let heard = Arc::new(Mutex::new(Instant::now()));
    let heard_in = heard.clone();
    let (_ended, ending) = tokio::sync::oneshot::channel::<()>();
    let typed = from_browser
        .take_while(|m| {
            std::future::ready(matches!(
                m,
                Ok(Message::Binary(_) | Message::Text(_) | Message::Ping(_) | Message::Pong(_))
            ))
        })
        .filter_map(move |m| {
            *heard_in.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            async move {
                let data = match m {
                    Ok(Message::Binary(b)) => b.to_vec(),
                    Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                    _ => return None,
                };
                Some(Ok(pb::AttachFrame { data, ..Default::default() }))
            }
        })
        // Dropping `_ended` (this function returning) ends the input.
        .take_until(ending);
    let inbound = futures::stream::once(async { Ok(first) }).chain(typed);
    let mut from_guest = match crate::api::attach::attach(&r.ctx, Box::pin(inbound)).await {
        Ok(stream) => stream,
        Err(status) => return close(&mut to_browser, Some(&status)).await,
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            frame = from_guest.next() => frame,
            _ = ping.tick() => {
                let silent = heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                if silent > SILENT_FOR {
                    let gone = Status::deadline_exceeded(format!("the browser said nothing for {} s", silent.as_secs()));
                    return close(&mut to_browser, Some(&gone)).await;
                }
                if to_browser.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        match frame {
            None => break,
            // The host's name frame is for the CLI; noVNC would read it as RFB.
            Some(Ok(frame)) if frame.data.is_empty() => continue,
            Some(Ok(frame)) => {
                if to_browser.send(Message::Binary(frame.data.into())).await.is_err() {
                    return;
                }
            }
            Some(Err(status)) => return close(&mut to_browser, Some(&status)).await,
        }
    }
    close(&mut to_browser, None).await;
}

/// Closes the socket: normally, or with 4000 + the gRPC code and as much
/// of the message as a close frame holds (123 bytes).
async fn close(socket: &mut futures::stream::SplitSink<WebSocket, Message>, status: Option<&Status>) {
    let frame = match status {
        None => CloseFrame { code: 1000, reason: "the console ended".into() },
        Some(s) => {
            let mut reason = s.message().to_string();
            while reason.len() > 123 {
                reason.pop();
            }
            CloseFrame { code: 4000 + s.code() as u16, reason: reason.into() }
        }
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}
