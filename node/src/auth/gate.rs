//! The gate every request passes where it arrives, before any handler or
//! forwarding: it establishes the caller from the connection (a node or
//! client certificate, checked against the revocation list) or from an API
//! token, applies [`policy::decide`], and runs the handler with the caller
//! in [`CALLER`].
//!
//! A forwarded caller (the principal header) is believed only over a node
//! certificate; from anyone else the header is refused outright, so a
//! client cannot borrow another identity.
//!
//! A browser brings credentials by itself (a client certificate, the UI's
//! session cookie), so a page of another site could make it send a request
//! that changes something. Such requests (REST writes, WebSocket opens)
//! are refused when the browser says they come from another origin, and
//! one made with the session cookie must also carry the session's CSRF
//! token, which only this origin's pages can read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use kvmesh_proto::{NOT_A_MEMBER, NOT_INITIALIZED};
use kvmesh_raft::store::SharedState;
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

use super::{parse_forwarded, policy, tokens, Caller, Principal, Role, CALLER, PRINCIPAL_HEADER};
use crate::tls::ca::Subject;
use crate::tls::listen::PeerInfo;

/// Raft's view, for the membership index a refusal of a removed node names.
type Metrics = tokio::sync::watch::Receiver<kvmesh_raft::types::RaftMetrics>;

#[derive(Clone)]
pub struct GateLayer {
    state: SharedState,
    metrics: Metrics,
    /// `serve --insecure`: the one case without TLS, decided by the
    /// server's configuration, never by what a connection looks like.
    insecure: bool,
}

impl GateLayer {
    pub fn new(state: SharedState, metrics: Metrics, insecure: bool) -> Self {
        GateLayer { state, metrics, insecure }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, state: self.state.clone(), metrics: self.metrics.clone(), insecure: self.insecure }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    state: SharedState,
    metrics: Metrics,
    insecure: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is not ready; the one that was polled ready serves.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // A REST request is the gRPC method its route names, for the
        // policy as for everything else. One that no route takes is
        // answered here (404 or 405), so it reaches no handler at all.
        let path = request.uri().path().to_string();
        let ui = crate::ui::is_ui(&path);
        let rest = crate::api::rest::is_rest(&path) || ui;
        let method = match (rest, crate::api::rest::grpc_method(request.method(), &path)) {
            _ if ui => crate::ui::METHOD.to_string(),
            (false, _) => path.clone(),
            (true, Some(grpc)) => grpc.to_string(),
            (true, None) => {
                let response = crate::api::rest::unrouted(request.method(), &path);
                let response = crate::api::rest::for_method(request.method(), response).map(Body::new);
                return Box::pin(async move { Ok(response) });
            }
        };
        let http_method = request.method().clone();
        let started = std::time::Instant::now();
        let refused_method = method.clone();
        let refuse = move |status: Status, request: http::Request<Body>| -> Self::Future {
            tracing::debug!(path = %path, code = ?status.code(), "request refused at the gate");
            if !rest {
                let response = status.into_http();
                crate::api::metrics::time_call(&refused_method, &response, started.elapsed());
                return Box::pin(async move { Ok(response) });
            }
            let response =
                crate::api::rest::for_method(&http_method, crate::api::rest::problem(&status)).map(Body::new);
            // The body is read first: an HTTP/2 answer sent while the
            // client still sends resets the stream, and the client would
            // see no answer at all instead of the refusal.
            Box::pin(async move {
                crate::api::rest::drain(axum::body::Body::new(request.into_body())).await;
                crate::api::metrics::time_call(&refused_method, &response, started.elapsed());
                Ok(response)
            })
        };
        if let Some(refusal) = uninitialized(&self.state, &method) {
            return refuse(refusal, request);
        }
        // Every path: a browser sends a client certificate to gRPC paths
        // too (a no-cors POST of a gRPC frame), and gRPC clients send no
        // Origin.
        if let Some(refusal) = cross_origin(&request).or_else(|| self.insecure.then(|| rebound(&request)).flatten()) {
            return refuse(refusal, request);
        }
        // `serve --insecure` has no credentials to check: nodes and users
        // alike may call everything (loopback only).
        let decided = identify(&self.state, &self.metrics, self.insecure, &request).and_then(|caller| {
            if !self.insecure {
                policy::decide(&method, &caller)?;
            }
            Ok(caller)
        });
        match decided {
            Ok(caller) => {
                let call = CALLER.scope(caller, inner.call(request));
                Box::pin(async move {
                    let response = call.await?;
                    // Counted once answered, and not when no such method
                    // exists: callers must not mint label values.
                    let unimplemented = response.headers().get("grpc-status").is_some_and(|s| s == "12");
                    if !unimplemented {
                        crate::api::metrics::count_call(&method);
                        crate::api::metrics::time_call(&method, &response, started.elapsed());
                    }
                    Ok(response)
                })
            }
            Err(status) => refuse(status, request),
        }
    }
}

/// The refusal of a user's call on a node that belongs to no cluster yet:
/// before any credential is checked (it has no tokens to check them
/// against), saying how to make it one. `cluster init`, joins, health,
/// status and Raft itself pass.
fn uninitialized(state: &SharedState, path: &str) -> Option<Status> {
    let user_call = matches!(policy::need(path), policy::Need::Role(_))
        && path != "/kvmesh.v1.Cluster/Status"
        && !path.starts_with("/grpc.");
    let initialized = || state.read().unwrap_or_else(|p| p.into_inner()).state.cluster_id().is_some();
    if !user_call || initialized() {
        return None;
    }
    Some(Status::failed_precondition(format!(
        "{NOT_INITIALIZED}: this node is not in a cluster yet. Run `kvmesh cluster init` against it to found a new \
         cluster, or start it with `kvmesh serve --join MEMBER --join-token TOKEN` to join one (a member's \
         `kvmesh cluster token create` makes the token); if it was started with --join, the join has not finished: \
         its log says why"
    )))
}

/// Who sent `request`.
fn identify<B>(
    state: &SharedState,
    metrics: &Metrics,
    insecure: bool,
    request: &http::Request<B>,
) -> Result<Caller, Status> {
    let peer = request.extensions().get::<PeerInfo>().cloned();
    let source = peer.as_ref().and_then(|p| p.remote).map(|a| a.to_string()).unwrap_or_default();
    let forwarded = request.headers().get(PRINCIPAL_HEADER).map(|v| v.to_str().unwrap_or(""));
    if insecure {
        // `serve --insecure` (loopback only): everyone is an admin.
        if let Some(caller) = forwarded.and_then(parse_forwarded) {
            return Ok(caller);
        }
        return Ok(Caller { principal: Principal::User { name: "insecure".into(), role: Role::Admin }, source });
    }
    let Some(peer) = peer.filter(|p| p.tls) else {
        return Err(Status::internal("a connection without TLS reached a TLS server; refused"));
    };
    let data = state.read().unwrap_or_else(|p| p.into_inner());
    let security = &data.state.meta.security;
    if let Some(cert) = &peer.cert {
        if security.is_revoked(&cert.fingerprint) {
            if let Some(Subject::Client { name, .. }) = &cert.subject {
                return Err(Status::unauthenticated(format!(
                    "client certificate {name} was revoked (`kvmesh cert revoke`); ask an admin for a new one"
                )));
            }
            return Err(not_a_member(metrics, "this certificate was revoked (its node was removed from the cluster)"));
        }
        match &cert.subject {
            // Refused for what this replica knows for sure (a revocation
            // is committed and never undone), never for what it may not
            // know yet: a lagging replica has not heard of a new member.
            Some(Subject::Node(name)) => {
                // A node's own internal calls made while it serves a user
                // (asking the leader what hosts observe) are the node's.
                let internal = policy::need(request.uri().path()) == policy::Need::Internal;
                if let (Some(value), false) = (forwarded, internal) {
                    return parse_forwarded(value)
                        .ok_or_else(|| Status::invalid_argument(format!("malformed {PRINCIPAL_HEADER} header")));
                }
                return Ok(Caller { principal: Principal::Node(name.clone()), source });
            }
            Some(Subject::Client { name, role }) => {
                refuse_forgery(forwarded)?;
                let role = Role::parse(role).ok_or_else(|| {
                    Status::unauthenticated(format!("client certificate {name}: unknown role {role}"))
                })?;
                return Ok(Caller { principal: Principal::User { name: name.clone(), role }, source });
            }
            None => {}
        }
    }
    refuse_forgery(forwarded)?;
    let Some(auth) = request.headers().get(http::header::AUTHORIZATION) else {
        if crate::api::rest::is_rest(request.uri().path()) {
            if let Some(principal) = by_session(security, request)? {
                return Ok(Caller { principal, source });
            }
        }
        return Ok(Caller { principal: Principal::Anonymous, source });
    };
    let invalid = || {
        Status::unauthenticated(
            "the API token is not valid: unknown, revoked, or a wrong secret (`kvmesh token list` shows the valid ones)",
        )
    };
    let token = auth.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(invalid)?;
    let (name, secret) = tokens::parse_api_token(token.trim()).ok_or_else(invalid)?;
    let record = security.api_tokens.get(name).ok_or_else(invalid)?;
    if !tokens::same(&record.hash, &tokens::hash(secret)) {
        return Err(invalid());
    }
    let role = Role::parse(&record.role).ok_or_else(invalid)?;
    Ok(Caller { principal: Principal::User { name: name.to_string(), role }, source })
}

/// The user a REST request's session cookie stands for (the web UI's
/// login), if it carries a valid one; a request that changes something
/// must carry the session's CSRF token too. A stale or foreign cookie
/// (another cluster on this host: cookies are per host, not per port)
/// counts as none.
fn by_session<B>(
    security: &kvmesh_raft::security::Security,
    request: &http::Request<B>,
) -> Result<Option<Principal>, Status> {
    use crate::ui::session;
    let cookies = request.headers().get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let (Some(ticket), Some(ca)) = (session::cookie(cookies), security.ca.as_ref()) else {
        return Ok(None);
    };
    let key = session::Key::from_ca(&ca.key_pem);
    let record = |name: &str| security.api_tokens.get(name).map(|r| r.hash.clone());
    let Ok(found) = session::verify(&key, ticket, record, crate::ctx::now_ms()) else {
        return Ok(None);
    };
    let Some(role) = security.api_tokens.get(&found.name).and_then(|r| Role::parse(&r.role)) else {
        return Ok(None);
    };
    let reads = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
    let csrf = request.headers().get(crate::ui::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !reads && !session::csrf_matches(&key, ticket, csrf) {
        return Err(Status::permission_denied(format!(
            "this request came with the web UI's session cookie but without its CSRF token ({}): a page of \
             another site may not act for you; the UI sends it, scripts use an API token instead",
            crate::ui::CSRF_HEADER
        )));
    }
    Ok(Some(Principal::User { name: found.name, role }))
}

/// The refusal of a request that would change something, or open a
/// WebSocket, sent by a browser from a page of another origin: its
/// `Origin` names another host than the one it asked, or its
/// `Sec-Fetch-Site` says cross-site. Clients that are not browsers send
/// neither and pass.
fn cross_origin<B>(request: &http::Request<B>) -> Option<Status> {
    let headers = request.headers();
    let upgrade = headers.get(http::header::UPGRADE).is_some();
    if !upgrade && matches!(*request.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) {
        return None;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let origin = headers.get(http::header::ORIGIN).map(|o| o.to_str().unwrap_or("null"));
    // `null` (a sandboxed page, a file) or a malformed Origin is nobody's.
    let origin_host = origin.map(|o| o.split_once("://").map_or("", |(_, h)| h));
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let foreign =
        origin_host.is_some_and(|h| h.is_empty() || !h.eq_ignore_ascii_case(host)) || site == Some("cross-site");
    foreign.then(|| {
        Status::permission_denied(format!(
            "a request from a page of another site (Origin: {}) may not change anything here nor open a console; \
             use the web UI served by this node, or the CLI or REST with an API token",
            origin.unwrap_or("none")
        ))
    })
}

/// Under `serve --insecure` (everyone an admin, loopback only): the
/// refusal of a request that names another host than the loopback, which
/// is what a page of another site does after rebinding its own name to
/// 127.0.0.1 (its Origin then equals its Host).
fn rebound<B>(request: &http::Request<B>) -> Option<Status> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))?;
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let loopback =
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        Status::permission_denied(format!(
            "this node serves --insecure (loopback only): a request for host {host:?} is refused; use 127.0.0.1 or localhost"
        ))
    })
}

/// The refusal a removed node's certificate gets. It reads as the refusal
/// the node's own Raft and heartbeat already understand ([`NOT_A_MEMBER`],
/// with the committed membership it stems from), so a removed node that
/// missed its removal learns it from this answer and stops.
fn not_a_member(metrics: &Metrics, why: &str) -> Status {
    let m = metrics.borrow();
    let committed = match (m.membership_config.log_id(), m.last_applied) {
        (Some(c), Some(a)) if c.index <= a.index => Some(c.index),
        _ => None,
    };
    let at = committed.map(|i| format!(" at {i}")).unwrap_or_default();
    Status::failed_precondition(format!(
        "{NOT_A_MEMBER}{at}: {why}; a removed node rejoins with an empty data dir and a new join token"
    ))
}

fn refuse_forgery(forwarded: Option<&str>) -> Result<(), Status> {
    match forwarded {
        Some(_) => Err(Status::permission_denied(format!(
            "the {PRINCIPAL_HEADER} header is for requests forwarded between cluster nodes; a client may not set it"
        ))),
        None => Ok(()),
    }
}
