//! Table tests of the reconciliation rule (a pure function): each case is a
//! set of trades, measured deliveries and the exact money that must result.
//! Money always sums to zero.

use clearing::{Delivery, reconcile};
use proptest::prelude::*;
use protocol::{AuctionParams, HouseholdId, MicroPerKwh, Micros, Trade, WattHours};
use std::collections::BTreeMap;

fn h(s: &str) -> HouseholdId {
    HouseholdId::new(s).expect("id")
}

fn trade(buyer: &str, seller: &str, wh: u64, price: u64, buyer_price: u64) -> Trade {
    Trade {
        buyer: h(buyer),
        seller: h(seller),
        buy_order: format!("{buyer}-1").into(),
        sell_order: format!("{seller}-1").into(),
        quantity_wh: WattHours(wh),
        price: MicroPerKwh(price),
        buyer_price: MicroPerKwh(buyer_price),
    }
}

fn delivered(rows: &[(&str, u64, u64)]) -> BTreeMap<HouseholdId, Delivery> {
    rows.iter()
        .map(|(name, export, import)| {
            (
                h(name),
                Delivery {
                    export_wh: WattHours(*export),
                    import_wh: WattHours(*import),
                    has_data: true,
                },
            )
        })
        .collect()
}

fn params() -> AuctionParams {
    AuctionParams {
        feed_in_tariff: MicroPerKwh(80_000),
        retail_tariff: MicroPerKwh(320_000),
        grid_fee: MicroPerKwh(10_000),
        ..AuctionParams::default()
    }
}

fn amounts(r: &clearing::Reconciliation) -> Vec<(String, i64)> {
    r.transfers
        .iter()
        .map(|t| (t.household.to_string(), t.amount.0))
        .collect()
}

fn zero_sum(r: &clearing::Reconciliation) {
    let total: i64 = r.transfers.iter().map(|t| t.amount.0).sum::<i64>() + r.utility.0;
    assert_eq!(total, 0, "money must sum to zero: {r:?}");
}

#[test]
fn table() {
    struct Case {
        name: &'static str,
        trades: Vec<Trade>,
        deliveries: Vec<(&'static str, u64, u64)>,
        /// (household, amount) sorted by household, then the utility.
        expect: Vec<(&'static str, i64)>,
        utility: i64,
        settled: Vec<u64>,
    }
    let cases = vec![
        Case {
            name: "full delivery: seller gets price, utility gets the fee",
            trades: vec![trade("b", "s", 1000, 200_000, 210_000)],
            deliveries: vec![("s", 1000, 0), ("b", 0, 1000)],
            expect: vec![("b", -210_000), ("s", 200_000)],
            utility: 10_000,
            settled: vec![1000],
        },
        Case {
            name: "seller shortfall: buyer pays retail for what the seller did not deliver",
            trades: vec![trade("b", "s", 1000, 200_000, 210_000)],
            deliveries: vec![("s", 600, 0), ("b", 0, 1000)],
            // seller 600·0.2 = 120 000; buyer 600·0.21 = 126 000 + 400·0.32 = 128 000
            expect: vec![("b", -254_000), ("s", 120_000)],
            utility: 6_000 + 128_000,
            settled: vec![600],
        },
        Case {
            name: "buyer took less: utility buys the seller's excess at feed-in",
            trades: vec![trade("b", "s", 1000, 200_000, 210_000)],
            deliveries: vec![("s", 1000, 0), ("b", 0, 700)],
            // seller 700·0.2 = 140 000 + 300·0.08 = 24 000; buyer 700·0.21 = 147 000
            expect: vec![("b", -147_000), ("s", 164_000)],
            utility: 7_000 - 24_000,
            settled: vec![700],
        },
        Case {
            name: "buyer imported more than it bought: the excess is not this batch's business",
            trades: vec![trade("b", "s", 1000, 200_000, 200_000)],
            deliveries: vec![("s", 1000, 0), ("b", 0, 5000)],
            expect: vec![("b", -200_000), ("s", 200_000)],
            utility: 0,
            settled: vec![1000],
        },
        Case {
            name: "seller export allocated across its trades in canonical order",
            trades: vec![
                trade("b1", "s", 500, 200_000, 200_000),
                trade("b2", "s", 500, 200_000, 200_000),
            ],
            deliveries: vec![("s", 700, 0), ("b1", 0, 500), ("b2", 0, 500)],
            // t1 settles 500; t2 settles 200, b2 pays retail for 300 (96 000)
            expect: vec![("b1", -100_000), ("b2", -40_000 - 96_000), ("s", 140_000)],
            utility: 96_000,
            settled: vec![500, 200],
        },
        Case {
            name: "undelivered: no readings means nothing measured",
            trades: vec![trade("b", "s", 1000, 200_000, 200_000)],
            deliveries: vec![("b", 0, 1000)],
            expect: vec![("b", -320_000), ("s", 0)],
            utility: 320_000,
            settled: vec![0],
        },
        Case {
            name: "rounding: odd watt-hours at an odd price still sum to zero",
            trades: vec![trade("b", "s", 333, 123_457, 133_457)],
            deliveries: vec![("s", 333, 0), ("b", 0, 333)],
            // 333·123 457/1000 = 41 111.181 → 41 111; 333·133 457/1000 = 44 441.181 → 44 441
            expect: vec![("b", -44_441), ("s", 41_111)],
            utility: 3_330,
            settled: vec![333],
        },
    ];
    for c in cases {
        let r = reconcile(&c.trades, &delivered(&c.deliveries), &params());
        let expect: Vec<(String, i64)> = c
            .expect
            .iter()
            .map(|(n, a)| ((*n).to_owned(), *a))
            .collect();
        assert_eq!(amounts(&r), expect, "{}", c.name);
        assert_eq!(r.utility, Micros(c.utility), "{}", c.name);
        let settled: Vec<u64> = r.lines.iter().map(|l| l.settled_wh.0).collect();
        assert_eq!(settled, c.settled, "{}", c.name);
        zero_sum(&r);
    }
}

#[test]
fn undelivered_flag_zeroes_measurements() {
    let mut d = delivered(&[("s", 1000, 0), ("b", 0, 1000)]);
    if let Some(s) = d.get_mut(&h("s")) {
        s.has_data = false;
    }
    let r = reconcile(&[trade("b", "s", 1000, 200_000, 200_000)], &d, &params());
    assert_eq!(r.lines[0].settled_wh, WattHours(0));
    zero_sum(&r);
}

proptest! {
    #[test]
    fn always_balances(
        trades in prop::collection::vec((0usize..4, 0usize..4, 1u64..5000, 80_000u64..320_000, 0u64..20_000), 0..12),
        measured in prop::collection::vec((0u64..20_000, 0u64..20_000, any::<bool>()), 4),
    ) {
        let names = ["a", "b", "c", "d"];
        let trades: Vec<Trade> = trades
            .into_iter()
            .filter(|(b, s, ..)| b != s)
            .map(|(b, s, q, p, fee)| trade(names[b], names[s], q, p, p + fee))
            .collect();
        let deliveries: BTreeMap<HouseholdId, Delivery> = names
            .iter()
            .zip(measured)
            .map(|(n, (e, i, has))| (h(n), Delivery { export_wh: WattHours(e), import_wh: WattHours(i), has_data: has }))
            .collect();
        let r = reconcile(&trades, &deliveries, &params());
        let total: i128 = r.transfers.iter().map(|t| i128::from(t.amount.0)).sum::<i128>() + i128::from(r.utility.0);
        prop_assert_eq!(total, 0);
        for l in &r.lines {
            prop_assert!(l.settled_wh <= l.contracted_wh);
            prop_assert!(l.buyer_pays >= l.seller_receives);
        }
        let delivered: u64 = r.transfers.iter().map(|t| t.delivered_wh.0).sum();
        let received: u64 = r.transfers.iter().map(|t| t.received_wh.0).sum();
        prop_assert_eq!(delivered, received);
    }
}
