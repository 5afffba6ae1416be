//! The walking skeleton end to end: the whole simulated microgrid of
//! `voltshare demo`, run once through the real Mosquitto on 127.0.0.1:1883
//! and once through the embedded rumqttd broker. While it runs, forged,
//! replayed and malformed readings and orders are injected from outside;
//! afterwards every invariant is checked from the engine's database:
//!
//! - the dashboard API showed cleared intervals with trades and settlements;
//! - per interval, energy bought equals energy sold equals the volume;
//! - no buyer pays above its limit and no seller receives below its limit;
//! - every stored reading and order verifies against the household's key and
//!   matches its decoded columns;
//! - the ledger's hash chain and signatures verify, and every batch balances;
//! - each bad message was rejected and counted, and nothing valid was lost:
//!   per meter, the engine's readings plus the agent's unacknowledged outbox
//!   are exactly 1..=last sequence number, without gaps or duplicates.

use anyhow::{Context, Result, anyhow, ensure};
use controller::demo::{DemoOptions, DemoReport, run_demo};
use ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::{
    Domain, GridId, Order, Reading, SettlementBatch, Side, SignedEnvelope, Topic, WattHours,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

const HOUSEHOLDS: u32 = 5;
const INTERVAL_SECS: u64 = 4;
const RUN_SECS: u64 = 40;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("voltshare-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn get_json(url: &str) -> Result<serde_json::Value> {
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}

/// Captures one genuine reading and one genuine order from the broker, then
/// injects the bad messages. Returns the reasons it expects to see counted.
async fn inject_bad_messages(broker: &(String, u16), grid: &GridId, keys_dir: &Path) -> Result<()> {
    let mut opts = MqttOptions::new(format!("vs-e2e-attacker-{grid}"), &broker.0, broker.1);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client
        .subscribe(Topic::filter(grid, "readings"), QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(Topic::filter(grid, "orders"), QoS::AtLeastOnce)
        .await?;
    let mut reading: Option<(String, Vec<u8>)> = None;
    let mut order: Option<(String, Vec<u8>)> = None;
    let captured = tokio::time::timeout(Duration::from_secs(3 * INTERVAL_SECS + 5), async {
        while reading.is_none() || order.is_none() {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic.contains("/readings/") && reading.is_none() {
                        reading = Some((p.topic.clone(), p.payload.to_vec()));
                    } else if p.topic.contains("/orders/") && order.is_none() {
                        order = Some((p.topic.clone(), p.payload.to_vec()));
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow!("attacker connection: {e}")),
            }
        }
        Ok(())
    })
    .await;
    captured.context("no genuine reading and order seen on the broker")??;
    let (reading_topic, reading_bytes) = reading.ok_or_else(|| anyhow!("no reading"))?;
    let (order_topic, order_bytes) = order.ok_or_else(|| anyhow!("no order"))?;

    let genuine_reading: Reading =
        protocol::decode_payload(&SignedEnvelope::decode(&reading_bytes)?.payload)
            .context("genuine reading")?;
    let genuine_order: Order =
        protocol::decode_payload(&SignedEnvelope::decode(&order_bytes)?.payload)
            .context("genuine order")?;
    let stranger = SigningKey::from_bytes(&[9u8; 32]);
    let owner =
        controller::keys::read(&keys_dir.join(format!("{}.key", genuine_reading.household)))?;
    let order_owner =
        controller::keys::read(&keys_dir.join(format!("{}.key", genuine_order.household)))?;

    let mut bad: Vec<(String, Vec<u8>)> = Vec::new();
    // Forged: a stranger's key, and a genuine envelope with one payload bit flipped.
    bad.push((
        reading_topic.clone(),
        SignedEnvelope::sign_json(Domain::Reading, &stranger, &genuine_reading)?.encode(),
    ));
    let mut flipped = SignedEnvelope::decode(&reading_bytes)?;
    let last = flipped.payload.len() - 2;
    flipped.payload[last] ^= 1;
    bad.push((reading_topic.clone(), flipped.encode()));
    bad.push((
        order_topic.clone(),
        SignedEnvelope::sign_json(Domain::Order, &stranger, &genuine_order)?.encode(),
    ));
    // Replayed with different content: the same sequence number / nonce,
    // signed by the genuine key (as a compromised or buggy gateway would).
    let mut replay_r = genuine_reading.clone();
    replay_r.import_wh = WattHours(replay_r.import_wh.0 + 1);
    bad.push((
        reading_topic.clone(),
        SignedEnvelope::sign_json(Domain::Reading, &owner, &replay_r)?.encode(),
    ));
    let mut replay_o = genuine_order.clone();
    replay_o.quantity_wh = WattHours(replay_o.quantity_wh.0 + 1);
    bad.push((
        order_topic.clone(),
        SignedEnvelope::sign_json(Domain::Order, &order_owner, &replay_o)?.encode(),
    ));
    // Malformed: garbage, a valid signature over invalid JSON, deep JSON.
    bad.push((reading_topic.clone(), b"not an envelope".to_vec()));
    bad.push((order_topic.clone(), vec![1, 3, b'a']));
    bad.push((
        reading_topic.clone(),
        SignedEnvelope::sign(Domain::Reading, &owner, b"{\"seq\":".to_vec())?.encode(),
    ));
    bad.push((
        order_topic.clone(),
        SignedEnvelope::sign(Domain::Order, &order_owner, "[".repeat(100).into_bytes())?.encode(),
    ));
    // Exact replays of genuine messages: stored once (duplicates).
    bad.push((reading_topic.clone(), reading_bytes.clone()));
    bad.push((order_topic.clone(), order_bytes.clone()));
    for (topic, payload) in bad {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
    }
    // Drive the event loop until everything is out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if eventloop.poll().await.is_err() {
                break;
            }
        }
    })
    .await;
    Ok(())
}

fn household_keys(keys_dir: &Path) -> Result<HashMap<String, VerifyingKey>> {
    let mut out = HashMap::new();
    for i in 1..=HOUSEHOLDS {
        let h = format!("h{i:02}");
        out.insert(
            h.clone(),
            controller::keys::read(&keys_dir.join(format!("{h}.key")))?.verifying_key(),
        );
    }
    Ok(out)
}

async fn check_database(report: &DemoReport, data_dir: &Path) -> Result<()> {
    let pool = clearing::store::open(&report.engine_db).await?;
    let keys = household_keys(&report.keys_dir)?;

    // Every stored reading verifies and matches its columns; per meter the
    // engine's sequence numbers plus the outbox's are exactly 1..=last.
    let rows = sqlx::query("SELECT meter, seq, household, ts, import_wh, export_wh, envelope FROM readings ORDER BY meter, seq")
        .fetch_all(&pool)
        .await?;
    ensure!(rows.len() > 50, "too few readings stored: {}", rows.len());
    let mut engine_seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &rows {
        let meter: String = r.get("meter");
        let household: String = r.get("household");
        let env = SignedEnvelope::decode(r.get::<Vec<u8>, _>("envelope").as_slice())?;
        let key = keys
            .get(&household)
            .ok_or_else(|| anyhow!("unknown household {household}"))?;
        env.verify(Domain::Reading, key)
            .with_context(|| format!("reading {meter}/{}", r.get::<i64, _>("seq")))?;
        let reading: Reading = protocol::decode_payload(&env.payload)?;
        ensure!(reading.meter.as_str() == meter && reading.household.as_str() == household);
        ensure!(i64::try_from(reading.seq)? == r.get::<i64, _>("seq"));
        ensure!(i64::try_from(reading.import_wh.0)? == r.get::<i64, _>("import_wh"));
        ensure!(i64::try_from(reading.export_wh.0)? == r.get::<i64, _>("export_wh"));
        ensure!(i64::try_from(reading.ts.0)? == r.get::<i64, _>("ts"));
        engine_seqs.entry(meter).or_default().push(reading.seq);
    }
    ensure!(
        engine_seqs.len() == HOUSEHOLDS as usize,
        "readings from {} meters",
        engine_seqs.len()
    );
    for (meter, seqs) in &engine_seqs {
        let household = meter.trim_end_matches("-main");
        let outbox = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(data_dir.join(format!("outbox-{household}.db"))),
            )
            .await?;
        let last: i64 = sqlx::query_scalar("SELECT last_seq FROM meter_seq WHERE meter = ?")
            .bind(meter)
            .fetch_one(&outbox)
            .await?;
        let pending: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM outbox WHERE meter = ? ORDER BY seq")
                .bind(meter)
                .fetch_all(&outbox)
                .await?;
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letter")
            .fetch_one(&outbox)
            .await?;
        ensure!(dead == 0, "{meter}: {dead} genuine readings were rejected");
        let mut all: Vec<i64> = seqs
            .iter()
            .map(|s| i64::try_from(*s).unwrap_or(-1))
            .collect();
        all.extend(
            pending
                .iter()
                .filter(|s| !seqs.contains(&u64::try_from(**s).unwrap_or(0))),
        );
        all.sort_unstable();
        let expected: Vec<i64> = (1..=last).collect();
        ensure!(
            all == expected,
            "{meter}: engine ∪ outbox is not 1..={last} (engine {}, pending {:?})",
            seqs.len(),
            pending
        );
        outbox.close().await;
    }

    // Every stored order verifies; keep the limits for the trade checks.
    let orders = sqlx::query("SELECT household, nonce, side, limit_price, quantity_wh, interval_start, envelope FROM orders")
        .fetch_all(&pool)
        .await?;
    let mut limits: HashMap<String, (Side, u64, u64, u64)> = HashMap::new();
    for o in &orders {
        let household: String = o.get("household");
        let env = SignedEnvelope::decode(o.get::<Vec<u8>, _>("envelope").as_slice())?;
        env.verify(
            Domain::Order,
            keys.get(&household)
                .ok_or_else(|| anyhow!("unknown household"))?,
        )?;
        let order: Order = protocol::decode_payload(&env.payload)?;
        ensure!(i64::try_from(order.nonce)? == o.get::<i64, _>("nonce"));
        ensure!(i64::try_from(order.limit_price.0)? == o.get::<i64, _>("limit_price"));
        ensure!(i64::try_from(order.interval.0)? == o.get::<i64, _>("interval_start"));
        limits.insert(
            order.id(),
            (
                order.side,
                order.limit_price.0,
                order.quantity_wh.0,
                order.interval.0,
            ),
        );
    }

    // Per interval: bought == sold == volume; limits respected; no order
    // over-filled.
    let intervals = sqlx::query("SELECT interval_start, volume_wh, trades FROM intervals")
        .fetch_all(&pool)
        .await?;
    let mut with_trades = 0;
    for iv in &intervals {
        let start: i64 = iv.get("interval_start");
        let trades = sqlx::query(
            "SELECT buyer, seller, buy_order, sell_order, quantity_wh, price, buyer_price FROM trades WHERE interval_start = ?",
        )
        .bind(start)
        .fetch_all(&pool)
        .await?;
        let mut bought: BTreeMap<String, i64> = BTreeMap::new();
        let mut sold: BTreeMap<String, i64> = BTreeMap::new();
        let mut filled: HashMap<String, i64> = HashMap::new();
        for t in &trades {
            let q: i64 = t.get("quantity_wh");
            let (bo, so): (String, String) = (t.get("buy_order"), t.get("sell_order"));
            *bought.entry(t.get("buyer")).or_default() += q;
            *sold.entry(t.get("seller")).or_default() += q;
            *filled.entry(bo.clone()).or_default() += q;
            *filled.entry(so.clone()).or_default() += q;
            let (bside, blimit, _, binterval) = limits
                .get(&bo)
                .ok_or_else(|| anyhow!("trade cites unknown order {bo}"))?;
            let (sside, slimit, _, sinterval) = limits
                .get(&so)
                .ok_or_else(|| anyhow!("trade cites unknown order {so}"))?;
            ensure!(
                *bside == Side::Buy && *sside == Side::Sell,
                "order sides of a trade"
            );
            ensure!(
                i64::try_from(*binterval)? == start && i64::try_from(*sinterval)? == start,
                "orders of another interval"
            );
            let (price, buyer_price): (i64, i64) = (t.get("price"), t.get("buyer_price"));
            ensure!(
                u64::try_from(buyer_price)? <= *blimit,
                "buyer pays {buyer_price} above its limit {blimit}"
            );
            ensure!(
                u64::try_from(price)? >= *slimit,
                "seller receives {price} below its limit {slimit}"
            );
        }
        for (id, q) in &filled {
            let (_, _, qty, _) = limits
                .get(id)
                .ok_or_else(|| anyhow!("unknown order {id}"))?;
            ensure!(
                u64::try_from(*q)? <= *qty,
                "order {id} over-filled: {q} > {qty}"
            );
        }
        let b: i64 = bought.values().sum();
        let s: i64 = sold.values().sum();
        ensure!(b == s, "interval {start}: bought {b} != sold {s}");
        ensure!(
            b == iv.get::<i64, _>("volume_wh"),
            "interval {start}: volume mismatch"
        );
        ensure!(usize::try_from(iv.get::<i64, _>("trades"))? == trades.len());
        if !trades.is_empty() {
            with_trades += 1;
        }
    }
    ensure!(with_trades >= 2, "only {with_trades} intervals with trades");

    // The ledger: the chain verifies, every batch balances and continues the chain.
    let n = clearing::settlement::verify_ledger(&pool)
        .await
        .map_err(|e| anyhow!("ledger: {e}"))?;
    ensure!(n >= 2, "only {n} settlements");
    let batches: Vec<String> =
        sqlx::query_scalar("SELECT batch_json FROM settlements ORDER BY seq")
            .fetch_all(&pool)
            .await?;
    let mut prev = protocol::Hash32::ZERO;
    for b in batches {
        let batch: SettlementBatch = serde_json::from_str(&b)?;
        ensure!(
            batch.balances(),
            "batch {} does not sum to zero",
            batch.interval.0
        );
        ensure!(
            batch.prev_hash == prev,
            "batch {} breaks the chain",
            batch.interval.0
        );
        prev = batch.hash();
    }

    // Each injected bad message was rejected and counted under its reason.
    let rejects: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT reason, count FROM reject_counts")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .collect();
    let count = |r: &str| rejects.get(r).copied().unwrap_or(0);
    ensure!(
        count("unknown_key") >= 2,
        "forged (stranger key) not counted: {rejects:?}"
    );
    ensure!(
        count("bad_signature") >= 1,
        "forged (flipped bit) not counted: {rejects:?}"
    );
    ensure!(
        count("seq_conflict") + count("replay") >= 2,
        "replays not counted: {rejects:?}"
    );
    ensure!(
        count("malformed") >= 4,
        "malformed not counted: {rejects:?}"
    );
    pool.close().await;
    Ok(())
}

async fn run_scenario(tag: &str, broker: (String, u16)) -> Result<()> {
    let data_dir = temp_dir(tag);
    let port = free_port();
    let opts = DemoOptions {
        households: HOUSEHOLDS,
        interval_secs: INTERVAL_SECS,
        port,
        data_dir: data_dir.clone(),
        broker: Some(broker.clone()),
        run_for: Some(Duration::from_secs(RUN_SECS)),
        seed: 7,
        start_ms: 1_783_148_400_000, // 2026-07-04 07:00 UTC: a sunny morning
    };
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let demo = tokio::spawn(run_demo(opts, stop_rx));

    // The grid id is derived from the options; learn it from the dashboard.
    let base = format!("http://127.0.0.1:{port}");
    let mut summary = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(s) = get_json(&format!("{base}/api/summary")).await {
            summary = s;
            break;
        }
    }
    let grid = GridId::new(
        summary["grid"]
            .as_str()
            .ok_or_else(|| anyhow!("no grid in summary {summary}"))?,
    )?;
    inject_bad_messages(&broker, &grid, &data_dir.join("keys")).await?;

    // While it runs, the API shows cleared intervals with trades and settlements.
    let mut seen = false;
    for _ in 0..(RUN_SECS * 2) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let intervals = get_json(&format!("{base}/api/intervals")).await?;
        let settlements = get_json(&format!("{base}/api/settlements")).await?;
        let traded = intervals.as_array().map_or(0, |a| {
            a.iter()
                .filter(|i| i["trades"].as_u64().unwrap_or(0) > 0)
                .count()
        });
        let settled = settlements.as_array().map_or(0, Vec::len);
        if traded >= 2 && settled >= 2 {
            let first = &intervals[0];
            ensure!(
                first["interval_start"].is_u64()
                    && first.get("clearing_price").is_some()
                    && first["volume_wh"].is_u64()
            );
            ensure!(
                settlements[0]["hash"]
                    .as_str()
                    .is_some_and(|h| h.len() == 64)
            );
            ensure!(settlements[0]["status"].is_string() && settlements[0]["households"].is_u64());
            seen = true;
            break;
        }
    }
    ensure!(
        seen,
        "the API never showed two traded intervals and two settlements"
    );

    let report = demo.await?.context("demo run")?;
    ensure!(report.orders_sent > 0 && report.readings_stored > 0);
    check_database(&report, &data_dir).await?;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn microgrid_through_real_mosquitto() -> Result<()> {
    // The machine's Mosquitto; scripts/setup-test-tools starts it if needed.
    std::net::TcpStream::connect("127.0.0.1:1883")
        .context("Mosquitto must be running on 127.0.0.1:1883")?;
    run_scenario("mosquitto", ("127.0.0.1".to_owned(), 1883)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn microgrid_through_embedded_broker() -> Result<()> {
    let addr = controller::broker::start_embedded()?;
    run_scenario("embedded", (addr.ip().to_string(), addr.port())).await
}
