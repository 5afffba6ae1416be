//! Migration 0004 rebuilds `readings` as a rowid table: a database written
//! by an engine before it keeps every reading, byte for byte, and the rules
//! that looked at the dropped `digest` column still hold afterwards.

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::path::Path;

/// Applies only the migrations before 0004, as an older engine did.
async fn old_database(path: &Path) -> sqlx::SqlitePool {
    let dir = tempfile::tempdir().expect("temporary directory");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for name in [
        "0001_engine.sql",
        "0002_evm_settlement.sql",
        "0003_enrolment.sql",
    ] {
        std::fs::copy(src.join(name), dir.path().join(name)).expect("copy migration");
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .foreign_keys(true),
        )
        .await
        .expect("open old database");
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("read old migrations")
        .run(&pool)
        .await
        .expect("apply old migrations");
    pool
}

#[tokio::test]
async fn readings_survive_the_rebuild_and_duplicates_are_still_caught() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("engine.db");
    let old = old_database(&path).await;
    sqlx::query("INSERT INTO households (household, enrolled_at) VALUES ('h1', 1)")
        .execute(&old)
        .await
        .expect("household");
    sqlx::query("INSERT INTO meters (meter, household) VALUES ('h1-grid', 'h1')")
        .execute(&old)
        .await
        .expect("meter");
    let envelope = |seq: i64| format!("envelope of reading {seq} \u{0}\u{1}").into_bytes();
    for seq in 1..=3i64 {
        sqlx::query(
            "INSERT INTO readings (meter, seq, household, ts, import_wh, export_wh, pv_wh, \
             grid_power_w, pv_power_w, status, key_id, envelope, digest, received_at) \
             VALUES ('h1-grid', ?, 'h1', ?, ?, 7, NULL, -5, NULL, 'ok', 'k1', ?, x'00', ?)",
        )
        .bind(seq)
        .bind(1_000 * seq)
        .bind(100 + seq)
        .bind(envelope(seq))
        .bind(2_000 * seq)
        .execute(&old)
        .await
        .expect("old reading");
    }
    old.close().await;

    // The engine's own opening applies 0004.
    let pool = clearing::store::open(&path)
        .await
        .expect("open and migrate");
    let rows = sqlx::query(
        "SELECT seq, ts, import_wh, export_wh, pv_wh, grid_power_w, status, key_id, envelope, \
         received_at FROM readings ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("read readings");
    assert_eq!(rows.len(), 3, "every reading is kept");
    for (row, seq) in rows.iter().zip(1..=3i64) {
        assert_eq!(row.get::<i64, _>("seq"), seq);
        assert_eq!(row.get::<i64, _>("ts"), 1_000 * seq);
        assert_eq!(row.get::<i64, _>("import_wh"), 100 + seq);
        assert_eq!(row.get::<i64, _>("export_wh"), 7);
        assert_eq!(row.get::<Option<i64>, _>("pv_wh"), None);
        assert_eq!(row.get::<i64, _>("grid_power_w"), -5);
        assert_eq!(row.get::<String, _>("status"), "ok");
        assert_eq!(row.get::<String, _>("key_id"), "k1");
        assert_eq!(row.get::<Vec<u8>, _>("envelope"), envelope(seq));
        assert_eq!(row.get::<i64, _>("received_at"), 2_000 * seq);
    }

    // The new shape: a rowid table without the digest column.
    let sql: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'readings'",
    )
    .fetch_one(&pool)
    .await
    .expect("schema");
    assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
    assert!(!sql.contains("digest"), "{sql}");
    assert!(
        sqlx::query("SELECT digest FROM readings")
            .fetch_all(&pool)
            .await
            .is_err(),
        "the digest column is gone"
    );

    // (meter, seq) is still unique, and both lookups have their index.
    let again = sqlx::query(
        "INSERT INTO readings (meter, seq, household, ts, import_wh, export_wh, grid_power_w, \
         status, key_id, envelope, received_at) \
         VALUES ('h1-grid', 2, 'h1', 1, 1, 1, 1, 'ok', 'k1', x'01', 1)",
    )
    .execute(&pool)
    .await;
    assert!(again.is_err(), "a second row for (meter, seq) is refused");
    let plan = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .fetch_all(&pool)
                .await
                .expect("query plan")
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    let by_seq = plan(
        "EXPLAIN QUERY PLAN SELECT envelope FROM readings WHERE meter = 'h1-grid' AND seq = 2",
    )
    .await;
    assert!(by_seq.contains("USING INDEX"), "{by_seq}");
    let by_ts = plan(
        "EXPLAIN QUERY PLAN SELECT envelope FROM readings WHERE meter = 'h1-grid' AND ts <= 5",
    )
    .await;
    assert!(by_ts.contains("readings_meter_ts"), "{by_ts}");

    // What the intake asks to tell a redelivery from a conflict.
    assert_eq!(
        clearing::store::reading_envelope(&pool, "h1-grid", 2)
            .await
            .expect("lookup"),
        Some(envelope(2))
    );
    assert_eq!(
        clearing::store::reading_envelope(&pool, "h1-grid", 9)
            .await
            .expect("lookup"),
        None
    );
    assert_eq!(
        clearing::store::meter_tip(&pool, "h1-grid")
            .await
            .expect("tip"),
        (Some(3), Some((3, 103, 7)))
    );
}
