//! Ingest throughput of the intake (verification + validation + one
//! transaction per batch) on a real SQLite file, without the broker.
//! Ignored by default; run with
//! `cargo test -p clearing --test throughput -- --ignored --nocapture`
//! (numbers from a debug build are far below release ones).

mod common;

use clearing::intake::{Inbound, Intake};
use clearing::registry::Registry;
use clearing::store;
use common::*;
use protocol::{GridId, UnixMs};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn readings_per_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = store::open(&dir.path().join("tp.db")).await.expect("open");
    let grid = GridId::new("tp").expect("id");
    let homes: Vec<Household> = (0..100u8)
        .map(|i| household(&format!("h{i:03}"), i.wrapping_add(1)))
        .collect();
    let enrol: Vec<_> = homes.iter().map(Household::enrolment).collect();
    let reg = Arc::new(
        Registry::sync(&pool, &enrol, UnixMs(T0))
            .await
            .expect("sync"),
    );
    let rules = intake_rules(&grid);
    let mut intake = Intake::new(rules, reg, pool.clone());
    let per_home = 100u64;
    let mut batches = Vec::new();
    for seq in 1..=per_home {
        let batch: Vec<Inbound> = homes
            .iter()
            .map(|h| Inbound {
                topic: h.reading_topic(&grid),
                payload: h.sign_reading(&h.reading(&grid, seq, T0, seq * 10, seq)),
            })
            .collect();
        batches.push(batch);
    }
    let total: usize = batches.iter().map(Vec::len).sum();
    // Timed by counting with tokio's clock: std's clocks are banned outside
    // protocol::clock.
    let clock = protocol::SystemClock;
    let started = protocol::Clock::now(&clock);
    let mut stored = 0;
    // Ten messages per batch of 100 homes → batches of 1000.
    for chunk in batches.chunks(10) {
        let batch: Vec<Inbound> = chunk.iter().flatten().cloned().collect();
        stored += intake
            .process(batch, UnixMs(T0))
            .await
            .expect("process")
            .readings;
    }
    let ms = protocol::Clock::now(&clock)
        .0
        .saturating_sub(started.0)
        .max(1);
    assert_eq!(stored, total);
    println!(
        "{total} readings in {ms} ms: {} readings/s",
        u64::try_from(total).expect("fits") * 1000 / ms
    );

    // The share of signature verification alone, for comparison.
    let envs: Vec<protocol::SignedEnvelope> = batches[0]
        .iter()
        .map(|m| protocol::SignedEnvelope::decode(&m.payload).expect("decode"))
        .collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> =
        homes.iter().map(|h| h.key.verifying_key()).collect();
    let items: Vec<_> = envs
        .iter()
        .zip(&keys)
        .map(|(e, k)| (e, protocol::Domain::Reading, k))
        .collect();
    let started = protocol::Clock::now(&clock);
    let ok = protocol::verify_many(&items).iter().all(Result::is_ok);
    let ms = protocol::Clock::now(&clock)
        .0
        .saturating_sub(started.0)
        .max(1);
    assert!(ok);
    println!("batch verification of {} envelopes: {ms} ms", items.len());
}
