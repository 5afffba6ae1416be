//! The intake at batch sizes the engine uses under load (verification +
//! validation + one transaction per batch) on a real SQLite file, without
//! the broker: every one of 10,000 readings from 100 households, in batches
//! of 1,000, is stored once, and batch verification agrees with the
//! intake. The rate is measured by `voltshare bench ingest` (through a real
//! broker), not here: speed is checked by benchmarks, not by tests.

mod common;

use clearing::intake::{Inbound, Intake};
use clearing::registry::Registry;
use clearing::store;
use common::*;
use protocol::{GridId, UnixMs};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_store_every_reading_once() {
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
    assert_eq!(stored, total);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(usize::try_from(rows).expect("count fits"), total);
    // Delivered again: every one a duplicate, nothing stored twice.
    let again: Vec<Inbound> = batches[..10].iter().flatten().cloned().collect();
    assert_eq!(
        intake
            .process(again, UnixMs(T0))
            .await
            .expect("redeliver")
            .readings,
        0
    );
    let rows_after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows_after, rows);

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
    let ok = protocol::verify_many(&items).iter().all(Result::is_ok);
    assert!(ok, "batch verification refused readings the intake stored");
    // One altered signature is found, and only that one.
    let mut bad: Vec<protocol::SignedEnvelope> = envs.clone();
    let raw = bad[17].encode();
    let mut flipped = raw.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    bad[17] = protocol::SignedEnvelope::decode(&flipped).expect("decode");
    let items: Vec<_> = bad
        .iter()
        .zip(&keys)
        .map(|(e, k)| (e, protocol::Domain::Reading, k))
        .collect();
    let results = protocol::verify_many(&items);
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, vec![17]);
}
