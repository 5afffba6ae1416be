//! Item 1 of the fault suite: the clearing engine killed with SIGKILL.
//!
//! The engine is the real `voltshare` binary (`voltshare run --config` with
//! only the `[engine]` role; short intervals on the real clock) on a unique
//! grid of the real Mosquitto on 127.0.0.1:1883. Four real meter agents (in
//! this process, each polling its own Modbus TCP simulator, each with its
//! SQLite outbox) publish readings, and a test sender places crossing buy
//! and sell orders two intervals ahead, resending until acknowledged. The
//! engine is killed at 200 random points across 50 intervals (two-second
//! intervals by default, four-second ones with `VOLTSHARE_LONG=1`) and
//! started again each time; the log around each kill says what it was doing
//! (the report counts the kills by phase).
//!
//! Afterwards, from the engine's database and the agents' outboxes:
//! - zero lost readings: per meter, engine ∪ outbox = 1..=last, and the
//!   outboxes drain to empty;
//! - every order acknowledged, the stored orders exactly the accepted ones;
//! - zero lost or duplicated settlements: cleared intervals contiguous, each
//!   settled once, the hash chain verifies;
//! - trades identical to a run without crashes: each interval's stored
//!   result equals clearing its stored signed orders again with
//!   `clearing::auction`, and equals clearing the orders the sender had
//!   acknowledged as accepted. Orders refused during the run are counted
//!   by reason (`order_outcomes`), and the report says how many intervals
//!   would differ had every order sent been cleared. None may be refused as
//!   a `replay`: an order whose first delivery died with the engine and
//!   whose resend arrives after a later nonce of the same household is a
//!   late delivery, not a replay (a resend that misses its gate is refused
//!   as `gate_closed`, as it would be without a crash).
//!
//! The second test runs the same with the `evm` settlement backend on a real
//! Anvil (blocks every second, contracts deployed from the committed
//! artifact; 50 kills across 15 four-second intervals by default, 200
//! across 50 with `VOLTSHARE_LONG=1`): afterwards every batch in the database is confirmed on chain
//! with the same digest, and no cleared interval without a batch in the
//! database has one on chain: the chain's set of batches equals the
//! database's.

use clearing::book::{self, SignedOrder};
use protocol::{
    AckOutcome, AuctionParams, Clock, IntervalId, MicroPerKwh, SystemClock, canonical_json,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use voltshare_tests::agents::{Agents, wait_outboxes_empty};
use voltshare_tests::chain::{ChainSetup, account};
use voltshare_tests::checks::{self, audit_intervals, audit_seqs};
use voltshare_tests::orders::{FeedPlan, OrderFeed, SentOrders, last_target};
use voltshare_tests::procs::Proc;
use voltshare_tests::sender::{AckKey, Sender, TestHousehold};
use voltshare_tests::util::{self, Rng};
use voltshare_tests::{engine, report};

/// One crash run's shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    kills: u32,
    intervals: u64,
    /// Interval length, real milliseconds (the binary runs on the system
    /// clock).
    len: u64,
}

fn engine_toml(
    len: u64,
    grid: &protocol::GridId,
    dir: &Path,
    homes: &[TestHousehold],
    params: &AuctionParams,
    chain: Option<&ChainSetup>,
) -> String {
    let mut s = format!(
        "grid = \"{grid}\"\ndata_dir = \"{d}/gw\"\n\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\n\n\
         [engine]\nenabled = true\nkey_file = \"{d}/engine.key\"\ndb_path = \"{d}/engine.db\"\n\
         interval_ms = {len}\nsettle_grace_ms = 500\nsettle_max_wait_ms = 20000\nclient_id = \"vs-engine-{grid}\"\n\n\
         [engine.params]\ngrid_fee = {fee}\n",
        d = dir.display(),
        fee = params.grid_fee.0,
    );
    if let Some(c) = chain {
        s.push_str(&format!(
            "\n[engine.evm]\nrpc_url = \"{}\"\nchain_id = {}\ncontract = \"{}\"\nsettler_key_file = \"{}/settler.key\"\n\
             utility_address = \"{}\"\nconfirmations = 1\nrpc_timeout_ms = 2000\n",
            c.endpoint,
            c.deployment.chain_id,
            c.deployment.contract,
            dir.display(),
            voltshare_tests::chain::utility(),
        ));
    }
    for (i, h) in homes.iter().enumerate() {
        let e = h.enrolment();
        s.push_str(&format!(
            "\n[[engine.households]]\nhousehold = \"{}\"\npublic_key = \"{}\"\nmeters = [\"{}\"]\n",
            e.household, e.public_key, h.meters[0]
        ));
        if chain.is_some() {
            s.push_str(&format!("settlement_address = \"{}\"\n", account(i)));
        }
    }
    s
}

/// What the engine was doing when it was killed, from the log lines it
/// wrote since it was started.
fn phase(log: &str) -> &'static str {
    let last = log.lines().rev().find(|l| {
        [
            "interval settled",
            "interval cleared",
            "clearing engine started",
            "connected to broker",
        ]
        .iter()
        .any(|k| l.contains(k))
    });
    match last {
        None => "starting",
        Some(l) if l.contains("interval settled") => "after_settlement",
        Some(l) if l.contains("interval cleared") => "between_clearing_and_settlement",
        Some(_) => "ingest",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_killed_at_random_points_loses_nothing() {
    // The figure in every run: 200 kills across 50 intervals (two
    // seconds each by default, four in the long run).
    let shape = Shape {
        kills: 200,
        intervals: 50,
        len: util::pick(2_000, 4_000),
    };
    crash_run(false, shape).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_killed_with_chain_settlement_keeps_chain_equal_to_database() {
    // Settling on chain makes every restart slower (the settler reconciles
    // with the node first): 50 kills over 15 four-second intervals by
    // default, 200 over 50 in the long run.
    let shape = Shape {
        kills: util::pick(50, 200),
        intervals: util::pick(15, 50),
        len: 4_000,
    };
    crash_run(true, shape).await;
}

async fn crash_run(on_chain: bool, shape: Shape) {
    let Shape {
        kills,
        intervals: run_intervals,
        len,
    } = shape;
    util::require_system_mosquitto();
    let tag = if on_chain { "crash-chain" } else { "crash" };
    let grid = util::unique_grid(tag);
    let dir = util::temp_dir(tag);
    let homes: Vec<TestHousehold> = (0..4).map(|i| TestHousehold::new(tag, i)).collect();
    let chain = if on_chain {
        Some(voltshare_tests::chain::setup(&dir, homes.len()).await)
    } else {
        None
    };
    let params = AuctionParams {
        grid_fee: MicroPerKwh(10_000),
        ..AuctionParams::default()
    };
    let ekey = engine::engine_key(&grid);
    controller::keys::write_new(&dir.join("engine.key"), &ekey).expect("engine key file");
    let config = dir.join("engine.toml");
    std::fs::write(
        &config,
        engine_toml(len, &grid, &dir, &homes, &params, chain.as_ref()),
    )
    .expect("config");
    let log = dir.join("engine.log");
    let mut eng = Proc::voltshare_run("engine", &config, &log);

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sender = Arc::new(
        Sender::connect(
            &grid,
            "127.0.0.1",
            1883,
            ekey.verifying_key(),
            Duration::from_secs(1),
        )
        .await,
    );
    let agents = Agents::start(
        &grid,
        &homes,
        &dir,
        1883,
        ekey.verifying_key(),
        clock.clone(),
        Duration::from_millis(250),
        Duration::from_secs(2),
    )
    .await;

    // Orders: at each interval start, 1–2 per household for two intervals
    // ahead; even households sell low, odd ones buy high, so books cross.
    let feed = OrderFeed::start(
        sender.clone(),
        &grid,
        &homes,
        clock.clone(),
        FeedPlan {
            interval_ms: len,
            ahead: 2,
            max_per_household: 2,
            traders: homes.len(),
            seed: 0x5eed_0001,
        },
    );

    // The kills: spread over the run, random up and down times.
    let mut rng = Rng::new(0x5eed_1001);
    let total_ms = run_intervals * len;
    let per_kill = total_ms / u64::from(kills);
    let mut phases: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut down_ms_total = 0u64;
    let watch = protocol::Stopwatch::start();
    for _ in 0..kills {
        let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let up = rng.range(per_kill / 3, per_kill * 4 / 3);
        tokio::time::sleep(Duration::from_millis(up)).await;
        assert!(
            eng.running(),
            "the engine exited by itself:\n{}",
            eng.log_tail(3000)
        );
        eng.kill9();
        let text = std::fs::read(&log).unwrap_or_default();
        let since =
            String::from_utf8_lossy(&text[usize::try_from(mark).unwrap_or(0).min(text.len())..])
                .into_owned();
        *phases.entry(phase(&since)).or_insert(0) += 1;
        let down = rng.range(50, per_kill / 3);
        down_ms_total += down;
        tokio::time::sleep(Duration::from_millis(down)).await;
        eng = Proc::voltshare_run("engine", &config, &log);
    }
    let crash_seconds = watch.elapsed().as_secs_f64();
    let sent = feed.stop().await;
    let last_target = last_target(&sent);

    // Calm: the engine runs on until every order is acknowledged, the
    // intervals that were ordered for are cleared and settled, and the
    // outboxes are empty.
    sender.drain(Duration::from_secs(60)).await;
    let db = dir.join("engine.db");
    let pool = checks::open_read(&db).await;
    checks::wait_settled_through(&pool, last_target, 90).await;
    if on_chain {
        voltshare_tests::chain::wait_all_confirmed(&pool, 120).await;
    }
    let drained = wait_outboxes_empty(&agents.meters, Duration::from_secs(60)).await;
    let meters = agents.meters.clone();
    let agent_readings = agents.readings();
    agents.stop().await;
    eng.terminate(Duration::from_secs(10));

    // Readings.
    let mut seq_audits = Vec::new();
    for (m, outbox) in &meters {
        let (last, waiting) = checks::outbox_state(outbox, m).await;
        let stored = checks::engine_seqs(&pool, m).await;
        seq_audits.push(audit_seqs(m, last, &stored, &waiting));
    }
    // Orders: stored exactly the accepted ones.
    let outcomes = sender.outcomes();
    let mut accepted = SentOrders::new();
    let mut order_outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for ((h, n), v) in &sent {
        let key = AckKey::order(&v.0.household, *n);
        let name = match outcomes.get(&key) {
            Some(AckOutcome::Accepted) => {
                accepted.insert((h.clone(), *n), v.clone());
                "accepted".to_owned()
            }
            // Stored before a crash took the first ack with it; the resend
            // was recognised.
            Some(AckOutcome::Duplicate) => {
                accepted.insert((h.clone(), *n), v.clone());
                "stored_ack_lost_in_crash_then_duplicate".to_owned()
            }
            Some(AckOutcome::Rejected(r)) => format!("rejected_{r}"),
            None => "unacknowledged".to_owned(),
        };
        *order_outcomes.entry(name).or_insert(0) += 1;
    }
    let stored_orders: Vec<(String, i64)> =
        sqlx::query_as("SELECT household, nonce FROM orders ORDER BY household, nonce")
            .fetch_all(&pool)
            .await
            .expect("orders");
    let stored_keys: Vec<(String, u64)> = stored_orders
        .into_iter()
        .map(|(h, n)| (h, u64::try_from(n).expect("nonce")))
        .collect();
    let accepted_keys: Vec<(String, u64)> = accepted.keys().cloned().collect();
    // Trades: the stored results against the orders the sender saw accepted
    // (what a run without crashes would have cleared).
    let audit = audit_intervals(&pool, &grid, &params, len, last_target).await;
    let cleared: Vec<(i64, String)> =
        sqlx::query_as("SELECT interval_start, result_json FROM intervals ORDER BY interval_start")
            .fetch_all(&pool)
            .await
            .expect("intervals");
    // Against the orders the sender saw accepted (the assertion), and, for
    // the report, against every order sent: a run without crashes accepts
    // them all, so intervals differing there show what refused orders cost.
    let reclear_against = |orders: &SentOrders| {
        let mut differing = 0u64;
        for (start, json) in &cleared {
            let interval = IntervalId(u64::try_from(*start).expect("interval"));
            let mut mine: Vec<SignedOrder> = orders
                .values()
                .filter(|(o, _)| o.interval == interval)
                .map(|(o, b)| SignedOrder {
                    order: o.clone(),
                    envelope: b.clone(),
                })
                .collect();
            mine.sort_by(|a, b| {
                (a.order.household.as_str(), a.order.nonce)
                    .cmp(&(b.order.household.as_str(), b.order.nonce))
            });
            let (result, _) = book::result_of(&grid, interval, &params, &mine);
            differing += u64::from(canonical_json(&result) != json.as_bytes());
        }
        differing
    };
    let no_crash_mismatches = reclear_against(&accepted);
    let all_sent_mismatches = reclear_against(&sent);
    // The chain's set of batches against the database's.
    let mut chain_figures = json!("not run: this variant settles on the embedded ledger only");
    let mut chain_mismatches = 0u64;
    if let Some(c) = &chain {
        let cmp = c.compare(&pool, &grid).await;
        chain_mismatches = cmp.digest_mismatches + cmp.batches_on_chain_not_in_database;
        chain_figures = json!(cmp);
    }
    let lost: u64 = seq_audits.iter().map(|a| a.lost).sum();
    let gaps: u64 = seq_audits.iter().map(|a| a.gaps).sum();
    let unexpected: u64 = seq_audits.iter().map(|a| a.unexpected).sum();
    let expected: u64 = seq_audits.iter().map(|a| a.expected).sum();
    let delivered: u64 = seq_audits.iter().map(|a| a.delivered).sum();
    report::write_section(
        if on_chain {
            "engine_crash_chain"
        } else {
            "engine_crash"
        },
        json!({
            "kills": kills,
            "kill_phases": phases,
            "intervals_spanned": run_intervals,
            "interval_ms": len,
            "crash_phase_seconds": crash_seconds,
            "engine_down_ms_total": down_ms_total,
            "readings_expected": expected,
            "readings_delivered": delivered,
            "readings_lost": lost,
            "readings_duplicated": unexpected,
            "readings_gaps": gaps,
            "agent_readings_stored": agent_readings,
            "outboxes_drained": drained,
            "per_meter": seq_audits,
            "orders_sent": sent.len(),
            "order_outcomes": order_outcomes,
            "orders_stored": stored_keys.len(),
            "orders_stored_equal_accepted": stored_keys == accepted_keys,
            "intervals": audit,
            "results_differing_from_clearing_the_accepted_orders": no_crash_mismatches,
            "results_differing_from_clearing_every_order_sent": all_sent_mismatches,
            "chain_vs_database": chain_figures,
        }),
    );
    assert_eq!(lost, 0, "readings lost: {seq_audits:?}");
    assert_eq!(
        unexpected, 0,
        "readings stored that were never issued or twice"
    );
    assert_eq!(gaps, 0, "gaps in the engine's sequence numbers");
    assert!(drained, "the outboxes did not drain");
    assert!(
        delivered == expected && expected > 0,
        "every reading delivered"
    );
    assert_eq!(
        stored_keys, accepted_keys,
        "the stored orders are exactly the accepted ones"
    );
    assert_eq!(
        order_outcomes.get("unacknowledged"),
        None,
        "every order acknowledged"
    );
    assert_eq!(
        order_outcomes.get("rejected_replay"),
        None,
        "an order resent after a crash was refused as a replay: {order_outcomes:?}"
    );
    assert_eq!(
        audit.cleared_gaps, 0,
        "cleared intervals have gaps: {audit:?}"
    );
    assert_eq!(
        audit.unsettled, 0,
        "cleared intervals left unsettled: {audit:?}"
    );
    assert_eq!(audit.duplicate_settlements, 0);
    assert_eq!(
        audit.reclear_mismatches, 0,
        "a stored result differs from re-clearing its orders"
    );
    assert_eq!(
        no_crash_mismatches, 0,
        "a stored result differs from clearing the accepted orders"
    );
    assert!(
        audit.intervals_with_trades >= run_intervals / 2,
        "too few intervals traded: {audit:?}"
    );
    assert_eq!(audit.chain_records, audit.settled);
    assert_eq!(
        chain_mismatches, 0,
        "the chain's batches differ from the database's: {chain_figures}"
    );
    Arc::try_unwrap(sender).expect("sender").close().await;
}
