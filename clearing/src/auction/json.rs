//! Offline order books as JSON, for `voltshare clear --orders FILE`.
//!
//! Input:
//!
//! ```json
//! {"params": {"mechanism": "mcafee", "grid_fee": 20000},
//!  "orders": [{"id": "b1", "household": "h1", "side": "buy",
//!              "quantity_wh": 1500, "limit_price": 300000}]}
//! ```
//!
//! `params` and each of its fields are optional; the defaults are those of
//! [`AuctionParams::default`]: `mechanism` `"uniform"` (or `"pay_as_bid"`,
//! `"mcafee"`), `price_rule` `"midpoint"` (or `"bid"`, `"ask"`),
//! `feed_in_tariff` 80 000 µ/kWh, `retail_tariff` 320 000 µ/kWh, `grid_fee` 0,
//! `capacity_wh` `null` (unlimited). Every order field is required; ids must be
//! unique and quantities positive. Unknown fields are refused, so that a typo
//! never silently falls back to a default.
//!
//! The book is parsed by hand from a [`serde_json::Value`] rather than derived,
//! so that every error names the order (index and id) and the field.

use super::{BookOrder, Outcome, clear, inputs_hash};
use protocol::{AuctionParams, HouseholdId, Mechanism, MicroPerKwh, PriceRule, Side, WattHours};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Why an offline book was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("the book is not valid JSON: {0}")]
    Json(String),
    #[error("the book: {0}")]
    Shape(String),
    #[error("params: field {field:?}: {message}")]
    Param { field: String, message: String },
    #[error("orders[{index}]{}: field {field:?}: {message}", id_label(.id))]
    Order {
        index: usize,
        id: Option<String>,
        field: String,
        message: String,
    },
    #[error("orders[{index}]: expected an object")]
    NotAnObject { index: usize },
    #[error("orders[{index}] (id {id:?}): duplicate id, first used by orders[{first}]")]
    DuplicateId {
        index: usize,
        first: usize,
        id: String,
    },
}

fn id_label(id: &Option<String>) -> String {
    id.as_ref()
        .map(|id| format!(" (id {id:?})"))
        .unwrap_or_default()
}

/// Parses an offline book into its orders and parameters.
pub fn parse_book(input: &str) -> Result<(Vec<BookOrder>, AuctionParams), BookError> {
    let value: Value = serde_json::from_str(input).map_err(|e| BookError::Json(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(BookError::Shape(
            "expected an object with \"orders\" and optional \"params\"".into(),
        ));
    };
    if let Some(k) = top
        .keys()
        .find(|k| !matches!(k.as_str(), "params" | "orders"))
    {
        return Err(BookError::Shape(format!(
            "unknown field {k:?}; expected \"params\" and \"orders\""
        )));
    }
    let params = match top.get("params") {
        None | Some(Value::Null) => AuctionParams::default(),
        Some(Value::Object(p)) => parse_params(p)?,
        Some(_) => {
            return Err(BookError::Shape(
                "field \"params\": expected an object".into(),
            ));
        }
    };
    let Some(Value::Array(list)) = top.get("orders") else {
        return Err(BookError::Shape(
            "field \"orders\": expected an array of orders".into(),
        ));
    };
    let mut orders = Vec::with_capacity(list.len());
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(list.len());
    for (index, v) in list.iter().enumerate() {
        let order = parse_order(index, v)?;
        if let Some(&first) = seen.get(order.id.as_str()) {
            return Err(BookError::DuplicateId {
                index,
                first,
                id: order.id.to_string(),
            });
        }
        // Borrow the id from the input value, which outlives the map.
        if let Some(id) = v.get("id").and_then(Value::as_str) {
            seen.insert(id, index);
        }
        orders.push(order);
    }
    Ok((orders, params))
}

fn parse_params(p: &Map<String, Value>) -> Result<AuctionParams, BookError> {
    let err = |field: &str, message: &str| BookError::Param {
        field: field.into(),
        message: message.into(),
    };
    let uint = |field: &str, v: &Value| {
        v.as_u64()
            .ok_or_else(|| err(field, "expected an unsigned integer"))
    };
    let mut params = AuctionParams::default();
    for (k, v) in p {
        match k.as_str() {
            "mechanism" => {
                params.mechanism = match v.as_str() {
                    Some("uniform") => Mechanism::Uniform,
                    Some("pay_as_bid") => Mechanism::PayAsBid,
                    Some("mcafee") => Mechanism::Mcafee,
                    _ => return Err(err(k, "expected \"uniform\", \"pay_as_bid\" or \"mcafee\"")),
                }
            }
            "price_rule" => {
                params.price_rule = match v.as_str() {
                    Some("midpoint") => PriceRule::Midpoint,
                    Some("bid") => PriceRule::Bid,
                    Some("ask") => PriceRule::Ask,
                    _ => return Err(err(k, "expected \"midpoint\", \"bid\" or \"ask\"")),
                }
            }
            "feed_in_tariff" => params.feed_in_tariff = MicroPerKwh(uint(k, v)?),
            "retail_tariff" => params.retail_tariff = MicroPerKwh(uint(k, v)?),
            "grid_fee" => params.grid_fee = MicroPerKwh(uint(k, v)?),
            "capacity_wh" => {
                params.capacity_wh = if v.is_null() {
                    None
                } else {
                    Some(WattHours(uint(k, v)?))
                }
            }
            _ => return Err(err(k, "unknown field")),
        }
    }
    if params.feed_in_tariff > params.retail_tariff {
        return Err(err("feed_in_tariff", "must not exceed retail_tariff"));
    }
    Ok(params)
}

fn parse_order(index: usize, v: &Value) -> Result<BookOrder, BookError> {
    let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
    let err = |field: &str, message: &str| BookError::Order {
        index,
        id: id.clone(),
        field: field.into(),
        message: message.into(),
    };
    let Value::Object(o) = v else {
        return Err(BookError::NotAnObject { index });
    };
    if let Some(k) = o.keys().find(|k| {
        !matches!(
            k.as_str(),
            "id" | "household" | "side" | "quantity_wh" | "limit_price"
        )
    }) {
        return Err(err(k, "unknown field"));
    }
    let field = |name: &str| o.get(name).ok_or_else(|| err(name, "missing"));
    let uint = |name: &str| {
        field(name)?
            .as_u64()
            .ok_or_else(|| err(name, "expected an unsigned integer"))
    };
    let id_text = field("id")?
        .as_str()
        .ok_or_else(|| err("id", "expected a string"))?;
    if id_text.is_empty() {
        return Err(err("id", "must not be empty"));
    }
    let household = field("household")?
        .as_str()
        .ok_or_else(|| err("household", "expected a string"))?;
    let household = HouseholdId::new(household).map_err(|e| err("household", &e.to_string()))?;
    let side = match field("side")?.as_str() {
        Some("buy") => Side::Buy,
        Some("sell") => Side::Sell,
        _ => return Err(err("side", "expected \"buy\" or \"sell\"")),
    };
    let quantity = uint("quantity_wh")?;
    if quantity == 0 {
        return Err(err("quantity_wh", "must be greater than zero"));
    }
    let limit = uint("limit_price")?;
    Ok(BookOrder {
        id: Arc::new(id_text.to_owned()),
        household,
        side,
        quantity_wh: WattHours(quantity),
        limit_price: MicroPerKwh(limit),
    })
}

/// The JSON report of one clearing: the outcome's fields, the money totals
/// and the inputs hash. `clearing_price` is `null` when nothing trades.
pub fn outcome_json(orders: &[BookOrder], params: &AuctionParams, outcome: &Outcome) -> Value {
    let trades: Vec<Value> = outcome
        .trades
        .iter()
        .map(|t| {
            json!({
                "buyer": t.buyer.as_str(),
                "seller": t.seller.as_str(),
                "buy_order": &*t.buy_order,
                "sell_order": &*t.sell_order,
                "quantity_wh": t.quantity_wh.0,
                "price": t.price.0,
                "buyer_price": t.buyer_price.0,
            })
        })
        .collect();
    json!({
        "mechanism": params.mechanism,
        "price_rule": params.price_rule,
        "params": params,
        "inputs_hash": inputs_hash(orders, params).to_hex(),
        "orders": orders.len(),
        "clearing_price": outcome.clearing_price.map(|p| p.0),
        "volume_wh": outcome.volume_wh.0,
        "unmatched_buy_wh": outcome.unmatched_buy_wh.0,
        "unmatched_sell_wh": outcome.unmatched_sell_wh.0,
        "buyers_pay_micros": outcome.buyers_pay().0,
        "sellers_receive_micros": outcome.sellers_receive().0,
        "fee_micros": outcome.fee_micros.0,
        "surplus_micros": outcome.surplus_micros.0,
        "trades": trades,
    })
}

/// Parses an offline book, clears it (with `mechanism_override` replacing the
/// book's mechanism, if given) and reports the result as JSON.
pub fn clear_json(input: &str, mechanism_override: Option<Mechanism>) -> Result<Value, BookError> {
    let (orders, mut params) = parse_book(input)?;
    if let Some(m) = mechanism_override {
        params.mechanism = m;
    }
    let outcome = clear(&orders, &params);
    Ok(outcome_json(&orders, &params, &outcome))
}
