//! Fault tests of the `evm` settlement backend on a real Anvil:
//!
//! - mining paused while batches are submitted (and fees bumped), some
//!   transactions dropped from the pool, the engine killed and restarted:
//!   every batch settles exactly once and the settler's nonces have no gap;
//! - a reorg that removes a settled batch is detected and the batch settled
//!   again, once;
//! - the RPC node unreachable for a while (a TCP proxy in front of Anvil is
//!   cut): auctions keep running, batches wait as `pending`, and the backlog
//!   settles when the node is back.

mod chain_common;

use chain_common::*;
use clearing::evm::alloy::primitives::{B256, U256};
use clearing::evm::alloy::rpc::types::Filter;
use clearing::evm::alloy::sol_types::SolEvent;
use clearing::evm::chain::Chain;
use clearing::evm::contract::{VoltshareSettlement, grid_word};
use protocol::{GridId, UnixMs};
use serde_json::json;
use std::str::FromStr;
use std::time::Duration;

async fn mine(chain: &Chain, blocks: u64) {
    for _ in 0..blocks {
        chain.raw("evm_mine", json!([])).await.expect("evm_mine");
    }
}

/// Settlement events on the canonical chain for (grid, interval).
async fn settled_events(
    chain: &Chain,
    d: &clearing::evm::Deployment,
    grid: &GridId,
    interval: u64,
) -> usize {
    let f = Filter::new()
        .address(d.contract)
        .event_signature(VoltshareSettlement::BatchSettled::SIGNATURE_HASH)
        .topic1(grid_word(grid))
        .topic2(B256::from(U256::from(interval)))
        .from_block(0u64);
    chain.logs(&f).await.expect("logs").len()
}

/// Checks exactly-once, books and nonces after everything is final.
async fn assert_exactly_once(
    chain: &Chain,
    d: &clearing::evm::Deployment,
    grid: &GridId,
    pool: &sqlx::SqlitePool,
    homes: &[Home],
) {
    let rows = statuses(pool).await;
    for (interval, status, _) in &rows {
        assert_eq!(status, "final");
        assert_eq!(
            settled_events(chain, d, grid, *interval as u64).await,
            1,
            "interval {interval} settled once"
        );
    }
    assert_books_match_chain(chain, d, pool, homes).await;
    // No nonce gap: everything signed was mined, in order, and the account's
    // nonce is exactly the next one the engine would use.
    let next: i64 = sqlx::query_scalar("SELECT next_nonce FROM evm_nonces")
        .fetch_one(pool)
        .await
        .expect("nonce");
    let mined = chain
        .mined_nonce(dev_key(1).address())
        .await
        .expect("nonce");
    assert_eq!(mined, next as u64, "the settler's nonce has no gap");
    let mined_txs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM evm_txs WHERE state = 'mined'")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(
        mined_txs as usize,
        rows.len(),
        "one mined transaction per batch"
    );
    let pending: serde_json::Value = chain.raw("txpool_status", json!([])).await.expect("txpool");
    assert_eq!(
        pending["pending"]
            .as_str()
            .map(|s| s.trim_start_matches("0x").to_owned()),
        Some("0".to_owned()),
        "{pending}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_mining_dropped_transactions_and_a_killed_engine_settle_every_batch_once() {
    let (anvil, chain, d, homes) = chain_env().await;
    chain
        .raw("evm_setAutomine", json!([false]))
        .await
        .expect("pause mining");
    let EngineEnv {
        dir: _dir,
        grid,
        clock,
        cfg,
        engine,
        pool,
        mut gw,
        mut market,
        ..
    } = engine_env("faults", &homes, &d, &anvil.endpoint(), |cfg| {
        if let Some(evm) = cfg.evm.as_mut() {
            // Stuck transactions get their fees bumped quickly.
            evm.bump_after_ms = 1_500;
        }
    })
    .await;
    run_intervals(&clock, &mut gw, &mut market, 0, 5).await;
    let p = pool.clone();
    eventually(30, "five batches submitted", || {
        let p = p.clone();
        async move {
            let s = statuses(&p).await;
            s.len() >= 5
                && s.iter()
                    .all(|(_, st, tx)| st == "submitted" && tx.is_some())
        }
    })
    .await;
    // Let at least one fee bump happen while nothing is mined.
    let p = pool.clone();
    eventually(20, "a fee bump", || {
        let p = p.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM evm_txs WHERE attempt > 0")
                .fetch_one(&p)
                .await
                .expect("count")
                > 0
        }
    })
    .await;
    // Drop two of the waiting transactions from Anvil's pool.
    let rows = statuses(&pool).await;
    for (_, _, tx) in rows.iter().skip(1).step_by(2).take(2) {
        let h = B256::from_str(tx.as_deref().expect("hash")).expect("hash");
        chain
            .raw("anvil_dropTransaction", json!([h]))
            .await
            .expect("drop");
    }
    // Kill the engine mid-flight and start it again on the same database.
    engine.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let engine = start(cfg, clock.clone()).await;
    let pool = engine.pool();
    chain
        .raw("evm_setIntervalMining", json!([1]))
        .await
        .expect("resume mining");
    let p = pool.clone();
    eventually(90, "every batch final", || {
        let p = p.clone();
        async move {
            let s = statuses(&p).await;
            s.len() >= 5 && s.iter().all(|(_, st, _)| st == "final")
        }
    })
    .await;
    assert_exactly_once(&chain, &d, &grid, &pool, &homes).await;
    let bumps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM evm_txs WHERE state = 'replaced'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(bumps > 0, "fee bumps were exercised");
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_that_removes_a_settled_batch_is_detected_and_it_settles_again_once() {
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
    } = engine_env("reorg", &homes, &d, &anvil.endpoint(), |cfg| {
        if let Some(evm) = cfg.evm.as_mut() {
            evm.confirmations = 6;
        }
    })
    .await;
    run_intervals(&clock, &mut gw, &mut market, 0, 2).await;
    let last = Market::interval(1).0 as i64;
    let p = pool.clone();
    eventually(30, "last batch confirmed", || {
        let p = p.clone();
        async move {
            statuses(&p)
                .await
                .iter()
                .any(|(i, s, _)| *i == last && s == "confirmed")
        }
    })
    .await;
    let (block_before, tx_before): (i64, String) =
        sqlx::query_as("SELECT block_number, tx_hash FROM settlements WHERE interval_start = ?")
            .bind(last)
            .fetch_one(&pool)
            .await
            .expect("row");
    let head = chain.block_number().await.expect("head");
    let depth = head - block_before as u64 + 1;
    // Replace the blocks from the batch's block on with empty ones.
    chain
        .raw("anvil_reorg", json!([depth, []]))
        .await
        .expect("reorg");
    assert!(
        chain
            .receipt(B256::from_str(&tx_before).expect("hash"))
            .await
            .expect("rpc")
            .is_none_or(|r| r.block_hash.is_some())
    );
    // The backend notices (the row leaves `confirmed`), sends it again and it
    // is mined again (automine).
    let p = pool.clone();
    eventually(30, "batch back on chain", || {
        let p = p.clone();
        let chain = chain.clone();
        let (d, grid) = (d.clone(), grid.clone());
        async move {
            let s = statuses(&p).await;
            let back = s
                .iter()
                .any(|(i, st, _)| *i == last && (st == "confirmed" || st == "final"));
            back && settled_events(&chain, &d, &grid, last as u64).await == 1
        }
    })
    .await;
    let (block_after,): (i64,) =
        sqlx::query_as("SELECT block_number FROM settlements WHERE interval_start = ?")
            .bind(last)
            .fetch_one(&pool)
            .await
            .expect("row");
    let canonical = chain.block_hash(block_after as u64).await.expect("block");
    let stored: String =
        sqlx::query_scalar("SELECT block_hash FROM settlements WHERE interval_start = ?")
            .bind(last)
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(
        canonical.map(|h| h.to_string()),
        Some(stored),
        "recorded block is canonical"
    );
    mine(&chain, 8).await;
    let p = pool.clone();
    eventually(30, "every batch final", || {
        let p = p.clone();
        async move { statuses(&p).await.iter().all(|(_, st, _)| st == "final") }
    })
    .await;
    assert_exactly_once(&chain, &d, &grid, &pool, &homes).await;
    engine.shutdown().await.expect("shutdown");
}

/// A reorg deeper than the confirmation depth removes batches that were
/// already `final`: the audit of final batches (every round, within
/// `audit_blocks` of the head) notices that their blocks left the canonical
/// chain, broadcasts their stored transactions again (same nonces), and
/// each batch settles exactly once more, with no new nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_reorg_that_removes_final_batches_is_detected_and_they_settle_again_once() {
    let (anvil, chain, d, homes) = chain_env().await;
    let confirmations = 2;
    let EngineEnv {
        dir: _dir,
        grid,
        clock,
        engine,
        pool,
        mut gw,
        mut market,
        ..
    } = engine_env("deepreorg", &homes, &d, &anvil.endpoint(), |cfg| {
        if let Some(evm) = cfg.evm.as_mut() {
            evm.confirmations = confirmations;
        }
    })
    .await;
    run_intervals(&clock, &mut gw, &mut market, 0, 2).await;
    let last = Market::interval(1).0 as i64;
    let p = pool.clone();
    let c = chain.clone();
    eventually(60, "every batch final", || {
        let (p, c) = (p.clone(), c.clone());
        async move {
            mine(&c, 1).await;
            let s = statuses(&p).await;
            s.iter().any(|(i, _, _)| *i == last) && s.iter().all(|(_, st, _)| st == "final")
        }
    })
    .await;
    let before: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT interval_start, block_number, block_hash FROM settlements ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    let first_block = before.iter().map(|r| r.1).min().expect("rows") as u64;
    let head = chain.block_number().await.expect("head");
    let depth = head - first_block + 1;
    assert!(
        depth > confirmations,
        "the reorg is deeper than the confirmation depth ({depth} blocks)"
    );
    chain
        .raw("anvil_reorg", json!([depth, []]))
        .await
        .expect("reorg");
    for (interval, bn, hash) in &before {
        let now = chain.block_hash(*bn as u64).await.expect("block");
        assert_ne!(
            now.map(|h| h.to_string()).as_ref(),
            Some(hash),
            "the reorg replaced interval {interval}'s block"
        );
    }
    let p = pool.clone();
    let c = chain.clone();
    let (dd, g) = (d.clone(), grid.clone());
    eventually(60, "both batches final again, each settled once", || {
        let (p, c, dd, g) = (p.clone(), c.clone(), dd.clone(), g.clone());
        async move {
            mine(&c, 1).await;
            let s = statuses(&p).await;
            let mut once = true;
            for (i, _, _) in &s {
                once &= settled_events(&c, &dd, &g, *i as u64).await == 1;
            }
            once && s.iter().all(|(_, st, _)| st == "final")
        }
    })
    .await;
    let after: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT interval_start, block_number, block_hash FROM settlements ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    for ((i, _, old), (_, bn, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "interval {i} was re-recorded in its new block");
        let canonical = chain.block_hash(*bn as u64).await.expect("block");
        assert_eq!(canonical.map(|h| h.to_string()).as_ref(), Some(new));
    }
    // Same transactions, same nonces: nothing signed anew.
    let signed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM evm_txs")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        signed as usize,
        after.len(),
        "no new transaction was signed"
    );
    assert_exactly_once(&chain, &d, &grid, &pool, &homes).await;
    engine.shutdown().await.expect("shutdown");
}

/// A TCP proxy that can be cut and restored on the same port.
struct Proxy {
    port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut p = Proxy {
            port,
            target,
            task: None,
        };
        p.serve(l);
        p
    }

    fn serve(&mut self, l: tokio::net::TcpListener) {
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = l.accept().await {
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
    }

    /// Closes the listener and every open connection.
    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn restore(&mut self) {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.set_reuseaddr(true).expect("reuseaddr");
        s.bind(([127, 0, 0, 1], self.port).into())
            .expect("rebind the proxy port");
        let l = s.listen(64).expect("listen");
        self.serve(l);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_node_unreachable_auctions_go_on_and_the_backlog_settles_later() {
    let (anvil, chain, d, homes) = chain_env().await;
    let mut proxy = Proxy::start(anvil.port()).await;
    let EngineEnv {
        dir: _dir,
        grid,
        clock,
        engine,
        pool,
        mut gw,
        mut market,
        ..
    } = engine_env(
        "outage",
        &homes,
        &d,
        &format!("http://127.0.0.1:{}", proxy.port),
        |cfg| {
            if let Some(evm) = cfg.evm.as_mut() {
                evm.rpc_timeout_ms = 1_000;
            }
        },
    )
    .await;
    run_intervals(&clock, &mut gw, &mut market, 0, 1).await;
    let p = pool.clone();
    eventually(30, "first batch on chain", || {
        let p = p.clone();
        async move {
            statuses(&p)
                .await
                .iter()
                .any(|(_, s, _)| s == "confirmed" || s == "final")
        }
    })
    .await;

    proxy.cut();
    // Three more trading intervals (2, 3, 4) while the node is unreachable;
    // interval 1 had no orders.
    for k in 2..=5u64 {
        let start = Market::interval(k).0;
        clock.set(UnixMs(start - 60_000));
        if k < 5 {
            market.orders(&mut gw, k, start - 60_000).await;
        }
        clock.set(UnixMs(start));
        market.readings(&mut gw, k).await;
        clock.set(UnixMs(start + 2_000));
    }
    let p = pool.clone();
    eventually(
        20,
        "auctions kept running (4 intervals with trades)",
        || {
            let p = p.clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM intervals WHERE trades > 0")
                    .fetch_one(&p)
                    .await
                    .expect("count")
                    >= 4
            }
        },
    )
    .await;
    let p = pool.clone();
    eventually(30, "backlog recorded as pending", || {
        let p = p.clone();
        async move {
            statuses(&p)
                .await
                .iter()
                .filter(|(_, s, _)| s == "pending")
                .count()
                >= 3
        }
    })
    .await;

    proxy.restore().await;
    mine(&chain, 1).await;
    let p = pool.clone();
    let c2 = chain.clone();
    eventually(60, "backlog final", || {
        let p = p.clone();
        let c2 = c2.clone();
        async move {
            // Blocks for confirmations (automine mines only on new transactions).
            let _ = c2.raw("evm_mine", json!([])).await;
            let s = statuses(&p).await;
            s.len() >= 5 && s.iter().all(|(_, st, _)| st == "final")
        }
    })
    .await;
    assert_exactly_once(&chain, &d, &grid, &pool, &homes).await;
    engine.shutdown().await.expect("shutdown");
}
