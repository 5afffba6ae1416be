//! The page and its static assets, embedded in the binary so that the
//! dashboard works offline and ships as one file.
//!
//! Caching: each asset's ETag is a hash of its bytes computed at compile
//! time, and conditional requests get `304 Not Modified`. The page itself is
//! `no-cache` (always revalidated) and links the CSS and JS with `?v=<hash>`,
//! so the assets can be cached for a while and a new binary still takes
//! effect on the next page load.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::sync::LazyLock;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The placeholder in `index.html` replaced by the assets' version.
const VERSION_PLACEHOLDER: &str = "__ASSET_VERSION__";

/// What the page may load: only its own origin. Enforces "no CDN, no
/// external assets" in the browser as well as in review.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// FNV-1a, 64 bit: enough to tell versions of a file apart, and `const`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const JS_HASH: u64 = fnv1a(APP_JS.as_bytes());
const CSS_HASH: u64 = fnv1a(APP_CSS.as_bytes());
const INDEX_HASH: u64 = fnv1a(INDEX_HTML.as_bytes());

/// One version for the page's assets, so one placeholder suffices.
static ASSET_VERSION: LazyLock<String> =
    LazyLock::new(|| format!("{:016x}", JS_HASH ^ CSS_HASH.rotate_left(1)));

static INDEX: LazyLock<String> =
    LazyLock::new(|| INDEX_HTML.replace(VERSION_PLACEHOLDER, &ASSET_VERSION));

/// A static file with its headers.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
    etag: String,
    csp: bool,
}

impl Asset {
    fn respond(self, request_headers: &HeaderMap) -> Response {
        let etag = HeaderValue::from_str(&self.etag).unwrap_or(HeaderValue::from_static("\"0\""));
        let fresh = request_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == self.etag
            });
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, etag);
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if self.csp {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
        }
        if fresh {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        (headers, self.body).into_response()
    }
}

/// `GET /`: the dashboard page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    Asset {
        body: INDEX.as_str(),
        content_type: "text/html; charset=utf-8",
        cache_control: "no-cache",
        etag: format!(
            "\"{:016x}\"",
            INDEX_HASH ^ JS_HASH.rotate_left(7) ^ CSS_HASH.rotate_left(13)
        ),
        csp: true,
    }
    .respond(&headers)
}

/// `GET /assets/app.js`.
pub(crate) async fn app_js(headers: HeaderMap) -> Response {
    Asset {
        body: APP_JS,
        content_type: "text/javascript; charset=utf-8",
        cache_control: "public, max-age=3600",
        etag: format!("\"{JS_HASH:016x}\""),
        csp: false,
    }
    .respond(&headers)
}

/// `GET /assets/app.css`.
pub(crate) async fn app_css(headers: HeaderMap) -> Response {
    Asset {
        body: APP_CSS,
        content_type: "text/css; charset=utf-8",
        cache_control: "public, max-age=3600",
        etag: format!("\"{CSS_HASH:016x}\""),
        csp: false,
    }
    .respond(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn page_links_versioned_assets() {
        assert!(!INDEX.contains(VERSION_PLACEHOLDER));
        assert!(INDEX.contains(&format!("/assets/app.js?v={}", *ASSET_VERSION)));
        assert!(INDEX.contains(&format!("/assets/app.css?v={}", *ASSET_VERSION)));
    }
}
