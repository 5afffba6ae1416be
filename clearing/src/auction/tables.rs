//! Table tests: hand-worked books and the exact trades each mechanism must
//! produce. Every case is also cleared with its input reversed and rotated,
//! which must not change anything.

use super::*;
use protocol::{Mechanism, PriceRule};

const FEED_IN: u64 = 80_000;
const RETAIL: u64 = 320_000;

fn order(id: &str, hh: &str, side: Side, q: u64, p: u64) -> BookOrder {
    BookOrder {
        id: id.to_owned().into(),
        household: HouseholdId::new(hh).expect("household id"),
        side,
        quantity_wh: WattHours(q),
        limit_price: MicroPerKwh(p),
    }
}
fn buy(id: &str, hh: &str, q: u64, p: u64) -> BookOrder {
    order(id, hh, Side::Buy, q, p)
}
fn sell(id: &str, hh: &str, q: u64, p: u64) -> BookOrder {
    order(id, hh, Side::Sell, q, p)
}

fn params(mechanism: Mechanism) -> AuctionParams {
    AuctionParams {
        mechanism,
        ..AuctionParams::default()
    }
}
fn with_rule(rule: PriceRule) -> AuctionParams {
    AuctionParams {
        price_rule: rule,
        ..AuctionParams::default()
    }
}

/// Expected trade: (buy order, sell order, Wh, price, buyer price).
type T<'a> = (&'a str, &'a str, u64, u64, u64);

/// Clears `orders` (and permutations of it), checks the trades and price,
/// and returns the outcome for further checks.
fn check(orders: &[BookOrder], p: &AuctionParams, price: Option<u64>, trades: &[T]) -> Outcome {
    let out = clear(orders, p);
    let got: Vec<(String, String, u64, u64, u64)> = out
        .trades
        .iter()
        .map(|t| {
            (
                t.buy_order.to_string(),
                t.sell_order.to_string(),
                t.quantity_wh.0,
                t.price.0,
                t.buyer_price.0,
            )
        })
        .collect();
    let want: Vec<(String, String, u64, u64, u64)> = trades
        .iter()
        .map(|&(b, s, q, pr, bp)| (b.into(), s.into(), q, pr, bp))
        .collect();
    assert_eq!(got, want, "trades");
    assert_eq!(out.clearing_price, price.map(MicroPerKwh), "clearing price");
    assert_eq!(
        out.volume_wh.0,
        trades.iter().map(|t| t.2).sum::<u64>(),
        "volume"
    );
    let mut rev = orders.to_vec();
    rev.reverse();
    assert_eq!(clear(&rev, p), out, "reversed input");
    if !orders.is_empty() {
        let mut rot = orders.to_vec();
        rot.rotate_left((orders.len() / 2 + 1) % orders.len());
        assert_eq!(clear(&rot, p), out, "rotated input");
    }
    let money_gap = out.buyers_pay().0 - out.sellers_receive().0;
    assert_eq!(
        money_gap,
        out.fee_micros.0 + out.surplus_micros.0,
        "money identity"
    );
    out
}

#[test]
fn empty_book_trades_nothing() {
    for m in [Mechanism::Uniform, Mechanism::PayAsBid, Mechanism::Mcafee] {
        let out = check(&[], &params(m), None, &[]);
        assert_eq!((out.unmatched_buy_wh.0, out.unmatched_sell_wh.0), (0, 0));
    }
}

#[test]
fn one_side_only_goes_to_the_utility() {
    let out = check(
        &[
            buy("b1", "h1", 1000, 300_000),
            buy("b2", "h2", 500, 200_000),
        ],
        &params(Mechanism::Uniform),
        None,
        &[],
    );
    assert_eq!((out.unmatched_buy_wh.0, out.unmatched_sell_wh.0), (1500, 0));
    let out = check(
        &[sell("s1", "h1", 700, 100_000)],
        &params(Mechanism::Mcafee),
        None,
        &[],
    );
    assert_eq!((out.unmatched_buy_wh.0, out.unmatched_sell_wh.0), (0, 700));
}

#[test]
fn single_pair_under_every_price_rule() {
    let book = [
        buy("b1", "h1", 1000, 300_000),
        sell("s1", "h2", 1000, 100_000),
    ];
    check(
        &book,
        &with_rule(PriceRule::Midpoint),
        Some(200_000),
        &[("b1", "s1", 1000, 200_000, 200_000)],
    );
    check(
        &book,
        &with_rule(PriceRule::Bid),
        Some(300_000),
        &[("b1", "s1", 1000, 300_000, 300_000)],
    );
    check(
        &book,
        &with_rule(PriceRule::Ask),
        Some(100_000),
        &[("b1", "s1", 1000, 100_000, 100_000)],
    );
    check(
        &book,
        &params(Mechanism::PayAsBid),
        Some(300_000),
        &[("b1", "s1", 1000, 300_000, 300_000)],
    );
    // McAfee: no excluded pair exists, so the marginal Wh is dropped and the
    // operator keeps (300 000 − 100 000) µ/kWh on 999 Wh.
    let out = check(
        &book,
        &params(Mechanism::Mcafee),
        Some(100_000),
        &[("b1", "s1", 999, 100_000, 300_000)],
    );
    assert_eq!(out.surplus_micros, Micros(199_800));
    assert_eq!(out.fee_micros, Micros(0));
    assert_eq!((out.unmatched_buy_wh.0, out.unmatched_sell_wh.0), (1, 1));
}

#[test]
fn books_that_do_not_cross_trade_nothing() {
    let book = [
        buy("b1", "h1", 1000, 150_000),
        sell("s1", "h2", 1000, 200_000),
    ];
    for m in [Mechanism::Uniform, Mechanism::PayAsBid, Mechanism::Mcafee] {
        let out = check(&book, &params(m), None, &[]);
        assert_eq!(
            (out.unmatched_buy_wh.0, out.unmatched_sell_wh.0),
            (1000, 1000)
        );
    }
}

#[test]
fn mcafee_reduction_of_a_single_wh_leaves_nothing() {
    let book = [buy("b1", "h1", 1, 300_000), sell("s1", "h2", 1, 100_000)];
    let out = check(&book, &params(Mechanism::Mcafee), None, &[]);
    assert_eq!(out.surplus_micros, Micros(0));
}

/// Household h1 bids 500 Wh at 300 000 and 500 Wh more at 200 000;
/// household h2 offers 600 Wh at 100 000 and 600 Wh more at 250 000.
/// The curves cross for 600 Wh; the marginal pair is (200 000, 100 000) and
/// the first excluded pair is (200 000, 250 000).
fn step_book() -> Vec<BookOrder> {
    vec![
        buy("b1", "h1", 500, 300_000),
        buy("b2", "h1", 500, 200_000),
        sell("s1", "h2", 600, 100_000),
        sell("s2", "h2", 600, 250_000),
    ]
}

#[test]
fn step_curves_uniform() {
    let out = check(
        &step_book(),
        &params(Mechanism::Uniform),
        Some(150_000),
        &[
            ("b1", "s1", 500, 150_000, 150_000),
            ("b2", "s1", 100, 150_000, 150_000),
        ],
    );
    assert_eq!(
        (out.unmatched_buy_wh.0, out.unmatched_sell_wh.0),
        (400, 600)
    );
}

#[test]
fn step_curves_pay_as_bid() {
    // Volume-weighted average: (500·300 000 + 100·200 000) / 600 = 283 333.3…
    check(
        &step_book(),
        &params(Mechanism::PayAsBid),
        Some(283_333),
        &[
            ("b1", "s1", 500, 300_000, 300_000),
            ("b2", "s1", 100, 200_000, 200_000),
        ],
    );
}

#[test]
fn step_curves_mcafee_reduces() {
    // p0 = (200 000 + 250 000) / 2 = 225 000 is above b_k = 200 000: reduce.
    let out = check(
        &step_book(),
        &params(Mechanism::Mcafee),
        Some(100_000),
        &[
            ("b1", "s1", 500, 100_000, 200_000),
            ("b2", "s1", 99, 100_000, 200_000),
        ],
    );
    // 500 Wh: 100 000 − 50 000; 99 Wh: 19 800 − 9 900.
    assert_eq!(out.surplus_micros, Micros(59_900));
    assert_eq!(
        (out.unmatched_buy_wh.0, out.unmatched_sell_wh.0),
        (401, 601)
    );
}

#[test]
fn mcafee_trades_everything_when_p0_is_in_range() {
    let book = [
        buy("b1", "h1", 1000, 300_000),
        buy("b2", "h2", 1000, 250_000),
        sell("s1", "h3", 1000, 100_000),
        sell("s2", "h4", 1000, 260_000),
    ];
    // p0 = (250 000 + 260 000) / 2 = 255 000 ∈ [100 000, 300 000].
    let out = check(
        &book,
        &params(Mechanism::Mcafee),
        Some(255_000),
        &[("b1", "s1", 1000, 255_000, 255_000)],
    );
    assert_eq!(out.surplus_micros, Micros(0));
    check(
        &book,
        &params(Mechanism::Uniform),
        Some(200_000),
        &[("b1", "s1", 1000, 200_000, 200_000)],
    );
}

#[test]
fn ties_at_one_price_go_by_id_then_household() {
    let bids = [
        buy("a1", "h2", 500, 300_000),
        buy("a0", "h1", 500, 300_000),
        sell("s1", "h3", 600, 100_000),
    ];
    check(
        &bids,
        &params(Mechanism::Uniform),
        Some(200_000),
        &[
            ("a0", "s1", 500, 200_000, 200_000),
            ("a1", "s1", 100, 200_000, 200_000),
        ],
    );
    let asks = [
        sell("x1", "h2", 400, 100_000),
        sell("x0", "h1", 400, 100_000),
        buy("b", "h3", 500, 300_000),
    ];
    check(
        &asks,
        &params(Mechanism::Uniform),
        Some(200_000),
        &[
            ("b", "x0", 400, 200_000, 200_000),
            ("b", "x1", 100, 200_000, 200_000),
        ],
    );
    // The same id from two households (clear() does not police ids): the
    // household breaks the tie.
    let same_id = [
        buy("z", "h2", 300, 300_000),
        buy("z", "h1", 300, 300_000),
        sell("s", "h3", 400, 100_000),
    ];
    let out = check(
        &same_id,
        &params(Mechanism::Uniform),
        Some(200_000),
        &[
            ("z", "s", 300, 200_000, 200_000),
            ("z", "s", 100, 200_000, 200_000),
        ],
    );
    assert_eq!(out.trades[0].buyer.as_str(), "h1");
    assert_eq!(out.trades[1].buyer.as_str(), "h2");
}

#[test]
fn everything_at_one_price() {
    let book = [
        buy("b1", "h1", 300, 200_000),
        buy("b2", "h2", 300, 200_000),
        buy("b3", "h3", 300, 200_000),
        sell("s1", "h4", 500, 200_000),
        sell("s2", "h5", 500, 200_000),
    ];
    let at = |q1, q4| {
        [
            ("b1", "s1", 300, 200_000, 200_000),
            ("b2", "s1", 200, 200_000, 200_000),
            ("b2", "s2", 100, 200_000, 200_000),
            ("b3", "s2", q4, 200_000, 200_000),
        ]
        .into_iter()
        .take(q1)
        .collect::<Vec<T>>()
    };
    for rule in [PriceRule::Midpoint, PriceRule::Bid, PriceRule::Ask] {
        check(&book, &with_rule(rule), Some(200_000), &at(4, 300));
    }
    check(
        &book,
        &params(Mechanism::PayAsBid),
        Some(200_000),
        &at(4, 300),
    );
    // McAfee: the buy side is exhausted, there is no excluded pair: reduce.
    let out = check(
        &book,
        &params(Mechanism::Mcafee),
        Some(200_000),
        &at(4, 299),
    );
    assert_eq!(out.surplus_micros, Micros(0));
}

#[test]
fn capacity_caps_the_volume() {
    let book = [
        buy("b1", "h1", 1000, 300_000),
        sell("s1", "h2", 1000, 100_000),
    ];
    let cap = |m, c| AuctionParams {
        mechanism: m,
        capacity_wh: Some(WattHours(c)),
        ..AuctionParams::default()
    };
    let out = check(
        &book,
        &cap(Mechanism::Uniform, 400),
        Some(200_000),
        &[("b1", "s1", 400, 200_000, 200_000)],
    );
    assert_eq!(
        (out.unmatched_buy_wh.0, out.unmatched_sell_wh.0),
        (600, 600)
    );
    // The first excluded pair still crosses, so p0 is in range: no reduction.
    check(
        &book,
        &cap(Mechanism::Mcafee, 400),
        Some(200_000),
        &[("b1", "s1", 400, 200_000, 200_000)],
    );
    check(
        &book,
        &cap(Mechanism::PayAsBid, 400),
        Some(300_000),
        &[("b1", "s1", 400, 300_000, 300_000)],
    );
    check(&book, &cap(Mechanism::Uniform, 0), None, &[]);
    check(
        &book,
        &cap(Mechanism::Uniform, 5000),
        Some(200_000),
        &[("b1", "s1", 1000, 200_000, 200_000)],
    );
}

#[test]
fn capacity_splits_across_a_step_curve() {
    let p = AuctionParams {
        capacity_wh: Some(WattHours(550)),
        ..AuctionParams::default()
    };
    check(
        &step_book(),
        &p,
        Some(150_000),
        &[
            ("b1", "s1", 500, 150_000, 150_000),
            ("b2", "s1", 50, 150_000, 150_000),
        ],
    );
}

#[test]
fn grid_fee_is_paid_by_buyers_on_top() {
    let fee = |m, r| AuctionParams {
        mechanism: m,
        price_rule: r,
        grid_fee: MicroPerKwh(50_000),
        ..AuctionParams::default()
    };
    let book = [
        buy("b1", "h1", 1000, 300_000),
        sell("s1", "h2", 1000, 100_000),
    ];
    // Net bid 250 000: midpoint with the ask 100 000 is 175 000.
    let out = check(
        &book,
        &fee(Mechanism::Uniform, PriceRule::Midpoint),
        Some(175_000),
        &[("b1", "s1", 1000, 175_000, 225_000)],
    );
    assert_eq!(out.fee_micros, Micros(50_000));
    assert_eq!(
        (out.buyers_pay(), out.sellers_receive()),
        (Micros(225_000), Micros(175_000))
    );
    // At the bid rule the buyer pays exactly its all-in limit.
    check(
        &book,
        &fee(Mechanism::Uniform, PriceRule::Bid),
        Some(250_000),
        &[("b1", "s1", 1000, 250_000, 300_000)],
    );
    check(
        &book,
        &fee(Mechanism::PayAsBid, PriceRule::Midpoint),
        Some(250_000),
        &[("b1", "s1", 1000, 250_000, 300_000)],
    );
    let out = check(
        &book,
        &fee(Mechanism::Mcafee, PriceRule::Midpoint),
        Some(100_000),
        &[("b1", "s1", 999, 100_000, 300_000)],
    );
    assert_eq!(out.fee_micros, Micros(49_950));
    assert_eq!(out.surplus_micros, Micros(149_850));
}

#[test]
fn grid_fee_can_prevent_a_match() {
    let p = AuctionParams {
        grid_fee: MicroPerKwh(50_000),
        ..AuctionParams::default()
    };
    // 140 000 − 50 000 = 90 000 < 100 000.
    check(
        &[
            buy("b1", "h1", 1000, 140_000),
            sell("s1", "h2", 1000, 100_000),
        ],
        &p,
        None,
        &[],
    );
    // Exactly bid = ask + fee matches.
    check(
        &[
            buy("b1", "h1", 1000, 150_000),
            sell("s1", "h2", 1000, 100_000),
        ],
        &p,
        Some(100_000),
        &[("b1", "s1", 1000, 100_000, 150_000)],
    );
}

#[test]
fn orders_outside_the_tariffs_cannot_trade() {
    let p = params(Mechanism::Uniform);
    check(
        &[
            buy("b1", "h1", 1000, 400_000),
            sell("s1", "h2", 1000, RETAIL + 1),
        ],
        &p,
        None,
        &[],
    );
    check(
        &[
            buy("b1", "h1", 1000, FEED_IN - 1),
            sell("s1", "h2", 1000, 10_000),
        ],
        &p,
        None,
        &[],
    );
    // With a fee the buyer's net bid must reach the feed-in tariff.
    let fee = AuctionParams {
        grid_fee: MicroPerKwh(20_000),
        ..AuctionParams::default()
    };
    let out = check(
        &[
            buy("b1", "h1", 1000, 90_000),
            sell("s1", "h2", 1000, 10_000),
        ],
        &fee,
        None,
        &[],
    );
    assert_eq!(
        (out.unmatched_buy_wh.0, out.unmatched_sell_wh.0),
        (1000, 1000)
    );
    // Limits exactly at the bounds trade.
    check(
        &[buy("b1", "h1", 10, FEED_IN), sell("s1", "h2", 10, 0)],
        &p,
        Some(FEED_IN),
        &[("b1", "s1", 10, FEED_IN, FEED_IN)],
    );
    check(
        &[buy("b1", "h1", 10, u64::MAX), sell("s1", "h2", 10, RETAIL)],
        &p,
        Some(RETAIL),
        &[("b1", "s1", 10, RETAIL, RETAIL)],
    );
}

#[test]
fn prices_are_clamped_to_the_tariffs() {
    let p = params(Mechanism::Uniform);
    // Midpoint 350 000 → retail 320 000.
    check(
        &[
            buy("b1", "h1", 1000, 400_000),
            sell("s1", "h2", 1000, 300_000),
        ],
        &p,
        Some(RETAIL),
        &[("b1", "s1", 1000, RETAIL, RETAIL)],
    );
    // Midpoint 50 000 → feed-in 80 000.
    check(
        &[
            buy("b1", "h1", 1000, 90_000),
            sell("s1", "h2", 1000, 10_000),
        ],
        &p,
        Some(FEED_IN),
        &[("b1", "s1", 1000, FEED_IN, FEED_IN)],
    );
    // Pay-as-bid: a bid above retail pays retail.
    check(
        &[
            buy("b1", "h1", 1000, 500_000),
            sell("s1", "h2", 1000, 100_000),
        ],
        &params(Mechanism::PayAsBid),
        Some(RETAIL),
        &[("b1", "s1", 1000, RETAIL, RETAIL)],
    );
    // McAfee reduced: buyers pay min(b_k, retail), sellers max(s_k, feed-in).
    check(
        &[
            buy("b1", "h1", 1000, 500_000),
            sell("s1", "h2", 1000, 1_000),
        ],
        &params(Mechanism::Mcafee),
        Some(FEED_IN),
        &[("b1", "s1", 999, FEED_IN, RETAIL)],
    );
}

#[test]
fn contradictory_tariffs_trade_nothing() {
    let p = AuctionParams {
        feed_in_tariff: MicroPerKwh(300_000),
        retail_tariff: MicroPerKwh(200_000),
        ..AuctionParams::default()
    };
    let out = check(
        &[
            buy("b1", "h1", 1000, 400_000),
            sell("s1", "h2", 1000, 100_000),
        ],
        &p,
        None,
        &[],
    );
    assert_eq!(
        (out.unmatched_buy_wh.0, out.unmatched_sell_wh.0),
        (1000, 1000)
    );
}

#[test]
fn midpoint_rounds_down_and_money_rounds_down() {
    check(
        &[
            buy("b1", "h1", 1000, 100_001),
            sell("s1", "h2", 1000, 100_000),
        ],
        &params(Mechanism::Uniform),
        Some(100_000),
        &[("b1", "s1", 1000, 100_000, 100_000)],
    );
    let out = check(
        &[
            buy("b1", "h1", 333, 100_001),
            sell("s1", "h2", 333, 100_000),
        ],
        &params(Mechanism::PayAsBid),
        Some(100_001),
        &[("b1", "s1", 333, 100_001, 100_001)],
    );
    // 333 × 100 001 / 1000 = 33 300.333 → 33 300 for both sides.
    assert_eq!(
        (out.buyers_pay(), out.sellers_receive()),
        (Micros(33_300), Micros(33_300))
    );
    assert_eq!(pricing::midpoint(u64::MAX, u64::MAX), u64::MAX);
    assert_eq!(pricing::midpoint(u64::MAX, u64::MAX - 1), u64::MAX - 1);
    assert_eq!(pricing::midpoint(3, 4), 3);
}

#[test]
fn zero_quantity_orders_are_ignored() {
    check(
        &[
            buy("b0", "h1", 0, 300_000),
            buy("b1", "h1", 10, 300_000),
            sell("s1", "h2", 10, 100_000),
        ],
        &params(Mechanism::Uniform),
        Some(200_000),
        &[("b1", "s1", 10, 200_000, 200_000)],
    );
}

#[test]
fn a_household_may_match_itself() {
    check(
        &[buy("b1", "h1", 10, 300_000), sell("s1", "h1", 10, 100_000)],
        &params(Mechanism::Uniform),
        Some(200_000),
        &[("b1", "s1", 10, 200_000, 200_000)],
    );
}

#[test]
fn inputs_hash_is_order_independent_and_commits_to_params() {
    let book = step_book();
    let mut rev = book.clone();
    rev.reverse();
    let p = params(Mechanism::Uniform);
    assert_eq!(inputs_hash(&book, &p), inputs_hash(&rev, &p));
    assert_ne!(
        inputs_hash(&book, &p),
        inputs_hash(&book, &params(Mechanism::Mcafee))
    );
    assert_ne!(inputs_hash(&book, &p), inputs_hash(&book[1..], &p));
}

#[test]
fn random_book_is_seeded() {
    assert_eq!(random_book(100, 7), random_book(100, 7));
    assert_ne!(random_book(100, 7), random_book(100, 8));
    let b = random_book(1000, 1);
    let mut ids: Vec<&str> = b.iter().map(|o| o.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
    let v = bench_clearing(1000, Mechanism::Uniform, 1, &std::time::Duration::default);
    assert_eq!(v["orders"], 1000);
    assert!(v["volume_wh"].as_u64().expect("volume") > 0);
}

// ---- offline JSON books ----

const BOOK: &str = r#"{
  "params": {"grid_fee": 0, "capacity_wh": null},
  "orders": [
    {"id": "b1", "household": "h1", "side": "buy", "quantity_wh": 500, "limit_price": 300000},
    {"id": "b2", "household": "h1", "side": "buy", "quantity_wh": 500, "limit_price": 200000},
    {"id": "s1", "household": "h2", "side": "sell", "quantity_wh": 600, "limit_price": 100000},
    {"id": "s2", "household": "h2", "side": "sell", "quantity_wh": 600, "limit_price": 250000}
  ]
}"#;

#[test]
fn json_book_clears() {
    let v = clear_json(BOOK, None).expect("clears");
    assert_eq!(v["clearing_price"], 150_000);
    assert_eq!(v["volume_wh"], 600);
    assert_eq!(v["mechanism"], "uniform");
    assert_eq!(v["unmatched_buy_wh"], 400);
    assert_eq!(v["trades"][1]["buy_order"], "b2");
    assert_eq!(v["trades"][1]["buyer"], "h1");
    assert_eq!(v["trades"][1]["seller"], "h2");
    assert_eq!(v["trades"][1]["quantity_wh"], 100);
    assert_eq!(v["trades"][1]["buyer_price"], 150_000);
    let (orders, p) = parse_book(BOOK).expect("parses");
    assert_eq!(v["inputs_hash"], inputs_hash(&orders, &p).to_hex());
    let m = clear_json(BOOK, Some(Mechanism::Mcafee)).expect("clears");
    assert_eq!(m["mechanism"], "mcafee");
    assert_eq!(m["surplus_micros"], 59_900);
    assert_eq!(m["volume_wh"], 599);
    // Defaults: no params at all, no orders.
    let e = clear_json(r#"{"orders": []}"#, None).expect("clears");
    assert_eq!(e["clearing_price"], serde_json::Value::Null);
    assert_eq!(e["params"]["retail_tariff"], RETAIL);
}

fn json_err(input: &str) -> String {
    clear_json(input, None).expect_err("refused").to_string()
}

fn one_order(fields: &str) -> String {
    format!(
        r#"{{"orders": [{{"id": "b1", "household": "h1", "side": "buy", "quantity_wh": 1, "limit_price": 1}},
                        {{{fields}}}]}}"#
    )
}

#[test]
fn json_errors_name_the_order_and_field() {
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h1", "side": "buy", "quantity_wh": "ten", "limit_price": 1"#
        )),
        r#"orders[1] (id "b7"): field "quantity_wh": expected an unsigned integer"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h1", "side": "buy", "quantity_wh": 1.5, "limit_price": 1"#
        )),
        r#"orders[1] (id "b7"): field "quantity_wh": expected an unsigned integer"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h1", "side": "buy", "quantity_wh": -3, "limit_price": 1"#
        )),
        r#"orders[1] (id "b7"): field "quantity_wh": expected an unsigned integer"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h1", "side": "buy", "quantity_wh": 0, "limit_price": 1"#
        )),
        r#"orders[1] (id "b7"): field "quantity_wh": must be greater than zero"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b1", "household": "h2", "side": "sell", "quantity_wh": 1, "limit_price": 1"#
        )),
        r#"orders[1] (id "b1"): duplicate id, first used by orders[0]"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h1", "side": "bye", "quantity_wh": 1, "limit_price": 1"#
        )),
        r#"orders[1] (id "b7"): field "side": expected "buy" or "sell""#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h1", "side": "buy", "quantity_wh": 1"#
        )),
        r#"orders[1] (id "b7"): field "limit_price": missing"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""household": "h1", "side": "buy", "quantity_wh": 1, "limit_price": 1"#
        )),
        r#"orders[1]: field "id": missing"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h 1", "side": "buy", "quantity_wh": 1, "limit_price": 1"#
        )),
        r#"orders[1] (id "b7"): field "household": identifier contains ' '; only ASCII letters, digits, '-' and '_' are allowed"#
    );
    assert_eq!(
        json_err(&one_order(
            r#""id": "b7", "household": "h1", "side": "buy", "quantity_wh": 1, "limit_price": 1, "nonce": 4"#
        )),
        r#"orders[1] (id "b7"): field "nonce": unknown field"#
    );
}

#[test]
fn json_errors_in_params_and_shape() {
    assert_eq!(
        json_err(r#"{"params": {"grid_fee": "1"}, "orders": []}"#),
        r#"params: field "grid_fee": expected an unsigned integer"#
    );
    assert_eq!(
        json_err(r#"{"params": {"mechanism": "dutch"}, "orders": []}"#),
        r#"params: field "mechanism": expected "uniform", "pay_as_bid" or "mcafee""#
    );
    assert_eq!(
        json_err(r#"{"params": {"gridfee": 1}, "orders": []}"#),
        r#"params: field "gridfee": unknown field"#
    );
    assert_eq!(
        json_err(r#"{"params": {"feed_in_tariff": 5, "retail_tariff": 4}, "orders": []}"#),
        r#"params: field "feed_in_tariff": must not exceed retail_tariff"#
    );
    assert_eq!(
        json_err(r#"{"params": {}}"#),
        r#"the book: field "orders": expected an array of orders"#
    );
    assert_eq!(
        json_err(r#"{"orders": [], "order": []}"#),
        r#"the book: unknown field "order"; expected "params" and "orders""#
    );
    assert!(json_err("{").starts_with("the book is not valid JSON"));
    assert_eq!(
        json_err(r#"{"orders": [7]}"#),
        "orders[0]: expected an object"
    );
}
