//! REST/JSON under `/api/v1`, on the gRPC port (HTTP/1.1 and HTTP/2).
//!
//! Every route is exactly one gRPC method ([`ROUTES`]), called in-process:
//! the gate authenticates the caller and decides with the gRPC method's
//! row of the policy table, and the handler calls the same service the
//! gRPC client reaches, so forwarding to the leader, every check and every
//! message are the gRPC ones: there is no second write path. Answers are
//! the CLI's `-o json` shapes (`crate::view`). Errors are
//! `application/problem+json` (RFC 9457) carrying the gRPC message, with
//! the HTTP status grpc-gateway maps its code to.

mod body;
mod cluster;
mod console;
mod openapi;
mod resources;
mod spec;
mod stream;
mod vms;

use std::sync::Arc;

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use serde_json::json;
use tonic::{Code, Status};
use utoipa::openapi::path::Parameter;
use utoipa::openapi::{RefOr, Schema};

use super::cluster::ClusterService;
use super::networks::NetworksService;
use super::security::SecurityService;
use super::storage::{ImagesService, StorageService};
use super::vms::VmsService;

/// One REST operation: exactly one gRPC method, its handler, and what the
/// OpenAPI document says of it.
pub struct Route {
    pub method: &'static str,
    /// With `{parameters}`, as axum writes them.
    pub path: &'static str,
    /// The gRPC method it is: the gate's policy decides with its row.
    pub grpc: &'static str,
    pub summary: &'static str,
    pub handler: fn() -> MethodRouter<Rest>,
    /// Its query parameters (OpenAPI).
    pub query: fn() -> Vec<Parameter>,
    /// Its request body (OpenAPI).
    pub body: Body,
    /// Its answer (OpenAPI).
    pub answer: Answer,
}

/// What a route takes as its body.
pub enum Body {
    None,
    /// A JSON document of this schema.
    Json(fn() -> RefOr<Schema>),
    /// The same, or none at all (every field has its default).
    OptionalJson(fn() -> RefOr<Schema>),
    /// Raw bytes (an image upload).
    Bytes,
}

/// What a route answers with when it succeeds.
pub enum Answer {
    /// A JSON document of this schema (an `ETag` with it on reads).
    Json(fn() -> RefOr<Schema>),
    /// Server-Sent Events, one event's JSON each.
    Events,
    /// 204, nothing.
    Nothing,
    /// 101: the connection becomes a WebSocket.
    WebSocket,
}

/// The one table the router, the gate's policy and the OpenAPI document read.
pub static ROUTES: &[Route] = &[
    cluster::STATUS,
    cluster::EVENTS,
    cluster::EVENTS_STREAM,
    cluster::POLICY_GET,
    cluster::POLICY_PUT,
    cluster::CAPACITY,
    cluster::BALANCE,
    cluster::TOKENS,
    cluster::TOKEN_CREATE,
    cluster::TOKEN_REVOKE,
    cluster::NODES,
    cluster::NODE,
    cluster::DRAIN,
    cluster::ACTIVATE,
    vms::LIST,
    vms::GET,
    vms::PUT,
    vms::DELETE,
    vms::EXPLAIN,
    vms::START,
    vms::STOP,
    vms::RESTART,
    vms::MIGRATE,
    vms::CONSOLE,
    console::SERIAL,
    console::VNC,
    resources::STORAGE_LIST,
    resources::STORAGE_GET,
    resources::STORAGE_PUT,
    resources::STORAGE_DELETE,
    resources::IMAGES,
    resources::IMAGE_GET,
    resources::IMAGE_UPLOAD,
    resources::IMAGE_DELETE,
    resources::NETWORKS,
    resources::NETWORK_GET,
    resources::NETWORK_PUT,
    resources::NETWORK_DELETE,
    openapi::DOCUMENT,
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
    ROUTES.iter().find(|r| r.method == method.as_str() && matches(r.path, path)).map(|r| r.grpc)
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
    let allowed: Vec<&str> = ROUTES.iter().filter(|r| matches(r.path, path)).map(|r| r.method).collect();
    if allowed.is_empty() {
        let routes: Vec<String> = ROUTES.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
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
    pub storage: Arc<StorageService>,
    pub images: Arc<ImagesService>,
    pub networks: Arc<NetworksService>,
    pub security: Arc<SecurityService>,
}

/// The REST router (its state bound), to be merged with the gRPC routes.
/// JSON bodies are bounded ([`JSON_LIMIT`]); an upload streams.
pub fn router(rest: Rest) -> axum::Router {
    let mut by_path: Vec<(&str, MethodRouter<Rest>)> = Vec::new();
    for route in ROUTES {
        let handler = (route.handler)();
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(handler),
            None => by_path.push((route.path, handler)),
        }
    }
    let mut r = axum::Router::new();
    for (path, methods) in by_path {
        r = r.route(path, methods);
    }
    r.route(METRICS, get(super::metrics::scrape))
        .layer(axum::middleware::from_fn(body::read_first))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(rest)
}

/// Reads and drops a refused request's body, up to 16 times
/// [`JSON_LIMIT`] (an upload refused is cut off there).
pub async fn drain(body: axum::body::Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > 16 * JSON_LIMIT {
            break;
        }
    }
}

/// The largest JSON body taken (a cloud-init user-data fits many times).
pub const JSON_LIMIT: usize = 1 << 20;

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
    let http = status
        .metadata()
        .get(body::HTTP_STATUS)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or_else(|| http_status(status.code()));
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
        assert_eq!(unrouted(&http::Method::PATCH, "/api/v1/vms/web").status(), StatusCode::METHOD_NOT_ALLOWED);
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
