//! `voltshare bench ingest`: signed readings from many simulated meters
//! through a real MQTT broker into the clearing engine, timed end to end,
//! next to the same broker's raw QoS 1 rate with the same payloads.
//!
//! Both runs use the same publishers (several MQTT connections, each owning
//! a share of the meters so that every meter's readings stay in sequence
//! order) and the same flow control on the broker hop: at most `window`
//! messages are between the publishers and the subscribing client (published
//! but not yet received by it). The window is needed because a broker drops
//! QoS 1 messages for a subscriber whose queue is full (Mosquitto:
//! `max_queued_messages`, 1000 by default, and in practice it drops a little
//! below that). Beyond the broker the engine's own bounded queue pushes back:
//! when it is full the engine stops reading, the broker's queue fills and the
//! window holds the publishers. A run ends when every reading is stored.
//!
//! - raw: a plain rumqttc subscriber counts QoS 1 messages on a throwaway
//!   topic tree;
//! - engine: an in-process engine (real SQLite file in a temporary
//!   directory, every meter enrolled) verifies, validates, stores and acks;
//!   a reading counts once its batch has committed.
//!
//! All readings are signed before the clock starts: signing is the meters'
//! work, not the engine's.
//!
//! Next to the rates, `cpu` says where the time went in each run: CPU
//! microseconds per message of the benchmark process (publishers plus the
//! subscriber, or plus the engine) and of the broker when it is a process
//! of its own, and how many cores both kept busy on average (percent of
//! one core). With 2 cores shared by publishers, broker and consumer, the
//! raw run is not CPU-bound while the engine run is: its rate is about the
//! cores' time divided by the CPU per reading, so the engine's own CPU per
//! reading (signature check, decoding, rules, storage, acks) is what
//! bounds the ratio.

use clearing::{EngineConfig, Enrolment};
use ed25519_dalek::SigningKey;
use protocol::{
    Clock, DeviceStatus, Domain, GridId, HouseholdId, MeterId, Reading, SignedEnvelope, Stopwatch,
    SystemClock, Topic, UnixMs, WattHours, Watts,
};
use rand::RngExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What to run.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub readings: usize,
    pub meters: usize,
    pub broker: (String, u16),
    pub publishers: usize,
    pub window: usize,
    pub batch_max: usize,
    /// The broker's process, when it runs beside the benchmark (the private
    /// Mosquitto), so that its CPU time can be reported; `None` for a remote
    /// broker, and for the embedded one (its CPU time is the benchmark
    /// process's own).
    pub broker_pid: Option<u32>,
}

/// Why the benchmark could not finish.
#[derive(Debug, thiserror::Error)]
pub enum IngestBenchError {
    #[error("engine: {0}")]
    Engine(#[from] clearing::EngineError),
    #[error("broker: {0}")]
    Broker(String),
    #[error("{what}: only {done} of {want} arrived; stalled for {stall_ms} ms")]
    Stalled {
        what: &'static str,
        done: u64,
        want: u64,
        stall_ms: u64,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// One meter: its household, key and pre-signed readings.
struct Meter {
    household: HouseholdId,
    meter: MeterId,
    key: SigningKey,
}

/// A private Mosquitto for the benchmark (`--broker mosquitto`): loopback
/// only, anonymous, no persistence, on a free port, with the per-client
/// queue raised. Not a deployment configuration (that is
/// `deploy/mosquitto/voltshare.conf`, TLS only).
///
/// Why the queue: Mosquitto 2.0 keeps at most `max_inflight_messages` (20)
/// unacknowledged QoS 1 messages on the way to a subscriber and queues at
/// most `max_queued_messages` (1 000) more; beyond that it *drops* QoS 1
/// messages for that subscriber ("Outgoing messages are being dropped for
/// client …" in its log), online or not. A subscriber that stops reading for
/// a moment (the engine while its intake queue is full) hits that bound as
/// soon as the publishers are further ahead. The product does not rely on
/// the broker here (an agent's outbox republishes whatever was not
/// acknowledged), but a benchmark that measures the rate of what arrives must
/// not count losses, so its broker keeps what it is given.
pub struct PrivateMosquitto {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub port: u16,
}

impl PrivateMosquitto {
    /// Queue bound of the private broker (per client, beyond the in-flight
    /// window).
    pub const MAX_QUEUED: u32 = 1_000_000;
    /// In-flight window of the private broker (per client).
    pub const MAX_INFLIGHT: u32 = 1_000;

    /// Starts the benchmark's broker ([`Self::MAX_INFLIGHT`],
    /// [`Self::MAX_QUEUED`]).
    pub fn start() -> Result<PrivateMosquitto, IngestBenchError> {
        Self::start_with(Self::MAX_INFLIGHT, Self::MAX_QUEUED)
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the broker logged so far (drops show up here).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Starts `mosquitto -c CONF` with the given per-client limits and waits
    /// until it accepts connections.
    pub fn start_with(
        max_inflight: u32,
        max_queued: u32,
    ) -> Result<PrivateMosquitto, IngestBenchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())?
            .port();
        let tag: u32 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("voltshare-bench-mosquitto-{tag:08x}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "# voltshare bench ingest: a private broker, loopback only\n\
                 listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 max_inflight_messages {}\n\
                 max_queued_messages {}\n\
                 log_dest stderr\n",
                max_inflight, max_queued,
            ),
        )?;
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("mosquitto");
        // The log goes to stderr, into a file we own: started as root,
        // Mosquitto drops to its own user and could not open one here.
        let log = std::fs::File::create(dir.join("mosquitto.log"))?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| IngestBenchError::Broker(format!("cannot start {bin}: {e}")))?;
        let mut me = PrivateMosquitto { child, dir, port };
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(me);
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(IngestBenchError::Broker(format!(
                    "private mosquitto exited with {status}; see {}",
                    me.dir.join("mosquitto.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(IngestBenchError::Broker(format!(
            "private mosquitto did not listen on 127.0.0.1:{port} within 5 s"
        )))
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs both measurements and returns the report.
pub async fn run(o: &IngestOptions) -> Result<serde_json::Value, IngestBenchError> {
    let tag: u32 = rand::rng().random();
    let grid = GridId::new(format!("bench-{tag:08x}"))
        .map_err(|e| IngestBenchError::Broker(e.to_string()))?;
    let raw_grid = GridId::new(format!("raw-{tag:08x}"))
        .map_err(|e| IngestBenchError::Broker(e.to_string()))?;
    let meters: Vec<Meter> = (0..o.meters.max(1))
        .map(|i| {
            let household = HouseholdId::new(format!("h{i:04}"))
                .map_err(|e| IngestBenchError::Broker(e.to_string()))?;
            let meter = MeterId::new(format!("h{i:04}-grid"))
                .map_err(|e| IngestBenchError::Broker(e.to_string()))?;
            Ok(Meter {
                household,
                meter,
                key: crate::keys::generate(),
            })
        })
        .collect::<Result<_, IngestBenchError>>()?;
    let now = SystemClock.now();
    let signed = sign_all(&grid, &meters, o.readings, now);
    let payload_bytes = signed.first().map_or(0, |(_, p)| p.len());

    // Raw broker rate: same payloads, same publishers, a plain subscriber.
    let raw_topics: Vec<(String, Arc<Vec<u8>>)> = signed
        .iter()
        .map(|(m, p)| {
            let topic = Topic::Readings {
                grid: raw_grid.clone(),
                meter: meters[*m].meter.clone(),
            }
            .to_string();
            (topic, p.clone())
        })
        .collect();
    let (raw, raw_cpu) = raw_rate(o, &raw_grid, &raw_topics).await?;

    // The engine.
    let dir = std::env::temp_dir().join(format!("voltshare-ingest-{tag:08x}"));
    std::fs::create_dir_all(&dir)?;
    let result = engine_rate(o, &grid, &meters, &signed, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (engine_ms, stored, engine_counts, engine_cpu) = result?;

    let per_sec = rate(o.readings, engine_ms);
    let raw_per_sec = rate(o.readings, raw);
    Ok(serde_json::json!({
        "readings": o.readings,
        "stored": stored,
        "meters": o.meters,
        "publishers": o.publishers,
        "window": o.window,
        "batch_max": o.batch_max,
        "payload_bytes": payload_bytes,
        "broker": format!("{}:{}", o.broker.0, o.broker.1),
        "millis": u64::try_from(engine_ms.as_millis()).unwrap_or(u64::MAX),
        "per_sec": per_sec,
        "broker_qos1_millis": u64::try_from(raw.as_millis()).unwrap_or(u64::MAX),
        "broker_qos1_per_sec": raw_per_sec,
        "ratio_permille": per_sec.saturating_mul(1000).checked_div(raw_per_sec).unwrap_or(0),
        "engine": engine_counts,
        "cpu": {
            "cores": std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            "broker_qos1": raw_cpu.report(o.readings),
            "engine": engine_cpu.report(o.readings),
        },
    }))
}

/// CPU time (user + system, all threads) of a process so far, from
/// `/proc/PID/stat` (Linux; `None` elsewhere or when unreadable).
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let text = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: count fields
    // from the last ')'. The field after it is stat's 3rd (state); utime
    // and stime are the 14th and 15th.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 per second.
    Some(Duration::from_millis(
        utime.saturating_add(stime).saturating_mul(10),
    ))
}

/// CPU time of the benchmark process and of the broker over one timed run.
struct CpuSpan {
    wall: Stopwatch,
    process: Option<Duration>,
    broker: Option<Duration>,
    broker_pid: Option<u32>,
}

/// What a [`CpuSpan`] measured.
struct CpuUse {
    wall: Duration,
    process: Option<Duration>,
    broker: Option<Duration>,
}

impl CpuSpan {
    fn start(broker_pid: Option<u32>) -> CpuSpan {
        CpuSpan {
            wall: Stopwatch::start(),
            process: cpu_time(None),
            broker: broker_pid.and_then(|p| cpu_time(Some(p))),
            broker_pid,
        }
    }

    fn stop(self) -> CpuUse {
        let since =
            |start: Option<Duration>, now: Option<Duration>| Some(now?.saturating_sub(start?));
        CpuUse {
            wall: self.wall.elapsed(),
            process: since(self.process, cpu_time(None)),
            broker: since(self.broker, self.broker_pid.and_then(|p| cpu_time(Some(p)))),
        }
    }
}

impl CpuUse {
    /// Per message: microseconds of CPU in the benchmark process
    /// (publishers and the subscriber or the engine) and in the broker, and
    /// how many cores were busy with both on average (percent of one core).
    fn report(&self, messages: usize) -> serde_json::Value {
        let n = u64::try_from(messages.max(1)).unwrap_or(u64::MAX);
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let per_msg = |d: Option<Duration>| d.map(|d| micros(d) / n);
        let busy = self
            .process
            .map(|p| p + self.broker.unwrap_or_default())
            .map(|cpu| micros(cpu).saturating_mul(100) / micros(self.wall).max(1));
        serde_json::json!({
            "process_us_per_msg": per_msg(self.process),
            "broker_us_per_msg": per_msg(self.broker),
            "busy_core_percent": busy,
        })
    }
}

fn rate(n: usize, d: Duration) -> u64 {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    u64::try_from(n)
        .unwrap_or(u64::MAX)
        .saturating_mul(1_000_000)
        / us
}

/// Signs `n` readings, round-robin over the meters (so every meter's
/// sequence numbers rise in publishing order), on every core.
fn sign_all(grid: &GridId, meters: &[Meter], n: usize, now: UnixMs) -> Vec<(usize, Arc<Vec<u8>>)> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let per = n.div_ceil(cores).max(1);
    let mut out: Vec<(usize, Arc<Vec<u8>>)> = Vec::with_capacity(n);
    std::thread::scope(|scope| {
        let tasks: Vec<_> = (0..n)
            .step_by(per)
            .map(|start| {
                let end = (start + per).min(n);
                scope.spawn(move || {
                    (start..end)
                        .map(|k| {
                            let m = k % meters.len();
                            let seq = u64::try_from(k / meters.len() + 1).unwrap_or(u64::MAX);
                            let me = &meters[m];
                            let r = Reading {
                                grid: grid.clone(),
                                household: me.household.clone(),
                                meter: me.meter.clone(),
                                seq,
                                ts: now,
                                import_wh: WattHours(1_000 + seq * 3),
                                export_wh: WattHours(500 + seq),
                                pv_wh: Some(WattHours(2_000 + seq * 4)),
                                grid_power_w: Watts(-1_200),
                                pv_power_w: Some(Watts(3_400)),
                                status: DeviceStatus::Ok,
                            };
                            // Our own message types always serialize.
                            let env = SignedEnvelope::sign_json(Domain::Reading, &me.key, &r)
                                .map(|e| e.encode())
                                .unwrap_or_default();
                            (m, Arc::new(env))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in tasks {
            if let Ok(v) = t.join() {
                out.extend(v);
            }
        }
    });
    out
}

fn mqtt_options(id: String, broker: &(String, u16)) -> MqttOptions {
    let mut opts = MqttOptions::new(id, broker.0.clone(), broker.1);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_inflight(500)
        .set_request_channel_capacity(20_000);
    opts
}

/// Connects a publisher and drives its event loop in a task.
async fn publisher(
    id: String,
    broker: &(String, u16),
) -> Result<(AsyncClient, tokio::task::JoinHandle<()>), IngestBenchError> {
    let (client, mut el) = AsyncClient::new(mqtt_options(id, broker), 20_000);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| IngestBenchError::Broker("publisher did not connect within 10 s".into()))?;
    Ok((client, task))
}

/// Publishes every message through `o.publishers` connections, keeping at
/// most `o.window` beyond `done`, and returns the time until `done` reaches
/// the count.
async fn publish_all(
    o: &IngestOptions,
    what: &'static str,
    msgs: &[(String, Arc<Vec<u8>>)],
    arrived: impl Fn() -> u64 + Send + Sync + 'static,
    done: impl Fn() -> u64 + Send + Sync + 'static,
) -> Result<Duration, IngestBenchError> {
    let n = msgs.len();
    let p = o.publishers.max(1);
    let mut clients = Vec::with_capacity(p);
    for i in 0..p {
        let tag: u32 = rand::rng().random();
        clients.push(publisher(format!("bench-pub-{i}-{tag:08x}"), &o.broker).await?);
    }
    // A meter's messages always go through the same connection, in order.
    let mut shares: Vec<Vec<(String, Arc<Vec<u8>>)>> = vec![Vec::new(); p];
    for (k, (topic, payload)) in msgs.iter().enumerate() {
        let meter_slot = k % o.meters.max(1);
        shares[meter_slot % p].push((topic.clone(), payload.clone()));
    }
    let arrived = Arc::new(arrived);
    let published = Arc::new(AtomicU64::new(0));
    let window = u64::try_from(o.window.max(1)).unwrap_or(u64::MAX);
    let sw = Stopwatch::start();
    let mut tasks = Vec::new();
    for ((client, _), share) in clients.iter().zip(shares) {
        let client = client.clone();
        let arrived = arrived.clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            for (topic, payload) in share {
                while published.load(Ordering::Relaxed) >= arrived().saturating_add(window) {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                published.fetch_add(1, Ordering::Relaxed);
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload.as_slice())
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            true
        }));
    }
    let want = u64::try_from(n).unwrap_or(u64::MAX);
    let mut last = 0;
    let mut still = Stopwatch::start();
    loop {
        let d = done();
        if d >= want {
            break;
        }
        if d != last {
            last = d;
            still = Stopwatch::start();
        } else if still.elapsed() > Duration::from_secs(10) {
            for t in &tasks {
                t.abort();
            }
            return Err(IngestBenchError::Stalled {
                what,
                done: d,
                want,
                stall_ms: u64::try_from(still.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = sw.elapsed();
    for t in tasks {
        if !matches!(t.await, Ok(true)) {
            return Err(IngestBenchError::Broker(format!(
                "{what}: a publisher failed"
            )));
        }
    }
    for (client, task) in clients {
        let _ = client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        task.abort();
    }
    Ok(elapsed)
}

async fn raw_rate(
    o: &IngestOptions,
    grid: &GridId,
    msgs: &[(String, Arc<Vec<u8>>)],
) -> Result<(Duration, CpuUse), IngestBenchError> {
    let tag: u32 = rand::rng().random();
    let (client, mut el) = AsyncClient::new(
        mqtt_options(format!("bench-sub-{tag:08x}"), &o.broker),
        20_000,
    );
    let count = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1);
    let filter = Topic::filter(grid, "readings");
    let c = client.clone();
    let counted = count.clone();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
        .await
        .map_err(|_| IngestBenchError::Broker("subscriber did not subscribe within 10 s".into()))?;
    let c2 = count.clone();
    let c3 = count.clone();
    let cpu = CpuSpan::start(o.broker_pid);
    let result = publish_all(
        o,
        "raw QoS 1",
        msgs,
        move || c2.load(Ordering::Relaxed),
        move || c3.load(Ordering::Relaxed),
    )
    .await;
    let cpu = cpu.stop();
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    task.abort();
    Ok((result?, cpu))
}

async fn engine_rate(
    o: &IngestOptions,
    grid: &GridId,
    meters: &[Meter],
    signed: &[(usize, Arc<Vec<u8>>)],
    dir: &std::path::Path,
) -> Result<(Duration, u64, serde_json::Value, CpuUse), IngestBenchError> {
    let mut cfg = EngineConfig::new(grid.clone(), dir.join("engine.db"));
    cfg.broker_host = o.broker.0.clone();
    cfg.broker_port = o.broker.1;
    cfg.client_id = format!("bench-engine-{grid}");
    cfg.batch_max = o.batch_max.max(1);
    cfg.households = meters
        .iter()
        .map(|m| {
            Enrolment::new(
                m.household.clone(),
                &m.key.verifying_key(),
                vec![m.meter.clone()],
            )
        })
        .collect();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine = clearing::start_engine(cfg, crate::keys::generate(), clock).await?;
    let msgs: Vec<(String, Arc<Vec<u8>>)> = signed
        .iter()
        .map(|(m, p)| {
            (
                Topic::Readings {
                    grid: grid.clone(),
                    meter: meters[*m].meter.clone(),
                }
                .to_string(),
                p.clone(),
            )
        })
        .collect();
    let counters = engine.counters();
    let c = counters.clone();
    // Called per message by the publishers: two atomic loads, no lock. A
    // reject would stall the run, and the error names the count.
    let done =
        move || c.readings_accepted.load(Ordering::Relaxed) + c.duplicates.load(Ordering::Relaxed);
    let r = counters.clone();
    let arrived = move || r.received.load(Ordering::Relaxed);
    let cpu = CpuSpan::start(o.broker_pid);
    let result = publish_all(o, "engine", &msgs, arrived, done).await;
    let cpu = cpu.stop();
    let stored = counters.readings_accepted.load(Ordering::Relaxed);
    let rejects = counters.rejects();
    if !rejects.is_empty() {
        tracing::warn!(?rejects, "readings were refused during the benchmark");
    }
    // How the engine cut the work: batches (so readings per batch) and
    // signed acks (so readings per ack).
    let counts = serde_json::json!({
        "batches": counters.batches.load(Ordering::Relaxed),
        "acks_sent": counters.acks_sent.load(Ordering::Relaxed),
        "acks_dropped": counters.acks_dropped.load(Ordering::Relaxed),
        "duplicates": counters.duplicates.load(Ordering::Relaxed),
    });
    let _ = engine.shutdown().await;
    Ok((result?, stored, counts, cpu))
}
