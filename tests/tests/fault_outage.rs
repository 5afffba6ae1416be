//! Item 3 of the fault suite: outages of the broker and of the engine.
//!
//! A private Mosquitto (`mosquitto -c`, listening on a free loopback port,
//! no persistence) carries the traffic of real meter agents (in this
//! process, each polling its own Modbus TCP simulator, each with its SQLite
//! outbox), a test sender placing orders four intervals ahead, and an
//! in-process clearing engine, all on one `ScaledClock`. The broker is
//! killed with SIGKILL and started again later (every session and queued
//! message is gone: only the outboxes bring them back); then the engine is
//! stopped abruptly ([`clearing::EngineHandle::kill`]: tasks aborted, nothing
//! flushed) and started again later on its database.
//!
//! Default: 4 meters polled every 250 ms, three-second intervals (the clock
//! runs 30× real time), each outage two intervals long. With
//! `VOLTSHARE_LONG=1`: 50 meters at 1 Hz on the real clock (five-minute
//! intervals), the broker down 10 minutes and the engine down 30 minutes.
//!
//! Afterwards, each time: 100 % of the readings delivered (engine ∪ outbox
//! = 1..=last, outboxes empty) and in order (the engine stored each meter's
//! readings in sequence order), every order acknowledged, the auctions
//! continued or caught up (cleared intervals contiguous, every ordered
//! interval cleared), and the backlog settled once (one settlement per
//! cleared interval, the chain verifies).

use protocol::{AuctionParams, Clock, Domain, IntervalId, MicroPerKwh, ScaledClock, Side, UnixMs};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use voltshare_tests::agents::{Agents, wait_outboxes_empty};
use voltshare_tests::checks::{self, audit_intervals, audit_seqs};
use voltshare_tests::procs::PrivateBroker;
use voltshare_tests::sender::{AckKey, Sender, TestHousehold, order, orders_topic, signed};
use voltshare_tests::util::{self, Rng};
use voltshare_tests::{engine, report};

struct Plan {
    meters: usize,
    poll: Duration,
    speed: u64,
    interval_ms: u64,
    broker_down: Duration,
    engine_down: Duration,
    calm: Duration,
}

fn plan() -> Plan {
    if util::long() {
        Plan {
            meters: 50,
            poll: Duration::from_secs(1),
            speed: 1,
            interval_ms: 300_000,
            broker_down: Duration::from_secs(600),
            engine_down: Duration::from_secs(1800),
            calm: Duration::from_secs(600),
        }
    } else {
        Plan {
            meters: 4,
            poll: Duration::from_millis(250),
            speed: 30,
            interval_ms: 90_000,
            broker_down: Duration::from_secs(6),
            engine_down: Duration::from_secs(6),
            calm: Duration::from_secs(6),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_and_engine_outages_deliver_everything_once() {
    let p = plan();
    let grid = util::unique_grid("outage");
    let dir = util::temp_dir("outage");
    let mut broker = PrivateBroker::start(&dir);
    let homes: Vec<TestHousehold> = (0..p.meters)
        .map(|i| TestHousehold::new("outage", i))
        .collect();
    let start = IntervalId::containing(UnixMs(1_783_000_000_000), p.interval_ms).0 + 1_000;
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(UnixMs(start), p.speed));
    let mut cfg = engine::config(&grid, &homes, &dir, broker.port);
    cfg.interval_ms = p.interval_ms;
    cfg.settle_grace_ms = p.interval_ms / 6;
    cfg.settle_max_wait_ms = p.interval_ms * 40;
    cfg.timestamp_window_ms = cfg.timestamp_window_ms.max(p.speed * 10_000);
    cfg.params = AuctionParams {
        grid_fee: MicroPerKwh(10_000),
        ..AuctionParams::default()
    };
    let params = cfg.params.clone();
    let ekey = engine::engine_key(&grid).verifying_key();
    let mut eng = Some(engine::start(cfg.clone(), clock.clone()).await);
    let sender = Arc::new(
        Sender::connect(
            &grid,
            "127.0.0.1",
            broker.port,
            ekey,
            Duration::from_secs(2),
        )
        .await,
    );
    let agents = Agents::start(
        &grid,
        &homes,
        &dir,
        broker.port,
        ekey,
        clock.clone(),
        p.poll,
        Duration::from_secs(3),
    )
    .await;

    let placing = Arc::new(AtomicBool::new(true));
    let last_target = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let orders_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let orders_task = {
        let (sender, placing, homes, grid, clock, last_target, orders_sent) = (
            sender.clone(),
            placing.clone(),
            homes.clone(),
            grid.clone(),
            clock.clone(),
            last_target.clone(),
            orders_sent.clone(),
        );
        let len = p.interval_ms;
        tokio::spawn(async move {
            let mut rng = Rng::new(0x5eed_0003);
            let mut nonce = vec![0u64; homes.len()];
            let mut last = None;
            while placing.load(Ordering::SeqCst) {
                let now = clock.now();
                let current = IntervalId::containing(now, len);
                if last != Some(current) {
                    last = Some(current);
                    let target = IntervalId(current.0 + 4 * len);
                    last_target.store(target.0, Ordering::SeqCst);
                    for (i, h) in homes.iter().enumerate().take(8) {
                        nonce[i] += 1;
                        let (side, price) = if i % 2 == 0 {
                            (Side::Sell, rng.range(90, 160))
                        } else {
                            (Side::Buy, rng.range(200, 310))
                        };
                        let o = order(
                            &grid,
                            h,
                            target,
                            side,
                            rng.range(20, 800),
                            price * 1000,
                            nonce[i],
                            now,
                        );
                        sender
                            .send_tracked(
                                AckKey::order(&h.id, o.nonce),
                                orders_topic(&grid, &h.id),
                                signed(Domain::Order, &h.key, &o),
                            )
                            .await;
                        orders_sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let watch = protocol::Stopwatch::start();
    tokio::time::sleep(p.calm).await;
    // Broker outage.
    let readings_before_broker = agents.readings();
    broker.down();
    tokio::time::sleep(p.broker_down).await;
    let backlog_broker = agents.readings() - readings_before_broker;
    broker.up();
    tokio::time::sleep(p.calm).await;
    // Engine outage.
    let readings_before_engine = agents.readings();
    eng.take().expect("engine").kill();
    tokio::time::sleep(p.engine_down).await;
    let backlog_engine = agents.readings() - readings_before_engine;
    eng = Some(engine::start(cfg.clone(), clock.clone()).await);
    tokio::time::sleep(p.calm).await;
    placing.store(false, Ordering::SeqCst);
    orders_task.await.expect("order task");
    let target = last_target.load(Ordering::SeqCst);

    // Everything delivered, cleared and settled.
    sender.drain(Duration::from_secs(120)).await;
    let e = eng.take().expect("engine");
    let pool = e.pool();
    util::wait_for(
        "the last ordered interval to settle",
        Duration::from_secs(120),
        || async {
            let settled: Option<i64> =
                sqlx::query_scalar("SELECT MAX(interval_start) FROM settlements")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            settled
                .is_some_and(|s| s >= i64::try_from(target).unwrap_or(i64::MAX))
                .then_some(())
        },
    )
    .await;
    let drained = wait_outboxes_empty(&agents.meters, Duration::from_secs(120)).await;
    let meters = agents.meters.clone();
    agents.stop().await;
    let mut audits = Vec::new();
    let mut out_of_order = 0u64;
    for (m, outbox) in &meters {
        let (last, waiting) = checks::outbox_state(outbox, m).await;
        let stored = checks::engine_seqs(&pool, m).await;
        audits.push(audit_seqs(m, last, &stored, &waiting));
        let received: Vec<i64> =
            sqlx::query_scalar("SELECT received_at FROM readings WHERE meter = ? ORDER BY seq")
                .bind(m.as_str())
                .fetch_all(&pool)
                .await
                .expect("received_at");
        out_of_order += received.windows(2).filter(|w| w[1] < w[0]).count() as u64;
    }
    let audit = audit_intervals(&pool, &grid, &params, p.interval_ms, IntervalId(target)).await;
    let outcomes = sender.outcomes();
    let rejected_orders = outcomes
        .values()
        .filter(|o| matches!(o, protocol::AckOutcome::Rejected(_)))
        .count();
    let expected: u64 = audits.iter().map(|a| a.expected).sum();
    let delivered: u64 = audits.iter().map(|a| a.delivered).sum();
    let lost: u64 = audits.iter().map(|a| a.lost).sum();
    let dup: u64 = audits.iter().map(|a| a.unexpected).sum();
    let gaps: u64 = audits.iter().map(|a| a.gaps).sum();
    report::write_section(
        "outages",
        json!({
            "meters": p.meters,
            "clock_speed": p.speed,
            "interval_ms": p.interval_ms,
            "broker_down_seconds": p.broker_down.as_secs(),
            "engine_down_seconds": p.engine_down.as_secs(),
            "broker_restarts": broker.restarts,
            "readings_taken_during_broker_outage": backlog_broker,
            "readings_taken_during_engine_outage": backlog_engine,
            "readings_expected": expected,
            "readings_delivered": delivered,
            "readings_lost": lost,
            "readings_duplicated": dup,
            "readings_gaps": gaps,
            "readings_stored_out_of_order": out_of_order,
            "outboxes_drained": drained,
            "orders_sent": orders_sent.load(Ordering::SeqCst),
            "orders_rejected": rejected_orders,
            "sender_connects": sender.connects(),
            "intervals": audit,
            "seconds": watch.elapsed().as_secs_f64(),
        }),
    );
    assert!(
        backlog_broker > 0 && backlog_engine > 0,
        "the outages must leave a backlog"
    );
    assert!(drained, "outboxes did not drain");
    assert_eq!(lost, 0, "readings lost: {audits:?}");
    assert_eq!(dup, 0);
    assert_eq!(gaps, 0);
    assert_eq!(delivered, expected);
    assert_eq!(out_of_order, 0, "readings stored out of sequence order");
    assert_eq!(rejected_orders, 0, "orders refused: {outcomes:?}");
    assert_eq!(
        audit.cleared_gaps, 0,
        "auctions skipped intervals: {audit:?}"
    );
    assert_eq!(audit.unsettled, 0, "backlog not settled: {audit:?}");
    assert_eq!(audit.duplicate_settlements, 0);
    assert_eq!(audit.reclear_mismatches, 0);
    assert_eq!(audit.chain_records, audit.settled);
    Arc::try_unwrap(sender).expect("sender").close().await;
    e.shutdown().await.expect("engine shutdown");
    broker.down();
}
