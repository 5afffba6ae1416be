//! The disk outbox: every signed reading is stored here before it is
//! published, and leaves only when the clearing engine acknowledges it.
//!
//! - SQLite in WAL mode with `synchronous=FULL`: a reading that `append`
//!   returned is on disk even if the gateway loses power right after.
//! - The per-meter sequence number lives in `meter_seq` and is advanced in the
//!   same transaction as the outbox insert: numbers start at 1, are
//!   contiguous, and survive restarts; a crash between "sign" and "store"
//!   leaves no gap because nothing is committed.
//! - The counter guard's baseline is written in the same transaction as the
//!   reading it admitted ([`Outbox::append_reading`]): one commit, one fsync
//!   per reading.
//! - Rows are deleted only on an `Accepted` or `Duplicate` ack; a `Rejected`
//!   ack moves the row to `dead_letter` (kept for inspection, never resent).
//!   One ack message's deletions are one transaction ([`Outbox::ack_many`]),
//!   committed without an fsync (`synchronous=NORMAL` for that transaction
//!   only): a deletion lost to a power cut only means the row is published
//!   again and the engine answers `Duplicate`. The next reading's commit
//!   (`FULL`) syncs the WAL, deletions before it included.
//! - The outbox is bounded: at `max_rows` rows, [`Outbox::append`] refuses
//!   with [`OutboxError::Full`] and keeps every old row; the caller stops
//!   polling and raises an alarm. Nothing is ever dropped silently.
//!
//! Queries are runtime `sqlx::query` with bound parameters (the workspace has
//! no `.sqlx` offline data for this crate yet); no SQL is ever formatted.

use crate::counters::Baseline;
use protocol::{EnvelopeError, MeterId, SignedEnvelope, UnixMs};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A reading's row and its new sequence number (binds: meter, seq,
/// envelope, created; meter, seq).
macro_rules! append_sql {
    () => {
        "INSERT INTO outbox (meter, seq, envelope, created_ms) VALUES (?, ?, ?, ?); \
         INSERT INTO meter_seq (meter, last_seq) VALUES (?, ?) \
         ON CONFLICT (meter) DO UPDATE SET last_seq = excluded.last_seq"
    };
}
const APPEND: &str = append_sql!();

/// [`APPEND`] and the counter guard's baseline (binds as [`APPEND`], then
/// meter, at, import, export, pv: see [`Outbox::bind_baseline`]).
const APPEND_WITH_BASELINE: &str = concat!(
    append_sql!(),
    "; INSERT INTO counter_baseline (meter, at_ms, import_wh, export_wh, pv_wh) \
     VALUES (?, ?, ?, ?, ?) ON CONFLICT (meter) DO UPDATE SET at_ms = excluded.at_ms, \
     import_wh = excluded.import_wh, export_wh = excluded.export_wh, pv_wh = excluded.pv_wh"
);

/// Deletes the acknowledged rows of a meter (binds: meter, a JSON array of
/// sequence numbers), without an fsync; returns one row per deletion.
const ACK_MANY: &str = "PRAGMA synchronous = NORMAL; \
     DELETE FROM outbox WHERE meter = ? AND seq IN (SELECT value FROM json_each(?)) RETURNING seq; \
     PRAGMA synchronous = FULL";

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The bound is reached; nothing was stored and no sequence number used.
    #[error("outbox is full ({rows} rows, bound {max})")]
    Full { rows: u64, max: u64 },
    #[error("could not sign the reading: {0}")]
    Sign(#[from] EnvelopeError),
    #[error("outbox holds a value out of range: {0}")]
    Corrupt(&'static str),
}

/// One stored, not yet acknowledged reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: u64,
    /// The envelope's wire bytes, exactly as they will be published.
    pub envelope: Vec<u8>,
    pub created: UnixMs,
}

/// What happened to an acknowledged sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckApplied {
    /// The row was deleted (or moved to the dead letters).
    Applied,
    /// No such row: an ack repeated by the broker, already handled.
    Unknown,
}

fn to_i64(v: u64, what: &'static str) -> Result<i64, OutboxError> {
    i64::try_from(v).map_err(|_| OutboxError::Corrupt(what))
}

fn to_u64(v: i64, what: &'static str) -> Result<u64, OutboxError> {
    u64::try_from(v).map_err(|_| OutboxError::Corrupt(what))
}

/// The outbox of one gateway (any number of meters).
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: SqlitePool,
    max_rows: u64,
    /// Rows in the outbox, counted once at open and kept by every write
    /// (this handle is the only writer), so that the bound is checked
    /// without a `COUNT(*)`, which walks the whole table: with a day's
    /// backlog that was two full scans per poll.
    rows: Arc<AtomicU64>,
    /// The last sequence number issued per meter, read from `meter_seq`
    /// on a meter's first append and kept after each commit.
    seqs: Arc<Mutex<HashMap<String, u64>>>,
    /// Set while the connection may be at `synchronous=NORMAL` (inside
    /// [`Outbox::ack_many`]); every write that must be durable first puts
    /// it back to `FULL`.
    relaxed: Arc<AtomicBool>,
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `path` and runs migrations.
    pub async fn open(path: &Path, max_rows: u64) -> Result<Outbox, OutboxError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            // Memory on a small gateway: the outbox is a queue of recent
            // rows, so a 256 KiB page cache (SQLite's default is 2 MiB) and
            // no memory-mapped IO lose nothing; a handful of distinct
            // statements are ever prepared.
            .pragma("cache_size", "-256")
            .pragma("mmap_size", "0")
            .statement_cache_capacity(32);
        // One connection: the agent is the only writer, and one connection
        // makes "read last seq, insert, update seq" trivially serial.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&pool)
            .await?;
        Ok(Outbox {
            pool,
            max_rows,
            rows: Arc::new(AtomicU64::new(to_u64(rows, "row count")?)),
            seqs: Arc::default(),
            relaxed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Closes the database (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The configured bound.
    pub fn max_rows(&self) -> u64 {
        self.max_rows
    }

    /// Rows waiting for an acknowledgement.
    pub async fn len(&self) -> Result<u64, OutboxError> {
        Ok(self.rows.load(Ordering::SeqCst))
    }

    /// Whether the outbox holds no rows.
    pub async fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len().await? == 0)
    }

    /// Whether the bound is reached.
    pub async fn is_full(&self) -> Result<bool, OutboxError> {
        Ok(self.len().await? >= self.max_rows)
    }

    /// The last sequence number issued for `meter` (0 if none).
    pub async fn last_seq(&self, meter: &MeterId) -> Result<u64, OutboxError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM meter_seq WHERE meter = ?")
            .bind(meter.as_str())
            .fetch_optional(&self.pool)
            .await?;
        to_u64(v.unwrap_or(0), "last_seq")
    }

    /// Takes the next sequence number for `meter`, lets `sign` build the
    /// envelope for it, and stores the envelope and the new number in one
    /// transaction. Returns the sequence number and the envelope.
    pub async fn append<F>(
        &self,
        meter: &MeterId,
        now: UnixMs,
        sign: F,
    ) -> Result<(u64, SignedEnvelope), OutboxError>
    where
        F: FnOnce(u64) -> Result<SignedEnvelope, EnvelopeError>,
    {
        self.append_inner(meter, now, None, sign).await
    }

    /// [`Outbox::append`], also storing the counter guard's new `baseline`
    /// in the same transaction: the reading and the baseline it set are on
    /// disk together or not at all, with one commit (one fsync).
    pub async fn append_reading<F>(
        &self,
        meter: &MeterId,
        now: UnixMs,
        baseline: &Baseline,
        sign: F,
    ) -> Result<(u64, SignedEnvelope), OutboxError>
    where
        F: FnOnce(u64) -> Result<SignedEnvelope, EnvelopeError>,
    {
        self.append_inner(meter, now, Some(baseline), sign).await
    }

    async fn append_inner<F>(
        &self,
        meter: &MeterId,
        now: UnixMs,
        baseline: Option<&Baseline>,
        sign: F,
    ) -> Result<(u64, SignedEnvelope), OutboxError>
    where
        F: FnOnce(u64) -> Result<SignedEnvelope, EnvelopeError>,
    {
        self.ensure_full_sync().await?;
        let rows = self.rows.load(Ordering::SeqCst);
        if rows >= self.max_rows {
            return Err(OutboxError::Full {
                rows,
                max: self.max_rows,
            });
        }
        let mut tx = self.pool.begin().await?;
        let cached = self.cached_seq(meter);
        let last = match cached {
            Some(v) => v,
            None => {
                let v: Option<i64> =
                    sqlx::query_scalar("SELECT last_seq FROM meter_seq WHERE meter = ?")
                        .bind(meter.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                to_u64(v.unwrap_or(0), "last_seq")?
            }
        };
        let seq = last
            .checked_add(1)
            .ok_or(OutboxError::Corrupt("seq overflow"))?;
        let env = sign(seq)?;
        // The row, the new number and the baseline in one statement list:
        // one round trip to the database thread, one commit.
        let q = sqlx::query(if baseline.is_some() {
            APPEND_WITH_BASELINE
        } else {
            APPEND
        })
        .bind(meter.as_str())
        .bind(to_i64(seq, "seq")?)
        .bind(env.encode())
        .bind(to_i64(now.0, "time")?)
        .bind(meter.as_str())
        .bind(to_i64(seq, "seq")?);
        let q = match baseline {
            Some(b) => Self::bind_baseline(q, meter, b)?,
            None => q,
        };
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        self.rows.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.seqs.lock() {
            m.insert(meter.as_str().to_owned(), seq);
        }
        Ok((seq, env))
    }

    fn cached_seq(&self, meter: &MeterId) -> Option<u64> {
        self.seqs.lock().ok()?.get(meter.as_str()).copied()
    }

    /// Takes `n` deleted rows off the count.
    fn removed(&self, n: u64) {
        let _ = self
            .rows
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                Some(r.saturating_sub(n))
            });
    }

    /// Puts the connection back to `synchronous=FULL` if a relaxed ack
    /// transaction could not (an error between its pragmas): a reading is
    /// never committed without an fsync.
    async fn ensure_full_sync(&self) -> Result<(), OutboxError> {
        if self.relaxed.load(Ordering::SeqCst) {
            sqlx::query("PRAGMA synchronous = FULL")
                .execute(&self.pool)
                .await?;
            self.relaxed.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The counter guard's baseline of `meter`, if any.
    pub async fn baseline(&self, meter: &MeterId) -> Result<Option<Baseline>, OutboxError> {
        let row = sqlx::query(
            "SELECT at_ms, import_wh, export_wh, pv_wh FROM counter_baseline WHERE meter = ?",
        )
        .bind(meter.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let pv: Option<i64> = r.try_get("pv_wh")?;
            Ok(Baseline {
                at: UnixMs(to_u64(r.try_get("at_ms")?, "at_ms")?),
                import_wh: to_u64(r.try_get("import_wh")?, "import_wh")?,
                export_wh: to_u64(r.try_get("export_wh")?, "export_wh")?,
                pv_wh: pv.map(|v| to_u64(v, "pv_wh")).transpose()?,
            })
        })
        .transpose()
    }

    /// Binds a baseline's row (meter, at, import, export, pv) to `q`.
    fn bind_baseline<'q>(
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
        meter: &'q MeterId,
        b: &Baseline,
    ) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>, OutboxError>
    {
        Ok(q.bind(meter.as_str())
            .bind(to_i64(b.at.0, "time")?)
            .bind(to_i64(b.import_wh, "import_wh")?)
            .bind(to_i64(b.export_wh, "export_wh")?)
            .bind(b.pv_wh.map(|v| to_i64(v, "pv_wh")).transpose()?))
    }

    /// Keeps a poll the counter guard refused, for inspection.
    pub async fn quarantine(
        &self,
        meter: &MeterId,
        b: &Baseline,
        reason: &str,
    ) -> Result<(), OutboxError> {
        sqlx::query(
            "INSERT INTO quarantine (meter, at_ms, reason, import_wh, export_wh, pv_wh) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(meter.as_str())
        .bind(to_i64(b.at.0, "time")?)
        .bind(reason)
        .bind(to_i64(b.import_wh, "import_wh")?)
        .bind(to_i64(b.export_wh, "export_wh")?)
        .bind(b.pv_wh.map(|v| to_i64(v, "pv_wh")).transpose()?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The quarantined polls of `meter`: (time, reason), oldest first.
    pub async fn quarantined(&self, meter: &MeterId) -> Result<Vec<(UnixMs, String)>, OutboxError> {
        let rows = sqlx::query("SELECT at_ms, reason FROM quarantine WHERE meter = ? ORDER BY id")
            .bind(meter.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    UnixMs(to_u64(r.try_get("at_ms")?, "at_ms")?),
                    r.try_get("reason")?,
                ))
            })
            .collect()
    }

    /// Un-acknowledged rows of `meter` with `seq >= from`, in sequence order.
    pub async fn pending(
        &self,
        meter: &MeterId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, OutboxError> {
        let rows = sqlx::query(
            "SELECT seq, envelope, created_ms FROM outbox WHERE meter = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(meter.as_str())
        .bind(to_i64(from, "seq")?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(OutboxRow {
                    seq: to_u64(r.try_get("seq")?, "seq")?,
                    envelope: r.try_get("envelope")?,
                    created: UnixMs(to_u64(r.try_get("created_ms")?, "created_ms")?),
                })
            })
            .collect()
    }

    /// The oldest un-acknowledged sequence number of `meter`, if any (one
    /// primary-key lookup).
    pub async fn first_pending(&self, meter: &MeterId) -> Result<Option<u64>, OutboxError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM outbox WHERE meter = ?")
            .bind(meter.as_str())
            .fetch_one(&self.pool)
            .await?;
        v.map(|v| to_u64(v, "seq")).transpose()
    }

    /// Deletes the acknowledged (accepted or duplicate) rows `seqs` of
    /// `meter` in one transaction, committed without an fsync (see the module
    /// docs: a lost deletion only causes a resend, which the engine answers
    /// as a duplicate). Returns how many rows were deleted; the others were
    /// already gone (an ack repeated by the broker).
    pub async fn ack_many(&self, meter: &MeterId, seqs: &[u64]) -> Result<u64, OutboxError> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let list = serde_json::to_string(seqs).map_err(|_| OutboxError::Corrupt("seq list"))?;
        // One round trip: relax, delete (autocommit: one transaction),
        // restore. If a statement fails, `relaxed` stays set and the next
        // durable write restores FULL first.
        self.relaxed.store(true, Ordering::SeqCst);
        let deleted = sqlx::query(ACK_MANY)
            .bind(meter.as_str())
            .bind(list)
            .fetch_all(&self.pool)
            .await?
            .len() as u64;
        self.relaxed.store(false, Ordering::SeqCst);
        self.removed(deleted);
        Ok(deleted)
    }

    /// Deletes an acknowledged (accepted or duplicate) row.
    pub async fn ack(&self, meter: &MeterId, seq: u64) -> Result<AckApplied, OutboxError> {
        let done = sqlx::query("DELETE FROM outbox WHERE meter = ? AND seq = ?")
            .bind(meter.as_str())
            .bind(to_i64(seq, "seq")?)
            .execute(&self.pool)
            .await?;
        self.removed(done.rows_affected());
        Ok(if done.rows_affected() > 0 {
            AckApplied::Applied
        } else {
            AckApplied::Unknown
        })
    }

    /// Moves a rejected row to the dead letters, with the engine's reason.
    pub async fn reject(
        &self,
        meter: &MeterId,
        seq: u64,
        reason: &str,
        now: UnixMs,
    ) -> Result<AckApplied, OutboxError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "INSERT OR IGNORE INTO dead_letter (meter, seq, envelope, reason, rejected_ms) \
             SELECT meter, seq, envelope, ?, ? FROM outbox WHERE meter = ? AND seq = ?",
        )
        .bind(reason)
        .bind(to_i64(now.0, "time")?)
        .bind(meter.as_str())
        .bind(to_i64(seq, "seq")?)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM outbox WHERE meter = ? AND seq = ?")
            .bind(meter.as_str())
            .bind(to_i64(seq, "seq")?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.removed(deleted.rows_affected());
        Ok(
            if moved.rows_affected() > 0 || deleted.rows_affected() > 0 {
                AckApplied::Applied
            } else {
                AckApplied::Unknown
            },
        )
    }

    /// Rows in the dead-letter table.
    pub async fn dead_letters(&self) -> Result<u64, OutboxError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letter")
            .fetch_one(&self.pool)
            .await?;
        to_u64(n, "row count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Domain;

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[9; 32])
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "voltshare-outbox-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("outbox.db")
    }

    #[tokio::test]
    async fn seq_contiguous_and_full_keeps_rows() {
        let path = tmp("full");
        let ob = Outbox::open(&path, 3).await.expect("open");
        let m = MeterId::new("m1").expect("id");
        for want in 1..=3 {
            let (seq, _) = ob
                .append(&m, UnixMs(want), |s| {
                    SignedEnvelope::sign(Domain::Reading, &key(), s.to_string().into_bytes())
                })
                .await
                .expect("append");
            assert_eq!(seq, want);
        }
        let err = ob
            .append(&m, UnixMs(9), |_| panic!("must not sign when full"))
            .await;
        assert!(matches!(err, Err(OutboxError::Full { rows: 3, max: 3 })));
        assert_eq!(ob.last_seq(&m).await.expect("seq"), 3);
        assert_eq!(ob.pending(&m, 0, 10).await.expect("rows").len(), 3);
        assert_eq!(ob.ack(&m, 2).await.expect("ack"), AckApplied::Applied);
        assert_eq!(ob.ack(&m, 2).await.expect("ack"), AckApplied::Unknown);
        assert_eq!(
            ob.reject(&m, 3, "bad", UnixMs(1)).await.expect("reject"),
            AckApplied::Applied
        );
        assert_eq!(ob.dead_letters().await.expect("dl"), 1);
        let left: Vec<u64> = ob
            .pending(&m, 0, 10)
            .await
            .expect("rows")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, vec![1]);
        let (seq, _) = ob
            .append(&m, UnixMs(10), |s| {
                SignedEnvelope::sign(Domain::Reading, &key(), s.to_string().into_bytes())
            })
            .await
            .expect("append");
        assert_eq!(seq, 4, "numbers are never reused, even after deletes");
    }

    #[tokio::test]
    async fn reading_and_baseline_commit_together_and_acks_batch() {
        let path = tmp("batch");
        let m = MeterId::new("m1").expect("id");
        let b = Baseline {
            at: UnixMs(5),
            import_wh: 10,
            export_wh: 20,
            pv_wh: Some(30),
        };
        {
            let ob = Outbox::open(&path, 100).await.expect("open");
            for want in 1..=5 {
                let (seq, _) = ob
                    .append_reading(&m, UnixMs(want), &b, |s| {
                        SignedEnvelope::sign(Domain::Reading, &key(), s.to_string().into_bytes())
                    })
                    .await
                    .expect("append");
                assert_eq!(seq, want);
            }
            assert_eq!(ob.first_pending(&m).await.expect("first"), Some(1));
            // 9 was never issued, 2 is acknowledged twice.
            assert_eq!(ob.ack_many(&m, &[2, 3, 9]).await.expect("ack"), 2);
            assert_eq!(ob.ack_many(&m, &[2]).await.expect("ack"), 0);
            assert_eq!(ob.ack_many(&m, &[1]).await.expect("ack"), 1);
            assert_eq!(ob.first_pending(&m).await.expect("first"), Some(4));
            // Back to FULL after the relaxed deletions.
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&ob.pool)
                .await
                .expect("pragma");
            assert_eq!(sync, 2, "synchronous=FULL");
            ob.close().await;
        }
        let ob = Outbox::open(&path, 100).await.expect("reopen");
        assert_eq!(ob.baseline(&m).await.expect("baseline"), Some(b));
        let left: Vec<u64> = ob
            .pending(&m, 0, 10)
            .await
            .expect("rows")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, vec![4, 5]);
        assert_eq!(ob.ack_many(&m, &[4, 5]).await.expect("ack"), 2);
        assert_eq!(ob.first_pending(&m).await.expect("first"), None);
        assert_eq!(ob.last_seq(&m).await.expect("seq"), 5);
    }
}
