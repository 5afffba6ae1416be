//! An interval with hundreds of trades: its signed result is larger than any
//! household message may be, and must still be signed, stored, published and
//! verified (a result of ~100 trades already passes the 16 KiB household cap).

mod common;

use clearing::book;
use clearing::intake::{Inbound, Intake};
use clearing::registry::Registry;
use clearing::store;
use common::*;
use protocol::{
    AuctionParams, ClearingResult, Domain, GridId, MAX_PAYLOAD_BYTES, Side, SignedEnvelope, UnixMs,
    decode_payload,
};
use std::sync::Arc;

#[tokio::test]
async fn an_interval_with_hundreds_of_trades_is_signed_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = GridId::new("large").expect("id");
    // 120 sellers of 90 Wh and 120 buyers of 100 Wh: the walk splits almost
    // every order, about two trades per seller.
    let sellers: Vec<Household> = (0..120u8)
        .map(|i| household(&format!("seller{i:03}"), i))
        .collect();
    let buyers: Vec<Household> = (0..120u8)
        .map(|i| household(&format!("buyer{i:03}"), 120 + i))
        .collect();
    let pool = store::open(&dir.path().join("large.db"))
        .await
        .expect("open");
    let enrolments: Vec<_> = sellers
        .iter()
        .chain(buyers.iter())
        .map(Household::enrolment)
        .collect();
    Registry::sync(&pool, &enrolments, UnixMs(T0))
        .await
        .expect("registry");
    let registry = Arc::new(Registry::load(&pool).await.expect("registry"));
    let rules = intake_rules(&grid);
    let mut intake = Intake::new(rules, registry, pool.clone());
    let i1 = i0().next(LEN);
    let mut msgs = Vec::new();
    for (n, s) in sellers.iter().enumerate() {
        let price = 100_000 + 100 * u64::try_from(n).expect("small");
        let o = s.order(&grid, i1, Side::Sell, 90, price, 1);
        msgs.push(Inbound {
            topic: s.order_topic(&grid),
            payload: s.sign_order(&o),
        });
    }
    for (n, b) in buyers.iter().enumerate() {
        let price = 300_000 - 100 * u64::try_from(n).expect("small");
        let o = b.order(&grid, i1, Side::Buy, 100, price, 1);
        msgs.push(Inbound {
            topic: b.order_topic(&grid),
            payload: b.sign_order(&o),
        });
    }
    let out = intake.process(msgs, UnixMs(T0)).await.expect("orders");
    assert_eq!((out.orders, out.rejects.len()), (240, 0), "{out:?}");

    let cleared = book::clear_interval(
        &pool,
        &grid,
        &AuctionParams::default(),
        &engine_key(),
        i1,
        UnixMs(i1.0),
    )
    .await
    .expect("an interval with hundreds of trades clears");
    let trades = cleared.result.trades.len();
    assert!(trades >= 200, "expected hundreds of trades, got {trades}");
    assert_eq!(cleared.result.volume_wh.0, 120 * 90);

    // The envelope is past the household cap, refused by the household
    // decoder and accepted, verified and complete when read as a result.
    assert!(cleared.envelope.len() > MAX_PAYLOAD_BYTES);
    assert!(SignedEnvelope::decode(&cleared.envelope).is_err());
    let env = SignedEnvelope::decode_for(Domain::Result, &cleared.envelope).expect("decodes");
    env.verify(Domain::Result, &engine_key().verifying_key())
        .expect("the engine's signature verifies");
    let back: ClearingResult = decode_payload(&env.payload).expect("payload");
    assert_eq!(back, cleared.result);

    // Stored once; clearing again returns the stored result unchanged.
    let again = book::clear_interval(
        &pool,
        &grid,
        &AuctionParams::default(),
        &engine_key(),
        i1,
        UnixMs(i1.0),
    )
    .await
    .expect("idempotent");
    assert!(!again.fresh);
    assert_eq!(again.envelope, cleared.envelope);
}
