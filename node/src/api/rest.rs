//! REST/JSON under `/api/v1`, on the gRPC port (HTTP/1.1 and HTTP/2).
//!
//! Every route is exactly one gRPC method ([`ROUTES`]), called in-process:
//! the gate authenticates the caller and decides with the gRPC method's
//! row of the policy table, and the handler calls the same service the
//! gRPC client reaches, so forwarding to the leader, every check and every
//! message are the gRPC ones: there is no second write path. Answers are
//! the CLI's `-o json` shapes (`crate::cli::json`). Errors are
//! `application/problem+json` (RFC 9457) carrying the gRPC message, with
//! the HTTP status grpc-gateway maps its code to.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kvmesh_proto as pb;
use pb::cluster_server::Cluster;
use pb::vms_server::Vms;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::{Code, Request, Status};

use super::cluster::ClusterService;
use super::vms::VmsService;
use crate::cli::json;

/// `(HTTP method, path with {parameters}, the gRPC method it is)`: the one
/// table the router and the gate's policy both read.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/cluster/status", "/kvmesh.v1.Cluster/Status"),
    ("GET", "/api/v1/events", "/kvmesh.v1.Cluster/ListEvents"),
    ("GET", "/api/v1/events/stream", "/kvmesh.v1.Cluster/ListEvents"),
    ("GET", "/api/v1/nodes", "/kvmesh.v1.Cluster/ListNodes"),
    ("GET", "/api/v1/nodes/{name}", "/kvmesh.v1.Cluster/GetNode"),
    ("POST", "/api/v1/nodes/{name}/drain", "/kvmesh.v1.Cluster/Drain"),
    ("POST", "/api/v1/nodes/{name}/activate", "/kvmesh.v1.Cluster/Activate"),
    ("GET", "/api/v1/vms", "/kvmesh.v1.Vms/List"),
    ("GET", "/api/v1/vms/{name}", "/kvmesh.v1.Vms/Get"),
    ("POST", "/api/v1/vms/{name}/start", "/kvmesh.v1.Vms/Start"),
    ("POST", "/api/v1/vms/{name}/stop", "/kvmesh.v1.Vms/Stop"),
    ("POST", "/api/v1/vms/{name}/restart", "/kvmesh.v1.Vms/Restart"),
];

/// Prometheus' path; the gate treats it as the pseudo-method
/// [`METRICS_METHOD`] (a viewer's read).
pub const METRICS: &str = "/metrics";
pub const METRICS_METHOD: &str = "/kvmesh.v1.Cluster/Metrics";

/// Whether `path` is the REST API's (its refusals are problem documents).
pub fn is_rest(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/") || path == METRICS
}

/// The gRPC method a REST request is, for the gate's policy; `None` for a
/// path or method no route has (the router then answers 404 or 405).
/// A HEAD is the GET it describes (axum serves it with the GET handler).
pub fn grpc_method(method: &http::Method, path: &str) -> Option<&'static str> {
    let method = if method == http::Method::HEAD { &http::Method::GET } else { method };
    if path == METRICS {
        return (method == http::Method::GET).then_some(METRICS_METHOD);
    }
    ROUTES.iter().find_map(|(m, pattern, grpc)| (*m == method.as_str() && matches(pattern, path)).then_some(*grpc))
}

/// Whether `path` is `pattern` with a non-empty segment for each `{…}`:
/// exactly, no trailing slash, no empty segment.
fn matches(pattern: &str, path: &str) -> bool {
    let (parts, given): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    parts.len() == given.len() && parts.iter().zip(&given).all(|(p, g)| (p.starts_with('{') && !g.is_empty()) || p == g)
}

/// The answer to a REST request no route takes, given by the gate itself
/// so that it reaches no handler: 405 with the methods the path takes, or
/// 404 with the API's routes.
pub fn unrouted(method: &http::Method, path: &str) -> Response {
    let allowed: Vec<&str> = ROUTES.iter().filter(|(_, p, _)| matches(p, path)).map(|(m, _, _)| *m).collect();
    if allowed.is_empty() {
        let routes: Vec<String> = ROUTES.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        let detail = format!("no route for {method} {path}; the API has: {}", routes.join(", "));
        return problem_response(StatusCode::NOT_FOUND, "Not Found", &detail);
    }
    let detail = format!("no route for {method} {path}; it takes {}", allowed.join(", "));
    let mut response = problem_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", &detail);
    if let Ok(allow) = allowed.join(", ").parse() {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// The services REST calls into.
#[derive(Clone)]
pub struct Rest {
    pub ctx: Arc<crate::ctx::NodeCtx>,
    pub vms: Arc<VmsService>,
    pub cluster: Arc<ClusterService>,
}

/// The REST router (its state bound), to be merged with the gRPC routes.
pub fn router(rest: Rest) -> axum::Router {
    let mut r = axum::Router::new();
    for (_, path, grpc) in ROUTES {
        let handler = match (*grpc, *path) {
            ("/kvmesh.v1.Cluster/ListEvents", "/api/v1/events/stream") => get(events_stream),
            ("/kvmesh.v1.Cluster/Status", _) => get(status),
            ("/kvmesh.v1.Cluster/ListEvents", _) => get(events),
            ("/kvmesh.v1.Cluster/ListNodes", _) => get(nodes),
            ("/kvmesh.v1.Cluster/GetNode", _) => get(node),
            ("/kvmesh.v1.Cluster/Drain", _) => post(drain),
            ("/kvmesh.v1.Cluster/Activate", _) => post(activate),
            ("/kvmesh.v1.Vms/List", _) => get(vms),
            ("/kvmesh.v1.Vms/Get", _) => get(vm),
            ("/kvmesh.v1.Vms/Start", _) => post(start),
            ("/kvmesh.v1.Vms/Stop", _) => post(stop),
            ("/kvmesh.v1.Vms/Restart", _) => post(restart),
            (other, _) => unreachable!("REST route {path} names {other}, which has no handler"),
        };
        r = r.route(path, handler);
    }
    r.route(METRICS, get(super::metrics::scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(rest)
}

/// Reads may ask for a linearizable answer (through the leader).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    #[serde(default)]
    consistent: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    after: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    /// Power off at once instead of asking the guest.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainQuery {
    /// Stop and start the VMs elsewhere instead of moving them live.
    #[serde(default)]
    cold: bool,
}

/// Routes that take no query parameters refuse any.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// The query string, or a problem naming what was wrong with it.
fn query<T: Default>(q: Q<T>) -> Result<T, Status> {
    q.map(|Query(t)| t).map_err(|e| Status::invalid_argument(format!("bad query string: {}", e.body_text())))
}

async fn status(State(r): State<Rest>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json::status_json(&r.cluster.status(Request::new(pb::StatusRequest {})).await?.into_inner()))
    };
    answer(result.await)
}

async fn nodes(State(r): State<Rest>, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let nodes = r.cluster.list_nodes(Request::new(pb::ListNodesRequest { consistent })).await?.into_inner();
        Ok(Value::Array(nodes.nodes.iter().map(json::node_json).collect()))
    };
    answer(result.await)
}

async fn node(State(r): State<Rest>, Path(name): Path<String>, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let node = r.cluster.get_node(Request::new(pb::GetNodeRequest { name, consistent })).await?;
        Ok(json::node_json(&node.into_inner()))
    };
    answer(result.await)
}

async fn drain(State(r): State<Rest>, Path(name): Path<String>, q: Q<DrainQuery>) -> Response {
    let result = async {
        let cold = query(q)?.cold;
        let reply = r.cluster.drain(Request::new(pb::NodeActionRequest { name: name.clone(), cold })).await?;
        Ok(json!({"node": name, "state": crate::cli::json::node_state(reply.into_inner().state)}))
    };
    answer(result.await)
}

async fn activate(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let reply = r.cluster.activate(Request::new(pb::NodeActionRequest { name: name.clone(), cold: false })).await?;
        Ok(json!({"node": name, "state": crate::cli::json::node_state(reply.into_inner().state)}))
    };
    answer(result.await)
}

async fn events(State(r): State<Rest>, q: Q<EventsQuery>) -> Response {
    let result = async {
        let after = query(q)?.after;
        let events = r.cluster.list_events(Request::new(pb::ListEventsRequest { after })).await?.into_inner();
        let known = r.cluster.list_nodes(Request::new(pb::ListNodesRequest { consistent: false })).await?;
        let known: Vec<String> = known.into_inner().nodes.into_iter().map(|n| n.name).collect();
        Ok(Value::Array(events.events.iter().map(|e| json::event_json(e, &known)).collect()))
    };
    answer(result.await)
}

/// The event log as Server-Sent Events, from `after` on and following it:
/// each event one `data:` line of `event_json`, its sequence number as the
/// SSE id (a reconnecting browser sends it back as `Last-Event-ID`). The
/// caller is checked once, when the stream opens.
async fn events_stream(State(r): State<Rest>, q: Q<EventsQuery>, headers: axum::http::HeaderMap) -> Response {
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
                let known = match r.cluster.list_nodes(Request::new(pb::ListNodesRequest { consistent: false })).await {
                    Ok(n) => n.into_inner().nodes.into_iter().map(|n| n.name).collect(),
                    Err(_) => Vec::new(),
                };
                let out = events
                    .iter()
                    .map(|e| Ok(Event::default().id(e.seq.to_string()).data(json::event_json(e, &known).to_string())))
                    .collect();
                after = events.iter().map(|e| e.seq).max().unwrap_or(after);
                return Some((out, (r, Some(after))));
            }
        }
    });
    let flat = futures::StreamExt::flat_map(stream, futures::stream::iter);
    Sse::new(flat).into_response()
}

async fn vms(State(r): State<Rest>, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let vms = r.vms.list(Request::new(pb::ListVmsRequest { consistent })).await?.into_inner();
        Ok(Value::Array(vms.vms.iter().map(json::vm_json).collect()))
    };
    answer(result.await)
}

async fn vm(State(r): State<Rest>, Path(name): Path<String>, q: Q<ReadQuery>) -> Response {
    let result = async {
        let consistent = query(q)?.consistent;
        let vm = r.vms.get(Request::new(pb::GetVmRequest { name, consistent })).await?;
        Ok(json::vm_json(&vm.into_inner()))
    };
    answer(result.await)
}

async fn start(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        Ok(json::vm_json(&r.vms.start(Request::new(pb::VmActionRequest { name, force: false })).await?.into_inner()))
    };
    answer(result.await)
}

async fn stop(State(r): State<Rest>, Path(name): Path<String>, q: Q<StopQuery>) -> Response {
    let result = async {
        let force = query(q)?.force;
        let vm = r.vms.stop(Request::new(pb::VmActionRequest { name, force })).await?;
        Ok(json::vm_json(&vm.into_inner()))
    };
    answer(result.await)
}

async fn restart(State(r): State<Rest>, Path(name): Path<String>, q: Q<NoQuery>) -> Response {
    let result = async {
        query(q)?;
        let vm = r.vms.restart(Request::new(pb::VmActionRequest { name, force: false })).await?;
        Ok(json::vm_json(&vm.into_inner()))
    };
    answer(result.await)
}

/// Anything else: a gRPC method no service has (for gRPC clients), or a
/// path that is neither REST nor gRPC (the gate answers REST paths no
/// route takes before they get here).
async fn not_found(method: Method, uri: axum::http::Uri, headers: axum::http::HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) =
            Status::unimplemented(format!("no such method: {}", uri.path())).into_http::<()>().into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    unrouted(&method, uri.path())
}

/// An answer the gate gives itself, fit for the request's method: a HEAD
/// gets the headers without the body (HTTP/2 refuses a body there).
pub fn for_method(method: &http::Method, response: Response) -> Response {
    if method != http::Method::HEAD {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::empty())
}

/// A JSON answer, or the problem document of a refusal.
fn answer(result: Result<Value, Status>) -> Response {
    match result {
        Ok(value) => (StatusCode::OK, axum::Json(value)).into_response(),
        Err(status) => problem(&status),
    }
}

/// The HTTP status for a gRPC code (grpc-gateway's mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refusal as `application/problem+json`: the gRPC message as `detail`,
/// its code as `code`.
pub fn problem(status: &Status) -> Response {
    let http = http_status(status.code());
    let mut response = problem_response(http, &format!("{:?}", status.code()), status.message());
    if let Ok(code) = format!("{:?}", status.code()).parse() {
        response.headers_mut().insert("x-kvmesh-code", code);
    }
    response
}

fn problem_response(http: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({"type": "about:blank", "title": title, "status": http.as_u16(), "detail": detail});
    (http, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_is_one_grpc_method_and_nothing_else_matches() {
        let get = http::Method::GET;
        assert_eq!(grpc_method(&get, "/api/v1/vms"), Some("/kvmesh.v1.Vms/List"));
        assert_eq!(grpc_method(&get, "/api/v1/vms/"), None, "as axum: no trailing slash");
        assert_eq!(grpc_method(&http::Method::HEAD, "/api/v1/vms"), Some("/kvmesh.v1.Vms/List"), "a HEAD is a GET");
        assert_eq!(grpc_method(&http::Method::POST, "/api/v1/vms//stop"), None, "no empty name");
        assert_eq!(unrouted(&http::Method::DELETE, "/api/v1/vms/web").status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(unrouted(&get, "/api/v1/vms//stop").status(), StatusCode::NOT_FOUND);
        assert_eq!(grpc_method(&get, "/api/v1/vms/web1"), Some("/kvmesh.v1.Vms/Get"));
        assert_eq!(grpc_method(&http::Method::POST, "/api/v1/vms/web1/stop"), Some("/kvmesh.v1.Vms/Stop"));
        assert_eq!(grpc_method(&get, "/api/v1/vms/web1/stop"), None, "a GET is no stop");
        assert_eq!(grpc_method(&get, "/api/v1/vms/web1/../../nodes"), None);
        assert_eq!(grpc_method(&get, "/api/v2/vms"), None);
        assert!(is_rest("/api/v1/vms") && !is_rest("/kvmesh.v1.Vms/List") && !is_rest("/apix"));
    }

    #[test]
    fn refusals_keep_the_grpc_message_and_get_the_usual_http_status() {
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::BAD_REQUEST);
        let r = problem(&Status::not_found("no VM named \"x\""));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
