//! The community summary: pure functions from read-model rows (and `now`)
//! to the small object behind `/api/summary` and the live stream.
//!
//! Sign convention (from `protocol::units`): at a grid meter `+` is import
//! from the grid, `−` export to it. Import and export here are both reported
//! as non-negative watts; `net_grid_w` keeps the sign.

use clearing::read::{IntervalRow, LiveRow, SettlementRow};
use protocol::{HouseholdId, UnixMs};
use serde::Serialize;
use std::collections::BTreeMap;

/// Totals over the latest live readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LiveTotals {
    /// Distinct households with at least one live meter.
    pub households: u64,
    /// Households with a reading inside the online window.
    pub households_online: u64,
    /// Meters with a live reading.
    pub meters: u64,
    /// Total PV generation, W.
    pub pv_w: i64,
    /// Sum of the importing households' grid power, W (≥ 0).
    pub import_w: i64,
    /// Sum of the exporting households' grid power, W (≥ 0).
    pub export_w: i64,
    /// `import_w − export_w`: `+` the feeder draws from the utility grid,
    /// `−` it feeds into it.
    pub net_grid_w: i64,
    /// Power flowing between neighbours on the feeder right now:
    /// `min(import_w, export_w)`.
    pub shared_w: i64,
    /// Newest reading, Unix ms.
    pub latest_reading: Option<u64>,
}

/// Figures from the stored intervals and settlements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BookSummary {
    /// Start of the newest cleared interval, Unix ms.
    pub last_interval_start: Option<u64>,
    /// Clearing price of that interval, micro-units per kWh (`None` when it
    /// cleared without trades).
    pub last_clearing_price: Option<u64>,
    /// Volume traded in that interval, Wh.
    pub last_volume_wh: Option<u64>,
    /// Cleared intervals counted (at most the count cap).
    pub intervals_cleared: u64,
    /// Settlement batches counted (at most the count cap).
    pub settlements: u64,
    /// Status of the newest settlement batch.
    pub last_settlement_status: Option<String>,
    /// True when a count reached the cap, i.e. the real number may be larger.
    pub counts_capped: bool,
}

/// The whole summary served by `/api/summary` and inside every live event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub grid: String,
    pub interval_ms: u64,
    pub currency: String,
    /// The dashboard's "now", Unix ms (simulated time in the demo).
    pub as_of: u64,
    /// How long a meter may be silent and still count as online, ms of the
    /// same clock as `as_of`.
    pub online_window_ms: u64,
    /// The next gate closure (orders for the interval starting then stop
    /// being accepted and it is cleared), Unix ms of the same clock.
    pub next_gate_closure: u64,
    /// How many ms of that clock pass per real ms (1 outside the demo), so
    /// that the page can count down in real seconds.
    pub clock_speed: u64,
    #[serde(flatten)]
    pub live: LiveTotals,
    #[serde(flatten)]
    pub book: BookSummary,
}

/// Aggregates live rows per household, then totals them. A household's
/// meters are netted before the import/export split, so one household never
/// counts as both importing and exporting.
pub fn live_totals(rows: &[LiveRow], now: UnixMs, online_window_ms: u64) -> LiveTotals {
    struct House {
        grid_w: i64,
        online: bool,
    }
    let mut houses: BTreeMap<&HouseholdId, House> = BTreeMap::new();
    let mut totals = LiveTotals::default();
    for row in rows {
        let online = row.ts.0.saturating_add(online_window_ms) >= now.0;
        let house = houses.entry(&row.household).or_insert(House {
            grid_w: 0,
            online: false,
        });
        house.grid_w = house.grid_w.saturating_add(row.grid_power_w.0);
        house.online |= online;
        totals.meters += 1;
        totals.pv_w = totals
            .pv_w
            .saturating_add(row.pv_power_w.map_or(0, |w| w.0));
        totals.latest_reading = totals.latest_reading.max(Some(row.ts.0));
    }
    for house in houses.values() {
        totals.households += 1;
        totals.households_online += u64::from(house.online);
        if house.grid_w >= 0 {
            totals.import_w = totals.import_w.saturating_add(house.grid_w);
        } else {
            totals.export_w = totals
                .export_w
                .saturating_add(house.grid_w.saturating_neg());
        }
    }
    totals.net_grid_w = totals.import_w.saturating_sub(totals.export_w);
    totals.shared_w = totals.import_w.min(totals.export_w);
    totals
}

/// The first gate closure at or after `now`: interval starts are multiples
/// of `interval_ms`, and each closes `lead_ms` before it starts.
pub fn next_gate_closure(now: u64, interval_ms: u64, lead_ms: u64) -> u64 {
    if interval_ms == 0 {
        return now;
    }
    let reference = now.saturating_add(lead_ms);
    let next_start = reference.div_ceil(interval_ms).saturating_mul(interval_ms);
    next_start.saturating_sub(lead_ms)
}

/// Summarises intervals and settlements fetched with `limit = cap`. Does not
/// rely on their order.
pub fn book_summary(
    intervals: &[IntervalRow],
    settlements: &[SettlementRow],
    cap: u32,
) -> BookSummary {
    let last = intervals.iter().max_by_key(|r| r.interval_start);
    let last_settlement = settlements.iter().max_by_key(|r| r.interval_start);
    let cap = u64::from(cap);
    let intervals_cleared = intervals.len() as u64;
    let settlement_count = settlements.len() as u64;
    BookSummary {
        last_interval_start: last.map(|r| r.interval_start),
        last_clearing_price: last.and_then(|r| r.clearing_price),
        last_volume_wh: last.map(|r| r.volume_wh),
        intervals_cleared,
        settlements: settlement_count,
        last_settlement_status: last_settlement.map(|r| r.status.clone()),
        counts_capped: intervals_cleared >= cap || settlement_count >= cap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{MeterId, Watts};

    fn row(h: &str, m: &str, ts: u64, grid: i64, pv: Option<i64>) -> LiveRow {
        LiveRow {
            household: HouseholdId::new(h).expect("id"),
            meter: MeterId::new(m).expect("id"),
            ts: UnixMs(ts),
            grid_power_w: Watts(grid),
            pv_power_w: pv.map(Watts),
        }
    }

    #[test]
    fn totals_split_import_and_export_per_household() {
        let rows = [
            row("h1", "h1-grid", 10_000, 1200, None),
            row("h2", "h2-grid", 10_000, -3000, Some(4000)),
            // h3's two meters net to a small import.
            row("h3", "h3-a", 9_000, -500, Some(700)),
            row("h3", "h3-b", 9_000, 800, None),
            // Silent for too long.
            row("h4", "h4-grid", 1_000, 0, Some(0)),
        ];
        let t = live_totals(&rows, UnixMs(10_000), 5_000);
        assert_eq!(
            t,
            LiveTotals {
                households: 4,
                households_online: 3,
                meters: 5,
                pv_w: 4700,
                import_w: 1500,
                export_w: 3000,
                net_grid_w: -1500,
                shared_w: 1500,
                latest_reading: Some(10_000),
            }
        );
    }

    #[test]
    fn gate_closure_is_the_next_boundary_minus_the_lead() {
        assert_eq!(next_gate_closure(1000, 900, 0), 1800);
        assert_eq!(next_gate_closure(1800, 900, 0), 1800);
        assert_eq!(next_gate_closure(1000, 900, 100), 1700);
        assert_eq!(next_gate_closure(5, 0, 0), 5);
    }

    #[test]
    fn empty_inputs_give_zeros_and_nones() {
        assert_eq!(live_totals(&[], UnixMs(0), 0), LiveTotals::default());
        assert_eq!(book_summary(&[], &[], 10), BookSummary::default());
    }

    #[test]
    fn book_takes_the_newest_interval_and_flags_the_cap() {
        let i = |start, price| IntervalRow {
            interval_start: start,
            clearing_price: price,
            volume_wh: start / 1000,
            trades: 1,
            orders: 2,
        };
        let rows = [i(2000, None), i(3000, Some(7)), i(1000, Some(5))];
        let b = book_summary(&rows, &[], 3);
        assert_eq!(b.last_interval_start, Some(3000));
        assert_eq!(b.last_clearing_price, Some(7));
        assert_eq!(b.last_volume_wh, Some(3));
        assert_eq!(b.intervals_cleared, 3);
        assert!(b.counts_capped);
        assert!(!book_summary(&rows, &[], 4).counts_capped);
    }
}
