//! What every REST handler shares: reading the query string and the JSON
//! body (a refusal names the field and says what was wrong), calling the
//! gRPC service under the caller's identity, and answering: JSON with a
//! strong `ETag` (a hash of the bytes, the same on every node for the same
//! object), `304` to a matching `If-None-Match`, `412` when a write's
//! `If-Match` no longer holds, or a problem document.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::Status;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, ToSchema};

pub type Q<T> = Result<Query<T>, QueryRejection>;

/// A JSON request body, or why it is refused. The body is always read to
/// its end first (within the size limit): an HTTP/2 answer sent while the
/// client still sends resets the stream, and the client would see no
/// answer at all instead of the refusal.
pub struct J<T>(Result<T, Status>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for J<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json") || t.trim().ends_with("+json"));
        let bytes = match read_bounded(request.into_body()).await {
            Ok(bytes) => bytes,
            Err(status) => return Ok(J(Err(status))),
        };
        // No body at all is an empty object: `POST …/balance` needs none.
        let bytes = if bytes.is_empty() { axum::body::Bytes::from_static(b"{}") } else { bytes };
        if !json && bytes.as_ref() != b"{}" {
            return Ok(J(Err(Status::invalid_argument(
                "send the body as JSON, with `Content-Type: application/json`",
            ))));
        }
        let parsed = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes));
        Ok(J(parsed.map_err(|e| match e.path().to_string().as_str() {
            "." => Status::invalid_argument(format!("bad JSON body: {}", e.inner())),
            path => Status::invalid_argument(format!("bad JSON body: {path}: {}", e.inner())),
        })))
    }
}

/// The query string, or a refusal naming what was wrong with it.
pub fn query<T>(q: Q<T>) -> Result<T, Status> {
    q.map(|Query(t)| t).map_err(|e| Status::invalid_argument(format!("bad query string: {}", e.body_text())))
}

/// A JSON body's bytes, at most [`JSON_LIMIT`](super::JSON_LIMIT). A longer
/// one is refused (413), after what follows is read and dropped, up to 16
/// times the limit, so that an HTTP/2 client still sees why.
async fn read_bounded(body: axum::body::Body) -> Result<axum::body::Bytes, Status> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let (mut kept, mut seen) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Status::invalid_argument(format!("the body could not be read: {e}")))?;
        seen += chunk.len();
        if seen <= super::JSON_LIMIT {
            kept.extend_from_slice(&chunk);
        } else if seen > 16 * super::JSON_LIMIT {
            break;
        }
    }
    if seen > super::JSON_LIMIT {
        return Err(with_http(
            Status::out_of_range(format!(
                "the body is larger than the {} bytes a JSON request may have",
                super::JSON_LIMIT
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    Ok(kept.into())
}

/// Reads a request's whole body (bounded) before its handler runs, so
/// that no answer, however early, leaves a body unread: over HTTP/2 that
/// resets the stream, and the client sees no answer at all. An upload
/// streams instead; its handler reads or drains its body itself.
pub async fn read_first(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    if request.method() == axum::http::Method::PUT && request.uri().path().starts_with("/api/v1/images/") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match read_bounded(body).await {
        Ok(bytes) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(status) => super::problem(&status),
    }
}

/// The JSON body, or a refusal naming the field and what was wrong with it
/// ("cpus: unknown field `cpus`, expected one of …", "vcpus: invalid type:
/// string \"x\", expected u32 at line 1 column 12").
pub fn body<T>(b: J<T>) -> Result<T, Status> {
    b.0
}

/// The strong ETag of a JSON answer: its bytes' SHA-256, shortened.
pub fn etag(value: &Value) -> String {
    tag_of(value.to_string().as_bytes())
}

fn tag_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// A JSON answer with its ETag, serialized once (a list of a thousand VMs
/// is a megabyte: the tag hashes the bytes that are sent).
fn tagged(status: StatusCode, value: &Value) -> Response {
    let bytes = value.to_string().into_bytes();
    let tag = tag_of(&bytes);
    (status, [(header::ETAG, tag), (header::CONTENT_TYPE, "application/json".to_string())], bytes).into_response()
}

/// A read's answer: the JSON with its ETag, or `304` if the caller has it.
pub fn read(headers: &HeaderMap, result: Result<Value, Status>) -> Response {
    let value = match result {
        Ok(v) => v,
        Err(status) => return super::problem(&status),
    };
    let response = tagged(StatusCode::OK, &value);
    let tag = response.headers()[header::ETAG].to_str().unwrap_or_default().to_string();
    let has = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if has.is_some_and(|h| h.split(',').any(|t| t.trim() == tag || t.trim() == "*")) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    response
}

/// A write's answer: the object as it now is (with its new ETag).
pub fn wrote(result: Result<Value, Status>) -> Response {
    match result {
        Ok(value) => tagged(StatusCode::OK, &value),
        Err(status) => super::problem(&status),
    }
}

/// A write with nothing to send back (a deletion).
pub fn done(result: Result<(), Status>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(status) => super::problem(&status),
    }
}

/// A write's `If-Match` against the object as it is now (`None`: it does
/// not exist). Checked just before the write, against the leader's answer:
/// it keeps a client from writing over a change it has not seen, though
/// not from one that lands between the check and the write.
pub fn check_if_match(headers: &HeaderMap, current: Option<&Value>) -> Result<(), Status> {
    let Some(wanted) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let now = current.map(etag);
    let holds = wanted.split(',').map(str::trim).any(|t| (t == "*" && now.is_some()) || Some(t) == now.as_deref());
    if holds {
        Ok(())
    } else {
        let refusal = Status::failed_precondition(format!(
            "If-Match {wanted} does not hold: the object is now {}; read it again",
            now.as_deref().unwrap_or("gone")
        ));
        Err(with_http(refusal, StatusCode::PRECONDITION_FAILED))
    }
}

/// A refusal whose HTTP status is not its gRPC code's usual one (412 for
/// a failed `If-Match`, 413 for an oversized body), carried in metadata
/// that [`problem`](super::problem) reads.
fn with_http(status: Status, http: StatusCode) -> Status {
    let mut meta = tonic::metadata::MetadataMap::new();
    meta.insert(HTTP_STATUS, http.as_u16().to_string().parse().expect("digits are ascii"));
    Status::with_metadata(status.code(), status.message(), meta)
}

/// The metadata key of [`with_http`].
pub const HTTP_STATUS: &str = "x-kvmesh-http-status";

/// OpenAPI: a schema by its name (registered in the components).
pub fn schema<T: ToSchema>() -> RefOr<Schema> {
    utoipa::openapi::Ref::from_schema_name(T::name()).into()
}

/// OpenAPI: a list of `T`.
pub fn list<T: ToSchema>() -> RefOr<Schema> {
    utoipa::openapi::schema::ArrayBuilder::new().items(schema::<T>()).build().into()
}

/// OpenAPI: a query struct's parameters.
pub fn params<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query))
}

/// OpenAPI: no query parameters.
pub fn no_params() -> Vec<Parameter> {
    Vec::new()
}

/// Routes that take no query parameters refuse any.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// Reads may ask for a linearizable answer (through the leader).
#[derive(serde::Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Ask the leader (linearizable) instead of this node's copy.
    #[serde(default)]
    pub consistent: bool,
}
