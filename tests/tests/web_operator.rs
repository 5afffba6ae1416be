//! The operator's actions in the dashboard against a real clearing engine
//! on the system Mosquitto (127.0.0.1:1883): approving a household's signed
//! enrolment request enrols it in the engine at once (its signed messages
//! are acknowledged as accepted without a restart), a tampered request is
//! refused, households and visitors cannot approve; a change of the auction
//! parameters is validated, audited, survives a restart and applies to the
//! next open interval but not to one already cleared; rejected readings are
//! counted per meter and each household sees only its own.
//!
//! The dashboard's router is driven in-process (`oneshot`, with session
//! cookies and CSRF tokens exactly as a browser sends them); the engine, its
//! database and the broker are real. The engine runs on a manual clock so
//! that gates close when the test says.

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use clearing::RejectReason;
use protocol::{AckOutcome, Domain, GridId, IntervalId, ManualClock, Side, UnixMs};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use voltshare_tests::sender::{self, AckKey, Sender, TestHousehold};
use voltshare_tests::util;
use web::{AccountStore, AppState, Role, Settings};

const LEN: u64 = 900_000;
/// A quarter-hour boundary: interval `I0` starts here.
const I0: u64 = 1_783_000_800_000;

struct Dash {
    app: Router,
    store: AccountStore,
}

impl Dash {
    async fn new(engine: &clearing::EngineHandle, grid: &GridId, clock: Arc<ManualClock>) -> Dash {
        let store = AccountStore::in_memory().await.expect("store");
        store
            .upsert_account("op", Role::Operator, None, None)
            .await
            .expect("operator");
        for h in ["h01", "h02", "h03"] {
            store
                .upsert_account(h, Role::Household, Some(h), None)
                .await
                .expect("household account");
        }
        let mut state = AppState::new(engine.read_model(), grid.to_string(), LEN);
        state.clock = clock;
        state.operator = Some(engine.operator());
        let state = state
            .with_accounts(store.clone(), Settings::default())
            .await
            .expect("state");
        Dash {
            app: web::app(state),
            store,
        }
    }

    /// Sends a request as `who` (`None`: no session) with the CSRF token
    /// on state changes; returns the status and the JSON body.
    async fn call(
        &self,
        who: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (cookie, csrf) = match who {
            Some(user) => {
                let s = self.store.create_session(user).await.expect("session");
                (
                    format!("vs_session={}; vs_csrf={}", s.token, s.csrf),
                    s.csrf,
                )
            }
            None => {
                let t = "5a".repeat(32);
                (format!("vs_csrf={t}"), t)
            }
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::COOKIE, cookie)
            .header(header::HOST, "dash.test")
            .header(header::ORIGIN, "http://dash.test");
        if method != Method::GET {
            req = req.header("x-csrf-token", csrf);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }
}

async fn engine_on(
    grid: &GridId,
    households: &[TestHousehold],
    dir: &std::path::Path,
    clock: Arc<ManualClock>,
) -> clearing::EngineHandle {
    util::require_system_mosquitto();
    let cfg = voltshare_tests::engine::config(grid, households, dir, 1883);
    voltshare_tests::engine::start(cfg, clock).await
}

async fn sender_for(grid: &GridId, engine: &clearing::EngineHandle) -> Sender {
    Sender::connect(
        grid,
        "127.0.0.1",
        1883,
        engine.engine_key(),
        Duration::from_millis(500),
    )
    .await
}

/// Waits for an ack of `key` and returns its outcome.
async fn acked(sender: &Sender, key: &AckKey) -> AckOutcome {
    for _ in 0..100 {
        if let Some(o) = sender.outcome(key) {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no ack for {key:?}");
}

async fn send_reading(
    sender: &Sender,
    grid: &GridId,
    h: &TestHousehold,
    seq: u64,
    ts: u64,
) -> AckKey {
    let meter = &h.meters[0];
    let r = sender::reading(grid, h, meter, seq, UnixMs(ts), 100 * seq, 0);
    let key = AckKey::reading(&h.id, meter, seq);
    sender
        .send_tracked(
            key.clone(),
            sender::readings_topic(grid, meter),
            sender::signed(Domain::Reading, &h.key, &r),
        )
        .await;
    key
}

/// The household's request file, as `voltshare enroll` writes it.
fn request_file(grid: &GridId, h: &TestHousehold) -> String {
    let req = clearing::enrol::EnrolmentRequest {
        grid: grid.clone(),
        household: h.id.clone(),
        public_key: hex::encode(h.key.verifying_key().as_bytes()),
        meters: h.meters.clone(),
        settlement_address: None,
        ts: UnixMs(I0),
    };
    clearing::enrol::make_request(&h.key, &req).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_in_the_dashboard_enrols_in_the_running_engine() {
    let dir = util::temp_dir("web-enrol");
    let grid = util::unique_grid("web-enrol");
    let h01 = TestHousehold::new("web-enrol", 1);
    let h02 = TestHousehold::new("web-enrol", 2);
    let clock = Arc::new(ManualClock::new(UnixMs(I0 + 60_000)));
    let engine = engine_on(&grid, std::slice::from_ref(&h01), &dir, clock.clone()).await;
    let dash = Dash::new(&engine, &grid, clock.clone()).await;
    let sender = sender_for(&grid, &engine).await;

    // Before approval: h02's signed reading is refused as an unknown key
    // (and, by design, not acknowledged).
    let r = sender::reading(&grid, &h02, &h02.meters[0], 1, UnixMs(I0 + 1_000), 100, 0);
    sender
        .publish(
            sender::readings_topic(&grid, &h02.meters[0]),
            sender::signed(Domain::Reading, &h02.key, &r),
        )
        .await;
    let mut unknown = 0;
    for _ in 0..100 {
        unknown = engine
            .counters()
            .snapshot()
            .rejected(RejectReason::UnknownKey);
        if unknown > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unknown, 1, "the unenrolled key is refused");

    // h02 files its signed request; a tampered copy is refused, naming why.
    let file: Value = serde_json::from_str(&request_file(&grid, &h02)).expect("file");
    let envelope = file["envelope"].as_str().expect("hex").to_owned();
    // The meter id changed inside the signed payload: still well-formed,
    // no longer what h02 signed.
    let mut bytes = hex::decode(&envelope).expect("hex");
    let at = bytes
        .windows(5)
        .position(|w| w == b"h02-m")
        .expect("meter in payload");
    bytes[at + 4] = b'n';
    let tampered = hex::encode(bytes);
    let (status, body) = dash
        .call(
            Some("h02"),
            Method::POST,
            "/api/enrolments",
            Some(json!({ "envelope": tampered })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("request envelope") && msg.contains("signature"),
        "{msg}"
    );
    // Another household cannot file for h02.
    let (status, _) = dash
        .call(
            Some("h01"),
            Method::POST,
            "/api/enrolments",
            Some(json!({ "envelope": envelope })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = dash
        .call(
            Some("h02"),
            Method::POST,
            "/api/enrolments",
            Some(json!({ "envelope": envelope })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["household"], "h02");
    let id = body["id"].as_i64().expect("id");
    let approve = format!("/api/enrolments/{id}/approve");

    // Nobody but the operator may approve.
    let (status, _) = dash.call(None, Method::POST, &approve, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = dash.call(Some("h02"), Method::POST, &approve, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        engine.registry().household_of(&h02.meters[0]).is_none(),
        "not enrolled by a refused approval"
    );

    let (status, body) = dash.call(Some("op"), Method::POST, &approve, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        engine.registry().household_of(&h02.meters[0]),
        Some(&h02.id),
        "in the engine's registry at once"
    );
    let (status, _) = dash.call(Some("op"), Method::POST, &approve, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "decided once");
    let (_, list) = dash
        .call(Some("op"), Method::GET, "/api/enrolments", None)
        .await;
    assert_eq!(list[0]["status"], "approved");
    assert_eq!(list[0]["decided_by"], "op");

    // Its signed reading and order are now accepted, no restart.
    let key = send_reading(&sender, &grid, &h02, 2, I0 + 2_000).await;
    assert_eq!(acked(&sender, &key).await, AckOutcome::Accepted);
    let target = IntervalId(I0 + 2 * LEN);
    let o = sender::order(
        &grid,
        &h02,
        target,
        Side::Buy,
        500,
        200_000,
        1,
        UnixMs(I0 + 3_000),
    );
    let okey = AckKey::order(&h02.id, 1);
    sender
        .send_tracked(
            okey.clone(),
            sender::orders_topic(&grid, &h02.id),
            sender::signed(Domain::Order, &h02.key, &o),
        )
        .await;
    assert_eq!(acked(&sender, &okey).await, AckOutcome::Accepted);

    // A second request for the enrolled household: the engine refuses it
    // (409, naming why) and it stays pending.
    let h02b = TestHousehold {
        key: util::key("web-enrol-2b"),
        ..h02.clone()
    };
    let (status, body) = dash
        .call(
            Some("h02"),
            Method::POST,
            "/api/enrolments",
            Some(serde_json::from_str(&request_file(&grid, &h02b)).expect("file")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id2 = body["id"].as_i64().expect("id");
    let (status, body) = dash
        .call(
            Some("op"),
            Method::POST,
            &format!("/api/enrolments/{id2}/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already enrolled")),
        "{body}"
    );
    let (status, _) = dash
        .call(
            Some("op"),
            Method::POST,
            &format!("/api/enrolments/{id2}/reject"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Rejects per meter: h01's reading from an hour in the future is
    // refused; h01 sees it on its meter, h02 sees nothing of h01's.
    let key = send_reading(&sender, &grid, &h01, 1, I0 + 3_600_000).await;
    assert!(matches!(
        acked(&sender, &key).await,
        AckOutcome::Rejected(_)
    ));
    let (status, devices) = dash
        .call(Some("h01"), Method::GET, "/api/devices", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mine = &devices["devices"][0];
    assert_eq!(mine["meter"], h01.meters[0].to_string());
    assert_eq!(mine["rejected"], 1, "{devices}");
    let (_, theirs) = dash
        .call(Some("h02"), Method::GET, "/api/devices", None)
        .await;
    let text = theirs.to_string();
    assert!(!text.contains("h01"), "h02 sees h01's devices: {text}");
    assert!(
        theirs["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .all(|d| d["rejected"] == 0),
        "{theirs}"
    );
    let (_, all) = dash
        .call(Some("op"), Method::GET, "/api/devices", None)
        .await;
    assert_eq!(all["devices"].as_array().map(Vec::len), Some(2), "{all}");

    sender.close().await;
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_changes_apply_from_the_next_open_interval_only() {
    let dir = util::temp_dir("web-params");
    let grid = util::unique_grid("web-params");
    let seller = TestHousehold::new("web-params", 1);
    let buyer = TestHousehold::new("web-params", 2);
    let households = [seller.clone(), buyer.clone()];
    let clock = Arc::new(ManualClock::new(UnixMs(I0 + 60_000)));
    let engine = engine_on(&grid, &households, &dir, clock.clone()).await;
    let dash = Dash::new(&engine, &grid, clock.clone()).await;
    let sender = sender_for(&grid, &engine).await;

    let i1 = IntervalId(I0 + LEN);
    let i2 = IntervalId(I0 + 2 * LEN);
    let mut nonce = 0;
    for interval in [i1, i2] {
        for (h, side, price) in [(&seller, Side::Sell, 100_000), (&buyer, Side::Buy, 200_000)] {
            nonce += 1;
            let o = sender::order(
                &grid,
                h,
                interval,
                side,
                1_000,
                price,
                nonce,
                UnixMs(I0 + 60_000),
            );
            let key = AckKey::order(&h.id, nonce);
            sender
                .send_tracked(
                    key.clone(),
                    sender::orders_topic(&grid, &h.id),
                    sender::signed(Domain::Order, &h.key, &o),
                )
                .await;
            assert_eq!(acked(&sender, &key).await, AckOutcome::Accepted);
        }
    }

    // Interval 1 closes and is cleared with the configured parameters.
    clock.set(UnixMs(i1.0 + 1_000));
    let r1 = engine.clear_interval(i1).await.expect("clear i1");
    assert_eq!(r1.params.grid_fee.0, 0);

    // Wrong values are refused, naming the field; households may not.
    let mut form = json!({
        "mechanism": "uniform", "price_rule": "midpoint",
        "feed_in_tariff": 80_000, "retail_tariff": 320_000,
        "grid_fee": 25_000, "capacity_wh": 50_000, "gate_lead_ms": 0
    });
    for (field, value) in [
        ("mechanism", json!("dutch")),
        ("feed_in_tariff", json!(400_000)),
        ("capacity_wh", json!(0)),
        ("grid_fee", json!(-5)),
    ] {
        let mut bad = form.clone();
        bad[field] = value;
        let (status, body) = dash
            .call(Some("op"), Method::POST, "/api/params", Some(bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        let msg = body["error"]["message"].as_str().expect("message");
        assert!(msg.contains(field), "{field}: {msg}");
    }
    let (status, _) = dash
        .call(Some("h01"), Method::POST, "/api/params", Some(form.clone()))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = dash
        .call(None, Method::POST, "/api/params", Some(form.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The operator's change: after interval 1 was cleared, before interval
    // 2's gate closes. It applies from interval 2.
    let (status, change) = dash
        .call(Some("op"), Method::POST, "/api/params", Some(form.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{change}");
    assert_eq!(change["effective_from"], i2.0);
    assert_eq!(change["old"]["grid_fee"], 0);
    assert_eq!(change["new"]["grid_fee"], 25_000);
    assert_eq!(change["changed_by"], "op");

    // The market page shows what is in force now and what is scheduled.
    let (_, market) = dash
        .call(None, Method::GET, "/api/market/params", None)
        .await;
    assert_eq!(market["in_force"]["grid_fee"], 0, "{market}");
    assert_eq!(market["scheduled"][0]["effective_from"], i2.0);
    assert_eq!(market["scheduled"][0]["params"]["grid_fee"], 25_000);
    // The audit trail is the operator's.
    let (status, _) = dash
        .call(Some("h01"), Method::GET, "/api/params/changes", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, audit) = dash
        .call(Some("op"), Method::GET, "/api/params/changes", None)
        .await;
    assert_eq!(audit[0]["changed_by"], "op");
    assert_eq!(audit[0]["old"]["capacity_wh"], Value::Null);
    assert_eq!(audit[0]["new"]["capacity_wh"], 50_000);

    // Interval 1 is not cleared again: its stored result keeps no fee.
    let again = engine.clear_interval(i1).await.expect("stored i1");
    assert_eq!(again, r1);
    clock.set(UnixMs(i2.0 + 1_000));
    let r2 = engine.clear_interval(i2).await.expect("clear i2");
    assert_eq!(r2.params.grid_fee.0, 25_000);
    assert_eq!(r2.params.capacity_wh.map(|c| c.0), Some(50_000));
    let (t1, t2) = (&r1.trades[0], &r2.trades[0]);
    assert_eq!(t1.buyer_price, t1.price, "no fee before the change");
    assert_eq!(
        t2.buyer_price.0,
        t2.price.0 + 25_000,
        "the fee after the change"
    );
    // The same in the dashboard's trades.
    let (_, trades) = dash
        .call(Some("h02"), Method::GET, "/api/households/h02/trades", None)
        .await;
    let by_interval = |i: IntervalId| {
        trades
            .as_array()
            .expect("trades")
            .iter()
            .find(|t| t["interval_start"] == i.0)
            .cloned()
            .expect("trade")
    };
    let (v1, v2) = (by_interval(i1), by_interval(i2));
    assert_eq!(v1["buyer_price"], v1["price"]);
    assert_eq!(
        v2["buyer_price"].as_u64().expect("price"),
        v2["price"].as_u64().expect("price") + 25_000
    );
    let (_, market) = dash
        .call(None, Method::GET, "/api/market/params", None)
        .await;
    assert_eq!(market["in_force"]["grid_fee"], 25_000, "{market}");
    assert_eq!(market["in_force_since"], i2.0);

    // A gate lead change starts only where both leads leave the gate open:
    // 10 s before interval 4 (lead 0), a 60 s lead has closed it already.
    clock.set(UnixMs(I0 + 4 * LEN - 10_000));
    form["gate_lead_ms"] = json!(60_000);
    let (status, change) = dash
        .call(Some("op"), Method::POST, "/api/params", Some(form.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{change}");
    assert_eq!(change["effective_from"], I0 + 5 * LEN);

    // The new lead is enforced from interval 5 on: 30 s before it starts
    // its gate is closed (an order is refused, the interval clears), while
    // interval 6 is still open.
    let (i5, i6) = (IntervalId(I0 + 5 * LEN), IntervalId(I0 + 6 * LEN));
    clock.set(UnixMs(i5.0 - 30_000));
    for (interval, want) in [
        (
            i5,
            AckOutcome::Rejected(RejectReason::GateClosed.as_str().to_owned()),
        ),
        (i6, AckOutcome::Accepted),
    ] {
        nonce += 1;
        let o = sender::order(
            &grid,
            &buyer,
            interval,
            Side::Buy,
            1_000,
            200_000,
            nonce,
            UnixMs(i5.0 - 30_000),
        );
        let key = AckKey::order(&buyer.id, nonce);
        sender
            .send_tracked(
                key.clone(),
                sender::orders_topic(&grid, &buyer.id),
                sender::signed(Domain::Order, &buyer.key, &o),
            )
            .await;
        assert_eq!(acked(&sender, &key).await, want, "order for {}", interval.0);
    }
    let r5 = engine
        .clear_interval(i5)
        .await
        .expect("i5's gate has closed");
    assert_eq!(r5.params.grid_fee.0, 25_000);
    assert!(
        matches!(
            engine.clear_interval(i6).await,
            Err(clearing::EngineError::GateOpen(_))
        ),
        "interval 6 is still open"
    );

    // Durable: a restarted engine on the same database has both changes.
    sender.close().await;
    engine.shutdown().await.expect("shutdown");
    let engine = engine_on(&grid, &households, &dir, clock.clone()).await;
    let params = engine.params();
    assert_eq!(params.changes().len(), 2);
    assert_eq!(params.for_interval(i1).params.grid_fee.0, 0);
    assert_eq!(params.for_interval(i2).params.grid_fee.0, 25_000);
    assert_eq!(
        params.for_interval(IntervalId(I0 + 5 * LEN)).gate_lead_ms,
        60_000
    );
    engine.shutdown().await.expect("shutdown");
}
