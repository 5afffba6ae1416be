//! The market: the current order book as supply and demand curves, one
//! interval in full (trades, roots, settlement) and its verification.
//!
//! Curves are aggregates and public; individual orders, trades and
//! transfers name households, so they pass through [`Viewer::mask`].

use crate::routes::Viewer;
use crate::{AppError, AppState};
use axum::{
    Extension, Json,
    extract::{Path, State},
};
use clearing::read::{BookOrderRow, VerifyReport};
use serde::Serialize;

/// One step of a curve: at `price`, `cumulative_wh` is offered (supply) or
/// wanted (demand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CurvePoint {
    /// Micro-units per kWh.
    pub price: u64,
    pub cumulative_wh: u64,
}

/// One order of the book as a viewer may see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BookOrderView {
    /// The household, or `neighbour` when the viewer may not see who.
    pub household: String,
    /// `buy` or `sell`.
    pub side: String,
    pub quantity_wh: u64,
    pub limit_price: u64,
}

/// `GET /api/market/book`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderBookView {
    /// The interval the book is for, Unix ms; `null` when there are no orders.
    pub interval_start: Option<u64>,
    /// True when this is the last cleared book (no orders are open yet).
    pub cleared: bool,
    /// Sell orders by ascending limit price.
    pub supply: Vec<CurvePoint>,
    /// Buy orders by descending limit price.
    pub demand: Vec<CurvePoint>,
    /// The orders, for logged-in viewers; empty for the public.
    pub orders: Vec<BookOrderView>,
}

/// Builds a step curve: orders sorted by price (ascending for supply,
/// descending for demand), quantities accumulated; equal prices merge.
pub fn curve(orders: &[BookOrderRow], side: &str) -> Vec<CurvePoint> {
    let mut mine: Vec<&BookOrderRow> = orders.iter().filter(|o| o.side == side).collect();
    if side == "buy" {
        mine.sort_by_key(|o| std::cmp::Reverse(o.limit_price));
    } else {
        mine.sort_by_key(|o| o.limit_price);
    }
    let mut out: Vec<CurvePoint> = Vec::new();
    let mut total: u64 = 0;
    for o in mine {
        total = total.saturating_add(o.quantity_wh);
        match out.last_mut() {
            Some(last) if last.price == o.limit_price => last.cumulative_wh = total,
            _ => out.push(CurvePoint {
                price: o.limit_price,
                cumulative_wh: total,
            }),
        }
    }
    out
}

/// `GET /api/market/book`: the order book that the next gate closure
/// clears (or, when nothing is open, the last cleared one).
#[utoipa::path(get, path = "/api/market/book", tag = "market",
    responses((status = 200, body = OrderBookView),
        (status = 401, description = "Public aggregates are off", body = crate::error::ErrorBody)))]
pub(crate) async fn order_book(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Json<OrderBookView>, AppError> {
    let book = state.read.order_book().await?;
    let Some(book) = book else {
        return Ok(Json(OrderBookView {
            interval_start: None,
            cleared: false,
            supply: Vec::new(),
            demand: Vec::new(),
            orders: Vec::new(),
        }));
    };
    let orders = if viewer.account.is_some() {
        book.orders
            .iter()
            .map(|o| BookOrderView {
                household: viewer.mask(&o.household),
                side: o.side.clone(),
                quantity_wh: o.quantity_wh,
                limit_price: o.limit_price,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Json(OrderBookView {
        interval_start: Some(book.interval_start),
        cleared: book.cleared,
        supply: curve(&book.orders, "sell"),
        demand: curve(&book.orders, "buy"),
        orders,
    }))
}

/// One trade as a viewer may see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TradeView {
    pub interval_start: u64,
    pub idx: u64,
    pub buyer: String,
    pub seller: String,
    pub quantity_wh: u64,
    /// Seller's price, micro-units per kWh.
    pub price: u64,
    /// Buyer's price (grid fee included), micro-units per kWh.
    pub buyer_price: u64,
}

/// One transfer of a batch as a viewer may see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransferView {
    pub household: String,
    /// `+` receives, `−` pays; micro-units.
    pub amount: i64,
    pub delivered_wh: u64,
    pub received_wh: u64,
}

/// A settlement batch in full.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchView {
    /// `pending`, `submitted`, `confirmed` or `final`.
    pub status: String,
    pub hash: String,
    pub prev_hash: String,
    pub readings_root: String,
    pub utility_micros: i64,
    pub confirmations: u64,
    pub tx_hash: Option<String>,
    /// Block-explorer link of `tx_hash`, when an explorer is configured.
    pub tx_url: Option<String>,
    pub transfers: Vec<TransferView>,
}

/// `GET /api/intervals/{interval}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IntervalDetailView {
    pub interval_start: u64,
    pub interval_end: u64,
    pub clearing_price: Option<u64>,
    pub volume_wh: u64,
    pub orders: u64,
    pub orders_root: String,
    pub trades_root: String,
    pub cleared_at: u64,
    pub trades: Vec<TradeView>,
    pub settlement: Option<BatchView>,
}

/// Parses the `{interval}` path segment (Unix ms).
fn interval_param(raw: &str) -> Result<u64, AppError> {
    raw.parse::<u64>().map_err(|_| {
        AppError::BadRequest(
            "path parameter `interval` must be the interval's start in Unix ms".into(),
        )
    })
}

/// `GET /api/intervals/{interval}`: trades, roots and the settlement batch.
#[utoipa::path(get, path = "/api/intervals/{interval}", tag = "market",
    params(("interval" = u64, Path, description = "interval start, Unix ms")),
    responses((status = 200, body = IntervalDetailView),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, description = "Not cleared", body = crate::error::ErrorBody)))]
pub(crate) async fn interval_detail(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(raw): Path<String>,
) -> Result<Json<IntervalDetailView>, AppError> {
    let start = interval_param(&raw)?;
    let d = state
        .read
        .interval_detail(start)
        .await?
        .ok_or(AppError::NotFound)?;
    let settings = state.settings();
    Ok(Json(IntervalDetailView {
        interval_start: d.interval.interval_start,
        interval_end: d.interval.interval_start.saturating_add(state.interval_ms),
        clearing_price: d.interval.clearing_price,
        volume_wh: d.interval.volume_wh,
        orders: d.interval.orders,
        orders_root: d.orders_root,
        trades_root: d.trades_root,
        cleared_at: d.cleared_at,
        trades: d
            .trades
            .into_iter()
            .map(|t| TradeView {
                interval_start: t.interval_start,
                idx: t.idx,
                buyer: viewer.mask(&t.buyer),
                seller: viewer.mask(&t.seller),
                quantity_wh: t.quantity_wh,
                price: t.price,
                buyer_price: t.buyer_price,
            })
            .collect(),
        settlement: d.settlement.map(|s| BatchView {
            tx_url: s.tx_hash.as_deref().and_then(|tx| settings.tx_url(tx)),
            status: s.status,
            hash: s.hash,
            prev_hash: s.prev_hash,
            readings_root: s.readings_root,
            utility_micros: s.utility_micros,
            confirmations: s.confirmations,
            tx_hash: s.tx_hash,
            transfers: s
                .transfers
                .into_iter()
                // Amounts of others are personal: the public and other
                // households see only their own line.
                .filter(|t| viewer.may_see(&t.household))
                .map(|t| TransferView {
                    household: t.household,
                    amount: t.amount,
                    delivered_wh: t.delivered_wh,
                    received_wh: t.received_wh,
                })
                .collect(),
        }),
    }))
}

/// One check of a verification (documentation type of
/// [`clearing::read::VerifyCheck`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyCheckView {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// `GET /api/intervals/{interval}/verify` (documentation type of
/// [`VerifyReport`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyReportView {
    pub interval_start: u64,
    pub ok: bool,
    pub checks: Vec<VerifyCheckView>,
}

impl From<VerifyReport> for VerifyReportView {
    fn from(r: VerifyReport) -> VerifyReportView {
        VerifyReportView {
            interval_start: r.interval_start,
            ok: r.ok,
            checks: r
                .checks
                .into_iter()
                .map(|c| VerifyCheckView {
                    name: c.name,
                    ok: c.ok,
                    detail: c.detail,
                })
                .collect(),
        }
    }
}

/// `GET /api/intervals/{interval}/verify`: re-checks the interval from the
/// stored signed evidence (signatures, roots, a re-run of the auction, the
/// settlement batch). Read-only, hence a GET.
#[utoipa::path(get, path = "/api/intervals/{interval}/verify", tag = "market",
    params(("interval" = u64, Path, description = "interval start, Unix ms")),
    responses((status = 200, body = VerifyReportView),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, description = "Not cleared", body = crate::error::ErrorBody)))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<VerifyReportView>, AppError> {
    let start = interval_param(&raw)?;
    let report = state
        .read
        .verify_interval(start)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(report.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(side: &str, q: u64, p: u64) -> BookOrderRow {
        BookOrderRow {
            household: "h".into(),
            nonce: 1,
            side: side.into(),
            quantity_wh: q,
            limit_price: p,
        }
    }

    #[test]
    fn curves_accumulate_in_price_order() {
        let book = [
            o("sell", 100, 90),
            o("sell", 50, 80),
            o("buy", 70, 200),
            o("buy", 30, 250),
            o("sell", 10, 90),
        ];
        assert_eq!(
            curve(&book, "sell"),
            vec![
                CurvePoint {
                    price: 80,
                    cumulative_wh: 50
                },
                CurvePoint {
                    price: 90,
                    cumulative_wh: 160
                }
            ]
        );
        assert_eq!(
            curve(&book, "buy"),
            vec![
                CurvePoint {
                    price: 250,
                    cumulative_wh: 30
                },
                CurvePoint {
                    price: 200,
                    cumulative_wh: 100
                }
            ]
        );
    }
}
