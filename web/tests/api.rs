//! Router tests without a socket or a database: `app(state)` driven with
//! `tower::ServiceExt::oneshot` over a fake read model.

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, Request, StatusCode, header},
};
use clearing::read::{IntervalRow, LiveRow, ReadError, ReadFuture, ReadModel, SettlementRow};
use futures::StreamExt;
use protocol::{HouseholdId, ManualClock, MeterId, UnixMs, Watts};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;
use web::{AppState, app};

const NOW: u64 = 1_750_000_000_000;
const QUARTER: u64 = 900_000;

/// Fixed data, returned deliberately out of order so that the API's own
/// ordering is tested. Records the limits it was asked for.
#[derive(Default)]
struct Fake {
    limits: Mutex<Vec<u32>>,
}

fn interval(n: u64, price: Option<u64>) -> IntervalRow {
    IntervalRow {
        interval_start: NOW - n * QUARTER,
        clearing_price: price,
        volume_wh: 1000 + n,
        trades: n,
        orders: 2 * n,
    }
}

fn settlement(n: u64, status: &str) -> SettlementRow {
    SettlementRow {
        interval_start: NOW - n * QUARTER,
        status: status.to_owned(),
        hash: format!("{n:064x}"),
        prev_hash: format!("{:064x}", n + 1),
        households: n + 3,
        traded_micros: 12_345 * n as i64,
        tx_hash: (n == 1).then(|| "0xabc".to_owned()),
    }
}

fn live_row(h: &str, m: &str, age_ms: u64, grid: i64, pv: Option<i64>) -> LiveRow {
    LiveRow {
        household: HouseholdId::new(h).expect("id"),
        meter: MeterId::new(m).expect("id"),
        ts: UnixMs(NOW - age_ms),
        grid_power_w: Watts(grid),
        pv_power_w: pv.map(Watts),
    }
}

impl ReadModel for Fake {
    fn intervals(&self, limit: u32) -> ReadFuture<'_, Vec<IntervalRow>> {
        self.limits.lock().expect("lock").push(limit);
        let rows = vec![
            interval(3, Some(90_000)),
            interval(1, Some(120_000)),
            interval(2, None),
            interval(4, Some(80_000)),
        ];
        Box::pin(async move { Ok(rows.into_iter().take(limit as usize).collect()) })
    }
    fn settlements(&self, limit: u32) -> ReadFuture<'_, Vec<SettlementRow>> {
        let rows = vec![
            settlement(2, "final"),
            settlement(1, "pending"),
            settlement(3, "final"),
        ];
        Box::pin(async move { Ok(rows.into_iter().take(limit as usize).collect()) })
    }
    fn live(&self) -> Vec<LiveRow> {
        vec![
            live_row("h1", "h1-grid", 1_000, 1500, None),
            live_row("h2", "h2-grid", 2_000, -2500, Some(3200)),
            live_row("h3", "h3-grid", 3_600_000, 0, Some(0)),
        ]
    }
    fn rejects(&self) -> Vec<(String, u64)> {
        vec![
            ("bad_signature".to_owned(), 2),
            ("replay".to_owned(), 5),
            ("replay".to_owned(), 1),
        ]
    }
}

/// Fails every storage read with a message full of internals.
struct Broken;

const SECRET: &str = "SQLITE_BUSY: database is locked at /var/lib/voltshare/secret.db";

impl ReadModel for Broken {
    fn intervals(&self, _limit: u32) -> ReadFuture<'_, Vec<IntervalRow>> {
        Box::pin(async { Err(ReadError::Storage(SECRET.to_owned())) })
    }
    fn settlements(&self, _limit: u32) -> ReadFuture<'_, Vec<SettlementRow>> {
        Box::pin(async { Err(ReadError::Storage(SECRET.to_owned())) })
    }
    fn live(&self) -> Vec<LiveRow> {
        Vec::new()
    }
    fn rejects(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

fn state_with(read: Arc<dyn ReadModel>) -> AppState {
    let mut state = AppState::new(read, "elmstreet", QUARTER);
    state.clock = Arc::new(ManualClock::new(UnixMs(NOW)));
    state.tick = Duration::from_millis(50);
    state
}

fn fake_app() -> Router {
    app(state_with(Arc::new(Fake::default())))
}

/// A router with an account store and the cookie of an operator's session.
async fn operator_app(read: Arc<dyn ReadModel>) -> (Router, String) {
    let store = web::AccountStore::in_memory().await.expect("store");
    store
        .upsert_account("op", web::Role::Operator, None, None)
        .await
        .expect("operator");
    let session = store.create_session("op").await.expect("session");
    let state = state_with(read)
        .with_accounts(store, web::Settings::default())
        .await
        .expect("state");
    (app(state), format!("vs_session={}", session.token))
}

async fn get_json_as(app: Router, uri: &str, cookie: &str) -> (StatusCode, Value) {
    let request = Request::get(uri)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .expect("request");
    let (status, headers, body) = send(app, request).await;
    assert_eq!(content_type(&headers), "application/json", "{uri}");
    (status, serde_json::from_slice(&body).expect("json body"))
}

async fn send(app: Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, headers, body)
}

async fn get(app: Router, uri: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(app, Request::get(uri).body(Body::empty()).expect("request")).await
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn get_json(app: Router, uri: &str) -> (StatusCode, Value) {
    let (status, headers, body) = get(app, uri).await;
    assert_eq!(content_type(&headers), "application/json", "{uri}");
    (status, serde_json::from_slice(&body).expect("json body"))
}

/// Asserts the uniform error body and returns its message.
fn error_message(body: &Value, code: &str) -> String {
    let error = body.get("error").expect("error object");
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(body.as_object().expect("object").len(), 1, "{body}");
    assert_eq!(error.as_object().expect("object").len(), 2, "{body}");
    error["message"].as_str().expect("message").to_owned()
}

#[tokio::test]
async fn healthz_is_ok() {
    let (status, body) = get_json(fake_app(), "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
}

#[tokio::test]
async fn intervals_are_newest_first_with_their_fields() {
    let (status, body) = get_json(fake_app(), "/api/intervals").await;
    assert_eq!(status, StatusCode::OK);
    let rows = body.as_array().expect("array");
    assert_eq!(rows.len(), 4);
    let starts: Vec<u64> = rows
        .iter()
        .map(|r| r["interval_start"].as_u64().expect("start"))
        .collect();
    assert_eq!(
        starts,
        vec![
            NOW - QUARTER,
            NOW - 2 * QUARTER,
            NOW - 3 * QUARTER,
            NOW - 4 * QUARTER
        ]
    );
    let first = &rows[0];
    assert_eq!(first["clearing_price"], 120_000);
    assert_eq!(first["volume_wh"], 1001);
    assert_eq!(first["trades"], 1);
    assert_eq!(first["orders"], 2);
    assert_eq!(first["interval_end"], NOW);
    assert!(
        rows[1]["clearing_price"].is_null(),
        "no trades is null, not 0"
    );
}

#[tokio::test]
async fn intervals_pass_the_limit_and_default_to_100() {
    let fake = Arc::new(Fake::default());
    let app = app(state_with(fake.clone()));
    let (status, body) = get_json(app.clone(), "/api/intervals?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().expect("array").len(), 2);
    get_json(app.clone(), "/api/intervals").await;
    get_json(app, "/api/intervals?limit=1000").await;
    assert_eq!(*fake.limits.lock().expect("lock"), vec![2, 100, 1000]);
}

#[tokio::test]
async fn bad_limits_are_400_naming_limit() {
    for uri in [
        "/api/intervals?limit=0",
        "/api/intervals?limit=1001",
        "/api/intervals?limit=-5",
        "/api/intervals?limit=abc",
        "/api/intervals?limit=",
        "/api/intervals?limit=1&limit=2",
        "/api/settlements?limit=0",
        "/api/settlements?limit=9999999999999",
    ] {
        let (status, body) = get_json(fake_app(), uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        let message = error_message(&body, "bad_request");
        assert!(message.contains("`limit`"), "{uri}: {message}");
    }
}

#[tokio::test]
async fn settlements_are_newest_first_with_their_fields() {
    let (status, body) = get_json(fake_app(), "/api/settlements").await;
    assert_eq!(status, StatusCode::OK);
    let rows = body.as_array().expect("array");
    let starts: Vec<u64> = rows
        .iter()
        .map(|r| r["interval_start"].as_u64().expect("start"))
        .collect();
    assert_eq!(
        starts,
        vec![NOW - QUARTER, NOW - 2 * QUARTER, NOW - 3 * QUARTER]
    );
    let first = &rows[0];
    assert_eq!(first["status"], "pending");
    assert_eq!(first["hash"], format!("{:064x}", 1));
    assert_eq!(first["prev_hash"], format!("{:064x}", 2));
    assert_eq!(first["households"], 4);
    assert_eq!(first["traded_micros"], 12_345);
    assert_eq!(first["tx_hash"], "0xabc");
    assert!(rows[1]["tx_hash"].is_null());
}

#[tokio::test]
async fn live_is_the_read_models_rows() {
    let (status, _) = get_json(fake_app(), "/api/live").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "per-household power is not public"
    );
    let (app, cookie) = operator_app(Arc::new(Fake::default())).await;
    let (status, body) = get_json_as(app, "/api/live", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::to_value(Fake::default().live()).expect("json")
    );
    let first = &body[0];
    for key in ["household", "meter", "ts", "grid_power_w", "pv_power_w"] {
        assert!(first.get(key).is_some(), "missing {key}: {first}");
    }
}

#[tokio::test]
async fn rejects_are_an_object_of_counts() {
    let (status, body) = get_json(fake_app(), "/api/rejects").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "bad_signature": 2, "replay": 6 }));
}

#[tokio::test]
async fn summary_totals_the_community() {
    let (status, s) = get_json(fake_app(), "/api/summary").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["grid"], "elmstreet");
    assert_eq!(s["interval_ms"], QUARTER);
    assert_eq!(s["currency"], "EUR");
    assert_eq!(s["as_of"], NOW);
    assert_eq!(s["households"], 3);
    assert_eq!(s["households_online"], 2, "h3 has been silent for an hour");
    assert_eq!(s["pv_w"], 3200);
    assert_eq!(s["import_w"], 1500);
    assert_eq!(s["export_w"], 2500);
    assert_eq!(s["net_grid_w"], -1000);
    assert_eq!(s["shared_w"], 1500);
    assert_eq!(s["last_interval_start"], NOW - QUARTER);
    assert_eq!(s["last_clearing_price"], 120_000);
    assert_eq!(s["intervals_cleared"], 4);
    assert_eq!(s["settlements"], 3);
    assert_eq!(s["last_settlement_status"], "pending");
    assert_eq!(s["counts_capped"], false);
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_error_format() {
    for uri in ["/nope", "/api/nope", "/assets/other.js", "/api/intervals/1"] {
        let (status, body) = get_json(fake_app(), uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        error_message(&body, "not_found");
    }
}

#[tokio::test]
async fn wrong_method_is_405_in_the_error_format() {
    let request = Request::post("/api/intervals")
        .body(Body::empty())
        .expect("request");
    let (status, headers, body) = send(fake_app(), request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(content_type(&headers), "application/json");
    error_message(
        &serde_json::from_slice(&body).expect("json"),
        "method_not_allowed",
    );
}

#[tokio::test]
async fn storage_failures_are_generic_500s() {
    for uri in ["/api/intervals", "/api/settlements", "/api/summary"] {
        let (status, headers, body) = get(app(state_with(Arc::new(Broken))), uri).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        assert_eq!(content_type(&headers), "application/json");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        for leak in ["SQLITE", "secret", "locked", "storage"] {
            assert!(!text.contains(leak), "{uri} leaks {leak:?}: {text}");
        }
        let message = error_message(&serde_json::from_str(&text).expect("json"), "internal");
        assert!(message.contains("internal error"), "{message}");
    }
}

#[tokio::test]
async fn live_and_rejects_work_without_storage() {
    let (app, cookie) = operator_app(Arc::new(Broken)).await;
    let (status, body) = get_json_as(app, "/api/live", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!([]));
}

/// Reads the first complete SSE event (up to a blank line) from the body.
async fn first_event(app: Router) -> (HeaderMap, String, Value) {
    first_event_as(app, "").await
}

async fn first_event_as(app: Router, cookie: &str) -> (HeaderMap, String, Value) {
    let response = app
        .oneshot(
            Request::get("/api/stream")
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let event = text.split("\n\n").next().expect("event");
    let name = event
        .lines()
        .find_map(|l| l.strip_prefix("event:"))
        .expect("event name")
        .trim()
        .to_owned();
    let data: String = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect();
    (
        headers,
        name,
        serde_json::from_str(&data).expect("event data is JSON"),
    )
}

#[tokio::test]
async fn stream_sends_live_events() {
    let (_, _, public) = first_event(fake_app()).await;
    assert_eq!(
        public["live"],
        serde_json::json!([]),
        "the public sees totals only"
    );
    let (app, cookie) = operator_app(Arc::new(Fake::default())).await;
    let (headers, name, data) = first_event_as(app, &cookie).await;
    assert_eq!(content_type(&headers), "text/event-stream");
    assert_eq!(
        headers.get(header::CACHE_CONTROL).expect("cache-control"),
        "no-cache"
    );
    assert_eq!(name, "live");
    assert_eq!(data["live"].as_array().expect("live rows").len(), 3);
    assert_eq!(data["summary"]["households_online"], 2);
    assert_eq!(data["summary"]["last_clearing_price"], 120_000);
    assert_eq!(data["book_stale"], false);
}

#[tokio::test]
async fn stream_keeps_going_when_storage_fails() {
    let (_, name, data) = first_event(app(state_with(Arc::new(Broken)))).await;
    assert_eq!(name, "live");
    assert_eq!(data["book_stale"], true);
    assert!(data["summary"]["last_interval_start"].is_null());
    assert!(!data.to_string().contains("SQLITE"));
}

#[tokio::test]
async fn stream_ticks_repeatedly() {
    let response = fake_app()
        .oneshot(
            Request::get("/api/stream")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let mut body = response.into_body().into_data_stream();
    let mut events = 0;
    let mut text = String::new();
    while events < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("events keep coming")
            .expect("open")
            .expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        events = text.matches("event: live").count();
    }
}
