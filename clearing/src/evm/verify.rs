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
use super::contract::{batch_digest, grid_word};
use crate::book;
use crate::error::{StoreError, to_i64};
use crate::settlement::{self, Delivery, delivery_of, reconcile};
use crate::settler::traders;
use alloy::primitives::Address;
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

/// Household keys by key id, and meters by household, as enrolled.
async fn registry(
    pool: &SqlitePool,
) -> Result<
    (
        HashMap<String, (HouseholdId, VerifyingKey)>,
        BTreeMap<HouseholdId, Vec<MeterId>>,
    ),
    VerifyError,
> {
    let rows: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT key_id, household, public_key FROM keys")
            .fetch_all(pool)
            .await?;
    let mut keys = HashMap::new();
    for (id, h, bytes) in rows {
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::Bad(format!("key {id} is not 32 bytes")))?;
        let vk = VerifyingKey::from_bytes(&arr)
            .map_err(|_| VerifyError::Bad(format!("key {id} is invalid")))?;
        if KeyId::of(&vk).0 != id {
            return Err(VerifyError::Bad(format!("key {id} does not match its id")));
        }
        let h = HouseholdId::new(h).map_err(|e| VerifyError::Bad(e.to_string()))?;
        keys.insert(id, (h, vk));
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT meter, household FROM meters ORDER BY meter")
            .fetch_all(pool)
            .await?;
    let mut meters: BTreeMap<HouseholdId, Vec<MeterId>> = BTreeMap::new();
    for (m, h) in rows {
        let h = HouseholdId::new(h).map_err(|e| VerifyError::Bad(e.to_string()))?;
        let m = MeterId::new(m).map_err(|e| VerifyError::Bad(e.to_string()))?;
        meters.entry(h).or_default().push(m);
    }
    Ok((keys, meters))
}

async fn engine_keys(pool: &SqlitePool) -> Result<HashMap<String, VerifyingKey>, VerifyError> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT key_id, public_key FROM engine_keys")
        .fetch_all(pool)
        .await?;
    let mut out = HashMap::new();
    for (id, bytes) in rows {
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::Bad(format!("engine key {id} is not 32 bytes")))?;
        let vk = VerifyingKey::from_bytes(&arr)
            .map_err(|_| VerifyError::Bad(format!("engine key {id} is invalid")))?;
        out.insert(id, vk);
    }
    Ok(out)
}

fn signed_by(
    env: &SignedEnvelope,
    domain: Domain,
    keys: &HashMap<String, (HouseholdId, VerifyingKey)>,
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
    let mut rep = Report {
        interval: interval.0,
        ok: true,
        checks: Vec::new(),
    };
    let (keys, meters) = registry(pool).await?;
    let ekeys = engine_keys(pool).await?;

    // The engine's signed result.
    let cleared = book::stored_result(pool, interval)
        .await?
        .ok_or(VerifyError::NotCleared(interval.0))?;
    let env = SignedEnvelope::decode(&cleared.envelope)
        .map_err(|e| VerifyError::Bad(format!("result envelope: {e}")))?;
    let sig_ok = ekeys
        .get(&env.key_id.0)
        .is_some_and(|k| env.verify(Domain::Result, k).is_ok());
    rep.check("result signed by the engine", sig_ok, env.key_id.0.clone());
    let signed: ClearingResult = decode_payload(&env.payload)
        .map_err(|e| VerifyError::Bad(format!("result payload: {e}")))?;

    // Orders: every envelope signed by its household's enrolled key.
    let orders = book::load_orders(pool, interval).await?;
    let bad_orders: Vec<String> = orders
        .iter()
        .filter(|o| {
            SignedEnvelope::decode(&o.envelope)
                .map(|e| !signed_by(&e, Domain::Order, &keys, &o.order.household))
                .unwrap_or(true)
        })
        .map(|o| o.order.id())
        .collect();
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
    type TradeRow = (String, String, String, String, i64, i64, i64);
    let rows: Vec<TradeRow> = sqlx::query_as(
        "SELECT buyer, seller, buy_order, sell_order, quantity_wh, price, buyer_price FROM trades \
         WHERE interval_start = ? ORDER BY idx",
    )
    .bind(to_i64(interval.0, "interval")?)
    .fetch_all(pool)
    .await?;
    let table: Vec<TradeRow> = recomputed
        .trades
        .iter()
        .map(|t: &Trade| {
            (
                t.buyer.to_string(),
                t.seller.to_string(),
                t.buy_order.clone(),
                t.sell_order.clone(),
                i64::try_from(t.quantity_wh.0).unwrap_or(-1),
                i64::try_from(t.price.0).unwrap_or(-1),
                i64::try_from(t.buyer_price.0).unwrap_or(-1),
            )
        })
        .collect();
    rep.check(
        "stored trades equal the re-run auction",
        rows == table,
        format!("{} stored", rows.len()),
    );

    // Reconciliation from the signed readings.
    let rec = settlement::record(pool, interval)
        .await?
        .ok_or(VerifyError::NotSettled(interval.0))?;
    let (start, end) = (interval.start(), interval.end(interval_ms));
    let mut deliveries: BTreeMap<HouseholdId, Delivery> = BTreeMap::new();
    let mut evidence = Vec::new();
    let mut bad_readings = Vec::new();
    for h in traders(&recomputed.trades) {
        let ms = meters.get(&h).cloned().unwrap_or_default();
        let mut per_meter = Vec::new();
        for m in &ms {
            let rows = settlement::meter_readings(pool, m, start, end).await?;
            for (r, env) in &rows {
                let ok = SignedEnvelope::decode(env)
                    .map(|e| signed_by(&e, Domain::Reading, &keys, &h))
                    .unwrap_or(false);
                if !ok || r.household != h {
                    bad_readings.push(format!("{}#{}", r.meter, r.seq));
                }
            }
            per_meter.push((m.clone(), rows));
        }
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
        prev_hash: rec.batch.prev_hash,
        orders_root: recomputed.orders_root,
        trades_root: recomputed.trades_root,
        readings_root,
        transfers: recon.transfers.clone(),
        utility: recon.utility,
    };
    rep.check(
        "readings root",
        batch.readings_root == rec.batch.readings_root,
        format!(
            "recomputed {} recorded {}",
            batch.readings_root, rec.batch.readings_root
        ),
    );
    rep.check(
        "reconciliation gives the recorded transfers",
        batch.transfers == rec.batch.transfers && batch.utility == rec.batch.utility,
        format!(
            "utility {} recorded {}",
            batch.utility.0, rec.batch.utility.0
        ),
    );
    rep.check("money sums to zero", batch.balances(), "");
    rep.check(
        "batch hash",
        batch.hash() == rec.hash,
        format!("recomputed {} recorded {}", batch.hash(), rec.hash),
    );
    let prev_ok = match rec.seq {
        1 => rec.batch.prev_hash == protocol::Hash32::ZERO,
        seq => {
            let prev: Option<String> =
                sqlx::query_scalar("SELECT hash FROM settlements WHERE seq = ?")
                    .bind(to_i64(seq - 1, "seq")?)
                    .fetch_optional(pool)
                    .await?;
            prev.as_deref() == Some(rec.batch.prev_hash.to_hex().as_str())
        }
    };
    rep.check(
        "names the previous batch",
        prev_ok,
        rec.batch.prev_hash.to_hex(),
    );

    if let Some((chain, contract)) = chain {
        let onchain = chain
            .batch_digest(contract, grid_word(&signed.grid), interval.0)
            .await?;
        let ours = batch_digest(&batch);
        rep.check(
            "roots on chain",
            onchain == ours,
            format!("chain {onchain} recomputed {ours}"),
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

/// Builds the proof bundle of `household` for `interval`.
pub async fn proof_bundle(
    pool: &SqlitePool,
    household: &HouseholdId,
    interval: IntervalId,
) -> Result<ProofBundle, VerifyError> {
    let cleared = book::stored_result(pool, interval)
        .await?
        .ok_or(VerifyError::NotCleared(interval.0))?;
    let env = SignedEnvelope::decode(&cleared.envelope)
        .map_err(|e| VerifyError::Bad(format!("result envelope: {e}")))?;
    let ekeys = engine_keys(pool).await?;
    let ekey = ekeys
        .get(&env.key_id.0)
        .ok_or_else(|| VerifyError::Bad("result signed by an unknown engine key".into()))?;
    let orders = book::load_orders(pool, interval).await?;
    let otree = MerkleTree::new(orders.iter().map(|o| o.envelope.as_slice()));
    let mut own_orders = Vec::new();
    for (i, o) in orders.iter().enumerate() {
        if &o.order.household == household {
            let p = otree
                .proof(i)
                .ok_or_else(|| VerifyError::Bad("order proof".into()))?;
            own_orders.push((hex::encode(&o.envelope), p));
        }
    }
    let trades = &cleared.result.trades;
    let ttree = MerkleTree::new(trades.iter().map(canonical_json));
    let mut own_trades = Vec::new();
    for (i, t) in trades.iter().enumerate() {
        if &t.buyer == household || &t.seller == household {
            let p = ttree
                .proof(i)
                .ok_or_else(|| VerifyError::Bad("trade proof".into()))?;
            own_trades.push((t.clone(), p));
        }
    }
    let row: Option<(String, Vec<u8>)> =
        sqlx::query_as("SELECT batch_json, signature FROM settlements WHERE interval_start = ?")
            .bind(to_i64(interval.0, "interval")?)
            .fetch_optional(pool)
            .await?;
    let (batch_json, sig) = row.ok_or(VerifyError::NotSettled(interval.0))?;
    let batch: SettlementBatch =
        serde_json::from_str(&batch_json).map_err(|e| VerifyError::Bad(format!("batch: {e}")))?;
    Ok(ProofBundle {
        household: household.clone(),
        interval: interval.0,
        engine_key: hex::encode(ekey.as_bytes()),
        result_envelope: hex::encode(&cleared.envelope),
        orders: own_orders,
        trades: own_trades,
        transfer: batch
            .transfers
            .iter()
            .find(|t| &t.household == household)
            .cloned(),
        batch_json,
        batch_signature: hex::encode(sig),
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
        .and_then(|bytes| SignedEnvelope::decode(&bytes).ok());
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
        .and_then(|bytes| SignedEnvelope::decode(&bytes).ok());
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
