//! The JSON API: health, intervals, settlements, live power, rejects and the
//! community summary.
//!
//! The response types here are the API's contract and are deliberately
//! separate from the read model's row types, so that storage can change
//! without changing what clients see. Money and prices stay integers
//! (micro-units); only the page converts them for display.

use crate::{
    AppError, AppState,
    routes::Viewer,
    summary::{self, BookSummary, Summary},
};
use axum::{
    Extension, Json,
    extract::{Query, State, rejection::QueryRejection},
};
use clearing::read::{IntervalRow, LiveRow, ReadError, SettlementRow};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Default number of rows of a list endpoint.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `limit` a list endpoint accepts.
pub const MAX_LIMIT: u32 = 1000;
/// How many intervals and settlements the summary counts at most.
pub const COUNT_CAP: u32 = MAX_LIMIT;

/// One cleared interval as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IntervalView {
    /// Unix ms.
    pub interval_start: u64,
    /// Unix ms, exclusive.
    pub interval_end: u64,
    /// Micro-units per kWh; `null` when nothing traded.
    pub clearing_price: Option<u64>,
    pub volume_wh: u64,
    /// Number of trades.
    pub trades: u64,
    /// Number of orders in the book.
    pub orders: u64,
}

impl IntervalView {
    fn from_row(row: IntervalRow, interval_ms: u64) -> IntervalView {
        IntervalView {
            interval_start: row.interval_start,
            interval_end: row.interval_start.saturating_add(interval_ms),
            clearing_price: row.clearing_price,
            volume_wh: row.volume_wh,
            trades: row.trades,
            orders: row.orders,
        }
    }
}

/// One settlement batch as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SettlementView {
    /// Unix ms.
    pub interval_start: u64,
    /// `pending`, `submitted`, `confirmed` or `final`.
    pub status: String,
    /// Hex SHA-256 of the batch.
    pub hash: String,
    /// Hash of the previous batch in the chain.
    pub prev_hash: String,
    /// Households with a transfer in the batch.
    pub households: u64,
    /// Total traded money, micro-units.
    pub traded_micros: i64,
    /// On-chain transaction, when settled on a chain.
    pub tx_hash: Option<String>,
    /// Block-explorer link of `tx_hash`, when an explorer is configured.
    #[serde(default)]
    pub tx_url: Option<String>,
}

impl From<SettlementRow> for SettlementView {
    fn from(row: SettlementRow) -> SettlementView {
        SettlementView {
            tx_url: None,
            interval_start: row.interval_start,
            status: row.status,
            hash: row.hash,
            prev_hash: row.prev_hash,
            households: row.households,
            traded_micros: row.traded_micros,
            tx_hash: row.tx_hash,
        }
    }
}

/// Query parameters of the list endpoints. `limit` is taken as text so that
/// a bad value gets our own message rather than a deserializer's.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<String>,
}

/// Latest live power of one meter, as a viewer may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LiveView {
    /// The household, or `neighbour` for a viewer who may not see who.
    pub household: String,
    pub meter: String,
    /// Unix ms.
    pub ts: u64,
    /// `+` import from the grid, `−` export to it, W.
    pub grid_power_w: i64,
    pub pv_power_w: Option<i64>,
}

/// Live rows as `viewer` may see them: the operator sees everything, a
/// household its own meters by name and the others as `neighbour`, the
/// public nothing (it has the totals of the summary).
pub(crate) fn live_for(viewer: &Viewer, rows: &[LiveRow]) -> Vec<LiveView> {
    if viewer.account.is_none() {
        return Vec::new();
    }
    rows.iter()
        .map(|r| {
            let own = viewer.may_see(r.household.as_str());
            LiveView {
                household: viewer.mask(r.household.as_str()),
                meter: if own {
                    r.meter.to_string()
                } else {
                    "neighbour".to_owned()
                },
                ts: r.ts.0,
                grid_power_w: r.grid_power_w.0,
                pv_power_w: r.pv_power_w.map(|w| w.0),
            }
        })
        .collect()
}

/// Validates `?limit=`: absent means [`DEFAULT_LIMIT`], otherwise an integer
/// in `1..=MAX_LIMIT`.
pub(crate) fn parse_limit(raw: Option<&str>) -> Result<u32, AppError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(AppError::BadRequest(format!(
            "query parameter `limit` must be an integer from 1 to {MAX_LIMIT}, got {:?}",
            truncate(raw, 32)
        ))),
    }
}

/// Keeps echoed client input short in error messages.
fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

pub(crate) fn limit_from(query: Result<Query<ListQuery>, QueryRejection>) -> Result<u32, AppError> {
    let Query(q) = query.map_err(|rejection| {
        tracing::debug!(%rejection, "bad query string");
        AppError::BadRequest("malformed query string; the only parameter is `limit`".to_owned())
    })?;
    parse_limit(q.limit.as_deref())
}

/// `GET /healthz`: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "community", responses((status = 200, description = "{\"status\": \"ok\"}")))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /api/intervals?limit=N`: cleared intervals, newest first.
#[utoipa::path(get, path = "/api/intervals", tag = "market",
    params(("limit" = Option<u32>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = [IntervalView]), (status = 400, body = crate::error::ErrorBody),
        (status = 401, description = "Public aggregates are off", body = crate::error::ErrorBody)))]
pub(crate) async fn intervals(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<IntervalView>>, AppError> {
    let limit = limit_from(query)?;
    let mut rows = state.read.intervals(limit).await?;
    // The read model promises newest first; the API guarantees it.
    rows.sort_by_key(|r| std::cmp::Reverse(r.interval_start));
    rows.truncate(limit as usize);
    Ok(Json(
        rows.into_iter()
            .map(|r| IntervalView::from_row(r, state.interval_ms))
            .collect(),
    ))
}

/// `GET /api/settlements?limit=N`: settlement batches, newest first.
#[utoipa::path(get, path = "/api/settlements", tag = "settlements",
    params(("limit" = Option<u32>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = [SettlementView]), (status = 400, body = crate::error::ErrorBody),
        (status = 401, description = "Public aggregates are off", body = crate::error::ErrorBody)))]
pub(crate) async fn settlements(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<SettlementView>>, AppError> {
    let limit = limit_from(query)?;
    let mut rows = state.read.settlements(limit).await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.interval_start));
    rows.truncate(limit as usize);
    let settings = state.settings();
    Ok(Json(
        rows.into_iter()
            .map(|r| {
                let mut v = SettlementView::from(r);
                v.tx_url = v.tx_hash.as_deref().and_then(|tx| settings.tx_url(tx));
                v
            })
            .collect(),
    ))
}

/// `GET /api/live`: latest power of every meter, by household then meter.
#[utoipa::path(get, path = "/api/live", tag = "community",
    responses((status = 200, body = [LiveView]), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn live(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Json<Vec<LiveView>> {
    Json(live_for(&viewer, &state.read.live()))
}

/// `GET /api/rejects`: rejected messages counted by reason.
#[utoipa::path(get, path = "/api/rejects", tag = "devices",
    responses((status = 200, body = BTreeMap<String, u64>),
        (status = 401, description = "Public aggregates are off", body = crate::error::ErrorBody)))]
pub(crate) async fn rejects(State(state): State<AppState>) -> Json<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for (reason, n) in state.read.rejects() {
        let c: &mut u64 = counts.entry(reason).or_default();
        *c = c.saturating_add(n);
    }
    Json(counts)
}

/// `GET /api/summary`: the community at a glance. Answered from memory:
/// live totals from the engine's live board, the stored figures from a
/// cache refreshed every second.
#[utoipa::path(get, path = "/api/summary", tag = "community",
    responses((status = 200, body = Summary),
        (status = 401, description = "Public aggregates are off", body = crate::error::ErrorBody)))]
pub(crate) async fn summary(State(state): State<AppState>) -> Result<Json<Summary>, AppError> {
    let book = state.book().await?;
    let live = state.read.live();
    Ok(Json(build_summary(&state, &live, book)))
}

/// Reads what the summary needs from storage: the newest intervals and
/// settlements up to [`COUNT_CAP`].
pub(crate) async fn load_book(state: &AppState) -> Result<BookSummary, ReadError> {
    let (intervals, settlements) = futures::try_join!(
        state.read.intervals(COUNT_CAP),
        state.read.settlements(COUNT_CAP)
    )?;
    Ok(summary::book_summary(&intervals, &settlements, COUNT_CAP))
}

/// The gate lead for the countdown: the one in force for the next interval
/// as the engine shows it (the operator may have changed it), else the
/// configured one.
fn gate_lead_ms(state: &AppState, now: u64) -> u64 {
    let len = state.interval_ms.max(1);
    let next = now.div_ceil(len).saturating_mul(len);
    state
        .read
        .auction_params()
        .map_or(state.gate_lead_ms, |p| p.for_interval(next).gate_lead_ms)
}

/// Combines live rows and a book summary with the state's identity and now.
pub(crate) fn build_summary(state: &AppState, live: &[LiveRow], book: BookSummary) -> Summary {
    let now = state.clock.now();
    let online_window_ms = state.online_window_ms();
    Summary {
        grid: state.grid.clone(),
        interval_ms: state.interval_ms,
        currency: state.currency.clone(),
        as_of: now.0,
        online_window_ms,
        next_gate_closure: summary::next_gate_closure(
            now.0,
            state.interval_ms,
            gate_lead_ms(state, now.0),
        ),
        clock_speed: state.clock.speed().max(1),
        live: summary::live_totals(live, now, online_window_ms),
        book,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_accepts_the_range_and_defaults() {
        assert_eq!(parse_limit(None).expect("default"), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("1")).expect("min"), 1);
        assert_eq!(parse_limit(Some("1000")).expect("max"), 1000);
        for bad in ["0", "1001", "-1", "", "ten", "1e3", "99999999999999999999"] {
            let err = parse_limit(Some(bad)).expect_err(bad);
            assert!(err.to_string().contains("`limit`"), "{err}");
        }
    }

    #[test]
    fn echoed_input_is_truncated() {
        assert_eq!(truncate("abc", 2), "ab…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
