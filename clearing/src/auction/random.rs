//! Seeded random books for benchmarks (`voltshare bench`, the criterion
//! bench) and tests.
//!
//! The generator is a self-contained SplitMix64, so a seed gives the same
//! book on every platform and with every version of `rand`, and the library
//! needs no random-number dependency. The book is shaped like a busy feeder:
//! about eight steps per household, prices on a 1 000 µ/kWh grid (so many
//! orders tie on price, as real limit prices do), bids between 100 000 and
//! 340 000 µ/kWh, asks between 60 000 and 300 000 µ/kWh and quantities between
//! 10 and 2 500 Wh. Roughly half of each side crosses at the default tariffs.

use super::{BookOrder, clear};
use protocol::{AuctionParams, HouseholdId, Mechanism, MicroPerKwh, Side, WattHours};
use serde_json::{Value, json};
use std::time::Duration;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and fully specified.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi` (the tiny modulo bias is irrelevant here).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A random book of `n` orders, the same for the same `(n, seed)`. Ids are
/// unique: `h{household}-{i}`.
pub fn random_book(n: usize, seed: u64) -> Vec<BookOrder> {
    let mut rng = SplitMix64(seed);
    let households: Vec<HouseholdId> = (0..n.div_ceil(8).max(1))
        .filter_map(|h| HouseholdId::new(format!("h{h:06}")).ok())
        .collect();
    let mut book = Vec::with_capacity(n);
    for i in 0..n {
        let Some(household) = households.get(rng.next() as usize % households.len().max(1)) else {
            break;
        };
        let (side, price) = if rng.next().is_multiple_of(2) {
            (Side::Buy, rng.range(100, 340) * 1000)
        } else {
            (Side::Sell, rng.range(60, 300) * 1000)
        };
        book.push(BookOrder {
            id: format!("{household}-{i}").into(),
            household: household.clone(),
            side,
            quantity_wh: WattHours(rng.range(10, 2500)),
            limit_price: MicroPerKwh(price),
        });
    }
    book
}

/// The parameters [`bench_clearing`] uses: the defaults with a grid fee of
/// 10 000 µ/kWh and the given mechanism.
pub fn bench_params(mechanism: Mechanism) -> AuctionParams {
    AuctionParams {
        mechanism,
        grid_fee: MicroPerKwh(10_000),
        ..AuctionParams::default()
    }
}

/// Generates [`random_book`]`(n, seed)`, clears it and reports
/// `{"orders", "mechanism", "millis", "micros", "trades", "volume_wh",
/// "clearing_price"}` (integers: no floating point in the auction).
///
/// The auction never reads a clock, so the caller passes `elapsed`, a
/// monotonic stopwatch (e.g. the time since some start); it is read just
/// before and just after [`clear`], and only that span is reported.
pub fn bench_clearing(
    n: usize,
    mechanism: Mechanism,
    seed: u64,
    elapsed: &dyn Fn() -> Duration,
) -> Value {
    let book = random_book(n, seed);
    let params = bench_params(mechanism);
    let start = elapsed();
    let outcome = clear(&book, &params);
    let took = elapsed().saturating_sub(start);
    json!({
        "orders": n,
        "mechanism": mechanism,
        "millis": u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        "micros": u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        "trades": outcome.trades.len(),
        "volume_wh": outcome.volume_wh.0,
        "clearing_price": outcome.clearing_price.map(|p| p.0),
    })
}
