//! Shared helpers of the clearing engine's integration tests: households with
//! deterministic keys, signed readings and orders, an engine on a temporary
//! SQLite file with a manual clock, and an MQTT test client for the real
//! Mosquitto on 127.0.0.1:1883. Each test uses its own grid id, so tests
//! sharing the broker cannot see each other's messages.

#![allow(dead_code)]

use clearing::{EngineConfig, EngineHandle, Enrolment, start_engine};
use ed25519_dalek::SigningKey;
use protocol::{
    Ack, AckItem, AuctionParams, DeviceStatus, Domain, GridId, HouseholdId, IntervalId,
    ManualClock, MeterId, MicroPerKwh, Order, Reading, Side, SignedEnvelope, Topic, UnixMs,
    WattHours, Watts, decode_payload,
};
use rand::RngExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The intake rules the direct (broker-less) intake tests use: 15-minute
/// intervals, no gate lead, a 5-minute timestamp window, a week's reading
/// age, 4 orders per household and interval of at most 100 kWh.
pub fn intake_rules(grid: &GridId) -> clearing::intake::IntakeRules {
    clearing::intake::IntakeRules {
        grid: grid.clone(),
        interval_ms: LEN,
        gate_lead_ms: 0,
        timestamp_window_ms: 300_000,
        max_reading_age_ms: 7 * 24 * 3_600_000,
        max_orders_per_interval: 4,
        max_order_wh: 100_000,
        order_horizon_intervals: 96,
    }
}

/// 15 minutes.
pub const LEN: u64 = 900_000;
/// The test clock's start: five minutes into an interval.
pub const T0: u64 = 1_750_000_000_000 - 1_750_000_000_000 % LEN + 300_000;

/// The interval that contains T0.
pub fn i0() -> IntervalId {
    IntervalId::containing(UnixMs(T0), LEN)
}

/// A grid id nobody else uses on the shared broker.
pub fn unique_grid(tag: &str) -> GridId {
    let n: u32 = rand::rng().random();
    GridId::new(format!("t-{tag}-{n:08x}")).expect("grid id")
}

/// A household with one meter and a deterministic key.
#[derive(Debug, Clone)]
pub struct Household {
    pub id: HouseholdId,
    pub meter: MeterId,
    pub key: SigningKey,
}

pub fn household(name: &str, seed: u8) -> Household {
    Household {
        id: HouseholdId::new(name).expect("id"),
        meter: MeterId::new(format!("{name}-grid")).expect("id"),
        key: SigningKey::from_bytes(&[seed; 32]),
    }
}

impl Household {
    pub fn enrolment(&self) -> Enrolment {
        Enrolment::new(
            self.id.clone(),
            &self.key.verifying_key(),
            vec![self.meter.clone()],
        )
    }

    pub fn reading(&self, grid: &GridId, seq: u64, ts: u64, import: u64, export: u64) -> Reading {
        Reading {
            grid: grid.clone(),
            household: self.id.clone(),
            meter: self.meter.clone(),
            seq,
            ts: UnixMs(ts),
            import_wh: WattHours(import),
            export_wh: WattHours(export),
            pv_wh: None,
            grid_power_w: Watts(100),
            pv_power_w: None,
            status: DeviceStatus::Ok,
        }
    }

    pub fn order(
        &self,
        grid: &GridId,
        interval: IntervalId,
        side: Side,
        wh: u64,
        price: u64,
        nonce: u64,
    ) -> Order {
        Order {
            grid: grid.clone(),
            household: self.id.clone(),
            interval,
            side,
            quantity_wh: WattHours(wh),
            limit_price: MicroPerKwh(price),
            nonce,
            ts: UnixMs(T0),
            replaces: None,
        }
    }

    pub fn sign_reading(&self, r: &Reading) -> Vec<u8> {
        SignedEnvelope::sign_json(Domain::Reading, &self.key, r)
            .expect("sign")
            .encode()
    }

    pub fn sign_order(&self, o: &Order) -> Vec<u8> {
        SignedEnvelope::sign_json(Domain::Order, &self.key, o)
            .expect("sign")
            .encode()
    }

    pub fn reading_topic(&self, grid: &GridId) -> String {
        Topic::Readings {
            grid: grid.clone(),
            meter: self.meter.clone(),
        }
        .to_string()
    }

    pub fn order_topic(&self, grid: &GridId) -> String {
        Topic::Orders {
            grid: grid.clone(),
            household: self.id.clone(),
        }
        .to_string()
    }
}

/// An engine config for tests: a file in `dir`, the local broker, defaults
/// otherwise.
pub fn config(grid: &GridId, dir: &std::path::Path, households: &[&Household]) -> EngineConfig {
    let mut cfg = EngineConfig::new(grid.clone(), dir.join("engine.db"));
    cfg.client_id = format!("engine-{grid}");
    cfg.households = households.iter().map(|h| h.enrolment()).collect();
    cfg.params = AuctionParams::default();
    cfg.settle_grace_ms = 60_000;
    cfg.settle_max_wait_ms = 60_000;
    cfg
}

pub fn engine_key() -> SigningKey {
    SigningKey::from_bytes(&[200; 32])
}

pub async fn start(cfg: EngineConfig, clock: Arc<ManualClock>) -> EngineHandle {
    start_engine(cfg, engine_key(), clock)
        .await
        .expect("engine starts")
}

/// An MQTT client that records every message on the grid's ack and result
/// topics.
pub struct TestClient {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    pub async fn connect(grid: &GridId, name: &str) -> TestClient {
        let mut opts = MqttOptions::new(format!("{name}-{grid}"), "127.0.0.1", 1883);
        opts.set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut el) = AsyncClient::new(opts, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let subs = [
            Topic::filter(grid, "acks"),
            Topic::filter(grid, "results"),
            Topic::filter(grid, "status"),
        ];
        let c = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for s in &subs {
                            c.try_subscribe(s.clone(), QoS::AtLeastOnce)
                                .expect("subscribe");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("test client subscribed");
        // Three subscriptions, three SubAcks; a short pause lets the rest land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        TestClient { client, rx, task }
    }

    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// Collects `n` ack items (signature checked with the engine key), or
    /// panics after `secs`.
    pub async fn acks(&mut self, n: usize, secs: u64) -> Vec<(HouseholdId, AckItem)> {
        let vk = engine_key().verifying_key();
        let mut items = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(secs));
        tokio::pin!(deadline);
        while items.len() < n {
            tokio::select! {
                _ = &mut deadline => panic!("only {} of {n} ack items arrived: {items:?}", items.len()),
                m = self.rx.recv() => {
                    let (topic, payload) = m.expect("client alive");
                    if !topic.contains("/acks/") {
                        continue;
                    }
                    let env = SignedEnvelope::decode(&payload).expect("ack envelope");
                    env.verify(Domain::Ack, &vk).expect("ack signed by the engine");
                    let ack: Ack = decode_payload(&env.payload).expect("ack payload");
                    assert!(topic.ends_with(&format!("/acks/{}", ack.household)), "ack on its household's topic");
                    items.extend(ack.items.into_iter().map(|i| (ack.household.clone(), i)));
                }
            }
        }
        items
    }

    /// Waits for a message on a topic.
    pub async fn message_on(&mut self, topic: &str, secs: u64) -> Vec<u8> {
        let deadline = tokio::time::sleep(Duration::from_secs(secs));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => panic!("nothing on {topic}"),
                m = self.rx.recv() => {
                    let (t, payload) = m.expect("client alive");
                    if t == topic {
                        return payload;
                    }
                }
            }
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` every 20 ms until it returns true, or panics after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // Counted naps rather than a clock read: tests obey the clock ban too.
    for _ in 0..secs * 50 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f().await, "timed out waiting for {what}");
}
