//! The double auction: a pure function of (orders, parameters).
//!
//! Anyone holding an interval's published orders and parameters can re-run
//! [`clear`] and must get the same [`Outcome`] bit for bit. So this module does
//! no IO, never reads a clock, uses no floating point and never lets the order
//! of its input decide anything.
//!
//! # The book
//!
//! Every [`BookOrder`] is one step of a household's step curve: a divisible
//! quantity in Wh and a limit price in µ/kWh. Quantities are traded in whole
//! Wh.
//!
//! - A **buy** limit is the all-in price the buyer accepts, grid fee included.
//!   The auction compares the buyer's *net bid* `limit − grid_fee` with asks, so
//!   a buyer matches a seller only if `limit ≥ ask + grid_fee`.
//! - **Tariff bounds.** A sell order whose limit is above the retail tariff, or
//!   a buy order whose net bid is below the feed-in tariff, cannot trade: the
//!   utility always offers the other side a better deal. (For a buyer that
//!   means `limit < feed_in_tariff + grid_fee`.) Orders of zero quantity never
//!   trade. If `feed_in_tariff > retail_tariff` the parameters are
//!   contradictory and nothing trades.
//! - Everything that does not trade goes to or from the utility at its
//!   tariffs; [`Outcome`] reports it as `unmatched_buy_wh`/`unmatched_sell_wh`.
//!
//! # Priority and tie-breaking
//!
//! Bids are ranked by net bid, highest first; asks by limit, lowest first.
//! Orders at the same price are ranked by `id` (byte-wise ascending), then
//! `household` (byte-wise ascending), then `quantity_wh` (ascending). Two
//! orders equal in all of these are identical in every field, so which of
//! them comes first cannot change the result. Nothing depends on where an
//! order stands in the input slice.
//!
//! # The walk
//!
//! The auction walks the two ranked curves together, Wh by Wh in effect but in
//! segments: the best remaining bid meets the best remaining ask while the net
//! bid is at least the ask and the feeder capacity (`capacity_wh`, if any) is
//! not used up; each segment trades `min(remaining bid, remaining ask,
//! remaining capacity)` Wh, splitting orders where needed. The last matched Wh
//! is the *marginal pair* with net bid `b_k` and ask `s_k`; the Wh that would
//! come next on each side, if any, is the *first excluded pair* `b_{k+1}`,
//! `s_{k+1}`.
//!
//! # Mechanisms and prices
//!
//! `clamp(p)` is `p` bounded to `[feed_in_tariff, retail_tariff]`. Because of
//! the tariff bounds above, clamping never pushes a price past a matched
//! order's limit. A trade's `price` is what the seller receives per kWh; its
//! `buyer_price` is what the buyer pays per kWh, grid fee included.
//!
//! - [`Mechanism::Uniform`] (pay-as-clear): every trade at
//!   `p = clamp(rule(b_k, s_k))` where [`PriceRule::Midpoint`] is
//!   `⌊(b_k + s_k) / 2⌋`, [`PriceRule::Bid`] is `b_k` and [`PriceRule::Ask`] is
//!   `s_k`; `buyer_price = p + grid_fee`. `clearing_price` is `p`.
//! - [`Mechanism::PayAsBid`]: each segment trades at its buyer's net bid,
//!   `price = clamp(net bid)`, and the seller receives that same price (the
//!   buyer's bid, not the seller's ask: the whole gain from trade goes to the
//!   seller, and money balances without an operator margin);
//!   `buyer_price = price + grid_fee`. `clearing_price` is the
//!   volume-weighted average `⌊Σ price·Wh / Σ Wh⌋`.
//! - [`Mechanism::Mcafee`] (trade reduction, applied per Wh): if there is a
//!   first excluded pair and `p0 = ⌊(b_{k+1} + s_{k+1}) / 2⌋` lies within
//!   `[s_k, b_k]`, every matched Wh trades at `clamp(p0)` (as uniform).
//!   Otherwise the marginal Wh is dropped (the last segment loses 1 Wh),
//!   sellers receive `clamp(s_k)` and buyers pay `clamp(b_k) + grid_fee`; the
//!   difference is the operator's surplus (`surplus_micros`), so the mechanism
//!   is budget-balanced or in surplus, never in deficit. `clearing_price` is
//!   the sellers' price. When capacity binds, the first excluded pair still
//!   crosses, so `p0` always lies in range and no Wh is dropped. Caveat: the
//!   mechanism is truthful for price-setting by single-Wh traders; with
//!   multi-Wh orders the marginal order's own remainder can be the excluded
//!   pair and so influence `p0`.
//!
//! # Money and rounding
//!
//! All arithmetic is integer (`u64`, `u128` for products). Money is computed
//! once per trade with [`MicroPerKwh::cost_of`] (`⌊Wh × µ/kWh / 1000⌋`):
//! the seller receives `price.cost_of(q)` and the buyer pays
//! `buyer_price.cost_of(q)` ([`Trade::seller_receives`]/[`Trade::buyer_pays`]).
//! The difference per trade splits exactly into a fee part,
//! `buyer_price.cost_of(q) − net.cost_of(q)`, and a surplus part,
//! `net.cost_of(q) − price.cost_of(q)`, where `net = buyer_price − grid_fee`.
//! `surplus` is zero except for McAfee's reduced case. Hence, exactly:
//! `Σ buyer_pays − Σ seller_receives = fee_micros + surplus_micros`.
//! Prices saturate at `u64::MAX` and sums of money at `i64::MAX`; neither is
//! reachable with real tariffs and feeders.
//!
//! # Canonical order of trades
//!
//! Trades are listed in walk order: by the buy order's priority, then by the
//! sell order's priority. A (buy order, sell order) pair trades at most once.
//!
//! # Self-matching
//!
//! A household's buy may match its own sell; the auction does not know which
//! orders a household would net. Settlement nets transfers per household, so
//! such a trade only costs it the grid fee (the engine may refuse books with
//! both sides from one household).
//!
//! # Scale
//!
//! [`clear`] reads the book twice, sequentially: once to sum quantities per
//! price bucket, which bounds how far the walk can go, and once to turn only
//! the orders in buckets it can reach into small entries (price key, id
//! prefix, quantity, index); it sorts only the buckets the walk enters (see
//! `walk`) and touches the orders again only for ties on the first 8 bytes
//! of an id. A [`Trade`] shares its ids with the book ([`BookOrder::id`] and
//! [`HouseholdId`] are reference-counted), so building one is four count
//! increments and no string copy, and it is 56 bytes. The entry and match
//! buffers are kept per thread for the next clearing (up to 64 MiB each),
//! because at a million orders fresh memory (page faults) costs as much as
//! the auction itself; the trade vector is the caller's and always new.
//! Measured figures: `voltshare bench clearing` and the criterion bench
//! (`cargo bench -p clearing --bench auction`). [`clear_indexed`] returns the
//! same result by order index, without trades.

mod json;
mod pricing;
mod random;
mod walk;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tables;

pub use json::{BookError, clear_json, outcome_json, parse_book};
pub use random::{bench_clearing, bench_params, random_book};

use protocol::{AuctionParams, Hash32, HouseholdId, MicroPerKwh, Micros, Side, Trade, WattHours};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::sync::Arc;

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

/// One order in an auction book: one step of a household's step curve.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookOrder {
    /// Shared with the trades the order takes part in (on the wire, a plain
    /// string).
    #[serde(with = "shared_str")]
    pub id: Arc<String>,
    pub household: HouseholdId,
    pub side: Side,
    pub quantity_wh: WattHours,
    /// For a buy: the all-in price accepted, grid fee included. For a sell:
    /// the least price accepted.
    pub limit_price: MicroPerKwh,
}

/// The result of clearing one book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The uniform price sellers receive (for pay-as-bid: the volume-weighted
    /// average, rounded down), or `None` when nothing trades.
    pub clearing_price: Option<MicroPerKwh>,
    /// Energy traded between households.
    pub volume_wh: WattHours,
    /// Trades in canonical order.
    pub trades: Vec<Trade>,
    /// Energy bid for but not traded: the buyers get it from the utility at
    /// the retail tariff. Includes orders that could not trade at all.
    #[serde(default)]
    pub unmatched_buy_wh: WattHours,
    /// Energy offered but not traded: the sellers feed it in at the feed-in
    /// tariff. Includes orders that could not trade at all.
    #[serde(default)]
    pub unmatched_sell_wh: WattHours,
    /// The grid-fee money buyers pay on top of the traded price.
    #[serde(default)]
    pub fee_micros: Micros,
    /// McAfee's operator surplus (buyers' net payments minus sellers'
    /// receipts); zero for the other mechanisms.
    #[serde(default)]
    pub surplus_micros: Micros,
}

impl Outcome {
    /// Σ over trades of what buyers pay, grid fee included.
    pub fn buyers_pay(&self) -> Micros {
        self.trades.iter().map(Trade::buyer_pays).sum()
    }
    /// Σ over trades of what sellers receive.
    pub fn sellers_receive(&self) -> Micros {
        self.trades.iter().map(Trade::seller_receives).sum()
    }
}

/// One trade by order index: `quantity_wh` from `orders[buy]` to
/// `orders[sell]`. The indexed form of a [`Trade`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Match {
    pub buy: usize,
    pub sell: usize,
    pub quantity_wh: WattHours,
    /// What the seller receives per kWh.
    pub price: MicroPerKwh,
    /// What the buyer pays per kWh, grid fee included.
    pub buyer_price: MicroPerKwh,
}

/// An [`Outcome`] whose trades are still indices into the book: what
/// [`clear_indexed`] returns. Building owned [`Trade`]s (four `String`s each)
/// dominates the cost of clearing a huge book, so callers that only need
/// totals, or that keep the book at hand, can skip it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedOutcome {
    pub clearing_price: Option<MicroPerKwh>,
    pub volume_wh: WattHours,
    /// Matches in canonical order (the same order as [`Outcome::trades`]).
    pub matches: Vec<Match>,
    pub unmatched_buy_wh: WattHours,
    pub unmatched_sell_wh: WattHours,
    pub fee_micros: Micros,
    pub surplus_micros: Micros,
}

impl IndexedOutcome {
    /// The owned [`Outcome`]; `orders` must be the slice that was cleared.
    /// A trade shares its ids with the book (reference counts, no copies).
    pub fn into_outcome(self, orders: &[BookOrder]) -> Outcome {
        self.into_outcome_keep(orders).0
    }

    /// [`Self::into_outcome`], handing back the emptied match buffer.
    fn into_outcome_keep(self, orders: &[BookOrder]) -> (Outcome, Vec<Match>) {
        let mut trades = Vec::with_capacity(self.matches.len());
        // The matched orders lie scattered in memory, and so do the shared
        // texts they point to; each clone's reference-count update (a
        // locked read-modify-write) would wait for its cache misses without
        // overlapping the next ones. So each chunk is done in three tight
        // loops: gather the four shared ids of every match (independent
        // loads of the orders, which the CPU overlaps), read each one's
        // count (independent again), and only then clone, from cache.
        const CHUNK: usize = 128;
        let mut texts = Vec::with_capacity(CHUNK);
        let mut local = Vec::with_capacity(CHUNK);
        for chunk in self.matches.chunks(CHUNK) {
            texts.clear();
            texts.extend(chunk.iter().map(|m| {
                let (b, s) = (&orders[m.buy], &orders[m.sell]);
                (&b.id, &s.id, &b.household, &s.household)
            }));
            let mut touch = 0usize;
            for &(bo, so, bh, sh) in &texts {
                // Reading a count is a plain load of the line the clone
                // will update.
                touch = touch
                    .wrapping_add(Arc::strong_count(bo))
                    .wrapping_add(Arc::strong_count(so))
                    .wrapping_add(bh.shares())
                    .wrapping_add(sh.shares());
            }
            std::hint::black_box(touch);
            // A locked update also waits for all earlier stores to leave
            // the store buffer, and stores into the (fresh) trade vector
            // miss: so the clones go into a small buffer that stays in
            // cache, which is then moved into place with plain stores.
            local.extend(chunk.iter().map(|m| {
                let (b, s) = (&orders[m.buy], &orders[m.sell]);
                Trade {
                    buyer: b.household.clone(),
                    seller: s.household.clone(),
                    buy_order: Arc::clone(&b.id),
                    sell_order: Arc::clone(&s.id),
                    quantity_wh: m.quantity_wh,
                    price: m.price,
                    buyer_price: m.buyer_price,
                }
            }));
            trades.append(&mut local);
        }
        let outcome = Outcome {
            clearing_price: self.clearing_price,
            volume_wh: self.volume_wh,
            trades,
            unmatched_buy_wh: self.unmatched_buy_wh,
            unmatched_sell_wh: self.unmatched_sell_wh,
            fee_micros: self.fee_micros,
            surplus_micros: self.surplus_micros,
        };
        (outcome, self.matches)
    }
}

/// Clears a book. The result is a pure function of `orders` (as a multiset)
/// and `params`; see the module docs for the rules. The trades share their
/// ids with `orders`.
pub fn clear(orders: &[BookOrder], params: &AuctionParams) -> Outcome {
    // The matches are only a step towards the trades here, so their buffer
    // is kept for the next clearing on this thread (see `walk::keep`).
    let buf = MATCHES.with(|m| std::mem::take(&mut *m.borrow_mut()));
    let indexed = clear_indexed_into(orders, params, buf);
    let (outcome, buf) = indexed.into_outcome_keep(orders);
    MATCHES.with(|m| *m.borrow_mut() = walk::keep(buf));
    outcome
}

thread_local! {
    /// The match buffer of the last [`clear`] on this thread.
    static MATCHES: std::cell::RefCell<Vec<Match>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Clears a book without building owned trades. The matches refer to
/// positions in `orders`, so only their mapping back to orders (not the
/// indices themselves) is independent of the input order.
pub fn clear_indexed(orders: &[BookOrder], params: &AuctionParams) -> IndexedOutcome {
    clear_indexed_into(orders, params, Vec::new())
}

/// [`clear_indexed`], writing the matches into `buf`'s memory.
fn clear_indexed_into(
    orders: &[BookOrder],
    params: &AuctionParams,
    buf: Vec<Match>,
) -> IndexedOutcome {
    let walk = walk::walk_into(orders, params, buf);
    let (total_buy, total_sell) = (walk.total_buy, walk.total_sell);
    let priced = pricing::price(params, walk);
    let volume = u128::from(priced.volume);
    let saturate = |v: u128| WattHours(u64::try_from(v).unwrap_or(u64::MAX));
    IndexedOutcome {
        clearing_price: priced.clearing_price,
        volume_wh: WattHours(priced.volume),
        matches: priced.matches,
        unmatched_buy_wh: saturate(total_buy.saturating_sub(volume)),
        unmatched_sell_wh: saturate(total_sell.saturating_sub(volume)),
        fee_micros: priced.fee,
        surplus_micros: priced.surplus,
    }
}

/// The canonical total order of orders used by [`inputs_hash`]: by every
/// field, so that orders comparing equal are identical.
fn canonical_cmp(a: &BookOrder, b: &BookOrder) -> Ordering {
    a.id.cmp(&b.id)
        .then_with(|| a.household.cmp(&b.household))
        .then_with(|| a.side.cmp(&b.side))
        .then_with(|| a.limit_price.cmp(&b.limit_price))
        .then_with(|| a.quantity_wh.cmp(&b.quantity_wh))
}

/// Commits to the inputs of an auction: SHA-256 of the canonical JSON of
/// `{"params": …, "orders": [...]}` with the orders sorted by id, household,
/// side, limit price and quantity. Shuffling the orders never changes it.
pub fn inputs_hash(orders: &[BookOrder], params: &AuctionParams) -> Hash32 {
    #[derive(Serialize)]
    struct Inputs<'a> {
        params: &'a AuctionParams,
        orders: Vec<&'a BookOrder>,
    }
    let mut sorted: Vec<&BookOrder> = orders.iter().collect();
    sorted.sort_unstable_by(|a, b| canonical_cmp(a, b));
    protocol::hash_json(&Inputs {
        params,
        orders: sorted,
    })
}
