//! Intake: turns a batch of raw MQTT messages into stored readings and
//! orders, acknowledgements and reject counts.
//!
//! Every message goes through the same steps, cheapest first, and stops at
//! the first failure:
//!
//! 1. size cap (`oversized`), envelope decoding (`malformed`);
//! 2. key lookup by key id (`unknown_key`), revocation (`revoked_key`);
//! 3. signature under the topic's domain (`bad_signature`), checked for the
//!    whole batch with ed25519 batch verification, falling back to single
//!    checks only when the batch fails;
//! 4. payload decoding with a depth cap (`malformed`), number ranges
//!    (`out_of_range`);
//! 5. consistency of topic, payload and key (`wrong_grid`, `topic_mismatch`,
//!    `wrong_household`, `unknown_meter`);
//! 6. history: readings against the meter's stored readings (duplicates,
//!    `seq_conflict`, `counter_rewind`, `timestamp_out_of_window`), orders
//!    against the household's nonces and the interval's gate
//!    (`replay`, `bad_interval`, `gate_closed`, `bad_quantity`, `bad_replaces`,
//!    `too_many_orders`). A nonce already stored is a duplicate (same bytes)
//!    or a `replay` (other bytes); a nonce below the household's highest that
//!    was never stored is a late delivery (its first one was lost in a crash)
//!    and is judged by the other rules, so no signed order is lost.
//!
//! Acknowledgements go only to senders whose signature verified: an
//! unauthenticated message cannot make the engine tell a household that its
//! reading was refused (that would let anyone empty a meter's outbox).
//! Messages refused before that point are counted and logged only.
//!
//! The hot path reads nothing from the database: each meter's latest seq and
//! counters, each household's highest nonce and per-interval order counts
//! are cached after their first load. Only out-of-order readings and
//! redeliveries query the store. The cache is dropped whenever a batch fails
//! to commit, so it never runs ahead of the database.

use crate::error::StoreError;
use crate::metrics::{RejectReason, SenderRejects, sender_rejects_of};
use crate::registry::{KeyEntry, Registry};
use crate::store::{self, OrderRow, ReadingRow};
use ed25519_dalek::VerifyingKey;
use protocol::{
    AckItem, AckKind, AckOutcome, DeviceStatus, Domain, GridId, HouseholdId, IntervalId, LivePower,
    MAX_ENVELOPE_BYTES, MeterId, Order, Reading, Side, SignedEnvelope, Topic, UnixMs,
    decode_payload, verify_many,
};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tracing::{debug, warn};

/// A message as it came from the broker.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Limits that the intake enforces.
#[derive(Debug, Clone)]
pub struct IntakeRules {
    pub grid: GridId,
    pub interval_ms: u64,
    pub gate_lead_ms: u64,
    /// Largest clock skew accepted for a reading from the future.
    pub timestamp_window_ms: u64,
    /// Oldest reading accepted: a gateway's outbox backlog after an outage
    /// arrives late, and must not be lost.
    pub max_reading_age_ms: u64,
    pub max_orders_per_interval: u32,
    pub max_order_wh: u64,
    pub order_horizon_intervals: u32,
}

/// What one batch produced. Its rows are already committed when
/// [`Intake::process`] returns it.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Acknowledgement items per household, in message order.
    pub acks: BTreeMap<HouseholdId, Vec<AckItem>>,
    pub rejects: BTreeMap<RejectReason, u64>,
    /// The rejections among `acks` by household, meter and reason (stored
    /// with the batch).
    pub sender_rejects: SenderRejects,
    pub readings: usize,
    pub orders: usize,
    pub duplicates: u64,
    /// Live power from accepted readings.
    pub live: Vec<LivePower>,
}

impl BatchOutcome {
    fn ack(&mut self, household: &HouseholdId, item: AckItem) {
        self.acks.entry(household.clone()).or_default().push(item);
    }
    fn reject(&mut self, reason: RejectReason) {
        *self.rejects.entry(reason).or_insert(0) += 1;
    }
}

/// Cached state of one meter: its highest stored seq and the counters of its
/// latest non-error reading.
#[derive(Debug, Clone, Copy, Default)]
struct MeterState {
    tip: Option<i64>,
    good: Option<(i64, i64, i64)>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Reading,
    Order,
}

/// A message that passed steps 1–2.
struct Candidate {
    kind: Kind,
    topic: Topic,
    env: SignedEnvelope,
    /// The exact wire bytes: what is stored (and, for an order, hashed;
    /// a reading's redelivery is recognised by comparing these bytes).
    raw: Vec<u8>,
    entry: KeyEntry,
    /// The decoded payload, filled beside verification for a message whose
    /// signature holds: decoding needs no intake state, so it runs on the
    /// verification threads and the serial half of the pipeline does only
    /// what must be serial (the history rules and the commit).
    prepared: Option<Prepared>,
}

type Prepared = Result<Payload, protocol::PayloadError>;

enum Payload {
    Reading(Box<Reading>),
    Order(Box<Order>),
}

impl Candidate {
    /// Decodes the payload.
    fn prepare(&self) -> Prepared {
        match self.kind {
            Kind::Reading => {
                decode_payload(&self.env.payload).map(|r| Payload::Reading(Box::new(r)))
            }
            Kind::Order => decode_payload(&self.env.payload).map(|o| Payload::Order(Box::new(o))),
        }
    }

    /// The reading the verification stage decoded, or decoded now.
    fn take_reading(&mut self) -> Result<Reading, protocol::PayloadError> {
        match self.prepared.take() {
            Some(Ok(Payload::Reading(r))) => Ok(*r),
            Some(Err(e)) => Err(e),
            _ => decode_payload(&self.env.payload),
        }
    }

    /// The order the verification stage decoded, or decoded now.
    fn take_order(&mut self) -> Result<Order, protocol::PayloadError> {
        match self.prepared.take() {
            Some(Ok(Payload::Order(o))) => Ok(*o),
            Some(Err(e)) => Err(e),
            _ => decode_payload(&self.env.payload),
        }
    }
}

/// A batch after steps 1–3, ready for [`Intake::apply`].
pub struct Screened {
    registry: Arc<Registry>,
    out: BatchOutcome,
    candidates: Vec<Candidate>,
    verdicts: Vec<bool>,
}

impl Screened {
    /// Messages in the batch that reached signature verification.
    pub fn candidates(&self) -> usize {
        self.candidates.len()
    }
}

/// The intake's state between batches.
#[derive(Debug)]
pub struct Intake {
    rules: IntakeRules,
    registry: Arc<Registry>,
    pool: SqlitePool,
    meters: HashMap<MeterId, MeterState>,
    nonces: HashMap<HouseholdId, i64>,
    order_counts: HashMap<(HouseholdId, i64), u64>,
}

/// (position in `Pending::rows`, status, import, export) of a reading
/// accepted in this batch.
type PendingReading = (usize, DeviceStatus, i64, i64);

/// What the current batch accepted but has not committed yet.
#[derive(Default)]
struct Pending {
    readings: BTreeMap<(MeterId, i64), PendingReading>,
    /// The rows of the accepted readings, in acceptance order.
    rows: Vec<ReadingRow>,
    orders: HashMap<(HouseholdId, i64), (Vec<u8>, i64)>,
}

fn to_i64(v: u64) -> Option<i64> {
    i64::try_from(v).ok()
}

impl Intake {
    /// A fresh intake with empty caches.
    pub fn new(rules: IntakeRules, registry: Arc<Registry>, pool: SqlitePool) -> Intake {
        Intake {
            rules,
            registry,
            pool,
            meters: HashMap::new(),
            nonces: HashMap::new(),
            order_counts: HashMap::new(),
        }
    }

    /// Uses another registry from the next batch on (the engine swaps in a
    /// reloaded one when keys were approved, rotated or revoked). The caches
    /// stay: they hold history, not enrolment.
    pub fn set_registry(&mut self, registry: Arc<Registry>) {
        self.registry = registry;
    }

    /// Validates a batch and stores what passes, in one transaction. `now` is
    /// the clock's reading for every gate and timestamp check in the batch.
    ///
    /// On a storage error nothing is stored, nothing is acknowledged and the
    /// caches are dropped: the senders' outboxes will send again.
    pub async fn process(
        &mut self,
        batch: Vec<Inbound>,
        now: UnixMs,
    ) -> Result<BatchOutcome, StoreError> {
        let screened = Intake::screen_and_verify(self.registry.clone(), batch).await;
        self.apply(screened, now).await
    }

    /// Steps 1–3 of a batch, and the decoding of step 4 for every message
    /// whose signature holds: needs only the registry, no intake state and
    /// no clock, so the engine runs it for the next batch while
    /// [`Intake::apply`] still works on the previous one (verification and
    /// storage overlap).
    pub async fn screen_and_verify(registry: Arc<Registry>, batch: Vec<Inbound>) -> Screened {
        let mut out = BatchOutcome::default();
        let mut candidates = Vec::with_capacity(batch.len());
        for msg in batch {
            if let Some(c) = screen(&registry, msg, &mut out) {
                candidates.push(c);
            }
        }
        let (candidates, verdicts) = verify_batch(candidates).await;
        Screened {
            registry,
            out,
            candidates,
            verdicts,
        }
    }

    /// Steps 4–6 and the commit, for a batch that [`Intake::screen_and_verify`]
    /// prepared. The registry it was screened with is used for the rest.
    pub async fn apply(
        &mut self,
        screened: Screened,
        now: UnixMs,
    ) -> Result<BatchOutcome, StoreError> {
        let Screened {
            registry,
            mut out,
            candidates,
            verdicts,
        } = screened;
        self.registry = registry;
        // Counts of intervals whose gate has closed are never needed again.
        let open_from =
            i64::try_from(now.0.saturating_sub(self.rules.interval_ms)).unwrap_or(i64::MAX);
        self.order_counts
            .retain(|(_, interval), _| *interval >= open_from);
        let mut pending = Pending::default();
        let mut orders = Vec::new();
        let received_at = to_i64(now.0).unwrap_or(i64::MAX);
        for (c, ok) in candidates.into_iter().zip(verdicts) {
            if !ok {
                debug!(key_id = %c.env.key_id, household = %c.entry.household, "bad signature");
                out.reject(RejectReason::BadSignature);
                continue;
            }
            let result = match c.kind {
                Kind::Reading => self
                    .reading(c, now, received_at, &mut pending, &mut out)
                    .await
                    .map(|()| None),
                Kind::Order => {
                    self.order(c, now, received_at, &mut pending, &mut out)
                        .await
                }
            };
            match result {
                Ok(Some(o)) => orders.push(o),
                Ok(None) => {}
                Err(e) => {
                    self.forget();
                    return Err(e);
                }
            }
        }
        let readings = pending.rows.len();
        out.sender_rejects =
            sender_rejects_of(out.acks.iter().map(|(h, items)| (h, items.as_slice())));
        if let Err(e) = self
            .commit(pending.rows, &orders, &out.rejects, &out.sender_rejects)
            .await
        {
            self.forget();
            return Err(e);
        }
        out.readings = readings;
        out.orders = orders.len();
        Ok(out)
    }

    /// Drops every cache; they reload from the store on demand.
    pub fn forget(&mut self) {
        self.meters.clear();
        self.nonces.clear();
        self.order_counts.clear();
    }

    async fn commit(
        &self,
        readings: Vec<ReadingRow>,
        orders: &[OrderRow],
        rejects: &BTreeMap<RejectReason, u64>,
        sender_rejects: &SenderRejects,
    ) -> Result<(), StoreError> {
        // A sender's rejection is also counted in `rejects`.
        if readings.is_empty() && orders.is_empty() && rejects.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        store::insert_readings(&mut tx, readings).await?;
        store::insert_orders(&mut tx, orders).await?;
        store::add_rejects(&mut tx, rejects).await?;
        store::add_sender_rejects(&mut tx, sender_rejects).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Steps 1–2: topic, size, envelope, key.
fn screen(registry: &Registry, msg: Inbound, out: &mut BatchOutcome) -> Option<Candidate> {
    let topic = match Topic::parse(&msg.topic) {
        Ok(t) => t,
        Err(error) => {
            debug!(topic = %msg.topic, %error, "unparseable topic");
            out.reject(RejectReason::Malformed);
            return None;
        }
    };
    let kind = match &topic {
        Topic::Readings { .. } => Kind::Reading,
        Topic::Orders { .. } => Kind::Order,
        // Subscriptions deliver only these two kinds to the intake.
        _ => return None,
    };
    if msg.payload.len() > MAX_ENVELOPE_BYTES {
        out.reject(RejectReason::Oversized);
        return None;
    }
    let env = match SignedEnvelope::decode(&msg.payload) {
        Ok(e) => e,
        Err(error) => {
            debug!(topic = %msg.topic, %error, "undecodable envelope");
            out.reject(RejectReason::Malformed);
            return None;
        }
    };
    let Some(entry) = registry.key(&env.key_id) else {
        debug!(topic = %msg.topic, key_id = %env.key_id, "unknown key");
        out.reject(RejectReason::UnknownKey);
        return None;
    };
    if entry.revoked {
        debug!(topic = %msg.topic, key_id = %env.key_id, "revoked key");
        out.reject(RejectReason::RevokedKey);
        return None;
    }
    Some(Candidate {
        kind,
        topic,
        env,
        raw: msg.payload,
        entry: entry.clone(),
        prepared: None,
    })
}

impl Intake {
    async fn meter_state(&mut self, meter: &MeterId) -> Result<MeterState, StoreError> {
        if let Some(s) = self.meters.get(meter) {
            return Ok(*s);
        }
        let (tip, good) = store::meter_tip(&self.pool, meter.as_str()).await?;
        let s = MeterState { tip, good };
        self.meters.insert(meter.clone(), s);
        Ok(s)
    }

    async fn reading(
        &mut self,
        mut c: Candidate,
        now: UnixMs,
        received_at: i64,
        pending: &mut Pending,
        out: &mut BatchOutcome,
    ) -> Result<(), StoreError> {
        let payload = c.take_reading();
        let household = &c.entry.household;
        let r: Reading = match payload {
            Ok(r) => r,
            Err(error) => {
                debug!(%household, %error, "malformed reading");
                out.reject(RejectReason::Malformed);
                if let Some(seq) = loose_u64(&c.env.payload, "seq") {
                    let meter = match &c.topic {
                        Topic::Readings { meter, .. } => Some(meter.clone()),
                        _ => None,
                    };
                    out.ack(
                        household,
                        rejected(AckKind::Reading, meter, seq, RejectReason::Malformed),
                    );
                }
                return Ok(());
            }
        };
        let reject = |out: &mut BatchOutcome, reason: RejectReason| {
            debug!(%household, meter = %r.meter, seq = r.seq, %reason, "reading rejected");
            out.reject(reason);
            out.ack(
                household,
                rejected(AckKind::Reading, Some(r.meter.clone()), r.seq, reason),
            );
            Ok(())
        };
        if r.grid != self.rules.grid {
            return reject(out, RejectReason::WrongGrid);
        }
        if !matches!(&c.topic, Topic::Readings { grid, meter } if *grid == r.grid && *meter == r.meter)
        {
            return reject(out, RejectReason::TopicMismatch);
        }
        if r.household != *household {
            return reject(out, RejectReason::WrongHousehold);
        }
        match self.registry.household_of(&r.meter) {
            None => return reject(out, RejectReason::UnknownMeter),
            Some(owner) if owner != household => return reject(out, RejectReason::WrongHousehold),
            Some(_) => {}
        }
        let (Some(seq), Some(ts), Some(import), Some(export)) = (
            to_i64(r.seq),
            to_i64(r.ts.0),
            to_i64(r.import_wh.0),
            to_i64(r.export_wh.0),
        ) else {
            return reject(out, RejectReason::OutOfRange);
        };
        let pv_wh = match r.pv_wh.map(|v| to_i64(v.0)) {
            Some(None) => return reject(out, RejectReason::OutOfRange),
            Some(Some(v)) => Some(v),
            None => None,
        };
        let state = self.meter_state(&r.meter).await?;
        let usable = r.status != DeviceStatus::Error;
        if state.tip.is_some_and(|tip| seq <= tip) {
            // At or below the newest stored seq: a redelivery, a conflict, or
            // a late reading that fills a gap.
            // Whether the reading stored under (meter, seq) is this one, to
            // the byte.
            let same = match pending.readings.get(&(r.meter.clone(), seq)) {
                Some(&(row, ..)) => {
                    Some(pending.rows.get(row).is_some_and(|p| p.envelope == c.raw))
                }
                None => store::reading_envelope(&self.pool, r.meter.as_str(), seq)
                    .await?
                    .map(|stored| stored == c.raw),
            };
            if let Some(same) = same {
                if same {
                    out.duplicates += 1;
                    out.ack(
                        household,
                        AckItem {
                            kind: AckKind::Reading,
                            meter: Some(r.meter.clone()),
                            seq: r.seq,
                            outcome: AckOutcome::Duplicate,
                        },
                    );
                    return Ok(());
                }
                return reject(out, RejectReason::SeqConflict);
            }
            if usable {
                let (mut prev, mut next) =
                    store::reading_neighbours(&self.pool, r.meter.as_str(), seq).await?;
                let key = (r.meter.clone(), seq);
                let usable_pending = |(k, v): (&(MeterId, i64), &PendingReading)| {
                    (k.0 == r.meter && v.1 != DeviceStatus::Error).then_some((k.1, v.2, v.3))
                };
                if let Some(p) = pending
                    .readings
                    .range(..key.clone())
                    .rev()
                    .find_map(usable_pending)
                    && prev.is_none_or(|q| p.0 > q.0)
                {
                    prev = Some(p);
                }
                if let Some(n) = pending.readings.range(key..).find_map(usable_pending)
                    && next.is_none_or(|q| n.0 < q.0)
                {
                    next = Some(n);
                }
                let below = prev.is_some_and(|(_, i, e)| import < i || export < e);
                let above = next.is_some_and(|(_, i, e)| import > i || export > e);
                if below || above {
                    return reject(out, RejectReason::CounterRewind);
                }
            }
        } else if usable && state.good.is_some_and(|(_, i, e)| import < i || export < e) {
            return reject(out, RejectReason::CounterRewind);
        }
        // Asymmetric on purpose: a reading from the future means a broken or
        // lying clock, while a reading from the past is normally a backlog
        // that the meter's outbox delivers after an outage.
        let too_new = r.ts.0 > now.0.saturating_add(self.rules.timestamp_window_ms);
        let too_old = r.ts.0 < now.0.saturating_sub(self.rules.max_reading_age_ms);
        if too_new || too_old {
            return reject(out, RejectReason::TimestampOutOfWindow);
        }
        // Accepted: advance the cached state.
        let s = self.meters.entry(r.meter.clone()).or_default();
        if s.tip.is_none_or(|t| seq > t) {
            s.tip = Some(seq);
        }
        if usable && s.good.is_none_or(|(g, ..)| seq > g) {
            s.good = Some((seq, import, export));
        }
        pending.readings.insert(
            (r.meter.clone(), seq),
            (pending.rows.len(), r.status, import, export),
        );
        out.ack(
            household,
            AckItem {
                kind: AckKind::Reading,
                meter: Some(r.meter.clone()),
                seq: r.seq,
                outcome: AckOutcome::Accepted,
            },
        );
        out.live.push(LivePower {
            household: household.clone(),
            meter: r.meter.clone(),
            ts: r.ts,
            grid_power_w: r.grid_power_w,
            pv_power_w: r.pv_power_w,
        });
        pending.rows.push(ReadingRow {
            meter: r.meter.to_string(),
            seq,
            household: household.to_string(),
            ts,
            import_wh: import,
            export_wh: export,
            pv_wh,
            grid_power_w: r.grid_power_w.0,
            pv_power_w: r.pv_power_w.map(|w| w.0),
            status: status_str(r.status),
            key_id: c.env.key_id.0.clone(),
            // The candidate is ours: its wire bytes move into the row.
            envelope: c.raw,
            received_at,
        });
        Ok(())
    }

    async fn order(
        &mut self,
        mut c: Candidate,
        now: UnixMs,
        received_at: i64,
        pending: &mut Pending,
        out: &mut BatchOutcome,
    ) -> Result<Option<OrderRow>, StoreError> {
        let payload = c.take_order();
        let household = &c.entry.household;
        let o: Order = match payload {
            Ok(o) => o,
            Err(error) => {
                debug!(%household, %error, "malformed order");
                out.reject(RejectReason::Malformed);
                if let Some(nonce) = loose_u64(&c.env.payload, "nonce") {
                    out.ack(
                        household,
                        rejected(AckKind::Order, None, nonce, RejectReason::Malformed),
                    );
                }
                return Ok(None);
            }
        };
        let reject = |out: &mut BatchOutcome, reason: RejectReason| {
            debug!(%household, nonce = o.nonce, interval = o.interval.0, %reason, "order rejected");
            out.reject(reason);
            out.ack(household, rejected(AckKind::Order, None, o.nonce, reason));
            Ok(None)
        };
        if o.grid != self.rules.grid {
            return reject(out, RejectReason::WrongGrid);
        }
        if o.household != *household {
            return reject(out, RejectReason::WrongHousehold);
        }
        if !matches!(&c.topic, Topic::Orders { grid, household: h } if *grid == o.grid && *h == o.household)
        {
            return reject(out, RejectReason::TopicMismatch);
        }
        let (Some(nonce), Some(interval), Some(quantity), Some(price), Some(ts)) = (
            to_i64(o.nonce),
            to_i64(o.interval.0),
            to_i64(o.quantity_wh.0),
            to_i64(o.limit_price.0),
            to_i64(o.ts.0),
        ) else {
            return reject(out, RejectReason::OutOfRange);
        };
        let replaces = match o.replaces.map(to_i64) {
            Some(None) => return reject(out, RejectReason::OutOfRange),
            Some(Some(n)) => Some(n),
            None => None,
        };
        let digest = Sha256::digest(&c.raw).to_vec();
        let highest = match self.nonces.get(household) {
            Some(n) => *n,
            None => {
                let n = store::max_nonce(&self.pool, household.as_str())
                    .await?
                    .unwrap_or(-1);
                self.nonces.insert(household.clone(), n);
                n
            }
        };
        if nonce <= highest {
            let stored = match pending.orders.get(&(household.clone(), nonce)) {
                Some((d, _)) => Some(d.clone()),
                None => store::order_at(&self.pool, household.as_str(), nonce)
                    .await?
                    .map(|(d, _)| d),
            };
            match stored {
                // A nonce never stored below the highest one: an order whose
                // first delivery was lost (the engine crashed before storing
                // it) and that arrives after a later one. It is not a
                // replay; the rules below judge it like any other.
                None => {}
                Some(d) if d == digest => {
                    out.duplicates += 1;
                    out.ack(
                        household,
                        AckItem {
                            kind: AckKind::Order,
                            meter: None,
                            seq: o.nonce,
                            outcome: AckOutcome::Duplicate,
                        },
                    );
                    return Ok(None);
                }
                Some(_) => return reject(out, RejectReason::Replay),
            }
        }
        let len = self.rules.interval_ms;
        let horizon = now
            .0
            .saturating_add(len.saturating_mul(u64::from(self.rules.order_horizon_intervals)));
        if !o.interval.0.is_multiple_of(len) || o.interval.0 > horizon {
            return reject(out, RejectReason::BadInterval);
        }
        if now.0 >= gate_closure(o.interval, self.rules.gate_lead_ms).0 {
            return reject(out, RejectReason::GateClosed);
        }
        if (o.quantity_wh.0 == 0 && replaces.is_none()) || o.quantity_wh.0 > self.rules.max_order_wh
        {
            return reject(out, RejectReason::BadQuantity);
        }
        if let Some(old) = replaces {
            let target = match pending.orders.get(&(household.clone(), old)) {
                Some((_, i)) => Some(*i),
                None => store::order_at(&self.pool, household.as_str(), old)
                    .await?
                    .map(|(_, i)| i),
            };
            if old >= nonce || target != Some(interval) {
                return reject(out, RejectReason::BadReplaces);
            }
        }
        let count_key = (household.clone(), interval);
        let count = match self.order_counts.get(&count_key) {
            Some(n) => *n,
            None => store::count_orders(&self.pool, household.as_str(), interval).await?,
        };
        if count >= u64::from(self.rules.max_orders_per_interval) {
            self.order_counts.insert(count_key, count);
            return reject(out, RejectReason::TooManyOrders);
        }
        self.order_counts.insert(count_key, count + 1);
        let highest = self.nonces.entry(household.clone()).or_insert(nonce);
        *highest = (*highest).max(nonce);
        pending
            .orders
            .insert((household.clone(), nonce), (digest.clone(), interval));
        out.ack(
            household,
            AckItem {
                kind: AckKind::Order,
                meter: None,
                seq: o.nonce,
                outcome: AckOutcome::Accepted,
            },
        );
        Ok(Some(OrderRow {
            household: household.to_string(),
            nonce,
            interval_start: interval,
            side: side_str(o.side),
            quantity_wh: quantity,
            limit_price: price,
            ts,
            replaces,
            key_id: c.env.key_id.0.clone(),
            envelope: c.raw,
            digest,
            received_at,
        }))
    }
}

/// Gate closure of an interval: its start minus the lead.
pub fn gate_closure(interval: IntervalId, lead_ms: u64) -> UnixMs {
    UnixMs(interval.0.saturating_sub(lead_ms))
}

fn rejected(kind: AckKind, meter: Option<MeterId>, seq: u64, reason: RejectReason) -> AckItem {
    AckItem {
        kind,
        meter,
        seq,
        outcome: AckOutcome::Rejected(reason.as_str().to_owned()),
    }
}

/// The stored form of a device status.
pub fn status_str(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Ok => "ok",
        DeviceStatus::Stale => "stale",
        DeviceStatus::Error => "error",
    }
}

/// The stored form of an order side.
pub fn side_str(s: Side) -> &'static str {
    match s {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

/// Reads one unsigned integer field from a payload that failed strict
/// decoding, so that an authenticated sender still learns which of its
/// messages was refused. serde_json's own recursion limit bounds the depth.
fn loose_u64(payload: &[u8], field: &str) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get(field)?
        .as_u64()
}

/// Smallest share of a batch worth its own verification thread.
const MIN_VERIFY_CHUNK: usize = 64;

/// Step 3 for a whole batch, off the async threads (ed25519 is CPU work)
/// and split across the cores, with the payloads of the verified messages
/// decoded there too: each share is batch-verified on its own, so
/// one forged message only sends its share to the bisecting fallback.
/// Shares are cut from the batch ordered by key, so that one household's
/// messages mostly meet in one share, where [`verify_many`] sums their
/// terms. The candidates move into the blocking tasks and back (no copies of
/// envelopes), and come back in their original order with their verdicts.
async fn verify_batch(candidates: Vec<Candidate>) -> (Vec<Candidate>, Vec<bool>) {
    let n = candidates.len();
    if n == 0 {
        return (candidates, Vec::new());
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let chunk = n.div_ceil(cores).max(MIN_VERIFY_CHUNK);
    // Positions ordered by key (a stable sort keeps arrival order within a
    // key); each candidate then moves once, into its share.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| candidates[i].env.key_id.cmp(&candidates[j].env.key_id));
    let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    let shares: Vec<Vec<(usize, Candidate)>> = order
        .chunks(chunk)
        .map(|positions| {
            positions
                .iter()
                .filter_map(|&i| slots[i].take().map(|c| (i, c)))
                .collect()
        })
        .collect();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let size = share.len();
            let task = tokio::task::spawn_blocking(move || {
                let mut share = share;
                let refs: Vec<(&SignedEnvelope, Domain, &VerifyingKey)> = share
                    .iter()
                    .map(|(_, c)| {
                        let domain = match c.kind {
                            Kind::Reading => Domain::Reading,
                            Kind::Order => Domain::Order,
                        };
                        (&c.env, domain, &c.entry.key)
                    })
                    .collect();
                let verdicts: Vec<bool> = verify_many(&refs).iter().map(Result::is_ok).collect();
                drop(refs);
                for ((_, c), ok) in share.iter_mut().zip(&verdicts) {
                    if *ok {
                        c.prepared = Some(c.prepare());
                    }
                }
                (share, verdicts)
            });
            (size, task)
        })
        .collect();
    let mut slots: Vec<Option<(Candidate, bool)>> = Vec::with_capacity(n);
    slots.resize_with(n, || None);
    for (size, task) in tasks {
        match task.await {
            Ok((share, verdicts)) => {
                for ((pos, c), ok) in share.into_iter().zip(verdicts) {
                    slots[pos] = Some((c, ok));
                }
            }
            Err(error) => {
                // A panic inside verification must not accept anything: the
                // share is dropped unacknowledged, and the senders' outboxes
                // send it again.
                warn!(%error, messages = size, "signature verification task failed");
            }
        }
    }
    slots.into_iter().flatten().unzip()
}
