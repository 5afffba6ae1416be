//! The embedded ledger on a real SQLite file: the hash chain verifies,
//! submission is idempotent, tampering with any stored part is detected, and
//! after reopening the database the chain continues. Also the whole path
//! intake → clearing → settlement without a broker (the intake is fed
//! directly), with delivery measured from signed readings.

mod common;

use clearing::book;
use clearing::intake::{Inbound, Intake};
use clearing::registry::Registry;
use clearing::settlement::{self, Ledger, Settlement, SettlementError, register_engine_key};
use clearing::settler::{self, SettleCtx};
use clearing::{Enrolment, store, verify_ledger};
use common::*;
use protocol::{
    AuctionParams, GridId, Hash32, HouseholdId, IntervalId, Micros, SettlementBatch, Side,
    Transfer, UnixMs, WattHours,
};
use sqlx::SqlitePool;
use std::sync::Arc;

fn h(s: &str) -> HouseholdId {
    HouseholdId::new(s).expect("id")
}

async fn setup(dir: &std::path::Path, enrol: &[Enrolment]) -> SqlitePool {
    let pool = store::open(&dir.join("ledger.db")).await.expect("open");
    Registry::sync(&pool, enrol, UnixMs(T0))
        .await
        .expect("registry");
    register_engine_key(&pool, &engine_key().verifying_key(), UnixMs(T0))
        .await
        .expect("engine key");
    pool
}

async fn clear_empty(pool: &SqlitePool, grid: &GridId, interval: IntervalId) {
    book::clear_interval(
        pool,
        grid,
        &AuctionParams::default(),
        &engine_key(),
        interval,
        UnixMs(T0),
    )
    .await
    .expect("clear");
}

fn batch(
    grid: &GridId,
    interval: IntervalId,
    prev: Hash32,
    amounts: &[(&str, i64)],
) -> SettlementBatch {
    let transfers: Vec<Transfer> = amounts
        .iter()
        .map(|(n, a)| Transfer {
            household: h(n),
            amount: Micros(*a),
            delivered_wh: WattHours(0),
            received_wh: WattHours(0),
        })
        .collect();
    let utility = Micros(-transfers.iter().map(|t| t.amount.0).sum::<i64>());
    SettlementBatch {
        grid: grid.clone(),
        interval,
        prev_hash: prev,
        orders_root: Hash32::ZERO,
        trades_root: Hash32::ZERO,
        readings_root: Hash32::ZERO,
        transfers,
        utility,
    }
}

#[tokio::test]
async fn chain_verifies_detects_tampering_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = GridId::new("ledger").expect("id");
    let (a, b) = (household("a", 1), household("b", 2));
    let pool = setup(dir.path(), &[a.enrolment(), b.enrolment()]).await;
    let ledger = Ledger::new(pool.clone(), engine_key());
    let intervals: Vec<IntervalId> = (0..4).map(|k| IntervalId(i0().0 + k * LEN)).collect();
    for i in &intervals {
        clear_empty(&pool, &grid, *i).await;
    }

    let mut prev = Hash32::ZERO;
    for (k, i) in intervals[..3].iter().enumerate() {
        let amount = 1000 * i64::try_from(k + 1).expect("small");
        let rec = ledger
            .submit(&batch(
                &grid,
                *i,
                prev,
                &[("a", amount), ("b", -amount - 7)],
            ))
            .await
            .expect("submit");
        assert_eq!(rec.seq, u64::try_from(k + 1).expect("small"));
        assert_eq!(rec.batch.prev_hash, prev);
        prev = rec.hash;
    }
    assert_eq!(verify_ledger(&pool).await.expect("chain verifies"), 3);

    // Idempotent: the same interval again returns the stored record.
    let again = ledger
        .submit(&batch(&grid, intervals[1], Hash32::ZERO, &[("a", 1)]))
        .await
        .expect("idempotent");
    assert_eq!(again.seq, 2);
    assert_eq!(again.batch.transfers[0].amount, Micros(2000));
    // A batch that does not link to the tip is refused.
    let wrong = ledger
        .submit(&batch(&grid, intervals[3], Hash32::ZERO, &[]))
        .await;
    assert!(
        matches!(wrong, Err(SettlementError::ChainMismatch { .. })),
        "{wrong:?}"
    );
    // A batch that does not balance is refused.
    let mut unbalanced = batch(&grid, intervals[3], prev, &[("a", 5)]);
    unbalanced.utility = Micros(0);
    assert!(matches!(
        ledger.submit(&unbalanced).await,
        Err(SettlementError::Unbalanced(_))
    ));
    assert_eq!(verify_ledger(&pool).await.expect("still verifies"), 3);

    // Tampering: each edit is detected, and undoing it restores the chain.
    let start2 = i64::try_from(intervals[1].0).expect("fits");
    let edits: [(&str, &str); 3] = [
        (
            "UPDATE transfers SET amount = amount + 1 WHERE interval_start = ? AND household = 'a'",
            "UPDATE transfers SET amount = amount - 1 WHERE interval_start = ? AND household = 'a'",
        ),
        (
            "UPDATE settlements SET batch_json = replace(batch_json, '\"amount\":2000', '\"amount\":2001') WHERE interval_start = ?",
            "UPDATE settlements SET batch_json = replace(batch_json, '\"amount\":2001', '\"amount\":2000') WHERE interval_start = ?",
        ),
        (
            "UPDATE settlements SET hash = upper(hash) WHERE interval_start = ?",
            "UPDATE settlements SET hash = lower(hash) WHERE interval_start = ?",
        ),
    ];
    for (edit, undo) in edits {
        let n = sqlx::query(edit)
            .bind(start2)
            .execute(&pool)
            .await
            .expect("edit")
            .rows_affected();
        assert_eq!(n, 1, "{edit}");
        let err = verify_ledger(&pool)
            .await
            .expect_err("tampering is detected");
        assert!(err.to_string().contains("record 2"), "{edit}: {err}");
        sqlx::query(undo)
            .bind(start2)
            .execute(&pool)
            .await
            .expect("undo");
        assert_eq!(verify_ledger(&pool).await.expect("restored"), 3, "{undo}");
    }
    // A genuine engine signature, but over another record's batch.
    let original: Vec<u8> =
        sqlx::query_scalar("SELECT signature FROM settlements WHERE interval_start = ?")
            .bind(start2)
            .fetch_one(&pool)
            .await
            .expect("signature");
    sqlx::query("UPDATE settlements SET signature = (SELECT signature FROM settlements WHERE seq = 1) WHERE interval_start = ?")
        .bind(start2)
        .execute(&pool)
        .await
        .expect("swap");
    let err = verify_ledger(&pool)
        .await
        .expect_err("swapped signature is detected");
    assert!(
        err.to_string().contains("signature covers another batch"),
        "{err}"
    );
    sqlx::query("UPDATE settlements SET signature = ? WHERE interval_start = ?")
        .bind(&original)
        .bind(start2)
        .execute(&pool)
        .await
        .expect("restore");
    assert_eq!(verify_ledger(&pool).await.expect("restored"), 3);
    // Deleting a middle record breaks the sequence.
    {
        let mut tx = pool.begin().await.expect("tx");
        sqlx::query("DELETE FROM transfers WHERE interval_start = ?")
            .bind(start2)
            .execute(&mut *tx)
            .await
            .expect("del");
        sqlx::query("DELETE FROM settlements WHERE interval_start = ?")
            .bind(start2)
            .execute(&mut *tx)
            .await
            .expect("del");
        let err = settlement::verify_ledger_on(&mut tx).await;
        assert!(err.is_err(), "a missing record is detected");
        tx.rollback().await.expect("rollback");
    }

    // Restart: reopen the file; the chain continues from its tip.
    pool.close().await;
    let pool = store::open(&dir.path().join("ledger.db"))
        .await
        .expect("reopen");
    assert_eq!(
        verify_ledger(&pool).await.expect("verifies after reopen"),
        3
    );
    let tip = settlement::chain_tip(&pool).await.expect("tip");
    assert_eq!(tip, prev);
    let ledger = Ledger::new(pool.clone(), engine_key());
    let rec = ledger
        .submit(&batch(&grid, intervals[3], tip, &[("b", 42)]))
        .await
        .expect("continues");
    assert_eq!(rec.seq, 4);
    assert_eq!(verify_ledger(&pool).await.expect("verifies"), 4);
}

#[tokio::test]
async fn intake_clear_and_settle_without_a_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = GridId::new("direct").expect("id");
    let (s, b) = (household("seller", 3), household("buyer", 4));
    let pool = setup(dir.path(), &[s.enrolment(), b.enrolment()]).await;
    let registry = Arc::new(Registry::load(&pool).await.expect("registry"));
    let rules = intake_rules(&grid);
    let mut intake = Intake::new(rules, registry.clone(), pool.clone());
    let i1 = i0().next(LEN);
    let msg = |topic: String, payload: Vec<u8>| Inbound { topic, payload };

    // Orders before the gate, plus an amendment that shrinks the buy.
    let sell = s.order(&grid, i1, Side::Sell, 1000, 100_000, 1);
    let buy = b.order(&grid, i1, Side::Buy, 1000, 300_000, 1);
    let mut amend = b.order(&grid, i1, Side::Buy, 800, 300_000, 2);
    amend.replaces = Some(1);
    // Readings at the start boundary.
    let start = i1.0;
    let out = intake
        .process(
            vec![
                msg(s.order_topic(&grid), s.sign_order(&sell)),
                msg(b.order_topic(&grid), b.sign_order(&buy)),
                msg(b.order_topic(&grid), b.sign_order(&amend)),
            ],
            UnixMs(T0),
        )
        .await
        .expect("orders");
    assert_eq!((out.orders, out.rejects.len()), (3, 0), "{out:?}");
    let out = intake
        .process(
            vec![
                msg(
                    s.reading_topic(&grid),
                    s.sign_reading(&s.reading(&grid, 1, start - 1000, 50, 10_000)),
                ),
                msg(
                    b.reading_topic(&grid),
                    b.sign_reading(&b.reading(&grid, 1, start - 1000, 7_000, 0)),
                ),
            ],
            UnixMs(start),
        )
        .await
        .expect("readings");
    assert_eq!(out.readings, 2);

    // Clear at the gate.
    let cleared = book::clear_interval(
        &pool,
        &grid,
        &AuctionParams::default(),
        &engine_key(),
        i1,
        UnixMs(start),
    )
    .await
    .expect("clear");
    assert!(cleared.fresh);
    let r = &cleared.result;
    assert_eq!(r.trades.len(), 1, "one obvious trade: {r:?}");
    let t = &r.trades[0];
    assert_eq!(
        (t.buyer.as_str(), t.seller.as_str(), t.quantity_wh.0),
        ("buyer", "seller", 800)
    );
    assert_eq!(
        &*t.buy_order, "buyer-2",
        "the amendment replaced the first buy"
    );

    // End-of-interval readings: the seller exported only 600 Wh, the buyer imported 800.
    let end = i1.end(LEN).0;
    let out = intake
        .process(
            vec![
                msg(
                    s.reading_topic(&grid),
                    s.sign_reading(&s.reading(&grid, 2, end - 500, 50, 10_600)),
                ),
                msg(
                    b.reading_topic(&grid),
                    b.sign_reading(&b.reading(&grid, 2, end - 500, 7_800, 0)),
                ),
                msg(
                    s.reading_topic(&grid),
                    s.sign_reading(&s.reading(&grid, 3, end + 1000, 50, 10_700)),
                ),
                msg(
                    b.reading_topic(&grid),
                    b.sign_reading(&b.reading(&grid, 3, end + 1000, 7_900, 0)),
                ),
            ],
            UnixMs(end),
        )
        .await
        .expect("readings");
    assert_eq!(out.readings, 4);

    // i1 is the only cleared interval, so it opens the chain.
    let ctx = SettleCtx {
        pool: &pool,
        registry: &registry,
        grid: &grid,
        interval_ms: LEN,
    };
    assert!(settler::ready(ctx, i1).await.expect("ready"));
    let ledger = Ledger::new(pool.clone(), engine_key());
    let params = AuctionParams::default();
    let rec = settler::settle_interval(ctx, &params, &ledger, i1, UnixMs(end + 60_000))
        .await
        .expect("settle");
    let batch = &rec.batch;
    assert!(batch.balances());
    assert_eq!(batch.prev_hash, Hash32::ZERO);
    assert_eq!(batch.orders_root, r.orders_root);
    assert_ne!(batch.readings_root, Hash32::ZERO);
    let p = t.price;
    let seller_gets = p.cost_of(WattHours(600));
    let buyer_pays =
        t.buyer_price.cost_of(WattHours(600)).0 + params.retail_tariff.cost_of(WattHours(200)).0;
    let amounts: Vec<(String, i64)> = batch
        .transfers
        .iter()
        .map(|t| (t.household.to_string(), t.amount.0))
        .collect();
    assert_eq!(
        amounts,
        vec![
            ("buyer".to_owned(), -buyer_pays),
            ("seller".to_owned(), seller_gets.0)
        ]
    );
    assert_eq!(batch.transfers[1].delivered_wh, WattHours(600));
    assert_eq!(batch.transfers[0].received_wh, WattHours(600));
    // Idempotent.
    let again = settler::settle_interval(ctx, &params, &ledger, i1, UnixMs(end + 90_000))
        .await
        .expect("again");
    assert_eq!(again, rec);
    assert_eq!(verify_ledger(&pool).await.expect("verifies"), 1);
    let delivered: Vec<(String, i64, i64, bool)> = sqlx::query_as(
        "SELECT household, export_wh, import_wh, has_data FROM deliveries ORDER BY household",
    )
    .fetch_all(&pool)
    .await
    .expect("deliveries");
    assert_eq!(
        delivered,
        vec![
            ("buyer".into(), 0, 800, true),
            ("seller".into(), 600, 0, true)
        ]
    );
}
