//! Read models for the dashboard and the API: what the web crate may ask of
//! the clearing engine's state. Summaries come from indexed queries or from
//! memory; nothing here writes.

use protocol::{HouseholdId, MeterId, UnixMs, Watts};

pub use crate::evm::verify::{
    Published as PublishedInterval, PublishedBatch, PublishedKey, PublishedMeter, PublishedTrade,
};
use serde::Serialize;

/// One interval's clearing summary, newest first in lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntervalRow {
    /// Unix ms.
    pub interval_start: u64,
    /// Micro-units per kWh, or `None` when nothing traded.
    pub clearing_price: Option<u64>,
    pub volume_wh: u64,
    /// Number of trades.
    pub trades: u64,
    /// Number of orders in the book.
    pub orders: u64,
}

/// One settlement batch's summary, newest first in lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementRow {
    pub interval_start: u64,
    /// `pending`, `submitted`, `confirmed` or `final`.
    pub status: String,
    /// Hex SHA-256 of the batch.
    pub hash: String,
    pub prev_hash: String,
    /// Number of households with a transfer in the batch.
    pub households: u64,
    /// Total traded money in the batch, micro-units.
    pub traded_micros: i64,
    /// On-chain transaction, when settled on a chain.
    pub tx_hash: Option<String>,
}

/// Latest live power of one meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveRow {
    pub household: HouseholdId,
    pub meter: MeterId,
    pub ts: UnixMs,
    /// `+` import, `−` export.
    pub grid_power_w: Watts,
    pub pv_power_w: Option<Watts>,
}

/// One order of an order book, as the market page draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BookOrderRow {
    pub household: String,
    pub nonce: u64,
    /// `buy` or `sell`.
    pub side: String,
    pub quantity_wh: u64,
    /// Micro-units per kWh.
    pub limit_price: u64,
}

/// The active orders of one interval (amendments and cancellations applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderBookRow {
    /// Unix ms.
    pub interval_start: u64,
    /// Whether the interval has already been cleared (the book is then the
    /// last cleared one, shown when no orders are open).
    pub cleared: bool,
    pub orders: Vec<BookOrderRow>,
}

/// One stored signed reading of a household's meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HouseholdReadingRow {
    pub meter: String,
    pub seq: u64,
    /// Unix ms.
    pub ts: u64,
    pub import_wh: u64,
    pub export_wh: u64,
    pub pv_wh: Option<u64>,
    /// `+` import, `−` export.
    pub grid_power_w: i64,
    pub pv_power_w: Option<i64>,
    pub status: String,
}

/// One stored signed order of a household.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HouseholdOrderRow {
    pub nonce: u64,
    pub interval_start: u64,
    /// `buy` or `sell`.
    pub side: String,
    pub quantity_wh: u64,
    pub limit_price: u64,
    pub replaces: Option<u64>,
    /// Unix ms, as signed by the household.
    pub ts: u64,
}

/// One trade a household took part in, from its point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TradeRow {
    pub interval_start: u64,
    /// Position of the trade in its interval's result.
    pub idx: u64,
    pub buyer: String,
    pub seller: String,
    pub quantity_wh: u64,
    /// What the seller receives, micro-units per kWh.
    pub price: u64,
    /// What the buyer pays, micro-units per kWh (grid fee included).
    pub buyer_price: u64,
}

/// A household's settlement in one interval, with what it measured and the
/// utility's tariffs of that interval, so that the web can compare it with
/// buying and selling everything at the utility's prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillRow {
    pub interval_start: u64,
    /// Net transfer of the batch: `+` the household receives, `−` it pays.
    pub amount: i64,
    /// Energy delivered to neighbours (settled trades), Wh.
    pub delivered_wh: u64,
    /// Energy received from neighbours (settled trades), Wh.
    pub received_wh: u64,
    /// Measured import from the grid in the interval, Wh (`0` without data).
    pub import_wh: u64,
    /// Measured export to the grid in the interval, Wh.
    pub export_wh: u64,
    /// Whether readings backed the measurement.
    pub has_data: bool,
    /// The interval's feed-in tariff, micro-units per kWh.
    pub feed_in_tariff: u64,
    /// The interval's retail tariff, micro-units per kWh.
    pub retail_tariff: u64,
}

/// One enrolled meter and what the engine last heard from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    pub meter: String,
    pub household: String,
    /// Highest stored sequence number (readings are contiguous from 1).
    pub last_seq: Option<u64>,
    /// Timestamp of the newest stored reading, Unix ms.
    pub last_ts: Option<u64>,
    /// When the engine stored that reading, Unix ms of the engine's clock.
    pub last_received_at: Option<u64>,
    /// Device status reported in the newest reading.
    pub last_status: Option<String>,
}

/// One transfer of a settlement batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferRow {
    pub household: String,
    pub amount: i64,
    pub delivered_wh: u64,
    pub received_wh: u64,
}

/// A settlement batch in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementDetailRow {
    pub status: String,
    pub hash: String,
    pub prev_hash: String,
    pub readings_root: String,
    pub utility_micros: i64,
    pub confirmations: u64,
    pub tx_hash: Option<String>,
    pub transfers: Vec<TransferRow>,
}

/// One interval in full: its result, roots, trades and settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntervalDetailRow {
    pub interval: IntervalRow,
    pub orders_root: String,
    pub trades_root: String,
    /// When it was cleared, Unix ms of the engine's clock.
    pub cleared_at: u64,
    pub trades: Vec<TradeRow>,
    pub settlement: Option<SettlementDetailRow>,
}

/// One check of [`ReadModel::verify_interval`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyCheck {
    /// Stable name, e.g. `orders_root`.
    pub name: String,
    pub ok: bool,
    /// What was compared, for people.
    pub detail: String,
}

/// The outcome of re-verifying an interval from stored evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub interval_start: u64,
    /// True when every check passed.
    pub ok: bool,
    pub checks: Vec<VerifyCheck>,
}

/// Rejected messages of one authenticated sender for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterRejectRow {
    pub household: String,
    /// The meter of a rejected reading; `None` for orders.
    pub meter: Option<String>,
    /// The reject reason, e.g. `stale_sequence`.
    pub reason: String,
    pub count: u64,
}

/// One set of auction parameters, as the operator edits them.
pub type ParamSetRow = crate::params::ParamsUpdate;

/// One audited change of the auction parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamChangeRow {
    pub id: i64,
    /// First interval (Unix ms) cleared with `new`.
    pub effective_from: u64,
    pub old: ParamSetRow,
    pub new: ParamSetRow,
    pub changed_by: String,
    /// Unix ms of the engine's clock.
    pub changed_at: u64,
}

/// The configured parameters and every change since, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamsRow {
    pub configured: ParamSetRow,
    pub changes: Vec<ParamChangeRow>,
}

impl ParamsRow {
    /// The set in force for the interval starting at `interval_start`.
    pub fn for_interval(&self, interval_start: u64) -> &ParamSetRow {
        self.changes
            .iter()
            .rev()
            .find(|c| c.effective_from <= interval_start)
            .map_or(&self.configured, |c| &c.new)
    }
}

impl From<&crate::params::ParamChange> for ParamChangeRow {
    fn from(c: &crate::params::ParamChange) -> Self {
        ParamChangeRow {
            id: c.id,
            effective_from: c.effective_from,
            old: ParamSetRow::of(&c.old),
            new: ParamSetRow::of(&c.new),
            changed_by: c.changed_by.clone(),
            changed_at: c.changed_at,
        }
    }
}

impl From<&crate::params::ParamSchedule> for ParamsRow {
    fn from(s: &crate::params::ParamSchedule) -> Self {
        ParamsRow {
            configured: ParamSetRow::of(s.base()),
            changes: s.changes().iter().map(ParamChangeRow::from).collect(),
        }
    }
}

/// Why a read failed. Never carries database internals to the web layer:
/// the message is for logs, the web maps every variant to one generic error.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage error: {0}")]
    Storage(String),
}

/// A boxed future, so that the trait is object-safe (`Arc<dyn ReadModel>`).
pub type ReadFuture<'a, T> = futures::future::BoxFuture<'a, Result<T, ReadError>>;

/// What the dashboard may read. Implemented by the engine over its SQLite
/// store and in-memory live board; the web crate's tests implement it with
/// fixed data, so routers can be tested without a database or a socket.
pub trait ReadModel: Send + Sync + 'static {
    /// Cleared intervals, newest first, at most `limit`.
    fn intervals(&self, limit: u32) -> ReadFuture<'_, Vec<IntervalRow>>;
    /// Settlement batches, newest first, at most `limit`.
    fn settlements(&self, limit: u32) -> ReadFuture<'_, Vec<SettlementRow>>;
    /// Latest live power of every meter, sorted by household then meter.
    fn live(&self) -> Vec<LiveRow>;
    /// Rejected messages counted by reason (reason, count), sorted by reason.
    fn rejects(&self) -> Vec<(String, u64)>;

    // The methods below have empty defaults so that small fakes need only
    // implement what they test; the engine implements all of them.

    /// The order book of the earliest interval that still has open orders,
    /// or else of the newest cleared interval; `None` when there are no
    /// orders at all.
    fn order_book(&self) -> ReadFuture<'_, Option<OrderBookRow>> {
        Box::pin(async { Ok(None) })
    }
    /// A household's newest stored readings (all its meters), newest first.
    fn household_readings<'a>(
        &'a self,
        _household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<HouseholdReadingRow>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// A household's newest orders, highest nonce first.
    fn household_orders<'a>(
        &'a self,
        _household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<HouseholdOrderRow>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Trades in which the household bought or sold, newest first.
    fn household_trades<'a>(
        &'a self,
        _household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<TradeRow>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// The household's settled intervals, newest first.
    fn household_bills<'a>(
        &'a self,
        _household: &'a str,
        _limit: u32,
    ) -> ReadFuture<'a, Vec<BillRow>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Every enrolled meter with its newest reading, by meter.
    fn devices(&self) -> ReadFuture<'_, Vec<DeviceRow>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Enrolled households, sorted.
    fn households(&self) -> ReadFuture<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// One interval in full, or `None` if it was not cleared.
    fn interval_detail(&self, _interval_start: u64) -> ReadFuture<'_, Option<IntervalDetailRow>> {
        Box::pin(async { Ok(None) })
    }
    /// Rejects of authenticated senders, by household, meter and reason.
    fn meter_rejects(&self) -> Vec<MeterRejectRow> {
        Vec::new()
    }
    /// The auction parameters: configured and every audited change.
    /// `None` when the source has none to show.
    fn auction_params(&self) -> Option<ParamsRow> {
        None
    }
    /// Re-verifies an interval from the stored signed evidence: recomputes
    /// the orders root, re-runs the auction, checks the engine's signatures
    /// and the settlement batch. `None` if the interval was not cleared.
    fn verify_interval(&self, _interval_start: u64) -> ReadFuture<'_, Option<VerifyReport>> {
        Box::pin(async { Ok(None) })
    }
    /// What the engine publishes for an interval (of `interval_ms`) so that
    /// anyone can verify it (`voltshare verify --api`): the signed order
    /// and reading envelopes, the public keys, the engine's signed result
    /// and batch. `None` if the interval was not cleared.
    fn published(
        &self,
        _interval_start: u64,
        _interval_ms: u64,
    ) -> ReadFuture<'_, Option<PublishedInterval>> {
        Box::pin(async { Ok(None) })
    }
}
