//! The embedded page and its assets: content types, caching, and that the
//! page holds every element its script looks up.

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, Request, StatusCode, header},
};
use clearing::read::{IntervalRow, LiveRow, ReadFuture, ReadModel, SettlementRow};
use std::sync::Arc;
use tower::ServiceExt;
use web::{AppState, app};

struct Empty;

impl ReadModel for Empty {
    fn intervals(&self, _limit: u32) -> ReadFuture<'_, Vec<IntervalRow>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn settlements(&self, _limit: u32) -> ReadFuture<'_, Vec<SettlementRow>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn live(&self) -> Vec<LiveRow> {
        Vec::new()
    }
    fn rejects(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

fn test_app() -> Router {
    app(AppState::new(Arc::new(Empty), "elmstreet", 900_000))
}

async fn get(uri: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
    let mut request = Request::get(uri);
    if let Some(tag) = if_none_match {
        request = request.header(header::IF_NONE_MATCH, tag);
    }
    let response = test_app()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, headers, body)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn page() -> String {
    let (status, headers, body) = get("/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header_str(&headers, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(header_str(&headers, header::CACHE_CONTROL), "no-cache");
    String::from_utf8(body.to_vec()).expect("utf-8")
}

async fn script() -> String {
    let (status, headers, body) = get("/assets/app.js", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header_str(&headers, header::CONTENT_TYPE),
        "text/javascript; charset=utf-8"
    );
    String::from_utf8(body.to_vec()).expect("utf-8")
}

/// Every string literal passed to one of the script's id lookups.
fn ids_used_by(script: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for call in ["$('", "setText('", "setBar('", "fillBody('"] {
        for (at, _) in script.match_indices(call) {
            let rest = &script[at + call.len()..];
            let id = &rest[..rest.find('\'').expect("closing quote")];
            ids.push(id.to_owned());
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test]
async fn page_has_every_element_the_script_needs() {
    let html = page().await;
    let js = script().await;
    let ids = ids_used_by(&js);
    assert!(ids.len() > 20, "found only {ids:?}");
    for id in &ids {
        assert!(html.contains(&format!("id=\"{id}\"")), "page lacks #{id}");
    }
    // The parameter form's inputs are looked up by field name.
    for field in [
        "mechanism",
        "price_rule",
        "feed_in_tariff",
        "retail_tariff",
        "grid_fee",
        "capacity_wh",
        "gate_lead_ms",
    ] {
        assert!(
            js.contains(&format!("'{field}'")),
            "script lacks field {field}"
        );
        assert!(
            html.contains(&format!("id=\"p-{field}\"")),
            "page lacks #p-{field}"
        );
    }
    for id in [
        "households",
        "intervals",
        "settlements",
        "price-chart",
        "conn-status",
        "error-banner",
    ] {
        assert!(ids.contains(&id.to_owned()), "script no longer uses #{id}");
    }
    assert!(
        html.contains("<meta name=\"viewport\""),
        "responsive viewport"
    );
    assert!(js.contains("new EventSource('/api/stream')"));
    assert!(js.contains("addEventListener('live'"));
    for api in [
        "/api/live",
        "/api/summary",
        "/api/intervals",
        "/api/settlements",
    ] {
        assert!(js.contains(api), "script does not use {api}");
    }
}

#[tokio::test]
async fn page_loads_nothing_from_elsewhere() {
    let (_, headers, _) = get("/", None).await;
    let csp = header_str(&headers, header::CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let (_, _, css) = get("/assets/app.css", None).await;
    let css = String::from_utf8(css.to_vec()).expect("utf-8");
    for (name, text) in [
        ("page", page().await),
        ("script", script().await),
        ("style", css),
    ] {
        let outside = text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !outside.contains("http://") && !outside.contains("https://"),
            "{name} refers to another origin"
        );
        assert!(!outside.contains("//cdn"), "{name} uses a CDN");
    }
}

#[tokio::test]
async fn page_links_the_assets_it_is_served_with() {
    let html = page().await;
    for asset in ["/assets/app.js?v=", "/assets/app.css?v="] {
        let at = html.find(asset).expect("asset link");
        let rest = &html[at..];
        let url = &rest[..rest.find('"').expect("quote")];
        let (status, _, _) = get(url, None).await;
        assert_eq!(status, StatusCode::OK, "{url}");
    }
}

#[tokio::test]
async fn assets_have_types_cache_headers_and_etags() {
    for (uri, ty) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = get(uri, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
        assert_eq!(header_str(&headers, header::CONTENT_TYPE), ty);
        assert_eq!(
            header_str(&headers, header::CACHE_CONTROL),
            "public, max-age=3600"
        );
        assert_eq!(
            header_str(&headers, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        let etag = header_str(&headers, header::ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let (status, headers, body) = get(uri, Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{uri}");
        assert!(body.is_empty());
        assert_eq!(header_str(&headers, header::ETAG), etag);

        let (status, _, _) = get(uri, Some("\"stale\"")).await;
        assert_eq!(status, StatusCode::OK);
    }
}
