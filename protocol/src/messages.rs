//! The messages of the protocol. Each is serialized as JSON for the payload of
//! a [`crate::SignedEnvelope`]; the types hold only integers, strings and
//! sequences, so `serde_json` output is deterministic and the same value always
//! hashes the same way.

use crate::ids::{GridId, HouseholdId, MeterId};
use crate::merkle::Hash32;
use crate::units::{IntervalId, MicroPerKwh, Micros, UnixMs, WattHours, Watts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Health of the device a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// All values were read in this poll.
    Ok,
    /// Values are the last good ones; the device did not answer this poll.
    Stale,
    /// The device reported an error; counters must not be used for delivery.
    Error,
}

/// A signed meter reading: one poll of a household's metering point.
///
/// Counters are cumulative and never decrease; `seq` is contiguous per meter,
/// starting at 1, and a repeated or older `seq` is a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    pub grid: GridId,
    pub household: HouseholdId,
    pub meter: MeterId,
    pub seq: u64,
    pub ts: UnixMs,
    /// Energy imported from the grid, cumulative.
    pub import_wh: WattHours,
    /// Energy exported to the grid, cumulative.
    pub export_wh: WattHours,
    /// PV production, cumulative, when the household has an inverter.
    pub pv_wh: Option<WattHours>,
    /// Power at the grid meter: `+` import, `−` export.
    pub grid_power_w: Watts,
    /// PV power (≥ 0), when the household has an inverter.
    pub pv_power_w: Option<Watts>,
    pub status: DeviceStatus,
}

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

/// A signed limit order for one interval. A household may send several per
/// interval (a step curve), each with its own nonce. An order with `replaces`
/// amends the earlier order of that nonce; with quantity zero it cancels it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub grid: GridId,
    pub household: HouseholdId,
    pub interval: IntervalId,
    pub side: Side,
    pub quantity_wh: WattHours,
    pub limit_price: MicroPerKwh,
    /// Strictly increasing per household.
    pub nonce: u64,
    pub ts: UnixMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
}

impl Order {
    /// The order's identifier within its grid: `household-nonce`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.household, self.nonce)
    }
}

/// Auction mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Uniform price (pay-as-clear): every trade at one price.
    #[default]
    Uniform,
    /// Pay-as-bid: each matched pair trades at the buyer's bid.
    PayAsBid,
    /// McAfee trade reduction: truthful, budget-balanced or in surplus.
    Mcafee,
}

/// How the uniform price is chosen within the marginal pair's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceRule {
    /// Midpoint of the marginal bid and ask, rounded down.
    #[default]
    Midpoint,
    /// The marginal bid.
    Bid,
    /// The marginal ask.
    Ask,
}

/// Parameters of an auction. All prices in micro-units per kWh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuctionParams {
    #[serde(default)]
    pub mechanism: Mechanism,
    #[serde(default)]
    pub price_rule: PriceRule,
    /// The utility's feed-in tariff: the price floor.
    #[serde(default = "default_feed_in")]
    pub feed_in_tariff: MicroPerKwh,
    /// The utility's retail tariff: the price ceiling.
    #[serde(default = "default_retail")]
    pub retail_tariff: MicroPerKwh,
    /// Grid fee per kWh, paid by buyers on top of the price.
    #[serde(default)]
    pub grid_fee: MicroPerKwh,
    /// Feeder capacity: the most energy that may trade in the interval.
    #[serde(default)]
    pub capacity_wh: Option<WattHours>,
}

fn default_feed_in() -> MicroPerKwh {
    MicroPerKwh(80_000)
}
fn default_retail() -> MicroPerKwh {
    MicroPerKwh(320_000)
}

impl Default for AuctionParams {
    fn default() -> Self {
        AuctionParams {
            mechanism: Mechanism::Uniform,
            price_rule: PriceRule::Midpoint,
            feed_in_tariff: default_feed_in(),
            retail_tariff: default_retail(),
            grid_fee: MicroPerKwh(0),
            capacity_wh: None,
        }
    }
}

/// One cleared trade between a buy and a sell order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trade {
    pub buyer: HouseholdId,
    pub seller: HouseholdId,
    /// The order ids, shared with the book they come from (an auction of a
    /// million orders builds its trades without copying a string; one thin
    /// pointer each keeps a trade at 56 bytes); on the wire, plain strings.
    #[serde(with = "shared_str")]
    pub buy_order: Arc<String>,
    #[serde(with = "shared_str")]
    pub sell_order: Arc<String>,
    pub quantity_wh: WattHours,
    /// What the seller receives per kWh.
    pub price: MicroPerKwh,
    /// What the buyer pays per kWh, grid fee included.
    pub buyer_price: MicroPerKwh,
}

/// Serde for an `Arc<String>` field as a plain string (serde's own impls
/// need its `rc` feature).
mod shared_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(v: &Arc<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<String>, D::Error> {
        String::deserialize(d).map(Arc::new)
    }
}

impl Trade {
    /// Money the seller receives for this trade.
    pub fn seller_receives(&self) -> Micros {
        self.price.cost_of(self.quantity_wh)
    }
    /// Money the buyer pays for this trade (never less than the seller gets).
    pub fn buyer_pays(&self) -> Micros {
        self.buyer_price
            .cost_of(self.quantity_wh)
            .max(self.seller_receives())
    }
}

/// The published outcome of one interval's auction. It is a pure function of
/// the orders and parameters; `inputs_hash` commits to both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearingResult {
    pub grid: GridId,
    pub interval: IntervalId,
    pub params: AuctionParams,
    pub clearing_price: Option<MicroPerKwh>,
    pub volume_wh: WattHours,
    pub trades: Vec<Trade>,
    /// Merkle root over the signed order envelopes, in canonical order.
    pub orders_root: Hash32,
    /// Merkle root over the trades' canonical JSON.
    pub trades_root: Hash32,
}

/// A household's net transfer in a batch: `+` receives, `−` pays.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub household: HouseholdId,
    pub amount: Micros,
    /// Energy the household delivered to neighbours in this interval.
    pub delivered_wh: WattHours,
    /// Energy the household received from neighbours in this interval.
    pub received_wh: WattHours,
}

/// One interval's settlement: net transfers per household plus the utility's
/// side, with Merkle roots and the hash of the previous batch (a hash chain).
/// Amounts sum to exactly zero: `Σ transfers + utility = 0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementBatch {
    pub grid: GridId,
    pub interval: IntervalId,
    pub prev_hash: Hash32,
    pub orders_root: Hash32,
    pub trades_root: Hash32,
    pub readings_root: Hash32,
    pub transfers: Vec<Transfer>,
    /// The utility's (and grid operator's) net: fees, shortfalls, excess.
    pub utility: Micros,
}

impl SettlementBatch {
    /// SHA-256 of the batch's canonical JSON: its identity in the hash chain.
    pub fn hash(&self) -> Hash32 {
        Hash32(Sha256::digest(canonical_json(self)).into())
    }
    /// Whether money sums to zero across households and utility.
    pub fn balances(&self) -> bool {
        let total: i128 = self
            .transfers
            .iter()
            .map(|t| i128::from(t.amount.0))
            .sum::<i128>()
            + i128::from(self.utility.0);
        total == 0
    }
}

/// Outcome of one acknowledged message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "reason")]
pub enum AckOutcome {
    /// Stored.
    Accepted,
    /// Already stored earlier (a redelivery); safe to forget.
    Duplicate,
    /// Refused, with the reason.
    Rejected(String),
}

/// What an acknowledgement refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckKind {
    Reading,
    Order,
}

/// One acknowledged message: a reading by (meter, seq) or an order by nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckItem {
    pub kind: AckKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<MeterId>,
    /// Reading sequence number or order nonce.
    pub seq: u64,
    #[serde(flatten)]
    pub outcome: AckOutcome,
}

/// The engine's signed acknowledgement to a household. The meter agent's
/// outbox deletes a reading only when it is acknowledged here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub grid: GridId,
    pub household: HouseholdId,
    pub items: Vec<AckItem>,
}

/// Unsigned live power, for dashboards only (QoS 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePower {
    pub household: HouseholdId,
    pub meter: MeterId,
    pub ts: UnixMs,
    pub grid_power_w: Watts,
    pub pv_power_w: Option<Watts>,
}

/// Retained node status; the offline form is the MQTT last will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub online: bool,
}

/// Canonical JSON of a protocol value: `serde_json` of our types, which hold
/// no floats and no maps, is deterministic.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our message types always serialize; an empty vector would only arise
    // from a type with a non-string map key, which the protocol has none of.
    serde_json::to_vec(value).unwrap_or_default()
}

/// SHA-256 of the canonical JSON of several values, in order; used to commit
/// to the inputs of an auction.
pub fn hash_json<T: Serialize>(value: &T) -> Hash32 {
    Hash32(Sha256::digest(canonical_json(value)).into())
}

/// Largest JSON nesting depth accepted in a payload.
pub const MAX_JSON_DEPTH: usize = 8;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("payload nests deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("payload is not a valid message: {0}")]
    Invalid(String),
}

/// Decodes a JSON payload into a message type, after checking UTF-8 and the
/// nesting depth (so that hostile input cannot exhaust the stack).
pub fn decode_payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| PayloadError::NotUtf8)?;
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(PayloadError::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    serde_json::from_str(text).map_err(|e| PayloadError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_json_shape() {
        let a = AckItem {
            kind: AckKind::Reading,
            meter: None,
            seq: 3,
            outcome: AckOutcome::Rejected("replay".into()),
        };
        let s = String::from_utf8(canonical_json(&a)).expect("utf8");
        assert_eq!(
            s,
            r#"{"kind":"reading","seq":3,"outcome":"rejected","reason":"replay"}"#
        );
        let back: AckItem = serde_json::from_str(&s).expect("parse");
        assert_eq!(back, a);
        let ok: AckItem = serde_json::from_str(r#"{"kind":"order","seq":1,"outcome":"accepted"}"#)
            .expect("parse");
        assert_eq!(ok.outcome, AckOutcome::Accepted);
    }

    #[test]
    fn deep_json_is_refused_before_parsing() {
        let deep = "[".repeat(10_000);
        assert_eq!(
            decode_payload::<Order>(deep.as_bytes()),
            Err(PayloadError::TooDeep)
        );
        assert_eq!(
            decode_payload::<Order>(&[0xff, 0xfe]),
            Err(PayloadError::NotUtf8)
        );
        assert!(matches!(
            decode_payload::<Order>(b"{}"),
            Err(PayloadError::Invalid(_))
        ));
    }

    #[test]
    fn trade_money_never_creates_money() {
        let t = Trade {
            buyer: HouseholdId::new("b").expect("id"),
            seller: HouseholdId::new("s").expect("id"),
            buy_order: Arc::new("b-1".to_owned()),
            sell_order: Arc::new("s-1".to_owned()),
            quantity_wh: WattHours(333),
            price: MicroPerKwh(100_001),
            buyer_price: MicroPerKwh(100_001),
        };
        assert_eq!(t.seller_receives(), t.buyer_pays());
    }
}
