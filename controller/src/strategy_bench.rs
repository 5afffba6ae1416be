//! `voltshare bench strategy`: the trading strategy over a simulated week.
//!
//! Twenty households (by default) from the real-data model
//! ([`meter_agent::SimHousehold`]: PV from the test reference year's
//! irradiance, consumption from the BDEW H0 profile), about 60 % with PV and
//! a quarter of those with a home battery, trade every 15-minute interval of
//! a week. Each household's strategy sees only what its controller would:
//! its own meter history (one observation a minute) and the past clearing
//! prices. Orders are placed halfway through the preceding interval, as the
//! controller does; the book is cleared by [`clearing::auction::clear`]; the
//! interval is then simulated minute by minute (the battery following its
//! mode) and settled against the measured flows by
//! [`clearing::settlement::reconcile`], the engine's own rule.
//!
//! Each household's bill is compared with the same household trading only
//! with the utility (retail for imports, feed-in for exports), where a
//! battery simply serves self-consumption. One simulated day before the week
//! warms up the forecasts and is not billed. Money is integer micro-units
//! throughout; power and energy from the model are rounded to whole watts
//! and integrated in watt-minutes.

use crate::strategy::{
    BatteryMode, BatteryParams, Location, MarketView, Observation, StrategyParams, plan_interval,
};
use clearing::auction::{BookOrder, clear};
use clearing::settlement::{Delivery, reconcile};
use meter_agent::SimHousehold;
use protocol::{
    AuctionParams, HouseholdId, IntervalId, MicroPerKwh, Micros, UnixMs, WattHours, Watts,
};
use serde::Serialize;
use std::collections::BTreeMap;

const MINUTE: u64 = 60_000;
const LEN: u64 = 900_000;
const DAY: u64 = 86_400_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct StrategyBenchOptions {
    pub households: u32,
    pub days: u32,
    /// Start of the billed week, Unix ms (midnight UTC).
    pub start_ms: u64,
    pub seed: u64,
}

/// One household's result.
#[derive(Debug, Clone, Serialize)]
pub struct HouseholdResult {
    pub household: String,
    pub pv_kwp: f64,
    pub battery_kwh: u64,
    pub import_kwh: u64,
    pub export_kwh: u64,
    /// What it would pay trading only with the utility, µ (`−`: earns).
    pub bill_utility_only_micros: i64,
    /// What it pays with Voltshare, µ.
    pub bill_voltshare_micros: i64,
    pub saving_micros: i64,
    /// Saving relative to the utility-only bill's magnitude, ‰.
    pub saving_permille: i64,
    pub bought_from_neighbours_wh: u64,
    pub sold_to_neighbours_wh: u64,
}

/// The benchmark's report (printed as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct StrategyBenchReport {
    pub households: Vec<HouseholdResult>,
    pub days: u32,
    pub intervals: u64,
    pub start: String,
    pub traded_wh: u64,
    pub median_saving_micros: i64,
    pub median_saving_permille: i64,
    pub households_saving: usize,
    pub households_worse_off: usize,
    pub every_household_saves: bool,
    pub currency_unit: &'static str,
}

/// A simulated home: model, strategy, battery state and counters (W·min).
struct Home {
    id: HouseholdId,
    sim: SimHousehold,
    params: StrategyParams,
    battery: Option<BatteryParams>,
    soc_wmin: i64,
    cum_import: i64,
    cum_export: i64,
    cum_pv: i64,
    cum_battery: i64,
    history: Vec<Observation>,
    // Utility-only twin: its own battery state (self-consumption).
    base_soc_wmin: i64,
    base_bill: i64,
    bill: i64,
    import_wmin: i64,
    export_wmin: i64,
    bought: u64,
    sold: u64,
}

/// The battery's flow for one minute: `+` charge, `−` discharge, W.
fn battery_flow(b: &BatteryParams, soc_wmin: i64, net_w: i64, mode: BatteryMode) -> i64 {
    let max = i64::try_from(b.max_power_w).unwrap_or(i64::MAX);
    let cap = i64::try_from(b.capacity_wh).unwrap_or(i64::MAX) * 60;
    let reserve = i64::try_from(b.reserve_wh).unwrap_or(i64::MAX) * 60;
    let room = (cap - soc_wmin).max(0); // W·min = W for one minute
    let above = (soc_wmin - reserve).max(0);
    let want = match mode {
        BatteryMode::SelfConsume => -net_w,
        BatteryMode::Charge { w } => i64::try_from(w).unwrap_or(max) + (-net_w).max(0),
        BatteryMode::Discharge { w } => -(i64::try_from(w).unwrap_or(max).max(net_w)),
    };
    if want > 0 {
        want.min(max).min(room)
    } else {
        want.max(-max).max(-above)
    }
}

fn households(opts: &StrategyBenchOptions, params: &AuctionParams) -> Vec<Home> {
    let spread = params.retail_tariff.0 - params.feed_in_tariff.0;
    (1..=opts.households)
        .map(|i| {
            let mut sim = SimHousehold::from_seed(
                opts.seed.wrapping_mul(1_000_003).wrapping_add(u64::from(i)),
            );
            // As in the demo: two in five have no PV and consume more.
            if i % 5 == 1 || i % 5 == 3 {
                sim.pv_kwp = 0.0;
                sim.annual_kwh += 3000.0;
            }
            let battery = (sim.pv_kwp > 0.0 && i % 4 == 0).then_some(BatteryParams {
                capacity_wh: 10_000,
                reserve_wh: 2_000,
                max_power_w: 4_000,
            });
            // Own limits spread across the lower/upper parts of the band.
            let frac = u64::from(i % 7) + 1;
            let strategy = StrategyParams {
                min_sell_price: MicroPerKwh(params.feed_in_tariff.0 + spread * frac / 24),
                max_buy_price: MicroPerKwh(params.retail_tariff.0 - spread * frac / 24),
                feed_in_tariff: params.feed_in_tariff,
                retail_tariff: params.retail_tariff,
                interval_ms: LEN,
                min_order_wh: 10,
                window_ms: LEN / 3,
                location: Some(Location {
                    lat_millideg: 51_450,
                    lon_millideg: 7_010,
                }),
                battery,
                curtail: false,
            };
            let soc = battery.map_or(0, |b| i64::try_from(b.capacity_wh / 2).unwrap_or(0) * 60);
            Home {
                id: HouseholdId::new(format!("h{i:02}"))
                    .unwrap_or_else(|_| HouseholdId::new("h").expect("static id")),
                sim,
                params: strategy,
                battery,
                soc_wmin: soc,
                cum_import: 0,
                cum_export: 0,
                cum_pv: 0,
                cum_battery: 0,
                history: Vec::new(),
                base_soc_wmin: soc,
                base_bill: 0,
                bill: 0,
                import_wmin: 0,
                export_wmin: 0,
                bought: 0,
                sold: 0,
            }
        })
        .collect()
}

impl Home {
    fn observe(&mut self, t: u64, grid_w: i64) {
        self.history.push(Observation {
            ts: UnixMs(t),
            import_wh: WattHours(u64::try_from(self.cum_import / 60).unwrap_or(0)),
            export_wh: WattHours(u64::try_from(self.cum_export / 60).unwrap_or(0)),
            pv_wh: (self.sim.pv_kwp > 0.0)
                .then(|| WattHours(u64::try_from(self.cum_pv / 60).unwrap_or(0))),
            grid_power_w: Watts(grid_w),
            battery_net_wh: self.cum_battery / 60,
        });
        // The strategy looks at most a week back (plus the recent window).
        if self.history.len() > 9 * 1440 {
            self.history.drain(..1440);
        }
    }
}

/// Runs the benchmark.
pub fn run(opts: &StrategyBenchOptions) -> StrategyBenchReport {
    let params = AuctionParams::default();
    let mut homes = households(opts, &params);
    let warmup_start = opts.start_ms.saturating_sub(DAY);
    let end = opts.start_ms + u64::from(opts.days) * DAY;
    let mut prices: Vec<Option<MicroPerKwh>> = Vec::new();
    let mut intervals = 0u64;
    let mut traded_wh = 0u64;
    let mut plans: Vec<Option<BatteryMode>> = vec![None; homes.len()];

    let mut t = warmup_start;
    while t < end {
        let interval = IntervalId(t);
        let billed = t >= opts.start_ms;
        // First half of the interval before: the controller places orders at
        // its halfway point, so the strategy sees history up to t − LEN/2.
        // (Simulated below as part of the previous interval.)
        let mut book = Vec::new();
        for (i, h) in homes.iter().enumerate() {
            let cut = t.saturating_sub(LEN / 2);
            let upto = h.history.partition_point(|o| o.ts.0 <= cut);
            let market = MarketView {
                recent_prices: &prices[prices.len().saturating_sub(16)..],
                export_price_now: None,
                battery_soc_wh: h
                    .battery
                    .map(|_| u64::try_from(h.soc_wmin / 60).unwrap_or(0)),
            };
            let plan = plan_interval(&h.history[..upto], &market, interval, &h.params);
            plans[i] = plan.battery;
            for (k, o) in plan.orders.iter().enumerate() {
                book.push(BookOrder {
                    id: format!("{}-{}-{k}", h.id, t).into(),
                    household: h.id.clone(),
                    side: o.side,
                    quantity_wh: o.quantity_wh,
                    limit_price: o.limit_price,
                });
            }
        }
        let outcome = clear(&book, &params);
        prices.push(outcome.clearing_price);

        // The interval itself, minute by minute.
        let mut deliveries = BTreeMap::new();
        for (i, h) in homes.iter_mut().enumerate() {
            let (mut imp, mut exp, mut base_imp, mut base_exp) = (0i64, 0i64, 0i64, 0i64);
            let mut m = t;
            while m < t + LEN {
                let mid = UnixMs(m + MINUTE / 2);
                let pv = h.sim.pv_power_w(mid);
                let load = h.sim.load_power_w(mid);
                let net = load - pv;
                let flow = match (&h.battery, plans[i]) {
                    (Some(b), Some(mode)) => battery_flow(b, h.soc_wmin, net, mode),
                    (Some(b), None) => battery_flow(b, h.soc_wmin, net, BatteryMode::SelfConsume),
                    _ => 0,
                };
                h.soc_wmin += flow;
                let grid = net + flow;
                if grid > 0 {
                    imp += grid
                } else {
                    exp -= grid
                }
                h.cum_import += grid.max(0);
                h.cum_export += (-grid).max(0);
                h.cum_pv += pv;
                h.cum_battery += flow;
                // The utility-only twin.
                let base_flow = match &h.battery {
                    Some(b) => battery_flow(b, h.base_soc_wmin, net, BatteryMode::SelfConsume),
                    None => 0,
                };
                h.base_soc_wmin += base_flow;
                let bg = net + base_flow;
                if bg > 0 {
                    base_imp += bg
                } else {
                    base_exp -= bg
                }
                m += MINUTE;
                h.observe(m, grid);
            }
            let wh = |wmin: i64| WattHours(u64::try_from(wmin / 60).unwrap_or(0));
            deliveries.insert(
                h.id.clone(),
                Delivery {
                    export_wh: wh(exp),
                    import_wh: wh(imp),
                    has_data: true,
                },
            );
            if billed {
                h.import_wmin += imp;
                h.export_wmin += exp;
                h.base_bill += params.retail_tariff.cost_of(wh(base_imp)).0
                    - params.feed_in_tariff.cost_of(wh(base_exp)).0;
            }
        }
        let rec = reconcile(&outcome.trades, &deliveries, &params);
        if billed {
            intervals += 1;
            traded_wh += rec.lines.iter().map(|l| l.settled_wh.0).sum::<u64>();
            let mut alloc_buy: BTreeMap<&HouseholdId, u64> = BTreeMap::new();
            let mut alloc_sell: BTreeMap<&HouseholdId, u64> = BTreeMap::new();
            for l in &rec.lines {
                *alloc_buy.entry(&l.buyer).or_default() += l.buyer_alloc_wh.0;
                *alloc_sell.entry(&l.seller).or_default() += l.seller_alloc_wh.0;
            }
            let transfers: BTreeMap<&HouseholdId, &protocol::Transfer> =
                rec.transfers.iter().map(|tr| (&tr.household, tr)).collect();
            for h in homes.iter_mut() {
                let d = deliveries.get(&h.id).copied().unwrap_or_default();
                let outside_imp = d
                    .import_wh
                    .0
                    .saturating_sub(alloc_buy.get(&h.id).copied().unwrap_or(0));
                let outside_exp = d
                    .export_wh
                    .0
                    .saturating_sub(alloc_sell.get(&h.id).copied().unwrap_or(0));
                let amount = transfers.get(&h.id).map_or(Micros(0), |tr| tr.amount);
                h.bill += -amount.0 + params.retail_tariff.cost_of(WattHours(outside_imp)).0
                    - params.feed_in_tariff.cost_of(WattHours(outside_exp)).0;
                if let Some(tr) = transfers.get(&h.id) {
                    h.bought += tr.received_wh.0;
                    h.sold += tr.delivered_wh.0;
                }
            }
        }
        t += LEN;
    }
    let results: Vec<HouseholdResult> = homes
        .iter()
        .map(|h| {
            let saving = h.base_bill - h.bill;
            HouseholdResult {
                household: h.id.to_string(),
                pv_kwp: h.sim.pv_kwp,
                battery_kwh: h.battery.map_or(0, |b| b.capacity_wh / 1000),
                import_kwh: u64::try_from(h.import_wmin / 60_000).unwrap_or(0),
                export_kwh: u64::try_from(h.export_wmin / 60_000).unwrap_or(0),
                bill_utility_only_micros: h.base_bill,
                bill_voltshare_micros: h.bill,
                saving_micros: saving,
                saving_permille: if h.base_bill == 0 {
                    0
                } else {
                    saving.saturating_mul(1000) / h.base_bill.abs()
                },
                bought_from_neighbours_wh: h.bought,
                sold_to_neighbours_wh: h.sold,
            }
        })
        .collect();
    let median = |mut v: Vec<i64>| {
        v.sort_unstable();
        match v.len() {
            0 => 0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2,
        }
    };
    let saving: Vec<i64> = results.iter().map(|r| r.saving_micros).collect();
    let permille: Vec<i64> = results.iter().map(|r| r.saving_permille).collect();
    let households_saving = results.iter().filter(|r| r.saving_micros > 0).count();
    let households_worse_off = results.iter().filter(|r| r.saving_micros < 0).count();
    let start = chrono::DateTime::from_timestamp_millis(i64::try_from(opts.start_ms).unwrap_or(0))
        .map(|d| d.format("%Y-%m-%dT%H:%MZ").to_string())
        .unwrap_or_default();
    StrategyBenchReport {
        every_household_saves: households_saving == results.len(),
        households: results,
        days: opts.days,
        intervals,
        start,
        traded_wh,
        median_saving_micros: median(saving),
        median_saving_permille: median(permille),
        households_saving,
        households_worse_off,
        currency_unit: "micro-units (1e-6) of the settlement currency",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn battery_flow_respects_limits() {
        let b = BatteryParams {
            capacity_wh: 1_000,
            reserve_wh: 200,
            max_power_w: 500,
        };
        // Self-consumption: charge from surplus, up to max power and room.
        assert_eq!(battery_flow(&b, 0, -800, BatteryMode::SelfConsume), 500);
        assert_eq!(
            battery_flow(&b, 60_000 - 100, -800, BatteryMode::SelfConsume),
            100
        );
        // Discharge into the deficit, never below the reserve.
        assert_eq!(
            battery_flow(&b, 200 * 60 + 50, 300, BatteryMode::SelfConsume),
            -50
        );
        assert_eq!(battery_flow(&b, 200 * 60, 300, BatteryMode::SelfConsume), 0);
        assert_eq!(
            battery_flow(&b, 30_000, 0, BatteryMode::Charge { w: 400 }),
            400
        );
        assert_eq!(
            battery_flow(&b, 30_000, 100, BatteryMode::Discharge { w: 400 }),
            -400
        );
    }

    /// One simulated summer day for six households: the benchmark runs end to
    /// end, money balances to integer micro-units, and neighbours trade.
    #[test]
    fn one_day_runs_and_trades() {
        let opts = StrategyBenchOptions {
            households: 6,
            days: 1,
            start_ms: 1_783_296_000_000,
            seed: 42,
        };
        let r = run(&opts);
        assert_eq!(r.intervals, 96);
        assert_eq!(r.households.len(), 6);
        assert!(r.traded_wh > 0, "{r:?}");
        assert_eq!(r.households_worse_off, 0, "{r:#?}");
    }
}
