//! Auction parameters the operator changes while the engine runs.
//!
//! The configuration gives the starting set (mechanism, price rule, tariff
//! bounds, grid fee, feeder capacity and gate lead time). Each change the
//! operator makes is validated ([`ParamsUpdate::validate`], errors name the
//! field), stored in the engine's database with who made it, when, and the
//! old and new values (`param_changes`, an append-only audit table), and
//! applies from an interval on: the first one whose gate is still open at
//! the time of the change under both the old and the new gate lead, and
//! that is not cleared yet. An interval is always cleared and settled with
//! the set in force for it ([`ParamSchedule::for_interval`]), so a change
//! never reaches back into a closed interval; the set used is also inside
//! the interval's signed result.
//!
//! Gate lead changes: the scheduler closes each interval with its own lead.
//! The intake refuses orders with the largest lead among the sets of the
//! intervals not yet cleared ([`ParamSchedule::intake_lead`]), so during a
//! change-over it may close a gate early (an order is refused, and the
//! household is told) but never accepts an order into an interval that is
//! already cleared.

use crate::error::{StoreError, to_i64, to_u64};
use protocol::{AuctionParams, IntervalId, Mechanism, MicroPerKwh, PriceRule, WattHours};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use std::sync::{Arc, RwLock};

/// Highest tariff or fee accepted: 10 currency units per kWh. Far above any
/// real tariff; it keeps `cost_of` products far from overflow.
pub const MAX_PRICE: u64 = 10_000_000;
/// Largest feeder capacity accepted per interval, Wh (1 GWh).
pub const MAX_CAPACITY_WH: u64 = 1_000_000_000;
/// Longest gate lead an operator may set at run time, in intervals. A
/// longer lead would close many open intervals at once (they clear empty),
/// and a later change back could only start after all of them.
pub const MAX_LEAD_INTERVALS: u64 = 4;

/// One complete set of operator-changeable parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSet {
    pub params: AuctionParams,
    /// Gate closure of interval `I` is at `I.start − gate_lead_ms`.
    pub gate_lead_ms: u64,
}

/// A change as the operator asks for it: every field, as text and integers,
/// so that a wrong value gets an error naming its field instead of a
/// generic parse failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsUpdate {
    /// `uniform`, `pay_as_bid` or `mcafee`.
    pub mechanism: String,
    /// `midpoint`, `bid` or `ask`.
    pub price_rule: String,
    /// Price floor, micro-units per kWh.
    pub feed_in_tariff: u64,
    /// Price ceiling, micro-units per kWh.
    pub retail_tariff: u64,
    /// Paid by buyers on top, micro-units per kWh.
    pub grid_fee: u64,
    /// Most energy that may trade in an interval, Wh; `None` for no limit.
    pub capacity_wh: Option<u64>,
    /// Milliseconds of the engine's clock before an interval starts.
    pub gate_lead_ms: u64,
}

/// A refused change, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{field}`: {why}")]
pub struct ParamsError {
    pub field: &'static str,
    pub why: String,
}

fn bad(field: &'static str, why: impl Into<String>) -> ParamsError {
    ParamsError {
        field,
        why: why.into(),
    }
}

impl ParamsUpdate {
    /// The update of an existing set (what the form starts from).
    pub fn of(set: &ParamSet) -> ParamsUpdate {
        let p = &set.params;
        ParamsUpdate {
            mechanism: mechanism_name(p.mechanism).to_owned(),
            price_rule: price_rule_name(p.price_rule).to_owned(),
            feed_in_tariff: p.feed_in_tariff.0,
            retail_tariff: p.retail_tariff.0,
            grid_fee: p.grid_fee.0,
            capacity_wh: p.capacity_wh.map(|c| c.0),
            gate_lead_ms: set.gate_lead_ms,
        }
    }

    /// Checks every field; the first problem found, by field.
    pub fn validate(&self, interval_ms: u64) -> Result<ParamSet, ParamsError> {
        let mechanism = match self.mechanism.as_str() {
            "uniform" => Mechanism::Uniform,
            "pay_as_bid" => Mechanism::PayAsBid,
            "mcafee" => Mechanism::Mcafee,
            other => {
                return Err(bad(
                    "mechanism",
                    format!("`{other}` is not one of uniform, pay_as_bid, mcafee"),
                ));
            }
        };
        let price_rule = match self.price_rule.as_str() {
            "midpoint" => PriceRule::Midpoint,
            "bid" => PriceRule::Bid,
            "ask" => PriceRule::Ask,
            other => {
                return Err(bad(
                    "price_rule",
                    format!("`{other}` is not one of midpoint, bid, ask"),
                ));
            }
        };
        for (field, v) in [
            ("feed_in_tariff", self.feed_in_tariff),
            ("retail_tariff", self.retail_tariff),
            ("grid_fee", self.grid_fee),
        ] {
            if v > MAX_PRICE {
                return Err(bad(
                    field,
                    format!("{v} exceeds the maximum of {MAX_PRICE} micro-units per kWh"),
                ));
            }
        }
        if self.feed_in_tariff > self.retail_tariff {
            return Err(bad(
                "feed_in_tariff",
                format!(
                    "{} must not exceed retail_tariff ({})",
                    self.feed_in_tariff, self.retail_tariff
                ),
            ));
        }
        if let Some(c) = self.capacity_wh
            && (c == 0 || c > MAX_CAPACITY_WH)
        {
            return Err(bad(
                "capacity_wh",
                format!("must be between 1 and {MAX_CAPACITY_WH} Wh, or null for no limit"),
            ));
        }
        let max_lead = interval_ms.saturating_mul(MAX_LEAD_INTERVALS);
        if self.gate_lead_ms > max_lead {
            return Err(bad(
                "gate_lead_ms",
                format!("must be at most {MAX_LEAD_INTERVALS} intervals ({max_lead} ms)"),
            ));
        }
        Ok(ParamSet {
            params: AuctionParams {
                mechanism,
                price_rule,
                feed_in_tariff: MicroPerKwh(self.feed_in_tariff),
                retail_tariff: MicroPerKwh(self.retail_tariff),
                grid_fee: MicroPerKwh(self.grid_fee),
                capacity_wh: self.capacity_wh.map(WattHours),
            },
            gate_lead_ms: self.gate_lead_ms,
        })
    }
}

/// The wire name of a mechanism.
pub fn mechanism_name(m: Mechanism) -> &'static str {
    match m {
        Mechanism::Uniform => "uniform",
        Mechanism::PayAsBid => "pay_as_bid",
        Mechanism::Mcafee => "mcafee",
    }
}

/// The wire name of a price rule.
pub fn price_rule_name(r: PriceRule) -> &'static str {
    match r {
        PriceRule::Midpoint => "midpoint",
        PriceRule::Bid => "bid",
        PriceRule::Ask => "ask",
    }
}

/// One stored change: the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamChange {
    pub id: i64,
    /// First interval (Unix ms of its start) cleared with `new`.
    pub effective_from: u64,
    pub old: ParamSet,
    pub new: ParamSet,
    /// Who asked (the dashboard account).
    pub changed_by: String,
    /// Unix ms of the engine's clock.
    pub changed_at: u64,
}

/// The configured set and every change, in force interval by interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSchedule {
    base: ParamSet,
    /// Sorted by `effective_from`, then `id` (a later change to the same
    /// interval wins).
    changes: Vec<ParamChange>,
}

impl ParamSchedule {
    /// Only the configured set.
    pub fn new(base: ParamSet) -> ParamSchedule {
        ParamSchedule {
            base,
            changes: Vec::new(),
        }
    }

    /// The configured set.
    pub fn base(&self) -> &ParamSet {
        &self.base
    }

    /// Every change, oldest first.
    pub fn changes(&self) -> &[ParamChange] {
        &self.changes
    }

    /// The set in force for an interval.
    pub fn for_interval(&self, interval: IntervalId) -> &ParamSet {
        self.changes
            .iter()
            .rev()
            .find(|c| c.effective_from <= interval.0)
            .map_or(&self.base, |c| &c.new)
    }

    /// The newest set (in force from the last change on).
    pub fn latest(&self) -> &ParamSet {
        self.changes.last().map_or(&self.base, |c| &c.new)
    }

    /// The gate lead the intake applies to every order: the largest among
    /// the sets of intervals from `first_uncleared` on (see the module docs).
    pub fn intake_lead(&self, first_uncleared: IntervalId) -> u64 {
        let mut lead = self.for_interval(first_uncleared).gate_lead_ms;
        for c in &self.changes {
            if c.effective_from > first_uncleared.0 {
                lead = lead.max(c.new.gate_lead_ms);
            }
        }
        lead
    }

    fn push(&mut self, change: ParamChange) {
        self.changes.push(change);
        self.changes.sort_by_key(|c| (c.effective_from, c.id));
    }
}

/// The schedule shared by the engine's tasks and its read model; swapped
/// whole on a change, readers clone the `Arc`.
#[derive(Debug, Clone)]
pub struct ParamsCell(Arc<RwLock<Arc<ParamSchedule>>>);

impl ParamsCell {
    pub fn new(schedule: ParamSchedule) -> ParamsCell {
        ParamsCell(Arc::new(RwLock::new(Arc::new(schedule))))
    }

    /// The schedule now.
    pub fn get(&self) -> Arc<ParamSchedule> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, schedule: ParamSchedule) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(schedule);
    }
}

/// Creates the audit table if it is missing. Kept here rather than in a
/// numbered migration so that it cannot collide with migrations other
/// changes add at the same time; it only ever adds a table.
pub async fn ensure_table(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS param_changes (\
           id INTEGER PRIMARY KEY, \
           effective_from INTEGER NOT NULL, \
           old_json TEXT NOT NULL, \
           new_json TEXT NOT NULL, \
           changed_by TEXT NOT NULL, \
           changed_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The configured set with every stored change.
pub async fn load(pool: &SqlitePool, base: ParamSet) -> Result<ParamSchedule, StoreError> {
    ensure_table(pool).await?;
    let rows: Vec<(i64, i64, String, String, String, i64)> = sqlx::query_as(
        "SELECT id, effective_from, old_json, new_json, changed_by, changed_at \
         FROM param_changes ORDER BY effective_from, id",
    )
    .fetch_all(pool)
    .await?;
    let mut schedule = ParamSchedule::new(base);
    for (id, from, old, new, by, at) in rows {
        let parse = |json: &str| {
            serde_json::from_str::<ParamSet>(json)
                .map_err(|e| StoreError::Corrupt(format!("param change {id}: {e}")))
        };
        schedule.push(ParamChange {
            id,
            effective_from: to_u64(from, "effective_from")?,
            old: parse(&old)?,
            new: parse(&new)?,
            changed_by: by,
            changed_at: to_u64(at, "changed_at")?,
        });
    }
    Ok(schedule)
}

/// The first interval a change made at `now` may apply to: open under both
/// gate leads, and after the last cleared one.
pub fn effective_from(
    now: protocol::UnixMs,
    interval_ms: u64,
    old_lead: u64,
    new_lead: u64,
    last_cleared: Option<IntervalId>,
) -> IntervalId {
    let len = interval_ms.max(1);
    let first_open = |lead: u64| {
        crate::schedule::latest_due(now, len, lead)
            .0
            .saturating_add(len)
    };
    let mut from = first_open(old_lead).max(first_open(new_lead));
    if let Some(last) = last_cleared {
        from = from.max(last.0.saturating_add(len));
    }
    IntervalId(from)
}

/// Stores a change and puts it in force in `cell`. The caller holds the
/// engine's gate lock, so that no interval closes between choosing
/// `effective_from` and the swap.
pub async fn record(
    pool: &SqlitePool,
    cell: &ParamsCell,
    effective_from: IntervalId,
    new: ParamSet,
    changed_by: &str,
    now: protocol::UnixMs,
) -> Result<ParamChange, StoreError> {
    let current = cell.get();
    let old = current.for_interval(effective_from).clone();
    let json = |s: &ParamSet| {
        serde_json::to_string(s).map_err(|e| StoreError::Corrupt(format!("param set: {e}")))
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO param_changes (effective_from, old_json, new_json, changed_by, changed_at) \
         VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(to_i64(effective_from.0, "effective_from")?)
    .bind(json(&old)?)
    .bind(json(&new)?)
    .bind(changed_by)
    .bind(to_i64(now.0, "time")?)
    .fetch_one(pool)
    .await?;
    let change = ParamChange {
        id,
        effective_from: effective_from.0,
        old,
        new,
        changed_by: changed_by.to_owned(),
        changed_at: now.0,
    };
    let mut next = (*current).clone();
    next.push(change.clone());
    cell.set(next);
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::UnixMs;

    const Q: u64 = 900_000;

    fn update() -> ParamsUpdate {
        ParamsUpdate::of(&ParamSet {
            params: AuctionParams::default(),
            gate_lead_ms: 0,
        })
    }

    #[test]
    fn errors_name_the_field() {
        type Case = (fn(&mut ParamsUpdate), &'static str);
        let cases: Vec<Case> = vec![
            (|u| u.mechanism = "dutch".into(), "mechanism"),
            (|u| u.price_rule = "max".into(), "price_rule"),
            (|u| u.feed_in_tariff = u.retail_tariff + 1, "feed_in_tariff"),
            (|u| u.retail_tariff = MAX_PRICE + 1, "retail_tariff"),
            (|u| u.grid_fee = MAX_PRICE + 1, "grid_fee"),
            (|u| u.capacity_wh = Some(0), "capacity_wh"),
            (|u| u.gate_lead_ms = 4 * Q + 1, "gate_lead_ms"),
        ];
        for (change, field) in cases {
            let mut u = update();
            change(&mut u);
            let e = u.validate(Q).expect_err(field);
            assert_eq!(e.field, field);
            assert!(e.to_string().contains(field), "{e}");
        }
        let mut ok = update();
        ok.mechanism = "mcafee".into();
        ok.grid_fee = 20_000;
        ok.capacity_wh = Some(5_000);
        let set = ok.validate(Q).expect("valid");
        assert_eq!(set.params.mechanism, Mechanism::Mcafee);
        assert_eq!(ParamsUpdate::of(&set), ok);
    }

    fn change(id: i64, from: u64, fee: u64, lead: u64) -> ParamChange {
        let mut new = ParamSet {
            params: AuctionParams::default(),
            gate_lead_ms: lead,
        };
        new.params.grid_fee = MicroPerKwh(fee);
        ParamChange {
            id,
            effective_from: from,
            old: new.clone(),
            new,
            changed_by: "operator".into(),
            changed_at: 0,
        }
    }

    #[test]
    fn each_interval_gets_the_set_in_force_for_it() {
        let mut s = ParamSchedule::new(ParamSet {
            params: AuctionParams::default(),
            gate_lead_ms: 0,
        });
        s.push(change(2, 3 * Q, 30, 0));
        s.push(change(1, 2 * Q, 20, 60_000));
        assert_eq!(s.for_interval(IntervalId(Q)).params.grid_fee.0, 0);
        assert_eq!(s.for_interval(IntervalId(2 * Q)).params.grid_fee.0, 20);
        assert_eq!(s.for_interval(IntervalId(9 * Q)).params.grid_fee.0, 30);
        assert_eq!(s.latest().params.grid_fee.0, 30);
        // Before interval 2 is cleared, the intake uses the larger lead.
        assert_eq!(s.intake_lead(IntervalId(Q)), 60_000);
        assert_eq!(s.intake_lead(IntervalId(2 * Q)), 60_000);
        assert_eq!(s.intake_lead(IntervalId(3 * Q)), 0);
    }

    #[test]
    fn a_change_starts_at_an_interval_open_under_both_leads() {
        // 10 s before the gate of interval 4 (lead 0) closes.
        let now = UnixMs(4 * Q - 10_000);
        assert_eq!(effective_from(now, Q, 0, 0, None), IntervalId(4 * Q));
        // A 60 s lead would have closed interval 4 already.
        assert_eq!(effective_from(now, Q, 0, 60_000, None), IntervalId(5 * Q));
        assert_eq!(effective_from(now, Q, 60_000, 0, None), IntervalId(5 * Q));
        // Never before or at the last cleared interval.
        assert_eq!(
            effective_from(now, Q, 0, 0, Some(IntervalId(6 * Q))),
            IntervalId(7 * Q)
        );
    }
}
