//! Item 3 of the fault suite: outages of the broker, of the engine and of
//! the chain's RPC node.
//!
//! Every part runs on one [`ScaledClock`]: the engine's schedule, the
//! agents' timestamps and the simulated devices' energy all follow it, so an
//! outage of `N` minutes of that clock is `N` minutes of the system's time
//! however fast it runs; the report gives both (`simulated_minutes`,
//! `wall_seconds`).
//!
//! `broker_and_engine_outages_deliver_everything_once`: a private Mosquitto
//! (`mosquitto -c`, a free loopback port, no persistence) carries the
//! traffic of 50 real meter agents (in this process, each polling its own
//! Modbus TCP simulator, each with its SQLite outbox), a test sender placing
//! orders three 15-minute intervals ahead, and an in-process clearing
//! engine. The broker is killed with SIGKILL for 10 minutes (every session
//! and queued message is gone: only the outboxes bring them back), then the
//! engine is stopped abruptly ([`clearing::EngineHandle::kill`]: tasks
//! aborted, nothing flushed) for 30 minutes and started again on its
//! database. Default: the clock runs 60× real time and each meter is read
//! every second of real time (a minute of system time: 50 readings a real
//! second in all); `VOLTSHARE_LONG=1`: 5× and every 200 ms, i.e. 50 meters
//! at 1 Hz of system time (250 readings a real second; at 10× this machine's
//! 50 in-process agents managed only two thirds of the rate and the engine
//! could not drain the 30-minute backlog while they went on; at 5× the run
//! takes about half an hour of real time here). The agents resend
//! what is unacknowledged after 30 real seconds, as a gateway does.
//!
//! `chain_rpc_outage_backlog_settles_once`: the engine settles on a real
//! Anvil through a TCP proxy, which is cut for 15 minutes of system time
//! (60× real time by default, 10× long) while meters and orders go on.
//!
//! Afterwards, each time: 100 % of the readings delivered (engine ∪ outbox
//! = 1..=last, outboxes empty) and in order (stored in sequence order),
//! every order acknowledged and none refused, the auctions continued or
//! caught up (cleared intervals contiguous, every ordered interval cleared),
//! and the backlog settled once (one settlement per cleared interval, the
//! chain verifies; on chain, every batch's digest equals the database's and
//! no interval has a batch on chain that the database lacks).

use protocol::{AuctionParams, Clock, IntervalId, MicroPerKwh, ScaledClock, UnixMs};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use voltshare_tests::agents::{Agents, wait_outboxes_empty};
use voltshare_tests::chain::{self, Proxy};
use voltshare_tests::checks::{self, IntervalAudit, SeqAudit, audit_intervals, audit_seqs};
use voltshare_tests::orders::{FeedPlan, OrderFeed, last_target};
use voltshare_tests::procs::PrivateBroker;
use voltshare_tests::sender::{Sender, TestHousehold};
use voltshare_tests::util;
use voltshare_tests::{engine, report};

const MINUTE: u64 = 60_000;
/// The agents' resend period (real time), the gateway's: shorter ones make
/// 50 agents with a backlog republish it all faster than it is acknowledged.
const RESEND: Duration = Duration::from_secs(30);
/// The market's interval: 15 minutes of system time.
const LEN: u64 = 15 * MINUTE;

/// A run's shape; durations in milliseconds of system time.
#[derive(Debug, Clone, Copy)]
struct Plan {
    meters: usize,
    /// Real time between two polls of one meter.
    poll: Duration,
    speed: u64,
    broker_down: u64,
    engine_down: u64,
    rpc_down: u64,
    calm: u64,
}

fn plan() -> Plan {
    let base = Plan {
        meters: 50,
        poll: Duration::from_secs(1),
        speed: 60,
        broker_down: 10 * MINUTE,
        engine_down: 30 * MINUTE,
        rpc_down: 15 * MINUTE,
        calm: 5 * MINUTE,
    };
    if util::long() {
        Plan {
            poll: Duration::from_millis(200),
            speed: 5,
            ..base
        }
    } else {
        base
    }
}

/// A clock starting a minute before an interval boundary.
fn clock(speed: u64) -> Arc<dyn Clock> {
    let start = IntervalId::containing(UnixMs(1_783_000_000_000), LEN).0 + LEN - MINUTE;
    Arc::new(ScaledClock::new(UnixMs(start), speed))
}

/// Sleeps `sim_ms` of the clock's time.
async fn pass(clock: &Arc<dyn Clock>, sim_ms: u64) {
    tokio::time::sleep(clock.real_duration(sim_ms)).await;
}

fn feed_plan(households: usize, seed: u64) -> FeedPlan {
    FeedPlan {
        interval_ms: LEN,
        // Three intervals (45 minutes) ahead: still open after the 30-minute
        // engine outage, so that no order meets a closed gate because of
        // the test.
        ahead: 3,
        max_per_household: 1,
        traders: households.min(8),
        seed,
    }
}

fn engine_config(
    grid: &protocol::GridId,
    homes: &[TestHousehold],
    dir: &Path,
    port: u16,
) -> clearing::EngineConfig {
    let mut cfg = engine::config(grid, homes, dir, port);
    cfg.interval_ms = LEN;
    cfg.settle_grace_ms = MINUTE;
    cfg.settle_max_wait_ms = 4 * LEN;
    cfg.params = AuctionParams {
        grid_fee: MicroPerKwh(10_000),
        ..AuctionParams::default()
    };
    cfg
}

/// Delivery per meter, and readings stored out of sequence order.
async fn audit_meters(
    pool: &sqlx::SqlitePool,
    meters: &[(protocol::MeterId, PathBuf)],
) -> (Vec<SeqAudit>, u64) {
    let mut audits = Vec::new();
    let mut out_of_order = 0u64;
    for (m, outbox) in meters {
        let (last, waiting) = checks::outbox_state(outbox, m).await;
        let stored = checks::engine_seqs(pool, m).await;
        audits.push(audit_seqs(m, last, &stored, &waiting));
        let received: Vec<i64> =
            sqlx::query_scalar("SELECT received_at FROM readings WHERE meter = ? ORDER BY seq")
                .bind(m.as_str())
                .fetch_all(pool)
                .await
                .expect("received_at");
        out_of_order += received.windows(2).filter(|w| w[1] < w[0]).count() as u64;
    }
    (audits, out_of_order)
}

/// The delivery figures of a run, for the report.
fn delivery(audits: &[SeqAudit], out_of_order: u64, drained: bool) -> serde_json::Value {
    json!({
        "readings_expected": audits.iter().map(|a| a.expected).sum::<u64>(),
        "readings_delivered": audits.iter().map(|a| a.delivered).sum::<u64>(),
        "readings_lost": audits.iter().map(|a| a.lost).sum::<u64>(),
        "readings_duplicated": audits.iter().map(|a| a.unexpected).sum::<u64>(),
        "readings_gaps": audits.iter().map(|a| a.gaps).sum::<u64>(),
        "readings_stored_out_of_order": out_of_order,
        "outboxes_drained": drained,
    })
}

fn assert_delivered(audits: &[SeqAudit], out_of_order: u64, drained: bool) {
    assert!(drained, "outboxes did not drain");
    for a in audits {
        assert_eq!(a.lost, 0, "readings lost: {a:?}");
        assert_eq!(a.unexpected, 0, "readings repeated or never issued: {a:?}");
        assert_eq!(a.gaps, 0, "gaps: {a:?}");
        assert_eq!(a.delivered, a.expected, "not all delivered: {a:?}");
    }
    assert_eq!(out_of_order, 0, "readings stored out of sequence order");
}

fn assert_settled_once(audit: &IntervalAudit) {
    assert_eq!(
        audit.cleared_gaps, 0,
        "auctions skipped intervals: {audit:?}"
    );
    assert_eq!(audit.unsettled, 0, "backlog not settled: {audit:?}");
    assert_eq!(audit.duplicate_settlements, 0, "{audit:?}");
    assert_eq!(audit.reclear_mismatches, 0, "{audit:?}");
    assert_eq!(audit.chain_records, audit.settled, "{audit:?}");
    assert!(audit.intervals_with_trades > 0, "nothing traded: {audit:?}");
}

/// Intervals cleared so far.
async fn cleared(pool: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM intervals")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
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
    let clock = clock(p.speed);
    let cfg = engine_config(&grid, &homes, &dir, broker.port);
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
        RESEND,
    )
    .await;
    let feed = OrderFeed::start(
        sender.clone(),
        &grid,
        &homes,
        clock.clone(),
        feed_plan(homes.len(), 0x5eed_0003),
    );

    let watch = protocol::Stopwatch::start();
    let run_from = clock.now();
    pass(&clock, p.calm).await;
    // Broker outage.
    let readings_before_broker = agents.readings();
    let broker_watch = protocol::Stopwatch::start();
    let broker_from = clock.now();
    broker.down();
    pass(&clock, p.broker_down).await;
    let backlog_broker = agents.readings() - readings_before_broker;
    broker.up();
    let broker_to = clock.now();
    let broker_wall = broker_watch.elapsed().as_secs_f64();
    pass(&clock, p.calm).await;
    // Engine outage.
    let readings_before_engine = agents.readings();
    let cleared_before_engine = cleared(&eng.as_ref().expect("engine").pool()).await;
    let engine_watch = protocol::Stopwatch::start();
    let engine_from = clock.now();
    eng.take().expect("engine").kill();
    pass(&clock, p.engine_down).await;
    let backlog_engine = agents.readings() - readings_before_engine;
    eng = Some(engine::start(cfg.clone(), clock.clone()).await);
    let engine_to = clock.now();
    let engine_wall = engine_watch.elapsed().as_secs_f64();
    pass(&clock, p.calm).await;
    let sent = feed.stop().await;
    let target = last_target(&sent);

    // Everything delivered, cleared and settled.
    // The backlog queues at the broker ahead of the orders: the waits
    // scale with the clock.
    let backlog_wait = Duration::from_secs(180).max(clock.real_duration(2 * LEN));
    sender.drain(backlog_wait).await;
    let e = eng.take().expect("engine");
    let pool = e.pool();
    let caught_up = cleared(&pool).await - cleared_before_engine;
    checks::wait_settled_through(&pool, target, clock.real_duration(5 * LEN).as_secs() + 120).await;
    let drained = wait_outboxes_empty(&agents.meters, backlog_wait).await;
    let meters = agents.meters.clone();
    agents.stop().await;
    let (audits, out_of_order) = audit_meters(&pool, &meters).await;
    let audit = audit_intervals(&pool, &grid, &params, LEN, target).await;
    // (The sender sees the agents' reading acks too: orders only.)
    let outcomes: std::collections::HashMap<_, _> = sender
        .outcomes()
        .into_iter()
        .filter(|(k, _)| k.order)
        .collect();
    let rejected_orders = outcomes
        .values()
        .filter(|o| matches!(o, protocol::AckOutcome::Rejected(_)))
        .count();
    let sim_rate_ms = u64::try_from(p.poll.as_millis()).unwrap_or(0) * p.speed;
    // What the agents really achieved (a loaded machine polls less often
    // than asked).
    let run_minutes = (clock.now().0 - run_from.0) as f64 / 60_000.0;
    let taken: u64 = audits.iter().map(|a| a.expected).sum();
    let per_meter_minute = taken as f64 / p.meters as f64 / run_minutes;
    report::write_section(
        "outages",
        json!({
            "meters": p.meters,
            "clock_speed": p.speed,
            "system_ms_between_readings_per_meter_planned": sim_rate_ms,
            "readings_per_meter_per_system_minute_achieved": per_meter_minute,
            "system_minutes_of_the_run": run_minutes,
            "interval_ms": LEN,
            "broker_outage": {
                "simulated_minutes": (broker_to.0 - broker_from.0) as f64 / 60_000.0,
                "wall_seconds": broker_wall,
                "readings_taken_meanwhile": backlog_broker,
                "broker_restarts": broker.restarts,
            },
            "engine_outage": {
                "simulated_minutes": (engine_to.0 - engine_from.0) as f64 / 60_000.0,
                "wall_seconds": engine_wall,
                "readings_taken_meanwhile": backlog_engine,
                "intervals_cleared_since_restart_incl_catch_up": caught_up,
            },
            "delivery": delivery(&audits, out_of_order, drained),
            "orders_sent": sent.len(),
            "orders_acked": outcomes.len(),
            "orders_rejected": rejected_orders,
            "sender_connects": sender.connects(),
            "intervals": audit,
            "wall_seconds": watch.elapsed().as_secs_f64(),
        }),
    );
    assert!(
        backlog_broker >= p.meters as u64 && backlog_engine >= p.meters as u64,
        "every meter must build a backlog during each outage"
    );
    assert_delivered(&audits, out_of_order, drained);
    assert_eq!(rejected_orders, 0, "orders refused: {outcomes:?}");
    assert_eq!(outcomes.len(), sent.len(), "every order acknowledged");
    assert_settled_once(&audit);
    Arc::try_unwrap(sender).expect("sender").close().await;
    e.shutdown().await.expect("engine shutdown");
    broker.down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_rpc_outage_backlog_settles_once() {
    util::require_system_mosquitto();
    let p = plan();
    let households = 4;
    let grid = util::unique_grid("rpc-outage");
    let dir = util::temp_dir("rpc-outage");
    let homes: Vec<TestHousehold> = (0..households)
        .map(|i| TestHousehold::new("rpc-outage", i))
        .collect();
    let anvil = chain::setup(&dir, households).await;
    let mut proxy = Proxy::start(anvil.port).await;
    let clock = clock(p.speed);
    let mut cfg = engine_config(&grid, &homes, &dir, 1883);
    cfg.evm = Some(anvil.settings(&proxy.url()));
    for (i, h) in cfg.households.iter_mut().enumerate() {
        h.settlement_address = Some(chain::account(i).to_string());
    }
    let params = cfg.params.clone();
    let ekey = engine::engine_key(&grid).verifying_key();
    let eng = engine::start(cfg, clock.clone()).await;
    let pool = eng.pool();
    let sender =
        Arc::new(Sender::connect(&grid, "127.0.0.1", 1883, ekey, Duration::from_secs(2)).await);
    let agents = Agents::start(
        &grid,
        &homes,
        &dir,
        1883,
        ekey,
        clock.clone(),
        p.poll,
        RESEND,
    )
    .await;
    let feed = OrderFeed::start(
        sender.clone(),
        &grid,
        &homes,
        clock.clone(),
        FeedPlan {
            ahead: 1,
            max_per_household: 2,
            ..feed_plan(households, 0x5eed_0009)
        },
    );
    let watch = protocol::Stopwatch::start();
    // Trading and settling on chain before the outage.
    util::wait_for(
        "a first batch confirmed on chain",
        Duration::from_secs(120),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM settlements WHERE status IN ('confirmed', 'final')",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n > 0).then_some(())
        },
    )
    .await;
    let cleared_before = cleared(&pool).await;
    let rpc_watch = protocol::Stopwatch::start();
    let from = clock.now();
    proxy.cut();
    pass(&clock, p.rpc_down).await;
    let pending_during: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM settlements WHERE status IN ('pending', 'submitted')",
    )
    .fetch_one(&pool)
    .await
    .expect("settlements");
    let cleared_during = cleared(&pool).await - cleared_before;
    proxy.restore().await;
    let to = clock.now();
    let rpc_wall = rpc_watch.elapsed().as_secs_f64();
    pass(&clock, LEN).await;
    let sent = feed.stop().await;
    let target = last_target(&sent);
    sender.drain(Duration::from_secs(120)).await;
    checks::wait_settled_through(&pool, target, clock.real_duration(3 * LEN).as_secs() + 120).await;
    chain::wait_all_confirmed(&pool, 180).await;
    let drained = wait_outboxes_empty(&agents.meters, Duration::from_secs(120)).await;
    let meters = agents.meters.clone();
    agents.stop().await;
    let (audits, out_of_order) = audit_meters(&pool, &meters).await;
    let audit = audit_intervals(&pool, &grid, &params, LEN, target).await;

    // The chain's batches against the database's.
    let cmp = anvil.compare(&pool, &grid).await;
    // (The sender sees the agents' reading acks too: orders only.)
    let outcomes: std::collections::HashMap<_, _> = sender
        .outcomes()
        .into_iter()
        .filter(|(k, _)| k.order)
        .collect();
    let rejected_orders = outcomes
        .values()
        .filter(|o| matches!(o, protocol::AckOutcome::Rejected(_)))
        .count();
    report::write_section(
        "chain_rpc_outage",
        json!({
            "meters": households,
            "clock_speed": p.speed,
            "interval_ms": LEN,
            "rpc_outage": {
                "simulated_minutes": (to.0 - from.0) as f64 / 60_000.0,
                "wall_seconds": rpc_wall,
                "intervals_cleared_meanwhile": cleared_during,
                "batches_waiting_at_the_end_of_it": pending_during,
            },
            "delivery": delivery(&audits, out_of_order, drained),
            "orders_sent": sent.len(),
            "orders_acked": outcomes.len(),
            "orders_rejected": rejected_orders,
            "intervals": audit,
            "chain_vs_database": cmp,
            "wall_seconds": watch.elapsed().as_secs_f64(),
        }),
    );
    assert!(
        cleared_during >= 1,
        "the auctions must go on while the node is unreachable"
    );
    assert!(
        pending_during >= 1,
        "batches must wait while the node is unreachable"
    );
    assert_delivered(&audits, out_of_order, drained);
    assert_eq!(rejected_orders, 0, "orders refused: {outcomes:?}");
    assert_settled_once(&audit);
    assert_eq!(
        cmp.digest_mismatches, 0,
        "a batch on chain differs: {cmp:?}"
    );
    assert_eq!(
        cmp.batches_on_chain_not_in_database, 0,
        "a batch on chain that the database lacks: {cmp:?}"
    );
    assert_eq!(cmp.batches_in_database, audit.settled);
    Arc::try_unwrap(sender).expect("sender").close().await;
    eng.shutdown().await.expect("engine shutdown");
}
