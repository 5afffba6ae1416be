//! A test household on the wire: signs readings and orders, publishes them
//! QoS 1 and keeps each in an in-memory outbox until the engine's signed
//! ack for it arrives, republishing what is still unacknowledged after a
//! reconnect and every `resend` period (the meter agent's and controller's
//! contract, in a form a test can count exactly).

use ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::{
    Ack, AckKind, AckOutcome, DeviceStatus, Domain, GridId, HouseholdId, IntervalId, MeterId,
    MicroPerKwh, Order, Reading, Side, SignedEnvelope, Topic, UnixMs, WattHours, Watts,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// What an ack refers to: (household, kind, meter, seq or nonce).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AckKey {
    pub household: HouseholdId,
    pub order: bool,
    pub meter: Option<MeterId>,
    pub seq: u64,
}

impl AckKey {
    pub fn reading(household: &HouseholdId, meter: &MeterId, seq: u64) -> AckKey {
        AckKey {
            household: household.clone(),
            order: false,
            meter: Some(meter.clone()),
            seq,
        }
    }
    pub fn order(household: &HouseholdId, nonce: u64) -> AckKey {
        AckKey {
            household: household.clone(),
            order: true,
            meter: None,
            seq: nonce,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Unacknowledged messages, in key order (sequence order per meter).
    pending: BTreeMap<AckKey, (String, Vec<u8>)>,
    /// Every ack outcome received, in arrival order per key.
    outcomes: HashMap<AckKey, Vec<AckOutcome>>,
    /// Ack messages that did not verify against the engine key.
    forged_acks: u64,
    connects: u64,
    published: u64,
}

/// The sending side of one or more test households.
#[derive(Debug)]
pub struct Sender {
    client: AsyncClient,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sender {
    /// Connects to `host:port`, subscribes to the grid's acks and waits for
    /// the subscription. Unacknowledged messages are republished on every
    /// reconnect and every `resend`.
    pub async fn connect(
        grid: &GridId,
        host: &str,
        port: u16,
        engine_key: VerifyingKey,
        resend: Duration,
    ) -> Sender {
        let id = format!("vs-test-sender-{grid}-{}", crate::util::free_port());
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(512 * 1024, 512 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 20_000);
        let state = Arc::new(Mutex::new(State::default()));
        let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
        let acks = Topic::filter(grid, "acks");
        let (st, cl) = (state.clone(), client.clone());
        let driver = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        lock(&st).connects += 1;
                        let _ = cl.try_subscribe(acks.clone(), QoS::AtLeastOnce);
                        // Republish everything still unacknowledged, in order.
                        let again: Vec<(String, Vec<u8>)> =
                            lock(&st).pending.values().cloned().collect();
                        let cl2 = cl.clone();
                        tokio::spawn(async move {
                            for (t, p) in again {
                                if cl2.publish(t, QoS::AtLeastOnce, false, p).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => on_ack(&st, &engine_key, &p.payload),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let (st, cl) = (state.clone(), client.clone());
        let resender = tokio::spawn(async move {
            loop {
                tokio::time::sleep(resend).await;
                let again: Vec<(String, Vec<u8>)> = lock(&st).pending.values().cloned().collect();
                for (t, p) in again {
                    if cl.publish(t, QoS::AtLeastOnce, false, p).await.is_err() {
                        break;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(15), ready_rx.wait_for(|r| *r))
            .await
            .expect("the test sender's subscription was not acknowledged")
            .expect("sender driver stopped");
        Sender {
            client,
            state,
            tasks: vec![driver, resender],
        }
    }

    /// Publishes a message once and keeps it until its ack arrives.
    pub async fn send_tracked(&self, key: AckKey, topic: String, payload: Vec<u8>) {
        lock(&self.state)
            .pending
            .insert(key, (topic.clone(), payload.clone()));
        self.publish(topic, payload).await;
    }

    /// Publishes a message once, untracked.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        lock(&self.state).published += 1;
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queueing a publish");
    }

    /// Messages still waiting for their ack.
    pub fn pending(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// The outcome acked for `key`, if any: `Accepted` if any ack said so
    /// (later copies are acked as duplicates), else `Duplicate` if any said
    /// so, else the last rejection. Several outcomes for one key also arise
    /// when a bad message claims the (meter, seq) of a valid one: the engine
    /// acks the claim it read.
    pub fn outcome(&self, key: &AckKey) -> Option<AckOutcome> {
        lock(&self.state).outcomes.get(key).and_then(|v| summary(v))
    }

    /// [`Sender::outcome`] of every key acked.
    pub fn outcomes(&self) -> HashMap<AckKey, AckOutcome> {
        lock(&self.state)
            .outcomes
            .iter()
            .filter_map(|(k, v)| summary(v).map(|o| (k.clone(), o)))
            .collect()
    }

    /// Every outcome received for `key`, in arrival order.
    pub fn outcome_history(&self, key: &AckKey) -> Vec<AckOutcome> {
        lock(&self.state)
            .outcomes
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Ack messages that did not verify.
    pub fn forged_acks(&self) -> u64 {
        lock(&self.state).forged_acks
    }

    /// MQTT connections made (1 + reconnects).
    pub fn connects(&self) -> u64 {
        lock(&self.state).connects
    }

    /// Waits until nothing is pending; panics after `timeout`.
    pub async fn drain(&self, timeout: Duration) {
        // Checked every 5 ms (a mutex and a length): tests that drain after
        // every step of a simulated week spend their time waiting here.
        let watch = protocol::Stopwatch::start();
        while self.pending() > 0 {
            assert!(
                watch.elapsed() < timeout,
                "timed out after {timeout:?} waiting for the test sender's outbox to drain ({} pending)",
                self.pending()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the tasks and disconnects.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

fn summary(v: &[AckOutcome]) -> Option<AckOutcome> {
    if v.contains(&AckOutcome::Accepted) {
        return Some(AckOutcome::Accepted);
    }
    if v.contains(&AckOutcome::Duplicate) {
        return Some(AckOutcome::Duplicate);
    }
    v.last().cloned()
}

fn on_ack(st: &Mutex<State>, engine_key: &VerifyingKey, payload: &[u8]) {
    let Ok(env) = SignedEnvelope::decode(payload) else {
        lock(st).forged_acks += 1;
        return;
    };
    if env.verify(Domain::Ack, engine_key).is_err() {
        lock(st).forged_acks += 1;
        return;
    }
    let Ok(ack) = protocol::decode_payload::<Ack>(&env.payload) else {
        lock(st).forged_acks += 1;
        return;
    };
    let mut s = lock(st);
    for item in ack.items {
        let key = AckKey {
            household: ack.household.clone(),
            order: item.kind == AckKind::Order,
            meter: item.meter.clone(),
            seq: item.seq,
        };
        s.pending.remove(&key);
        s.outcomes.entry(key).or_default().push(item.outcome);
    }
}

/// A household of the tests: id, key, meters.
#[derive(Debug, Clone)]
pub struct TestHousehold {
    pub id: HouseholdId,
    pub key: SigningKey,
    pub meters: Vec<MeterId>,
}

impl TestHousehold {
    /// Household `h{i}` with one meter `h{i}-m`, keyed from `tag`.
    pub fn new(tag: &str, i: usize) -> TestHousehold {
        let id = HouseholdId::new(format!("h{i:02}")).expect("id");
        let meter = MeterId::new(format!("h{i:02}-m")).expect("id");
        TestHousehold {
            key: crate::util::key(&format!("{tag}-{i}")),
            id,
            meters: vec![meter],
        }
    }

    /// The engine's enrolment of this household.
    pub fn enrolment(&self) -> clearing::Enrolment {
        clearing::Enrolment::new(
            self.id.clone(),
            &self.key.verifying_key(),
            self.meters.clone(),
        )
    }
}

/// A reading with the given counters.
pub fn reading(
    grid: &GridId,
    h: &TestHousehold,
    meter: &MeterId,
    seq: u64,
    ts: UnixMs,
    import: u64,
    export: u64,
) -> Reading {
    Reading {
        grid: grid.clone(),
        household: h.id.clone(),
        meter: meter.clone(),
        seq,
        ts,
        import_wh: WattHours(import),
        export_wh: WattHours(export),
        pv_wh: None,
        grid_power_w: Watts(0),
        pv_power_w: None,
        status: DeviceStatus::Ok,
    }
}

/// An order.
#[allow(clippy::too_many_arguments)]
pub fn order(
    grid: &GridId,
    h: &TestHousehold,
    interval: IntervalId,
    side: Side,
    qty: u64,
    price: u64,
    nonce: u64,
    ts: UnixMs,
) -> Order {
    Order {
        grid: grid.clone(),
        household: h.id.clone(),
        interval,
        side,
        quantity_wh: WattHours(qty),
        limit_price: MicroPerKwh(price),
        nonce,
        ts,
        replaces: None,
    }
}

/// The wire bytes of a value signed for `domain` with `key`.
pub fn signed<T: serde::Serialize>(domain: Domain, key: &SigningKey, value: &T) -> Vec<u8> {
    SignedEnvelope::sign_json(domain, key, value)
        .expect("signing")
        .encode()
}

/// The readings topic of a meter.
pub fn readings_topic(grid: &GridId, meter: &MeterId) -> String {
    Topic::Readings {
        grid: grid.clone(),
        meter: meter.clone(),
    }
    .to_string()
}

/// The orders topic of a household.
pub fn orders_topic(grid: &GridId, household: &HouseholdId) -> String {
    Topic::Orders {
        grid: grid.clone(),
        household: household.clone(),
    }
    .to_string()
}
