//! The household trading strategy: a pure function of the household's own
//! history and its parameters, returning the orders to place for one coming
//! interval, what the battery should do and whether to curtail the inverter.
//!
//! # Forecast
//!
//! The forecast splits the household into production and consumption, because
//! they follow different clocks:
//!
//! - **PV** follows the sun. A clear-sky curve for the configured location
//!   (solar elevation from the day of the year, the time of day and the
//!   longitude; Haurwitz's clear-sky irradiance) says how much sun the target
//!   interval can have compared with the recent window; the recent window's
//!   measured PV energy says how much of that sun the household is really
//!   getting today (clouds, orientation, size of the array). Their product is
//!   the PV forecast. When the recent window is dark (night, dawn) the same
//!   slot of the previous days stands in.
//! - **Consumption** follows the household's routine: the same slot of up to
//!   seven previous days, blended half and half with the recent level (so a
//!   holiday or a guest shows up at once).
//!
//! Consumption is derived from the counters, `import − export + pv − battery
//! charged`, so the battery's own flows do not pollute the forecast. Without a
//! PV counter the grid's net flow is forecast as one quantity the same way.
//!
//! # Battery
//!
//! Where a battery is present it first serves the household itself (charge
//! from own surplus, discharge into own deficit) and never goes below its
//! reserve. Against the market's expected price — the mean of recent clearing
//! prices — it also trades: when the expected price is *cheap* (in the lowest
//! quarter of the tariff band) it bids to charge from neighbours' surplus;
//! when it is *high* (the top quarter) it offers stored energy above the
//! reserve, at no less than the high threshold.
//!
//! # Orders
//!
//! Orders are a step curve within the household's own limits: the confident
//! part of the forecast (70 %) at the household's limit (minimum sell price,
//! maximum buy price), the uncertain rest one third of the way towards the
//! other tariff, so that an over-forecast only trades when it is well paid.
//! A seller never asks below the feed-in tariff and a buyer never bids above
//! the retail tariff: the utility offers those anyway.
//!
//! # Curtailment
//!
//! With curtailment enabled and a negative current export price (a dynamic
//! feed-in tariff), exporting more than neighbours buy would cost money; the
//! plan then limits the inverter's export to what the sell orders cover
//! ([`curtailment_limit_w`] narrows that to the sold volume once the result
//! is known).
//!
//! Architecture invariant: no IO, no clock; `target` and the history carry all
//! the time there is. Floating point appears only in the clear-sky curve (a
//! shape, not money); every quantity and price leaves as an integer.

use protocol::{IntervalId, MicroPerKwh, Side, UnixMs, WattHours, Watts};

const MS_PER_HOUR: i128 = 3_600_000;
const MS_PER_DAY: u64 = 86_400_000;
/// How many previous days of the same slot the consumption profile uses.
const PROFILE_DAYS: u64 = 7;
/// Below this mean clear-sky irradiance (W/m²) a window is too dark for its
/// PV to say anything about the weather.
const DARK_WM2: i64 = 40;

/// One observation of the household's metering point (cumulative counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub ts: UnixMs,
    pub import_wh: WattHours,
    pub export_wh: WattHours,
    /// PV production counter, when the household has an inverter.
    pub pv_wh: Option<WattHours>,
    /// `+` import, `−` export.
    pub grid_power_w: Watts,
    /// Battery energy charged minus discharged, cumulative (0 without one).
    pub battery_net_wh: i64,
}

/// Where the household is, in thousandths of a degree (north and east
/// positive): integers so that the config and the tests stay exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub lat_millideg: i32,
    pub lon_millideg: i32,
}

/// A home battery's fixed parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatteryParams {
    pub capacity_wh: u64,
    /// Never discharge below this (backup for outages, battery health).
    pub reserve_wh: u64,
    /// Most charge or discharge power.
    pub max_power_w: u64,
}

/// The household's trading limits and the market's tariffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyParams {
    /// Never sell below this price.
    pub min_sell_price: MicroPerKwh,
    /// Never buy above this price (all-in, grid fee included).
    pub max_buy_price: MicroPerKwh,
    pub feed_in_tariff: MicroPerKwh,
    pub retail_tariff: MicroPerKwh,
    /// Interval length in milliseconds.
    pub interval_ms: u64,
    /// Orders smaller than this are not worth placing.
    pub min_order_wh: u64,
    /// How far back the "recent" part of the forecast looks, in milliseconds.
    pub window_ms: u64,
    /// Enables the clear-sky PV forecast; without it PV persists.
    pub location: Option<Location>,
    pub battery: Option<BatteryParams>,
    /// Whether the inverter may be curtailed when exporting costs money.
    pub curtail: bool,
}

/// What the market looks like from the household, besides its own meter.
#[derive(Debug, Clone, Copy, Default)]
pub struct MarketView<'a> {
    /// Recent clearing prices, oldest first (`None`: nothing traded).
    pub recent_prices: &'a [Option<MicroPerKwh>],
    /// The current price for exporting to the utility, signed µ/kWh: a
    /// dynamic feed-in tariff can be negative. `None`: the fixed feed-in
    /// tariff applies.
    pub export_price_now: Option<i64>,
    /// The battery's state of charge now, when there is a battery.
    pub battery_soc_wh: Option<u64>,
}

/// An order the strategy wants placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedOrder {
    pub interval: IntervalId,
    pub side: Side,
    pub quantity_wh: WattHours,
    pub limit_price: MicroPerKwh,
}

/// What the battery should do during the target interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatteryMode {
    /// Follow the household: charge from its surplus, cover its deficit
    /// (never below the reserve).
    SelfConsume,
    /// Charge at this power on top of own surplus (energy bought cheaply).
    Charge { w: u64 },
    /// Discharge at this power whatever the household does (energy sold).
    Discharge { w: u64 },
}

/// The forecast of one interval, in Wh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forecast {
    pub pv_wh: i64,
    pub load_wh: i64,
    /// `pv − load`: positive exports, negative imports.
    pub net_export_wh: i64,
}

/// Everything the strategy decided for one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub forecast: Forecast,
    pub orders: Vec<PlannedOrder>,
    pub battery: Option<BatteryMode>,
    /// Export limit for the inverter, when curtailing.
    pub curtail_export_w: Option<Watts>,
}

/// Clear-sky global horizontal irradiance in W/m² at `t` (Haurwitz's model
/// on the solar elevation; the equation of time is ignored, which shifts
/// solar noon by at most about 16 minutes).
pub fn clear_sky_wm2(loc: Location, t: UnixMs) -> i64 {
    use std::f64::consts::PI;
    let day = (t.0 / MS_PER_DAY) as f64;
    let hours_utc = (t.0 % MS_PER_DAY) as f64 / 3_600_000.0;
    // Day of the year from the epoch: good to a day over centuries, which is
    // all a declination needs.
    let doy = (day + 0.5).rem_euclid(365.2422);
    let decl = 23.44_f64.to_radians() * (2.0 * PI * (doy + 284.0) / 365.2422).sin();
    let lat = f64::from(loc.lat_millideg) / 1000.0 * PI / 180.0;
    let solar_time = hours_utc + f64::from(loc.lon_millideg) / 1000.0 / 15.0;
    let hour_angle = (solar_time - 12.0) * 15.0 * PI / 180.0;
    let sin_el = lat.sin() * decl.sin() + lat.cos() * decl.cos() * hour_angle.cos();
    if sin_el <= 0.01 {
        return 0;
    }
    (1098.0 * sin_el * (-0.057 / sin_el).exp()).round() as i64
}

/// Mean clear-sky irradiance over `[start, start + len)`, from 8 samples.
fn clear_sky_mean(loc: Location, start: u64, len: u64) -> i64 {
    const N: u64 = 8;
    let sum: i64 = (0..N)
        .map(|i| clear_sky_wm2(loc, UnixMs(start + len * (2 * i + 1) / (2 * N))))
        .sum();
    sum / N as i64
}

/// Counters interpolated linearly at `t`, if `t` lies within the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    import: i128,
    export: i128,
    pv: Option<i128>,
    battery: i128,
}

fn counters_at(history: &[Observation], t: u64) -> Option<Counters> {
    let first = history.first()?;
    let last = history.last()?;
    if t < first.ts.0 || t > last.ts.0 {
        return None;
    }
    // The first observation at or after t.
    let i = history.partition_point(|o| o.ts.0 < t);
    let b = history.get(i)?;
    let a = if i == 0 { b } else { &history[i - 1] };
    let span = i128::from(b.ts.0.saturating_sub(a.ts.0));
    let at = i128::from(t.saturating_sub(a.ts.0));
    let lerp = |x: i128, y: i128| {
        if span == 0 {
            y
        } else {
            x + (y - x) * at / span
        }
    };
    let pv = match (a.pv_wh, b.pv_wh) {
        (Some(x), Some(y)) => Some(lerp(i128::from(x.0), i128::from(y.0))),
        _ => None,
    };
    Some(Counters {
        import: lerp(i128::from(a.import_wh.0), i128::from(b.import_wh.0)),
        export: lerp(i128::from(a.export_wh.0), i128::from(b.export_wh.0)),
        pv,
        battery: lerp(i128::from(a.battery_net_wh), i128::from(b.battery_net_wh)),
    })
}

/// Energy flows over `[from, to)`: (pv, load) in Wh; `pv` is `None` without
/// a PV counter, and then `load` is the net import.
fn flows(history: &[Observation], from: u64, to: u64) -> Option<(Option<i128>, i128)> {
    let a = counters_at(history, from)?;
    let b = counters_at(history, to)?;
    let net_import = (b.import - a.import) - (b.export - a.export) - (b.battery - a.battery);
    match (a.pv, b.pv) {
        (Some(p0), Some(p1)) => Some((Some(p1 - p0), net_import + (p1 - p0))),
        _ => Some((None, net_import)),
    }
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v > 0 { i64::MAX } else { i64::MIN })
}

/// The forecast for `target` (an interval of `p.interval_ms`), or `None`
/// without any usable history.
pub fn forecast(
    history: &[Observation],
    target: IntervalId,
    p: &StrategyParams,
) -> Option<Forecast> {
    let last = history.last()?;
    let len = p.interval_ms.max(1);
    let horizon = i128::from(len);
    let window_start = last
        .ts
        .0
        .saturating_sub(p.window_ms.max(1))
        .max(history.first()?.ts.0);
    let dt = i128::from(last.ts.0 - window_start);

    // Recent rates, extrapolated to one interval.
    let recent = if dt > 0 {
        flows(history, window_start, last.ts.0)
    } else {
        None
    };
    let recent_pv = recent.and_then(|(pv, _)| pv).map(|pv| pv * horizon / dt);
    let recent_load = match recent {
        Some((_, load)) => load * horizon / dt,
        // One observation: instantaneous grid power (W × ms / 3.6e6 = Wh).
        None => i128::from(last.grid_power_w.0) * horizon / MS_PER_HOUR,
    };
    let has_pv = last.pv_wh.is_some();

    // The same slot of previous days.
    let mut prof_load = Vec::new();
    let mut prof_pv = Vec::new();
    for d in 1..=PROFILE_DAYS {
        let Some(start) = target.0.checked_sub(d * MS_PER_DAY) else {
            break;
        };
        if let Some((pv, load)) = flows(history, start, start + len) {
            prof_load.push(load);
            if let Some(pv) = pv {
                prof_pv.push(pv);
            }
        }
    }
    let mean = |v: &[i128]| (!v.is_empty()).then(|| v.iter().sum::<i128>() / v.len() as i128);

    let load = match mean(&prof_load) {
        Some(profile) => (profile + recent_load) / 2,
        None => recent_load,
    };
    let pv = if !has_pv {
        0
    } else {
        let by_sun = match (p.location, recent_pv) {
            (Some(loc), Some(rpv)) => {
                let cs_recent = clear_sky_mean(loc, window_start, last.ts.0 - window_start);
                let cs_target = clear_sky_mean(loc, target.0, len);
                (cs_recent >= DARK_WM2).then(|| rpv * i128::from(cs_target) / i128::from(cs_recent))
            }
            _ => None,
        };
        match (by_sun, mean(&prof_pv), recent_pv) {
            (Some(v), _, _) => v,
            (None, Some(profile), _) => profile,
            (None, None, Some(r)) => r,
            (None, None, None) => 0,
        }
    }
    .max(0);
    let (pv, load) = (clamp_i64(pv), clamp_i64(load));
    Some(Forecast {
        pv_wh: pv,
        load_wh: load,
        net_export_wh: pv.saturating_sub(load),
    })
}

/// The expected clearing price: the mean of the recent prices that traded,
/// or the middle of the tariff band when nothing traded recently.
pub fn expected_price(recent: &[Option<MicroPerKwh>], p: &StrategyParams) -> MicroPerKwh {
    let traded: Vec<u64> = recent.iter().rev().take(8).flatten().map(|m| m.0).collect();
    if traded.is_empty() {
        return MicroPerKwh(p.feed_in_tariff.0 / 2 + p.retail_tariff.0 / 2);
    }
    MicroPerKwh(traded.iter().map(|&x| u128::from(x)).sum::<u128>() as u64 / traded.len() as u64)
}

/// Splits `amount` into the two-step curve for one side.
fn step_curve(
    out: &mut Vec<PlannedOrder>,
    target: IntervalId,
    side: Side,
    amount: u64,
    p: &StrategyParams,
) {
    if amount < p.min_order_wh || amount == 0 {
        return;
    }
    let (first, second) = match side {
        Side::Sell => {
            let floor = p.min_sell_price.max(p.feed_in_tariff);
            let up = p.retail_tariff.0.saturating_sub(floor.0) / 3;
            (floor, MicroPerKwh(floor.0.saturating_add(up)))
        }
        Side::Buy => {
            let ceiling = p.max_buy_price.min(p.retail_tariff);
            let down = ceiling.0.saturating_sub(p.feed_in_tariff.0) / 3;
            (ceiling, MicroPerKwh(ceiling.0.saturating_sub(down)))
        }
    };
    let confident = amount * 7 / 10;
    let rest = amount - confident;
    if rest >= p.min_order_wh && confident > 0 {
        out.push(PlannedOrder {
            interval: target,
            side,
            quantity_wh: WattHours(confident),
            limit_price: first,
        });
        out.push(PlannedOrder {
            interval: target,
            side,
            quantity_wh: WattHours(rest),
            limit_price: second,
        });
    } else {
        out.push(PlannedOrder {
            interval: target,
            side,
            quantity_wh: WattHours(amount),
            limit_price: first,
        });
    }
}

/// Energy (Wh) that `w` watts move in `len_ms`.
fn wh_in(w: u64, len_ms: u64) -> u64 {
    u64::try_from(u128::from(w) * u128::from(len_ms) / 3_600_000).unwrap_or(u64::MAX)
}

/// Power (W) that moves `wh` in `len_ms`.
fn w_for(wh: u64, len_ms: u64) -> u64 {
    u64::try_from(u128::from(wh) * 3_600_000 / u128::from(len_ms.max(1))).unwrap_or(u64::MAX)
}

/// The plan for `target`, given the history (sorted by time), the market view
/// and the parameters. Pure.
pub fn plan_interval(
    history: &[Observation],
    market: &MarketView<'_>,
    target: IntervalId,
    p: &StrategyParams,
) -> Plan {
    let Some(fc) = forecast(history, target, p) else {
        return Plan {
            forecast: Forecast::default(),
            orders: Vec::new(),
            battery: None,
            curtail_export_w: None,
        };
    };
    let len = p.interval_ms.max(1);
    let spread = p.retail_tariff.0.saturating_sub(p.feed_in_tariff.0);
    let cheap = MicroPerKwh(p.feed_in_tariff.0 + spread / 4);
    let high = MicroPerKwh(p.retail_tariff.0 - spread / 4);
    let price = expected_price(market.recent_prices, p);

    let mut orders = Vec::new();
    let mut sell = fc.net_export_wh.max(0).unsigned_abs();
    let mut buy = fc.net_export_wh.min(0).unsigned_abs();
    let mut battery = None;
    // Extra orders at the battery's own prices.
    let mut battery_sell = 0u64;
    let mut battery_buy = 0u64;

    if let (Some(b), Some(soc)) = (p.battery, market.battery_soc_wh) {
        let soc = soc.min(b.capacity_wh);
        let per_interval = wh_in(b.max_power_w, len);
        let above_reserve = soc.saturating_sub(b.reserve_wh);
        let room = b.capacity_wh.saturating_sub(soc);
        if price >= high && above_reserve > 0 {
            // Worth more on the market than later at home: cover the own
            // deficit and offer the rest of what is above the reserve.
            let out = above_reserve.min(per_interval);
            let own = buy.min(out);
            buy -= own;
            battery_sell = out - own;
            battery = Some(BatteryMode::Discharge { w: w_for(out, len) });
        } else if price <= cheap && room > 0 {
            // Neighbours' surplus is cheap: fill up from it, keep own surplus too.
            let own = sell.min(room).min(per_interval);
            sell -= own;
            battery_buy = (room - own).min(per_interval - own);
            battery = Some(if battery_buy > 0 {
                BatteryMode::Charge {
                    w: w_for(battery_buy, len),
                }
            } else {
                BatteryMode::SelfConsume
            });
        } else {
            // Self-consumption: the battery absorbs own surplus and covers
            // own deficit, so only the rest reaches the market.
            let charge = sell.min(room).min(per_interval);
            let discharge = buy.min(above_reserve).min(per_interval);
            sell -= charge;
            buy -= discharge;
            battery = Some(BatteryMode::SelfConsume);
        }
    }

    step_curve(&mut orders, target, Side::Sell, sell, p);
    step_curve(&mut orders, target, Side::Buy, buy, p);
    if battery_sell >= p.min_order_wh && battery_sell > 0 {
        let limit = high.max(p.min_sell_price).min(p.retail_tariff);
        orders.push(PlannedOrder {
            interval: target,
            side: Side::Sell,
            quantity_wh: WattHours(battery_sell),
            limit_price: limit,
        });
    }
    if battery_buy >= p.min_order_wh && battery_buy > 0 {
        let limit = cheap.min(p.max_buy_price);
        orders.push(PlannedOrder {
            interval: target,
            side: Side::Buy,
            quantity_wh: WattHours(battery_buy),
            limit_price: limit,
        });
    }

    // Curtail only when exporting to the utility costs money right now.
    let curtail_export_w = match market.export_price_now {
        Some(x) if p.curtail && x < 0 && fc.net_export_wh > 0 => {
            let offered: u64 = orders
                .iter()
                .filter(|o| o.side == Side::Sell)
                .map(|o| o.quantity_wh.0)
                .sum();
            Some(Watts(
                i64::try_from(w_for(offered, len)).unwrap_or(i64::MAX),
            ))
        }
        _ => None,
    };
    Plan {
        forecast: fc,
        orders,
        battery,
        curtail_export_w,
    }
}

/// Once the result is known: the export limit (W) that keeps export within
/// the sold volume while exporting to the utility costs money, else `None`.
pub fn curtailment_limit_w(
    sold_wh: u64,
    export_price_now: Option<i64>,
    interval_ms: u64,
    enabled: bool,
) -> Option<Watts> {
    match export_price_now {
        Some(x) if enabled && x < 0 => Some(Watts(
            i64::try_from(w_for(sold_wh, interval_ms)).unwrap_or(i64::MAX),
        )),
        _ => None,
    }
}

/// The orders alone, without market view or battery: the walking skeleton's
/// entry point, kept for callers that need nothing more.
pub fn plan(history: &[Observation], target: IntervalId, p: &StrategyParams) -> Vec<PlannedOrder> {
    plan_interval(history, &MarketView::default(), target, p).orders
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    /// 2026-07-04T00:00Z.
    const JULY4: u64 = 1_783_123_200_000;
    const ESSEN: Location = Location {
        lat_millideg: 51_450,
        lon_millideg: 7_010,
    };

    fn params() -> StrategyParams {
        StrategyParams {
            min_sell_price: MicroPerKwh(100_000),
            max_buy_price: MicroPerKwh(300_000),
            feed_in_tariff: MicroPerKwh(80_000),
            retail_tariff: MicroPerKwh(320_000),
            interval_ms: 900_000,
            min_order_wh: 10,
            window_ms: 300_000,
            location: None,
            battery: None,
            curtail: false,
        }
    }

    fn obs(ts: u64, imp: u64, exp: u64, w: i64) -> Observation {
        Observation {
            ts: UnixMs(ts),
            import_wh: WattHours(imp),
            export_wh: WattHours(exp),
            pv_wh: None,
            grid_power_w: Watts(w),
            battery_net_wh: 0,
        }
    }

    fn obs_pv(ts: u64, imp: u64, exp: u64, pv: u64) -> Observation {
        Observation {
            pv_wh: Some(WattHours(pv)),
            ..obs(ts, imp, exp, 0)
        }
    }

    fn triples(orders: &[PlannedOrder]) -> Vec<(Side, u64, u64)> {
        orders
            .iter()
            .map(|o| (o.side, o.quantity_wh.0, o.limit_price.0))
            .collect()
    }

    /// Without PV counters or location: the walking skeleton's behaviour,
    /// (history, expected orders as (side, Wh, price)).
    #[test]
    fn table_net_persistence() {
        let t = IntervalId(900_000);
        type Case = (Vec<Observation>, Vec<(Side, u64, u64)>);
        let cases: Vec<Case> = vec![
            // No data: nothing.
            (vec![], vec![]),
            // Exporting 2 kW steadily for 5 minutes: 166 Wh in 5 min → 498 Wh over 15.
            (
                vec![obs(0, 0, 0, -2000), obs(300_000, 0, 166, -2000)],
                vec![(Side::Sell, 348, 100_000), (Side::Sell, 150, 173_333)],
            ),
            // Importing 1 kW: 83 Wh in 5 min → 249 Wh over 15.
            (
                vec![obs(0, 1000, 0, 1000), obs(300_000, 1083, 0, 1000)],
                vec![(Side::Buy, 174, 300_000), (Side::Buy, 75, 226_667)],
            ),
            // One reading only: instantaneous power, 4 kW export → 1000 Wh.
            (
                vec![obs(5, 0, 0, -4000)],
                vec![(Side::Sell, 700, 100_000), (Side::Sell, 300, 173_333)],
            ),
            // Balanced: below the minimum order, nothing.
            (vec![obs(0, 10, 10, 0), obs(300_000, 11, 12, 0)], vec![]),
            // Observations outside the window are ignored.
            (
                vec![
                    obs(0, 0, 0, 0),
                    obs(600_000, 0, 0, -2000),
                    obs(900_000, 0, 166, -2000),
                ],
                vec![(Side::Sell, 348, 100_000), (Side::Sell, 150, 173_333)],
            ),
        ];
        for (i, (history, expected)) in cases.into_iter().enumerate() {
            assert_eq!(triples(&plan(&history, t, &params())), expected, "case {i}");
        }
    }

    #[test]
    fn clear_sky_curve_follows_the_sun() {
        // Essen, 4 July: dark at midnight, strongest around 11:30 UTC (solar
        // noon at 7° E), symmetric, and weaker in December.
        let at = |h: u64| clear_sky_wm2(ESSEN, UnixMs(JULY4 + h * H));
        assert_eq!(at(0), 0);
        assert_eq!(at(22), 0);
        assert!(at(11) > 800 && at(11) < 1000, "noon {}", at(11));
        assert!(at(6) < at(9) && at(9) < at(11));
        assert!(
            (at(8) - at(15)).abs() < 60,
            "symmetric around 11:32 UTC: {} vs {}",
            at(8),
            at(15)
        );
        let december = clear_sky_wm2(ESSEN, UnixMs(JULY4 + 163 * 24 * H + 11 * H));
        assert!(december < at(11) / 2, "december {december}");
    }

    /// PV forecast by the clear-sky ratio; consumption from the same slot of
    /// previous days blended with the recent level.
    #[test]
    fn table_forecast() {
        let mut p = params();
        p.location = Some(ESSEN);
        p.window_ms = H;
        // A steady 500 W load for three days; PV exactly proportional to the
        // clear-sky curve with 4 W per W/m² (a sunny day on a 4 kWp roof).
        let mut hist = Vec::new();
        let (mut imp, mut exp, mut pv) = (0i64, 0i64, 0i64);
        let start = JULY4 - 2 * 24 * H;
        let step = 60_000;
        let mut t = start;
        while t <= JULY4 + 9 * H {
            hist.push(Observation {
                ts: UnixMs(t),
                import_wh: WattHours(imp as u64 / 60),
                export_wh: WattHours(exp as u64 / 60),
                pv_wh: Some(WattHours(pv as u64 / 60)),
                grid_power_w: Watts(0),
                battery_net_wh: 0,
            });
            let pv_w = 4 * clear_sky_wm2(ESSEN, UnixMs(t + step / 2));
            let net = 500 - pv_w;
            // Counters in W·min, divided by 60 on the way out: exact enough.
            if net > 0 {
                imp += net
            } else {
                exp -= net
            }
            pv += pv_w;
            t += step;
        }
        let cases: Vec<(u64, i64, i64, &str)> = vec![
            // (target start after 4 July 00:00, expected pv Wh, expected load Wh, why)
            (
                9 * H,
                4 * clear_sky_mean(ESSEN, JULY4 + 9 * H, 900_000) / 4,
                125,
                "just ahead: sun ratio",
            ),
            (
                11 * H + 900_000,
                4 * clear_sky_mean(ESSEN, JULY4 + 11 * H + 900_000, 900_000) / 4,
                125,
                "noon, more sun",
            ),
            (21 * H, 0, 125, "night: no PV"),
        ];
        for (off, pv_wh, load_wh, why) in cases {
            let fc = forecast(&hist, IntervalId(JULY4 + off), &p).expect("history");
            assert!(
                (fc.pv_wh - pv_wh).abs() <= pv_wh / 20 + 3,
                "{why}: pv {} vs {pv_wh}",
                fc.pv_wh
            );
            assert!(
                (fc.load_wh - load_wh).abs() <= 3,
                "{why}: load {} vs {load_wh}",
                fc.load_wh
            );
            assert_eq!(fc.net_export_wh, fc.pv_wh - fc.load_wh, "{why}");
        }
        // Without a location PV comes from the same slot of previous days.
        let fc = forecast(&hist, IntervalId(JULY4 + 11 * H + 900_000), &params()).expect("history");
        let recent = clear_sky_mean(ESSEN, JULY4 - 24 * H + 11 * H + 900_000, 900_000);
        assert!(
            (fc.pv_wh - recent).abs() <= recent / 20 + 3,
            "profile {} vs {recent}",
            fc.pv_wh
        );
    }

    /// Consumption comes from the same slot of earlier days when the evening
    /// routine differs from the recent level.
    #[test]
    fn evening_routine_from_previous_days() {
        let mut p = params();
        p.window_ms = H;
        // Two days of 300 W, except 2 kW from 18:00 to 19:00 every day.
        let mut hist = Vec::new();
        let mut imp = 0u64;
        let start = JULY4 - 2 * 24 * H;
        let mut t = start;
        while t <= JULY4 + 17 * H + 45 * 60_000 {
            hist.push(obs_pv(t, imp / 60, 0, 0));
            let h = (t % (24 * H)) / H;
            imp += if h == 18 { 2000 } else { 300 };
            t += 60_000;
        }
        let fc = forecast(&hist, IntervalId(JULY4 + 18 * H), &p).expect("history");
        // Profile 500 Wh, recent 75 Wh per 15 min: blended 287 ± rounding.
        assert!((fc.load_wh - 287).abs() <= 3, "load {}", fc.load_wh);
        let orders = plan(&hist, IntervalId(JULY4 + 18 * H), &p);
        assert_eq!(
            orders.iter().map(|o| o.quantity_wh.0).sum::<u64>(),
            fc.load_wh.unsigned_abs()
        );
        assert!(orders.iter().all(|o| o.side == Side::Buy));
    }

    fn battery() -> BatteryParams {
        BatteryParams {
            capacity_wh: 10_000,
            reserve_wh: 2_000,
            max_power_w: 4_000,
        }
    }

    /// Battery table: (net Wh of the forecast, soc, recent prices) →
    /// (battery mode, orders). The interval is 15 min, so 4 kW is 1000 Wh.
    #[test]
    fn table_battery() {
        let mut p = params();
        p.battery = Some(battery());
        let cheap = [Some(MicroPerKwh(120_000))]; // ≤ 80k + 240k/4 = 140k
        let high = [Some(MicroPerKwh(270_000))]; // ≥ 320k − 60k = 260k
        let mid = [Some(MicroPerKwh(200_000))];
        type Case<'a> = (
            i64,
            u64,
            &'a [Option<MicroPerKwh>],
            BatteryMode,
            Vec<(Side, u64, u64)>,
        );
        let cases: Vec<Case> = vec![
            // Surplus 500 Wh, room: the battery takes it all, nothing to sell.
            (-2000, 5_000, &mid, BatteryMode::SelfConsume, vec![]),
            // Surplus 500 Wh, battery full: all of it sold.
            (
                -2000,
                10_000,
                &mid,
                BatteryMode::SelfConsume,
                vec![(Side::Sell, 350, 100_000), (Side::Sell, 150, 173_333)],
            ),
            // Deficit 500 Wh covered from the battery above the reserve.
            (2000, 5_000, &mid, BatteryMode::SelfConsume, vec![]),
            // Deficit 500 Wh, only 200 Wh above the reserve: buy 300 Wh.
            (
                2000,
                2_200,
                &mid,
                BatteryMode::SelfConsume,
                vec![(Side::Buy, 210, 300_000), (Side::Buy, 90, 226_667)],
            ),
            // At the reserve: the battery is kept, the whole deficit bought.
            (
                2000,
                2_000,
                &mid,
                BatteryMode::SelfConsume,
                vec![(Side::Buy, 350, 300_000), (Side::Buy, 150, 226_667)],
            ),
            // Cheap neighbour surplus: charge the full 1000 Wh at ≤ 140k.
            (
                2000,
                5_000,
                &cheap,
                BatteryMode::Charge { w: 4_000 },
                vec![
                    (Side::Buy, 350, 300_000),
                    (Side::Buy, 150, 226_667),
                    (Side::Buy, 1_000, 140_000),
                ],
            ),
            // High prices: cover own 500 Wh and sell the other 500 Wh at ≥ 260k.
            (
                2000,
                5_000,
                &high,
                BatteryMode::Discharge { w: 4_000 },
                vec![(Side::Sell, 500, 260_000)],
            ),
            // High prices but at the reserve: nothing from the battery.
            (
                2000,
                2_000,
                &high,
                BatteryMode::SelfConsume,
                vec![(Side::Buy, 350, 300_000), (Side::Buy, 150, 226_667)],
            ),
        ];
        for (i, (grid_w, soc, prices, mode, expected)) in cases.into_iter().enumerate() {
            let market = MarketView {
                recent_prices: prices,
                export_price_now: None,
                battery_soc_wh: Some(soc),
            };
            let got = plan_interval(&[obs(0, 0, 0, grid_w)], &market, IntervalId(900_000), &p);
            assert_eq!(got.battery, Some(mode), "case {i}");
            assert_eq!(triples(&got.orders), expected, "case {i}");
            // Never below the reserve.
            if let Some(BatteryMode::Discharge { w }) = got.battery {
                assert!(
                    soc - wh_in(w, p.interval_ms) >= battery().reserve_wh,
                    "case {i}"
                );
            }
        }
    }

    #[test]
    fn curtailment_only_when_export_costs_money() {
        let mut p = params();
        p.curtail = true;
        let h = [obs(0, 0, 0, -4000)];
        let at = |price: Option<i64>| {
            let market = MarketView {
                recent_prices: &[],
                export_price_now: price,
                battery_soc_wh: None,
            };
            plan_interval(&h, &market, IntervalId(900_000), &p).curtail_export_w
        };
        assert_eq!(at(None), None);
        assert_eq!(at(Some(50_000)), None);
        // Negative: export limited to the 1000 Wh offered = 4 kW.
        assert_eq!(at(Some(-10_000)), Some(Watts(4_000)));
        p.curtail = false;
        let market = MarketView {
            recent_prices: &[],
            export_price_now: Some(-10_000),
            battery_soc_wh: None,
        };
        assert_eq!(
            plan_interval(&h, &market, IntervalId(900_000), &p).curtail_export_w,
            None
        );
        // After the result: only the 250 Wh sold may leave → 1 kW.
        assert_eq!(
            curtailment_limit_w(250, Some(-1), 900_000, true),
            Some(Watts(1_000))
        );
        assert_eq!(curtailment_limit_w(250, Some(0), 900_000, true), None);
    }

    #[test]
    fn limits_respect_tariffs() {
        let mut p = params();
        p.min_sell_price = MicroPerKwh(1); // below feed-in: clamped up
        p.max_buy_price = MicroPerKwh(1_000_000); // above retail: clamped down
        let sell = plan(&[obs(0, 0, 0, -4000)], IntervalId(0), &p);
        assert!(sell.iter().all(|o| o.limit_price >= p.feed_in_tariff));
        let buy = plan(&[obs(0, 0, 0, 4000)], IntervalId(0), &p);
        assert!(
            buy.iter()
                .all(|o| o.limit_price <= p.retail_tariff && o.limit_price >= p.feed_in_tariff)
        );
        let total: u64 = sell.iter().map(|o| o.quantity_wh.0).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn expected_price_means_recent_trades() {
        let p = params();
        assert_eq!(expected_price(&[], &p), MicroPerKwh(200_000));
        assert_eq!(expected_price(&[None, None], &p), MicroPerKwh(200_000));
        let r = [Some(MicroPerKwh(100_000)), None, Some(MicroPerKwh(200_000))];
        assert_eq!(expected_price(&r, &p), MicroPerKwh(150_000));
    }
}
