//! `GET /api/published/{interval}`: what the engine publishes so that
//! anyone can verify an interval (`voltshare verify --api URL`) and a
//! household can build its inclusion proofs (`voltshare proof --api URL`):
//! the exact signed envelopes of the interval's orders and of the readings
//! settlement measured delivery from, the public keys to check them with,
//! and the engine's signed result, trades table and signed batch.
//!
//! Access: `Aggregate`, like the interval's detail and verify views. A
//! verifier must see the unmasked signed envelopes (a signature covers the
//! household's id), so this route does not mask households; it publishes
//! only one interval's inputs, and readings only of the households that
//! traded in it, from the baseline at the interval's start to its end. An
//! operator who turns public aggregates off limits it to members.

use crate::{AppError, AppState};
use axum::{
    Json,
    extract::{Path, State},
};
use clearing::read::{
    PublishedBatch, PublishedInterval, PublishedKey, PublishedMeter, PublishedTrade,
};
use serde::Serialize;
use utoipa::ToSchema;

/// A public key (hex of its 32 bytes) and its id.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedKeyView {
    pub key_id: String,
    /// The household enrolled with the key; empty for the engine's keys.
    pub household: String,
    pub public_key: String,
}

/// An enrolled meter and its household.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedMeterView {
    pub meter: String,
    pub household: String,
}

/// One row of the engine's trades table.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedTradeView {
    pub buyer: String,
    pub seller: String,
    pub buy_order: String,
    pub sell_order: String,
    pub quantity_wh: u64,
    /// Micro-units per kWh (the seller's price).
    pub price: u64,
    /// Micro-units per kWh (the buyer's: price plus grid fee).
    pub buyer_price: u64,
}

/// The engine-signed settlement batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedBatchView {
    /// Position in the engine's hash chain, from 1.
    pub seq: u64,
    /// The batch exactly as signed (JSON text).
    pub batch_json: String,
    /// Signature envelope over `batch_json` (hex).
    pub signature: String,
    /// Hash (hex) of the previous batch; null for the first.
    pub previous_hash: Option<String>,
}

/// Everything needed to verify one interval. Envelopes are hex of the exact
/// bytes the engine verified and stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedView {
    /// Interval start, Unix ms.
    pub interval: u64,
    pub engine_keys: Vec<PublishedKeyView>,
    pub household_keys: Vec<PublishedKeyView>,
    pub meters: Vec<PublishedMeterView>,
    /// The engine-signed clearing result (hex envelope).
    pub result_envelope: String,
    /// Every accepted order of the interval (hex envelopes).
    pub orders: Vec<String>,
    /// The readings delivery was measured from (hex envelopes).
    pub readings: Vec<String>,
    pub trades: Vec<PublishedTradeView>,
    /// Null while the interval is not settled.
    pub batch: Option<PublishedBatchView>,
}

fn key(k: PublishedKey) -> PublishedKeyView {
    PublishedKeyView {
        key_id: k.key_id,
        household: k.household,
        public_key: k.public_key,
    }
}

impl From<PublishedInterval> for PublishedView {
    fn from(p: PublishedInterval) -> Self {
        PublishedView {
            interval: p.interval,
            engine_keys: p.engine_keys.into_iter().map(key).collect(),
            household_keys: p.household_keys.into_iter().map(key).collect(),
            meters: p
                .meters
                .into_iter()
                .map(|PublishedMeter { meter, household }| PublishedMeterView { meter, household })
                .collect(),
            result_envelope: p.result_envelope,
            orders: p.orders,
            readings: p.readings,
            trades: p
                .trades
                .into_iter()
                .map(|t: PublishedTrade| PublishedTradeView {
                    buyer: t.buyer,
                    seller: t.seller,
                    buy_order: t.buy_order,
                    sell_order: t.sell_order,
                    quantity_wh: t.quantity_wh,
                    price: t.price,
                    buyer_price: t.buyer_price,
                })
                .collect(),
            batch: p.batch.map(|b: PublishedBatch| PublishedBatchView {
                seq: b.seq,
                batch_json: b.batch_json,
                signature: b.signature,
                previous_hash: b.previous_hash,
            }),
        }
    }
}

/// `GET /api/published/{interval}`.
#[utoipa::path(get, path = "/api/published/{interval}", tag = "verification",
    params(("interval" = u64, Path, description = "interval start, Unix ms")),
    responses((status = 200, body = PublishedView),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, description = "Not cleared", body = crate::error::ErrorBody)))]
pub(crate) async fn published(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<PublishedView>, AppError> {
    let start = raw.parse::<u64>().map_err(|_| {
        AppError::BadRequest(
            "path parameter `interval` must be the interval's start in Unix ms".into(),
        )
    })?;
    let p = state
        .read
        .published(start, state.interval_ms)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(p.into()))
}
