//! Readings survive a broker outage: 20 meter agents poll their simulated
//! devices at 1 Hz and publish to a private Mosquitto process, which the test
//! kills (SIGKILL, no persistence: everything in flight is lost) for a
//! stretch and then starts again on the same port. A stand-in engine accepts
//! a reading only as the next in its meter's sequence, acknowledges with a
//! signed ack, and answers repeats with `Duplicate`. At the end every
//! reading each agent stored has been accepted exactly once, in order, and
//! every outbox is empty.
//!
//! The default outage is 6 s (≥ 5 polls per meter stored while the broker is
//! down); `VOLTSHARE_LONG=1` makes it 60 s.

use ed25519_dalek::SigningKey;
use meter_agent::outbox::Outbox;
use meter_agent::{AgentConfig, AgentStats, SimHousehold, run_agent, spawn_simulator};
use protocol::{
    Ack, AckItem, AckKind, AckOutcome, Clock, Domain, GridId, HouseholdId, MeterId, Reading,
    SignedEnvelope, SystemClock, Topic, canonical_json, decode_payload,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const METERS: usize = 20;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A private Mosquitto on `port`, started and killed by the test.
struct Broker {
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("write conf");
        let mut b = Broker {
            port,
            conf,
            child: None,
        };
        b.restart();
        b
    }
    fn restart(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is required: run scripts/setup-test-tools");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto did not start on port {}", self.port);
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Per meter: accepted sequence numbers in acceptance order, and how many
/// publishes arrived out of sequence (ahead of a gap) or repeated.
#[derive(Debug, Default, Clone)]
struct Ledger {
    accepted: Vec<u64>,
    repeats: u64,
    ahead: u64,
}

/// The stand-in clearing engine.
fn spawn_engine(
    port: u16,
    grid: GridId,
    keys: BTreeMap<String, ed25519_dalek::VerifyingKey>,
    engine_key: SigningKey,
    ledgers: Arc<Mutex<BTreeMap<String, Ledger>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut opts = MqttOptions::new(format!("engine-{grid}"), "127.0.0.1", port);
        opts.set_clean_session(true);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(opts, 1000);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // A restarted broker without persistence forgot us.
                    let c = client.clone();
                    let filter = Topic::filter(&grid, "readings");
                    tokio::spawn(async move {
                        let _ = c.subscribe(filter, QoS::AtLeastOnce).await;
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(env) = SignedEnvelope::decode(&p.payload) else {
                        continue;
                    };
                    let Ok(r) = decode_payload::<Reading>(&env.payload) else {
                        continue;
                    };
                    let Some(vk) = keys.get(r.meter.as_str()) else {
                        continue;
                    };
                    if env.verify(Domain::Reading, vk).is_err() {
                        continue;
                    }
                    let outcome = {
                        let mut l = ledgers.lock().expect("lock");
                        let led = l.entry(r.meter.as_str().to_owned()).or_default();
                        let next = led.accepted.last().copied().unwrap_or(0) + 1;
                        if r.seq == next {
                            led.accepted.push(r.seq);
                            Some(AckOutcome::Accepted)
                        } else if r.seq < next {
                            led.repeats += 1;
                            Some(AckOutcome::Duplicate)
                        } else {
                            // A gap: wait for the agent's in-order resend.
                            led.ahead += 1;
                            None
                        }
                    };
                    let Some(outcome) = outcome else { continue };
                    let ack = Ack {
                        grid: r.grid.clone(),
                        household: r.household.clone(),
                        items: vec![AckItem {
                            kind: AckKind::Reading,
                            meter: Some(r.meter.clone()),
                            seq: r.seq,
                            outcome,
                        }],
                    };
                    let Ok(env) =
                        SignedEnvelope::sign(Domain::Ack, &engine_key, canonical_json(&ack))
                    else {
                        continue;
                    };
                    let topic = Topic::Acks {
                        grid: r.grid.clone(),
                        household: r.household.clone(),
                    }
                    .to_string();
                    let c = client.clone();
                    tokio::spawn(async move {
                        let _ = c
                            .publish(topic, QoS::AtLeastOnce, false, env.encode())
                            .await;
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_meters_survive_a_broker_outage_exactly_once_in_order() {
    let long = std::env::var("VOLTSHARE_LONG").is_ok_and(|v| v == "1");
    let outage = Duration::from_secs(if long { 60 } else { 6 });
    let dir = std::env::temp_dir().join(format!(
        "vs-outage-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mut broker = Broker::start(&dir, port);

    let grid = GridId::new(format!("out{:08x}", rand::random::<u32>())).expect("grid");
    let engine_key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut keys = BTreeMap::new();
    let mut agents = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sims = Vec::new();
    let mut cfgs = Vec::new();
    for i in 0..METERS {
        let (addr, sim) = spawn_simulator(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SimHousehold::from_seed(i as u64),
            clock.clone(),
        )
        .await
        .expect("simulator");
        sims.push(sim);
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let meter = MeterId::new(format!("m{i}")).expect("meter");
        keys.insert(meter.as_str().to_owned(), key.verifying_key());
        let cfg = AgentConfig {
            grid: grid.clone(),
            household: HouseholdId::new(format!("h{i}")).expect("household"),
            meter,
            modbus: addr,
            inverter_unit: 1,
            meter_unit: 2,
            poll_every: Duration::from_secs(1),
            outbox_path: dir.join(format!("outbox{i}.db")),
            outbox_max: 10_000,
            broker_host: "127.0.0.1".into(),
            broker_port: port,
            broker_security: Default::default(),
            engine_key: engine_key.verifying_key(),
            resend_after: Duration::from_secs(3),
        };
        cfgs.push(cfg.clone());
        let stats = Arc::new(AgentStats::default());
        let (latest, _) = watch::channel(None);
        let task = tokio::spawn(run_agent(
            cfg,
            key,
            clock.clone(),
            stop_rx.clone(),
            latest,
            stats.clone(),
        ));
        agents.push((stats, task));
    }
    let ledgers: Arc<Mutex<BTreeMap<String, Ledger>>> = Arc::default();
    let engine = spawn_engine(port, grid.clone(), keys, engine_key, ledgers.clone());

    let total = |l: &BTreeMap<String, Ledger>| l.values().map(|x| x.accepted.len()).sum::<usize>();
    // Everyone publishes before the outage.
    for _ in 0..100 {
        if ledgers.lock().expect("lock").len() == METERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ledgers.lock().expect("lock").len(),
        METERS,
        "all meters delivered before the outage"
    );

    let stored_before: u64 = agents
        .iter()
        .map(|(s, _)| AgentStats::get(&s.readings))
        .sum();
    broker.kill();
    tokio::time::sleep(outage).await;
    let stored_during: u64 = agents
        .iter()
        .map(|(s, _)| AgentStats::get(&s.readings))
        .sum::<u64>()
        - stored_before;
    assert!(
        stored_during >= (METERS as u64) * (outage.as_secs() - 1),
        "polling went on during the outage: {stored_during} readings stored"
    );
    let accepted_at_restart = total(&ledgers.lock().expect("lock"));
    broker.restart();

    // Wait until every reading stored so far is accepted and every outbox is
    // drained, then stop the agents.
    let mut drained = false;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stored: u64 = agents
            .iter()
            .map(|(s, _)| AgentStats::get(&s.readings))
            .sum();
        let acked: u64 = agents.iter().map(|(s, _)| AgentStats::get(&s.acked)).sum();
        if acked >= stored && total(&ledgers.lock().expect("lock")) as u64 >= stored {
            drained = true;
            break;
        }
    }
    let _ = stop_tx.send(true);
    for (_, t) in agents.drain(..) {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("agent stops")
            .expect("agent task")
            .expect("agent ok");
    }
    engine.abort();
    assert!(drained, "outboxes drained after the broker came back");
    let l = ledgers.lock().expect("lock").clone();
    assert!(
        total(&l) > accepted_at_restart,
        "readings of the outage were delivered after it"
    );
    for cfg in &cfgs {
        let ob = Outbox::open(&cfg.outbox_path, cfg.outbox_max)
            .await
            .expect("outbox");
        let last = ob.last_seq(&cfg.meter).await.expect("last seq");
        let left = ob.pending(&cfg.meter, 0, 10_000).await.expect("rows");
        ob.close().await;
        let led = l.get(cfg.meter.as_str()).expect("ledger");
        let want: Vec<u64> = (1..=last).collect();
        // Exactly once, in order: accepted is 1..=last with no repeat and no
        // gap (the engine accepts only the next number).
        assert_eq!(led.accepted, want, "meter {}", cfg.meter);
        assert!(
            left.is_empty(),
            "meter {}: {} rows left in the outbox",
            cfg.meter,
            left.len()
        );
    }
    let repeats: u64 = l.values().map(|x| x.repeats).sum();
    let ahead: u64 = l.values().map(|x| x.ahead).sum();
    eprintln!(
        "outage {outage:?}: {} readings accepted exactly once; {stored_during} stored during the outage; {repeats} repeats answered Duplicate; {ahead} out-of-order publishes held back",
        total(&l)
    );
    drop(sims);
    let _ = std::fs::remove_dir_all(&dir);
}
