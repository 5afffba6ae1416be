//! Nonces: a signed order whose first delivery was lost (the engine died
//! before storing it) and that arrives after a later order of the same
//! household is accepted, not refused as a replay; a nonce that was stored
//! stays a duplicate (same bytes) or a replay (other bytes), across a restart
//! of the intake.

mod common;

use clearing::intake::{Inbound, Intake, IntakeRules};
use clearing::registry::Registry;
use clearing::store;
use common::*;
use protocol::{AckKind, AckOutcome, GridId, Side, UnixMs};
use std::sync::Arc;

fn rules(grid: &GridId) -> IntakeRules {
    IntakeRules {
        max_orders_per_interval: 8,
        ..intake_rules(grid)
    }
}

#[tokio::test]
async fn a_late_order_below_the_highest_nonce_is_accepted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = GridId::new("late").expect("id");
    let a = household("alice", 7);
    let pool = store::open(&dir.path().join("late.db"))
        .await
        .expect("open");
    Registry::sync(&pool, &[a.enrolment()], UnixMs(T0))
        .await
        .expect("registry");
    let registry = Arc::new(Registry::load(&pool).await.expect("registry"));
    let i1 = i0().next(LEN);
    let send = |nonce: u64, wh: u64| Inbound {
        topic: a.order_topic(&grid),
        payload: a.sign_order(&a.order(&grid, i1, Side::Sell, wh, 100_000, nonce)),
    };
    let outcome = |out: &clearing::intake::BatchOutcome, nonce: u64| {
        out.acks
            .values()
            .flat_map(|items| items.iter())
            .filter(|i| i.kind == AckKind::Order && i.seq == nonce)
            .map(|i| i.outcome.clone())
            .collect::<Vec<_>>()
    };

    // Nonces 1 and 3 arrive; 2 was lost on its way (the engine crashed).
    let mut intake = Intake::new(rules(&grid), registry.clone(), pool.clone());
    let out = intake
        .process(vec![send(1, 100), send(3, 300)], UnixMs(T0))
        .await
        .expect("process");
    assert_eq!(out.orders, 2, "{out:?}");

    // Its resend arrives later, below the highest nonce: accepted.
    let out = intake
        .process(vec![send(2, 200)], UnixMs(T0))
        .await
        .expect("process");
    assert_eq!(outcome(&out, 2), vec![AckOutcome::Accepted], "{out:?}");
    assert_eq!(out.orders, 1);

    // After a restart (fresh caches, state from the database): the same
    // bytes again are a duplicate, other bytes under a stored nonce a
    // replay, and the next new nonce is still fine.
    let mut intake = Intake::new(rules(&grid), registry, pool.clone());
    let out = intake
        .process(vec![send(2, 200), send(3, 999), send(4, 400)], UnixMs(T0))
        .await
        .expect("process");
    assert_eq!(outcome(&out, 2), vec![AckOutcome::Duplicate], "{out:?}");
    assert_eq!(
        outcome(&out, 3),
        vec![AckOutcome::Rejected("replay".into())],
        "{out:?}"
    );
    assert_eq!(outcome(&out, 4), vec![AckOutcome::Accepted], "{out:?}");

    let stored: Vec<(i64, i64)> =
        sqlx::query_as("SELECT nonce, quantity_wh FROM orders ORDER BY nonce")
            .fetch_all(&pool)
            .await
            .expect("orders");
    assert_eq!(stored, vec![(1, 100), (2, 200), (3, 300), (4, 400)]);
}
