//! The clearing engine: a pure auction core, and the service around it that
//! verifies, stores, clears, reconciles and settles.
//!
//! Architecture invariant: [`auction`] does no IO and never reads a clock; it
//! is a pure function of (orders, parameters). The service reads time only
//! through [`protocol::Clock`].
//!
//! Map of the service:
//!
//! - [`config`]: [`EngineConfig`] and [`Enrolment`], validated before use.
//! - [`store`]: SQLite (WAL, `synchronous=FULL`), migrations, batched inserts.
//! - [`registry`]: household keys and meters; [`enrol`]: signed enrolment
//!   requests, approval, rotation and revocation by the operator.
//! - [`intake`]: verification and validation of readings and orders.
//! - [`metrics`]: counters, histograms and the Prometheus `/metrics` page.
//! - [`schedule`]: gate closures and the cron schedule.
//! - [`book`]: building the book and clearing one interval.
//! - [`settlement`]: delivery, reconciliation, the [`Settlement`] trait and
//!   the embedded [`Ledger`]; [`settler`] settles one interval; [`evm`] is
//!   the on-chain backend (alloy) and [`evm::verify`] re-checks a settled
//!   interval from its signed inputs against the chain.
//! - [`engine`]: [`start_engine`] and [`EngineHandle`], the running service.
//! - [`read`] / [`read_model`]: what the dashboard may read; [`operator`]:
//!   what its operator may change (enrolment, [`params`]).

pub mod auction;
pub mod book;
pub mod config;
pub mod engine;
pub mod enrol;
pub mod error;
pub mod evm;
pub mod intake;
pub mod metrics;
pub mod operator;
pub mod params;
pub mod read;
pub mod read_model;
pub mod registry;
pub mod schedule;
pub mod settlement;
pub mod settler;
pub mod store;

pub use config::{ConfigError, EngineConfig, Enrolment};
pub use engine::{EngineHandle, start_engine};
pub use error::{EngineError, StoreError};
pub use metrics::{Counters, CountersSnapshot, RejectReason};
pub use settlement::{
    Delivery, Ledger, LedgerError, Reconciliation, Settlement, SettlementError, SettlementRecord,
    SettlementStatus, TradeLine, reconcile, verify_ledger,
};
