//! Clearing one interval: from stored signed orders to a signed, stored and
//! published [`ClearingResult`].
//!
//! The book is rebuilt from the exact signed envelopes (not from the decoded
//! columns), so that what is cleared is what anyone holding the published
//! orders would clear. Amendments: within a household, orders are applied in
//! nonce order; an order with `replaces = n` removes the still-active order
//! `n` and, if its quantity is positive, takes its place. An amendment whose
//! target is no longer active (already replaced or cancelled) is void, so
//! that one order can never be amended twice into two live orders.
//!
//! Clearing is idempotent: the first result for an interval is stored with
//! its trades in one transaction and never recomputed; asking again returns
//! the stored result.

use crate::auction::{self, BookOrder};
use crate::error::{EngineError, StoreError, to_i64, to_u64};
use ed25519_dalek::SigningKey;
use protocol::{
    AuctionParams, ClearingResult, Domain, GridId, HouseholdId, IntervalId, MerkleTree, Order,
    SignedEnvelope, UnixMs, canonical_json, decode_payload,
};
use sqlx::SqlitePool;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// One stored order with its exact envelope.
#[derive(Debug, Clone)]
pub struct SignedOrder {
    pub order: Order,
    pub envelope: Vec<u8>,
}

/// The interval's accepted orders in canonical order (household, nonce).
pub async fn load_orders(
    pool: &SqlitePool,
    interval: IntervalId,
) -> Result<Vec<SignedOrder>, StoreError> {
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT household, nonce, envelope FROM orders WHERE interval_start = ? ORDER BY household, nonce",
    )
    .bind(to_i64(interval.0, "interval")?)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (household, nonce, envelope) in rows {
        let corrupt =
            |why: String| StoreError::Corrupt(format!("order {household}-{nonce}: {why}"));
        let env = SignedEnvelope::decode(&envelope).map_err(|e| corrupt(e.to_string()))?;
        let order: Order = decode_payload(&env.payload).map_err(|e| corrupt(e.to_string()))?;
        if order.household.as_str() != household || to_i64(order.nonce, "nonce")? != nonce {
            return Err(corrupt("columns disagree with the signed payload".into()));
        }
        out.push(SignedOrder { order, envelope });
    }
    Ok(out)
}

/// Applies amendments and cancellations and returns the book, sorted by id.
/// `orders` must be in (household, nonce) order, as [`load_orders`] returns.
pub fn build_book(orders: &[Order]) -> Vec<BookOrder> {
    let mut active: BTreeMap<(&HouseholdId, u64), &Order> = BTreeMap::new();
    for o in orders {
        match o.replaces {
            Some(old) => {
                if active.remove(&(&o.household, old)).is_some() {
                    if o.quantity_wh.0 > 0 {
                        active.insert((&o.household, o.nonce), o);
                    }
                } else {
                    warn!(household = %o.household, nonce = o.nonce, replaces = old, "amendment of an inactive order is void");
                }
            }
            None => {
                if o.quantity_wh.0 > 0 {
                    active.insert((&o.household, o.nonce), o);
                }
            }
        }
    }
    let mut book: Vec<BookOrder> = active
        .into_values()
        .map(|o| BookOrder {
            id: o.id().into(),
            household: o.household.clone(),
            side: o.side,
            quantity_wh: o.quantity_wh,
            limit_price: o.limit_price,
        })
        .collect();
    book.sort_by(|a, b| a.id.cmp(&b.id));
    book
}

/// Builds the result of a book: a pure function of orders and parameters.
pub fn result_of(
    grid: &GridId,
    interval: IntervalId,
    params: &AuctionParams,
    orders: &[SignedOrder],
) -> (ClearingResult, usize) {
    let plain: Vec<Order> = orders.iter().map(|o| o.order.clone()).collect();
    let book = build_book(&plain);
    let outcome = auction::clear(&book, params);
    let orders_root = MerkleTree::new(orders.iter().map(|o| o.envelope.as_slice())).root();
    let trades_root = MerkleTree::new(outcome.trades.iter().map(canonical_json)).root();
    let result = ClearingResult {
        grid: grid.clone(),
        interval,
        params: params.clone(),
        clearing_price: outcome.clearing_price,
        volume_wh: outcome.volume_wh,
        trades: outcome.trades,
        orders_root,
        trades_root,
    };
    (result, book.len())
}

/// A stored clearing result with its signed envelope.
#[derive(Debug, Clone)]
pub struct Cleared {
    pub result: ClearingResult,
    /// Wire bytes of the engine-signed result (Domain::Result).
    pub envelope: Vec<u8>,
    /// Whether this call cleared it (false: it was already stored).
    pub fresh: bool,
}

/// The stored result of an interval, if it was cleared.
pub async fn stored_result(
    pool: &SqlitePool,
    interval: IntervalId,
) -> Result<Option<Cleared>, StoreError> {
    let row: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT result_json, result_envelope FROM intervals WHERE interval_start = ?",
    )
    .bind(to_i64(interval.0, "interval")?)
    .fetch_optional(pool)
    .await?;
    let Some((json, envelope)) = row else {
        return Ok(None);
    };
    let result: ClearingResult = serde_json::from_str(&json)
        .map_err(|e| StoreError::Corrupt(format!("result of interval {}: {e}", interval.0)))?;
    Ok(Some(Cleared {
        result,
        envelope,
        fresh: false,
    }))
}

/// The latest cleared interval.
pub async fn last_cleared(pool: &SqlitePool) -> Result<Option<IntervalId>, StoreError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(interval_start) FROM intervals")
        .fetch_one(pool)
        .await?;
    v.map(|v| to_u64(v, "interval").map(IntervalId)).transpose()
}

/// Clears an interval once: computes, signs and stores the result and its
/// trades in one transaction. The caller publishes it.
pub async fn clear_interval(
    pool: &SqlitePool,
    grid: &GridId,
    params: &AuctionParams,
    key: &SigningKey,
    interval: IntervalId,
    now: UnixMs,
) -> Result<Cleared, EngineError> {
    if let Some(done) = stored_result(pool, interval).await? {
        return Ok(done);
    }
    let orders = load_orders(pool, interval).await?;
    let (result, book_len) = result_of(grid, interval, params, &orders);
    let json = canonical_json(&result);
    let env = SignedEnvelope::sign(Domain::Result, key, json.clone())?;
    let envelope = env.encode();
    let json_text = String::from_utf8(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let start = to_i64(interval.0, "interval")?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let inserted = sqlx::query(
        "INSERT INTO intervals (interval_start, clearing_price, volume_wh, trades, orders, orders_root, trades_root, \
         result_json, result_envelope, cleared_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT(interval_start) DO NOTHING",
    )
    .bind(start)
    .bind(result.clearing_price.map(|p| to_i64(p.0, "price")).transpose()?)
    .bind(to_i64(result.volume_wh.0, "volume")?)
    .bind(i64::try_from(result.trades.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(book_len).unwrap_or(i64::MAX))
    .bind(result.orders_root.to_hex())
    .bind(result.trades_root.to_hex())
    .bind(&json_text)
    .bind(&envelope)
    .bind(to_i64(now.0, "time")?)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        // Cleared concurrently by another caller: theirs is the result.
        tx.rollback().await?;
        return stored_result(pool, interval)
            .await?
            .ok_or(EngineError::NotCleared(interval.0));
    }
    for (idx, t) in result.trades.iter().enumerate() {
        sqlx::query(
            "INSERT INTO trades (interval_start, idx, buyer, seller, buy_order, sell_order, quantity_wh, price, \
             buyer_price) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(start)
        .bind(i64::try_from(idx).unwrap_or(i64::MAX))
        .bind(t.buyer.as_str())
        .bind(t.seller.as_str())
        .bind(t.buy_order.as_str())
        .bind(t.sell_order.as_str())
        .bind(to_i64(t.quantity_wh.0, "quantity")?)
        .bind(to_i64(t.price.0, "price")?)
        .bind(to_i64(t.buyer_price.0, "price")?)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    info!(
        interval = interval.0,
        orders = orders.len(),
        book = book_len,
        trades = result.trades.len(),
        volume_wh = result.volume_wh.0,
        price = ?result.clearing_price.map(|p| p.0),
        "interval cleared"
    );
    Ok(Cleared {
        result,
        envelope,
        fresh: true,
    })
}
