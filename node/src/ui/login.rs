//! Logging in to the web UI: an API token, given once, becomes a session
//! cookie (a signed ticket, [`super::session`]) and a CSRF token the page
//! keeps in memory. Any node checks the cookie; revoking the token ends
//! the session. Under `serve --insecure` every caller is an admin and
//! there is nothing to log in to.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{problem, session};
use crate::auth::tokens;
use crate::ctx::NodeCtx;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// An API token, `kvm1.<name>.<secret>` (`kvmesh token create`).
    token: String,
}

/// A session, as the page learns it.
#[derive(Serialize)]
pub struct SessionView {
    name: String,
    role: String,
    /// Sent back in `X-Kvmesh-Csrf` with every write.
    csrf: String,
    expires_ms: u64,
    /// The node that answered.
    node: String,
}

/// `POST /ui/login {"token": …}`: a JSON body only (a cross-site form
/// cannot send one, so no page of another site logs a browser in).
pub async fn login(State(ctx): State<Arc<NodeCtx>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if ctx.config.insecure {
        return insecure(&ctx);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "log in with a JSON body {\"token\": \"kvm1.NAME.SECRET\"} (Content-Type: application/json)",
        );
    }
    let login: Login = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("the login body is not {{\"token\": \"kvm1.NAME.SECRET\"}}: {e}"),
            )
        }
    };
    let refused = || {
        problem(
            StatusCode::UNAUTHORIZED,
            "the API token is not valid: unknown, revoked, or a wrong secret (an admin makes one with `kvmesh token create NAME --role viewer|operator|admin`)",
        )
    };
    let Some((name, secret)) = tokens::parse_api_token(login.token.trim()) else {
        return refused();
    };
    let found = ctx.read(|d| {
        let security = &d.state.meta.security;
        let record = security.api_tokens.get(name)?;
        let key = session::Key::from_ca(&security.ca.as_ref()?.key_pem);
        Some((record.hash.clone(), record.role.clone(), key))
    });
    let Some((hash, role, key)) = found.filter(|(hash, _, _)| tokens::same(hash, &tokens::hash(secret))) else {
        return refused();
    };
    let ticket = session::mint(&key, name, &hash, crate::ctx::now_ms());
    tracing::info!(token = name, "web UI login");
    let view = SessionView {
        name: name.to_string(),
        role,
        csrf: session::csrf(&key, &ticket),
        expires_ms: crate::ctx::now_ms() + session::LIFETIME_MS,
        node: ctx.name.clone(),
    };
    with_cookie(axum::Json(view).into_response(), Some(&ticket))
}

/// `GET /ui/session`: who the cookie says the caller is (after a reload,
/// the page gets its CSRF token again here).
pub async fn session(State(ctx): State<Arc<NodeCtx>>, headers: HeaderMap) -> Response {
    if ctx.config.insecure {
        return insecure(&ctx);
    }
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let ticket = session::cookie(cookies).unwrap_or("").to_string();
    let found = ctx.read(|d| {
        let security = &d.state.meta.security;
        let key = session::Key::from_ca(&security.ca.as_ref()?.key_pem);
        let record = |name: &str| security.api_tokens.get(name).map(|r| r.hash.clone());
        let s = session::verify(&key, &ticket, record, crate::ctx::now_ms()).ok()?;
        let role = security.api_tokens.get(&s.name)?.role.clone();
        Some((s, role, key))
    });
    let Some((s, role, key)) = found else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "no session: log in with an API token (a session lasts 12 hours, and ends when its token is revoked)",
        );
    };
    let view = SessionView {
        csrf: session::csrf(&key, &ticket),
        expires_ms: s.expires_ms(),
        name: s.name,
        role,
        node: ctx.name.clone(),
    };
    let mut response = axum::Json(view).into_response();
    // It carries the CSRF token: no cache keeps it.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /ui/logout`: the browser forgets the cookie. (The ticket itself
/// stays valid until it expires or its token is revoked.)
pub async fn logout() -> Response {
    with_cookie(StatusCode::NO_CONTENT.into_response(), None)
}

fn with_cookie(mut response: Response, ticket: Option<&str>) -> Response {
    if let Ok(cookie) = HeaderValue::from_str(&session::set_cookie(ticket)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Under `serve --insecure` (loopback only) everyone is an admin.
fn insecure(ctx: &NodeCtx) -> Response {
    let view = SessionView {
        name: "insecure".into(),
        role: "admin".into(),
        csrf: String::new(),
        expires_ms: u64::MAX / 2,
        node: ctx.name.clone(),
    };
    axum::Json(view).into_response()
}
