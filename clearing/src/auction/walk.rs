//! Ranking the two sides and walking them together into matched segments.
//!
//! Ranking is done in two steps for speed at a million orders:
//!
//! 1. One sequential pass over the book turns every eligible order into an
//!    entry `(price key, index)` (and sums the totals). When the price fits
//!    beside the index in 64 bits, which it does for any real tariff, the
//!    entry is one packed `u64` (`key << shift | index`) and the entries are
//!    grouped by key with an LSD radix sort over only the bits in which the
//!    keys differ; otherwise `(u64, usize)` pairs are sorted by comparison.
//!    The order inside a price level after this step is arbitrary and never
//!    decides anything.
//! 2. Lazily, each price level the walk actually reaches is copied out and
//!    ranked by the documented tie-break (id, household, quantity). To avoid
//!    a string comparison (and a cache miss) per comparison, the level is
//!    first sorted by the first 8 bytes of the id as a big-endian integer, and
//!    only runs that share those 8 bytes are compared in full. Levels the
//!    walk never reaches are never ranked: only their price is ever read.
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

/// A sortable `(key, index)` entry.
trait Entry: Ord + Copy {
    fn make(key: u64, idx: usize, shift: u32) -> Self;
    fn key(self, shift: u32) -> u64;
    fn idx(self, shift: u32) -> usize;
    /// Groups `list` by ascending key (the order within a key is free).
    fn sort(list: &mut Vec<Self>, shift: u32);
}

/// `key << shift | index`, used when both fit.
impl Entry for u64 {
    fn make(key: u64, idx: usize, shift: u32) -> Self {
        (key << shift) | idx as u64
    }
    fn key(self, shift: u32) -> u64 {
        self >> shift
    }
    fn idx(self, shift: u32) -> usize {
        (self & ((1u64 << shift) - 1)) as usize
    }
    fn sort(list: &mut Vec<Self>, shift: u32) {
        radix_sort_keys(list, shift);
    }
}

/// The general case.
impl Entry for (u64, usize) {
    fn make(key: u64, idx: usize, _: u32) -> Self {
        (key, idx)
    }
    fn key(self, _: u32) -> u64 {
        self.0
    }
    fn idx(self, _: u32) -> usize {
        self.1
    }
    fn sort(list: &mut Vec<Self>, _: u32) {
        list.sort_unstable();
    }
}

/// Stable LSD radix sort of packed entries by `entry >> shift`, over only the
/// bits in which the keys differ (prices on a fine grid over a tariff band
/// need 2 passes of 11 bits).
fn radix_sort_keys(list: &mut Vec<u64>, shift: u32) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    if list.len() < 512 {
        list.sort_unstable();
        return;
    }
    let (min, max) = list.iter().fold((u64::MAX, 0), |(lo, hi), &e| {
        (lo.min(e >> shift), hi.max(e >> shift))
    });
    let span_bits = u64::BITS - (max - min).leading_zeros();
    let mut buf = vec![0u64; list.len()];
    let mut counts = vec![0usize; BUCKETS];
    let mut pass = 0;
    while pass * BITS < span_bits {
        let digit = |e: u64| (((e >> shift) - min) >> (pass * BITS)) as usize & (BUCKETS - 1);
        counts.fill(0);
        for &e in list.iter() {
            counts[digit(e)] += 1;
        }
        let mut sum = 0;
        for c in counts.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for &e in list.iter() {
            let d = digit(e);
            buf[counts[d]] = e;
            counts[d] += 1;
        }
        std::mem::swap(list, &mut buf);
        pass += 1;
    }
}

/// One ranked side with a read position inside the current order.
struct Cursor<'a, E> {
    orders: &'a [BookOrder],
    /// Ascending key is descending priority.
    list: Vec<E>,
    shift: u32,
    /// Start (in `list`) of the first level not yet ranked.
    next: usize,
    /// The current price level, ranked: (id prefix, order index, quantity).
    /// Reading each order once here, in a tight loop whose loads are
    /// independent, hides most of the cache misses of the random accesses.
    level: Vec<(u64, usize, u64)>,
    level_key: u64,
    /// Position in `level`.
    at: usize,
    /// Wh left in the order at `at`.
    rem: u64,
}

impl<'a, E: Entry> Cursor<'a, E> {
    fn new(orders: &'a [BookOrder], mut list: Vec<E>, shift: u32) -> Self {
        E::sort(&mut list, shift);
        Cursor {
            orders,
            list,
            shift,
            next: 0,
            level: Vec::new(),
            level_key: 0,
            at: 0,
            rem: 0,
        }
    }

    /// The key of the current position, without ranking a new level.
    fn peek_key(&self) -> Option<u64> {
        if self.at < self.level.len() {
            Some(self.level_key)
        } else {
            self.list.get(self.next).map(|e| e.key(self.shift))
        }
    }

    /// Ranks the price level starting at `next` by the tie-break: by id
    /// prefix first (integers), then in full only within runs that share it.
    fn rank_level(&mut self) {
        let (shift, orders) = (self.shift, self.orders);
        let Some(first) = self.list.get(self.next) else {
            return;
        };
        let key = first.key(shift);
        // Everything before `next` is ranked, so `list[next]` starts its
        // level: the level is the run of equal keys from here.
        self.level.clear();
        self.level.extend(
            self.list[self.next..]
                .iter()
                .take_while(|e| e.key(shift) == key)
                .map(|e| {
                    let i = e.idx(shift);
                    let o = &orders[i];
                    (id_prefix(&o.id), i, o.quantity_wh.0)
                }),
        );
        self.next += self.level.len();
        self.level_key = key;
        self.at = 0;
        let level = &mut self.level;
        if level.len() > 1 {
            level.sort_unstable_by_key(|e| e.0);
            let mut start = 0;
            while start < level.len() {
                let p = level[start].0;
                let run = level[start..].iter().take_while(|e| e.0 == p).count();
                if run > 1 {
                    level[start..start + run]
                        .sort_unstable_by(|a, b| tie(&orders[a.1], &orders[b.1]));
                }
                start += run;
            }
        }
        self.rem = level.first().map_or(0, |e| e.2);
    }

    /// The order at the current position, ranking the next price level when
    /// the current one is used up, and the Wh left in it.
    fn current(&mut self) -> Option<(usize, u64)> {
        if self.at >= self.level.len() {
            self.rank_level();
        }
        self.level.get(self.at).map(|e| (e.1, self.rem))
    }

    /// Consumes `q` Wh of the current order (at most what is left).
    fn take(&mut self, q: u64) {
        self.rem -= q;
        if self.rem == 0 {
            self.at += 1;
            self.rem = self.level.get(self.at).map_or(0, |e| e.2);
        }
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

/// [`walk`], optionally forcing the unpacked entries (to test both paths).
pub(super) fn walk_impl(orders: &[BookOrder], params: &AuctionParams, force_wide: bool) -> Walk {
    let (mut total_buy, mut total_sell) = (0u128, 0u128);
    let contradictory = params.feed_in_tariff > params.retail_tariff;
    // Bits for the index, and the largest price that fits beside it.
    let shift = usize::BITS - orders.len().leading_zeros();
    let top = if shift < 64 { u64::MAX >> shift } else { 0 };
    let mut packed = !force_wide && shift < 64;
    let mut bids: Vec<u64> = Vec::with_capacity(if packed { orders.len() / 2 } else { 0 });
    let mut asks: Vec<u64> = Vec::with_capacity(if packed { orders.len() / 2 } else { 0 });
    for (i, o) in orders.iter().enumerate() {
        match o.side {
            Side::Buy => total_buy += u128::from(o.quantity_wh.0),
            Side::Sell => total_sell += u128::from(o.quantity_wh.0),
        }
        if !packed || contradictory {
            continue;
        }
        if let Some(p) = eligible(o, params) {
            if p > top {
                // A price too large to pack: fall back to pairs below.
                packed = false;
                continue;
            }
            // Highest bid first: rank bids by the complement within `top`.
            match o.side {
                Side::Buy => bids.push(u64::make(top - p, i, shift)),
                Side::Sell => asks.push(u64::make(p, i, shift)),
            }
        }
    }
    let mut walk = if contradictory {
        Walk::default()
    } else if packed {
        let bids = Cursor::<u64>::new(orders, bids, shift);
        let asks = Cursor::<u64>::new(orders, asks, shift);
        run(bids, asks, top, params)
    } else {
        drop((bids, asks));
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        for (i, o) in orders.iter().enumerate() {
            match (o.side, eligible(o, params)) {
                (Side::Buy, Some(p)) => bids.push((u64::MAX - p, i)),
                (Side::Sell, Some(p)) => asks.push((p, i)),
                _ => {}
            }
        }
        let bids = Cursor::<(u64, usize)>::new(orders, bids, 0);
        let asks = Cursor::<(u64, usize)>::new(orders, asks, 0);
        run(bids, asks, u64::MAX, params)
    };
    walk.total_buy = total_buy;
    walk.total_sell = total_sell;
    walk
}

/// The walk proper; a bid's key is `bid_top − net bid`, an ask's key its ask.
fn run<E: Entry>(
    mut bids: Cursor<E>,
    mut asks: Cursor<E>,
    bid_top: u64,
    params: &AuctionParams,
) -> Walk {
    let bid_of = |k: u64| bid_top - k;
    let mut left = params.capacity_wh.map_or(u64::MAX, |c| c.0);
    let mut matches = Vec::new();
    while left > 0 {
        let (Some(bk), Some(ak)) = (bids.peek_key(), asks.peek_key()) else {
            break;
        };
        let (bid, ask) = (bid_of(bk), ak);
        if bid < ask {
            break;
        }
        let (Some((buy, bq)), Some((sell, sq))) = (bids.current(), asks.current()) else {
            break;
        };
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
        matches,
        next_bid: bids.peek_key().map(bid_of),
        next_ask: asks.peek_key(),
        total_buy: 0,
        total_sell: 0,
    }
}
