//! Errors of the engine service, by layer: configuration, storage, broker and
//! settlement failures are distinct, so that callers can tell a bad config
//! (fix and restart) from a transient broker outage (retry).

use crate::config::ConfigError;
use crate::settlement::{LedgerError, SettlementError};

/// A storage failure. Wraps sqlx errors; never shown to web users.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// Why the engine failed to start or to carry out an operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("broker: {0}")]
    Broker(String),
    #[error("signing: {0}")]
    Sign(#[from] protocol::EnvelopeError),
    #[error(transparent)]
    Settlement(#[from] SettlementError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("interval {0} is not aligned to the interval length")]
    BadInterval(u64),
    #[error("gate of interval {0} has not closed yet")]
    GateOpen(u64),
    #[error("interval {0} has not been cleared")]
    NotCleared(u64),
}

impl From<sqlx::Error> for EngineError {
    fn from(e: sqlx::Error) -> Self {
        EngineError::Store(StoreError::Db(e))
    }
}

/// Converts a stored integer column to `u64`; negative values mean the row
/// was tampered with or written by a bug.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

/// Converts a `u64` to the `i64` that SQLite stores.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} does not fit in 63 bits")))
}
