//! Invariant checks shared by the fault tests, read from the real SQLite
//! databases after (or while) the parts ran.

use clearing::book;
use protocol::{AuctionParams, GridId, IntervalId, MeterId, canonical_json};
use serde::Serialize;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;
use std::collections::BTreeSet;
use std::path::Path;

/// Opens a database for reading beside the process that writes it (WAL).
pub async fn open_read(path: &Path) -> SqlitePool {
    let opts = SqliteConnectOptions::new().filename(path).read_only(true);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// A meter agent outbox: (last issued seq, seqs still waiting for an ack).
pub async fn outbox_state(path: &Path, meter: &MeterId) -> (u64, BTreeSet<u64>) {
    let pool = open_read(path).await;
    let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM meter_seq WHERE meter = ?")
        .bind(meter.as_str())
        .fetch_optional(&pool)
        .await
        .expect("outbox meter_seq");
    let rows: Vec<i64> = sqlx::query_scalar("SELECT seq FROM outbox WHERE meter = ? ORDER BY seq")
        .bind(meter.as_str())
        .fetch_all(&pool)
        .await
        .expect("outbox rows");
    pool.close().await;
    (
        u64::try_from(last.unwrap_or(0)).expect("seq"),
        rows.into_iter()
            .map(|s| u64::try_from(s).expect("seq"))
            .collect(),
    )
}

/// The seqs the engine stored for a meter.
pub async fn engine_seqs(pool: &SqlitePool, meter: &MeterId) -> Vec<u64> {
    let rows: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM readings WHERE meter = ? ORDER BY seq")
            .bind(meter.as_str())
            .fetch_all(pool)
            .await
            .expect("engine readings");
    rows.into_iter()
        .map(|s| u64::try_from(s).expect("seq"))
        .collect()
}

/// Delivery of one meter's readings: engine ∪ outbox against 1..=last.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SeqAudit {
    pub meter: String,
    /// Readings the agent accepted (issued a sequence number for).
    pub expected: u64,
    /// Stored by the engine.
    pub delivered: u64,
    /// Still in the outbox, not yet stored by the engine.
    pub waiting: u64,
    /// In neither: lost.
    pub lost: u64,
    /// Stored by the engine but never issued (would be a forgery or a repeat).
    pub unexpected: u64,
    /// Sequence numbers missing inside the engine's stored range.
    pub gaps: u64,
}

/// Compares what the agent issued with what the engine stored.
pub fn audit_seqs(meter: &MeterId, last: u64, engine: &[u64], outbox: &BTreeSet<u64>) -> SeqAudit {
    let stored: BTreeSet<u64> = engine.iter().copied().collect();
    let union: BTreeSet<u64> = stored.union(outbox).copied().collect();
    let expected: BTreeSet<u64> = (1..=last).collect();
    let max = stored.iter().next_back().copied().unwrap_or(0);
    SeqAudit {
        meter: meter.to_string(),
        expected: last,
        delivered: u64::try_from(stored.len()).unwrap_or(0),
        waiting: u64::try_from(outbox.difference(&stored).count()).unwrap_or(0),
        lost: u64::try_from(expected.difference(&union).count()).unwrap_or(0),
        unexpected: u64::try_from(union.difference(&expected).count()).unwrap_or(0)
            + u64::try_from(engine.len() - stored.len()).unwrap_or(0),
        gaps: (1..=max).filter(|s| !stored.contains(s)).count() as u64,
    }
}

/// Clearing and settlement of a run, from the engine's database.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IntervalAudit {
    pub cleared: u64,
    pub settled: u64,
    /// Cleared intervals missing between the first and the last.
    pub cleared_gaps: u64,
    /// Cleared intervals up to the one the test waited to see settled that
    /// have no settlement (the chain only grows forwards, so one skipped
    /// would never be settled).
    pub unsettled: u64,
    /// Settlement rows per interval above one (impossible by the schema,
    /// checked anyway) plus batches whose hash repeats.
    pub duplicate_settlements: u64,
    pub intervals_with_trades: u64,
    pub trades: u64,
    /// Intervals whose stored result differs from re-clearing the stored
    /// signed orders with `clearing::auction`.
    pub reclear_mismatches: u64,
    /// Records in the verified settlement chain.
    pub chain_records: u64,
}

/// Checks every cleared interval: contiguity, one settlement each (up to
/// `settled_through`, which the test saw settled), the result equal to
/// re-clearing its stored signed orders, the chain.
pub async fn audit_intervals(
    pool: &SqlitePool,
    grid: &GridId,
    params: &AuctionParams,
    interval_ms: u64,
    settled_through: IntervalId,
) -> IntervalAudit {
    let cleared: Vec<(i64, String)> =
        sqlx::query_as("SELECT interval_start, result_json FROM intervals ORDER BY interval_start")
            .fetch_all(pool)
            .await
            .expect("intervals");
    let settled: Vec<(i64, String)> =
        sqlx::query_as("SELECT interval_start, hash FROM settlements ORDER BY seq")
            .fetch_all(pool)
            .await
            .expect("settlements");
    let mut a = IntervalAudit {
        cleared: cleared.len() as u64,
        settled: settled.len() as u64,
        ..Default::default()
    };
    let ms = i64::try_from(interval_ms).expect("interval");
    for w in cleared.windows(2) {
        a.cleared_gaps += u64::try_from((w[1].0 - w[0].0) / ms - 1).unwrap_or(0);
    }
    let settled_set: BTreeSet<i64> = settled.iter().map(|s| s.0).collect();
    let hashes: BTreeSet<&String> = settled.iter().map(|s| &s.1).collect();
    a.duplicate_settlements =
        (settled.len() - settled_set.len()) as u64 + (settled.len() - hashes.len()) as u64;
    let through = i64::try_from(settled_through.0).unwrap_or(i64::MAX);
    a.unsettled = cleared
        .iter()
        .filter(|c| c.0 <= through && !settled_set.contains(&c.0))
        .count() as u64;
    for (start, json) in &cleared {
        let interval = IntervalId(u64::try_from(*start).expect("interval"));
        let orders = book::load_orders(pool, interval)
            .await
            .expect("stored orders");
        let (result, _) = book::result_of(grid, interval, params, &orders);
        if canonical_json(&result) != json.as_bytes() {
            a.reclear_mismatches += 1;
        }
        a.trades += result.trades.len() as u64;
        a.intervals_with_trades += u64::from(!result.trades.is_empty());
    }
    a.chain_records = clearing::verify_ledger(pool)
        .await
        .expect("the settlement chain verifies") as u64;
    a
}

/// Waits until every interval up to `target` is settled (real seconds).
pub async fn wait_settled_through(pool: &SqlitePool, target: IntervalId, secs: u64) {
    crate::util::wait_for(
        "every ordered interval to be cleared and settled",
        std::time::Duration::from_secs(secs),
        || async {
            let settled: Option<i64> =
                sqlx::query_scalar("SELECT MAX(interval_start) FROM settlements")
                    .fetch_one(pool)
                    .await
                    .ok()?;
            settled
                .is_some_and(|s| s >= i64::try_from(target.0).unwrap_or(i64::MAX))
                .then_some(())
        },
    )
    .await;
}
