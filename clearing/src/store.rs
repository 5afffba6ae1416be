//! Persistence: one SQLite database (WAL, `synchronous=FULL`, foreign keys)
//! whose schema lives in `clearing/migrations` and is applied at start-up.
//!
//! Every statement is literal SQL with bound parameters; the only built
//! statements are multi-row inserts made with [`sqlx::QueryBuilder`], whose
//! text is fixed column lists and `?` placeholders (in a fixed set of row
//! counts, so the prepared statements are reused). Ingest writes whole
//! batches inside one transaction, which is what makes it fast: SQLite's
//! cost is the fsync per commit, not the rows.

use crate::error::{StoreError, to_i64, to_u64};
use crate::metrics::{RejectReason, SenderRejects};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Most rows per multi-row insert: 14 columns × 512 rows stays well under
/// SQLite's 32 766 bound parameters.
const INSERT_CHUNK: usize = 512;

/// Splits `n` rows into statement sizes drawn from a fixed set (512, then
/// powers of two), so that only ten different statement texts ever exist
/// per table: each is prepared once per connection and then found in sqlx's
/// statement cache, instead of a fresh parse of a 7 000-parameter statement
/// whenever a batch has a new length.
fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= INSERT_CHUNK {
            INSERT_CHUNK
        } else {
            // The largest power of two not above n.
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        n -= size;
        Some(size)
    })
}

/// `rows` cut into slices of [`chunk_sizes`].
fn chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    chunk_sizes(rows.len()).map(move |size| {
        let (head, tail) = rest.split_at(size);
        rest = tail;
        head
    })
}

/// Opens (creating if missing) the database and applies pending migrations.
pub async fn open(path: &Path) -> Result<SqlitePool, StoreError> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
        // Ingest appends to the tail of every meter's range in the readings
        // table and its index: with SQLite's default 2 MB page cache those
        // pages are read back through `pread` (a copy from the kernel) on
        // every batch. A 16 MB cache per connection keeps a few thousand
        // meters' tails in memory, and reads of anything else go through a
        // memory map instead of a copy. Durability is unchanged: writes still
        // go through the WAL with `synchronous=FULL`.
        .pragma("cache_size", "-16384")
        .pragma("mmap_size", "268435456");
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    sqlx::migrate!().run(&pool).await?;
    Ok(pool)
}

/// A verified, accepted reading ready to store.
#[derive(Debug, Clone)]
pub struct ReadingRow {
    pub meter: String,
    pub seq: i64,
    pub household: String,
    pub ts: i64,
    pub import_wh: i64,
    pub export_wh: i64,
    pub pv_wh: Option<i64>,
    pub grid_power_w: i64,
    pub pv_power_w: Option<i64>,
    pub status: &'static str,
    pub key_id: String,
    pub envelope: Vec<u8>,
    pub received_at: i64,
}

/// A verified, accepted order ready to store.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub household: String,
    pub nonce: i64,
    pub interval_start: i64,
    pub side: &'static str,
    pub quantity_wh: i64,
    pub limit_price: i64,
    pub ts: i64,
    pub replaces: Option<i64>,
    pub key_id: String,
    pub envelope: Vec<u8>,
    pub digest: Vec<u8>,
    pub received_at: i64,
}

/// Inserts readings with multi-row statements, in primary-key order
/// `(meter, seq)`: a batch arrives interleaved over the meters, and
/// inserting it sorted touches each meter's tail pages once, in key order,
/// instead of jumping between them for every row (ingest through
/// `bench ingest` went from ~31k to ~34k readings/s; the batch's commit was
/// the slowest stage of the pipeline).
pub async fn insert_readings(
    conn: &mut SqliteConnection,
    mut rows: Vec<ReadingRow>,
) -> Result<(), StoreError> {
    rows.sort_unstable_by(|a, b| (a.meter.as_str(), a.seq).cmp(&(b.meter.as_str(), b.seq)));
    let sizes: Vec<usize> = chunk_sizes(rows.len()).collect();
    let mut rows = rows.into_iter();
    for size in sizes {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO readings (meter, seq, household, ts, import_wh, export_wh, pv_wh, grid_power_w, \
             pv_power_w, status, key_id, envelope, received_at) ",
        );
        // The rows are ours: their strings and envelopes move into the
        // statement's arguments instead of being copied.
        qb.push_values(rows.by_ref().take(size), |mut b, r| {
            b.push_bind(r.meter)
                .push_bind(r.seq)
                .push_bind(r.household)
                .push_bind(r.ts)
                .push_bind(r.import_wh)
                .push_bind(r.export_wh)
                .push_bind(r.pv_wh)
                .push_bind(r.grid_power_w)
                .push_bind(r.pv_power_w)
                .push_bind(r.status)
                .push_bind(r.key_id)
                .push_bind(r.envelope)
                .push_bind(r.received_at);
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts orders with multi-row statements.
pub async fn insert_orders(
    conn: &mut SqliteConnection,
    rows: &[OrderRow],
) -> Result<(), StoreError> {
    for chunk in chunks(rows) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO orders (household, nonce, interval_start, side, quantity_wh, limit_price, ts, \
             replaces, key_id, envelope, digest, received_at) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.household.as_str())
                .push_bind(r.nonce)
                .push_bind(r.interval_start)
                .push_bind(r.side)
                .push_bind(r.quantity_wh)
                .push_bind(r.limit_price)
                .push_bind(r.ts)
                .push_bind(r.replaces)
                .push_bind(r.key_id.as_str())
                .push_bind(r.envelope.as_slice())
                .push_bind(r.digest.as_slice())
                .push_bind(r.received_at);
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds reject counts to the persisted totals.
pub async fn add_rejects(
    conn: &mut SqliteConnection,
    counts: &BTreeMap<RejectReason, u64>,
) -> Result<(), StoreError> {
    for (reason, n) in counts {
        sqlx::query(
            "INSERT INTO reject_counts (reason, count) VALUES (?, ?) \
             ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
        )
        .bind(reason.as_str())
        .bind(to_i64(*n, "reject count")?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Persisted reject counts, sorted by reason.
pub async fn load_rejects(pool: &SqlitePool) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, count FROM reject_counts ORDER BY reason")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(r, n)| Ok((r, to_u64(n, "reject count")?)))
        .collect()
}

/// Adds rejects of authenticated senders to the persisted totals.
pub async fn add_sender_rejects(
    conn: &mut SqliteConnection,
    counts: &SenderRejects,
) -> Result<(), StoreError> {
    for ((household, meter, reason), n) in counts {
        sqlx::query(
            "INSERT INTO sender_reject_counts (household, meter, reason, count) VALUES (?, ?, ?, ?) \
             ON CONFLICT(household, meter, reason) DO UPDATE SET count = count + excluded.count",
        )
        .bind(household)
        .bind(meter)
        .bind(reason)
        .bind(to_i64(*n, "reject count")?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Persisted rejects of authenticated senders.
pub async fn load_sender_rejects(pool: &SqlitePool) -> Result<SenderRejects, StoreError> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT household, meter, reason, count FROM sender_reject_counts")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(h, m, r, n)| Ok(((h, m, r), to_u64(n, "reject count")?)))
        .collect()
}

/// Counters of one stored reading: (seq, import, export).
pub type CounterRow = (i64, i64, i64);

/// The highest stored seq of a meter, and the counters of its latest reading
/// whose device status is not `error` (error readings carry no usable
/// counters, so they are never a baseline for the rewind check).
pub async fn meter_tip(
    pool: &SqlitePool,
    meter: &str,
) -> Result<(Option<i64>, Option<CounterRow>), StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM readings WHERE meter = ?")
        .bind(meter)
        .fetch_one(pool)
        .await?;
    let good = sqlx::query_as(
        "SELECT seq, import_wh, export_wh FROM readings WHERE meter = ? AND status <> 'error' \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(meter)
    .fetch_optional(pool)
    .await?;
    Ok((seq, good))
}

/// The exact envelope bytes of the stored reading (meter, seq), if any.
pub async fn reading_envelope(
    pool: &SqlitePool,
    meter: &str,
    seq: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT envelope FROM readings WHERE meter = ? AND seq = ?")
            .bind(meter)
            .bind(seq)
            .fetch_optional(pool)
            .await?,
    )
}

/// The stored non-error readings just below and just above `seq` for a meter.
pub async fn reading_neighbours(
    pool: &SqlitePool,
    meter: &str,
    seq: i64,
) -> Result<(Option<CounterRow>, Option<CounterRow>), StoreError> {
    let prev = sqlx::query_as(
        "SELECT seq, import_wh, export_wh FROM readings WHERE meter = ? AND seq < ? AND status <> 'error' \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(meter)
    .bind(seq)
    .fetch_optional(pool)
    .await?;
    let next = sqlx::query_as(
        "SELECT seq, import_wh, export_wh FROM readings WHERE meter = ? AND seq > ? AND status <> 'error' \
         ORDER BY seq ASC LIMIT 1",
    )
    .bind(meter)
    .bind(seq)
    .fetch_optional(pool)
    .await?;
    Ok((prev, next))
}

/// The highest order nonce of a household, if it has any orders.
pub async fn max_nonce(pool: &SqlitePool, household: &str) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT MAX(nonce) FROM orders WHERE household = ?")
            .bind(household)
            .fetch_one(pool)
            .await?,
    )
}

/// (digest, interval) of a stored order.
pub async fn order_at(
    pool: &SqlitePool,
    household: &str,
    nonce: i64,
) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT digest, interval_start FROM orders WHERE household = ? AND nonce = ?",
    )
    .bind(household)
    .bind(nonce)
    .fetch_optional(pool)
    .await?)
}

/// How many orders a household has stored for an interval.
pub async fn count_orders(
    pool: &SqlitePool,
    household: &str,
    interval_start: i64,
) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE interval_start = ? AND household = ?",
    )
    .bind(interval_start)
    .bind(household)
    .fetch_one(pool)
    .await?;
    to_u64(n, "order count")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_cover_every_row_with_few_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..3000usize {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n} rows");
            assert!(sizes.iter().all(|&s| s > 0 && s <= INSERT_CHUNK));
            shapes.extend(sizes);
            let rows: Vec<usize> = (0..n).collect();
            let back: Vec<usize> = chunks(&rows).flatten().copied().collect();
            assert_eq!(back, rows);
        }
        assert_eq!(
            shapes.into_iter().collect::<Vec<_>>(),
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
        );
    }
}
