//! Ranking the two sides and walking them together into matched segments.
//!
//! Ranking is done in steps for speed at a million orders:
//!
//! 1. One sequential pass over the book puts every eligible order's price
//!    into one of 2 048 buckets per side, which split the tariff band into
//!    equal price ranges (prices outside it share the first or last bucket),
//!    and keeps per bucket the number of orders, their Wh and the best price.
//!    Prices on any realistic grid put one price level in a bucket.
//! 2. From those sums alone, a walk over whole buckets finds how far the
//!    real walk can possibly go: at every traded Wh the real bid is at most
//!    its bucket's best bid and the real ask at least its bucket's best ask,
//!    so the real walk stops no later than the bucket walk. Only buckets up
//!    to that point (and the one holding the first Wh after it) are *reached*.
//! 3. A second pass turns every order in a reached bucket into an [`Ent`]
//!    (price key, the first 8 bytes of its id as an integer, quantity,
//!    index), written straight into its bucket's slot of one array, whose
//!    layout the counts of step 1 fix: no growth, no copies, and orders that
//!    cannot trade (about half of a typical book) cost nothing more. Nothing
//!    later reads the book again except to break a tie between two ids that
//!    share 8 bytes (or for a quantity above `u32::MAX`), so the walk makes
//!    no random access into the orders.
//! 4. Lazily, each bucket the walk actually enters is sorted by (key, id
//!    prefix), and only runs that share both are ranked in full by the
//!    documented tie-break (id, household, quantity). The order inside a
//!    bucket before that is arbitrary and never decides anything.
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
#[inline(always)]
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

/// A position in the book: `u32` for any book of up to 2^32 orders (a
/// smaller [`Ent`] is less memory to fill and sort), `usize` beyond.
trait Ix: Copy + Default {
    fn of(i: usize) -> Self;
    fn get(self) -> usize;
}

impl Ix for u32 {
    fn of(i: usize) -> Self {
        // Only used when the book has at most u32::MAX + 1 orders.
        u32::try_from(i).unwrap_or(u32::MAX)
    }
    fn get(self) -> usize {
        self as usize
    }
}

impl Ix for usize {
    fn of(i: usize) -> Self {
        i
    }
    fn get(self) -> usize {
        self
    }
}

/// One eligible order as the ranking sees it (24 bytes for a `u32` index,
/// copied around by value; the book itself is not touched again).
#[derive(Debug, Clone, Copy, Default)]
struct Ent<I> {
    /// Ascending key is descending priority: a sell's ask, a buy's
    /// `u64::MAX − net bid`.
    key: u64,
    /// [`id_prefix`] of the order's id.
    prefix: u64,
    /// The order's quantity, or [`BIG_QTY`] if it does not fit (then it is
    /// read from the book).
    qty: u32,
    /// Position in the book.
    idx: I,
}

/// Marks an [`Ent`] whose quantity is `u32::MAX` Wh or more.
const BIG_QTY: u32 = u32::MAX;

impl<I: Ix> Ent<I> {
    /// The sort key inside a bucket: price first, then id prefix.
    fn rank(&self) -> u128 {
        (u128::from(self.key) << 64) | u128::from(self.prefix)
    }

    /// The order's quantity in Wh (never zero: such orders are not eligible).
    fn qty(&self, orders: &[BookOrder]) -> u64 {
        if self.qty == BIG_QTY {
            orders.get(self.idx.get()).map_or(0, |o| o.quantity_wh.0)
        } else {
            u64::from(self.qty)
        }
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
    #[inline(always)]
    fn of(self, p: u64) -> usize {
        let off = p.clamp(self.lo, self.hi) - self.lo;
        off.checked_shr(self.shift).unwrap_or(0) as usize
    }
}

/// What the first pass learns about one side's buckets (in priority order).
struct Stats {
    /// Orders per bucket.
    count: Vec<usize>,
    /// Wh per bucket.
    wh: Vec<u128>,
    /// The best (smallest) key per bucket.
    best: Vec<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            count: vec![0; BUCKETS],
            wh: vec![0; BUCKETS],
            best: vec![u64::MAX; BUCKETS],
        }
    }

    #[inline(always)]
    fn add(&mut self, bucket: usize, key: u64, qty: u64) {
        if let (Some(c), Some(w), Some(b)) = (
            self.count.get_mut(bucket),
            self.wh.get_mut(bucket),
            self.best.get_mut(bucket),
        ) {
            *c += 1;
            *w += u128::from(qty);
            *b = (*b).min(key);
        }
    }

    /// The next non-empty bucket from `b` on (`BUCKETS` if none).
    fn next_nonempty(&self, b: usize) -> usize {
        (b..BUCKETS).find(|&i| self.count[i] > 0).unwrap_or(BUCKETS)
    }
}

/// How many buckets of each side (a prefix, in priority order) the walk
/// can reach, from the bucket sums alone (step 2 of the module docs).
fn reach(bids: &Stats, asks: &Stats, capacity: u64) -> (usize, usize) {
    let (mut i, mut j) = (bids.next_nonempty(0), asks.next_nonempty(0));
    let (mut rb, mut ra) = (
        bids.wh.get(i).copied().unwrap_or(0),
        asks.wh.get(j).copied().unwrap_or(0),
    );
    let mut left = u128::from(capacity);
    while i < BUCKETS && j < BUCKETS && left > 0 {
        // Best net bid of the bucket against the best ask of the other.
        if u64::MAX - bids.best[i] < asks.best[j] {
            break;
        }
        let q = rb.min(ra).min(left);
        rb -= q;
        ra -= q;
        left -= q;
        if rb == 0 {
            i = bids.next_nonempty(i + 1);
            rb = bids.wh.get(i).copied().unwrap_or(0);
        }
        if ra == 0 {
            j = asks.next_nonempty(j + 1);
            ra = asks.wh.get(j).copied().unwrap_or(0);
        }
    }
    // `i` and `j` hold the first Wh the bucket walk did not trade: the real
    // walk's first untraded Wh lies at or before it.
    ((i + 1).min(BUCKETS), (j + 1).min(BUCKETS))
}

/// One side: the reached entries in one array, bucket by bucket, and a read
/// position.
struct Cursor<'a, I> {
    orders: &'a [BookOrder],
    ents: &'a mut [Ent<I>],
    /// Bucket `b` is `ents[bounds[b]..bounds[b + 1]]`, unsorted until
    /// reached.
    bounds: Vec<usize>,
    /// The next bucket to rank.
    next: usize,
    /// The current entry, and the end of the ranked bucket it is in.
    at: usize,
    end: usize,
    /// Wh left in the current entry.
    rem: u64,
}

impl<'a, I: Ix> Cursor<'a, I> {
    fn new(orders: &'a [BookOrder], ents: &'a mut [Ent<I>], bounds: Vec<usize>) -> Self {
        Cursor {
            orders,
            ents,
            bounds,
            next: 0,
            at: 0,
            end: 0,
            rem: 0,
        }
    }

    /// Ranks buckets until the current position holds an entry or none
    /// is left.
    fn fill(&mut self) {
        while self.at >= self.end && self.next + 1 < self.bounds.len() {
            let (lo, hi) = (self.bounds[self.next], self.bounds[self.next + 1]);
            self.next += 1;
            self.at = lo;
            self.end = hi;
            if let Some(bucket) = self.ents.get_mut(lo..hi) {
                rank_bucket(bucket, self.orders);
            }
            if let Some(e) = self.ents.get(lo).filter(|_| lo < hi) {
                self.rem = e.qty(self.orders);
            }
        }
    }

    /// The current entry's key, index and Wh left.
    fn current(&mut self) -> Option<(u64, usize, u64)> {
        if self.at >= self.end {
            self.fill();
        }
        if self.at >= self.end {
            return None;
        }
        self.ents
            .get(self.at)
            .map(|e| (e.key, e.idx.get(), self.rem))
    }

    /// Consumes `q` Wh of the current entry (at most what is left).
    fn take(&mut self, q: u64) {
        self.rem -= q;
        if self.rem == 0 {
            self.at += 1;
            if self.at < self.end
                && let Some(e) = self.ents.get(self.at)
            {
                self.rem = e.qty(self.orders);
            }
        }
    }
}

/// Sorts one bucket by key and id prefix, then ranks runs that share both
/// by the full tie-break.
fn rank_bucket<I: Ix>(ents: &mut [Ent<I>], orders: &[BookOrder]) {
    // Usually a bucket holds one price level: then the prefix alone sorts.
    match ents.first().map(|e| e.key) {
        Some(k) if ents.iter().all(|e| e.key == k) => ents.sort_unstable_by_key(|e| e.prefix),
        _ => ents.sort_unstable_by_key(Ent::rank),
    }
    let mut start = 0;
    while start < ents.len() {
        let r = ents[start].rank();
        let run = ents[start..].iter().take_while(|e| e.rank() == r).count();
        if run > 1 {
            ents[start..start + run]
                .sort_unstable_by(|a, b| tie(&orders[a.idx.get()], &orders[b.idx.get()]));
        }
        start += run;
    }
}

/// Ranks the eligible orders and walks the curves (see the module docs of
/// [`super`] for the rules), writing the matches into `matches` (emptied
/// first; pass a buffer to reuse its memory).
pub(super) fn walk_into(orders: &[BookOrder], params: &AuctionParams, matches: Vec<Match>) -> Walk {
    walk_with(orders, params, false, matches)
}

/// [`walk_into`] with a fresh buffer.
#[cfg(test)]
pub(super) fn walk(orders: &[BookOrder], params: &AuctionParams) -> Walk {
    walk_into(orders, params, Vec::new())
}

/// The entry buffers of the last walk on this thread, kept for the next one:
/// memory the process has touched before costs no page faults, and at a
/// million orders fresh memory is a large share of the time. Only buffers
/// up to [`KEEP_BYTES`] are kept.
struct Scratch {
    bids: Vec<Ent<u32>>,
    asks: Vec<Ent<u32>>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch { bids: Vec::new(), asks: Vec::new() })
    };
}

/// The largest buffer kept per thread between clearings (about 2.8 million
/// entries).
pub(super) const KEEP_BYTES: usize = 64 << 20;

/// Keeps `v` for reuse if it is not larger than [`KEEP_BYTES`].
pub(super) fn keep<T>(mut v: Vec<T>) -> Vec<T> {
    v.clear();
    if v.capacity().saturating_mul(size_of::<T>()) > KEEP_BYTES {
        Vec::new()
    } else {
        v
    }
}

/// Which orders may trade, and at what price: a buy's net bid or a sell's
/// ask; `None` for an order that cannot trade.
#[inline(always)]
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

/// An eligible order's side, bucket (in priority order) and key.
#[inline(always)]
fn place(o: &BookOrder, params: &AuctionParams, map: Buckets) -> Option<(Side, usize, u64)> {
    let p = eligible(o, params)?;
    Some(match o.side {
        // Highest bid first.
        Side::Buy => (Side::Buy, BUCKETS - 1 - map.of(p), u64::MAX - p),
        Side::Sell => (Side::Sell, map.of(p), p),
    })
}

/// [`walk_into`], optionally with each side as one bucket sorted whole by
/// comparison (to test the bucketing against plain sorting).
pub(super) fn walk_with(
    orders: &[BookOrder],
    params: &AuctionParams,
    one_bucket: bool,
    matches: Vec<Match>,
) -> Walk {
    if u32::try_from(orders.len()).is_ok() {
        let mut bufs = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            (std::mem::take(&mut s.bids), std::mem::take(&mut s.asks))
        });
        let walk = walk_ix::<u32>(orders, params, one_bucket, &mut bufs, matches);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.bids = keep(bufs.0);
            s.asks = keep(bufs.1);
        });
        walk
    } else {
        walk_ix::<usize>(
            orders,
            params,
            one_bucket,
            &mut (Vec::new(), Vec::new()),
            matches,
        )
    }
}

/// [`walk_with`] and a fresh buffer.
#[cfg(test)]
pub(super) fn walk_impl(orders: &[BookOrder], params: &AuctionParams, one_bucket: bool) -> Walk {
    walk_with(orders, params, one_bucket, Vec::new())
}

/// The start of each reached bucket's slot, and the total, from the counts.
fn layout(stats: &Stats, reached: usize) -> Vec<usize> {
    let mut bounds = Vec::with_capacity(reached + 1);
    let mut at = 0;
    bounds.push(0);
    for &c in &stats.count[..reached] {
        at += c;
        bounds.push(at);
    }
    bounds
}

type Bufs<I> = (Vec<Ent<I>>, Vec<Ent<I>>);

fn walk_ix<I: Ix>(
    orders: &[BookOrder],
    params: &AuctionParams,
    one_bucket: bool,
    (bid_ents, ask_ents): &mut Bufs<I>,
    mut matches: Vec<Match>,
) -> Walk {
    let (mut total_buy, mut total_sell) = (0u128, 0u128);
    let contradictory = params.feed_in_tariff > params.retail_tariff;
    let map = Buckets::new(params, one_bucket);
    // Step 1: bucket sums.
    let (mut bid_stats, mut ask_stats) = (Stats::new(), Stats::new());
    for o in orders {
        let q = o.quantity_wh.0;
        match o.side {
            Side::Buy => total_buy += u128::from(q),
            Side::Sell => total_sell += u128::from(q),
        }
        if contradictory {
            continue;
        }
        match place(o, params, map) {
            Some((Side::Buy, b, key)) => bid_stats.add(b, key, q),
            Some((Side::Sell, b, key)) => ask_stats.add(b, key, q),
            None => {}
        }
    }
    // Step 2: how far the walk can go.
    let capacity = params.capacity_wh.map_or(u64::MAX, |c| c.0);
    let (bid_reach, ask_reach) = reach(&bid_stats, &ask_stats, capacity);
    // Step 3: the reached entries, each written into its bucket's slot.
    let bid_bounds = layout(&bid_stats, bid_reach);
    let ask_bounds = layout(&ask_stats, ask_reach);
    let n_bids = bid_bounds.last().copied().unwrap_or(0);
    let n_asks = ask_bounds.last().copied().unwrap_or(0);
    bid_ents.clear();
    bid_ents.resize(n_bids, Ent::default());
    ask_ents.clear();
    ask_ents.resize(n_asks, Ent::default());
    if n_bids + n_asks > 0 {
        let mut bid_at = bid_bounds.clone();
        let mut ask_at = ask_bounds.clone();
        for (idx, o) in orders.iter().enumerate() {
            if contradictory {
                break;
            }
            let Some((side, b, key)) = place(o, params, map) else {
                continue;
            };
            let (reached, at, ents) = match side {
                Side::Buy => (bid_reach, &mut bid_at, &mut *bid_ents),
                Side::Sell => (ask_reach, &mut ask_at, &mut *ask_ents),
            };
            if b >= reached {
                continue;
            }
            let q = o.quantity_wh.0;
            if let Some(slot) = ents.get_mut(at[b]) {
                *slot = Ent {
                    key,
                    prefix: id_prefix(&o.id),
                    qty: u32::try_from(q)
                        .ok()
                        .filter(|&q| q != BIG_QTY)
                        .unwrap_or(BIG_QTY),
                    idx: I::of(idx),
                };
            }
            at[b] += 1;
        }
    }
    // A walk trades at most every reached order, minus one per side.
    matches.clear();
    matches.reserve(n_bids + n_asks);
    let bids = Cursor::new(orders, bid_ents, bid_bounds);
    let asks = Cursor::new(orders, ask_ents, ask_bounds);
    let mut walk = run(bids, asks, params, &mut matches);
    walk.matches = matches;
    walk.total_buy = total_buy;
    walk.total_sell = total_sell;
    walk
}

/// The walk proper; a bid's key is `u64::MAX − net bid`, an ask's key its ask.
fn run<I: Ix>(
    mut bids: Cursor<I>,
    mut asks: Cursor<I>,
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
