//! The engine service: wires the store, registry, intake, scheduler and
//! settler to the MQTT broker and runs them as tokio tasks.
//!
//! Tasks and how they meet:
//!
//! - **event loop**: drives the rumqttc connection; forwards readings and
//!   orders to the intake over a bounded channel (back-pressure reaches the
//!   broker instead of growing memory), keeps live power, (re)subscribes and
//!   announces itself online on every connection. MQTT-level acks are
//!   automatic: durability is the application-level [`protocol::Ack`], which
//!   the sender's outbox waits for, so a message lost in a crash is sent
//!   again.
//! - **verifier** and **intake**, a two-stage pipeline: the verifier
//!   collects a batch (up to `batch_max` messages or `batch_real_ms`),
//!   checks the registry version and verifies the signatures; meanwhile the
//!   intake validates and stores the previous batch in one transaction, then
//!   sends one signed ack per household. It never waits on the event loop
//!   (acks use `try_publish`), so the two cannot deadlock.
//! - **scheduler**: wakes on the cron schedule (and at least twice a second
//!   of real time, so clock jumps and manual clocks are noticed), clears
//!   every interval whose gate has closed and publishes the signed result,
//!   retained.
//! - **settler**: records each cleared interval's batch, in order, once the
//!   interval has ended, the grace period has passed and the readings are in
//!   (or the maximum wait is over).
//!
//! - **metrics** (when `metrics_addr` is set): serves the Prometheus text
//!   exposition of [`Counters`] on `GET /metrics`.
//!
//! The registry is reloaded from the database whenever its version changed
//! (checked before every intake batch and every settlement round), so that
//! keys approved, rotated or revoked by `voltshare clearing …` from another
//! process take effect without a restart.
//!
//! The gate lock is held by the intake while it checks and commits a batch
//! and by the scheduler while it clears: an order is either committed before
//! its interval is cleared or refused as `gate_closed`, never lost between.

use crate::book;
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::intake::{Inbound, Intake, IntakeRules, Screened, gate_closure};
use crate::metrics::Counters;
use crate::operator::{EnrolmentSummary, OpFuture, Operator, OperatorError};
use crate::params::{ParamSet, ParamsCell};
use crate::read::ReadModel;
use crate::read_model::{EngineReadModel, LiveBoard};
use crate::registry::Registry;
use crate::schedule;
use crate::settlement::{self, Ledger, LedgerError, Settlement, SettlementError, SettlementRecord};
use crate::settler::{self, SettleCtx};
use crate::store;
use cron::Schedule;
use ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::{
    Ack, ClearingResult, Clock, Domain, IntervalId, LivePower, NodeStatus, SignedEnvelope, Topic,
    UnixMs, canonical_json, decode_payload,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use sqlx::SqlitePool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

/// The node name under which the engine announces its status.
pub const NODE: &str = "engine";
/// Longest real-time nap of the scheduler and settler between checks.
const MAX_NAP: Duration = Duration::from_millis(500);
/// Items per ack message, so that an ack stays far below the payload cap.
const ACK_CHUNK: usize = 100;
/// Largest live-power payload looked at.
const MAX_LIVE_BYTES: usize = 4096;
/// How long start-up waits for the broker to accept the subscriptions.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

struct Shared {
    cfg: EngineConfig,
    pool: SqlitePool,
    key: SigningKey,
    clock: Arc<dyn Clock>,
    /// Swapped whole when the stored registry changes; readers clone the
    /// `Arc` and never hold the lock across an await.
    registry: std::sync::RwLock<Arc<Registry>>,
    counters: Arc<Counters>,
    live: Arc<LiveBoard>,
    /// The auction parameters and gate lead in force per interval (the
    /// configured set plus the operator's changes, [`crate::params`]).
    params: ParamsCell,
    client: AsyncClient,
    schedule: Option<Schedule>,
    /// The settlement backend: the embedded ledger, or the EVM backend
    /// (which records into the same hash chain first).
    backend: Arc<dyn Settlement>,
    gate_lock: Mutex<()>,
    settle_lock: Mutex<()>,
    stopping: AtomicBool,
}

/// A running engine.
pub struct EngineHandle {
    shared: Arc<Shared>,
    metrics_addr: Option<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    event_loop: JoinHandle<()>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("grid", &self.shared.cfg.grid)
            .finish_non_exhaustive()
    }
}

/// Starts the engine: opens and migrates the store, syncs the registry,
/// connects to the broker (waiting until the subscriptions are in place) and
/// spawns the tasks. Missed gate closures since the last cleared interval
/// are caught up right away.
pub async fn start_engine(
    cfg: EngineConfig,
    engine_key: SigningKey,
    clock: Arc<dyn Clock>,
) -> Result<EngineHandle, EngineError> {
    cfg.validate()?;
    // TLS files and credentials are read before the database is opened.
    let security = cfg.load_broker_security()?;
    let schedule = schedule::schedule_for(cfg.cron.as_deref(), cfg.interval_ms, cfg.gate_lead_ms)
        .map_err(|e| crate::config::ConfigError::Invalid {
        key: "cron",
        why: e.to_string(),
    })?;
    let pool = store::open(&cfg.db_path).await?;
    let now = clock.now();
    let registry = Arc::new(Registry::sync(&pool, &cfg.households, now).await?);
    // Bind before anything connects, so that a taken port fails start-up.
    let metrics_listener = match cfg.metrics_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            crate::config::ConfigError::Invalid {
                key: "metrics_addr",
                why: format!("cannot listen on {addr}: {e}"),
            }
        })?),
        None => None,
    };
    settlement::register_engine_key(&pool, &engine_key.verifying_key(), now).await?;
    let params = ParamsCell::new(
        crate::params::load(
            &pool,
            ParamSet {
                params: cfg.params.clone(),
                gate_lead_ms: cfg.gate_lead_ms,
            },
        )
        .await?,
    );
    let counters = Arc::new(Counters::default());
    counters.load_rejects(store::load_rejects(&pool).await?);
    counters.load_sender_rejects(store::load_sender_rejects(&pool).await?);

    let status_topic = Topic::Status {
        grid: cfg.grid.clone(),
        node: NODE.to_owned(),
    }
    .to_string();
    let offline = canonical_json(&NodeStatus {
        node: NODE.to_owned(),
        online: false,
    });
    let mut opts = MqttOptions::new(
        cfg.client_id.clone(),
        cfg.broker_host.clone(),
        cfg.broker_port,
    );
    opts.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(false)
        // Larger than any valid envelope (results are the largest), so that
        // an oversized message is counted and refused here instead of
        // breaking the connection.
        .set_max_packet_size(protocol::MAX_PACKET_BYTES, protocol::MAX_PACKET_BYTES)
        .set_last_will(LastWill::new(status_topic, offline, QoS::AtLeastOnce, true));
    security.apply(&mut opts);
    let (client, event_loop) = AsyncClient::new(opts, 10_000);

    let ledger = Ledger::new(pool.clone(), engine_key.clone());
    let backend: Arc<dyn Settlement> = match &cfg.evm {
        None => Arc::new(ledger),
        Some(evm) => {
            let mut accounts = std::collections::BTreeMap::new();
            for e in &cfg.households {
                if let Some(a) = &e.settlement_address {
                    accounts.insert(
                        e.household.clone(),
                        crate::evm::parse_address(a, "households.settlement_address")
                            .map_err(|e| SettlementError::Backend(e.to_string()))?,
                    );
                }
            }
            // Fee bumping waits in real time, whatever the engine's clock.
            let real: Arc<dyn Clock> = Arc::new(protocol::SystemClock);
            Arc::new(
                crate::evm::EvmSettlement::new(
                    pool.clone(),
                    ledger,
                    cfg.grid.clone(),
                    evm.clone(),
                    accounts,
                    real,
                )
                .map_err(SettlementError::from)?,
            )
        }
    };
    let shared = Arc::new(Shared {
        backend,
        cfg,
        pool,
        key: engine_key,
        clock,
        registry: std::sync::RwLock::new(registry),
        counters,
        live: Arc::new(LiveBoard::default()),
        params,
        client,
        schedule,
        gate_lock: Mutex::new(()),
        settle_lock: Mutex::new(()),
        stopping: AtomicBool::new(false),
    });
    let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(8192);
    // Err holds why the broker has not accepted us yet (the last connection
    // error), for the start-up error message.
    let (ready_tx, mut ready_rx) = watch::channel(Err::<(), _>(String::new()));
    let event_loop = tokio::spawn(run_event_loop(
        shared.clone(),
        event_loop,
        inbound_tx,
        ready_tx,
    ));
    let connected = matches!(
        tokio::time::timeout(CONNECT_WAIT, ready_rx.wait_for(|r| r.is_ok())).await,
        Ok(Ok(_))
    );
    if !connected {
        shared.stopping.store(true, Ordering::SeqCst);
        let _ = shared.client.try_disconnect();
        event_loop.abort();
        let last = match &*ready_rx.borrow() {
            Err(e) if !e.is_empty() => format!(": last error: {e}"),
            _ => String::new(),
        };
        return Err(EngineError::Broker(format!(
            "no subscription acknowledged by {}:{} within {CONNECT_WAIT:?}{last}",
            shared.cfg.broker_host, shared.cfg.broker_port
        )));
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut metrics_addr = None;
    let mut workers = Vec::new();
    if let Some(listener) = metrics_listener {
        metrics_addr = listener.local_addr().ok();
        workers.push(tokio::spawn(crate::metrics::serve(
            listener,
            shared.counters.clone(),
            shutdown_rx.clone(),
        )));
    }
    let (verified_tx, verified_rx) = mpsc::channel(1);
    workers.extend([
        tokio::spawn(run_verifier(
            shared.clone(),
            inbound_rx,
            verified_tx,
            shutdown_rx.clone(),
        )),
        tokio::spawn(run_intake(shared.clone(), verified_rx)),
        tokio::spawn(run_scheduler(shared.clone(), shutdown_rx.clone())),
        tokio::spawn(run_settler(shared.clone(), shutdown_rx)),
    ]);
    info!(grid = %shared.cfg.grid, households = shared.cfg.households.len(), "clearing engine started");
    Ok(EngineHandle {
        shared,
        metrics_addr,
        shutdown,
        workers,
        event_loop,
    })
}

impl EngineHandle {
    /// The read model for the dashboard.
    pub fn read_model(&self) -> Arc<dyn ReadModel> {
        Arc::new(
            EngineReadModel::new(
                self.shared.pool.clone(),
                self.shared.counters.clone(),
                self.shared.live.clone(),
            )
            .with_params(self.shared.params.clone()),
        )
    }

    /// The operator's write access for the dashboard: enrolment approval
    /// and parameter changes, on this running engine.
    pub fn operator(&self) -> Arc<dyn Operator> {
        Arc::new(EngineOperator {
            shared: self.shared.clone(),
        })
    }

    /// The parameters in force per interval.
    pub fn params(&self) -> Arc<crate::params::ParamSchedule> {
        self.shared.params.get()
    }

    /// The database pool (for tests and inspection).
    pub fn pool(&self) -> SqlitePool {
        self.shared.pool.clone()
    }

    /// The engine's counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// The enrolment registry as the engine currently uses it.
    pub fn registry(&self) -> Arc<Registry> {
        self.shared.registry()
    }

    /// Reloads the registry now if the stored one changed (the engine also
    /// does this by itself before every intake batch).
    pub async fn refresh_registry(&self) -> Result<Arc<Registry>, EngineError> {
        refresh_registry(&self.shared).await
    }

    /// Where `/metrics` is served (the bound address, useful with port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The engine's public key (verifies acks, results and batches).
    pub fn engine_key(&self) -> VerifyingKey {
        self.shared.key.verifying_key()
    }

    /// Clears an interval whose gate has closed, or returns its stored
    /// result. The scheduler does this by itself; this is for operators and
    /// tests.
    pub async fn clear_interval(
        &self,
        interval: IntervalId,
    ) -> Result<ClearingResult, EngineError> {
        clear_one(&self.shared, interval).await
    }

    /// Settles a cleared interval now (no grace, no waiting for readings), or
    /// returns its recorded batch.
    pub async fn settle_interval(
        &self,
        interval: IntervalId,
    ) -> Result<SettlementRecord, EngineError> {
        let _chain = self.shared.settle_lock.lock().await;
        settle_one(&self.shared, interval).await
    }

    /// The settlement backend (`ledger` or `evm`).
    pub fn settlement(&self) -> Arc<dyn Settlement> {
        self.shared.backend.clone()
    }

    /// Stops the engine abruptly, as a crash would: the tasks are aborted
    /// wherever they are, nothing is flushed or announced. For fault tests:
    /// whatever a restart needs must already be in the database.
    ///
    /// Returns once every task has ended (an aborted task runs on to its
    /// next await point, possibly on another worker thread): from then on
    /// the engine takes nothing more from the broker, so a test can say
    /// which messages the dead engine could have held.
    pub async fn kill(self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.abort();
        }
        self.event_loop.abort();
        for task in self.workers.into_iter().chain([self.event_loop]) {
            // Cancelled, or finished just before the abort: either way gone.
            let _ = task.await;
        }
    }

    /// Checks the whole settlement chain.
    pub async fn verify_ledger(&self) -> Result<usize, LedgerError> {
        settlement::verify_ledger(&self.shared.pool).await
    }

    /// Stops the tasks (the intake finishes its batch), announces the engine
    /// offline, disconnects and closes the database.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        let _ = self.shutdown.send(true);
        for w in self.workers {
            if let Err(error) = w.await {
                warn!(%error, "engine task ended abnormally");
            }
        }
        let s = &self.shared;
        s.stopping.store(true, Ordering::SeqCst);
        let topic = Topic::Status {
            grid: s.cfg.grid.clone(),
            node: NODE.to_owned(),
        }
        .to_string();
        let offline = canonical_json(&NodeStatus {
            node: NODE.to_owned(),
            online: false,
        });
        let published = s.client.try_publish(topic, QoS::AtLeastOnce, true, offline);
        let disconnected = s.client.try_disconnect();
        if published.is_err() || disconnected.is_err() {
            warn!("could not queue offline status and disconnect");
        }
        let mut event_loop = self.event_loop;
        if tokio::time::timeout(Duration::from_secs(5), &mut event_loop)
            .await
            .is_err()
        {
            warn!("broker connection did not close in time");
            event_loop.abort();
        }
        s.pool.close().await;
        info!(grid = %s.cfg.grid, "clearing engine stopped");
        Ok(())
    }
}

impl Shared {
    fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reloads the registry if its stored version moved. One indexed read when
/// nothing changed, so it is cheap enough to run before every batch.
async fn refresh_registry(s: &Shared) -> Result<Arc<Registry>, EngineError> {
    let current = s.registry();
    let stored = crate::registry::stored_version(&s.pool).await?;
    if stored == current.version() {
        return Ok(current);
    }
    let fresh = Arc::new(Registry::load(&s.pool).await?);
    info!(
        from = current.version(),
        to = fresh.version(),
        "registry changed; reloaded"
    );
    *s.registry.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
    Ok(fresh)
}

async fn clear_one(s: &Shared, interval: IntervalId) -> Result<ClearingResult, EngineError> {
    if !interval.0.is_multiple_of(s.cfg.interval_ms) {
        return Err(EngineError::BadInterval(interval.0));
    }
    let cleared = {
        let _gate = s.gate_lock.lock().await;
        let now = s.clock.now();
        let schedule = s.params.get();
        let set = schedule.for_interval(interval);
        if now < gate_closure(interval, set.gate_lead_ms) {
            return Err(EngineError::GateOpen(interval.0));
        }
        let sw = protocol::Stopwatch::start();
        let cleared =
            book::clear_interval(&s.pool, &s.cfg.grid, &set.params, &s.key, interval, now).await?;
        if cleared.fresh {
            s.counters.clearing_duration.observe(sw.elapsed());
        }
        cleared
    };
    if cleared.fresh {
        Counters::bump(&s.counters.intervals_cleared, 1);
        let topic = Topic::Results {
            grid: s.cfg.grid.clone(),
            interval,
        }
        .to_string();
        if let Err(error) = s
            .client
            .publish(topic, QoS::AtLeastOnce, true, cleared.envelope.clone())
            .await
        {
            // Stored and signed; a later subscriber can get it from the store.
            warn!(interval = interval.0, %error, "could not publish result");
        }
    }
    Ok(cleared.result)
}

async fn settle_one(s: &Shared, interval: IntervalId) -> Result<SettlementRecord, EngineError> {
    let registry = s.registry();
    let ctx = SettleCtx {
        pool: &s.pool,
        registry: &registry,
        grid: &s.cfg.grid,
        interval_ms: s.cfg.interval_ms,
    };
    let existed = settlement::record(&s.pool, interval).await?.is_some();
    // Settled with the tariffs the interval was cleared with (they are in
    // its signed result), whatever the operator changed since.
    let params = match book::stored_result(&s.pool, interval).await? {
        Some(c) => c.result.params,
        None => s.params.get().for_interval(interval).params.clone(),
    };
    let rec =
        settler::settle_interval(ctx, &params, s.backend.as_ref(), interval, s.clock.now()).await?;
    if !existed {
        Counters::bump(&s.counters.intervals_settled, 1);
    }
    Ok(rec)
}

async fn run_event_loop(
    s: Arc<Shared>,
    mut event_loop: EventLoop,
    inbound: mpsc::Sender<Inbound>,
    ready: watch::Sender<Result<(), String>>,
) {
    let grid = s.cfg.grid.clone();
    let filters = [
        (Topic::filter(&grid, "readings"), QoS::AtLeastOnce),
        (Topic::filter(&grid, "orders"), QoS::AtLeastOnce),
        (Topic::filter(&grid, "live"), QoS::AtMostOnce),
    ];
    let status_topic = Topic::Status {
        grid: grid.clone(),
        node: NODE.to_owned(),
    }
    .to_string();
    let online = canonical_json(&NodeStatus {
        node: NODE.to_owned(),
        online: true,
    });
    let live_prefix = format!("voltshare/{grid}/live/");
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(grid = %grid, "connected to broker");
                let subs = filters
                    .iter()
                    .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), *q));
                if let Err(error) = s.client.try_subscribe_many(subs) {
                    error!(%error, "could not subscribe");
                }
                if let Err(error) = s.client.try_publish(
                    status_topic.clone(),
                    QoS::AtLeastOnce,
                    true,
                    online.clone(),
                ) {
                    warn!(%error, "could not announce online status");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.send(Ok(()));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic.starts_with(&live_prefix) {
                    on_live(&s, &p.topic, &p.payload);
                    continue;
                }
                Counters::bump(&s.counters.received, 1);
                if inbound
                    .send(Inbound {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                    })
                    .await
                    .is_err()
                {
                    // The intake has stopped (shutting down); the sender's
                    // outbox will deliver again.
                    debug!("intake closed; message left to redelivery");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) if s.stopping.load(Ordering::SeqCst) => break,
            Ok(_) => {}
            Err(error) => {
                if s.stopping.load(Ordering::SeqCst) {
                    break;
                }
                warn!(%error, "broker connection error; reconnecting");
                // Before the first subscription: keep the reason for start-up.
                ready.send_if_modified(|r| match r {
                    Err(last) => {
                        *last = error.to_string();
                        true
                    }
                    Ok(()) => false,
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn on_live(s: &Shared, topic: &str, payload: &[u8]) {
    if payload.len() > MAX_LIVE_BYTES {
        return;
    }
    let Ok(Topic::Live { meter, .. }) = Topic::parse(topic) else {
        return;
    };
    let Ok(p) = decode_payload::<LivePower>(payload) else {
        return;
    };
    // Unsigned and for display only, but still refuse data that claims a
    // meter of another household or another topic.
    if p.meter == meter && s.registry().household_of(&meter) == Some(&p.household) {
        s.live.update(&p);
    }
}

/// A screened and verified batch on its way to the intake, with its size.
type Verified = (Screened, usize);

/// The first half of the intake pipeline: collects a batch, checks the
/// registry version, then screens and verifies it (on the blocking pool,
/// across the cores) while the intake task stores the previous one. The
/// channel to the intake holds one batch, so at most two are in flight.
async fn run_verifier(
    s: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    verified: mpsc::Sender<Verified>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = s.cfg.batch_max;
    let wait = Duration::from_millis(s.cfg.batch_real_ms);
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        let mut batch = Vec::with_capacity(max.min(1024));
        batch.push(first);
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => tokio::select! {
                    _ = &mut deadline => break,
                    m = rx.recv() => match m { Some(m) => batch.push(m), None => break },
                },
            }
        }
        s.counters.set_queue_depth(rx.len());
        if let Some(v) = screen_batch(&s, batch).await
            && verified.send(v).await.is_err()
        {
            return;
        }
    }
    rx.close();
    // Whatever was already handed over is processed rather than dropped.
    let mut rest = Vec::new();
    while let Ok(m) = rx.try_recv() {
        rest.push(m);
    }
    if !rest.is_empty()
        && let Some(v) = screen_batch(&s, rest).await
    {
        let _ = verified.send(v).await;
    }
}

async fn screen_batch(s: &Shared, batch: Vec<Inbound>) -> Option<Verified> {
    let n = batch.len();
    match refresh_registry(s).await {
        Ok(reg) => Some((Intake::screen_and_verify(reg, batch).await, n)),
        Err(error) => {
            // Going on with a registry that may miss a revocation is not an
            // option: leave the batch to redelivery.
            error!(messages = n, %error, "could not check the registry; batch not processed");
            None
        }
    }
}

/// The second half of the pipeline: validates and stores each verified
/// batch under the gate lock, then acknowledges. Ends when the verifier
/// does (after its last batch).
async fn run_intake(s: Arc<Shared>, mut verified: mpsc::Receiver<Verified>) {
    let mut lead = s.cfg.gate_lead_ms;
    let mut intake = Intake::new(intake_rules(&s, lead), s.registry(), s.pool.clone());
    while let Some((screened, n)) = verified.recv().await {
        process_batch(&s, &mut intake, &mut lead, screened, n).await;
    }
}

fn intake_rules(s: &Shared, gate_lead_ms: u64) -> IntakeRules {
    IntakeRules {
        grid: s.cfg.grid.clone(),
        interval_ms: s.cfg.interval_ms,
        gate_lead_ms,
        timestamp_window_ms: s.cfg.timestamp_window_ms,
        max_reading_age_ms: s.cfg.max_reading_age_ms,
        max_orders_per_interval: s.cfg.max_orders_per_interval,
        max_order_wh: s.cfg.max_order_wh,
        order_horizon_intervals: s.cfg.order_horizon_intervals,
    }
}

/// After an operator changed the gate lead, the intake's lead follows
/// [`crate::params::ParamSchedule::intake_lead`]; the intake is rebuilt with
/// it (its caches refill from the store). Nothing to do, and no query, while
/// every set has the same lead.
async fn follow_gate_lead(s: &Shared, intake: &mut Intake, lead: &mut u64) {
    let schedule = s.params.get();
    let same = |l: u64| l == *lead;
    if same(schedule.base().gate_lead_ms)
        && schedule.changes().iter().all(|c| same(c.new.gate_lead_ms))
    {
        // Every set has the intake's lead: nothing can change it.
        return;
    }
    let first = match book::last_cleared(&s.pool).await {
        Ok(last) => IntervalId(last.map_or(0, |l| l.0.saturating_add(s.cfg.interval_ms))),
        Err(error) => {
            warn!(%error, "could not read the last cleared interval; gate lead kept");
            return;
        }
    };
    let want = schedule.intake_lead(first);
    if want != *lead {
        info!(from = *lead, to = want, "intake gate lead changed");
        *lead = want;
        *intake = Intake::new(intake_rules(s, want), s.registry(), s.pool.clone());
    }
}

async fn process_batch(
    s: &Shared,
    intake: &mut Intake,
    lead: &mut u64,
    screened: Screened,
    n: usize,
) {
    let sw = protocol::Stopwatch::start();
    let out = {
        let _gate = s.gate_lock.lock().await;
        follow_gate_lead(s, intake, lead).await;
        let now = s.clock.now();
        match intake.apply(screened, now).await {
            Ok(out) => out,
            Err(error) => {
                error!(messages = n, %error, "intake batch failed; nothing stored, nothing acknowledged");
                return;
            }
        }
    };
    let c = &s.counters;
    c.batch_duration.observe(sw.elapsed());
    c.last_batch
        .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    c.add_rejects(&out.rejects);
    c.add_sender_rejects(&out.sender_rejects);
    Counters::bump(
        &c.readings_accepted,
        u64::try_from(out.readings).unwrap_or(0),
    );
    Counters::bump(&c.orders_accepted, u64::try_from(out.orders).unwrap_or(0));
    Counters::bump(&c.duplicates, out.duplicates);
    Counters::bump(&c.batches, 1);
    for p in &out.live {
        s.live.update(p);
    }
    for (household, items) in out.acks {
        let topic = Topic::Acks {
            grid: s.cfg.grid.clone(),
            household: household.clone(),
        }
        .to_string();
        for chunk in items.chunks(ACK_CHUNK) {
            let ack = Ack {
                grid: s.cfg.grid.clone(),
                household: household.clone(),
                items: chunk.to_vec(),
            };
            let env = match SignedEnvelope::sign_json(Domain::Ack, &s.key, &ack) {
                Ok(e) => e,
                Err(error) => {
                    error!(%household, %error, "could not sign ack");
                    continue;
                }
            };
            match s
                .client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, env.encode())
            {
                Ok(()) => Counters::bump(&c.acks_sent, 1),
                Err(error) => {
                    // The sender's outbox resends; the redelivery is acked as
                    // a duplicate.
                    Counters::bump(&c.acks_dropped, 1);
                    warn!(%household, %error, "ack dropped: client queue full");
                }
            }
        }
    }
    debug!(
        messages = n,
        readings = out.readings,
        orders = out.orders,
        rejects = out.rejects.len(),
        "batch processed"
    );
}

async fn run_scheduler(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(error) = clear_due(&s).await {
            error!(%error, "clearing failed; retrying at the next wake");
        }
        let now = s.clock.now();
        let wake = schedule::next_wake(
            s.schedule.as_ref(),
            now,
            s.cfg.interval_ms,
            s.params.get().latest().gate_lead_ms,
        );
        let nap = s
            .clock
            .real_duration(wake.0.saturating_sub(now.0))
            .min(MAX_NAP);
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

async fn clear_due(s: &Shared) -> Result<(), EngineError> {
    let last = book::last_cleared(&s.pool).await?;
    let now = s.clock.now();
    // Candidates under the largest lead still ahead; each is then due only
    // once its own gate (with the lead in force for it) has closed, and
    // intervals are cleared in order.
    let params = s.params.get();
    let first = IntervalId(last.map_or(0, |l| l.0.saturating_add(s.cfg.interval_ms)));
    let mut due = schedule::due_intervals(
        last,
        now,
        s.cfg.interval_ms,
        params.intake_lead(first),
        s.cfg.max_catch_up_intervals,
    );
    if let Some(open) = due
        .iter()
        .position(|i| now < gate_closure(*i, params.for_interval(*i).gate_lead_ms))
    {
        due.truncate(open);
    }
    if let (Some(last), Some(first)) = (last, due.first())
        && first.0 > last.0.saturating_add(s.cfg.interval_ms)
    {
        warn!(
            last_cleared = last.0,
            resume = first.0,
            "missed intervals beyond the catch-up bound are not cleared"
        );
    }
    for interval in due {
        clear_one(s, interval).await?;
    }
    Ok(())
}

async fn run_settler(s: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(error) = settle_due(&s).await {
            error!(%error, "settlement failed; retrying");
        }
        // Carry recorded batches forward (a chain backend); an unreachable
        // node only delays this, never the auctions or the records.
        if let Err(error) = s.backend.drive().await {
            warn!(%error, backend = s.backend.name(), "settlement backend round failed; retrying");
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(MAX_NAP) => {}
        }
    }
}

async fn settle_due(s: &Shared) -> Result<(), EngineError> {
    let _chain = s.settle_lock.lock().await;
    let registry = refresh_registry(s).await?;
    let ctx = SettleCtx {
        pool: &s.pool,
        registry: &registry,
        grid: &s.cfg.grid,
        interval_ms: s.cfg.interval_ms,
    };
    let unsettled = settler::unsettled(&s.pool, 16).await?;
    // Bounded by the query's limit: enough to see a backlog building.
    s.counters.unsettled_intervals.store(
        u64::try_from(unsettled.len()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    for interval in unsettled {
        let now: UnixMs = s.clock.now();
        let due = interval
            .end(s.cfg.interval_ms)
            .0
            .saturating_add(s.cfg.settle_grace_ms);
        if now.0 < due {
            break;
        }
        let waited_out = now.0 >= due.saturating_add(s.cfg.settle_max_wait_ms);
        if !waited_out && !settler::ready(ctx, interval).await? {
            debug!(
                interval = interval.0,
                "waiting for readings before settling"
            );
            break;
        }
        settle_one(s, interval).await?;
    }
    Ok(())
}

/// The engine's side of [`Operator`].
struct EngineOperator {
    shared: Arc<Shared>,
}

impl Operator for EngineOperator {
    fn check_enrolment(&self, request_file: &str) -> Result<EnrolmentSummary, OperatorError> {
        Ok(crate::enrol::verify_request(request_file, Some(&self.shared.cfg.grid))?.into())
    }

    fn approve_enrolment<'a>(&'a self, request_file: &'a str) -> OpFuture<'a, EnrolmentSummary> {
        Box::pin(async move {
            let s = &self.shared;
            // The same path as `voltshare clearing approve`: verified again
            // here, whatever was checked when the request was filed.
            let req = crate::enrol::verify_request(request_file, Some(&s.cfg.grid))?;
            crate::enrol::approve(&s.pool, &req, s.clock.now()).await?;
            refresh_registry(s)
                .await
                .map_err(|e| OperatorError::Storage(e.to_string()))?;
            info!(household = %req.request.household, key = %req.key_id.0, "enrolment approved from the dashboard");
            Ok(req.into())
        })
    }

    fn change_params<'a>(
        &'a self,
        update: crate::read::ParamSetRow,
        by: &'a str,
    ) -> OpFuture<'a, crate::read::ParamChangeRow> {
        Box::pin(async move {
            let s = &self.shared;
            let new = update.validate(s.cfg.interval_ms)?;
            let storage = |e: crate::error::StoreError| OperatorError::Storage(e.to_string());
            // Under the gate lock no interval closes or clears while the
            // first interval of the change is chosen and the change swapped in.
            let _gate = s.gate_lock.lock().await;
            let last = book::last_cleared(&s.pool).await.map_err(storage)?;
            let now = s.clock.now();
            let schedule = s.params.get();
            let first = IntervalId(last.map_or(0, |l| l.0.saturating_add(s.cfg.interval_ms)));
            let from = crate::params::effective_from(
                now,
                s.cfg.interval_ms,
                schedule.intake_lead(first),
                new.gate_lead_ms,
                last,
            );
            let change = crate::params::record(&s.pool, &s.params, from, new, by, now)
                .await
                .map_err(storage)?;
            info!(by, effective_from = from.0, "auction parameters changed");
            Ok((&change).into())
        })
    }
}
