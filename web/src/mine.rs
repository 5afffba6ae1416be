//! A household's own data (readings, orders, trades, bills with savings),
//! the devices page, enrolment requests and the operator's settings.
//!
//! Household routes are reachable only through the gate's `OwnHousehold`
//! check (the path's `{household}` must be the viewer's own, or the viewer
//! the operator); the handlers then read exactly that household.
//!
//! Savings: for every settled interval, what the household really paid is
//! its batch transfer (trades with neighbours, at measured delivery) plus
//! the utility's tariffs for the rest of what it measured; the comparison
//! is the same measured energy bought at the retail tariff and sold at the
//! feed-in tariff. All money is integer micro-units.

use crate::api::{ListQuery, limit_from};
use crate::market::TradeView;
use crate::routes::Viewer;
use crate::state::Settings;
use crate::{AppError, AppState};
use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::StatusCode,
};
use clearing::read::{BillRow, HouseholdOrderRow, HouseholdReadingRow};
use protocol::{MicroPerKwh, WattHours};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One stored reading.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadingView {
    pub meter: String,
    pub seq: u64,
    pub ts: u64,
    pub import_wh: u64,
    pub export_wh: u64,
    pub pv_wh: Option<u64>,
    /// `+` import, `−` export, W.
    pub grid_power_w: i64,
    pub pv_power_w: Option<i64>,
    pub status: String,
}

impl From<HouseholdReadingRow> for ReadingView {
    fn from(r: HouseholdReadingRow) -> ReadingView {
        ReadingView {
            meter: r.meter,
            seq: r.seq,
            ts: r.ts,
            import_wh: r.import_wh,
            export_wh: r.export_wh,
            pv_wh: r.pv_wh,
            grid_power_w: r.grid_power_w,
            pv_power_w: r.pv_power_w,
            status: r.status,
        }
    }
}

/// One signed order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub nonce: u64,
    pub interval_start: u64,
    /// `buy` or `sell`.
    pub side: String,
    pub quantity_wh: u64,
    pub limit_price: u64,
    pub replaces: Option<u64>,
    pub ts: u64,
}

impl From<HouseholdOrderRow> for OrderView {
    fn from(r: HouseholdOrderRow) -> OrderView {
        OrderView {
            nonce: r.nonce,
            interval_start: r.interval_start,
            side: r.side,
            quantity_wh: r.quantity_wh,
            limit_price: r.limit_price,
            replaces: r.replaces,
            ts: r.ts,
        }
    }
}

/// Money of one bill period (an interval, a day or a month), micro-units,
/// `+` the household receives, `−` it pays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BillLine {
    /// `YYYY-MM-DD` or `YYYY-MM` (UTC), or the interval start for intervals.
    pub period: String,
    pub intervals: u64,
    pub bought_from_neighbours_wh: u64,
    pub sold_to_neighbours_wh: u64,
    pub imported_wh: u64,
    pub exported_wh: u64,
    /// Net of the trades with neighbours (the settlement batch transfer).
    pub market_micros: i64,
    /// The rest at the utility's tariffs.
    pub utility_micros: i64,
    /// `market + utility`: the household's real net for the period.
    pub total_micros: i64,
    /// Had it bought and sold everything at the utility's tariffs.
    pub utility_only_micros: i64,
    /// `total − utility_only`: positive means the market saved money.
    pub savings_micros: i64,
}

impl BillLine {
    fn add(&mut self, o: &BillLine) {
        self.intervals += o.intervals;
        self.bought_from_neighbours_wh += o.bought_from_neighbours_wh;
        self.sold_to_neighbours_wh += o.sold_to_neighbours_wh;
        self.imported_wh += o.imported_wh;
        self.exported_wh += o.exported_wh;
        self.market_micros = self.market_micros.saturating_add(o.market_micros);
        self.utility_micros = self.utility_micros.saturating_add(o.utility_micros);
        self.total_micros = self.total_micros.saturating_add(o.total_micros);
        self.utility_only_micros = self
            .utility_only_micros
            .saturating_add(o.utility_only_micros);
        self.savings_micros = self.savings_micros.saturating_add(o.savings_micros);
    }
}

/// `GET /api/households/{household}/bills`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Bills {
    pub household: String,
    pub currency: String,
    /// Newest first.
    pub days: Vec<BillLine>,
    /// Newest first.
    pub months: Vec<BillLine>,
    /// The newest settled intervals, newest first.
    pub intervals: Vec<BillLine>,
    pub total: BillLine,
}

fn cost(wh: u64, price: u64) -> i64 {
    MicroPerKwh(price).cost_of(WattHours(wh)).0
}

/// One interval's bill line: a pure function of the read model's row.
pub fn bill_line(row: &BillRow) -> BillLine {
    // Settled trades never exceed what was measured; saturate anyway, so a
    // missing measurement cannot produce a negative quantity.
    let rest_import = row.import_wh.saturating_sub(row.received_wh);
    let rest_export = row.export_wh.saturating_sub(row.delivered_wh);
    let utility =
        cost(rest_export, row.feed_in_tariff).saturating_sub(cost(rest_import, row.retail_tariff));
    let total = row.amount.saturating_add(utility);
    let utility_only = cost(row.export_wh, row.feed_in_tariff)
        .saturating_sub(cost(row.import_wh, row.retail_tariff));
    BillLine {
        period: row.interval_start.to_string(),
        intervals: 1,
        bought_from_neighbours_wh: row.received_wh,
        sold_to_neighbours_wh: row.delivered_wh,
        imported_wh: row.import_wh,
        exported_wh: row.export_wh,
        market_micros: row.amount,
        utility_micros: utility,
        total_micros: total,
        utility_only_micros: utility_only,
        savings_micros: total.saturating_sub(utility_only),
    }
}

/// `YYYY-MM-DD` of a Unix ms timestamp (UTC), without reading a clock.
fn day_of(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "invalid".into())
}

/// Groups bill rows into days, months and a total.
pub fn bills(household: &str, currency: &str, rows: &[BillRow]) -> Bills {
    let mut days: BTreeMap<String, BillLine> = BTreeMap::new();
    let mut months: BTreeMap<String, BillLine> = BTreeMap::new();
    let mut total = BillLine {
        period: "total".into(),
        ..BillLine::default()
    };
    let mut intervals = Vec::with_capacity(rows.len());
    for row in rows {
        let line = bill_line(row);
        let day = day_of(row.interval_start);
        let month = day.get(..7).unwrap_or(&day).to_owned();
        days.entry(day.clone())
            .or_insert_with(|| BillLine {
                period: day,
                ..BillLine::default()
            })
            .add(&line);
        months
            .entry(month.clone())
            .or_insert_with(|| BillLine {
                period: month,
                ..BillLine::default()
            })
            .add(&line);
        total.add(&line);
        intervals.push(line);
    }
    intervals.sort_by(|a, b| {
        b.period
            .len()
            .cmp(&a.period.len())
            .then(b.period.cmp(&a.period))
    });
    Bills {
        household: household.to_owned(),
        currency: currency.to_owned(),
        days: days.into_values().rev().collect(),
        months: months.into_values().rev().collect(),
        intervals,
        total,
    }
}

/// How many settled intervals the bills endpoint reads at most (about a
/// year of 15-minute intervals).
pub const BILL_ROWS: u32 = 35_040;

/// `GET /api/households/{household}/readings?limit=N`.
#[utoipa::path(get, path = "/api/households/{household}/readings", tag = "household",
    params(("household" = String, Path), ("limit" = Option<u32>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = [ReadingView]),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "Not your household", body = crate::error::ErrorBody)))]
pub(crate) async fn readings(
    State(state): State<AppState>,
    Path(household): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<ReadingView>>, AppError> {
    let limit = limit_from(query)?;
    let rows = state.read.household_readings(&household, limit).await?;
    Ok(Json(rows.into_iter().map(ReadingView::from).collect()))
}

/// `GET /api/households/{household}/orders?limit=N`.
#[utoipa::path(get, path = "/api/households/{household}/orders", tag = "household",
    params(("household" = String, Path), ("limit" = Option<u32>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = [OrderView]),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "Not your household", body = crate::error::ErrorBody)))]
pub(crate) async fn orders(
    State(state): State<AppState>,
    Path(household): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<OrderView>>, AppError> {
    let limit = limit_from(query)?;
    let rows = state.read.household_orders(&household, limit).await?;
    Ok(Json(rows.into_iter().map(OrderView::from).collect()))
}

/// `GET /api/households/{household}/trades?limit=N`: the household's
/// trades; the counterparty shows as `neighbour` unless the viewer is the
/// operator.
#[utoipa::path(get, path = "/api/households/{household}/trades", tag = "household",
    params(("household" = String, Path), ("limit" = Option<u32>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = [TradeView]),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "Not your household", body = crate::error::ErrorBody)))]
pub(crate) async fn trades(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(household): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<TradeView>>, AppError> {
    let limit = limit_from(query)?;
    let rows = state.read.household_trades(&household, limit).await?;
    Ok(Json(
        rows.into_iter()
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
    ))
}

/// `GET /api/households/{household}/bills`: per interval, day and month,
/// with savings against the utility alone.
#[utoipa::path(get, path = "/api/households/{household}/bills", tag = "household",
    params(("household" = String, Path)),
    responses((status = 200, body = Bills),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "Not your household", body = crate::error::ErrorBody)))]
pub(crate) async fn bills_handler(
    State(state): State<AppState>,
    Path(household): Path<String>,
) -> Result<Json<Bills>, AppError> {
    let rows = state.read.household_bills(&household, BILL_ROWS).await?;
    let mut b = bills(&household, &state.currency, &rows);
    b.intervals.truncate(96);
    Ok(Json(b))
}

/// One meter agent as the devices page shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub meter: String,
    pub household: String,
    /// `ok`, `stale` (silent longer than the online window), `fault` (the
    /// device reported a non-ok status) or `never` (no reading yet).
    pub health: String,
    pub last_seq: Option<u64>,
    pub last_ts: Option<u64>,
    /// Age of the newest reading in real milliseconds (the demo's clock
    /// runs faster: its age is divided by the clock's speed).
    pub last_reading_age_ms: Option<u64>,
    pub last_status: Option<String>,
    /// Signed readings of this meter the engine refused since it started,
    /// by reason (e.g. `stale_sequence`, `timestamp`).
    pub rejects: BTreeMap<String, u64>,
    /// Their total.
    pub rejected: u64,
}

/// A household's refused orders, by reason.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderRejects {
    pub household: String,
    pub rejects: BTreeMap<String, u64>,
}

/// `GET /api/devices`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Devices {
    pub devices: Vec<DeviceView>,
    /// Signed orders the engine refused, per household (a household sees
    /// only its own).
    pub order_rejects: Vec<OrderRejects>,
    /// Every message the engine rejected, by reason, engine-wide
    /// (including messages from unknown or forged keys, which belong to no
    /// household).
    pub rejects: BTreeMap<String, u64>,
    pub online_window_ms: u64,
}

/// `GET /api/devices`: every meter agent's health for the operator; a
/// household sees its own meters.
#[utoipa::path(get, path = "/api/devices", tag = "devices",
    responses((status = 200, body = Devices), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn devices(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Json<Devices>, AppError> {
    let now = state.clock.now().0;
    let speed = state.clock.speed().max(1);
    let window = state.online_window_ms();
    let rows = state.read.devices().await?;
    let mut per_meter: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    let mut per_order: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in state.read.meter_rejects() {
        if !viewer.may_see(&r.household) {
            continue;
        }
        let by_reason = match r.meter {
            Some(m) => per_meter.entry((r.household, m)).or_default(),
            None => per_order.entry(r.household).or_default(),
        };
        let c = by_reason.entry(r.reason).or_default();
        *c = c.saturating_add(r.count);
    }
    let devices = rows
        .into_iter()
        .filter(|d| viewer.may_see(&d.household))
        .map(|d| {
            let age = d.last_ts.map(|ts| now.saturating_sub(ts));
            let health = match (&d.last_status, age) {
                (None, _) | (_, None) => "never",
                (Some(s), _) if s != "ok" => "fault",
                (_, Some(a)) if a > window => "stale",
                _ => "ok",
            };
            let rejects = per_meter
                .remove(&(d.household.clone(), d.meter.clone()))
                .unwrap_or_default();
            DeviceView {
                rejected: rejects.values().fold(0u64, |a, n| a.saturating_add(*n)),
                rejects,
                health: health.to_owned(),
                last_reading_age_ms: age.map(|a| a / speed),
                meter: d.meter,
                household: d.household,
                last_seq: d.last_seq,
                last_ts: d.last_ts,
                last_status: d.last_status,
            }
        })
        .collect();
    let mut rejects = BTreeMap::new();
    for (reason, n) in state.read.rejects() {
        let c: &mut u64 = rejects.entry(reason).or_default();
        *c = c.saturating_add(n);
    }
    let order_rejects = per_order
        .into_iter()
        .map(|(household, rejects)| OrderRejects { household, rejects })
        .collect();
    Ok(Json(Devices {
        devices,
        order_rejects,
        rejects,
        online_window_ms: window,
    }))
}

/// `POST /api/enrolments` body: the household's signed enrolment request,
/// exactly the file `voltshare enroll` writes (`{"envelope": hex}`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentBody {
    /// The signed envelope, hex: grid, household, public key, meters and
    /// settlement address, signed by the key it enrols.
    pub envelope: String,
}

/// `POST /api/enrolments` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    pub id: i64,
    /// The household the request is for (read from the signed request).
    pub household: String,
    /// Id of the key it enrols.
    pub key_id: String,
}

fn store(state: &AppState) -> Result<&crate::accounts::AccountStore, AppError> {
    state.accounts.as_ref().ok_or(AppError::Conflict(
        "accounts are not enabled on this dashboard".into(),
    ))
}

fn operator(state: &AppState) -> Result<&dyn clearing::operator::Operator, AppError> {
    state.operator.as_deref().ok_or(AppError::Conflict(
        "this dashboard is not attached to a clearing engine it may change".into(),
    ))
}

/// Largest request file accepted (a request is a few hundred bytes).
const MAX_REQUEST_HEX: usize = 16 * 1024;

/// `POST /api/enrolments`: files a signed enrolment request for the
/// operator. The signature is checked now (a tampered request is refused
/// here) and again when the operator approves it.
#[utoipa::path(post, path = "/api/enrolments", tag = "enrolments", request_body = EnrolmentBody,
    params(("X-CSRF-Token" = String, Header)),
    responses((status = 201, body = Created), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn request_enrolment(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    body: Result<Json<EnrolmentBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Created>), AppError> {
    let Json(b) = body.map_err(|_| {
        AppError::BadRequest(
            "expected the request file of `voltshare enroll`: {\"envelope\": hex}".into(),
        )
    })?;
    if b.envelope.len() > MAX_REQUEST_HEX {
        return Err(AppError::BadRequest(format!(
            "`envelope` is longer than {MAX_REQUEST_HEX} hex digits"
        )));
    }
    let file = serde_json::to_string(&b).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let summary = operator(&state)?.check_enrolment(&file)?;
    if !viewer.is_operator() && viewer.household() != Some(summary.household.as_str()) {
        return Err(AppError::Forbidden("a household enrols only itself"));
    }
    let by = viewer
        .account
        .as_ref()
        .map(|a| a.username.clone())
        .unwrap_or_default();
    let id = store(&state)?
        .request_enrolment(
            &summary.household,
            &summary.public_key,
            &summary.meters,
            &by,
            &file,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id,
            household: summary.household,
            key_id: summary.key_id,
        }),
    ))
}

/// `GET /api/enrolments`: every request, newest first (operator).
#[utoipa::path(get, path = "/api/enrolments", tag = "enrolments",
    responses((status = 200, body = [crate::accounts::EnrolmentRequest]),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn enrolments(
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::accounts::EnrolmentRequest>>, AppError> {
    Ok(Json(store(&state)?.enrolments().await?))
}

async fn decide(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
    approve: bool,
) -> Result<StatusCode, AppError> {
    let id: i64 = raw
        .parse()
        .map_err(|_| AppError::BadRequest("path parameter `id` must be an integer".into()))?;
    let by = viewer
        .account
        .as_ref()
        .map(|a| a.username.clone())
        .unwrap_or_default();
    let store = store(state)?;
    if approve {
        let file = match store.pending_request(id).await? {
            None => return Err(AppError::NotFound),
            Some(None) => {
                return Err(AppError::Conflict(format!(
                    "enrolment request {id} has no signed request; ask the household to file it again"
                )));
            }
            Some(Some(file)) => file,
        };
        // Into the engine first: only a request the engine took is marked
        // approved here.
        let summary = operator(state)?.approve_enrolment(&file).await?;
        tracing::info!(id, household = %summary.household, key = %summary.key_id, by = %by, "enrolment approved in the engine");
    }
    if store.decide_enrolment(id, approve, &by).await? {
        tracing::info!(id, approve, by = %by, "enrolment decided");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound)
    }
}

/// `POST /api/enrolments/{id}/approve` (operator).
#[utoipa::path(post, path = "/api/enrolments/{id}/approve", tag = "enrolments",
    params(("id" = i64, Path), ("X-CSRF-Token" = String, Header)),
    responses((status = 204, description = "Approved: the household is enrolled in the engine"),
        (status = 400, description = "The signed request does not verify", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "No pending request with that id", body = crate::error::ErrorBody),
        (status = 409, description = "The engine refuses it (household or meter already enrolled)", body = crate::error::ErrorBody)))]
pub(crate) async fn approve_enrolment(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(raw): Path<String>,
) -> Result<StatusCode, AppError> {
    decide(&state, &viewer, &raw, true).await
}

/// `POST /api/enrolments/{id}/reject` (operator).
#[utoipa::path(post, path = "/api/enrolments/{id}/reject", tag = "enrolments",
    params(("id" = i64, Path), ("X-CSRF-Token" = String, Header)),
    responses((status = 204, description = "Rejected"), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "No pending request with that id", body = crate::error::ErrorBody)))]
pub(crate) async fn reject_enrolment(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(raw): Path<String>,
) -> Result<StatusCode, AppError> {
    decide(&state, &viewer, &raw, false).await
}

/// `GET /api/settings`.
#[utoipa::path(get, path = "/api/settings", tag = "settings",
    responses((status = 200, body = Settings)))]
pub(crate) async fn get_settings(State(state): State<AppState>) -> Json<Settings> {
    Json(state.settings())
}

/// `POST /api/settings` (operator): replaces the settings.
#[utoipa::path(post, path = "/api/settings", tag = "settings", request_body = Settings,
    params(("X-CSRF-Token" = String, Header)),
    responses((status = 200, body = Settings), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    body: Result<Json<Settings>, JsonRejection>,
) -> Result<Json<Settings>, AppError> {
    let Json(s) = body.map_err(|_| {
        AppError::BadRequest(
            "expected {\"public_aggregates\": bool, \"explorer_tx_url\": string|null}".into(),
        )
    })?;
    if let Some(url) = &s.explorer_tx_url {
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || !url.contains("{tx}") || url.len() > 512 {
            return Err(AppError::BadRequest(
                "`explorer_tx_url` must be an http(s) URL containing {tx}".into(),
            ));
        }
    }
    state.set_settings(s.clone()).await?;
    Ok(Json(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: u64, amount: i64, delivered: u64, received: u64, imp: u64, exp: u64) -> BillRow {
        BillRow {
            interval_start: start,
            amount,
            delivered_wh: delivered,
            received_wh: received,
            import_wh: imp,
            export_wh: exp,
            has_data: true,
            feed_in_tariff: 80_000,
            retail_tariff: 300_000,
        }
    }

    #[test]
    fn a_buyer_saves_the_gap_between_retail_and_its_price() {
        // Bought 1 kWh from a neighbour for 0.20 (−200_000) and imported
        // 1.5 kWh in all: 0.5 kWh more at retail (−150_000).
        let l = bill_line(&row(0, -200_000, 0, 1000, 1500, 0));
        assert_eq!(l.utility_micros, -150_000);
        assert_eq!(l.total_micros, -350_000);
        assert_eq!(l.utility_only_micros, -450_000);
        assert_eq!(l.savings_micros, 100_000);
    }

    #[test]
    fn a_seller_earns_above_feed_in() {
        let l = bill_line(&row(0, 150_000, 1000, 0, 0, 2000));
        assert_eq!(l.utility_micros, 80_000);
        assert_eq!(l.total_micros, 230_000);
        assert_eq!(l.utility_only_micros, 160_000);
        assert_eq!(l.savings_micros, 70_000);
    }

    #[test]
    fn groups_by_utc_day_and_month() {
        // 2026-07-04T23:45Z and 2026-07-05T00:00Z, and one in June.
        let rows = [
            row(1_783_208_700_000, -1, 0, 0, 0, 0),
            row(1_783_209_600_000, -2, 0, 0, 0, 0),
            row(1_780_000_000_000, -4, 0, 0, 0, 0),
        ];
        let b = bills("h01", "EUR", &rows);
        let days: Vec<&str> = b.days.iter().map(|d| d.period.as_str()).collect();
        assert_eq!(days, ["2026-07-05", "2026-07-04", "2026-05-28"]);
        let months: Vec<(&str, i64)> = b
            .months
            .iter()
            .map(|m| (m.period.as_str(), m.market_micros))
            .collect();
        assert_eq!(months, [("2026-07", -3), ("2026-05", -4)]);
        assert_eq!(b.total.market_micros, -7);
        assert_eq!(b.total.intervals, 3);
    }
}
