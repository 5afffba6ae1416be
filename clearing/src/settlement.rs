//! Settlement: what was really delivered, who owes whom, and the hash-chained
//! record of it.
//!
//! # Delivery
//!
//! A meter's counter at a boundary `B` is the counter of its last signed
//! reading with `ts ≤ B` (readings with device status `error` are skipped:
//! their counters are not usable). When a meter has no reading at or before
//! the interval's start, its first reading inside the interval is the
//! baseline (this under-counts, never over-counts). A household's measured
//! export and import in interval `[start, end)` are the sums over its meters
//! of `counter(end) − counter(start)`. A household with no usable reading is
//! *undelivered*: its measured export and import are zero.
//!
//! # Reconciliation rule
//!
//! Trades are taken in canonical order (the order of the published result).
//! Each seller's measured export is allocated across its trades in that
//! order, each up to the trade's quantity; each buyer's measured import
//! likewise. A trade then settles `dq = min(seller allocation, buyer
//! allocation)`:
//!
//! - the buyer pays `buyer_price · dq` (never less than the seller gets), of
//!   which `price · dq` goes to the seller and the rest (the grid fee) to the
//!   utility;
//! - the seller's allocation beyond `dq` (exported, but the buyer did not
//!   take it) is bought by the utility at the feed-in tariff;
//! - the buyer's allocation beyond `dq` (imported, but the seller did not
//!   deliver it) is sold by the utility at the retail tariff.
//!
//! Energy outside all trades (a seller's export above its trades, a buyer's
//! import above its trades) is the household's ordinary business with the
//! utility and does not appear here. Every amount is one
//! [`protocol::MicroPerKwh::cost_of`] (integer, rounded down), credited to one party and
//! debited from another, so the batch sums to exactly zero: the utility's
//! entry is minus the sum of the households' net transfers.
//!
//! # Record
//!
//! One [`SettlementBatch`] per cleared interval, in interval order, each
//! naming the hash of the previous batch (or zero for the first). The
//! [`Settlement`] trait hands a batch to a backend; the embedded [`Ledger`]
//! backend stores it in the `settlements` table with the engine's signature
//! (Domain::Batch), final at once. Submission is idempotent per interval and
//! the chain is checked end to end by [`verify_ledger`].

use crate::error::{StoreError, to_i64, to_u64};
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::future::BoxFuture;
use protocol::{
    AuctionParams, DeviceStatus, Domain, EnvelopeError, Hash32, HouseholdId, IntervalId, KeyId,
    MeterId, Micros, Reading, SettlementBatch, SignedEnvelope, Trade, Transfer, UnixMs, WattHours,
    canonical_json, decode_payload,
};
use serde::{Deserialize, Serialize};
use sqlx::{SqliteConnection, SqlitePool};
use std::collections::{BTreeMap, HashMap};

/// Measured delivery of one household in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delivery {
    pub export_wh: WattHours,
    pub import_wh: WattHours,
    /// Whether any usable reading backs these numbers.
    pub has_data: bool,
}

/// How one trade settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeLine {
    pub index: usize,
    pub buyer: HouseholdId,
    pub seller: HouseholdId,
    pub contracted_wh: WattHours,
    pub seller_alloc_wh: WattHours,
    pub buyer_alloc_wh: WattHours,
    /// `min(seller allocation, buyer allocation)`: what settles at the trade's prices.
    pub settled_wh: WattHours,
    pub seller_receives: Micros,
    pub buyer_pays: Micros,
    /// `buyer_pays − seller_receives`, to the utility.
    pub fee: Micros,
    /// Utility → seller, for exported energy the buyer did not take.
    pub feed_in_paid: Micros,
    /// Buyer → utility, for imported energy the seller did not deliver.
    pub retail_charged: Micros,
}

/// The reconciliation of one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub lines: Vec<TradeLine>,
    /// Net per household, sorted by household.
    pub transfers: Vec<Transfer>,
    /// `−Σ transfers`.
    pub utility: Micros,
    /// Money that changed hands between neighbours (Σ seller receipts).
    pub traded: Micros,
}

/// Applies the reconciliation rule (module docs). Pure; integer only.
pub fn reconcile(
    trades: &[Trade],
    deliveries: &BTreeMap<HouseholdId, Delivery>,
    params: &AuctionParams,
) -> Reconciliation {
    let measured = |h: &HouseholdId, f: fn(&Delivery) -> WattHours| {
        deliveries
            .get(h)
            .filter(|d| d.has_data)
            .map_or(WattHours(0), f)
    };
    let mut export_left: BTreeMap<HouseholdId, WattHours> = BTreeMap::new();
    let mut import_left: BTreeMap<HouseholdId, WattHours> = BTreeMap::new();
    let mut net: BTreeMap<HouseholdId, Transfer> = BTreeMap::new();
    let mut lines = Vec::with_capacity(trades.len());
    let mut traded = Micros(0);
    for (index, t) in trades.iter().enumerate() {
        let s_left = export_left
            .entry(t.seller.clone())
            .or_insert_with(|| measured(&t.seller, |d| d.export_wh));
        let s_alloc = WattHours(t.quantity_wh.0.min(s_left.0));
        *s_left = s_left.saturating_sub(s_alloc);
        let b_left = import_left
            .entry(t.buyer.clone())
            .or_insert_with(|| measured(&t.buyer, |d| d.import_wh));
        let b_alloc = WattHours(t.quantity_wh.0.min(b_left.0));
        *b_left = b_left.saturating_sub(b_alloc);
        let dq = WattHours(s_alloc.0.min(b_alloc.0));
        let seller_receives = t.price.cost_of(dq);
        let buyer_pays = t.buyer_price.cost_of(dq).max(seller_receives);
        let fee = buyer_pays - seller_receives;
        let feed_in_paid = params.feed_in_tariff.cost_of(s_alloc.saturating_sub(dq));
        let retail_charged = params.retail_tariff.cost_of(b_alloc.saturating_sub(dq));
        let entry = |net: &mut BTreeMap<HouseholdId, Transfer>, h: &HouseholdId| {
            net.entry(h.clone())
                .or_insert_with(|| Transfer {
                    household: h.clone(),
                    amount: Micros(0),
                    delivered_wh: WattHours(0),
                    received_wh: WattHours(0),
                })
                .clone()
        };
        let mut s = entry(&mut net, &t.seller);
        s.amount += seller_receives + feed_in_paid;
        s.delivered_wh += dq;
        net.insert(t.seller.clone(), s);
        let mut b = entry(&mut net, &t.buyer);
        b.amount -= buyer_pays + retail_charged;
        b.received_wh += dq;
        net.insert(t.buyer.clone(), b);
        traded += seller_receives;
        lines.push(TradeLine {
            index,
            buyer: t.buyer.clone(),
            seller: t.seller.clone(),
            contracted_wh: t.quantity_wh,
            seller_alloc_wh: s_alloc,
            buyer_alloc_wh: b_alloc,
            settled_wh: dq,
            seller_receives,
            buyer_pays,
            fee,
            feed_in_paid,
            retail_charged,
        });
    }
    let transfers: Vec<Transfer> = net.into_values().collect();
    let utility = -transfers.iter().map(|t| t.amount).sum::<Micros>();
    Reconciliation {
        lines,
        transfers,
        utility,
        traded,
    }
}

/// One meter's delivery over `[start, end)` from its signed readings (the
/// rule of the module docs), as a pure function so that a verifier holding
/// the published readings computes exactly what the engine did.
///
/// Returns the counter deltas `(import, export)` when the meter has a usable
/// baseline and end reading, and the evidence: the indices of every reading
/// (of any status) from the baseline's timestamp (or `start`, without one)
/// up to `end`, in sequence order. The evidence is what the readings root
/// commits to.
pub fn meter_delivery(
    readings: &[Reading],
    start: UnixMs,
    end: UnixMs,
) -> (Option<(WattHours, WattHours)>, Vec<usize>) {
    let usable = |r: &&Reading| r.status != DeviceStatus::Error;
    let key = |r: &&Reading| (r.ts, r.seq);
    let base = readings
        .iter()
        .filter(usable)
        .filter(|r| r.ts <= start)
        .max_by_key(key)
        .or_else(|| {
            readings
                .iter()
                .filter(usable)
                .filter(|r| r.ts > start && r.ts <= end)
                .min_by_key(key)
        });
    let last = readings
        .iter()
        .filter(usable)
        .filter(|r| r.ts <= end)
        .max_by_key(key);
    let deltas = match (base, last) {
        (Some(b), Some(l)) => Some((
            l.import_wh.saturating_sub(b.import_wh),
            l.export_wh.saturating_sub(b.export_wh),
        )),
        _ => None,
    };
    let from = base.map_or(start, |b| b.ts);
    let mut evidence: Vec<usize> = (0..readings.len())
        .filter(|&i| readings[i].ts >= from && readings[i].ts <= end)
        .collect();
    evidence.sort_by_key(|&i| readings[i].seq);
    (deltas, evidence)
}

/// The stored signed readings of a meter that can matter for `[start, end)`:
/// from its last usable reading at or before `start` (or from `start`) up to
/// `end`, decoded from the exact envelopes (never from the columns).
pub async fn meter_readings(
    pool: &SqlitePool,
    meter: &MeterId,
    start: UnixMs,
    end: UnixMs,
) -> Result<Vec<(Reading, Vec<u8>)>, StoreError> {
    let (s, e) = (to_i64(start.0, "time")?, to_i64(end.0, "time")?);
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT envelope FROM readings WHERE meter = ? AND ts <= ? AND ts >= \
         (SELECT COALESCE(MAX(ts), ?) FROM readings WHERE meter = ? AND ts <= ? AND status <> 'error') \
         ORDER BY seq",
    )
    .bind(meter.as_str())
    .bind(e)
    .bind(s)
    .bind(meter.as_str())
    .bind(s)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|env| {
            let corrupt = |why: String| StoreError::Corrupt(format!("reading of {meter}: {why}"));
            let decoded = SignedEnvelope::decode(&env).map_err(|e| corrupt(e.to_string()))?;
            let r: Reading =
                decode_payload(&decoded.payload).map_err(|e| corrupt(e.to_string()))?;
            if r.meter != *meter {
                return Err(corrupt("signed payload names another meter".into()));
            }
            Ok((r, env))
        })
        .collect()
}

/// Measures a household's delivery over `[start, end)` from its meters'
/// signed readings, and returns the envelopes of the readings that back it
/// (per meter: the baseline and every reading up to `end`, in seq order).
pub async fn measure(
    pool: &SqlitePool,
    meters: &[MeterId],
    start: UnixMs,
    end: UnixMs,
) -> Result<(Delivery, Vec<(MeterId, i64, Vec<u8>)>), StoreError> {
    let mut per_meter = Vec::with_capacity(meters.len());
    for m in meters {
        per_meter.push((m.clone(), meter_readings(pool, m, start, end).await?));
    }
    Ok(delivery_of(&per_meter, start, end))
}

/// A meter's decoded readings, each with its exact signed envelope.
pub type MeterReadings = (MeterId, Vec<(Reading, Vec<u8>)>);

/// A household's delivery and evidence from its meters' decoded readings
/// (pure; see [`meter_delivery`]).
pub fn delivery_of(
    per_meter: &[MeterReadings],
    start: UnixMs,
    end: UnixMs,
) -> (Delivery, Vec<(MeterId, i64, Vec<u8>)>) {
    let mut delivery = Delivery::default();
    let mut evidence = Vec::new();
    for (m, rows) in per_meter {
        let readings: Vec<Reading> = rows.iter().map(|(r, _)| r.clone()).collect();
        let (deltas, ev) = meter_delivery(&readings, start, end);
        if let Some((import, export)) = deltas {
            delivery.has_data = true;
            delivery.import_wh += import;
            delivery.export_wh += export;
        }
        for i in ev {
            // seq fits i64: intake refuses larger ones.
            let seq = i64::try_from(readings[i].seq).unwrap_or(i64::MAX);
            evidence.push((m.clone(), seq, rows[i].1.clone()));
        }
    }
    (delivery, evidence)
}

/// Whether every meter has reported at or after `end` (so its counter at
/// `end` is known).
pub async fn readings_complete(
    pool: &SqlitePool,
    meters: &[MeterId],
    end: UnixMs,
) -> Result<bool, StoreError> {
    let e = to_i64(end.0, "time")?;
    for m in meters {
        let seen: bool =
            sqlx::query_scalar("SELECT EXISTS(SELECT 1 FROM readings WHERE meter = ? AND ts >= ?)")
                .bind(m.as_str())
                .bind(e)
                .fetch_one(pool)
                .await?;
        if !seen {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlementStatus {
    Pending,
    Submitted,
    Confirmed,
    Final,
}

impl SettlementStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementStatus::Pending => "pending",
            SettlementStatus::Submitted => "submitted",
            SettlementStatus::Confirmed => "confirmed",
            SettlementStatus::Final => "final",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<SettlementStatus> {
        Some(match s {
            "pending" => SettlementStatus::Pending,
            "submitted" => SettlementStatus::Submitted,
            "confirmed" => SettlementStatus::Confirmed,
            "final" => SettlementStatus::Final,
            _ => return None,
        })
    }
}

/// A recorded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRecord {
    pub interval: IntervalId,
    /// Position in the chain, from 1.
    pub seq: u64,
    pub status: SettlementStatus,
    pub hash: Hash32,
    pub batch: SettlementBatch,
    pub confirmations: u64,
    pub tx_hash: Option<String>,
}

/// Why a batch could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("batch names previous hash {got}, but the chain ends at {expected}")]
    ChainMismatch { expected: Hash32, got: Hash32 },
    #[error("interval {0} is not after the last settled interval")]
    OutOfOrder(u64),
    #[error("batch of interval {0} does not sum to zero")]
    Unbalanced(u64),
    #[error("signing: {0}")]
    Sign(#[from] EnvelopeError),
    #[error("backend: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for SettlementError {
    fn from(e: sqlx::Error) -> Self {
        SettlementError::Store(StoreError::Db(e))
    }
}

/// A boxed future, so that backends are object-safe (`Arc<dyn Settlement>`).
pub type SettleFuture<'a> = BoxFuture<'a, Result<SettlementRecord, SettlementError>>;

/// A settlement backend. `submit` is idempotent per interval: submitting a
/// batch for an interval that is already recorded returns the existing
/// record and changes nothing.
pub trait Settlement: Send + Sync {
    /// The backend's name, e.g. `ledger`.
    fn name(&self) -> &'static str;
    /// Records (or starts recording) a batch.
    fn submit<'a>(&'a self, batch: &'a SettlementBatch) -> SettleFuture<'a>;
    /// Moves recorded batches forward through their states (broadcast,
    /// confirmations, fee bumps, reorgs). The settler calls it on every
    /// round; a backend that is final at once (the ledger) does nothing.
    fn drive(&self) -> BoxFuture<'_, Result<(), SettlementError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The embedded backend: a hash-chained, engine-signed table.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: SqlitePool,
    key: SigningKey,
}

impl Ledger {
    /// A ledger in `pool`, signing with `key`.
    pub fn new(pool: SqlitePool, key: SigningKey) -> Ledger {
        Ledger { pool, key }
    }

    async fn submit_inner(
        &self,
        batch: &SettlementBatch,
        now: i64,
    ) -> Result<SettlementRecord, SettlementError> {
        self.record_batch(batch, SettlementStatus::Final, "ledger", now)
            .await
    }

    /// Appends a batch to the hash chain with the given initial status
    /// (`final` for the ledger itself; `pending` for a backend that still has
    /// to carry it elsewhere, such as a chain). Idempotent per interval.
    pub async fn record_batch(
        &self,
        batch: &SettlementBatch,
        status: SettlementStatus,
        backend: &str,
        now: i64,
    ) -> Result<SettlementRecord, SettlementError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(existing) = record_in(&mut tx, batch.interval).await? {
            tx.rollback().await?;
            return Ok(existing);
        }
        let (seq, expected, tip_interval) = chain_tip_in(&mut tx).await?;
        if tip_interval.is_some_and(|t| t >= batch.interval.0) {
            return Err(SettlementError::OutOfOrder(batch.interval.0));
        }
        if batch.prev_hash != expected {
            return Err(SettlementError::ChainMismatch {
                expected,
                got: batch.prev_hash,
            });
        }
        if !batch.balances() {
            return Err(SettlementError::Unbalanced(batch.interval.0));
        }
        let json = canonical_json(batch);
        let env = SignedEnvelope::sign(Domain::Batch, &self.key, json.clone())?;
        let json = String::from_utf8(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let hash = batch.hash();
        let start = to_i64(batch.interval.0, "interval")?;
        let seq = seq + 1;
        sqlx::query(
            "INSERT INTO settlements (interval_start, seq, status, hash, prev_hash, batch_json, signature, households, \
             utility_micros, confirmations, tx_hash, created_at, updated_at, backend) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?, ?)",
        )
        .bind(start)
        .bind(to_i64(seq, "seq")?)
        .bind(status.as_str())
        .bind(hash.to_hex())
        .bind(batch.prev_hash.to_hex())
        .bind(&json)
        .bind(env.encode())
        .bind(i64::try_from(batch.transfers.len()).unwrap_or(i64::MAX))
        .bind(batch.utility.0)
        .bind(now)
        .bind(now)
        .bind(backend)
        .execute(&mut *tx)
        .await?;
        for t in &batch.transfers {
            sqlx::query(
                "INSERT INTO transfers (interval_start, household, amount, delivered_wh, received_wh) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(start)
            .bind(t.household.as_str())
            .bind(t.amount.0)
            .bind(to_i64(t.delivered_wh.0, "energy")?)
            .bind(to_i64(t.received_wh.0, "energy")?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(SettlementRecord {
            interval: batch.interval,
            seq,
            status,
            hash,
            batch: batch.clone(),
            confirmations: 0,
            tx_hash: None,
        })
    }
}

impl Settlement for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn submit<'a>(&'a self, batch: &'a SettlementBatch) -> SettleFuture<'a> {
        Box::pin(async move {
            // The ledger stamps rows with the batch's own interval end rather
            // than a clock: the ledger has no clock, and the stamp is
            // informational only.
            let now = to_i64(batch.interval.0, "interval")?;
            self.submit_inner(batch, now).await
        })
    }
}

/// (seq, hash, interval) of the newest record, or (0, zero, none) for an
/// empty chain.
async fn chain_tip_in(
    conn: &mut SqliteConnection,
) -> Result<(u64, Hash32, Option<u64>), StoreError> {
    let row: Option<(i64, String, i64)> = sqlx::query_as(
        "SELECT seq, hash, interval_start FROM settlements ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok((0, Hash32::ZERO, None)),
        Some((seq, hash, interval)) => Ok((
            to_u64(seq, "seq")?,
            Hash32::from_hex(&hash)
                .map_err(|e| StoreError::Corrupt(format!("settlement hash: {e}")))?,
            Some(to_u64(interval, "interval")?),
        )),
    }
}

/// The hash the next batch must name as its predecessor.
pub async fn chain_tip(pool: &SqlitePool) -> Result<Hash32, StoreError> {
    let mut conn = pool.acquire().await?;
    Ok(chain_tip_in(&mut conn).await?.1)
}

async fn record_in(
    conn: &mut SqliteConnection,
    interval: IntervalId,
) -> Result<Option<SettlementRecord>, StoreError> {
    let row: Option<(i64, String, String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT seq, status, hash, batch_json, confirmations, tx_hash FROM settlements WHERE interval_start = ?",
    )
    .bind(to_i64(interval.0, "interval")?)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((seq, status, hash, json, confirmations, tx_hash)) = row else {
        return Ok(None);
    };
    let corrupt = |why: String| StoreError::Corrupt(format!("settlement of {}: {why}", interval.0));
    Ok(Some(SettlementRecord {
        interval,
        seq: to_u64(seq, "seq")?,
        status: SettlementStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("status {status}")))?,
        hash: Hash32::from_hex(&hash).map_err(|e| corrupt(e.to_string()))?,
        batch: serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?,
        confirmations: to_u64(confirmations, "confirmations")?,
        tx_hash,
    }))
}

/// The recorded batch of an interval, if any.
pub async fn record(
    pool: &SqlitePool,
    interval: IntervalId,
) -> Result<Option<SettlementRecord>, StoreError> {
    let mut conn = pool.acquire().await?;
    record_in(&mut conn, interval).await
}

/// Why the ledger does not verify.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ledger record {seq} (interval {interval}): {why}")]
    Broken {
        seq: i64,
        interval: i64,
        why: String,
    },
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        LedgerError::Store(StoreError::Db(e))
    }
}

/// Checks the whole chain: contiguous sequence, increasing intervals, each
/// stored hash equal to the hash of its batch, each batch naming its
/// predecessor, money summing to zero, the transfers table agreeing with the
/// batch, and the engine's signature (under a key from `engine_keys`)
/// covering exactly the stored batch. Returns the number of records.
pub async fn verify_ledger(pool: &SqlitePool) -> Result<usize, LedgerError> {
    let mut conn = pool.acquire().await?;
    verify_ledger_on(&mut conn).await
}

/// [`verify_ledger`] on one connection (e.g. inside a transaction).
pub async fn verify_ledger_on(conn: &mut SqliteConnection) -> Result<usize, LedgerError> {
    let keys: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT key_id, public_key FROM engine_keys")
        .fetch_all(&mut *conn)
        .await?;
    let mut engine_keys: HashMap<String, VerifyingKey> = HashMap::new();
    for (id, bytes) in keys {
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("engine key {id} is not 32 bytes")))?;
        let key = VerifyingKey::from_bytes(&arr)
            .map_err(|_| StoreError::Corrupt(format!("engine key {id} is invalid")))?;
        if KeyId::of(&key).0 != id {
            return Err(
                StoreError::Corrupt(format!("engine key {id} does not match its id")).into(),
            );
        }
        engine_keys.insert(id, key);
    }
    type Row = (i64, i64, String, String, String, String, Vec<u8>, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, interval_start, status, hash, prev_hash, batch_json, signature, households, utility_micros \
         FROM settlements ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut prev = Hash32::ZERO;
    let mut last_interval: Option<i64> = None;
    for (i, (seq, interval, status, hash, prev_hash, json, signature, households, utility)) in
        rows.iter().enumerate()
    {
        let broken = |why: String| LedgerError::Broken {
            seq: *seq,
            interval: *interval,
            why,
        };
        if i64::try_from(i + 1).ok() != Some(*seq) {
            return Err(broken(format!("sequence gap: expected {}", i + 1)));
        }
        if last_interval.is_some_and(|l| *interval <= l) {
            return Err(broken("intervals are not increasing".into()));
        }
        last_interval = Some(*interval);
        if SettlementStatus::parse(status).is_none() {
            return Err(broken(format!("unknown status {status}")));
        }
        let batch: SettlementBatch =
            serde_json::from_str(json).map_err(|e| broken(format!("batch does not parse: {e}")))?;
        if canonical_json(&batch) != json.as_bytes() {
            return Err(broken("batch JSON is not canonical".into()));
        }
        if batch.hash().to_hex() != *hash {
            return Err(broken("stored hash is not the batch's hash".into()));
        }
        if batch.prev_hash != prev || prev_hash != &prev.to_hex() {
            return Err(broken("does not link to the previous record".into()));
        }
        if i64::try_from(batch.interval.0).ok() != Some(*interval) {
            return Err(broken("batch names another interval".into()));
        }
        if !batch.balances() || batch.utility.0 != *utility {
            return Err(broken("money does not sum to zero".into()));
        }
        if i64::try_from(batch.transfers.len()).ok() != Some(*households) {
            return Err(broken("household count disagrees with the batch".into()));
        }
        let env = SignedEnvelope::decode_for(Domain::Batch, signature)
            .map_err(|e| broken(format!("signature envelope: {e}")))?;
        let key = engine_keys
            .get(&env.key_id.0)
            .ok_or_else(|| broken(format!("unknown engine key {}", env.key_id)))?;
        env.verify(Domain::Batch, key)
            .map_err(|_| broken("engine signature does not verify".into()))?;
        if env.payload != json.as_bytes() {
            return Err(broken("signature covers another batch".into()));
        }
        let stored: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT household, amount, delivered_wh, received_wh FROM transfers WHERE interval_start = ? ORDER BY household",
        )
        .bind(interval)
        .fetch_all(&mut *conn)
        .await?;
        let expected: Vec<(String, i64, i64, i64)> = batch
            .transfers
            .iter()
            .map(|t| {
                (
                    t.household.to_string(),
                    t.amount.0,
                    i64::try_from(t.delivered_wh.0).unwrap_or(-1),
                    i64::try_from(t.received_wh.0).unwrap_or(-1),
                )
            })
            .collect();
        if stored != expected {
            return Err(broken("transfers table disagrees with the batch".into()));
        }
        prev = batch.hash();
    }
    Ok(rows.len())
}

/// Records the engine's public key so that [`verify_ledger`] can check
/// signatures from the database alone.
pub async fn register_engine_key(
    pool: &SqlitePool,
    key: &VerifyingKey,
    now: UnixMs,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO engine_keys (key_id, public_key, added_at) VALUES (?, ?, ?) ON CONFLICT(key_id) DO NOTHING")
        .bind(KeyId::of(key).0)
        .bind(key.as_bytes().as_slice())
        .bind(to_i64(now.0, "time")?)
        .execute(pool)
        .await?;
    Ok(())
}
