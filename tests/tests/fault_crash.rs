//! Item 1 of the fault suite: the clearing engine killed with SIGKILL.
//!
//! The engine is the real `voltshare` binary (`voltshare run --config` with
//! only the `[engine]` role; four-second intervals, real clock) on a unique
//! grid of the real Mosquitto on 127.0.0.1:1883. Four real meter agents (in
//! this process, each polling its own Modbus TCP simulator, each with its
//! SQLite outbox) publish readings, and a test sender places crossing buy
//! and sell orders two intervals ahead, resending until acknowledged. The
//! engine is killed at random points (10 times over about 8 intervals by
//! default, 200 times over 50 intervals with `VOLTSHARE_LONG=1`) and started
//! again each time; the log around each kill says what it was doing.
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
//!   acknowledged as accepted.
//!
//! The second test runs the same with the `evm` settlement backend on a real
//! Anvil (blocks every second, contracts deployed from the committed
//! artifact): afterwards every batch in the database is confirmed on chain
//! with the same digest, and no cleared interval without a batch in the
//! database has one on chain: the chain's set of batches equals the
//! database's.

use clearing::book::{self, SignedOrder};
use clearing::evm::alloy::node_bindings::{Anvil, AnvilInstance};
use clearing::evm::alloy::primitives::Address;
use clearing::evm::chain::Chain;
use clearing::evm::contract::{batch_digest, grid_word};
use clearing::evm::{ANVIL_KEYS, Deployment, fund_test_accounts, key_from_hex};
use protocol::{
    AckOutcome, AuctionParams, Clock, Domain, IntervalId, MicroPerKwh, Order, Side, SystemClock,
    canonical_json,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use voltshare_tests::agents::{Agents, wait_outboxes_empty};
use voltshare_tests::checks::{self, audit_intervals, audit_seqs};
use voltshare_tests::procs::Proc;
use voltshare_tests::sender::{AckKey, Sender, TestHousehold, order, orders_topic, signed};
use voltshare_tests::util::{self, Rng};
use voltshare_tests::{engine, report};

const LEN: u64 = 4_000;

/// Orders placed, by (household, nonce), with their wire bytes.
type SentOrders = BTreeMap<(String, u64), (Order, Vec<u8>)>;

/// The on-chain part of a run: Anvil, the deployed contracts, the settler key.
struct ChainSetup {
    _anvil: AnvilInstance,
    endpoint: String,
    deployment: Deployment,
}

/// The settlement account of household `i` on chain.
fn account(i: usize) -> Address {
    Address::repeat_byte(u8::try_from(0x10 + i).expect("small"))
}

async fn chain_setup(dir: &Path, households: usize) -> ChainSetup {
    let path = clearing::evm::anvil_path().expect(
        "Anvil is missing: run scripts/setup.d/20-contracts.sh (npm ci in deploy/contracts)",
    );
    // Blocks every second, so that confirmations accrue on a real clock.
    let anvil = Anvil::at(path).args(["--block-time", "1"]).spawn();
    let endpoint = anvil.endpoint();
    let chain = Chain::http(&endpoint, Duration::from_secs(5)).expect("rpc url");
    let admin = key_from_hex(ANVIL_KEYS[0]).expect("dev key");
    let settler = key_from_hex(ANVIL_KEYS[1]).expect("dev key");
    let deployment =
        clearing::evm::deploy(&chain, &admin, None, settler.address(), admin.address())
            .await
            .expect("deploy");
    let accounts: Vec<Address> = (0..households).map(account).collect();
    fund_test_accounts(&chain, &admin, &deployment, &accounts, 1_000_000_000)
        .await
        .expect("deposits");
    std::fs::write(dir.join("settler.key"), ANVIL_KEYS[1]).expect("settler key file");
    ChainSetup {
        _anvil: anvil,
        endpoint,
        deployment,
    }
}

fn engine_toml(
    grid: &protocol::GridId,
    dir: &Path,
    homes: &[TestHousehold],
    params: &AuctionParams,
    chain: Option<&ChainSetup>,
) -> String {
    let mut s = format!(
        "grid = \"{grid}\"\ndata_dir = \"{d}/gw\"\n\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\n\n\
         [engine]\nenabled = true\nkey_file = \"{d}/engine.key\"\ndb_path = \"{d}/engine.db\"\n\
         interval_ms = {LEN}\nsettle_grace_ms = 500\nsettle_max_wait_ms = 20000\nclient_id = \"vs-engine-{grid}\"\n\n\
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
            Address::repeat_byte(0xee),
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
    crash_run(false, util::pick(10, 200), util::pick(8, 50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_killed_with_chain_settlement_keeps_chain_equal_to_database() {
    crash_run(true, util::pick(6, 100), util::pick(6, 30)).await;
}

async fn crash_run(on_chain: bool, kills: u32, run_intervals: u64) {
    util::require_system_mosquitto();
    let tag = if on_chain { "crash-chain" } else { "crash" };
    let grid = util::unique_grid(tag);
    let dir = util::temp_dir(tag);
    let homes: Vec<TestHousehold> = (0..4).map(|i| TestHousehold::new(tag, i)).collect();
    let chain = if on_chain {
        Some(chain_setup(&dir, homes.len()).await)
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
        engine_toml(&grid, &dir, &homes, &params, chain.as_ref()),
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
    // ahead; households 0 and 1 sell low, 2 and 3 buy high, so books cross.
    let placing = Arc::new(AtomicBool::new(true));
    let sent_orders: Arc<std::sync::Mutex<SentOrders>> = Arc::default();
    let orders_task = {
        let (sender, placing, sent, homes, grid, clock) = (
            sender.clone(),
            placing.clone(),
            sent_orders.clone(),
            homes.clone(),
            grid.clone(),
            clock.clone(),
        );
        tokio::spawn(async move {
            let mut rng = Rng::new(0x5eed_0001);
            let mut nonce = vec![0u64; homes.len()];
            let mut last = None;
            while placing.load(Ordering::SeqCst) {
                let now = clock.now();
                let current = IntervalId::containing(now, LEN);
                if last != Some(current) {
                    last = Some(current);
                    let target = IntervalId(current.0 + 2 * LEN);
                    for (i, h) in homes.iter().enumerate() {
                        for _ in 0..rng.range(1, 2) {
                            nonce[i] += 1;
                            let (side, price) = if i < 2 {
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
                            let bytes = signed(Domain::Order, &h.key, &o);
                            sent.lock()
                                .expect("orders")
                                .insert((h.id.to_string(), o.nonce), (o.clone(), bytes.clone()));
                            sender
                                .send_tracked(
                                    AckKey::order(&h.id, o.nonce),
                                    orders_topic(&grid, &h.id),
                                    bytes,
                                )
                                .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The kills: spread over the run, random up and down times.
    let mut rng = Rng::new(0x5eed_1001);
    let total_ms = run_intervals * LEN;
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
    placing.store(false, Ordering::SeqCst);
    orders_task.await.expect("order task");
    let last_target = sent_orders
        .lock()
        .expect("orders")
        .values()
        .map(|(o, _)| o.interval)
        .max()
        .expect("orders were placed");

    // Calm: the engine runs on until every order is acknowledged, the
    // intervals that were ordered for are cleared and settled, and the
    // outboxes are empty.
    sender.drain(Duration::from_secs(60)).await;
    let db = dir.join("engine.db");
    let pool = checks::open_read(&db).await;
    util::wait_for(
        "the ordered intervals to be cleared and settled",
        Duration::from_secs(90),
        || async {
            let settled: Option<i64> =
                sqlx::query_scalar("SELECT MAX(interval_start) FROM settlements")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            settled
                .is_some_and(|s| s >= i64::try_from(last_target.0).unwrap_or(i64::MAX))
                .then_some(())
        },
    )
    .await;
    if on_chain {
        util::wait_for(
            "every recorded batch to be confirmed on chain",
            Duration::from_secs(120),
            || async {
                let open: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM settlements WHERE status IN ('pending', 'submitted')",
                )
                .fetch_one(&pool)
                .await
                .ok()?;
                (open == 0).then_some(())
            },
        )
        .await;
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
    let sent = sent_orders.lock().expect("orders").clone();
    let mut accepted: BTreeMap<(String, u64), (Order, Vec<u8>)> = BTreeMap::new();
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
    let audit = audit_intervals(&pool, &grid, &params, LEN, last_target).await;
    let cleared: Vec<(i64, String)> =
        sqlx::query_as("SELECT interval_start, result_json FROM intervals ORDER BY interval_start")
            .fetch_all(&pool)
            .await
            .expect("intervals");
    let mut no_crash_mismatches = 0u64;
    for (start, json) in &cleared {
        let interval = IntervalId(u64::try_from(*start).expect("interval"));
        let mut mine: Vec<SignedOrder> = accepted
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
        if canonical_json(&result) != json.as_bytes() {
            no_crash_mismatches += 1;
        }
    }
    // The chain's set of batches against the database's.
    let mut chain_figures = json!("not run: this variant settles on the embedded ledger only");
    let mut chain_mismatches = 0u64;
    if let Some(c) = &chain {
        let rpc = Chain::http(&c.endpoint, Duration::from_secs(5)).expect("rpc url");
        let word = grid_word(&grid);
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT interval_start, batch_json, status FROM settlements ORDER BY seq",
        )
        .fetch_all(&pool)
        .await
        .expect("settlements");
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        for (interval, json, status) in &rows {
            *statuses.entry(status.clone()).or_insert(0) += 1;
            let batch: protocol::SettlementBatch =
                serde_json::from_str(json).expect("stored batch");
            let onchain = rpc
                .batch_digest(
                    c.deployment.contract,
                    word,
                    u64::try_from(*interval).expect("interval"),
                )
                .await
                .expect("digest");
            if onchain != batch_digest(&batch) {
                chain_mismatches += 1;
            }
        }
        // No batch on chain that the database does not hold: every cleared
        // interval without a settlement row has none on chain either.
        let settled: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
        let mut extra_on_chain = 0u64;
        for (start, _) in &cleared {
            if !settled.contains(start) {
                let onchain = rpc
                    .batch_digest(
                        c.deployment.contract,
                        word,
                        u64::try_from(*start).expect("interval"),
                    )
                    .await
                    .expect("digest");
                extra_on_chain += u64::from(!onchain.is_zero());
            }
        }
        chain_mismatches += extra_on_chain;
        chain_figures = json!({
            "batches_in_database": rows.len(),
            "statuses": statuses,
            "digest_mismatches": chain_mismatches - extra_on_chain,
            "batches_on_chain_not_in_database": extra_on_chain,
        });
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
            "results_differing_from_no_crash_run": no_crash_mismatches,
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
