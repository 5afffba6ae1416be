//! `voltshare verify` and `voltshare proof`, on a real Anvil, against the
//! engine's HTTP API (the dashboard's `/api/published/{interval}`, served
//! by the real router on a loopback port) and the chain's RPC: an interval
//! settled through the engine verifies; it fails when one stored order, one
//! reading or one trade is altered under the engine (each alteration undone
//! before the next); the `--db` path agrees; a household's proof bundle,
//! built from the API, verifies offline and fails when tampered with.

mod chain_common;

use chain_common::*;
use controller::chain_cli::{Source, VerifyArgs, build_proof, verify_report};
use protocol::{Side, UnixMs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_and_catches_one_altered_order_reading_or_trade() {
    let (anvil, _chain, d, homes) = chain_env().await;
    let EngineEnv {
        dir,
        grid,
        clock,
        db,
        engine,
        pool,
        mut gw,
        mut market,
        ..
    } = engine_env("verify", &homes, &d, &anvil.endpoint(), |_| {}).await;
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
    // The engine's dashboard API, as `voltshare run` serves it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let api = format!("http://{}", listener.local_addr().expect("addr"));
    let app = web::app(web::AppState::new(engine.read_model(), grid.as_str(), LEN));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let args = VerifyArgs {
        interval: target as u64,
        api: Some(api.clone()),
        db: None,
        interval_ms: LEN,
        rpc: Some(anvil.endpoint()),
        contract: Some(d.contract.to_string()),
    };
    let rep = verify_report(&args).await.expect("verify runs");
    assert!(rep.ok, "{rep:#?}");
    for name in [
        "roots on chain",
        "roots in the settlement event",
        "batch signed by the engine",
    ] {
        assert!(
            rep.checks.iter().any(|c| c.name == name && c.ok),
            "{name}: {rep:#?}"
        );
    }
    // The database path gives the same report.
    let by_db = VerifyArgs {
        api: None,
        db: Some(db.clone()),
        ..args.clone()
    };
    assert_eq!(verify_report(&by_db).await.expect("verify runs"), rep);
    // An interval that was never cleared: a clear error, not a pass.
    let missing = VerifyArgs {
        interval: 1_000,
        ..args.clone()
    };
    let err = verify_report(&missing).await.expect_err("not cleared");
    assert!(format!("{err:?}").contains("not cleared"), "{err:?}");

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

    // Proofs: a household's bundle, from the API, verifies offline, pinned
    // to its key; the database path builds the same bundle.
    let bundle = build_proof(&Source::Api(api.clone()), "b1", target as u64)
        .await
        .expect("proof");
    assert_eq!(
        build_proof(&Source::Db(db.clone(), LEN), "b1", target as u64)
            .await
            .expect("proof"),
        bundle
    );
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
    server.abort();
    engine.shutdown().await.expect("shutdown");
}
