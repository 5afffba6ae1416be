//! `voltshare db backup`: a consistent copy of a live SQLite database.
//!
//! The package's `postinst` takes one of every database in the state
//! directory before an upgrade restarts the units (and the new engine
//! migrates its database). The gateway may still be running while it does:
//! `VACUUM INTO` runs inside one read transaction, so the copy is a
//! consistent snapshot even while the engine or the meter agent writes (WAL
//! mode lets the writers go on), unlike a `cp` of the file, which can catch
//! a half-written page or miss what is still in the `-wal` file.
//!
//! The source is opened as is: no migration runs here (that is the job of
//! the engine's start-up, after the backup). The copy is checked with
//! `PRAGMA integrity_check` and written under a temporary name first, so a
//! backup file that exists is a complete one.

use crate::cli::CliError;
use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// `voltshare db …`.
#[derive(Subcommand, Debug, Clone)]
pub enum DbCommand {
    /// Copy a (possibly live) SQLite database consistently with VACUUM INTO.
    Backup(BackupArgs),
}

/// `voltshare db backup`.
#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// The database to copy (e.g. /var/lib/voltshare/engine.db).
    pub db: PathBuf,
    /// Where the copy goes; must not exist yet.
    #[arg(long)]
    pub to: PathBuf,
}

/// Runs `voltshare db …`.
pub fn db(c: DbCommand) -> Result<(), CliError> {
    match c {
        DbCommand::Backup(a) => {
            if !a.db.is_file() {
                return Err(CliError::Usage(format!(
                    "{}: no such database file",
                    a.db.display()
                )));
            }
            if a.to.exists() {
                return Err(CliError::Usage(format!(
                    "--to {}: exists; refusing to overwrite",
                    a.to.display()
                )));
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::Runtime(e.into()))?;
            let rows = rt.block_on(backup(&a.db, &a.to))?;
            println!(
                "{} -> {} ({rows} tables, integrity ok)",
                a.db.display(),
                a.to.display()
            );
            Ok(())
        }
    }
}

/// Copies `db` to `to` with `VACUUM INTO` and checks the copy; returns the
/// number of tables in it.
pub async fn backup(db: &Path, to: &Path) -> anyhow::Result<usize> {
    let name = to
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("--to {}: not a file name", to.display()))?;
    let tmp = to.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&tmp);
    let src = db
        .to_str()
        .ok_or_else(|| anyhow!("{}: not UTF-8", db.display()))?;
    // No `create_if_missing`, no migration: the file is copied as it is.
    // A writer holding the lock briefly is waited for, not failed on.
    let mut conn = SqliteConnectOptions::from_str(src)
        .with_context(|| format!("{}", db.display()))?
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let tmp_s = tmp
        .to_str()
        .ok_or_else(|| anyhow!("{}: not UTF-8", tmp.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(tmp_s)
        .execute(&mut conn)
        .await
        .with_context(|| format!("VACUUM INTO {}", tmp.display()))?;
    drop(conn);
    // The copy holds what the database holds: readable by its owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", tmp.display()))?;
    }

    let mut copy = SqliteConnectOptions::from_str(tmp_s)
        .with_context(|| format!("{}", tmp.display()))?
        .read_only(true)
        .connect()
        .await
        .with_context(|| format!("opening the copy {}", tmp.display()))?;
    let (verdict,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut copy)
        .await?;
    let (tables,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
            .fetch_one(&mut copy)
            .await?;
    drop(copy);
    if verdict != "ok" {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!(
            "the copy of {} failed its integrity check: {verdict}",
            db.display()
        );
    }
    std::fs::rename(&tmp, to)
        .with_context(|| format!("moving {} to {}", tmp.display(), to.display()))?;
    Ok(usize::try_from(tables).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy taken while another connection keeps writing is complete and
    /// consistent: every row committed before the backup started is in it,
    /// and the copy's rows form a prefix of the writer's sequence.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backup_of_a_database_being_written() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("voltshare-dbbackup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let live = dir.join("live.db");
        let opts = SqliteConnectOptions::from_str(live.to_str().context("utf-8")?)?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut w = opts.clone().connect().await?;
        sqlx::query("CREATE TABLE t (seq INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .execute(&mut w)
            .await?;
        for i in 0..500i64 {
            sqlx::query("INSERT INTO t (seq, v) VALUES (?, zeroblob(200))")
                .bind(i)
                .execute(&mut w)
                .await?;
        }
        let writer = tokio::spawn(async move {
            for i in 500..5_000i64 {
                if sqlx::query("INSERT INTO t (seq, v) VALUES (?, zeroblob(200))")
                    .bind(i)
                    .execute(&mut w)
                    .await
                    .is_err()
                {
                    return i;
                }
            }
            5_000
        });
        let to = dir.join("copy.db");
        let tables = backup(&live, &to).await?;
        let written = writer.await?;
        assert_eq!(written, 5_000, "the writer was not blocked out");
        assert_eq!(tables, 1);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&to)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the copy is private");
        }
        let mut c = SqliteConnectOptions::from_str(to.to_str().context("utf-8")?)?
            .read_only(true)
            .connect()
            .await?;
        let (n, max): (i64, i64) = sqlx::query_as("SELECT COUNT(*), MAX(seq) FROM t")
            .fetch_one(&mut c)
            .await?;
        assert!(n >= 500, "rows committed before the backup are in it: {n}");
        assert_eq!(n, max + 1, "the copy is a prefix of the writes");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// The command refuses to overwrite a file and names a missing source.
    #[test]
    fn refuses_overwrite_and_missing_source() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("voltshare-dbargs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let existing = dir.join("exists.db");
        std::fs::write(&existing, b"")?;
        let e = db(DbCommand::Backup(BackupArgs {
            db: existing.clone(),
            to: existing.clone(),
        }))
        .expect_err("overwrite");
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.message().contains("refusing to overwrite"),
            "{}",
            e.message()
        );
        let e = db(DbCommand::Backup(BackupArgs {
            db: dir.join("none.db"),
            to: dir.join("x.db"),
        }))
        .expect_err("missing");
        assert!(
            e.message().contains("none.db: no such database"),
            "{}",
            e.message()
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
