//! Ranking the two sides and walking them together into matched segments.
//!
//! Ranking is done in two steps for speed at a million orders:
//!
//! 1. One sequential pass over the book turns every eligible order into an
//!    [`Ent`]: its price key, the first 8 bytes of its id as an integer, its
//!    quantity and its index (and sums the totals). Nothing later reads the
//!    book again except to break a tie between two ids that share 8 bytes,
//!    so the walk makes no random access into the orders.
//!    In the same pass each entry goes into one of 2 048 buckets per side,
//!    which split the tariff band into equal price ranges (prices outside it
//!    share the first or last bucket): no sort, no second pass. Prices on
//!    any realistic grid put one price level in a bucket. The order inside a
//!    bucket is arbitrary and never decides anything.
//! 2. Lazily, each bucket the walk actually reaches is sorted by (key, id
//!    prefix), and only runs that share both are ranked in full by the
//!    documented tie-break (id, household, quantity). Buckets the walk never
//!    reaches are never sorted.
//!
//! The walk writes [`Match`]es directly (no intermediate segment list);
//! until [`super::pricing`] sets the prices, a match's `price` holds the
//! buyer's net bid and its `buyer_price` the seller's ask.

use super::{BookOrder, Match};
use protocol::{AuctionParams, MicroPerKwh, Side, WattHours};
use std::cmp::Ordering;

/// The result of the walk, before any mechanism sets prices.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Walk {
    /// Matched segments in walk (canonical) order; `price` holds the net bid
    /// and `buyer_price` the ask until pricing.
    pub matches: Vec<Match>,
    /// The net bid of the first Wh not traded on the buy side, if any.
    pub next_bid: Option<u64>,
    /// The ask of the first Wh not traded on the sell side, if any.
    pub next_ask: Option<u64>,
    /// Total quantity of all buy and all sell orders (eligible or not).
    pub total_buy: u128,
    pub total_sell: u128,
}

/// Tie-break within one price level: id, household, quantity. Orders equal
/// under this (and at the same price and side) are identical.
fn tie(a: &BookOrder, b: &BookOrder) -> Ordering {
    a.id.as_bytes()
        .cmp(b.id.as_bytes())
        .then_with(|| {
            a.household
                .as_str()
                .as_bytes()
                .cmp(b.household.as_str().as_bytes())
        })
        .then_with(|| a.quantity_wh.cmp(&b.quantity_wh))
}

/// The first 8 bytes of `id`, zero-padded, as a big-endian integer. If two
/// prefixes differ, they order the ids as a byte-wise comparison would.
fn id_prefix(id: &str) -> u64 {
    let b = id.as_bytes();
    let mut buf = [0u8; 8];
    // A fixed-size copy when possible: a variable-length `memcpy` call per
    // order shows up in profiles.
    if let Some(head) = b.first_chunk::<8>() {
        buf = *head;
    } else {
        buf[..b.len()].copy_from_slice(b);
    }
    u64::from_be_bytes(buf)
}

/// One eligible order as the ranking sees it (32 bytes, copied around by
/// value; the book itself is not touched again).
#[derive(Debug, Clone, Copy)]
struct Ent {
    /// Ascending key is descending priority: a sell's ask, a buy's
    /// `u64::MAX − net bid`.
    key: u64,
    /// [`id_prefix`] of the order's id.
    prefix: u64,
    /// The order's quantity (never zero: such orders are not eligible).
    qty: u64,
    /// Position in the book.
    idx: usize,
}

impl Ent {
    /// The sort key inside a bucket: price first, then id prefix.
    fn rank(&self) -> u128 {
        (u128::from(self.key) << 64) | u128::from(self.prefix)
    }
}

/// Most buckets per side; a power of two.
const BUCKET_BITS: u32 = 11;
const BUCKETS: usize = 1 << BUCKET_BITS;

/// Maps a price to its bucket, monotonically: buckets split the tariff band
/// `[feed_in, retail]` into at most [`BUCKETS`] equal ranges, and prices
/// outside the band fall into the first or last bucket. Any monotone map
/// ranks correctly (a bucket is sorted in full when reached); this one puts
/// one price level per bucket for prices on any realistic grid, and needs no
/// pass over the book to set up.
#[derive(Clone, Copy)]
struct Buckets {
    lo: u64,
    hi: u64,
    shift: u32,
}

impl Buckets {
    fn new(params: &AuctionParams, one: bool) -> Buckets {
        let (lo, hi) = (
            params.feed_in_tariff.0,
            params.retail_tariff.0.max(params.feed_in_tariff.0),
        );
        let span_bits = u64::BITS - (hi - lo).leading_zeros();
        // `one`: a shift so large that every price lands in one bucket.
        let shift = if one {
            u64::BITS
        } else {
            span_bits.saturating_sub(BUCKET_BITS)
        };
        Buckets { lo, hi, shift }
    }

    /// Position of `p` in the band, in buckets (`< BUCKETS`).
    fn of(self, p: u64) -> usize {
        let off = p.clamp(self.lo, self.hi) - self.lo;
        off.checked_shr(self.shift).unwrap_or(0) as usize
    }
}

/// One side: entries grouped by bucket, and a read position.
struct Cursor<'a> {
    orders: &'a [BookOrder],
    /// Buckets in priority order, each unsorted until reached.
    buckets: Vec<Vec<Ent>>,
    /// The next bucket to rank.
    next: usize,
    /// The bucket being walked, ranked.
    cur: Vec<Ent>,
    /// The current entry in `cur`.
    at: usize,
    /// Wh left in the current entry.
    rem: u64,
}

impl<'a> Cursor<'a> {
    fn new(orders: &'a [BookOrder], buckets: Vec<Vec<Ent>>) -> Self {
        Cursor {
            orders,
            buckets,
            next: 0,
            cur: Vec::new(),
            at: 0,
            rem: 0,
        }
    }

    /// Ranks buckets until the current position holds an entry or none
    /// is left.
    fn fill(&mut self) {
        while self.at >= self.cur.len() && self.next < self.buckets.len() {
            self.cur = std::mem::take(&mut self.buckets[self.next]);
            self.next += 1;
            self.at = 0;
            rank_bucket(&mut self.cur, self.orders);
            if let Some(e) = self.cur.first() {
                self.rem = e.qty;
            }
        }
    }

    /// The current entry's key, index and Wh left.
    fn current(&mut self) -> Option<(u64, usize, u64)> {
        if self.at >= self.cur.len() {
            self.fill();
        }
        self.cur.get(self.at).map(|e| (e.key, e.idx, self.rem))
    }

    /// Consumes `q` Wh of the current entry (at most what is left).
    fn take(&mut self, q: u64) {
        self.rem -= q;
        if self.rem == 0 {
            self.at += 1;
            if let Some(e) = self.cur.get(self.at) {
                self.rem = e.qty;
            }
        }
    }
}

/// Sorts one bucket by key and id prefix, then ranks runs that share both
/// by the full tie-break.
fn rank_bucket(ents: &mut [Ent], orders: &[BookOrder]) {
    ents.sort_unstable_by_key(Ent::rank);
    let mut start = 0;
    while start < ents.len() {
        let r = ents[start].rank();
        let run = ents[start..].iter().take_while(|e| e.rank() == r).count();
        if run > 1 {
            ents[start..start + run].sort_unstable_by(|a, b| tie(&orders[a.idx], &orders[b.idx]));
        }
        start += run;
    }
}

/// Ranks the eligible orders and walks the curves (see the module docs of
/// [`super`] for the rules).
pub(super) fn walk(orders: &[BookOrder], params: &AuctionParams) -> Walk {
    walk_impl(orders, params, false)
}

/// Which orders may trade, and at what price: a buy's net bid or a sell's
/// ask; `None` for an order that cannot trade.
fn eligible(o: &BookOrder, params: &AuctionParams) -> Option<u64> {
    if o.quantity_wh.0 == 0 {
        return None;
    }
    match o.side {
        // A net bid below the feed-in tariff (or a limit below the fee) can
        // never be met by a rational seller.
        Side::Buy => o
            .limit_price
            .0
            .checked_sub(params.grid_fee.0)
            .filter(|&n| n >= params.feed_in_tariff.0),
        Side::Sell => Some(o.limit_price.0).filter(|&a| a <= params.retail_tariff.0),
    }
}

/// [`walk`], optionally with each side as one bucket sorted whole by
/// comparison (to test the bucketing against plain sorting).
pub(super) fn walk_impl(orders: &[BookOrder], params: &AuctionParams, one_bucket: bool) -> Walk {
    let (mut total_buy, mut total_sell) = (0u128, 0u128);
    let contradictory = params.feed_in_tariff > params.retail_tariff;
    let map = Buckets::new(params, one_bucket);
    let mut bids: Vec<Vec<Ent>> = vec![Vec::new(); BUCKETS];
    let mut asks: Vec<Vec<Ent>> = vec![Vec::new(); BUCKETS];
    let (mut n_bids, mut n_asks) = (0usize, 0usize);
    for (idx, o) in orders.iter().enumerate() {
        match o.side {
            Side::Buy => total_buy += u128::from(o.quantity_wh.0),
            Side::Sell => total_sell += u128::from(o.quantity_wh.0),
        }
        if contradictory {
            continue;
        }
        let Some(p) = eligible(o, params) else {
            continue;
        };
        let (bucket, key) = match o.side {
            // Highest bid first.
            Side::Buy => {
                n_bids += 1;
                (&mut bids[BUCKETS - 1 - map.of(p)], u64::MAX - p)
            }
            Side::Sell => {
                n_asks += 1;
                (&mut asks[map.of(p)], p)
            }
        };
        bucket.push(Ent {
            key,
            prefix: id_prefix(&o.id),
            qty: o.quantity_wh.0,
            idx,
        });
    }
    // A walk trades at most every eligible order, minus one per side.
    let mut matches = Vec::with_capacity(n_bids + n_asks);
    let bids = Cursor::new(orders, bids);
    let asks = Cursor::new(orders, asks);
    let mut walk = run(bids, asks, params, &mut matches);
    walk.matches = matches;
    walk.total_buy = total_buy;
    walk.total_sell = total_sell;
    walk
}

/// The walk proper; a bid's key is `u64::MAX − net bid`, an ask's key its ask.
fn run(
    mut bids: Cursor,
    mut asks: Cursor,
    params: &AuctionParams,
    matches: &mut Vec<Match>,
) -> Walk {
    let mut left = params.capacity_wh.map_or(u64::MAX, |c| c.0);
    while left > 0 {
        let (Some((bk, buy, bq)), Some((ask, sell, sq))) = (bids.current(), asks.current()) else {
            break;
        };
        let bid = u64::MAX - bk;
        if bid < ask {
            break;
        }
        let qty = bq.min(sq).min(left);
        matches.push(Match {
            buy,
            sell,
            quantity_wh: WattHours(qty),
            price: MicroPerKwh(bid),
            buyer_price: MicroPerKwh(ask),
        });
        left -= qty;
        bids.take(qty);
        asks.take(qty);
    }
    Walk {
        matches: Vec::new(),
        next_bid: bids.current().map(|(k, ..)| u64::MAX - k),
        next_ask: asks.current().map(|(k, ..)| k),
        total_buy: 0,
        total_sell: 0,
    }
}
