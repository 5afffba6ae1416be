//! The auction parameters: what the market page shows (the set in force and
//! changes scheduled for later intervals), the operator's audit trail, and
//! the operator's form.
//!
//! A change goes to the engine through [`clearing::operator::Operator`]:
//! the engine validates it (an error names the field), stores it with who
//! made it and the old and new values, and applies it from the next
//! interval whose gate is still open, never to a closed one.

use crate::routes::Viewer;
use crate::{AppError, AppState};
use axum::{
    Extension, Json,
    extract::{State, rejection::JsonRejection},
};
use clearing::read::{ParamChangeRow, ParamSetRow};
use protocol::IntervalId;
use serde::{Deserialize, Serialize};

/// One set of auction parameters. Prices in micro-units per kWh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSetView {
    /// `uniform`, `pay_as_bid` or `mcafee`.
    pub mechanism: String,
    /// `midpoint`, `bid` or `ask` (how the uniform price is chosen).
    pub price_rule: String,
    /// The utility's feed-in tariff: the price floor.
    pub feed_in_tariff: u64,
    /// The utility's retail tariff: the price ceiling.
    pub retail_tariff: u64,
    /// Grid fee, paid by buyers on top of the price.
    pub grid_fee: u64,
    /// Feeder capacity per interval in Wh; `null` for no limit.
    pub capacity_wh: Option<u64>,
    /// How long before an interval starts its gate closes, ms.
    pub gate_lead_ms: u64,
}

impl From<&ParamSetRow> for ParamSetView {
    fn from(p: &ParamSetRow) -> Self {
        ParamSetView {
            mechanism: p.mechanism.clone(),
            price_rule: p.price_rule.clone(),
            feed_in_tariff: p.feed_in_tariff,
            retail_tariff: p.retail_tariff,
            grid_fee: p.grid_fee,
            capacity_wh: p.capacity_wh,
            gate_lead_ms: p.gate_lead_ms,
        }
    }
}

impl From<ParamSetView> for ParamSetRow {
    fn from(p: ParamSetView) -> Self {
        ParamSetRow {
            mechanism: p.mechanism,
            price_rule: p.price_rule,
            feed_in_tariff: p.feed_in_tariff,
            retail_tariff: p.retail_tariff,
            grid_fee: p.grid_fee,
            capacity_wh: p.capacity_wh,
            gate_lead_ms: p.gate_lead_ms,
        }
    }
}

/// A set that takes over from an interval on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduledParams {
    /// First interval (Unix ms) cleared with `params`.
    pub effective_from: u64,
    pub params: ParamSetView,
}

/// `GET /api/market/params`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MarketParams {
    /// The interval running now (Unix ms).
    pub interval_start: u64,
    /// The set the running interval was (or will be) cleared with.
    pub in_force: ParamSetView,
    /// Since which interval `in_force` applies; `null` for the configured
    /// set.
    pub in_force_since: Option<u64>,
    /// Changes that apply to later intervals, in order.
    pub scheduled: Vec<ScheduledParams>,
}

/// One audited change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParamChangeView {
    pub id: i64,
    /// First interval (Unix ms) cleared with `new`.
    pub effective_from: u64,
    pub old: ParamSetView,
    pub new: ParamSetView,
    /// The dashboard account that made the change.
    pub changed_by: String,
    /// Unix ms of the engine's clock.
    pub changed_at: u64,
}

impl From<&ParamChangeRow> for ParamChangeView {
    fn from(c: &ParamChangeRow) -> Self {
        ParamChangeView {
            id: c.id,
            effective_from: c.effective_from,
            old: (&c.old).into(),
            new: (&c.new).into(),
            changed_by: c.changed_by.clone(),
            changed_at: c.changed_at,
        }
    }
}

fn params_row(state: &AppState) -> Result<clearing::read::ParamsRow, AppError> {
    state.read.auction_params().ok_or(AppError::NotFound)
}

/// `GET /api/market/params`: the parameters in force and those scheduled.
#[utoipa::path(get, path = "/api/market/params", tag = "market",
    responses((status = 200, body = MarketParams), (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "The engine shows no parameters", body = crate::error::ErrorBody)))]
pub(crate) async fn market_params(
    State(state): State<AppState>,
) -> Result<Json<MarketParams>, AppError> {
    let row = params_row(&state)?;
    let now = IntervalId::containing(state.clock.now(), state.interval_ms.max(1)).0;
    let in_force_since = row
        .changes
        .iter()
        .rev()
        .find(|c| c.effective_from <= now)
        .map(|c| c.effective_from);
    let mut scheduled: Vec<ScheduledParams> = Vec::new();
    for c in row.changes.iter().filter(|c| c.effective_from > now) {
        // A later change to the same interval replaces an earlier one.
        scheduled.retain(|s| s.effective_from != c.effective_from);
        scheduled.push(ScheduledParams {
            effective_from: c.effective_from,
            params: (&c.new).into(),
        });
    }
    scheduled.sort_by_key(|s| s.effective_from);
    Ok(Json(MarketParams {
        interval_start: now,
        in_force: row.for_interval(now).into(),
        in_force_since,
        scheduled,
    }))
}

/// `GET /api/params/changes` (operator): the audit trail, newest first.
#[utoipa::path(get, path = "/api/params/changes", tag = "market",
    responses((status = 200, body = [ParamChangeView]), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn changes(
    State(state): State<AppState>,
) -> Result<Json<Vec<ParamChangeView>>, AppError> {
    let row = params_row(&state)?;
    let mut out: Vec<ParamChangeView> = row.changes.iter().map(Into::into).collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.id));
    Ok(Json(out))
}

/// `POST /api/params` (operator): changes the auction parameters from the
/// next interval whose gate is still open.
#[utoipa::path(post, path = "/api/params", tag = "market", request_body = ParamSetView,
    params(("X-CSRF-Token" = String, Header)),
    responses((status = 200, description = "Stored and scheduled", body = ParamChangeView),
        (status = 400, description = "A field is invalid; the message names it", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn change(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    body: Result<Json<ParamSetView>, JsonRejection>,
) -> Result<Json<ParamChangeView>, AppError> {
    // axum's message names the field that failed to parse.
    let Json(p) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let operator = state.operator.as_deref().ok_or(AppError::Conflict(
        "this dashboard is not attached to a clearing engine it may change".into(),
    ))?;
    let by = viewer
        .account
        .as_ref()
        .map(|a| a.username.clone())
        .unwrap_or_default();
    let change = operator.change_params(p.into(), &by).await?;
    tracing::info!(by = %by, effective_from = change.effective_from, "auction parameters changed");
    Ok(Json((&change).into()))
}
