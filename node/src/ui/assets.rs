//! The UI's files, embedded at build time (`build.rs`), and how they are
//! served: by exact path from the table (a path can name nothing else: no
//! file system is read), with ETags, and cached for good only under
//! `vendor/`, whose paths carry the library's version.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

mod table {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// One embedded file.
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
    pub etag: String,
}

/// The embedded files by their path under `/ui/`.
pub fn all() -> &'static HashMap<&'static str, Asset> {
    static ALL: OnceLock<HashMap<&'static str, Asset>> = OnceLock::new();
    ALL.get_or_init(|| {
        table::FILES
            .iter()
            .map(|(path, bytes)| {
                let etag = format!("\"{}\"", &crate::tls::ca::hex(&Sha256::digest(bytes))[..32]);
                (*path, Asset { bytes, content_type: content_type(path), etag })
            })
            .collect()
    })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map_or("", |(_, ext)| ext) {
        "html" => "text/html; charset=utf-8",
        // Module scripts must be served as JavaScript, or browsers refuse them.
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// `GET /`: the single page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /ui/{*path}`.
pub async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    if path.split('/').any(|segment| segment == ".." || segment == "." || segment.is_empty()) {
        return super::problem(
            StatusCode::BAD_REQUEST,
            &format!("the UI file path {path:?} has an empty, . or .. segment; UI files are named by their exact path"),
        );
    }
    serve(&path, &headers)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = all().get(path) else {
        return super::problem(StatusCode::NOT_FOUND, &format!("the UI has no file {path:?}"));
    };
    let cache = if path.starts_with("vendor/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(tag) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, tag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_its_scripts_and_the_vendored_libraries_are_embedded() {
        for path in
            ["index.html", "app.js", "app.css", "vendor/xterm-6.0.0/xterm.mjs", "vendor/novnc-1.7.0/core/rfb.js"]
        {
            assert!(all().contains_key(path), "{path} is not embedded");
        }
        assert_eq!(all()["app.js"].content_type, "text/javascript; charset=utf-8");
        assert_eq!(all()["vendor/xterm-6.0.0/xterm.mjs"].content_type, "text/javascript; charset=utf-8");
    }

    #[test]
    fn every_file_the_page_imports_is_embedded() {
        // Relative and absolute imports of the UI's own modules.
        for (path, asset) in
            all().iter().filter(|(p, _)| !p.starts_with("vendor/") && (p.ends_with(".js") || p.ends_with(".html")))
        {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for quoted in text.split(['"', '\'']).filter(|s| s.starts_with("/ui/")) {
                let target = quoted.trim_start_matches("/ui/").split(['?', '#']).next().unwrap();
                assert!(all().contains_key(target), "{path} refers to {quoted}, which is not embedded");
            }
        }
    }
}
