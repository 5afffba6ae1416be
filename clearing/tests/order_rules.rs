//! Order intake rules through the real broker (Mosquitto on
//! 127.0.0.1:1883) with a configurable gate lead time: orders are accepted
//! until `interval start − gate_lead_ms` and refused from that instant on;
//! nonces are per household and a replayed nonce is refused; a later signed
//! order amends (`replaces`) or cancels (`replaces` with quantity 0) an
//! earlier one before the gate, and the cleared book reflects exactly that;
//! quantity and per-interval count limits hold; every refusal reaches the
//! sender on its acks topic with its reason and is counted.

mod common;

use clearing::RejectReason;
use common::*;
use protocol::{AckKind, AckOutcome, ManualClock, Side, UnixMs};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_lead_nonces_amendments_and_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("rules");
    let (a, b, c) = (
        household("alice", 1),
        household("bob", 2),
        household("carol", 3),
    );
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let mut cfg = config(&grid, dir.path(), &[&a, &b, &c]);
    // The gate of interval I closes 700 s before I starts: the next
    // interval (starting 600 s after T0) is already closed, the one after
    // that is open until T0 + 800 s.
    let lead = 700_000;
    cfg.gate_lead_ms = lead;
    cfg.max_orders_per_interval = 3;
    cfg.max_order_wh = 5_000;
    let engine = start(cfg, clock.clone()).await;
    let mut client = TestClient::connect(&grid, "rules").await;
    let i1 = i0().next(LEN);
    let i2 = i1.next(LEN);
    assert!(T0 >= i1.0 - lead && T0 < i2.0 - lead);

    let send = |h: &Household, o: protocol::Order| (h.order_topic(&grid), h.sign_order(&o));
    let amend = |h: &Household, nonce: u64, replaces: u64, wh: u64, price: u64| {
        let mut o = h.order(&grid, i2, Side::Buy, wh, price, nonce);
        o.replaces = Some(replaces);
        send(h, o)
    };
    let msgs = vec![
        // alice: an order, its amendment, then its cancellation.
        send(&a, a.order(&grid, i2, Side::Buy, 1_000, 200_000, 1)),
        send(&a, a.order(&grid, i1, Side::Buy, 100, 200_000, 2)), // gate_closed (lead)
        send(&a, a.order(&grid, i2, Side::Buy, 6_000, 200_000, 3)), // bad_quantity
        amend(&a, 4, 1, 1_500, 210_000),
        amend(&a, 5, 4, 0, 210_000),    // cancel
        amend(&a, 6, 99, 100, 210_000), // bad_replaces
        send(&a, a.order(&grid, i2, Side::Sell, 100, 50_000, 7)), // too_many_orders
        send(&a, a.order(&grid, i2, Side::Sell, 100, 50_000, 4)), // replay
        // bob sells; his nonces are his own (1 again is fine).
        send(&b, b.order(&grid, i2, Side::Sell, 1_000, 100_000, 1)),
        // carol bids, then amends her bid down to 400 Wh at a higher price.
        send(&c, c.order(&grid, i2, Side::Buy, 1_000, 150_000, 1)),
        amend(&c, 2, 1, 400, 250_000),
    ];
    for (topic, payload) in msgs {
        client.publish(topic, payload).await;
    }
    let acks = client.acks(11, 10).await;
    let outcome = |h: &Household, nonce: u64| {
        acks.iter()
            .filter(|(hh, i)| *hh == h.id && i.kind == AckKind::Order && i.seq == nonce)
            .map(|(_, i)| i.outcome.clone())
            .collect::<Vec<_>>()
    };
    let ok = vec![AckOutcome::Accepted];
    let rej = |s: &str| vec![AckOutcome::Rejected(s.to_owned())];
    assert_eq!(outcome(&a, 1), ok);
    assert_eq!(outcome(&a, 2), rej("gate_closed"));
    assert_eq!(outcome(&a, 3), rej("bad_quantity"));
    assert_eq!(outcome(&a, 4), [ok.clone(), rej("replay")].concat());
    assert_eq!(outcome(&a, 5), ok);
    assert_eq!(outcome(&a, 6), rej("bad_replaces"));
    assert_eq!(outcome(&a, 7), rej("too_many_orders"));
    assert_eq!(outcome(&b, 1), ok);
    assert_eq!(outcome(&c, 1), ok);
    assert_eq!(outcome(&c, 2), ok);

    // One millisecond before the gate: accepted. At the gate: refused.
    clock.set(UnixMs(i2.0 - lead - 1));
    client
        .publish(
            b.order_topic(&grid),
            b.sign_order(&b.order(&grid, i2, Side::Sell, 10, 100_000, 2)),
        )
        .await;
    assert_eq!(client.acks(1, 10).await[0].1.outcome, AckOutcome::Accepted);
    clock.set(UnixMs(i2.0 - lead));
    client
        .publish(
            b.order_topic(&grid),
            b.sign_order(&b.order(&grid, i2, Side::Sell, 10, 100_000, 3)),
        )
        .await;
    assert_eq!(
        client.acks(1, 10).await[0].1.outcome,
        AckOutcome::Rejected("gate_closed".into())
    );

    let snap = engine.counters().snapshot();
    for (reason, n) in [
        (RejectReason::GateClosed, 2),
        (RejectReason::BadQuantity, 1),
        (RejectReason::BadReplaces, 1),
        (RejectReason::TooManyOrders, 1),
        (RejectReason::Replay, 1),
    ] {
        assert_eq!(snap.rejected(reason), n, "{reason}");
    }

    // The cleared book: alice's order was amended then cancelled (nothing
    // left), carol's amended bid (400 Wh) is the only buyer.
    let result = engine.clear_interval(i2).await.expect("clears");
    assert_eq!(result.volume_wh.0, 400, "{result:?}");
    assert!(result.trades.iter().all(|t| t.buyer == c.id), "{result:?}");
    engine.shutdown().await.expect("shutdown");
}
