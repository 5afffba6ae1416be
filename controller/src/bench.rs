//! `voltshare bench …`: benchmarks that print one JSON object.

use protocol::{Mechanism, Stopwatch};

fn micros_since(sw: &Stopwatch) -> u64 {
    u64::try_from(sw.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Clears a seeded random book of `n` orders and reports the time of the
/// clearing itself (not of generating the book), best of `runs`.
///
/// Two figures: `millis` is the auction proper (`clear_indexed`: sorting,
/// walking the curves, pricing; matches refer to orders by index), and
/// `millis_with_trades` adds materializing every trade with owned order and
/// household ids (`clear`), which the engine needs for storage but which is
/// dominated by string copies, not by the auction.
pub fn clearing(n: usize, mechanism: Mechanism, seed: u64, runs: u32) -> serde_json::Value {
    let book = clearing::auction::random_book(n, seed);
    let params = clearing::auction::bench_params(mechanism);
    let mut best_indexed = u64::MAX;
    let mut best_full = u64::MAX;
    let mut matches = 0;
    let mut volume = 0;
    let mut price = None;
    for _ in 0..runs.max(1) {
        let sw = Stopwatch::start();
        let indexed = clearing::auction::clear_indexed(&book, &params);
        best_indexed = best_indexed.min(micros_since(&sw));
        matches = indexed.matches.len();
        drop(indexed);
        let sw = Stopwatch::start();
        let out = clearing::auction::clear(&book, &params);
        best_full = best_full.min(micros_since(&sw));
        volume = out.volume_wh.0;
        price = out.clearing_price.map(|p| p.0);
    }
    serde_json::json!({
        "orders": n,
        "mechanism": mechanism,
        "runs": runs.max(1),
        "millis": best_indexed / 1000,
        "micros": best_indexed,
        "millis_with_trades": best_full / 1000,
        "trades": matches,
        "volume_wh": volume,
        "clearing_price": price,
    })
}
