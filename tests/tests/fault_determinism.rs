//! Item 7 of the fault suite: determinism.
//!
//! - `shuffled_books_clear_identically`: 10 000 random order books (up to
//!   400 orders each, many with equal prices and quantities) over every
//!   mechanism and price rule, with fees and capacities, each cleared in its
//!   generated order and in a shuffled arrival order: the outcomes and the
//!   inputs hashes must be identical.
//! - `journal_replay_reproduces_settlement_hashes`: an in-process engine
//!   (real SQLite, real Mosquitto on 127.0.0.1:1883, a manual clock) trades
//!   through a week of 672 fifteen-minute intervals; then its journal, the
//!   stored signed readings and orders, is copied into a fresh database and every interval is cleared
//!   and settled again from it. Each signed result must be byte-identical and
//!   each settlement hash equal to the one the engine recorded, and both
//!   chains must verify.

use clearing::auction::{BookOrder, clear, inputs_hash, random_book};
use clearing::settler::SettleCtx;
use clearing::{Ledger, book, registry::Registry, settler, store};
use protocol::{
    AuctionParams, Domain, IntervalId, ManualClock, Mechanism, MicroPerKwh, PriceRule, Side,
    UnixMs, WattHours,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use voltshare_tests::sender::{
    AckKey, Sender, TestHousehold, order, orders_topic, reading, readings_topic, signed,
};
use voltshare_tests::util::{self, Rng};
use voltshare_tests::{engine, report};

fn random_params(rng: &mut Rng, case: u64) -> AuctionParams {
    let mechanism = [Mechanism::Uniform, Mechanism::PayAsBid, Mechanism::Mcafee]
        [usize::try_from(case % 3).unwrap_or(0)];
    let price_rule = [PriceRule::Midpoint, PriceRule::Bid, PriceRule::Ask][rng.below(3)];
    AuctionParams {
        mechanism,
        price_rule,
        feed_in_tariff: MicroPerKwh(rng.range(40, 120) * 1000),
        retail_tariff: MicroPerKwh(rng.range(250, 400) * 1000),
        grid_fee: MicroPerKwh(if rng.chance(50) {
            0
        } else {
            rng.range(1, 30) * 1000
        }),
        capacity_wh: rng.chance(30).then(|| WattHours(rng.range(1, 20_000))),
    }
}

#[test]
fn shuffled_books_clear_identically() {
    let cases: u64 = 10_000;
    let mut rng = Rng::new(0x5eed_0007);
    let (mut traded, mut trades, mut orders, mut mismatches) = (0u64, 0u64, 0u64, 0u64);
    let watch = protocol::Stopwatch::start();
    for case in 0..cases {
        let n = usize::try_from(rng.range(0, 400)).expect("n");
        let mut book: Vec<BookOrder> = random_book(n, rng.next_u64());
        // Some exact duplicates of price and quantity across households, the
        // hardest case for tie-breaking.
        if n > 4 {
            for _ in 0..rng.below(n / 4) {
                let (a, b) = (rng.below(n), rng.below(n));
                book[b].limit_price = book[a].limit_price;
                book[b].quantity_wh = book[a].quantity_wh;
            }
        }
        let params = random_params(&mut rng, case);
        let first = clear(&book, &params);
        let hash = inputs_hash(&book, &params);
        let mut shuffled = book.clone();
        rng.shuffle(&mut shuffled);
        let again = clear(&shuffled, &params);
        let hash_again = inputs_hash(&shuffled, &params);
        if first != again || hash != hash_again {
            mismatches += 1;
        }
        assert_eq!(
            first, again,
            "case {case}: outcome depends on arrival order ({params:?})"
        );
        assert_eq!(
            hash, hash_again,
            "case {case}: inputs hash depends on arrival order"
        );
        orders += u64::try_from(n).expect("n");
        trades += u64::try_from(first.trades.len()).expect("n");
        traded += u64::from(first.volume_wh.0 > 0);
    }
    report::write_section(
        "determinism_books",
        json!({
            "books": cases,
            "orders": orders,
            "books_with_trades": traded,
            "trades": trades,
            "mismatches": mismatches,
            "seconds": watch.elapsed().as_secs_f64(),
        }),
    );
    assert!(
        traded > cases / 2,
        "most random books must trade, or the check proves little"
    );
}

const LEN: u64 = 900_000;
const STEP: u64 = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_replay_reproduces_settlement_hashes() {
    util::require_system_mosquitto();
    // A week of 15-minute intervals in every run.
    let intervals: u64 = 672;
    let grid = util::unique_grid("replay");
    let dir = util::temp_dir("replay");
    let homes: Vec<TestHousehold> = (0..6).map(|i| TestHousehold::new("replay", i)).collect();
    let start = IntervalId::containing(UnixMs(1_783_000_000_000), LEN);
    let clock = Arc::new(ManualClock::new(UnixMs(start.0)));
    let mut cfg = engine::config(&grid, &homes, &dir, 1883);
    cfg.settle_grace_ms = 1_000;
    cfg.params = AuctionParams {
        grid_fee: MicroPerKwh(10_000),
        ..AuctionParams::default()
    };
    let params = cfg.params.clone();
    let eng = engine::start(cfg, clock.clone()).await;
    let sender = Sender::connect(
        &grid,
        "127.0.0.1",
        1883,
        eng.engine_key(),
        Duration::from_secs(5),
    )
    .await;
    let mut rng = Rng::new(0x5eed_0077);
    let mut seq = vec![0u64; homes.len()];
    let mut counters = vec![(10_000u64, 10_000u64); homes.len()];
    let mut nonce = vec![0u64; homes.len()];
    let watch = protocol::Stopwatch::start();
    // One step every five simulated minutes: a reading per meter; at each
    // interval's start, the orders for the next interval.
    for step in 0..=(intervals * (LEN / STEP)) {
        let now = UnixMs(start.0 + step * STEP);
        clock.set(now);
        let current = IntervalId::containing(now, LEN);
        for (i, h) in homes.iter().enumerate() {
            // Households 0..3 sell in the sun, 3..6 buy; deliveries vary.
            let sells = i < 3;
            let (imp, exp) = counters[i];
            counters[i] = if sells {
                (imp + rng.range(0, 20), exp + rng.range(50, 400))
            } else {
                (imp + rng.range(50, 400), exp)
            };
            seq[i] += 1;
            let r = reading(
                &grid,
                h,
                &h.meters[0],
                seq[i],
                now,
                counters[i].0,
                counters[i].1,
            );
            sender
                .send_tracked(
                    AckKey::reading(&h.id, &h.meters[0], seq[i]),
                    readings_topic(&grid, &h.meters[0]),
                    signed(Domain::Reading, &h.key, &r),
                )
                .await;
            if now.0 == current.0 && step < intervals * (LEN / STEP) {
                for _ in 0..rng.range(1, 3) {
                    nonce[i] += 1;
                    let side = if sells { Side::Sell } else { Side::Buy };
                    let o = order(
                        &grid,
                        h,
                        current.next(LEN),
                        side,
                        rng.range(50, 1_500),
                        rng.range(90, 310) * 1000,
                        nonce[i],
                        now,
                    );
                    sender
                        .send_tracked(
                            AckKey::order(&h.id, nonce[i]),
                            orders_topic(&grid, &h.id),
                            signed(Domain::Order, &h.key, &o),
                        )
                        .await;
                }
            }
        }
        // Everything of this interval stored before the clock reaches the
        // next one (whose gate closure would otherwise meet orders still in
        // flight).
        if (now.0 + STEP) % LEN == start.0 % LEN {
            sender.drain(Duration::from_secs(30)).await;
        }
    }
    sender.drain(Duration::from_secs(30)).await;
    // Everything up to the last ordered interval is cleared and settled.
    let last = IntervalId(start.0 + intervals * LEN);
    let end = UnixMs(last.0 + LEN + 60_000);
    clock.set(end);
    // A reading past the last interval's end, so that it can settle.
    for (i, h) in homes.iter().enumerate() {
        seq[i] += 1;
        let r = reading(
            &grid,
            h,
            &h.meters[0],
            seq[i],
            end,
            counters[i].0,
            counters[i].1,
        );
        sender
            .send_tracked(
                AckKey::reading(&h.id, &h.meters[0], seq[i]),
                readings_topic(&grid, &h.meters[0]),
                signed(Domain::Reading, &h.key, &r),
            )
            .await;
    }
    sender.drain(Duration::from_secs(30)).await;
    let pool = eng.pool();
    let settled: i64 = util::wait_for(
        "every interval up to the last ordered one to settle",
        Duration::from_secs(120),
        || async {
            // (The interval after it is cleared too, but cannot settle before
            // the clock passes its end.)
            let (settled, max): (i64, Option<i64>) =
                sqlx::query_as("SELECT COUNT(*), MAX(interval_start) FROM settlements")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            max.is_some_and(|m| m >= i64::try_from(last.0).unwrap_or(i64::MAX))
                .then_some(settled)
        },
    )
    .await;
    let engine_seconds = watch.elapsed().as_secs_f64();
    let enrolments: Vec<clearing::Enrolment> = homes.iter().map(TestHousehold::enrolment).collect();
    let ekey = engine::engine_key(&grid);
    sender.close().await;
    eng.shutdown().await.expect("engine shutdown");

    // The replay: a fresh database fed only with the journal.
    let original = store::open(&dir.join("engine.db"))
        .await
        .expect("open the engine's database");
    let replay = store::open(&dir.join("replay.db"))
        .await
        .expect("open a fresh database");
    let registry = Registry::sync(&replay, &enrolments, UnixMs(start.0))
        .await
        .expect("registry");
    clearing::settlement::register_engine_key(&replay, &ekey.verifying_key(), UnixMs(start.0))
        .await
        .expect("engine key");
    {
        let mut conn = replay.acquire().await.expect("connection");
        let path = dir.join("engine.db").display().to_string();
        sqlx::query("ATTACH DATABASE ? AS journal")
            .bind(&path)
            .execute(&mut *conn)
            .await
            .expect("attach");
        sqlx::query("INSERT INTO readings SELECT * FROM journal.readings")
            .execute(&mut *conn)
            .await
            .expect("copy readings");
        sqlx::query("INSERT INTO orders SELECT * FROM journal.orders")
            .execute(&mut *conn)
            .await
            .expect("copy orders");
        sqlx::query("DETACH DATABASE journal")
            .execute(&mut *conn)
            .await
            .expect("detach");
    }
    type Row = (i64, Vec<u8>, i64, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.interval_start, i.result_envelope, i.cleared_at, s.hash FROM intervals i \
         JOIN settlements s ON s.interval_start = i.interval_start ORDER BY i.interval_start",
    )
    .fetch_all(&original)
    .await
    .expect("journal rows");
    let ledger = Ledger::new(replay.clone(), ekey.clone());
    let (mut results_equal, mut hashes_equal, mut with_trades) = (0u64, 0u64, 0u64);
    let mut differences = Vec::new();
    for (interval, envelope, cleared_at, hash) in &rows {
        let interval = IntervalId(u64::try_from(*interval).expect("interval"));
        let now = UnixMs(u64::try_from(*cleared_at).expect("time"));
        let cleared = book::clear_interval(&replay, &grid, &params, &ekey, interval, now)
            .await
            .expect("replay clearing");
        with_trades += u64::from(!cleared.result.trades.is_empty());
        if cleared.envelope == *envelope {
            results_equal += 1;
        } else {
            differences.push(format!("interval {}: result differs", interval.0));
        }
        let ctx = SettleCtx {
            pool: &replay,
            registry: &registry,
            grid: &grid,
            interval_ms: LEN,
        };
        let rec = settler::settle_interval(ctx, &params, &ledger, interval, now)
            .await
            .expect("replay settlement");
        if rec.hash.to_hex() == *hash {
            hashes_equal += 1;
        } else {
            differences.push(format!("interval {}: settlement hash differs", interval.0));
        }
    }
    let chain_original = clearing::verify_ledger(&original)
        .await
        .expect("the engine's chain verifies");
    let chain_replay = clearing::verify_ledger(&replay)
        .await
        .expect("the replayed chain verifies");
    let n = u64::try_from(rows.len()).expect("n");
    report::write_section(
        "determinism_replay",
        json!({
            "intervals_replayed": n,
            "intervals_with_trades": with_trades,
            "settlements_recorded": settled,
            "results_identical": results_equal,
            "settlement_hashes_identical": hashes_equal,
            "chain_records_original": chain_original,
            "chain_records_replay": chain_replay,
            "differences": differences,
            "engine_run_seconds": engine_seconds,
        }),
    );
    assert!(
        n >= intervals,
        "expected at least {intervals} settled intervals, got {n}"
    );
    assert!(
        with_trades >= intervals / 2,
        "too few intervals traded ({with_trades}) for the replay to mean much"
    );
    assert!(differences.is_empty(), "replay differs: {differences:?}");
    assert_eq!(chain_original, chain_replay);
}
