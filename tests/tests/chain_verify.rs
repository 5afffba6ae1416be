//! `voltshare verify` and `voltshare proof`, on a real Anvil: an interval
//! settled through the engine verifies against the chain; it fails when one
//! stored order, one reading or one trade is altered (each alteration undone
//! before the next); a household's proof bundle verifies offline and fails
//! when tampered with.

mod chain_common;

use chain_common::*;
use controller::chain_cli::{VerifyArgs, build_proof, verify_report};
use protocol::{ManualClock, Side, UnixMs};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_and_catches_one_altered_order_reading_or_trade() {
    let anvil = anvil(&[]);
    let chain = chain(&anvil);
    let d = deploy_all(&chain).await;
    let homes = homes();
    fund(&chain, &d, &homes).await;
    let dir = TempDir::new("verify");
    let grid = unique_grid("verify");
    let clock = Arc::new(ManualClock::new(UnixMs(I1 - 120_000)));
    let cfg = config(&grid, dir.path(), &homes, &d, &anvil.endpoint());
    let db = cfg.db_path.clone();
    let engine = start(cfg, clock.clone()).await;
    let pool = engine.pool();
    let mut gw = Gateway::connect(&grid).await;
    let mut market = Market {
        grid: grid.clone(),
        homes: homes.clone(),
        seq: 0,
    };
    for k in 0..=2u64 {
        let start = Market::interval(k).0;
        clock.set(UnixMs(start - 60_000));
        if k < 2 {
            market.orders(&mut gw, k, start - 60_000).await;
        }
        clock.set(UnixMs(start));
        market.readings(&mut gw, k).await;
        clock.set(UnixMs(start + 2_000));
    }
    let target = Market::interval(1).0 as i64;
    let p = pool.clone();
    eventually(30, "interval 1 on chain", || {
        let p = p.clone();
        async move {
            statuses(&p)
                .await
                .iter()
                .any(|(i, s, _)| *i == target && (s == "confirmed" || s == "final"))
        }
    })
    .await;
    engine.shutdown().await.expect("shutdown");

    let args = VerifyArgs {
        interval: target as u64,
        db: db.clone(),
        interval_ms: LEN,
        rpc: Some(anvil.endpoint()),
        contract: Some(d.contract.to_string()),
    };
    let rep = verify_report(&args).await.expect("verify runs");
    assert!(rep.ok, "{rep:#?}");
    assert!(
        rep.checks
            .iter()
            .any(|c| c.name == "roots on chain" && c.ok)
    );

    let edit = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("db");
    let failed = |rep: &clearing::evm::verify::Report| -> Vec<String> {
        rep.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.clone())
            .collect()
    };

    // One order: the seller re-signs its order with another quantity.
    let s1 = &homes[0];
    let (env, nonce): (Vec<u8>, i64) = sqlx::query_as(
        "SELECT envelope, nonce FROM orders WHERE household = 's1' AND interval_start = ?",
    )
    .bind(target)
    .fetch_one(&edit)
    .await
    .expect("order");
    let forged = s1.order(
        &grid,
        protocol::IntervalId(target as u64),
        Side::Sell,
        1_001,
        100_000,
        nonce as u64,
        target as u64 - 60_000,
    );
    sqlx::query("UPDATE orders SET envelope = ? WHERE household = 's1' AND nonce = ?")
        .bind(&forged)
        .bind(nonce)
        .execute(&edit)
        .await
        .expect("alter");
    let rep = verify_report(&args).await.expect("verify runs");
    assert!(!rep.ok, "altered order must fail");
    assert!(
        failed(&rep).contains(&"orders root".to_owned()),
        "{:?}",
        failed(&rep)
    );
    sqlx::query("UPDATE orders SET envelope = ? WHERE household = 's1' AND nonce = ?")
        .bind(&env)
        .bind(nonce)
        .execute(&edit)
        .await
        .expect("restore");
    assert!(verify_report(&args).await.expect("verify").ok, "restored");

    // One reading: the buyer's end reading re-signed with 50 Wh more.
    let b1 = &homes[2];
    let end = Market::interval(2).0 as i64;
    let (renv, seq, import): (Vec<u8>, i64, i64) = sqlx::query_as(
        "SELECT envelope, seq, import_wh FROM readings WHERE meter = 'b1-grid' AND ts = ?",
    )
    .bind(end)
    .fetch_one(&edit)
    .await
    .expect("reading");
    let forged = b1.reading(&grid, seq as u64, end as u64, import as u64 + 50, 0);
    sqlx::query("UPDATE readings SET envelope = ? WHERE meter = 'b1-grid' AND seq = ?")
        .bind(&forged)
        .bind(seq)
        .execute(&edit)
        .await
        .expect("alter");
    let rep = verify_report(&args).await.expect("verify runs");
    assert!(!rep.ok, "altered reading must fail");
    assert!(
        failed(&rep).contains(&"readings root".to_owned()),
        "{:?}",
        failed(&rep)
    );
    assert!(
        failed(&rep).contains(&"roots on chain".to_owned()),
        "{:?}",
        failed(&rep)
    );
    sqlx::query("UPDATE readings SET envelope = ? WHERE meter = 'b1-grid' AND seq = ?")
        .bind(&renv)
        .bind(seq)
        .execute(&edit)
        .await
        .expect("restore");
    assert!(verify_report(&args).await.expect("verify").ok, "restored");

    // One trade: its quantity in the trades table.
    sqlx::query(
        "UPDATE trades SET quantity_wh = quantity_wh + 1 WHERE interval_start = ? AND idx = 0",
    )
    .bind(target)
    .execute(&edit)
    .await
    .expect("alter");
    let rep = verify_report(&args).await.expect("verify runs");
    assert!(!rep.ok, "altered trade must fail");
    assert!(
        failed(&rep).contains(&"stored trades equal the re-run auction".to_owned()),
        "{:?}",
        failed(&rep)
    );
    sqlx::query(
        "UPDATE trades SET quantity_wh = quantity_wh - 1 WHERE interval_start = ? AND idx = 0",
    )
    .bind(target)
    .execute(&edit)
    .await
    .expect("restore");
    assert!(verify_report(&args).await.expect("verify").ok, "restored");
    edit.close().await;

    // Proofs: a household's bundle verifies offline, pinned to its key.
    let bundle = build_proof(&db, "b1", target as u64).await.expect("proof");
    assert!(
        !bundle.orders.is_empty() && !bundle.trades.is_empty(),
        "{bundle:?}"
    );
    let rep = clearing::evm::verify::verify_bundle(&bundle, None, Some(&b1.key.verifying_key()));
    assert!(rep.ok, "{rep:#?}");
    let file = dir.path().join("proof.json");
    std::fs::write(&file, serde_json::to_string(&bundle).expect("json")).expect("write");
    let back: clearing::evm::verify::ProofBundle =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("parse");
    assert!(clearing::evm::verify::verify_bundle(&back, None, None).ok);
    let mut bad = bundle.clone();
    bad.trades[0].0.quantity_wh.0 += 1;
    assert!(
        !clearing::evm::verify::verify_bundle(&bad, None, None).ok,
        "tampered trade"
    );
    let mut bad = bundle;
    bad.transfer.as_mut().expect("transfer").amount.0 += 1;
    assert!(
        !clearing::evm::verify::verify_bundle(&bad, None, None).ok,
        "tampered transfer"
    );
}
