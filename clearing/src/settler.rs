//! Settling one interval: measure delivery, reconcile, build the batch and
//! hand it to the backend. Idempotent: an interval with a recorded batch is
//! returned as recorded. The caller serializes calls (the chain has one tip).

use crate::book;
use crate::error::{EngineError, StoreError, to_i64};
use crate::registry::Registry;
use crate::settlement::{self, Delivery, Reconciliation, Settlement, SettlementRecord};
use protocol::{
    AuctionParams, GridId, HouseholdId, IntervalId, MerkleTree, SettlementBatch, UnixMs,
};
use sqlx::SqlitePool;
use std::collections::{BTreeMap, BTreeSet};
use tracing::{info, warn};

/// Everything the settler reads.
#[derive(Debug, Clone, Copy)]
pub struct SettleCtx<'a> {
    pub pool: &'a SqlitePool,
    pub registry: &'a Registry,
    pub grid: &'a GridId,
    pub interval_ms: u64,
}

/// The households that traded in an interval, sorted.
pub fn traders(trades: &[protocol::Trade]) -> BTreeSet<HouseholdId> {
    trades
        .iter()
        .flat_map(|t| [t.buyer.clone(), t.seller.clone()])
        .collect()
}

/// Whether every trading household's meters have reported past the end of
/// the interval.
pub async fn ready(ctx: SettleCtx<'_>, interval: IntervalId) -> Result<bool, EngineError> {
    let cleared = book::stored_result(ctx.pool, interval)
        .await?
        .ok_or(EngineError::NotCleared(interval.0))?;
    let end = interval.end(ctx.interval_ms);
    for h in traders(&cleared.result.trades) {
        if !settlement::readings_complete(ctx.pool, ctx.registry.meters_of(&h), end).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Builds the batch of an interval (not yet recorded).
pub async fn build_batch(
    ctx: SettleCtx<'_>,
    params: &AuctionParams,
    interval: IntervalId,
) -> Result<
    (
        SettlementBatch,
        Reconciliation,
        BTreeMap<HouseholdId, Delivery>,
    ),
    EngineError,
> {
    let cleared = book::stored_result(ctx.pool, interval)
        .await?
        .ok_or(EngineError::NotCleared(interval.0))?;
    let result = cleared.result;
    let (start, end) = (interval.start(), interval.end(ctx.interval_ms));
    let mut deliveries = BTreeMap::new();
    let mut evidence = Vec::new();
    for h in traders(&result.trades) {
        let (d, mut ev) =
            settlement::measure(ctx.pool, ctx.registry.meters_of(&h), start, end).await?;
        if !d.has_data {
            warn!(household = %h, interval = interval.0, "no usable readings: settled as undelivered");
        }
        deliveries.insert(h, d);
        evidence.append(&mut ev);
    }
    evidence.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    evidence.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let readings_root = MerkleTree::new(evidence.iter().map(|e| e.2.as_slice())).root();
    let rec = settlement::reconcile(&result.trades, &deliveries, params);
    let batch = SettlementBatch {
        grid: ctx.grid.clone(),
        interval,
        prev_hash: settlement::chain_tip(ctx.pool).await?,
        orders_root: result.orders_root,
        trades_root: result.trades_root,
        readings_root,
        transfers: rec.transfers.clone(),
        utility: rec.utility,
    };
    if !batch.balances() {
        // Unreachable by construction (utility = −Σ transfers); refuse
        // rather than record money out of thin air.
        return Err(settlement::SettlementError::Unbalanced(interval.0).into());
    }
    Ok((batch, rec, deliveries))
}

/// Settles an interval once.
pub async fn settle_interval(
    ctx: SettleCtx<'_>,
    params: &AuctionParams,
    backend: &dyn Settlement,
    interval: IntervalId,
    now: UnixMs,
) -> Result<SettlementRecord, EngineError> {
    if let Some(done) = settlement::record(ctx.pool, interval).await? {
        return Ok(done);
    }
    let (batch, rec, deliveries) = build_batch(ctx, params, interval).await?;
    let start = to_i64(interval.0, "interval")?;
    let lines =
        serde_json::to_string(&rec.lines).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = ctx.pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "INSERT INTO reconciliations (interval_start, traded_micros, utility_micros, lines_json) VALUES (?, ?, ?, ?) \
         ON CONFLICT(interval_start) DO UPDATE SET traded_micros = excluded.traded_micros, \
         utility_micros = excluded.utility_micros, lines_json = excluded.lines_json",
    )
    .bind(start)
    .bind(rec.traded.0)
    .bind(rec.utility.0)
    .bind(&lines)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM deliveries WHERE interval_start = ?")
        .bind(start)
        .execute(&mut *tx)
        .await?;
    for (h, d) in &deliveries {
        sqlx::query(
            "INSERT INTO deliveries (interval_start, household, export_wh, import_wh, has_data) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(start)
        .bind(h.as_str())
        .bind(to_i64(d.export_wh.0, "energy")?)
        .bind(to_i64(d.import_wh.0, "energy")?)
        .bind(d.has_data)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let record = backend.submit(&batch).await?;
    info!(
        interval = interval.0,
        backend = backend.name(),
        seq = record.seq,
        hash = %record.hash,
        households = batch.transfers.len(),
        traded_micros = rec.traded.0,
        utility_micros = batch.utility.0,
        at = now.0,
        "interval settled"
    );
    Ok(record)
}

/// Cleared intervals after the chain's newest record, oldest first (the
/// chain only grows forwards in time).
pub async fn unsettled(pool: &SqlitePool, limit: u32) -> Result<Vec<IntervalId>, StoreError> {
    let rows: Vec<i64> = sqlx::query_scalar(
        "SELECT i.interval_start FROM intervals i LEFT JOIN settlements s ON s.interval_start = i.interval_start \
         WHERE s.interval_start IS NULL \
         AND i.interval_start > COALESCE((SELECT MAX(interval_start) FROM settlements), -1) \
         ORDER BY i.interval_start LIMIT ?",
    )
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|v| crate::error::to_u64(v, "interval").map(IntervalId))
        .collect()
}
