//! The web UI every node serves at `/`: one page and its scripts, embedded
//! in the binary ([`assets`]), that drive the REST API with a session
//! cookie ([`login`], [`session`]). The page holds no state a reload
//! loses, and all it shows and does goes through `/api/v1`, checked like
//! any other client's calls; its consoles are WebSockets
//! (`api::rest::console`).
//!
//! For the gate, every UI path is the pseudo-method [`METHOD`], open to
//! all: pages and login need no credential.

pub mod assets;
pub mod login;
pub mod session;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::ctx::NodeCtx;

/// What the gate calls a UI request (the policy's open row).
pub const METHOD: &str = "/kvmesh.ui/Page";
/// The header a session's writes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-kvmesh-csrf";

/// Whether `path` is the UI's.
pub fn is_ui(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// The UI's routes: the page, its files, the session endpoints.
pub fn router(ctx: Arc<NodeCtx>) -> axum::Router {
    axum::Router::new()
        .route("/", get(assets::index))
        .route("/ui", get(|| async { axum::response::Redirect::permanent("/") }))
        .route("/ui/login", post(login::login))
        .route("/ui/session", get(login::session))
        .route("/ui/logout", post(login::logout))
        .route("/ui/{*path}", get(assets::file))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ctx)
}

/// What every UI answer carries: scripts, styles and connections only
/// from this origin (xterm.js sets inline styles), never framed by another
/// page, no sniffing of types, no referrer.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// A refusal as REST gives them (`application/problem+json`).
pub fn problem(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = serde_json::json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail});
    (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}
