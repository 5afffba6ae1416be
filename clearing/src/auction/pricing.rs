//! Setting the prices of the walk's matches, per mechanism, and
//! summing the money exactly (see "Mechanisms and prices" and "Money and
//! rounding" in the module docs of [`super`]).

use super::Match;
use super::walk::Walk;
use protocol::{AuctionParams, Mechanism, MicroPerKwh, Micros, PriceRule, WattHours};

/// Matches and money of one clearing.
pub(super) struct Priced {
    pub clearing_price: Option<MicroPerKwh>,
    pub volume: u64,
    pub matches: Vec<Match>,
    pub fee: Micros,
    pub surplus: Micros,
}

/// `⌊(a + b) / 2⌋` without overflow.
pub(super) fn midpoint(a: u64, b: u64) -> u64 {
    a / 2 + b / 2 + (a % 2 + b % 2) / 2
}

/// [`MicroPerKwh::cost_of`], computed in 64 bits when the product fits (a
/// 128-bit division is a library call, and this runs three times per trade);
/// the same result either way.
fn cost(p: MicroPerKwh, q: WattHours) -> Micros {
    match q.0.checked_mul(p.0) {
        Some(v) => Micros(i64::try_from(v / 1000).unwrap_or(i64::MAX)),
        None => p.cost_of(q),
    }
}

/// How one segment is priced: what the seller receives and the buyer's price
/// net of the grid fee (equal except in McAfee's reduced case).
#[derive(Clone, Copy)]
enum Rule {
    /// One price for both sides of every trade.
    Uniform(u64),
    /// Each segment at its buyer's clamped net bid.
    PayAsBid,
    /// Sellers receive `seller`, buyers pay `buyer` (+ fee); `buyer ≥ seller`.
    Split { seller: u64, buyer: u64 },
}

/// Prices the walk's matches in place. On entry a match's `price` holds the
/// net bid and `buyer_price` the ask (see [`super::walk`]).
pub(super) fn price(params: &AuctionParams, walk: Walk) -> Priced {
    let Walk {
        mut matches,
        next_bid,
        next_ask,
        ..
    } = walk;
    let (lo, hi) = (params.feed_in_tariff.0, params.retail_tariff.0);
    let clamp = |p: u64| p.clamp(lo, hi);
    let Some(marginal) = matches.last() else {
        return Priced {
            clearing_price: None,
            volume: 0,
            matches,
            fee: Micros(0),
            surplus: Micros(0),
        };
    };
    let (b_k, s_k) = (marginal.price.0, marginal.buyer_price.0);
    let rule = match params.mechanism {
        Mechanism::Uniform => Rule::Uniform(clamp(match params.price_rule {
            PriceRule::Midpoint => midpoint(b_k, s_k),
            PriceRule::Bid => b_k,
            PriceRule::Ask => s_k,
        })),
        Mechanism::PayAsBid => Rule::PayAsBid,
        Mechanism::Mcafee => match (next_bid, next_ask) {
            (Some(b1), Some(s1)) if (s_k..=b_k).contains(&midpoint(b1, s1)) => {
                Rule::Uniform(clamp(midpoint(b1, s1)))
            }
            _ => {
                // Trade reduction: the marginal Wh does not trade.
                if let Some(last) = matches.last_mut() {
                    last.quantity_wh.0 -= 1;
                    if last.quantity_wh.0 == 0 {
                        matches.pop();
                    }
                }
                Rule::Split {
                    seller: clamp(s_k),
                    buyer: clamp(b_k),
                }
            }
        },
    };
    let fee = params.grid_fee;
    let (mut fee_sum, mut surplus_sum) = (Micros(0), Micros(0));
    let (mut volume, mut value) = (0u64, 0u128);
    for m in &mut matches {
        let (seller, buyer_net) = match rule {
            Rule::Uniform(p) => (p, p),
            Rule::PayAsBid => (clamp(m.price.0), clamp(m.price.0)),
            Rule::Split { seller, buyer } => (seller, buyer),
        };
        let q = m.quantity_wh;
        let price = MicroPerKwh(seller);
        let net = MicroPerKwh(buyer_net);
        let buyer_price = net.saturating_add(fee);
        let net_cost = cost(net, q);
        fee_sum += cost(buyer_price, q) - net_cost;
        surplus_sum += net_cost - cost(price, q);
        // The walk never trades more than u64::MAX Wh in total, and Σ Wh × price
        // stays below (2^64)² = 2^128.
        volume += q.0;
        value += u128::from(q.0) * u128::from(seller);
        m.price = price;
        m.buyer_price = buyer_price;
    }
    let clearing_price = match rule {
        _ if volume == 0 => None,
        Rule::Uniform(p) => Some(MicroPerKwh(p)),
        Rule::Split { seller, .. } => Some(MicroPerKwh(seller)),
        // A weighted average of u64 prices fits in u64.
        Rule::PayAsBid => Some(MicroPerKwh(
            u64::try_from(value / u128::from(volume)).unwrap_or(u64::MAX),
        )),
    };
    Priced {
        clearing_price,
        volume,
        matches,
        fee: fee_sum,
        surplus: surplus_sum,
    }
}
