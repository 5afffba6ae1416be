//! The whole engine through the real broker with a manual clock: orders
//! before the gate are cleared when the clock reaches it, the signed result
//! is stored, published retained and never recomputed; readings after the
//! interval settle it into the hash-chained ledger; after a restart on the
//! same database nothing is cleared twice and the chain continues.

mod common;

use common::*;
use protocol::{
    AckOutcome, ClearingResult, Domain, ManualClock, MerkleTree, Side, SignedEnvelope, Topic,
    UnixMs, WattHours, decode_payload,
};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clears_at_the_gate_settles_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("engine");
    let (s, b) = (household("seller", 3), household("buyer", 4));
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let cfg = config(&grid, dir.path(), &[&s, &b]);
    let engine = start(cfg.clone(), clock.clone()).await;
    let mut client = TestClient::connect(&grid, "households").await;
    let i1 = i0().next(LEN);
    let pool = engine.pool();

    // A book with one obvious trade: sell 1000 Wh at 0.10, buy 1000 Wh at
    // 0.30, amended down to 800 Wh.
    let sell = s.sign_order(&s.order(&grid, i1, Side::Sell, 1000, 100_000, 1));
    let buy = b.sign_order(&b.order(&grid, i1, Side::Buy, 1000, 300_000, 1));
    let mut amend = b.order(&grid, i1, Side::Buy, 800, 300_000, 2);
    amend.replaces = Some(1);
    let amend = b.sign_order(&amend);
    client.publish(s.order_topic(&grid), sell.clone()).await;
    client.publish(b.order_topic(&grid), buy.clone()).await;
    client.publish(b.order_topic(&grid), amend.clone()).await;
    let acks = client.acks(3, 10).await;
    assert!(
        acks.iter().all(|(_, i)| i.outcome == AckOutcome::Accepted),
        "{acks:?}"
    );
    // Starting readings just before the interval.
    clock.set(UnixMs(i1.0 - 2000));
    client
        .publish(
            s.reading_topic(&grid),
            s.sign_reading(&s.reading(&grid, 1, i1.0 - 1000, 0, 5000)),
        )
        .await;
    client
        .publish(
            b.reading_topic(&grid),
            b.sign_reading(&b.reading(&grid, 1, i1.0 - 1000, 3000, 0)),
        )
        .await;
    client.acks(2, 10).await;

    // The gate closes: the scheduler clears i1 by itself.
    clock.set(i1.start());
    let rm = engine.read_model();
    eventually(10, "i1 cleared", || {
        let rm = rm.clone();
        async move {
            rm.intervals(10)
                .await
                .expect("read")
                .iter()
                .any(|r| r.interval_start == i1.0)
        }
    })
    .await;
    let (json, envelope): (String, Vec<u8>) = sqlx::query_as(
        "SELECT result_json, result_envelope FROM intervals WHERE interval_start = ?",
    )
    .bind(i64::try_from(i1.0).expect("fits"))
    .fetch_one(&pool)
    .await
    .expect("stored result");
    let env = SignedEnvelope::decode(&envelope).expect("envelope");
    env.verify(Domain::Result, &engine.engine_key())
        .expect("result signed by the engine");
    assert_eq!(env.payload, json.as_bytes());
    let result: ClearingResult = decode_payload(&env.payload).expect("result");
    assert_eq!(result.interval, i1);
    // orders_root: the three signed envelopes in (household, nonce) order.
    assert_eq!(
        result.orders_root,
        MerkleTree::new([&buy, &amend, &sell]).root()
    );
    assert_eq!(result.trades.len(), 1, "{result:?}");
    let t = &result.trades[0];
    assert_eq!(
        (t.buyer.as_str(), t.seller.as_str(), t.quantity_wh),
        ("buyer", "seller", WattHours(800))
    );
    assert_eq!(
        result.trades_root,
        MerkleTree::new(result.trades.iter().map(protocol::canonical_json)).root()
    );

    // Published retained: a late subscriber still gets it.
    let mut late = TestClient::connect(&grid, "late").await;
    let topic = Topic::Results {
        grid: grid.clone(),
        interval: i1,
    }
    .to_string();
    assert_eq!(late.message_on(&topic, 10).await, envelope);

    // Idempotent: clearing again returns the stored result, once.
    assert_eq!(engine.clear_interval(i1).await.expect("again"), result);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trades WHERE interval_start = ?")
        .bind(i64::try_from(i1.0).expect("fits"))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    // After the gate, orders for i1 are refused.
    client
        .publish(
            b.order_topic(&grid),
            b.sign_order(&b.order(&grid, i1, Side::Buy, 100, 300_000, 3)),
        )
        .await;
    let late_order = client.acks(1, 10).await;
    assert_eq!(
        late_order[0].1.outcome,
        AckOutcome::Rejected("gate_closed".into())
    );

    // The interval ends: the seller delivered only 600 Wh, the buyer took 800.
    let end = i1.end(LEN).0;
    clock.set(UnixMs(end + 1000));
    client
        .publish(
            s.reading_topic(&grid),
            s.sign_reading(&s.reading(&grid, 2, end - 1, 0, 5600)),
        )
        .await;
    client
        .publish(
            b.reading_topic(&grid),
            b.sign_reading(&b.reading(&grid, 2, end - 1, 3800, 0)),
        )
        .await;
    client
        .publish(
            s.reading_topic(&grid),
            s.sign_reading(&s.reading(&grid, 3, end + 500, 0, 5650)),
        )
        .await;
    client
        .publish(
            b.reading_topic(&grid),
            b.sign_reading(&b.reading(&grid, 3, end + 500, 3850, 0)),
        )
        .await;
    client.acks(4, 10).await;
    // Seq 3 again with other counters: refused, and counted for the seller's
    // meter (as the late order is for the buyer, under no meter).
    client
        .publish(
            s.reading_topic(&grid),
            s.sign_reading(&s.reading(&grid, 3, end + 500, 0, 5651)),
        )
        .await;
    let conflict = client.acks(1, 10).await;
    assert_eq!(
        conflict[0].1.outcome,
        AckOutcome::Rejected("seq_conflict".into())
    );
    let sender_rejects = |rm: &Arc<dyn clearing::read::ReadModel>| {
        let mut rows: Vec<_> = rm
            .meter_rejects()
            .into_iter()
            .map(|r| (r.household, r.meter, r.reason, r.count))
            .collect();
        rows.sort();
        rows
    };
    let expected_rejects = {
        let mut rows = vec![
            (b.id.to_string(), None, "gate_closed".to_owned(), 1),
            (
                s.id.to_string(),
                Some(s.meter.to_string()),
                "seq_conflict".to_owned(),
                1,
            ),
        ];
        rows.sort();
        rows
    };
    assert_eq!(sender_rejects(&rm), expected_rejects);
    // After the grace period the settler records i0 (empty) and i1.
    clock.set(UnixMs(end + cfg.settle_grace_ms + 1));
    eventually(10, "i1 settled", || {
        let rm = rm.clone();
        async move {
            rm.settlements(10)
                .await
                .expect("read")
                .iter()
                .any(|r| r.interval_start == i1.0)
        }
    })
    .await;
    let rows = rm.settlements(10).await.expect("read");
    let row = rows.iter().find(|r| r.interval_start == i1.0).expect("row");
    assert_eq!(row.status, "final");
    assert_eq!(row.households, 2);
    assert_eq!(row.traded_micros, t.price.cost_of(WattHours(600)).0);
    let rec = engine.settle_interval(i1).await.expect("recorded");
    assert!(rec.batch.balances());
    let p = cfg.params.clone();
    let buyer = rec
        .batch
        .transfers
        .iter()
        .find(|x| x.household == b.id)
        .expect("buyer");
    assert_eq!(
        buyer.amount.0,
        -(t.buyer_price.cost_of(WattHours(600)).0 + p.retail_tariff.cost_of(WattHours(200)).0)
    );
    let chain = engine.verify_ledger().await.expect("ledger verifies");
    assert!(chain >= 2, "i0 and i1 recorded: {chain}");
    let cleared_before = engine.counters().snapshot().intervals_cleared;
    assert!(cleared_before >= 2);
    engine.shutdown().await.expect("shutdown");

    // Restart on the same database at the same time: nothing is cleared
    // again, and the chain continues with the next interval.
    let engine = start(cfg.clone(), clock.clone()).await;
    let again = engine.clear_interval(i1).await.expect("stored");
    assert_eq!(again, result);
    let i2 = i1.next(LEN);
    clock.set(UnixMs(i2.end(LEN).0 + cfg.settle_grace_ms + 1));
    let rm = engine.read_model();
    // A household's record of its refused messages survives the restart.
    assert_eq!(sender_rejects(&rm), expected_rejects);
    eventually(10, "i2 settled after restart", || {
        let rm = rm.clone();
        async move {
            rm.settlements(10)
                .await
                .expect("read")
                .iter()
                .any(|r| r.interval_start == i2.0)
        }
    })
    .await;
    let rows = rm.settlements(10).await.expect("read");
    let newest = rows.iter().find(|r| r.interval_start == i2.0).expect("i2");
    let older = rows.iter().find(|r| r.interval_start == i1.0).expect("i1");
    assert_eq!(
        newest.prev_hash, older.hash,
        "chain continues across the restart"
    );
    assert_eq!(engine.verify_ledger().await.expect("verifies"), chain + 1);
    // i1 was not cleared a second time.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM intervals WHERE interval_start = ?")
        .bind(i64::try_from(i1.0).expect("fits"))
        .fetch_one(&engine.pool())
        .await
        .expect("count");
    assert_eq!(n, 1);
    engine.shutdown().await.expect("shutdown");
}
