//! The event log as Server-Sent Events: what a browser's `EventSource`
//! and `curl -N` follow. The caller is checked once, when the stream
//! opens; each poll runs as that caller.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use kvmesh_proto as pb;
use pb::cluster_server::Cluster;
use tonic::Request;

use super::body::{query, Q};
use super::cluster::EventsQuery;
use super::{problem, Rest};

/// The event log as Server-Sent Events, from `after` on and following it:
/// each event one `data:` line of `event_json`, its sequence number as the
/// SSE id (a reconnecting browser sends it back as `Last-Event-ID`). The
/// caller is checked once, when the stream opens.
pub async fn events_stream(State(r): State<Rest>, q: Q<EventsQuery>, headers: axum::http::HeaderMap) -> Response {
    use axum::response::sse::{Event, Sse};
    let after = match query(q) {
        Ok(q) => q.after,
        Err(status) => return problem(&status),
    };
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let after: u64 = resumed.unwrap_or(after);
    let caller = crate::auth::caller();
    // (rest, the last sequence number sent; None once an error ended it)
    let stream = futures::stream::unfold((r, Some(after)), move |(r, after)| {
        let caller = caller.clone();
        async move {
            let mut after = after?;
            // A comment every 15 s of quiet keeps proxies from closing it.
            let mut quiet = 0;
            loop {
                let ask = r.cluster.list_events(Request::new(pb::ListEventsRequest { after }));
                let answer = match caller.clone() {
                    Some(c) => crate::auth::CALLER.scope(c, ask).await,
                    None => ask.await,
                };
                let events = match answer {
                    Ok(a) => a.into_inner().events,
                    // Said once; the client reconnects from its last id.
                    Err(status) => {
                        let e = Event::default().event("error").data(status.message().to_string());
                        return Some((vec![Ok::<_, std::convert::Infallible>(e)], (r, None)));
                    }
                };
                if events.is_empty() {
                    quiet += 1;
                    if quiet == 30 {
                        return Some((vec![Ok(Event::default().comment("keep-alive"))], (r, Some(after))));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
                let known = super::cluster::known_nodes(&r).await;
                let out = events
                    .iter()
                    .map(|e| {
                        Ok(Event::default()
                            .id(e.seq.to_string())
                            .data(crate::view::json(crate::view::Event::new(e, &known)).to_string()))
                    })
                    .collect();
                after = events.iter().map(|e| e.seq).max().unwrap_or(after);
                return Some((out, (r, Some(after))));
            }
        }
    });
    let flat = futures::StreamExt::flat_map(stream, futures::stream::iter);
    Sse::new(flat).into_response()
}
