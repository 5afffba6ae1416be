//! Verification anyone can run: from an interval's signed inputs (the
//! households' order and reading envelopes, the engine's signed result and
//! batch), re-run the auction and the reconciliation, recompute every root
//! and the batch, and check them against what the engine published and what
//! the chain holds. Also the household's offline inclusion proofs.
//!
//! Nothing here trusts a decoded column of the engine's database: orders and
//! readings come from their exact signed envelopes, checked against the
//! households' enrolled keys; the tables of trades and transfers are
//! compared with the recomputation, never used as input.

use super::EvmError;
use super::chain::Chain;
use super::contract::{VoltshareSettlement, batch_digest, grid_word, word};
use crate::book;
use crate::error::{StoreError, to_i64};
use crate::settlement::{self, Delivery, delivery_of, reconcile};
use crate::settler::traders;
use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use ed25519_dalek::VerifyingKey;
use protocol::{
    ClearingResult, Domain, HouseholdId, IntervalId, KeyId, MerkleProof, MerkleTree, MeterId,
    Order, SettlementBatch, SignedEnvelope, Trade, Transfer, canonical_json, decode_payload,
};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use std::collections::{BTreeMap, HashMap};

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The outcome of verifying one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub interval: u64,
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.ok &= ok;
        self.checks.push(Check {
            name: name.to_owned(),
            ok,
            detail: detail.into(),
        });
    }
}

/// Why verification could not run at all (as opposed to a failed check).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chain(#[from] EvmError),
    #[error("interval {0} was not cleared")]
    NotCleared(u64),
    #[error("interval {0} has no settlement batch")]
    NotSettled(u64),
    #[error("{0}")]
    Bad(String),
}

impl From<sqlx::Error> for VerifyError {
    fn from(e: sqlx::Error) -> Self {
        VerifyError::Store(StoreError::Db(e))
    }
}

/// One public key as published (hex of its 32 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    pub key_id: String,
    /// Empty for the engine's own keys.
    #[serde(default)]
    pub household: String,
    pub public_key: String,
}

/// An enrolled meter and its household.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedMeter {
    pub meter: String,
    pub household: String,
}

/// One row of the engine's trades table (what the dashboard shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTrade {
    pub buyer: String,
    pub seller: String,
    pub buy_order: String,
    pub sell_order: String,
    pub quantity_wh: u64,
    /// Micro-units per kWh, the seller's.
    pub price: u64,
    /// Micro-units per kWh, the buyer's (price plus grid fee).
    pub buyer_price: u64,
}

/// The engine-signed settlement batch of the interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedBatch {
    /// Position in the engine's hash chain, from 1.
    pub seq: u64,
    /// The batch exactly as signed (JSON).
    pub batch_json: String,
    /// The signature envelope over `batch_json` (hex).
    pub signature: String,
    /// Hash (hex) of the batch before it in the chain; `None` for the first.
    pub previous_hash: Option<String>,
}

/// Everything an interval's verification needs, as the engine publishes it
/// (its API serves this at `/api/published/{interval}`): the signed
/// inputs as their exact envelopes (hex), the public keys to check them
/// with, and the engine's own claims (signed result, trades table, signed
/// batch). A verifier trusts none of the claims: it recomputes them from
/// the envelopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub interval: u64,
    /// The engine's signing keys.
    pub engine_keys: Vec<PublishedKey>,
    /// Every enrolled household key (revoked ones too: old signatures stay
    /// checkable).
    pub household_keys: Vec<PublishedKey>,
    pub meters: Vec<PublishedMeter>,
    /// The engine-signed clearing result.
    pub result_envelope: String,
    /// Every accepted order envelope of the interval.
    pub orders: Vec<String>,
    /// The reading envelopes settlement measured delivery from: for each
    /// trading household's meters, the baseline at or before the interval's
    /// start and every reading up to its end.
    pub readings: Vec<String>,
    pub trades: Vec<PublishedTrade>,
    /// `None` while the interval is not settled.
    pub batch: Option<PublishedBatch>,
}

/// Gathers what the engine publishes for `interval` from its database;
/// `None` if the interval was not cleared. Envelopes are copied as stored,
/// never re-encoded.
pub async fn published(
    pool: &SqlitePool,
    interval: IntervalId,
    interval_ms: u64,
) -> Result<Option<Published>, VerifyError> {
    let Some(cleared) = book::stored_result(pool, interval).await? else {
        return Ok(None);
    };
    let at = to_i64(interval.0, "interval")?;
    let engine_keys: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT key_id, public_key FROM engine_keys ORDER BY key_id")
            .fetch_all(pool)
            .await?;
    let household_keys: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT key_id, household, public_key FROM keys ORDER BY key_id")
            .fetch_all(pool)
            .await?;
    let meters: Vec<(String, String)> =
        sqlx::query_as("SELECT meter, household FROM meters ORDER BY meter")
            .fetch_all(pool)
            .await?;
    let orders: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT envelope FROM orders WHERE interval_start = ? ORDER BY household, nonce",
    )
    .bind(at)
    .fetch_all(pool)
    .await?;
    let (start, end) = (interval.start(), interval.end(interval_ms));
    let mut readings = Vec::new();
    for h in traders(&cleared.result.trades) {
        for (m, owner) in &meters {
            if owner.as_str() != h.as_str() {
                continue;
            }
            let m = MeterId::new(m.clone()).map_err(|e| VerifyError::Bad(e.to_string()))?;
            for (_, env) in settlement::meter_readings(pool, &m, start, end).await? {
                readings.push(hex::encode(env));
            }
        }
    }
    type TradeRow = (String, String, String, String, i64, i64, i64);
    let trades: Vec<TradeRow> = sqlx::query_as(
        "SELECT buyer, seller, buy_order, sell_order, quantity_wh, price, buyer_price FROM trades \
         WHERE interval_start = ? ORDER BY idx",
    )
    .bind(at)
    .fetch_all(pool)
    .await?;
    let batch: Option<(i64, String, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, batch_json, signature FROM settlements WHERE interval_start = ?",
    )
    .bind(at)
    .fetch_optional(pool)
    .await?;
    let batch = match batch {
        None => None,
        Some((seq, batch_json, signature)) => {
            let previous_hash: Option<String> =
                sqlx::query_scalar("SELECT hash FROM settlements WHERE seq = ?")
                    .bind(seq - 1)
                    .fetch_optional(pool)
                    .await?;
            Some(PublishedBatch {
                seq: u64::try_from(seq)
                    .map_err(|_| VerifyError::Bad(format!("settlement seq {seq}")))?,
                batch_json,
                signature: hex::encode(signature),
                previous_hash,
            })
        }
    };
    let n = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
    Ok(Some(Published {
        interval: interval.0,
        engine_keys: engine_keys
            .into_iter()
            .map(|(key_id, k)| PublishedKey {
                key_id,
                household: String::new(),
                public_key: hex::encode(k),
            })
            .collect(),
        household_keys: household_keys
            .into_iter()
            .map(|(key_id, household, k)| PublishedKey {
                key_id,
                household,
                public_key: hex::encode(k),
            })
            .collect(),
        meters: meters
            .into_iter()
            .map(|(meter, household)| PublishedMeter { meter, household })
            .collect(),
        result_envelope: hex::encode(&cleared.envelope),
        orders: orders.into_iter().map(hex::encode).collect(),
        readings,
        trades: trades
            .into_iter()
            .map(
                |(buyer, seller, buy_order, sell_order, q, p, bp)| PublishedTrade {
                    buyer,
                    seller,
                    buy_order,
                    sell_order,
                    quantity_wh: n(q),
                    price: n(p),
                    buyer_price: n(bp),
                },
            )
            .collect(),
        batch,
    }))
}

/// A published key, checked against its id.
fn parse_key(k: &PublishedKey) -> Result<VerifyingKey, VerifyError> {
    let arr: [u8; 32] = hex::decode(&k.public_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| VerifyError::Bad(format!("key {} is not 32 bytes of hex", k.key_id)))?;
    let vk = VerifyingKey::from_bytes(&arr)
        .map_err(|_| VerifyError::Bad(format!("key {} is invalid", k.key_id)))?;
    if KeyId::of(&vk).0 != k.key_id {
        return Err(VerifyError::Bad(format!(
            "key {} does not match its id",
            k.key_id
        )));
    }
    Ok(vk)
}

type HouseholdKeys = HashMap<String, (HouseholdId, VerifyingKey)>;
/// Household keys by key id, meters by household and engine keys by id.
type Registry = (
    HouseholdKeys,
    BTreeMap<HouseholdId, Vec<MeterId>>,
    HashMap<String, VerifyingKey>,
);

/// The published keys and meters, each key checked against its id.
fn registry(p: &Published) -> Result<Registry, VerifyError> {
    let mut keys = HashMap::new();
    for k in &p.household_keys {
        let h =
            HouseholdId::new(k.household.clone()).map_err(|e| VerifyError::Bad(e.to_string()))?;
        keys.insert(k.key_id.clone(), (h, parse_key(k)?));
    }
    let mut meters: BTreeMap<HouseholdId, Vec<MeterId>> = BTreeMap::new();
    for m in &p.meters {
        let h =
            HouseholdId::new(m.household.clone()).map_err(|e| VerifyError::Bad(e.to_string()))?;
        let id = MeterId::new(m.meter.clone()).map_err(|e| VerifyError::Bad(e.to_string()))?;
        meters.entry(h).or_default().push(id);
    }
    for ms in meters.values_mut() {
        ms.sort();
    }
    let mut ekeys = HashMap::new();
    for k in &p.engine_keys {
        ekeys.insert(k.key_id.clone(), parse_key(k)?);
    }
    Ok((keys, meters, ekeys))
}

fn signed_by(
    env: &SignedEnvelope,
    domain: Domain,
    keys: &HouseholdKeys,
    household: &HouseholdId,
) -> bool {
    keys.get(&env.key_id.0)
        .is_some_and(|(h, k)| h == household && env.verify(domain, k).is_ok())
}

/// Verifies one settled interval (of length `interval_ms`, the engine's
/// `interval_ms`) from the engine's database and, given a chain and
/// contract, against the chain.
pub async fn verify_interval(
    pool: &SqlitePool,
    interval: IntervalId,
    interval_ms: u64,
    chain: Option<(&Chain, Address)>,
) -> Result<Report, VerifyError> {
    let p = published(pool, interval, interval_ms)
        .await?
        .ok_or(VerifyError::NotCleared(interval.0))?;
    verify_published(&p, interval_ms, chain).await
}

/// Verifies one interval from what the engine published (its API, or
/// [`published`] on its database) and, given a chain and contract, against
/// the chain: re-runs the auction and the reconciliation from the signed
/// envelopes, recomputes every root and the batch, and compares them with
/// the engine's signed claims and the contract's state.
pub async fn verify_published(
    p: &Published,
    interval_ms: u64,
    chain: Option<(&Chain, Address)>,
) -> Result<Report, VerifyError> {
    let interval = IntervalId(p.interval);
    let mut rep = Report {
        interval: interval.0,
        ok: true,
        checks: Vec::new(),
    };
    let (keys, meters, ekeys) = registry(p)?;
    let unhex = |what: &str, h: &str| {
        hex::decode(h).map_err(|e| VerifyError::Bad(format!("{what}: not hex: {e}")))
    };

    // The engine's signed result.
    let env = SignedEnvelope::decode_for(
        Domain::Result,
        &unhex("result envelope", &p.result_envelope)?,
    )
    .map_err(|e| VerifyError::Bad(format!("result envelope: {e}")))?;
    let engine_key = ekeys.get(&env.key_id.0);
    let sig_ok = engine_key.is_some_and(|k| env.verify(Domain::Result, k).is_ok());
    rep.check("result signed by the engine", sig_ok, env.key_id.0.clone());
    let signed: ClearingResult = decode_payload(&env.payload)
        .map_err(|e| VerifyError::Bad(format!("result payload: {e}")))?;
    rep.check(
        "result is for the interval",
        signed.interval == interval,
        signed.interval.0.to_string(),
    );

    // Orders: every envelope signed by its household's enrolled key.
    let mut orders = Vec::new();
    let mut bad_orders = Vec::new();
    for (i, h) in p.orders.iter().enumerate() {
        let decoded = hex::decode(h).ok().and_then(|bytes| {
            let e = SignedEnvelope::decode(&bytes).ok()?;
            let o: Order = decode_payload(&e.payload).ok()?;
            Some((bytes, e, o))
        });
        match decoded {
            Some((bytes, e, o)) => {
                if !signed_by(&e, Domain::Order, &keys, &o.household) || o.interval != interval {
                    bad_orders.push(o.id());
                }
                orders.push(book::SignedOrder {
                    order: o,
                    envelope: bytes,
                });
            }
            None => bad_orders.push(format!("#{i} does not decode")),
        }
    }
    // The canonical order (household, nonce), whatever order they came in.
    orders.sort_by(|a, b| {
        (a.order.household.as_str(), a.order.nonce)
            .cmp(&(b.order.household.as_str(), b.order.nonce))
    });
    rep.check(
        "orders signed by their households",
        bad_orders.is_empty(),
        format!("{} orders; bad: {bad_orders:?}", orders.len()),
    );
    // Re-run the auction.
    let (recomputed, _) = book::result_of(&signed.grid, interval, &signed.params, &orders);
    rep.check(
        "orders root",
        recomputed.orders_root == signed.orders_root,
        format!(
            "recomputed {} published {}",
            recomputed.orders_root, signed.orders_root
        ),
    );
    rep.check(
        "auction re-run gives the published trades",
        recomputed.trades == signed.trades
            && recomputed.clearing_price == signed.clearing_price
            && recomputed.volume_wh == signed.volume_wh,
        format!(
            "{} trades recomputed, {} published",
            recomputed.trades.len(),
            signed.trades.len()
        ),
    );
    rep.check(
        "trades root",
        recomputed.trades_root == signed.trades_root,
        format!(
            "recomputed {} published {}",
            recomputed.trades_root, signed.trades_root
        ),
    );
    // The trades table (what the dashboard shows) against the recomputation.
    let table: Vec<PublishedTrade> = recomputed
        .trades
        .iter()
        .map(|t: &Trade| PublishedTrade {
            buyer: t.buyer.to_string(),
            seller: t.seller.to_string(),
            buy_order: t.buy_order.to_string(),
            sell_order: t.sell_order.to_string(),
            quantity_wh: t.quantity_wh.0,
            price: t.price.0,
            buyer_price: t.buyer_price.0,
        })
        .collect();
    rep.check(
        "stored trades equal the re-run auction",
        p.trades == table,
        format!("{} stored", p.trades.len()),
    );

    // Reconciliation from the signed readings.
    let rec = p
        .batch
        .as_ref()
        .ok_or(VerifyError::NotSettled(interval.0))?;
    let recorded: SettlementBatch = serde_json::from_str(&rec.batch_json)
        .map_err(|e| VerifyError::Bad(format!("batch: {e}")))?;
    let batch_sig = hex::decode(&rec.signature)
        .ok()
        .and_then(|bytes| SignedEnvelope::decode_for(Domain::Batch, &bytes).ok());
    rep.check(
        "batch signed by the engine",
        batch_sig.is_some_and(|s| {
            ekeys
                .get(&s.key_id.0)
                .is_some_and(|k| s.verify(Domain::Batch, k).is_ok())
                && s.payload == rec.batch_json.as_bytes()
        }),
        "",
    );
    let (start, end) = (interval.start(), interval.end(interval_ms));
    let owner: HashMap<&MeterId, &HouseholdId> = meters
        .iter()
        .flat_map(|(h, ms)| ms.iter().map(move |m| (m, h)))
        .collect();
    let mut by_meter: BTreeMap<MeterId, Vec<(protocol::Reading, Vec<u8>)>> = BTreeMap::new();
    let mut bad_readings = Vec::new();
    for (i, h) in p.readings.iter().enumerate() {
        let decoded = hex::decode(h).ok().and_then(|bytes| {
            let e = SignedEnvelope::decode(&bytes).ok()?;
            let r: protocol::Reading = decode_payload(&e.payload).ok()?;
            Some((bytes, e, r))
        });
        let Some((bytes, e, r)) = decoded else {
            bad_readings.push(format!("#{i} does not decode"));
            continue;
        };
        let ok = owner
            .get(&r.meter)
            .is_some_and(|h| **h == r.household && signed_by(&e, Domain::Reading, &keys, h));
        if !ok {
            bad_readings.push(format!("{}#{}", r.meter, r.seq));
        }
        by_meter
            .entry(r.meter.clone())
            .or_default()
            .push((r, bytes));
    }
    for rows in by_meter.values_mut() {
        rows.sort_by_key(|(r, _)| r.seq);
    }
    let mut deliveries: BTreeMap<HouseholdId, Delivery> = BTreeMap::new();
    let mut evidence = Vec::new();
    for h in traders(&recomputed.trades) {
        let per_meter: Vec<_> = meters
            .get(&h)
            .into_iter()
            .flatten()
            .map(|m| (m.clone(), by_meter.get(m).cloned().unwrap_or_default()))
            .collect();
        let (d, mut ev) = delivery_of(&per_meter, start, end);
        deliveries.insert(h, d);
        evidence.append(&mut ev);
    }
    rep.check(
        "readings signed by their households",
        bad_readings.is_empty(),
        format!("{} readings; bad: {bad_readings:?}", evidence.len()),
    );
    evidence.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    evidence.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let readings_root = MerkleTree::new(evidence.iter().map(|e| e.2.as_slice())).root();
    let recon = reconcile(&recomputed.trades, &deliveries, &signed.params);
    let batch = SettlementBatch {
        grid: signed.grid.clone(),
        interval,
        prev_hash: recorded.prev_hash,
        orders_root: recomputed.orders_root,
        trades_root: recomputed.trades_root,
        readings_root,
        transfers: recon.transfers.clone(),
        utility: recon.utility,
    };
    rep.check(
        "readings root",
        batch.readings_root == recorded.readings_root,
        format!(
            "recomputed {} recorded {}",
            batch.readings_root, recorded.readings_root
        ),
    );
    rep.check(
        "reconciliation gives the recorded transfers",
        batch.transfers == recorded.transfers && batch.utility == recorded.utility,
        format!(
            "utility {} recorded {}",
            batch.utility.0, recorded.utility.0
        ),
    );
    rep.check("money sums to zero", batch.balances(), "");
    rep.check(
        "batch hash",
        batch.hash() == recorded.hash(),
        format!("recomputed {} recorded {}", batch.hash(), recorded.hash()),
    );
    let prev_ok = match (rec.seq, &rec.previous_hash) {
        (1, _) => recorded.prev_hash == protocol::Hash32::ZERO,
        (_, Some(prev)) => *prev == recorded.prev_hash.to_hex(),
        (_, None) => false,
    };
    rep.check(
        "names the previous batch",
        prev_ok,
        recorded.prev_hash.to_hex(),
    );

    if let Some((chain, contract)) = chain {
        // The contract stores a digest of the four roots (see the
        // contract's header for why not the four words).
        let onchain = chain
            .batch_digest(contract, grid_word(&signed.grid), interval.0)
            .await?;
        let ours = batch_digest(&batch);
        rep.check(
            "roots on chain",
            onchain == ours,
            format!("chain {onchain} recomputed {ours}"),
        );
        // And the roots themselves, as the settling transaction logged them.
        let filter = Filter::new()
            .address(contract)
            .event_signature(VoltshareSettlement::BatchSettled::SIGNATURE_HASH)
            .topic1(grid_word(&signed.grid))
            .topic2(B256::from(U256::from(interval.0)));
        let logs = chain.logs(&filter.from_block(0u64)).await?;
        let events: Vec<_> = logs
            .iter()
            .filter(|l| !l.removed)
            .filter_map(|l| VoltshareSettlement::BatchSettled::decode_log(&l.inner).ok())
            .collect();
        let roots_ok = events.len() == 1
            && events.iter().all(|e| {
                e.ordersRoot == word(&batch.orders_root)
                    && e.tradesRoot == word(&batch.trades_root)
                    && e.readingsRoot == word(&batch.readings_root)
                    && e.batchHash == word(&batch.hash())
            });
        rep.check(
            "roots in the settlement event",
            roots_ok,
            format!("{} BatchSettled events", events.len()),
        );
    }
    Ok(rep)
}

/// A household's offline proof bundle for one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofBundle {
    pub household: HouseholdId,
    pub interval: u64,
    /// The engine's key (hex) that signed the result and the batch.
    pub engine_key: String,
    /// The engine-signed result envelope (hex).
    pub result_envelope: String,
    /// The household's orders: envelope (hex) and inclusion proof under
    /// the result's orders root.
    pub orders: Vec<(String, MerkleProof)>,
    /// The household's trades and inclusion proofs under the trades root.
    pub trades: Vec<(Trade, MerkleProof)>,
    /// The engine-signed batch (JSON and signature envelope, hex) and the
    /// household's line in it.
    pub batch_json: String,
    pub batch_signature: String,
    pub transfer: Option<Transfer>,
}

/// Builds the proof bundle of `household` for `interval` from the engine's
/// database.
pub async fn proof_bundle(
    pool: &SqlitePool,
    household: &HouseholdId,
    interval: IntervalId,
    interval_ms: u64,
) -> Result<ProofBundle, VerifyError> {
    let p = published(pool, interval, interval_ms)
        .await?
        .ok_or(VerifyError::NotCleared(interval.0))?;
    proof_from_published(&p, household)
}

/// Builds the proof bundle of `household` from what the engine published
/// (its API): the household's orders and trades with their inclusion
/// proofs under the signed result's roots, and its line of the signed
/// batch. The bundle is then checked offline by [`verify_bundle`].
pub fn proof_from_published(
    p: &Published,
    household: &HouseholdId,
) -> Result<ProofBundle, VerifyError> {
    let bad = |w: &str| VerifyError::Bad(w.to_owned());
    let result_bytes =
        hex::decode(&p.result_envelope).map_err(|_| bad("result envelope: not hex"))?;
    let env = SignedEnvelope::decode_for(Domain::Result, &result_bytes)
        .map_err(|e| VerifyError::Bad(format!("result envelope: {e}")))?;
    let ekey = p
        .engine_keys
        .iter()
        .find(|k| k.key_id == env.key_id.0)
        .ok_or_else(|| bad("result signed by an unknown engine key"))?;
    let result: ClearingResult = decode_payload(&env.payload)
        .map_err(|e| VerifyError::Bad(format!("result payload: {e}")))?;
    // Orders in canonical order, as the orders root commits to them.
    let mut orders = Vec::new();
    for h in &p.orders {
        let bytes = hex::decode(h).map_err(|_| bad("order envelope: not hex"))?;
        let e = SignedEnvelope::decode(&bytes)
            .map_err(|e| VerifyError::Bad(format!("order envelope: {e}")))?;
        let o: Order = decode_payload(&e.payload)
            .map_err(|e| VerifyError::Bad(format!("order payload: {e}")))?;
        orders.push((o, bytes));
    }
    orders.sort_by(|a, b| {
        (a.0.household.as_str(), a.0.nonce).cmp(&(b.0.household.as_str(), b.0.nonce))
    });
    let otree = MerkleTree::new(orders.iter().map(|o| o.1.as_slice()));
    let mut own_orders = Vec::new();
    for (i, (o, bytes)) in orders.iter().enumerate() {
        if &o.household == household {
            let proof = otree.proof(i).ok_or_else(|| bad("order proof"))?;
            own_orders.push((hex::encode(bytes), proof));
        }
    }
    let trades = &result.trades;
    let ttree = MerkleTree::new(trades.iter().map(canonical_json));
    let mut own_trades = Vec::new();
    for (i, t) in trades.iter().enumerate() {
        if &t.buyer == household || &t.seller == household {
            let proof = ttree.proof(i).ok_or_else(|| bad("trade proof"))?;
            own_trades.push((t.clone(), proof));
        }
    }
    let b = p
        .batch
        .as_ref()
        .ok_or(VerifyError::NotSettled(p.interval))?;
    let batch: SettlementBatch =
        serde_json::from_str(&b.batch_json).map_err(|e| VerifyError::Bad(format!("batch: {e}")))?;
    Ok(ProofBundle {
        household: household.clone(),
        interval: p.interval,
        engine_key: ekey.public_key.clone(),
        result_envelope: p.result_envelope.clone(),
        orders: own_orders,
        trades: own_trades,
        transfer: batch
            .transfers
            .iter()
            .find(|t| &t.household == household)
            .cloned(),
        batch_json: b.batch_json.clone(),
        batch_signature: b.signature.clone(),
    })
}

/// Checks a proof bundle offline. `engine_key` (hex) pins the engine's key
/// (otherwise the bundle's own is used, which proves only consistency);
/// `household_key` pins the household's own key for its order signatures.
pub fn verify_bundle(
    b: &ProofBundle,
    engine_key: Option<&str>,
    household_key: Option<&VerifyingKey>,
) -> Report {
    let mut rep = Report {
        interval: b.interval,
        ok: true,
        checks: Vec::new(),
    };
    let ek_hex = engine_key.unwrap_or(&b.engine_key);
    let ek = hex::decode(ek_hex)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
        .and_then(|a| VerifyingKey::from_bytes(&a).ok());
    let Some(ek) = ek else {
        rep.check("engine key", false, "not a valid ed25519 key");
        return rep;
    };
    let result = hex::decode(&b.result_envelope)
        .ok()
        .and_then(|bytes| SignedEnvelope::decode_for(Domain::Result, &bytes).ok());
    let Some(result) = result else {
        rep.check("result envelope", false, "does not decode");
        return rep;
    };
    rep.check(
        "result signed by the engine",
        result.verify(Domain::Result, &ek).is_ok(),
        "",
    );
    let Ok(res) = decode_payload::<ClearingResult>(&result.payload) else {
        rep.check("result payload", false, "does not decode");
        return rep;
    };
    rep.check(
        "result is for the interval",
        res.interval.0 == b.interval,
        "",
    );
    for (env_hex, proof) in &b.orders {
        let bytes = hex::decode(env_hex).unwrap_or_default();
        let included = proof.verify(&res.orders_root, &bytes);
        let order = SignedEnvelope::decode(&bytes)
            .ok()
            .and_then(|e| decode_payload::<Order>(&e.payload).ok().map(|o| (e, o)));
        let own = order.as_ref().is_some_and(|(e, o)| {
            o.household == b.household
                && household_key.is_none_or(|k| e.verify(Domain::Order, k).is_ok())
        });
        let id = order.map_or_else(|| "?".to_owned(), |(_, o)| o.id());
        rep.check(&format!("order {id} included"), included && own, "");
    }
    for (t, proof) in &b.trades {
        let included = proof.verify(&res.trades_root, &canonical_json(t));
        let own = t.buyer == b.household || t.seller == b.household;
        rep.check(
            &format!("trade {}→{} included", t.sell_order, t.buy_order),
            included && own,
            "",
        );
    }
    let sig = hex::decode(&b.batch_signature)
        .ok()
        .and_then(|bytes| SignedEnvelope::decode_for(Domain::Batch, &bytes).ok());
    let batch_ok = sig.is_some_and(|s| {
        s.verify(Domain::Batch, &ek).is_ok() && s.payload == b.batch_json.as_bytes()
    });
    rep.check("batch signed by the engine", batch_ok, "");
    match serde_json::from_str::<SettlementBatch>(&b.batch_json) {
        Ok(batch) => {
            rep.check(
                "batch commits to the result's roots",
                batch.orders_root == res.orders_root && batch.trades_root == res.trades_root,
                "",
            );
            let line = batch.transfers.iter().find(|t| t.household == b.household);
            rep.check(
                "household's transfer is the batch's",
                line == b.transfer.as_ref(),
                format!("{:?}", line.map(|t| t.amount.0)),
            );
            rep.check("batch sums to zero", batch.balances(), "");
        }
        Err(e) => rep.check("batch", false, e.to_string()),
    }
    rep
}
