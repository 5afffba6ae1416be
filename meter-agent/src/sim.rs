//! A seeded household: PV production from measured irradiance and
//! consumption from the BDEW H0 standard load profile.
//!
//! The physics uses floats (irradiance, temperature derating, profile
//! scaling); everything that leaves this module is an integer: power in watts
//! and energy in watt-hours. Energy counters ([`EnergyCounter`]) integrate
//! power exactly in integer watt-milliseconds, so they never decrease and lose
//! nothing to rounding.
//!
//! Time: the year of a [`UnixMs`] is ignored. The month, day and time of day
//! (UTC) select the hour of the DWD test reference year (Essen) and the H0
//! season; the weekday of the real date selects the H0 day type. Values are
//! linearly interpolated between the midpoints of the hours (weather) and of
//! the quarter hours (load), so power changes smoothly.

use protocol::UnixMs;
use std::sync::OnceLock;

const WEATHER_CSV: &str = include_str!("../data/weather_essen_utc.csv");
const H0_CSV: &str = include_str!("../data/h0_profile.csv");

const HOURS_PER_YEAR: usize = 8760;
const MS_PER_HOUR: u64 = 3_600_000;
const MS_PER_DAY: u64 = 86_400_000;

/// One hour of the test reference year.
#[derive(Debug, Clone, Copy, PartialEq)]
struct WeatherHour {
    /// Global horizontal irradiance, W/m².
    ghi: f64,
    /// Air temperature, °C.
    temp_c: f64,
}

/// The H0 profile: `[season][daytype][quarter]` in watts for 1,000 kWh a year.
type H0Table = [[[f64; 96]; 3]; 3];

struct Tables {
    weather: Vec<WeatherHour>,
    h0: H0Table,
}

/// The embedded tables, parsed once. They are compiled into the binary, so a
/// parse failure is a build defect that the unit tests catch; at run time a
/// malformed line would be skipped and the table check below would fail
/// loudly in tests rather than silently here.
fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let weather = WEATHER_CSV
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (g, t) = l.split_once(',')?;
                Some(WeatherHour {
                    ghi: f64::from(g.trim().parse::<u16>().ok()?),
                    temp_c: f64::from(t.trim().parse::<i16>().ok()?) / 10.0,
                })
            })
            .collect();
        let mut h0 = [[[0.0; 96]; 3]; 3];
        for line in H0_CSV.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let [period, daytype, quarter, mw] = f.as_slice() else {
                continue;
            };
            let s = match *period {
                "winter" => Season::Winter,
                "summer" => Season::Summer,
                _ => Season::Transition,
            };
            let d = match *daytype {
                "saturday" => DayType::Saturday,
                "sunday" => DayType::Sunday,
                _ => DayType::Workday,
            };
            if let (Ok(q), Ok(mw)) = (quarter.parse::<usize>(), mw.parse::<u32>())
                && let Some(slot) = h0[s as usize][d as usize].get_mut(q)
            {
                *slot = f64::from(mw) / 1000.0;
            }
        }
        Tables { weather, h0 }
    })
}

/// BDEW season of a calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Season {
    /// 1 November – 20 March.
    Winter = 0,
    /// 15 May – 14 September.
    Summer = 1,
    /// The rest.
    Transition = 2,
}

/// BDEW day type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayType {
    Workday = 0,
    Saturday = 1,
    Sunday = 2,
}

/// A calendar position derived from a time, with the year dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YearPos {
    pub month: u32,
    pub day: u32,
    /// ISO weekday of the real date, 1 = Monday … 7 = Sunday.
    pub weekday: u32,
    /// Day of a non-leap year, 0-based (29 February counts as 28 February).
    pub day_of_year: u32,
    /// Milliseconds since midnight UTC.
    pub ms_of_day: u64,
}

impl YearPos {
    /// The calendar position of a time (proleptic Gregorian, UTC).
    pub fn of(t: UnixMs) -> YearPos {
        let days = t.0 / MS_PER_DAY;
        let ms_of_day = t.0 % MS_PER_DAY;
        // 1970-01-01 was a Thursday (ISO 4).
        let weekday = u32::try_from((days + 3) % 7).unwrap_or(0) + 1;
        let (month, day) = civil_from_days(days);
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let idx = usize::try_from(month.saturating_sub(1))
            .unwrap_or(0)
            .min(11);
        let day_of_year = CUM[idx] + day.min(if month == 2 { 28 } else { 31 }) - 1;
        YearPos {
            month,
            day,
            weekday,
            day_of_year,
            ms_of_day,
        }
    }

    /// The BDEW season.
    pub fn season(&self) -> Season {
        let md = (self.month, self.day);
        if md >= (11, 1) || md <= (3, 20) {
            Season::Winter
        } else if ((5, 15)..=(9, 14)).contains(&md) {
            Season::Summer
        } else {
            Season::Transition
        }
    }

    /// The BDEW day type (holidays are not modelled).
    pub fn day_type(&self) -> DayType {
        match self.weekday {
            6 => DayType::Saturday,
            7 => DayType::Sunday,
            _ => DayType::Workday,
        }
    }
}

/// Month and day of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u32, u32) {
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

/// BDEW dynamisation factor for day `t` of the year (1-based), a fourth-order
/// polynomial that lowers summer and raises winter consumption.
pub fn dynamisation(t: u32) -> f64 {
    let t = f64::from(t);
    let f = -3.92e-10 * t.powi(4) + 3.2e-7 * t.powi(3) - 7.02e-5 * t.powi(2) + 2.1e-3 * t + 1.24;
    (f * 10_000.0).round() / 10_000.0
}

/// Weather at a time, interpolated between hour midpoints.
fn weather_at(t: UnixMs) -> WeatherHour {
    let tb = tables();
    let pos = YearPos::of(t);
    let n = tb.weather.len().max(1);
    // Hour k's mean belongs to its midpoint k + 0.5 h.
    let hour = f64::from(pos.day_of_year) * 24.0 + pos.ms_of_day as f64 / MS_PER_HOUR as f64 - 0.5;
    let hour = hour.rem_euclid(HOURS_PER_YEAR as f64);
    let k0 = (hour.floor() as usize) % n;
    let k1 = (k0 + 1) % n;
    let frac = hour - hour.floor();
    let a = tb.weather.get(k0).copied().unwrap_or(WeatherHour {
        ghi: 0.0,
        temp_c: 10.0,
    });
    let b = tb.weather.get(k1).copied().unwrap_or(a);
    WeatherHour {
        ghi: a.ghi + (b.ghi - a.ghi) * frac,
        temp_c: a.temp_c + (b.temp_c - a.temp_c) * frac,
    }
}

/// H0 power (W for 1,000 kWh a year, dynamisation applied) of the quarter
/// hour that contains `t`.
fn h0_quarter(t: UnixMs) -> f64 {
    let pos = YearPos::of(t);
    let q = usize::try_from(pos.ms_of_day / 900_000)
        .unwrap_or(0)
        .min(95);
    tables().h0[pos.season() as usize][pos.day_type() as usize][q]
        * dynamisation(pos.day_of_year + 1)
}

/// H0 power at a time, interpolated between quarter-hour midpoints.
fn h0_at(t: UnixMs) -> f64 {
    let shifted = t.0.saturating_sub(450_000);
    let start = shifted - shifted % 900_000;
    let frac = (shifted - start) as f64 / 900_000.0;
    let a = h0_quarter(UnixMs(start + 450_000));
    let b = h0_quarter(UnixMs(start + 900_000 + 450_000));
    a + (b - a) * frac
}

/// SplitMix64: a tiny, fully specified PRNG, so a seed means the same
/// household in every build and on every machine (the `rand` crate's
/// generators are not promised to be stable across versions).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * unit(self.next_u64())
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A simulated household: a rooftop PV system and a consumption profile.
///
/// Everything follows from the seed; the fields are public so that a demo or
/// a test can pin a parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct SimHousehold {
    pub seed: u64,
    /// PV peak power, kWp (3–10).
    pub pv_kwp: f64,
    /// Annual consumption, kWh (2,500–4,500).
    pub annual_kwh: f64,
    /// Plane-of-array gain over horizontal irradiance (orientation and tilt).
    pub tilt_gain: f64,
    /// Performance ratio of the PV system (losses other than temperature).
    pub performance_ratio: f64,
    /// Relative amplitude of the per-household load noise (±).
    pub load_noise: f64,
    /// Relative amplitude of the per-hour PV noise (±), standing in for local
    /// clouds and shading.
    pub pv_noise: f64,
}

impl SimHousehold {
    /// A household drawn from `seed`.
    pub fn from_seed(seed: u64) -> SimHousehold {
        let mut r = SplitMix64(seed);
        SimHousehold {
            seed,
            pv_kwp: (r.range(3.0, 10.0) * 10.0).round() / 10.0,
            annual_kwh: r.range(2500.0, 4500.0).round(),
            tilt_gain: r.range(1.02, 1.18),
            performance_ratio: r.range(0.78, 0.86),
            load_noise: r.range(0.10, 0.25),
            pv_noise: r.range(0.02, 0.06),
        }
    }

    /// Deterministic noise in [-1, 1) for a slot of time, per household.
    fn noise(&self, salt: u64, slot: u64) -> f64 {
        unit(mix(
            self.seed ^ mix(salt ^ slot.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        )) * 2.0
            - 1.0
    }

    /// PV AC power at `t`, watts (≥ 0, at most the peak power).
    pub fn pv_power_w(&self, t: UnixMs) -> i64 {
        let w = weather_at(t);
        if w.ghi <= 0.0 {
            return 0;
        }
        let poa = w.ghi * self.tilt_gain;
        // Cell temperature rises about 0.03 K per W/m² over ambient; crystalline
        // silicon loses 0.4 %/K above 25 °C.
        let cell = w.temp_c + 0.03 * poa;
        let derate = (1.0 - 0.004 * (cell - 25.0)).clamp(0.5, 1.1);
        let noise = 1.0 + self.pv_noise * self.noise(1, t.0 / MS_PER_HOUR);
        let p = self.pv_kwp * poa * self.performance_ratio * derate * noise;
        (p.round() as i64).clamp(0, (self.pv_kwp * 1000.0).round() as i64)
    }

    /// Household consumption at `t`, watts (≥ 0).
    pub fn load_power_w(&self, t: UnixMs) -> i64 {
        let base = h0_at(t) * self.annual_kwh / 1000.0;
        let noise = 1.0 + self.load_noise * self.noise(2, t.0 / 300_000);
        (base * noise).round().max(0.0) as i64
    }

    /// Power at the grid connection point, watts: `+` import, `−` export.
    pub fn grid_power_w(&self, t: UnixMs) -> i64 {
        self.load_power_w(t) - self.pv_power_w(t)
    }
}

/// A cumulative energy counter in whole watt-hours with an exact integer
/// remainder in watt-milliseconds, so that integrating never loses energy to
/// rounding and the counter never decreases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnergyCounter {
    wh: u64,
    /// Watt-milliseconds not yet making a whole watt-hour (< 3,600,000).
    rem_wms: u64,
}

impl EnergyCounter {
    /// A counter starting at `wh`.
    pub fn starting_at(wh: u64) -> EnergyCounter {
        EnergyCounter { wh, rem_wms: 0 }
    }
    /// Whole watt-hours.
    pub fn wh(&self) -> u64 {
        self.wh
    }
    /// Adds `power_w` (negative counts as zero) held for `dt_ms`.
    pub fn add(&mut self, power_w: i64, dt_ms: u64) {
        let p = u64::try_from(power_w).unwrap_or(0);
        let total = u128::from(self.rem_wms) + u128::from(p) * u128::from(dt_ms);
        let whole = total / u128::from(MS_PER_HOUR);
        self.wh = self
            .wh
            .saturating_add(u64::try_from(whole).unwrap_or(u64::MAX));
        self.rem_wms = u64::try_from(total % u128::from(MS_PER_HOUR)).unwrap_or(0);
    }
}

/// The energy state of a simulated household's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HouseholdMeters {
    /// When the counters were last advanced.
    pub at: UnixMs,
    pub pv: EnergyCounter,
    pub import: EnergyCounter,
    pub export: EnergyCounter,
}

/// Longest step of simulated time over which power is held constant while
/// integrating. A minute keeps the counters within a fraction of a percent of
/// the smooth curve.
const MAX_STEP_MS: u64 = 60_000;
/// At most this many steps per advance, so that a long gap (a restarted demo,
/// a fast clock) costs bounded time; the steps then grow longer.
const MAX_STEPS: u64 = 20_000;

impl HouseholdMeters {
    /// Counters at zero, starting at `at`. Real meters start at arbitrary
    /// values; the seed gives each household a different but fixed offset.
    pub fn new(household: &SimHousehold, at: UnixMs) -> HouseholdMeters {
        let mut r = SplitMix64(household.seed ^ 0x5EED);
        HouseholdMeters {
            at,
            pv: EnergyCounter::starting_at(r.next_u64() % 5_000_000),
            import: EnergyCounter::starting_at(r.next_u64() % 20_000_000),
            export: EnergyCounter::starting_at(r.next_u64() % 5_000_000),
        }
    }

    /// Integrates power from the last update until `now`. A time earlier than
    /// the last update changes nothing: counters never run backwards.
    pub fn advance(&mut self, household: &SimHousehold, now: UnixMs) {
        if now <= self.at {
            return;
        }
        let span = now.0 - self.at.0;
        let step = MAX_STEP_MS.max(span.div_ceil(MAX_STEPS));
        let mut t = self.at.0;
        while t < now.0 {
            let dt = step.min(now.0 - t);
            // Midpoint power over the step.
            let mid = UnixMs(t + dt / 2);
            let pv = household.pv_power_w(mid);
            let grid = household.load_power_w(mid) - pv;
            self.pv.add(pv, dt);
            self.import.add(grid, dt);
            self.export.add(-grid, dt);
            t += dt;
        }
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2021-06-21 00:00 UTC, a Monday near the solstice.
    const JUNE_21: u64 = 1_624_233_600_000;

    #[test]
    fn tables_are_complete() {
        let t = tables();
        assert_eq!(t.weather.len(), HOURS_PER_YEAR);
        let ghi_kwh: f64 = t.weather.iter().map(|w| w.ghi).sum::<f64>() / 1000.0;
        assert!((955.0..965.0).contains(&ghi_kwh), "GHI {ghi_kwh}");
        for season in &t.h0 {
            for day in season {
                assert!(day.iter().all(|w| *w > 20.0 && *w < 400.0));
            }
        }
    }

    #[test]
    fn calendar() {
        let p = YearPos::of(UnixMs(JUNE_21 + 13 * MS_PER_HOUR));
        assert_eq!((p.month, p.day, p.weekday), (6, 21, 1));
        assert_eq!(p.day_of_year, 171);
        assert_eq!(p.season(), Season::Summer);
        let leap = YearPos::of(UnixMs(951_782_400_000)); // 2000-02-29
        assert_eq!((leap.month, leap.day, leap.day_of_year), (2, 29, 58));
        let newyear = YearPos::of(UnixMs(1_609_459_200_000)); // 2021-01-01, Friday
        assert_eq!(
            (
                newyear.month,
                newyear.day,
                newyear.weekday,
                newyear.day_of_year
            ),
            (1, 1, 5, 0)
        );
        assert_eq!(newyear.season(), Season::Winter);
        assert!((dynamisation(1) - 1.242).abs() < 1e-9);
    }

    #[test]
    fn households_differ_and_are_in_range() {
        let a = SimHousehold::from_seed(1);
        let b = SimHousehold::from_seed(2);
        assert_ne!(a, b);
        assert_eq!(a, SimHousehold::from_seed(1));
        for s in 0..200 {
            let h = SimHousehold::from_seed(s);
            assert!((3.0..=10.0).contains(&h.pv_kwp));
            assert!((2500.0..=4500.0).contains(&h.annual_kwh));
        }
    }

    #[test]
    fn pv_is_zero_at_night_and_high_at_noon_in_summer() {
        let h = SimHousehold::from_seed(7);
        assert_eq!(h.pv_power_w(UnixMs(JUNE_21 + 60_000)), 0);
        let noon: i64 = (0..7)
            .map(|d| h.pv_power_w(UnixMs(JUNE_21 + d * MS_PER_DAY + 11 * MS_PER_HOUR)))
            .max()
            .unwrap_or(0);
        assert!(
            noon as f64 > 0.4 * h.pv_kwp * 1000.0,
            "noon {noon} W for {} kWp",
            h.pv_kwp
        );
        assert!(noon as f64 <= h.pv_kwp * 1000.0);
    }

    #[test]
    fn a_year_matches_the_inputs() {
        // Integrate a whole year through the meters: annual consumption should
        // come out near the seeded value and PV yield near 850–1,100 kWh/kWp.
        let h = SimHousehold::from_seed(42);
        let start = UnixMs(1_609_459_200_000); // 2021-01-01
        let mut m = HouseholdMeters::new(&h, start);
        let (pv0, imp0, exp0) = (m.pv.wh(), m.import.wh(), m.export.wh());
        let mut t = start.0;
        for _ in 0..365 {
            t += MS_PER_DAY;
            m.advance(&h, UnixMs(t));
        }
        let pv = (m.pv.wh() - pv0) as f64 / 1000.0;
        let load = pv + ((m.import.wh() - imp0) as f64 - (m.export.wh() - exp0) as f64) / 1000.0;
        let yield_per_kwp = pv / h.pv_kwp;
        assert!(
            (800.0..1150.0).contains(&yield_per_kwp),
            "yield {yield_per_kwp} kWh/kWp"
        );
        assert!(
            (load / h.annual_kwh - 1.0).abs() < 0.04,
            "load {load} vs {}",
            h.annual_kwh
        );
    }

    #[test]
    fn counters_are_exact_and_monotonic() {
        let mut c = EnergyCounter::default();
        for _ in 0..3600 {
            c.add(1, 1000); // 1 W for 1 s, 3,600 times: exactly 1 Wh
        }
        assert_eq!(c.wh(), 1);
        c.add(-500, 1_000_000);
        assert_eq!(c.wh(), 1);
        let h = SimHousehold::from_seed(3);
        let mut m = HouseholdMeters::new(&h, UnixMs(JUNE_21));
        let mut last = (m.pv.wh(), m.import.wh(), m.export.wh());
        for i in 1..500 {
            m.advance(&h, UnixMs(JUNE_21 + i * 173_000));
            m.advance(&h, UnixMs(JUNE_21)); // going back changes nothing
            let now = (m.pv.wh(), m.import.wh(), m.export.wh());
            assert!(now.0 >= last.0 && now.1 >= last.1 && now.2 >= last.2);
            last = now;
        }
    }
}
