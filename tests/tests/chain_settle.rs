//! On a real Anvil: twenty intervals traded through the real engine (signed
//! orders and readings over Mosquitto, gate clearing, reconciliation) settle
//! through the `evm` backend; every batch ends `final` with its transaction
//! hash, the contract's balances equal the engine's books, and the engine's
//! hash chain still verifies.

mod chain_common;

use chain_common::*;
use protocol::UnixMs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_intervals_settle_on_chain_and_balances_equal_the_books() {
    let (anvil, chain, d, homes) = chain_env().await;
    let EngineEnv {
        dir: _dir,
        grid,
        clock,
        engine,
        pool,
        mut gw,
        mut market,
        ..
    } = engine_env("settle", &homes, &d, &anvil.endpoint(), |_| {}).await;

    const N: u64 = 20;
    for k in 0..=N {
        let start = Market::interval(k).0;
        clock.set(UnixMs(start - 60_000));
        if k < N {
            market.orders(&mut gw, k, start - 60_000).await;
        }
        clock.set(UnixMs(start));
        market.readings(&mut gw, k).await;
        // Past the previous interval's grace: it settles.
        clock.set(UnixMs(start + 2_000));
        if k > 0 {
            let prev = i64::try_from(Market::interval(k - 1).0).expect("fits");
            let p = pool.clone();
            eventually(20, "previous interval recorded", || {
                let p = p.clone();
                async move { statuses(&p).await.iter().any(|(i, _, _)| *i == prev) }
            })
            .await;
        }
    }
    // Anvil mines only when a transaction arrives; a batch submitted after
    // the last one would wait for its confirmations forever. Mine a block
    // on every poll, as a live chain would, until every batch is final.
    // Generous: 20 batches with confirmations on a cold, loaded CI machine;
    // the wait ends as soon as every batch is final.
    let all_final = |s: &[(i64, String, Option<String>)]| {
        // Interval 0 … N−1 traded; an empty interval before them may have
        // been cleared and settled at start-up too.
        s.len() >= N as usize && s.iter().all(|(_, st, tx)| st == "final" && tx.is_some())
    };
    let mut last = Vec::new();
    for _ in 0..600 {
        last = statuses(&pool).await;
        if all_final(&last) {
            break;
        }
        let _: serde_json::Value = chain
            .raw("evm_mine", serde_json::json!([]))
            .await
            .expect("mine");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(all_final(&last), "not every batch final: {last:?}");
    let traded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trades")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(traded >= N as i64, "every interval traded: {traded}");
    assert_books_match_chain(&chain, &d, &pool, &homes).await;
    // Each batch's digest is on chain.
    for (interval, _, _) in statuses(&pool).await {
        let rec = clearing::settlement::record(&pool, protocol::IntervalId(interval as u64))
            .await
            .expect("read")
            .expect("recorded");
        let onchain = chain
            .batch_digest(
                d.contract,
                clearing::evm::contract::grid_word(&grid),
                interval as u64,
            )
            .await
            .expect("digest");
        assert_eq!(onchain, clearing::evm::contract::batch_digest(&rec.batch));
    }
    let rows = statuses(&pool).await.len();
    assert_eq!(engine.verify_ledger().await.expect("chain verifies"), rows);
    engine.shutdown().await.expect("shutdown");
}
