//! The agent end to end with real parts: the simulator over TCP, the outbox
//! in a SQLite file, and the real Mosquitto broker at 127.0.0.1:1883 (a
//! unique grid id per test keeps tests apart). A small fake engine verifies
//! readings and sends signed acks; a TCP proxy in front of the broker
//! simulates a broker outage.

use ed25519_dalek::SigningKey;
use meter_agent::outbox::Outbox;
use meter_agent::{
    AgentConfig, AgentStats, SimFaults, SimHousehold, run_agent, spawn_simulator_with_faults,
};
use protocol::{
    Ack, AckItem, AckKind, AckOutcome, DeviceStatus, Domain, GridId, HouseholdId, MeterId, Reading,
    ScaledClock, SignedEnvelope, Topic, UnixMs, canonical_json, decode_payload,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const BROKER: (&str, u16) = ("127.0.0.1", 1883);
/// 2021-06-21 10:00 UTC.
const JUNE_21_NOON: u64 = 1_624_269_600_000;

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Polls `f` every 20 ms for up to `secs` seconds.
async fn until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 50 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    AgentStats::get(c)
}

/// A TCP proxy in front of the broker that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut upstream).await;
                    }
                });
                conns2.lock().expect("lock").push(h);
            }
        });
        Proxy {
            addr,
            up,
            conns,
            accept,
        }
    }
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().expect("lock").drain(..) {
            h.abort();
        }
    }
    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A stand-in for the clearing engine: collects verified readings, sends
/// signed acks.
struct Engine {
    client: AsyncClient,
    key: SigningKey,
    grid: GridId,
    household: HouseholdId,
    meter: MeterId,
    /// Sequence numbers of verified readings, in arrival order.
    seen: Arc<Mutex<Vec<u64>>>,
    last: Arc<Mutex<Option<Reading>>>,
    task: JoinHandle<()>,
}

impl Engine {
    async fn start(
        grid: &GridId,
        household: &HouseholdId,
        meter: &MeterId,
        household_key: ed25519_dalek::VerifyingKey,
    ) -> Engine {
        let mut opts = MqttOptions::new(unique("eng"), BROKER.0, BROKER.1);
        opts.set_clean_session(true);
        let (client, mut el) = AsyncClient::new(opts, 100);
        client
            .subscribe(Topic::filter(grid, "readings"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let last: Arc<Mutex<Option<Reading>>> = Arc::default();
        let (seen2, last2) = (seen.clone(), last.clone());
        let (subbed_tx, subbed_rx) = tokio::sync::oneshot::channel();
        let mut subbed_tx = Some(subbed_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subbed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let env =
                            SignedEnvelope::decode(&p.payload).expect("agent sends envelopes");
                        env.verify(Domain::Reading, &household_key)
                            .expect("agent signs readings");
                        let r: Reading = decode_payload(&env.payload).expect("reading payload");
                        seen2.lock().expect("lock").push(r.seq);
                        *last2.lock().expect("lock") = Some(r);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subbed_rx)
            .await
            .expect("suback in time")
            .expect("suback");
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        Engine {
            client,
            key,
            grid: grid.clone(),
            household: household.clone(),
            meter: meter.clone(),
            seen,
            last,
            task,
        }
    }

    fn seen(&self) -> Vec<u64> {
        self.seen.lock().expect("lock").clone()
    }

    fn items(&self, seqs: impl IntoIterator<Item = u64>, outcome: AckOutcome) -> Vec<AckItem> {
        seqs.into_iter()
            .map(|seq| AckItem {
                kind: AckKind::Reading,
                meter: Some(self.meter.clone()),
                seq,
                outcome: outcome.clone(),
            })
            .collect()
    }

    async fn send_ack(&self, key: &SigningKey, domain: Domain, items: Vec<AckItem>) {
        let ack = Ack {
            grid: self.grid.clone(),
            household: self.household.clone(),
            items,
        };
        let env = SignedEnvelope::sign(domain, key, canonical_json(&ack)).expect("sign ack");
        let topic = Topic::Acks {
            grid: self.grid.clone(),
            household: self.household.clone(),
        }
        .to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, env.encode())
            .await
            .expect("publish ack");
    }

    async fn ack(&self, seqs: impl IntoIterator<Item = u64>, outcome: AckOutcome) {
        let items = self.items(seqs, outcome);
        self.send_ack(&self.key.clone(), Domain::Ack, items).await;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Running {
    cfg: AgentConfig,
    stats: Arc<AgentStats>,
    latest: watch::Receiver<Option<Reading>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), meter_agent::AgentError>>,
    engine: Engine,
    _sim: JoinHandle<()>,
}

impl Running {
    async fn outbox_seqs(&self) -> Vec<u64> {
        // A second connection to the agent's outbox file (WAL allows a
        // concurrent reader).
        let ob = Outbox::open(&self.cfg.outbox_path, self.cfg.outbox_max)
            .await
            .expect("open outbox");
        let rows = ob.pending(&self.cfg.meter, 0, 10_000).await.expect("rows");
        ob.close().await;
        rows.iter().map(|r| r.seq).collect()
    }

    async fn dead_letters(&self) -> u64 {
        let ob = Outbox::open(&self.cfg.outbox_path, self.cfg.outbox_max)
            .await
            .expect("open outbox");
        let n = ob.dead_letters().await.expect("dead letters");
        ob.close().await;
        n
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("agent stops")
            .expect("agent task")
            .expect("agent ok");
    }
}

fn temp_db() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("voltshare-agent-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("outbox.db")
}

async fn start(broker: SocketAddr, poll_ms: u64, resend_ms: u64, outbox_max: u64) -> Running {
    start_with(broker, poll_ms, resend_ms, outbox_max, Arc::default()).await
}

async fn start_with(
    broker: SocketAddr,
    poll_ms: u64,
    resend_ms: u64,
    outbox_max: u64,
    faults: Arc<SimFaults>,
) -> Running {
    let grid = GridId::new(unique("g")).expect("grid id");
    let household = HouseholdId::new("h1").expect("id");
    let meter = MeterId::new("h1-grid").expect("id");
    let household_key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let engine = Engine::start(&grid, &household, &meter, household_key.verifying_key()).await;
    // A demo-speed clock: one real second is a simulated minute.
    let clock = Arc::new(ScaledClock::new(UnixMs(JUNE_21_NOON), 60));
    let (modbus, sim) = spawn_simulator_with_faults(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimHousehold::from_seed(3),
        clock.clone(),
        faults,
    )
    .await
    .expect("simulator");
    let cfg = AgentConfig {
        grid,
        household,
        meter,
        modbus,
        inverter_unit: 1,
        meter_unit: 2,
        poll_every: Duration::from_millis(poll_ms),
        outbox_path: temp_db(),
        outbox_max,
        broker_host: broker.ip().to_string(),
        broker_port: broker.port(),
        broker_security: Default::default(),
        engine_key: engine.key.verifying_key(),
        resend_after: Duration::from_millis(resend_ms),
    };
    let stats = Arc::new(AgentStats::default());
    let (latest_tx, latest) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_agent(
        cfg.clone(),
        household_key,
        clock,
        stop_rx,
        latest_tx,
        stats.clone(),
    ));
    Running {
        cfg,
        stats,
        latest,
        stop,
        task,
        engine,
        _sim: sim,
    }
}

fn broker_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], BROKER.1))
}

#[tokio::test]
async fn readings_are_signed_contiguous_and_deleted_when_acked() {
    let a = start(broker_addr(), 100, 60_000, 1000).await;
    assert!(
        until(10, || a.engine.seen().len() >= 5).await,
        "engine receives readings: {:?}",
        a.engine.seen()
    );
    let seen = a.engine.seen();
    assert_eq!(&seen[..5], &[1, 2, 3, 4, 5], "contiguous from 1");
    let last = a
        .engine
        .last
        .lock()
        .expect("lock")
        .clone()
        .expect("a reading");
    assert_eq!(last.grid, a.cfg.grid);
    assert_eq!(last.status, DeviceStatus::Ok);
    assert!(last.pv_wh.is_some() && last.pv_power_w.is_some());
    assert!(
        a.latest.borrow().as_ref().is_some_and(|r| r.seq >= 5),
        "controller sees the latest reading"
    );

    // Accepted and Duplicate both delete.
    a.engine.ack([1, 2, 3], AckOutcome::Accepted).await;
    a.engine.ack([4], AckOutcome::Duplicate).await;
    assert!(
        until(5, || get(&a.stats.acked) == 4).await,
        "acked = {}",
        get(&a.stats.acked)
    );
    let left = a.outbox_seqs().await;
    assert!(left.iter().all(|s| *s >= 5), "acked rows gone: {left:?}");
    assert!(left.contains(&5), "un-acked row kept: {left:?}");
    // The same ack again (a broker redelivery) is harmless.
    a.engine.ack([1], AckOutcome::Accepted).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&a.stats.acked), 4);
    a.stop().await;
}

#[tokio::test]
async fn unacked_readings_are_resent_in_order_after_broker_outage() {
    let proxy = Proxy::start(broker_addr()).await;
    let a = start(proxy.addr, 100, 600_000, 1000).await;
    assert!(
        until(10, || a.engine.seen().len() >= 3).await,
        "first readings arrive"
    );
    assert!(until(5, || a.stats.mqtt_connected.load(Ordering::SeqCst)).await);

    proxy.cut();
    assert!(
        until(5, || !a.stats.mqtt_connected.load(Ordering::SeqCst)).await,
        "agent notices the outage"
    );
    let stored_before = get(&a.stats.readings);
    // Polling goes on while the broker is away; everything lands in the outbox.
    assert!(until(5, || get(&a.stats.readings) >= stored_before + 5).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.engine.seen.lock().expect("lock").clear();
    let stored = get(&a.stats.readings);

    proxy.restore();
    assert!(
        until(15, || a.engine.seen().iter().any(|s| *s >= stored)).await,
        "backlog arrives: {:?}",
        a.engine.seen()
    );
    let after = a.engine.seen();
    let prefix: Vec<u64> = after.iter().copied().take_while(|s| *s <= stored).collect();
    assert_eq!(
        prefix,
        (1..=stored).collect::<Vec<_>>(),
        "whole un-acked backlog, in sequence order"
    );
    assert!(get(&a.stats.resent) >= stored);

    // Acknowledge everything seen: the outbox drains.
    let max = *after.iter().max().expect("some");
    a.engine.ack(1..=max, AckOutcome::Accepted).await;
    assert!(until(5, || get(&a.stats.acked) >= max).await);
    let left = a.outbox_seqs().await;
    assert!(
        left.iter().all(|s| *s > max),
        "drained up to {max}: {left:?}"
    );
    a.stop().await;
}

#[tokio::test]
async fn unacked_readings_are_resent_after_resend_period() {
    // Slow polls, quick resends: seq 1 must come again, and every burst is
    // in order.
    let a = start(broker_addr(), 700, 400, 1000).await;
    assert!(
        until(10, || a.engine.seen().iter().filter(|s| **s == 1).count()
            >= 2)
        .await,
        "seq 1 resent: {:?}",
        a.engine.seen()
    );
    let seen = a.engine.seen();
    for w in seen.windows(2) {
        // Within a burst each next number is one up; a new burst restarts at 1.
        assert!(w[1] == w[0] + 1 || w[1] == 1, "order: {seen:?}");
    }
    assert!(get(&a.stats.resent) >= 1);
    a.stop().await;
}

#[tokio::test]
async fn forged_acks_are_ignored_and_rejections_dead_lettered() {
    let a = start(broker_addr(), 100, 600_000, 1000).await;
    assert!(until(10, || a.engine.seen().len() >= 3).await);

    let stranger = SigningKey::from_bytes(&[66; 32]);
    let items = a.engine.items([1, 2], AckOutcome::Accepted);
    a.engine
        .send_ack(&stranger, Domain::Ack, items.clone())
        .await;
    // The engine's key but the wrong domain: a reading signature is not an ack.
    a.engine
        .send_ack(&a.engine.key.clone(), Domain::Reading, items)
        .await;
    // Not even an envelope.
    let topic = Topic::Acks {
        grid: a.cfg.grid.clone(),
        household: a.cfg.household.clone(),
    }
    .to_string();
    a.engine
        .client
        .publish(topic, QoS::AtLeastOnce, false, b"garbage".to_vec())
        .await
        .expect("publish");
    assert!(
        until(5, || get(&a.stats.forged_acks) == 3).await,
        "forged = {}",
        get(&a.stats.forged_acks)
    );
    let left = a.outbox_seqs().await;
    assert!(
        left.contains(&1) && left.contains(&2),
        "forged acks delete nothing: {left:?}"
    );
    assert_eq!(get(&a.stats.acked), 0);

    a.engine.ack([1, 2], AckOutcome::Accepted).await;
    a.engine
        .ack([3], AckOutcome::Rejected("replay".into()))
        .await;
    assert!(
        until(5, || get(&a.stats.acked) == 2
            && get(&a.stats.rejected) == 1)
        .await
    );
    let left = a.outbox_seqs().await;
    assert!(
        !left.contains(&1) && !left.contains(&2) && !left.contains(&3),
        "{left:?}"
    );
    assert_eq!(a.dead_letters().await, 1);
    a.stop().await;
}

#[tokio::test]
async fn full_outbox_raises_alarm_keeps_rows_and_resumes_without_gaps() {
    let a = start(broker_addr(), 50, 600_000, 3).await;
    assert!(
        until(10, || a.stats.outbox_full.load(Ordering::SeqCst)).await,
        "alarm raised"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&a.stats.readings),
        3,
        "no reading stored past the bound"
    );
    assert!(get(&a.stats.skipped_full) > 0);
    assert_eq!(a.outbox_seqs().await, vec![1, 2, 3], "old rows kept");

    a.engine.ack([1, 2, 3], AckOutcome::Accepted).await;
    assert!(
        until(5, || !a.stats.outbox_full.load(Ordering::SeqCst)).await,
        "alarm clears"
    );
    assert!(
        until(5, || a.engine.seen().contains(&4)).await,
        "polling resumes at seq 4: {:?}",
        a.engine.seen()
    );
    a.stop().await;
}

#[tokio::test]
async fn device_failures_never_become_values() {
    let faults = Arc::new(SimFaults::default());
    faults.meter_failed.store(true, Ordering::SeqCst);
    let a = start_with(broker_addr(), 50, 600_000, 1000, faults.clone()).await;
    // The grid meter fails: polls fail, nothing is stored or published.
    assert!(until(5, || get(&a.stats.poll_failures) >= 5).await);
    assert_eq!(get(&a.stats.readings), 0);
    assert!(a.outbox_seqs().await.is_empty());

    // The meter is back: numbering starts at 1, no gap for the failed polls.
    faults.meter_failed.store(false, Ordering::SeqCst);
    assert!(until(5, || a.engine.seen().len() >= 2).await);
    assert_eq!(&a.engine.seen()[..2], &[1, 2]);
    let good = a
        .engine
        .last
        .lock()
        .expect("lock")
        .clone()
        .expect("reading");
    assert_eq!(good.status, DeviceStatus::Ok);

    // The inverter fails: readings go on, marked stale, with the last good
    // PV values (never zeros).
    faults.inverter_failed.store(true, Ordering::SeqCst);
    assert!(
        until(5, || a
            .engine
            .last
            .lock()
            .expect("lock")
            .as_ref()
            .is_some_and(|r| r.status == DeviceStatus::Stale))
        .await
    );
    let stale = a
        .engine
        .last
        .lock()
        .expect("lock")
        .clone()
        .expect("reading");
    assert!(stale.pv_wh.is_some_and(|wh| wh.0 > 0));
    assert!(stale.pv_wh >= good.pv_wh);
    a.stop().await;
}
