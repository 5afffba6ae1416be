//! Mosquitto drops QoS 1 messages when a subscriber's queue is full; the
//! product loses nothing anyway.
//!
//! Mosquitto 2.0 keeps at most `max_inflight_messages` unacknowledged QoS 1
//! messages on the way to a client and queues at most `max_queued_messages`
//! more for it, online or offline (persistent session); beyond that it
//! drops them and logs "Outgoing messages are being dropped for client …".
//! The engine's session is persistent (`clean_session = false`), so while it
//! is away (or not reading) its queue fills. This test makes that happen on
//! purpose: a private Mosquitto (real broker, loopback, free port) with a
//! queue of 5 messages and an in-flight window of 1, eight real meter agents
//! (each polling its own Modbus TCP simulator, each with its SQLite outbox)
//! reading every 500 ms, and an in-process engine that is stopped abruptly
//! for 6 seconds (about 100 readings, far more than the queue) and started
//! again on its database.
//!
//! Checked: the broker really dropped messages (its log says so, and the
//! engine's restart received far fewer than were published meanwhile), and
//! still every reading every agent issued ends up stored exactly once, in
//! sequence, with every outbox empty: the agents republish what was never
//! acknowledged.

use controller::ingest_bench::PrivateMosquitto;
use protocol::{Clock, SystemClock};
use std::sync::Arc;
use std::time::Duration;
use voltshare_tests::agents::{Agents, wait_outboxes_empty};
use voltshare_tests::checks::{self, audit_seqs};
use voltshare_tests::sender::TestHousehold;
use voltshare_tests::{engine, util};

/// The agents' resend period: short, so that the test does not wait long for
/// the republication of what the broker dropped.
const RESEND: Duration = Duration::from_secs(2);
/// Slow enough that the engine keeps up through the tiny queue once it is
/// back (at 4 Hz × 8 meters the queue of 5 with one message in flight kept
/// overflowing in steady state, and resends were dropped as often as not).
const POLL: Duration = Duration::from_millis(500);
const OUTAGE: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_queue_drops_are_recovered_by_the_outboxes() {
    let grid = util::unique_grid("drops");
    let dir = util::temp_dir("drops");
    let broker = PrivateMosquitto::start_with(1, 5).expect("private mosquitto");
    let homes: Vec<TestHousehold> = (0..8).map(|i| TestHousehold::new("drops", i)).collect();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cfg = engine::config(&grid, &homes, &dir, broker.port);
    let ekey = engine::engine_key(&grid).verifying_key();
    let eng = engine::start(cfg.clone(), clock.clone()).await;
    let agents = Agents::start(
        &grid,
        &homes,
        &dir,
        broker.port,
        ekey,
        clock.clone(),
        POLL,
        RESEND,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The engine goes away; its persistent session's queue overflows.
    eng.kill().await;
    let before = agents.readings();
    tokio::time::sleep(OUTAGE).await;
    let published_meanwhile = agents.readings() - before;
    let eng = engine::start(cfg.clone(), clock.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = broker.log();
    assert!(
        log.contains("Outgoing messages are being dropped"),
        "the broker should have dropped messages for the absent engine \
         ({published_meanwhile} published meanwhile); its log:\n{log}"
    );
    assert!(
        published_meanwhile > 50,
        "only {published_meanwhile} readings while the engine was away"
    );

    // Everything arrives anyway, once. The agents keep reading at 4 Hz, so
    // their outboxes are rarely empty all at the same instant: wait until
    // every reading issued up to now (the outage's backlog included) is in
    // the engine's database.
    let pool = eng.pool();
    let mut targets = Vec::new();
    for (m, outbox) in &agents.meters {
        targets.push((m.clone(), checks::outbox_state(outbox, m).await.0));
    }
    let watch = protocol::Stopwatch::start();
    let drained = loop {
        let mut behind = Vec::new();
        for (m, upto) in &targets {
            let stored = checks::engine_seqs(&pool, m).await;
            let have = stored.iter().filter(|s| **s <= *upto).count();
            if u64::try_from(have).unwrap_or(0) < *upto {
                behind.push((m.to_string(), have, *upto));
            }
        }
        if behind.is_empty() {
            break Ok(());
        }
        if watch.elapsed() > Duration::from_secs(150) {
            break Err(behind);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Then the agents stop; what they read since may still wait.
    let _ = wait_outboxes_empty(&agents.meters, Duration::from_secs(3)).await;
    let meters = agents.meters.clone();
    agents.stop().await;
    assert!(
        drained.is_ok(),
        "backlog not delivered after 150 s (meter, stored, issued): {drained:?}"
    );
    for (m, outbox) in &meters {
        let (last, waiting) = checks::outbox_state(outbox, m).await;
        let stored = checks::engine_seqs(&pool, m).await;
        let audit = audit_seqs(m, last, &stored, &waiting);
        assert!(last > 10, "{m}: the agent issued only {last} readings");
        assert_eq!(audit.lost, 0, "{m}: lost readings: {audit:?}");
        assert_eq!(audit.unexpected, 0, "{m}: unexpected readings: {audit:?}");
        // Readings taken between the drain and the stop may still wait,
        // and the broker keeps dropping under this tiny queue, so a reading
        // dropped just before the stop waits in its outbox for the resend
        // (a gap in the engine, not a loss): every seq is stored or waiting.
        assert_eq!(audit.delivered + audit.waiting, last, "{m}: {audit:?}");
    }
    eng.shutdown().await.expect("engine shutdown");
}
