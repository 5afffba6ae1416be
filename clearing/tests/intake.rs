//! Intake through the real broker (Mosquitto on 127.0.0.1:1883): valid
//! readings and orders are stored and acknowledged with engine-signed acks;
//! forged, replayed, malformed, unknown-key, wrong-household and rewound
//! messages are refused and counted by reason, without losing the valid
//! messages around them; redeliveries are stored once.

mod common;

use clearing::RejectReason;
use common::*;
use protocol::{
    AckKind, AckOutcome, Domain, IntervalId, ManualClock, NodeStatus, Side, SignedEnvelope, Topic,
    UnixMs, decode_payload,
};
use std::sync::Arc;

async fn count(pool: &sqlx::SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_and_acks_a_valid_reading_and_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("accept");
    let a = household("alice", 1);
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let engine = start(config(&grid, dir.path(), &[&a]), clock).await;
    let mut client = TestClient::connect(&grid, "alice").await;
    // The engine announces itself online, retained.
    let status = Topic::Status {
        grid: grid.clone(),
        node: "engine".into(),
    }
    .to_string();
    let online: NodeStatus = decode_payload(&client.message_on(&status, 10).await).expect("status");
    assert!(online.online);

    let reading = a.reading(&grid, 1, T0, 1000, 500);
    client
        .publish(a.reading_topic(&grid), a.sign_reading(&reading))
        .await;
    let order = a.order(&grid, i0().next(LEN), Side::Sell, 500, 120_000, 1);
    client
        .publish(a.order_topic(&grid), a.sign_order(&order))
        .await;

    let acks = client.acks(2, 10).await;
    assert!(
        acks.iter()
            .all(|(h, i)| *h == a.id && i.outcome == AckOutcome::Accepted),
        "{acks:?}"
    );
    assert!(acks.iter().any(|(_, i)| i.kind == AckKind::Reading
        && i.seq == 1
        && i.meter.as_ref() == Some(&a.meter)));
    assert!(
        acks.iter()
            .any(|(_, i)| i.kind == AckKind::Order && i.seq == 1)
    );

    let pool = engine.pool();
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM readings").await, 1);
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM orders").await, 1);
    // The stored envelope is the exact bytes that were sent.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT envelope FROM readings")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(stored, a.sign_reading(&reading));
    let snap = engine.counters().snapshot();
    assert_eq!((snap.readings_accepted, snap.orders_accepted), (1, 1));
    assert!(engine.read_model().rejects().is_empty());
    // Accepted readings feed the live board.
    let live = engine.read_model().live();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].meter, a.meter);
    engine.shutdown().await.expect("shutdown");
    let offline: NodeStatus =
        decode_payload(&client.message_on(&status, 10).await).expect("status");
    assert!(!offline.online, "a clean shutdown announces offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_messages_by_reason_and_keeps_the_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("reject");
    let (a, b) = (household("alice", 1), household("bob", 2));
    let stranger = household("mallory", 9);
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let engine = start(config(&grid, dir.path(), &[&a, &b]), clock).await;
    let mut client = TestClient::connect(&grid, "mixed").await;
    let i1 = i0().next(LEN);

    // A first valid reading, so that later ones have a predecessor.
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 1, T0, 1000, 500)),
        )
        .await;
    client.acks(1, 10).await;

    // Forged: a valid reading with one signature byte changed.
    let mut forged =
        SignedEnvelope::sign_json(Domain::Reading, &a.key, &a.reading(&grid, 2, T0, 1100, 600))
            .expect("sign");
    forged.signature[0] ^= 1;
    client
        .publish(a.reading_topic(&grid), forged.encode())
        .await;
    // Malformed: garbage, invalid JSON, deeply nested JSON (the last two
    // correctly signed, so only the payload is at fault).
    client
        .publish(
            a.reading_topic(&grid),
            b"\x01\x05garbage that is not an envelope".to_vec(),
        )
        .await;
    let bad_json =
        SignedEnvelope::sign(Domain::Reading, &a.key, b"{\"seq\": 2, oops".to_vec()).expect("sign");
    client
        .publish(a.reading_topic(&grid), bad_json.encode())
        .await;
    let deep =
        SignedEnvelope::sign(Domain::Reading, &a.key, "[".repeat(5000).into_bytes()).expect("sign");
    client.publish(a.reading_topic(&grid), deep.encode()).await;
    // Unknown key: a stranger signs a reading of alice's meter.
    let mut r = a.reading(&grid, 2, T0, 1100, 600);
    r.household = stranger.id.clone();
    client
        .publish(a.reading_topic(&grid), stranger.sign_reading(&r))
        .await;
    // Wrong household: alice signs a reading of bob's meter.
    let mut r = b.reading(&grid, 1, T0, 10, 10);
    r.household = a.id.clone();
    client
        .publish(b.reading_topic(&grid), a.sign_reading(&r))
        .await;
    // Topic mismatch: alice's order on bob's order topic.
    client
        .publish(
            b.order_topic(&grid),
            a.sign_order(&a.order(&grid, i1, Side::Buy, 100, 200_000, 1)),
        )
        .await;
    // Counter rewind: seq 2 with a lower import counter than seq 1.
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 2, T0, 900, 600)),
        )
        .await;
    // Replays: seq 1 with other content; a stored order nonce with other
    // content (a lower nonce never stored would be a late delivery, see
    // late_orders.rs).
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 1, T0, 1001, 500)),
        )
        .await;
    client
        .publish(
            a.order_topic(&grid),
            a.sign_order(&a.order(&grid, i1, Side::Buy, 100, 200_000, 5)),
        )
        .await;
    client
        .publish(
            a.order_topic(&grid),
            a.sign_order(&a.order(&grid, i1, Side::Buy, 200, 200_000, 5)),
        )
        .await;
    // Timestamp an hour old.
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 3, T0 + 3_600_000, 1200, 600)),
        )
        .await;
    // Order rules: past gate, misaligned interval, zero quantity.
    client
        .publish(
            a.order_topic(&grid),
            a.sign_order(&a.order(&grid, i0(), Side::Buy, 100, 200_000, 6)),
        )
        .await;
    client
        .publish(
            a.order_topic(&grid),
            a.sign_order(&a.order(&grid, IntervalId(i1.0 + 1), Side::Buy, 100, 200_000, 7)),
        )
        .await;
    client
        .publish(
            a.order_topic(&grid),
            a.sign_order(&a.order(&grid, i1, Side::Buy, 0, 200_000, 8)),
        )
        .await;
    // And the valid messages after all that.
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 2, T0, 1100, 600)),
        )
        .await;
    client
        .publish(
            b.reading_topic(&grid),
            b.sign_reading(&b.reading(&grid, 1, T0, 10, 10)),
        )
        .await;

    // Acks come only for authenticated senders: 12 items.
    let acks = client.acks(12, 10).await;
    let outcome = |kind: AckKind, seq: u64, h: &protocol::HouseholdId| {
        acks.iter()
            .filter(|(hh, i)| hh == h && i.kind == kind && i.seq == seq)
            .map(|(_, i)| i.outcome.clone())
            .collect::<Vec<_>>()
    };
    let rej = |s: &str| AckOutcome::Rejected(s.to_owned());
    assert_eq!(
        outcome(AckKind::Reading, 2, &a.id),
        vec![rej("counter_rewind"), AckOutcome::Accepted]
    );
    assert_eq!(
        outcome(AckKind::Reading, 1, &a.id),
        vec![rej("wrong_household"), rej("seq_conflict")]
    );
    assert_eq!(
        outcome(AckKind::Reading, 3, &a.id),
        vec![rej("timestamp_out_of_window")]
    );
    assert_eq!(
        outcome(AckKind::Order, 1, &a.id),
        vec![rej("topic_mismatch")]
    );
    assert_eq!(
        outcome(AckKind::Order, 5, &a.id),
        vec![AckOutcome::Accepted, rej("replay")]
    );
    assert_eq!(outcome(AckKind::Order, 6, &a.id), vec![rej("gate_closed")]);
    assert_eq!(outcome(AckKind::Order, 7, &a.id), vec![rej("bad_interval")]);
    assert_eq!(outcome(AckKind::Order, 8, &a.id), vec![rej("bad_quantity")]);
    assert_eq!(
        outcome(AckKind::Reading, 1, &b.id),
        vec![AckOutcome::Accepted]
    );

    let counters = engine.counters();
    eventually(10, "unauthenticated rejects counted", || {
        let c = counters.clone();
        async move { c.snapshot().rejects.values().sum::<u64>() == 14 }
    })
    .await;
    let snap = counters.snapshot();
    let expected = [
        (RejectReason::BadSignature, 1),
        (RejectReason::Malformed, 3),
        (RejectReason::UnknownKey, 1),
        (RejectReason::WrongHousehold, 1),
        (RejectReason::TopicMismatch, 1),
        (RejectReason::CounterRewind, 1),
        (RejectReason::SeqConflict, 1),
        (RejectReason::Replay, 1),
        (RejectReason::TimestampOutOfWindow, 1),
        (RejectReason::GateClosed, 1),
        (RejectReason::BadInterval, 1),
        (RejectReason::BadQuantity, 1),
    ];
    for (reason, n) in expected {
        assert_eq!(snap.rejected(reason), n, "{reason}");
    }
    assert_eq!(
        engine.read_model().rejects(),
        snap.rejects.clone().into_iter().collect::<Vec<_>>()
    );

    // Nothing valid lost, nothing invalid stored.
    let pool = engine.pool();
    let readings: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT meter, seq, import_wh FROM readings ORDER BY meter, seq")
            .fetch_all(&pool)
            .await
            .expect("rows");
    assert_eq!(
        readings,
        vec![
            ("alice-grid".into(), 1, 1000),
            ("alice-grid".into(), 2, 1100),
            ("bob-grid".into(), 1, 10)
        ]
    );
    let orders: Vec<(String, i64)> = sqlx::query_as("SELECT household, nonce FROM orders")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(orders, vec![("alice".into(), 5)]);
    // Reject counts are persisted with the batches.
    assert_eq!(
        count(&pool, "SELECT SUM(count) FROM reject_counts").await,
        14
    );
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_delivery_is_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("dup");
    let a = household("alice", 1);
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let engine = start(config(&grid, dir.path(), &[&a]), clock).await;
    let mut client = TestClient::connect(&grid, "dup").await;

    let reading = a.sign_reading(&a.reading(&grid, 1, T0, 1000, 500));
    let order = a.sign_order(&a.order(&grid, i0().next(LEN), Side::Sell, 500, 120_000, 1));
    for _ in 0..3 {
        client
            .publish(a.reading_topic(&grid), reading.clone())
            .await;
    }
    client.publish(a.order_topic(&grid), order.clone()).await;
    client.publish(a.order_topic(&grid), order.clone()).await;
    let acks = client.acks(5, 10).await;
    let dups = acks
        .iter()
        .filter(|(_, i)| i.outcome == AckOutcome::Duplicate)
        .count();
    let accepted = acks
        .iter()
        .filter(|(_, i)| i.outcome == AckOutcome::Accepted)
        .count();
    assert_eq!((accepted, dups), (2, 3), "{acks:?}");
    // A redelivery much later (another batch) is still a duplicate.
    client.publish(a.reading_topic(&grid), reading).await;
    let later = client.acks(1, 10).await;
    assert_eq!(later[0].1.outcome, AckOutcome::Duplicate);

    let pool = engine.pool();
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM readings").await, 1);
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM orders").await, 1);
    assert_eq!(engine.counters().snapshot().duplicates, 4);
    assert!(engine.read_model().rejects().is_empty());
    engine.shutdown().await.expect("shutdown");
}

/// A reading from the past is a backlog (an outbox draining after an outage)
/// and is accepted up to `max_reading_age_ms`; one from further back, or from
/// the future beyond the skew window, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_backlog_is_accepted_but_not_ancient_or_future_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("age");
    let a = household("alice", 1);
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let engine = start(config(&grid, dir.path(), &[&a]), clock).await;
    let mut client = TestClient::connect(&grid, "alice").await;
    let day = 24 * 3_600_000;
    // An hour and a day old: accepted (backlog).
    for (seq, ts, imp) in [(1, T0 - day, 1000), (2, T0 - 3_600_000, 1100)] {
        client
            .publish(
                a.reading_topic(&grid),
                a.sign_reading(&a.reading(&grid, seq, ts, imp, 500)),
            )
            .await;
    }
    // Eight days old, and an hour in the future: refused.
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 3, T0 - 8 * day, 1200, 500)),
        )
        .await;
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 4, T0 + 3_600_000, 1300, 500)),
        )
        .await;
    let acks = client.acks(4, 10).await;
    let by_seq = |s: u64| {
        acks.iter()
            .find(|(_, i)| i.seq == s)
            .map(|(_, i)| i.outcome.clone())
    };
    assert_eq!(by_seq(1), Some(AckOutcome::Accepted));
    assert_eq!(by_seq(2), Some(AckOutcome::Accepted));
    let out_of_window = Some(AckOutcome::Rejected("timestamp_out_of_window".into()));
    assert_eq!(by_seq(3), out_of_window);
    assert_eq!(by_seq(4), out_of_window);
    assert_eq!(
        count(&engine.pool(), "SELECT COUNT(*) FROM readings").await,
        2
    );
    engine.shutdown().await.expect("shutdown");
}
