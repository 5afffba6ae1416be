//! Clearing speed at 10k, 100k and 1M orders for every mechanism, on the
//! seeded random books of `clearing::auction::random_book`.
//!
//! The goal is 1 000 000 orders in at most 100 ms on one core (release), for
//! `clear`: what the engine calls, the auction and its trades (ids shared with
//! the book, no string copies). Sample sizes are small so that the whole
//! bench finishes in about a minute; dropping the outcome (hundreds of
//! thousands of trades, four reference counts each) is kept out of the
//! measurement with `iter_with_large_drop`. The `-indexed` variants measure
//! `clear_indexed`, the core alone (trades by order index).

use clearing::auction::{bench_params, clear, clear_indexed, random_book};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use protocol::Mechanism;
use std::hint::black_box;
use std::time::Duration;

fn clearing(c: &mut Criterion) {
    let mut group = c.benchmark_group("clear");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for n in [10_000usize, 100_000, 1_000_000] {
        let book = random_book(n, 42);
        group.throughput(Throughput::Elements(n as u64));
        for mechanism in [Mechanism::Uniform, Mechanism::PayAsBid, Mechanism::Mcafee] {
            let params = bench_params(mechanism);
            group.bench_with_input(
                BenchmarkId::new(format!("{mechanism:?}"), n),
                &book,
                |b, book| b.iter_with_large_drop(|| clear(black_box(book), &params)),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{mechanism:?}-indexed"), n),
                &book,
                |b, book| b.iter_with_large_drop(|| clear_indexed(black_box(book), &params)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, clearing);
criterion_main!(benches);
