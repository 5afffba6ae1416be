//! Items 4 and 5 of the fault suite: duplicates and the adversarial corpus.
//!
//! Both run an in-process clearing engine (real SQLite) on a unique grid of
//! the real Mosquitto on 127.0.0.1:1883, with a [`ManualClock`] that stands
//! still, so that every gate and timestamp rule gives the same verdict on
//! every run. One MQTT client publishes everything in order; Mosquitto keeps
//! the order of one client's QoS 1 messages, and the engine's intake keeps
//! the order within and across its batches, so each bad case meets exactly
//! the history that the generator had when it built the case.
//!
//! - `adversarial_corpus_rejected_by_reason`: at least 500 generated bad
//!   messages of every kind the issue lists, interleaved with valid ones;
//!   the engine's per-reason reject counters must equal the generator's
//!   expectation exactly, and no valid message may be refused.
//! - `every_qos1_message_three_times_is_stored_once`: each genuine envelope
//!   is published three times (back to back, and in three rounds); each is
//!   stored once and acknowledged, the copies are counted as duplicates.

use clearing::RejectReason;
use ed25519_dalek::SigningKey;
use protocol::{
    AckOutcome, Domain, GridId, IntervalId, MAX_ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, ManualClock,
    MeterId, Order, Reading, Side, SignedEnvelope, UnixMs,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use voltshare_tests::sender::{
    AckKey, Sender, TestHousehold, order, orders_topic, reading, readings_topic, signed,
};
use voltshare_tests::util::{self, Rng};
use voltshare_tests::{engine, report};

const LEN: u64 = 900_000;

fn t0() -> UnixMs {
    // Five minutes into an interval on 2026-06-03.
    UnixMs(IntervalId::containing(UnixMs(1_780_500_000_000), LEN).0 + 300_000)
}

/// The generator's view of the engine's history.
struct World {
    grid: GridId,
    homes: Vec<TestHousehold>,
    stranger: SigningKey,
    now: UnixMs,
    /// Per household index: the last seq and counters of its meter, and the
    /// genuine reading envelopes stored so far (by seq).
    seq: Vec<u64>,
    counters: Vec<(u64, u64)>,
    readings: Vec<Vec<(Reading, Vec<u8>)>>,
    nonce: Vec<u64>,
    orders: Vec<Vec<(Order, Vec<u8>)>>,
}

/// A message to publish and what the engine should do with it.
enum Expect {
    Accept(AckKey),
    Duplicate,
    Reject(RejectReason),
}

struct Msg {
    topic: String,
    payload: Vec<u8>,
    expect: Expect,
    kind: &'static str,
}

impl World {
    fn new(grid: GridId, homes: Vec<TestHousehold>) -> World {
        let n = homes.len();
        World {
            grid,
            homes,
            stranger: util::key("stranger"),
            now: t0(),
            seq: vec![0; n],
            counters: vec![(1_000, 1_000); n],
            readings: vec![Vec::new(); n],
            nonce: vec![0; n],
            orders: vec![Vec::new(); n],
        }
    }

    fn meter(&self, h: usize) -> &MeterId {
        &self.homes[h].meters[0]
    }

    fn next_reading(&self, h: usize, rng: &mut Rng) -> Reading {
        let (i, e) = self.counters[h];
        let seq = self.seq[h] + 1;
        reading(
            &self.grid,
            &self.homes[h],
            self.meter(h),
            seq,
            UnixMs(self.now.0 - 3_600_000 + seq * 100),
            i + rng.range(0, 5),
            e + rng.range(0, 5),
        )
    }

    fn valid_reading(&mut self, h: usize, rng: &mut Rng) -> Msg {
        let r = self.next_reading(h, rng);
        let bytes = signed(Domain::Reading, &self.homes[h].key, &r);
        self.seq[h] = r.seq;
        self.counters[h] = (r.import_wh.0, r.export_wh.0);
        self.readings[h].push((r.clone(), bytes.clone()));
        Msg {
            topic: readings_topic(&self.grid, &r.meter),
            payload: bytes,
            expect: Expect::Accept(AckKey::reading(&r.household, &r.meter, r.seq)),
            kind: "valid_reading",
        }
    }

    fn next_order(&mut self, h: usize, rng: &mut Rng) -> Order {
        self.nonce[h] += 1;
        let nonce = self.nonce[h];
        // Round robin over 90 future intervals: at most 16 per interval for
        // up to 1440 orders per household.
        let current = IntervalId::containing(self.now, LEN).0;
        let interval = IntervalId(current + (1 + nonce % 90) * LEN);
        let side = if rng.chance(50) {
            Side::Buy
        } else {
            Side::Sell
        };
        order(
            &self.grid,
            &self.homes[h],
            interval,
            side,
            rng.range(1, 2_000),
            rng.range(80, 320) * 1000,
            nonce,
            self.now,
        )
    }

    fn valid_order(&mut self, h: usize, rng: &mut Rng) -> Msg {
        let o = self.next_order(h, rng);
        let bytes = signed(Domain::Order, &self.homes[h].key, &o);
        self.orders[h].push((o.clone(), bytes.clone()));
        Msg {
            topic: orders_topic(&self.grid, &o.household),
            payload: bytes,
            expect: Expect::Accept(AckKey::order(&o.household, o.nonce)),
            kind: "valid_order",
        }
    }

    /// A stored genuine reading of household `h` (one exists).
    fn old_reading(&self, h: usize, rng: &mut Rng) -> (Reading, Vec<u8>) {
        let v = &self.readings[h];
        v[rng.below(v.len())].clone()
    }

    fn old_order(&self, h: usize, rng: &mut Rng) -> (Order, Vec<u8>) {
        let v = &self.orders[h];
        v[rng.below(v.len())].clone()
    }

    /// One bad (or replayed) message of kind `k`.
    fn bad(&mut self, k: usize, rng: &mut Rng) -> Msg {
        let n = self.homes.len();
        let h = rng.below(n);
        let other = (h + 1 + rng.below(n - 1)) % n;
        let key = self.homes[h].key.clone();
        let rt = readings_topic(&self.grid, self.meter(h));
        let ot = orders_topic(&self.grid, &self.homes[h].id);
        let reject =
            |kind: &'static str, topic: String, payload: Vec<u8>, reason: RejectReason| Msg {
                topic,
                payload,
                expect: Expect::Reject(reason),
                kind,
            };
        match k {
            0 => {
                let (_, bytes) = self.old_reading(h, rng);
                Msg {
                    topic: rt,
                    payload: bytes,
                    expect: Expect::Duplicate,
                    kind: "replay_exact_reading",
                }
            }
            1 => {
                let (_, bytes) = self.old_order(h, rng);
                Msg {
                    topic: ot,
                    payload: bytes,
                    expect: Expect::Duplicate,
                    kind: "replay_exact_order",
                }
            }
            2 => {
                // A stored seq with other content, validly signed.
                let (mut r, _) = self.old_reading(h, rng);
                r.import_wh.0 += 1 + rng.range(0, 100);
                reject(
                    "replay_reading_changed",
                    rt,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::SeqConflict,
                )
            }
            3 => {
                let (mut o, _) = self.old_order(h, rng);
                o.quantity_wh.0 += 1;
                reject(
                    "replay_order_changed",
                    ot,
                    signed(Domain::Order, &key, &o),
                    RejectReason::Replay,
                )
            }
            4 => {
                // Replayed into another interval, re-signed: an old nonce.
                let (mut o, _) = self.old_order(h, rng);
                o.interval = IntervalId(o.interval.0 + LEN);
                reject(
                    "order_other_interval_resigned",
                    ot,
                    signed(Domain::Order, &key, &o),
                    RejectReason::Replay,
                )
            }
            5 => {
                // Replayed into another interval, the payload edited under
                // the original signature.
                let (mut o, bytes) = self.old_order(h, rng);
                o.interval = IntervalId(o.interval.0 + LEN);
                let mut env = SignedEnvelope::decode(&bytes).expect("own envelope");
                env.payload = protocol::canonical_json(&o);
                reject(
                    "order_other_interval_same_signature",
                    ot,
                    env.encode(),
                    RejectReason::BadSignature,
                )
            }
            6 => {
                let mut r = self.next_reading(h, rng);
                r.import_wh.0 = r
                    .import_wh
                    .0
                    .saturating_sub(1 + rng.range(0, 500))
                    .min(self.counters[h].0 - 1);
                reject(
                    "counter_rewind",
                    rt,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::CounterRewind,
                )
            }
            7 => {
                let (_, bytes) = self.old_reading(h, rng);
                let mut env = SignedEnvelope::decode(&bytes).expect("own envelope");
                let i = rng.below(env.payload.len());
                env.payload[i] ^= 1 << rng.below(8);
                reject(
                    "bit_flip_payload",
                    rt,
                    env.encode(),
                    RejectReason::BadSignature,
                )
            }
            8 => {
                let r = self.next_reading(h, rng);
                let mut env = SignedEnvelope::sign_json(Domain::Reading, &key, &r).expect("sign");
                let i = rng.below(64);
                env.signature[i] ^= 1 << rng.below(8);
                reject(
                    "bit_flip_signature",
                    rt,
                    env.encode(),
                    RejectReason::BadSignature,
                )
            }
            9 => {
                let r = self.next_reading(h, rng);
                let mut wire = signed(Domain::Reading, &key, &r);
                let klen = usize::from(wire[1]);
                let i = 2 + rng.below(klen);
                wire[i] ^= 1 << rng.below(8);
                let kid = &wire[2..2 + klen];
                let valid =
                    std::str::from_utf8(kid).is_ok_and(|s| protocol::ids::validate_id(s).is_ok());
                let reason = if valid {
                    RejectReason::UnknownKey
                } else {
                    RejectReason::Malformed
                };
                reject("bit_flip_key_id", rt, wire, reason)
            }
            10 => {
                let r = self.next_reading(h, rng);
                reject(
                    "wrong_key",
                    rt,
                    signed(Domain::Reading, &self.stranger, &r),
                    RejectReason::UnknownKey,
                )
            }
            11 => {
                let r = self.next_reading(h, rng);
                let theirs = self.homes[other].key.clone();
                reject(
                    "other_household_key_reading",
                    rt,
                    signed(Domain::Reading, &theirs, &r),
                    RejectReason::WrongHousehold,
                )
            }
            12 => {
                let mut o = self.next_order(h, rng);
                o.nonce = self.nonce[other] + 1_000_000;
                let theirs = self.homes[other].key.clone();
                reject(
                    "other_household_key_order",
                    ot,
                    signed(Domain::Order, &theirs, &o),
                    RejectReason::WrongHousehold,
                )
            }
            13 => {
                // A reading signed under the order domain.
                let r = self.next_reading(h, rng);
                reject(
                    "other_kind_signature_reading",
                    rt,
                    signed(Domain::Order, &key, &r),
                    RejectReason::BadSignature,
                )
            }
            14 => {
                // A genuine order envelope published as a reading.
                let (_, bytes) = self.old_order(h, rng);
                reject(
                    "other_kind_signature_order_as_reading",
                    rt,
                    bytes,
                    RejectReason::BadSignature,
                )
            }
            15 => {
                // The same values re-serialized (sorted keys, whitespace)
                // under the signature of the canonical bytes.
                let r = self.next_reading(h, rng);
                let mut env = SignedEnvelope::sign_json(Domain::Reading, &key, &r).expect("sign");
                let v: serde_json::Value = serde_json::from_slice(&env.payload).expect("json");
                env.payload = if rng.chance(50) {
                    serde_json::to_vec_pretty(&v).expect("json")
                } else {
                    let mut s = serde_json::to_string(&v).expect("json");
                    s.push(' ');
                    s.into_bytes()
                };
                reject(
                    "reserialized_json",
                    rt,
                    env.encode(),
                    RejectReason::BadSignature,
                )
            }
            16 => {
                let mut r = self.next_reading(h, rng);
                r.import_wh.0 = self.counters[h].0;
                r.export_wh.0 = self.counters[h].1;
                r.ts = UnixMs(self.now.0 + 86_400_000 + rng.range(0, 1_000_000));
                reject(
                    "timestamp_future",
                    rt,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::TimestampOutOfWindow,
                )
            }
            17 => {
                let mut r = self.next_reading(h, rng);
                r.import_wh.0 = self.counters[h].0;
                r.export_wh.0 = self.counters[h].1;
                r.ts = UnixMs(self.now.0 - 30 * 86_400_000 - rng.range(0, 1_000_000));
                reject(
                    "timestamp_past",
                    rt,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::TimestampOutOfWindow,
                )
            }
            18 => {
                let len = MAX_ENVELOPE_BYTES + 1 + rng.below(60_000);
                let payload: Vec<u8> = (0..len).map(|_| (rng.next_u64() & 0xff) as u8).collect();
                let topic = if rng.chance(50) { rt } else { ot };
                reject("oversized_message", topic, payload, RejectReason::Oversized)
            }
            19 => {
                // Within the message cap, but the payload is above its own cap.
                let payload = vec![b' '; MAX_PAYLOAD_BYTES + 1 + rng.below(40)];
                let mut env =
                    SignedEnvelope::sign(Domain::Reading, &key, b"{}".to_vec()).expect("sign");
                env.payload = payload;
                let wire = env.encode();
                assert!(wire.len() <= MAX_ENVELOPE_BYTES);
                reject("oversized_payload", rt, wire, RejectReason::Malformed)
            }
            20 => {
                let r = self.next_reading(h, rng);
                let wire = signed(Domain::Reading, &key, &r);
                let cut = rng.below(wire.len());
                let header = 2 + usize::from(wire[1]) + 64;
                let reason = if cut < header {
                    RejectReason::Malformed
                } else {
                    RejectReason::BadSignature
                };
                reject("truncated", rt, wire[..cut].to_vec(), reason)
            }
            21 => {
                let mut bad = protocol::canonical_json(&self.next_reading(h, rng));
                let i = rng.below(bad.len());
                bad[i] = [0xff, 0xfe, 0xc0, 0x80][rng.below(4)];
                let wire = SignedEnvelope::sign(Domain::Reading, &key, bad)
                    .expect("sign")
                    .encode();
                reject("invalid_utf8", rt, wire, RejectReason::Malformed)
            }
            22 => {
                let depth = 9 + rng.below(5_000);
                let deep = if rng.chance(50) {
                    "[".repeat(depth)
                } else {
                    format!("{{\"seq\":{}}}", "[".repeat(depth))
                };
                let topic = if rng.chance(50) { rt } else { ot };
                let domain = if topic.contains("/orders/") {
                    Domain::Order
                } else {
                    Domain::Reading
                };
                let wire = SignedEnvelope::sign(domain, &key, deep.into_bytes())
                    .expect("sign")
                    .encode();
                reject("deeply_nested_json", topic, wire, RejectReason::Malformed)
            }
            23 => {
                let mut r = self.next_reading(h, rng);
                r.grid = GridId::new("another-grid").expect("id");
                reject(
                    "wrong_grid",
                    rt,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::WrongGrid,
                )
            }
            24 => {
                let r = self.next_reading(h, rng);
                let topic = readings_topic(&self.grid, self.meter(other));
                reject(
                    "topic_mismatch",
                    topic,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::TopicMismatch,
                )
            }
            25 => {
                let mut r = self.next_reading(h, rng);
                r.meter = MeterId::new("ghost-meter").expect("id");
                let topic = readings_topic(&self.grid, &r.meter);
                reject(
                    "unknown_meter",
                    topic,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::UnknownMeter,
                )
            }
            26 => {
                let mut o = self.next_order(h, rng);
                o.interval = IntervalId::containing(self.now, LEN);
                reject(
                    "gate_closed",
                    ot,
                    signed(Domain::Order, &key, &o),
                    RejectReason::GateClosed,
                )
            }
            27 => {
                let mut o = self.next_order(h, rng);
                o.interval = IntervalId(o.interval.0 + 1 + rng.range(0, LEN - 2));
                reject(
                    "bad_interval",
                    ot,
                    signed(Domain::Order, &key, &o),
                    RejectReason::BadInterval,
                )
            }
            28 => {
                let mut o = self.next_order(h, rng);
                o.quantity_wh.0 = 0;
                reject(
                    "bad_quantity",
                    ot,
                    signed(Domain::Order, &key, &o),
                    RejectReason::BadQuantity,
                )
            }
            29 => {
                let mut r = self.next_reading(h, rng);
                r.seq = u64::MAX - rng.range(0, 1000);
                reject(
                    "out_of_range",
                    rt,
                    signed(Domain::Reading, &key, &r),
                    RejectReason::OutOfRange,
                )
            }
            _ => {
                let mut junk: Vec<u8> = (0..rng.range(0, 300))
                    .map(|_| (rng.next_u64() & 0xff) as u8)
                    .collect();
                if let Some(b) = junk.first_mut() {
                    *b = 2 + (*b % 200);
                }
                let topic = if rng.chance(50) { rt } else { ot };
                reject("not_an_envelope", topic, junk, RejectReason::Malformed)
            }
        }
    }
}

const BAD_KINDS: usize = 31;

async fn count_rows(pool: &sqlx::SqlitePool, table: &str) -> i64 {
    let q = match table {
        "readings" => "SELECT COUNT(*) FROM readings",
        _ => "SELECT COUNT(*) FROM orders",
    };
    sqlx::query_scalar(q).fetch_one(pool).await.expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_corpus_rejected_by_reason() {
    util::require_system_mosquitto();
    // The figures in every run: 10 000 valid messages, and 2 480
    // bad ones (80 of each of the 31 kinds; at least 500 required).
    let valid_n: usize = 10_000;
    let bad_n: usize = 2_480;
    let grid = util::unique_grid("adv");
    let dir = util::temp_dir("adversarial");
    let homes: Vec<TestHousehold> = (0..8).map(|i| TestHousehold::new("adv", i)).collect();
    let clock = Arc::new(ManualClock::new(t0()));
    let cfg = engine::config(&grid, &homes, &dir, 1883);
    let eng = engine::start(cfg, clock.clone()).await;
    let sender = Sender::connect(
        &grid,
        "127.0.0.1",
        1883,
        eng.engine_key(),
        Duration::from_secs(3600),
    )
    .await;
    let mut w = World::new(grid.clone(), homes);
    let mut rng = Rng::new(0x5eed_0005);

    // Every household has at least one stored reading and order first, so
    // that every kind of replay has something to replay.
    let mut msgs: Vec<Msg> = Vec::new();
    for h in 0..w.homes.len() {
        msgs.push(w.valid_reading(h, &mut rng));
        msgs.push(w.valid_order(h, &mut rng));
    }
    let mut bad_left = bad_n;
    let mut kind = 0usize;
    while msgs.len() < valid_n + bad_n {
        let valid_so_far = msgs
            .iter()
            .filter(|m| matches!(m.expect, Expect::Accept(_)))
            .count();
        let want_bad =
            bad_left > 0 && (valid_so_far >= valid_n || rng.below(valid_n + bad_n) < bad_n);
        if want_bad {
            // Every kind in turn, so each is represented about equally.
            msgs.push(w.bad(kind % BAD_KINDS, &mut rng));
            kind += 1;
            bad_left -= 1;
        } else if valid_so_far < valid_n {
            let h = rng.below(w.homes.len());
            let m = if rng.chance(50) {
                w.valid_reading(h, &mut rng)
            } else {
                w.valid_order(h, &mut rng)
            };
            msgs.push(m);
        }
    }

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut exp_readings, mut exp_orders, mut exp_dups) = (0u64, 0u64, 0u64);
    let mut valid_keys = Vec::new();
    for m in &msgs {
        *by_kind.entry(m.kind).or_insert(0) += 1;
        match &m.expect {
            Expect::Accept(k) => {
                if k.order {
                    exp_orders += 1;
                } else {
                    exp_readings += 1;
                }
                valid_keys.push(k.clone());
            }
            Expect::Duplicate => exp_dups += 1,
            Expect::Reject(r) => *expected.entry(r.as_str().to_owned()).or_insert(0) += 1,
        }
    }
    let bad_total: u64 = expected.values().sum::<u64>() + exp_dups;
    assert!(
        bad_total >= 500,
        "the corpus must hold at least 500 bad cases, has {bad_total}"
    );
    for r in [
        "bad_signature",
        "unknown_key",
        "malformed",
        "oversized",
        "seq_conflict",
        "replay",
        "counter_rewind",
        "timestamp_out_of_window",
        "wrong_household",
        "wrong_grid",
        "topic_mismatch",
        "unknown_meter",
        "gate_closed",
        "bad_interval",
        "bad_quantity",
        "out_of_range",
    ] {
        assert!(
            expected.get(r).copied().unwrap_or(0) > 0,
            "the corpus has no case for {r}"
        );
    }

    let total = u64::try_from(msgs.len()).expect("count");
    let watch = protocol::Stopwatch::start();
    let mut sent = 0u64;
    for m in msgs {
        match m.expect {
            Expect::Accept(k) => sender.send_tracked(k, m.topic, m.payload).await,
            _ => sender.publish(m.topic, m.payload).await,
        }
        sent += 1;
        engine::keep_up(&eng, sent).await;
    }
    engine::wait_accounted(&eng, total, Duration::from_secs(180)).await;
    // Acks for the valid ones.
    sender.drain(Duration::from_secs(60)).await;
    let elapsed = watch.elapsed();
    let (readings, orders, dups, rejects) = engine::totals(&eng);
    let outcomes = sender.outcomes();
    let false_rejections: Vec<(&AckKey, &AckOutcome)> = valid_keys
        .iter()
        .filter_map(|k| outcomes.get_key_value(k))
        .filter(|(_, o)| !matches!(o, AckOutcome::Accepted))
        .collect();
    let pool = eng.pool();
    let (rows_r, rows_o) = (
        count_rows(&pool, "readings").await,
        count_rows(&pool, "orders").await,
    );
    let forged = sender.forged_acks();
    report::write_section(
        "adversarial",
        json!({
            "messages": total,
            "valid_sent": exp_readings + exp_orders,
            "valid_readings_sent": exp_readings,
            "valid_orders_sent": exp_orders,
            "bad_cases": bad_total,
            "bad_cases_by_kind": by_kind.iter().filter(|(k, _)| !k.starts_with("valid")).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "expected_rejects_by_reason": expected,
            "engine_rejects_by_reason": rejects,
            "expected_duplicates": exp_dups,
            "engine_duplicates": dups,
            "accepted_readings": readings,
            "accepted_orders": orders,
            "stored_readings": rows_r,
            "stored_orders": rows_o,
            "false_rejections": false_rejections.len(),
            "forged_acks_seen": forged,
            "seconds": elapsed.as_secs_f64(),
        }),
    );
    assert!(
        false_rejections.is_empty(),
        "valid messages refused: {false_rejections:?}"
    );
    assert_eq!(readings, exp_readings, "accepted readings");
    assert_eq!(orders, exp_orders, "accepted orders");
    assert_eq!(
        rows_r,
        i64::try_from(exp_readings).expect("n"),
        "stored readings"
    );
    assert_eq!(
        rows_o,
        i64::try_from(exp_orders).expect("n"),
        "stored orders"
    );
    assert_eq!(dups, exp_dups, "exact replays are duplicates, stored once");
    assert_eq!(rejects, expected, "rejects by reason");
    assert_eq!(forged, 0, "every ack the engine sent verifies");
    sender.close().await;
    eng.shutdown().await.expect("engine shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_qos1_message_three_times_is_stored_once() {
    util::require_system_mosquitto();
    let n: usize = 5_000;
    let grid = util::unique_grid("dup");
    let dir = util::temp_dir("duplicates");
    let homes: Vec<TestHousehold> = (0..4).map(|i| TestHousehold::new("dup", i)).collect();
    let clock = Arc::new(ManualClock::new(t0()));
    let eng = engine::start(engine::config(&grid, &homes, &dir, 1883), clock).await;
    let sender = Sender::connect(
        &grid,
        "127.0.0.1",
        1883,
        eng.engine_key(),
        Duration::from_secs(3600),
    )
    .await;
    let mut w = World::new(grid.clone(), homes);
    let mut rng = Rng::new(0x5eed_0004);
    let msgs: Vec<Msg> = (0..n)
        .map(|i| {
            let h = rng.below(w.homes.len());
            if i % 2 == 0 {
                w.valid_reading(h, &mut rng)
            } else {
                w.valid_order(h, &mut rng)
            }
        })
        .collect();
    let (first, second) = msgs.split_at(n / 2);
    let mut sent = 0u64;
    // First half: each message three times back to back.
    for m in first {
        let Expect::Accept(k) = &m.expect else {
            unreachable!("valid")
        };
        sender
            .send_tracked(k.clone(), m.topic.clone(), m.payload.clone())
            .await;
        sender.publish(m.topic.clone(), m.payload.clone()).await;
        sender.publish(m.topic.clone(), m.payload.clone()).await;
        sent += 3;
        engine::keep_up(&eng, sent).await;
    }
    // Second half: three rounds, as redeliveries after reconnects come.
    for round in 0..3 {
        for m in second {
            let Expect::Accept(k) = &m.expect else {
                unreachable!("valid")
            };
            if round == 0 {
                sender
                    .send_tracked(k.clone(), m.topic.clone(), m.payload.clone())
                    .await;
            } else {
                sender.publish(m.topic.clone(), m.payload.clone()).await;
            }
            sent += 1;
            engine::keep_up(&eng, sent).await;
        }
    }
    let total = 3 * u64::try_from(n).expect("n");
    engine::wait_accounted(&eng, total, Duration::from_secs(120)).await;
    sender.drain(Duration::from_secs(30)).await;
    let (readings, orders, dups, rejects) = engine::totals(&eng);
    let pool = eng.pool();
    let stored = count_rows(&pool, "readings").await + count_rows(&pool, "orders").await;
    let accepted_first = msgs
        .iter()
        .filter(|m| matches!(&m.expect, Expect::Accept(k) if sender.outcome_history(k).first() == Some(&AckOutcome::Accepted)))
        .count();
    report::write_section(
        "duplicates",
        json!({
            "genuine_messages": n,
            "deliveries": total,
            "stored": stored,
            "accepted": readings + orders,
            "duplicates_counted": dups,
            "rejected": rejects.values().sum::<u64>(),
            "acked_accepted": accepted_first,
        }),
    );
    assert_eq!(
        stored,
        i64::try_from(n).expect("n"),
        "each genuine message is stored once"
    );
    assert_eq!(readings + orders, u64::try_from(n).expect("n"));
    assert_eq!(
        dups,
        2 * u64::try_from(n).expect("n"),
        "two copies of each are duplicates"
    );
    assert!(rejects.is_empty(), "no copy is refused: {rejects:?}");
    assert_eq!(accepted_first, n, "each message's first ack is `accepted`");
    sender.close().await;
    eng.shutdown().await.expect("engine shutdown");
}
