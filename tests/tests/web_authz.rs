//! Authorization of the dashboard, route by route.
//!
//! The walk takes every route from `web::ROUTES` — the list the router is
//! built from, so a new route cannot be missed — and requests it as four
//! viewers: nobody, household A asking for household B's data, household A
//! asking for its own, and the operator. The expected status follows from
//! the route's access class (401 without a session, 404 for another
//! household's data, 403 for a household on an operator route, success
//! otherwise). Every answer A gets is also searched for B's id: no route
//! may leak it, masked views included. Then the same walk with public
//! aggregates switched off, and every POST without a CSRF token.
//!
//! The read model is a fixed fake with data of both households, so every
//! route has something to leak.

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use clearing::operator::{EnrolmentSummary, OpFuture, Operator, OperatorError};
use clearing::read::*;
use futures::StreamExt;
use protocol::{HouseholdId, ManualClock, MeterId, UnixMs, Watts};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use web::{Access, AccountStore, AppState, ROUTES, Role, RouteSpec, Settings, app};

const A: &str = "halice";
const B: &str = "hbobby";
const NOW: u64 = 1_783_000_000_000;
const QUARTER: u64 = 900_000;
const START: u64 = NOW - 4 * QUARTER;
const PASSWORD: &str = "alice-password-1";

/// Fixed data naming both households everywhere a household can appear.
struct TwoHouses;

fn live(h: &str) -> LiveRow {
    LiveRow {
        household: HouseholdId::new(h).expect("id"),
        meter: MeterId::new(format!("{h}-main")).expect("id"),
        ts: UnixMs(NOW - 1000),
        grid_power_w: Watts(-1200),
        pv_power_w: Some(Watts(3000)),
    }
}

fn trade() -> TradeRow {
    TradeRow {
        interval_start: START,
        idx: 0,
        buyer: A.into(),
        seller: B.into(),
        quantity_wh: 500,
        price: 150_000,
        buyer_price: 160_000,
    }
}

impl ReadModel for TwoHouses {
    fn intervals(&self, _limit: u32) -> ReadFuture<'_, Vec<IntervalRow>> {
        Box::pin(async {
            Ok(vec![IntervalRow {
                interval_start: START,
                clearing_price: Some(150_000),
                volume_wh: 500,
                trades: 1,
                orders: 2,
            }])
        })
    }
    fn settlements(&self, _limit: u32) -> ReadFuture<'_, Vec<SettlementRow>> {
        Box::pin(async {
            Ok(vec![SettlementRow {
                interval_start: START,
                status: "final".into(),
                hash: "ab".repeat(32),
                prev_hash: "00".repeat(32),
                households: 2,
                traded_micros: 75_000,
                tx_hash: Some("0xfeed".into()),
            }])
        })
    }
    fn live(&self) -> Vec<LiveRow> {
        vec![live(A), live(B)]
    }
    fn rejects(&self) -> Vec<(String, u64)> {
        vec![("replay".into(), 2)]
    }
    fn order_book(&self) -> ReadFuture<'_, Option<OrderBookRow>> {
        Box::pin(async {
            let o = |h: &str, side: &str| BookOrderRow {
                household: h.into(),
                nonce: 1,
                side: side.into(),
                quantity_wh: 500,
                limit_price: 150_000,
            };
            Ok(Some(OrderBookRow {
                interval_start: NOW,
                cleared: false,
                orders: vec![o(A, "buy"), o(B, "sell")],
            }))
        })
    }
    fn household_readings<'a>(
        &'a self,
        household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<HouseholdReadingRow>> {
        Box::pin(async move {
            Ok(vec![HouseholdReadingRow {
                meter: format!("{household}-main"),
                seq: 1,
                ts: NOW - 1000,
                import_wh: 10,
                export_wh: 20,
                pv_wh: Some(30),
                grid_power_w: -100,
                pv_power_w: Some(300),
                status: "ok".into(),
            }])
        })
    }
    fn household_orders<'a>(
        &'a self,
        _household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<HouseholdOrderRow>> {
        Box::pin(async {
            Ok(vec![HouseholdOrderRow {
                nonce: 1,
                interval_start: START,
                side: "buy".into(),
                quantity_wh: 500,
                limit_price: 200_000,
                replaces: None,
                ts: START - QUARTER,
            }])
        })
    }
    fn household_trades<'a>(
        &'a self,
        _household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<TradeRow>> {
        Box::pin(async { Ok(vec![trade()]) })
    }
    fn household_bills<'a>(
        &'a self,
        _household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<BillRow>> {
        Box::pin(async {
            Ok(vec![BillRow {
                interval_start: START,
                amount: -80_000,
                delivered_wh: 0,
                received_wh: 500,
                import_wh: 800,
                export_wh: 0,
                has_data: true,
                feed_in_tariff: 80_000,
                retail_tariff: 300_000,
            }])
        })
    }
    fn devices(&self) -> ReadFuture<'_, Vec<DeviceRow>> {
        Box::pin(async {
            Ok([A, B]
                .iter()
                .map(|h| DeviceRow {
                    meter: format!("{h}-main"),
                    household: (*h).into(),
                    last_seq: Some(9),
                    last_ts: Some(NOW - 1000),
                    last_received_at: Some(NOW - 900),
                    last_status: Some("ok".into()),
                })
                .collect())
        })
    }
    fn households(&self) -> ReadFuture<'_, Vec<String>> {
        Box::pin(async { Ok(vec![A.into(), B.into()]) })
    }
    fn interval_detail(&self, interval_start: u64) -> ReadFuture<'_, Option<IntervalDetailRow>> {
        Box::pin(async move {
            if interval_start != START {
                return Ok(None);
            }
            let transfer = |h: &str, amount| TransferRow {
                household: h.into(),
                amount,
                delivered_wh: 0,
                received_wh: 0,
            };
            Ok(Some(IntervalDetailRow {
                interval: IntervalRow {
                    interval_start: START,
                    clearing_price: Some(150_000),
                    volume_wh: 500,
                    trades: 1,
                    orders: 2,
                },
                orders_root: "11".repeat(32),
                trades_root: "22".repeat(32),
                cleared_at: START,
                trades: vec![trade()],
                settlement: Some(SettlementDetailRow {
                    status: "final".into(),
                    hash: "ab".repeat(32),
                    prev_hash: "00".repeat(32),
                    readings_root: "33".repeat(32),
                    utility_micros: 5_000,
                    confirmations: 0,
                    tx_hash: None,
                    transfers: vec![transfer(A, -80_000), transfer(B, 75_000)],
                }),
            }))
        })
    }
    fn meter_rejects(&self) -> Vec<MeterRejectRow> {
        [A, B]
            .iter()
            .flat_map(|h| {
                [
                    MeterRejectRow {
                        household: (*h).into(),
                        meter: Some(format!("{h}-main")),
                        reason: "timestamp".into(),
                        count: 2,
                    },
                    MeterRejectRow {
                        household: (*h).into(),
                        meter: None,
                        reason: "gate_closed".into(),
                        count: 1,
                    },
                ]
            })
            .collect()
    }
    fn auction_params(&self) -> Option<ParamsRow> {
        let set = |fee| ParamSetRow {
            mechanism: "uniform".into(),
            price_rule: "midpoint".into(),
            feed_in_tariff: 80_000,
            retail_tariff: 320_000,
            grid_fee: fee,
            capacity_wh: None,
            gate_lead_ms: 0,
        };
        Some(ParamsRow {
            configured: set(0),
            changes: vec![ParamChangeRow {
                id: 1,
                effective_from: START,
                old: set(0),
                new: set(10_000),
                changed_by: "op".into(),
                changed_at: START - QUARTER,
            }],
        })
    }
    fn verify_interval(&self, interval_start: u64) -> ReadFuture<'_, Option<VerifyReport>> {
        Box::pin(async move {
            Ok((interval_start == START).then(|| VerifyReport {
                interval_start,
                ok: true,
                checks: vec![VerifyCheck {
                    name: "orders_root".into(),
                    ok: true,
                    detail: "equal".into(),
                }],
            }))
        })
    }
    fn published(
        &self,
        interval_start: u64,
        _interval_ms: u64,
    ) -> ReadFuture<'_, Option<PublishedInterval>> {
        Box::pin(async move {
            Ok((interval_start == START).then(|| PublishedInterval {
                interval: interval_start,
                engine_keys: Vec::new(),
                household_keys: Vec::new(),
                meters: Vec::new(),
                result_envelope: String::new(),
                orders: Vec::new(),
                readings: Vec::new(),
                trades: Vec::new(),
                batch: None,
            }))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    /// Household A, with `{household}` = B.
    AasksB,
    /// Household A, with `{household}` = A.
    AasksA,
    Operator,
}

struct Fixture {
    app: Router,
    store: AccountStore,
    alice: (String, String),
    operator: (String, String),
}

async fn fixture(public_aggregates: bool) -> Fixture {
    let store = AccountStore::in_memory().await.expect("store");
    store
        .upsert_account("alice", Role::Household, Some(A), Some(PASSWORD))
        .await
        .expect("alice");
    store
        .upsert_account("bob", Role::Household, Some(B), Some("bob-password-1"))
        .await
        .expect("bob");
    store
        .upsert_account("op", Role::Operator, None, None)
        .await
        .expect("operator");
    let mut state = AppState::new(Arc::new(TwoHouses), "elm", QUARTER);
    state.clock = Arc::new(ManualClock::new(UnixMs(NOW)));
    state.operator = Some(Arc::new(FakeOperator {
        grid: protocol::GridId::new("elm").expect("grid"),
        enrolled: Default::default(),
    }));
    let state = state
        .with_accounts(
            store.clone(),
            Settings {
                public_aggregates,
                explorer_tx_url: Some("https://explorer.invalid/tx/{tx}".into()),
            },
        )
        .await
        .expect("state");
    let a = store.create_session("alice").await.expect("session");
    let o = store.create_session("op").await.expect("session");
    Fixture {
        app: app(state),
        store,
        alice: (a.token, a.csrf),
        operator: (o.token, o.csrf),
    }
}

/// An operator over nothing but the real request verification: approving
/// checks the signed request again and remembers the household.
struct FakeOperator {
    grid: protocol::GridId,
    enrolled: std::sync::Mutex<Vec<String>>,
}

impl Operator for FakeOperator {
    fn check_enrolment(&self, file: &str) -> Result<EnrolmentSummary, OperatorError> {
        Ok(clearing::enrol::verify_request(file, Some(&self.grid))?.into())
    }
    fn approve_enrolment<'a>(&'a self, file: &'a str) -> OpFuture<'a, EnrolmentSummary> {
        Box::pin(async move {
            let s = self.check_enrolment(file)?;
            let mut enrolled = self.enrolled.lock().unwrap_or_else(|p| p.into_inner());
            if enrolled.contains(&s.key_id) {
                return Err(OperatorError::Conflict(format!(
                    "key {} is already enrolled",
                    s.key_id
                )));
            }
            enrolled.push(s.key_id.clone());
            Ok(s)
        })
    }
    fn change_params<'a>(
        &'a self,
        update: ParamSetRow,
        by: &'a str,
    ) -> OpFuture<'a, ParamChangeRow> {
        Box::pin(async move {
            update.validate(QUARTER)?;
            Ok(ParamChangeRow {
                id: 2,
                effective_from: START + QUARTER,
                old: update.clone(),
                new: update,
                changed_by: by.to_owned(),
                changed_at: NOW,
            })
        })
    }
}

/// A signed enrolment request file of `household` with a fresh key.
fn request_file(household: &str, meter: &str) -> String {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let req = clearing::enrol::EnrolmentRequest {
        grid: protocol::GridId::new("elm").expect("grid"),
        household: HouseholdId::new(household).expect("id"),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        meters: vec![MeterId::new(meter).expect("id")],
        settlement_address: None,
        ts: UnixMs(NOW),
    };
    clearing::enrol::make_request(&key, &req).expect("request")
}

/// The concrete path of a route for a viewer.
async fn concrete(spec: &RouteSpec, who: Who, f: &Fixture) -> String {
    let household = if who == Who::AasksA { A } else { B };
    let mut path = spec
        .path
        .replace("{household}", household)
        .replace("{interval}", &START.to_string());
    if path.contains("{id}") {
        // A fresh pending request for every decision.
        let id = f
            .store
            .request_enrolment(
                B,
                &"cd".repeat(32),
                &["hbobby-2".to_owned()],
                "bob",
                &request_file(B, "hbobby-2"),
            )
            .await
            .expect("enrolment");
        path = path.replace("{id}", &id.to_string());
    }
    path
}

fn body_for(spec: &RouteSpec) -> Option<String> {
    match spec.path {
        "/api/login" => Some(format!(
            "{{\"username\":\"alice\",\"password\":\"{PASSWORD}\"}}"
        )),
        // A's signed request (a household files only for itself).
        "/api/enrolments" if spec.method == Method::POST => Some(request_file(A, "halice-2")),
        "/api/params" => Some(
            serde_json::json!({
                "mechanism": "mcafee", "price_rule": "midpoint", "feed_in_tariff": 80_000,
                "retail_tariff": 320_000, "grid_fee": 5_000, "capacity_wh": null,
                "gate_lead_ms": 0
            })
            .to_string(),
        ),
        "/api/settings" if spec.method == Method::POST => {
            Some("{\"public_aggregates\":true,\"explorer_tx_url\":null}".into())
        }
        _ => None,
    }
}

/// What `who` must get from `spec` (an exact status, or any success).
fn expected(spec: &RouteSpec, who: Who, public_aggregates: bool) -> Option<StatusCode> {
    let none = StatusCode::UNAUTHORIZED;
    match (spec.access, who) {
        (Access::Public, _) => None,
        (Access::Aggregate, Who::Nobody) if !public_aggregates => Some(none),
        (Access::Aggregate, _) => None,
        (Access::Member | Access::OwnHousehold | Access::Operator, Who::Nobody) => Some(none),
        (Access::OwnHousehold, Who::AasksB) => Some(StatusCode::NOT_FOUND),
        (Access::Operator, Who::AasksA | Who::AasksB) => Some(StatusCode::FORBIDDEN),
        _ => None,
    }
}

/// Sends one request as `who`, with a valid CSRF token on state changes.
/// Logout gets a session of its own, so the walk's sessions survive.
async fn call(spec: &RouteSpec, who: Who, f: &Fixture, csrf: bool) -> (StatusCode, String) {
    let path = concrete(spec, who, f).await;
    let session = match who {
        Who::Nobody => None,
        Who::AasksA | Who::AasksB if spec.path == "/api/logout" => {
            let s = f.store.create_session("alice").await.expect("session");
            Some((s.token, s.csrf))
        }
        Who::Operator if spec.path == "/api/logout" => {
            let s = f.store.create_session("op").await.expect("session");
            Some((s.token, s.csrf))
        }
        Who::AasksA | Who::AasksB => Some(f.alice.clone()),
        Who::Operator => Some(f.operator.clone()),
    };
    let anonymous_csrf = "5a".repeat(32);
    let csrf_token = session
        .as_ref()
        .map_or(anonymous_csrf.clone(), |(_, c)| c.clone());
    let mut cookie = format!("vs_csrf={csrf_token}");
    if let Some((token, _)) = &session {
        cookie.push_str(&format!("; vs_session={token}"));
    }
    let mut req = Request::builder()
        .method(spec.method.clone())
        .uri(&path)
        .header(header::COOKIE, cookie)
        .header(header::HOST, "dash.test");
    if csrf && spec.method != Method::GET {
        req = req.header("x-csrf-token", &csrf_token);
    }
    let body = body_for(spec);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or(Body::empty(), Body::from))
        .expect("request");
    let response = f.app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let mut data = response.into_body().into_data_stream();
    let mut text = Vec::new();
    // The event stream never ends: its first event is enough.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = data.next().await {
            text.extend_from_slice(&chunk.expect("chunk"));
            if spec.path == "/api/stream" && text.windows(2).any(|w| w == b"\n\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{} {path}: body did not arrive", spec.method);
    (status, String::from_utf8_lossy(&text).into_owned())
}

async fn walk(public_aggregates: bool) {
    let f = fixture(public_aggregates).await;
    let mut checked = 0;
    for spec in ROUTES {
        for who in [Who::Nobody, Who::AasksB, Who::AasksA, Who::Operator] {
            let (status, body) = call(spec, who, &f, true).await;
            let what = format!(
                "{} {} as {who:?} (public aggregates {public_aggregates}): {status} {body:.300}",
                spec.method, spec.path
            );
            match expected(spec, who, public_aggregates) {
                Some(want) => {
                    assert_eq!(status, want, "{what}");
                    let v: serde_json::Value = serde_json::from_str(&body).expect("error JSON");
                    assert!(v["error"]["code"].is_string(), "{what}");
                }
                None => assert!(status.is_success() || status.is_redirection(), "{what}"),
            }
            if matches!(who, Who::AasksA | Who::AasksB) {
                assert!(!body.contains(B), "leaks B's id: {what}");
            }
            // Logging in answers with the new session's own identity.
            if who == Who::Nobody && status.is_success() && spec.path != "/api/login" {
                assert!(
                    !body.contains(A) && !body.contains(B),
                    "the public sees a household id: {what}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * 4);
}

#[tokio::test]
async fn every_route_as_nobody_household_and_operator() {
    walk(true).await;
}

#[tokio::test]
async fn every_route_with_public_aggregates_off() {
    walk(false).await;
}

#[tokio::test]
async fn every_state_change_needs_a_csrf_token() {
    let f = fixture(true).await;
    let posts: Vec<&RouteSpec> = ROUTES.iter().filter(|r| r.method != Method::GET).collect();
    assert!(posts.len() >= 5, "{posts:?}");
    for spec in posts {
        for who in [Who::AasksA, Who::Operator] {
            let (status, body) = call(spec, who, &f, false).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{} {}: {body}",
                spec.method,
                spec.path
            );
            assert!(body.contains("\"csrf\""), "{body}");
        }
    }
    // A token from another session does not do either.
    let login = ROUTES
        .iter()
        .find(|r| r.path == "/api/logout")
        .expect("logout route");
    let req = Request::post(login.path)
        .header(
            header::COOKIE,
            format!("vs_session={}; vs_csrf={}", f.alice.0, f.operator.1),
        )
        .header("x-csrf-token", &f.operator.1)
        .body(Body::empty())
        .expect("request");
    let response = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cross_site_posts_are_refused() {
    let f = fixture(true).await;
    let req = Request::post("/api/logout")
        .header(
            header::COOKIE,
            format!("vs_session={}; vs_csrf={}", f.alice.0, f.alice.1),
        )
        .header("x-csrf-token", &f.alice.1)
        .header(header::HOST, "dash.test")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .expect("request");
    let response = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn session_cookies_are_httponly_strict_and_secure_behind_tls() {
    let f = fixture(true).await;
    let csrf = "7c".repeat(32);
    let req = Request::post("/api/login")
        .header(header::COOKIE, format!("vs_csrf={csrf}"))
        .header("x-csrf-token", &csrf)
        .header("x-forwarded-proto", "https")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            "{{\"username\":\"alice\",\"password\":\"{PASSWORD}\"}}"
        )))
        .expect("request");
    let response = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let cookies: Vec<String> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("vs_session="))
        .expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    let csrf_cookie = cookies
        .iter()
        .find(|c| c.starts_with("vs_csrf="))
        .expect("csrf cookie");
    assert!(csrf_cookie.contains("SameSite=Strict") && !csrf_cookie.contains("HttpOnly"));
    assert!(!csrf_cookie.contains(&csrf), "a new CSRF token per session");

    // A wrong password is a 401 in the error format.
    let req = Request::post("/api/login")
        .header(header::COOKIE, format!("vs_csrf={csrf}"))
        .header("x-csrf-token", &csrf)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"username\":\"alice\",\"password\":\"nope\"}"))
        .expect("request");
    let response = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_link_works_once() {
    let f = fixture(true).await;
    let token = f
        .store
        .create_login_link("alice", Duration::from_secs(60))
        .await
        .expect("link");
    let uri = format!("/login/link?token={token}");
    let first = f
        .app
        .clone()
        .oneshot(Request::get(&uri).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(first.headers()[header::LOCATION], "/#/household");
    assert!(
        first
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|c| c.to_str().is_ok_and(|c| c.starts_with("vs_session=")))
    );
    let again = f
        .app
        .clone()
        .oneshot(Request::get(&uri).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(again.headers()[header::LOCATION], "/#/login/expired");
    assert!(again.headers().get(header::SET_COOKIE).is_none());
}

#[test]
fn every_api_route_is_in_the_openapi_document() {
    let doc = web::openapi::document_json();
    let paths = doc["paths"].as_object().expect("paths");
    for spec in ROUTES {
        if spec.path == "/" || spec.path.starts_with("/assets/") || spec.path == "/api/openapi.json"
        {
            continue;
        }
        let method = spec.method.as_str().to_ascii_lowercase();
        assert!(
            paths.get(spec.path).and_then(|p| p.get(&method)).is_some(),
            "{} {} is not documented",
            spec.method,
            spec.path
        );
    }
}
