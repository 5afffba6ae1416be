//! The meter agent task: poll → sign → store → publish → delete on ack.
//!
//! Delivery guarantee: a reading is in the outbox (fsynced) before it is
//! published, and leaves it only on a verified `Accepted`/`Duplicate` ack
//! from the clearing engine (or moves to the dead letters on `Rejected`).
//! Publishing is at-least-once; the engine deduplicates by (meter, seq).
//!
//! Ordering: the outbox, not the MQTT client, is the source of truth for what
//! to send. rumqttc's own replay of unacknowledged publishes after a
//! reconnect is dropped on every ConnAck, and the agent republishes all
//! un-acknowledged rows from the outbox in sequence order instead; the
//! request channel is a rendezvous (capacity 0), so nothing queues inside
//! the client while it is disconnected and overtakes the replay. Rows still
//! un-acknowledged a full `resend_after` period after they were sent are
//! republished, again in order.
//!
//! Flow control: at most [`PUBLISH_WINDOW`] rows past the oldest
//! un-acknowledged one are out at a time; each ack message opens the window
//! again and the next rows follow at once. A backlog therefore waits in the
//! outbox, not in the broker's queue for an absent engine, and draining it
//! is paced by the engine's acks. Without the window, every resend period of
//! an engine outage republished the whole backlog (50 meters at 1 Hz: tens
//! of thousands of duplicates per period), which the engine, once back, had
//! to look up one by one before it reached anything new. Resends that see no
//! ack at all since the previous one (an engine that is away, not a lost
//! message) back off, doubling the period up to [`RESEND_BACKOFF_MAX`]
//! periods; any ack resets that.
//!
//! Disk: a reading and the counter guard's baseline are one commit (one
//! fsync); the rows an ack message acknowledges are deleted in one
//! transaction without an fsync (see [`crate::outbox`]).
//!
//! Threads of control: the MQTT event loop runs in its own task (it must be
//! polled continuously) and forwards only what the agent needs (connected,
//! disconnected, incoming ack messages) over an unbounded channel, so that the
//! agent awaiting a publish can never deadlock with the event loop waiting to
//! hand over an event.

use crate::capability::{GridMeter, PvInverter, PvValues};
use crate::counters::{Baseline, CounterGuard, GuardLimits};
use crate::devices::{DeviceConfig, DeviceKind, DeviceSetup, Devices, Slot};
use crate::link::Transport;
use crate::outbox::{Outbox, OutboxError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::{
    Ack, AckKind, AckOutcome, BrokerSecurity, BrokerSecurityError, Clock, DeviceStatus, Domain,
    GridId, HouseholdId, LivePower, MeterId, Reading, SignedEnvelope, Topic, canonical_json,
    decode_payload,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

/// Bound on every Modbus request (and the TCP connect).
const MODBUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on handing one publish to the MQTT event loop.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows fetched from the outbox per batch while (re)publishing.
const PUBLISH_BATCH: u32 = 200;
/// Most rows out at once, counted from the oldest un-acknowledged one.
/// Large enough that one meter draining a backlog fills the engine's
/// batches (128 rows per ack round trip of a few milliseconds), small enough
/// that 50 meters' windows together stay within one intake batch.
pub const PUBLISH_WINDOW: u64 = 128;
/// Longest wait between two resends that saw no ack, in `resend_after`
/// periods.
pub const RESEND_BACKOFF_MAX: u32 = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest Modbus reconnect backoff, in poll periods.
const MODBUS_BACKOFF_MAX_TICKS: u32 = 16;

/// Configuration of one meter agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub grid: GridId,
    pub household: HouseholdId,
    pub meter: MeterId,
    /// Modbus TCP address of the devices (a gateway or the simulator).
    pub modbus: SocketAddr,
    /// Unit id of the PV inverter; 0 (the Modbus broadcast id, never a
    /// device) means the household has no inverter.
    pub inverter_unit: u8,
    /// Unit id of the grid meter.
    pub meter_unit: u8,
    /// Poll period, real time.
    pub poll_every: Duration,
    pub outbox_path: PathBuf,
    /// Most rows the outbox may hold; at the bound polling stops and an alarm
    /// is raised.
    pub outbox_max: u64,
    pub broker_host: String,
    pub broker_port: u16,
    /// TLS and credentials for the broker (default: plain TCP, anonymous).
    /// The files are read and checked when the agent starts, before the
    /// outbox is opened; see [`MqttSecurity::load`].
    pub broker_security: BrokerSecurity,
    /// The clearing engine's key: acks must verify against it.
    pub engine_key: VerifyingKey,
    /// Un-acknowledged readings are republished after this long (real time).
    pub resend_after: Duration,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("broker security: {0}")]
    BrokerSecurity(#[from] BrokerSecurityError),
}

pub use mqtt_security::MqttSecurity;

/// Counters and alarms of a running agent, shared with the caller (the
/// controller and the dashboard read them).
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Readings stored in the outbox (signed, with a sequence number).
    pub readings: AtomicU64,
    /// Polls that produced no reading (device or transport failure).
    pub poll_failures: AtomicU64,
    /// Modbus (re)connections with successful discovery.
    pub modbus_connects: AtomicU64,
    /// Reading publishes handed to the MQTT client (first sends and resends).
    pub published: AtomicU64,
    /// Of those, resends (after a reconnect or `resend_after`).
    pub resent: AtomicU64,
    /// Rows deleted on `Accepted`/`Duplicate`.
    pub acked: AtomicU64,
    /// Rows moved to the dead letters on `Rejected`.
    pub rejected: AtomicU64,
    /// Ack messages ignored because they did not verify against the engine key
    /// (or were not even a well-formed envelope).
    pub forged_acks: AtomicU64,
    /// MQTT ConnAcks received.
    pub mqtt_connects: AtomicU64,
    /// Whether the MQTT connection is up.
    pub mqtt_connected: AtomicBool,
    /// Alarm: the outbox is at its bound and polling has stopped.
    pub outbox_full: AtomicBool,
    /// Polls skipped because the outbox was full.
    pub skipped_full: AtomicU64,
    /// Database errors while running (the agent retries on the next tick).
    pub db_errors: AtomicU64,
    /// Polls whose counters went backwards or jumped impossibly: kept in the
    /// outbox's quarantine table, never published.
    pub quarantined: AtomicU64,
    /// Why the last MQTT connection attempt failed or the connection broke
    /// (a refused certificate, an unknown CA, a refused login...).
    pub last_mqtt_error: std::sync::Mutex<Option<String>>,
}

impl AgentStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// A plain copy for display and tests.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    /// Why the last MQTT connection attempt failed, if one did.
    pub fn last_mqtt_error(&self) -> Option<String> {
        self.last_mqtt_error.lock().map_or(None, |e| e.clone())
    }
}

/// What the MQTT driver task tells the agent.
#[derive(Debug)]
enum MqttEvent {
    Connected { session_present: bool },
    Disconnected(String),
    Message { topic: String, payload: Vec<u8> },
}

/// Drives the rumqttc event loop, reconnecting with backoff.
async fn drive_mqtt(mut el: EventLoop, tx: mpsc::UnboundedSender<MqttEvent>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = BACKOFF_MIN;
                // The agent republishes every un-acknowledged row from the
                // outbox in sequence order; rumqttc's replay of its own
                // in-flight publishes would overtake that and reorder.
                el.pending
                    .retain(|r| !matches!(r, rumqttc::Request::Publish(_)));
                if tx
                    .send(MqttEvent::Connected {
                        session_present: ack.session_present,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx
                    .send(MqttEvent::Message {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if tx.send(MqttEvent::Disconnected(e.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The running agent's state.
struct Agent {
    cfg: AgentConfig,
    key: SigningKey,
    clock: Arc<dyn Clock>,
    outbox: Outbox,
    stats: Arc<AgentStats>,
    latest: watch::Sender<Option<Reading>>,
    mqtt: AsyncClient,
    readings_topic: String,
    live_topic: String,
    acks_topic: String,
    /// The grid meter and PV inverter (links reconnect by themselves).
    devices: Devices,
    /// Poll ticks to let pass before the next discovery attempt.
    modbus_skip: u32,
    /// The next backoff, in poll ticks (doubles up to `MODBUS_BACKOFF_MAX_TICKS`).
    modbus_backoff: u32,
    /// Last good inverter values, reported as `Stale` when a read fails.
    last_inverter: Option<PvValues>,
    /// Counters never go backwards.
    guard: CounterGuard,
    connected: bool,
    /// Next sequence number not yet published on this connection.
    cursor: u64,
    /// The cursor at the previous resend tick: rows below it have been out
    /// for at least one `resend_after` period.
    resend_mark: u64,
    /// The last sequence number stored (rows up to it may wait to be sent).
    issued: u64,
    /// A lower bound of the oldest un-acknowledged seq (it only grows), so
    /// that the window is checked against the database only near its edge.
    oldest_hint: u64,
    /// An ack was applied since the last resend.
    acked_since_resend: bool,
    /// Resend ticks still to let pass (backoff while no ack comes).
    resend_wait: u32,
    /// The current resend period, in `resend_after` periods.
    resend_backoff: u32,
    /// The cursor right after the oldest row was last sent: an ack for a
    /// row at or above it, while the oldest is still waiting, means the
    /// oldest was lost on the way (the engine takes a meter's readings in
    /// the order they were published) and it is sent again at once.
    gap_guard: u64,
}

impl Agent {
    /// Discovers whichever configured device is not discovered yet; `false`
    /// while in discovery backoff or when discovery failed.
    async fn ensure_devices(&mut self) -> bool {
        let need = self.devices.grid.device.is_none()
            || self.devices.pv.as_ref().is_some_and(|p| p.device.is_none());
        if !need {
            return true;
        }
        // Backoff counted in poll ticks: no hidden clock is needed.
        if self.modbus_skip > 0 {
            self.modbus_skip -= 1;
            return false;
        }
        let mut slots: Vec<&mut Slot> = vec![&mut self.devices.grid];
        if let Some(p) = self.devices.pv.as_mut() {
            slots.push(p);
        }
        for slot in slots {
            if slot.device.is_some() {
                continue;
            }
            if let Err(error) = slot.get().await {
                warn!(meter = %self.cfg.meter, %error, unit = slot.config.unit,
                    transport = %slot.config.transport, retry_after_polls = self.modbus_backoff,
                    "device discovery failed");
                self.modbus_skip = self.modbus_backoff;
                self.modbus_backoff = (self.modbus_backoff * 2).min(MODBUS_BACKOFF_MAX_TICKS);
                return false;
            }
            info!(meter = %self.cfg.meter, unit = slot.config.unit, transport = %slot.config.transport,
                device = ?slot.device, "modbus device ready");
        }
        AgentStats::inc(&self.stats.modbus_connects);
        self.modbus_backoff = 1;
        true
    }

    /// One poll: read the devices, and if the meter answered, sign and store
    /// a reading. Returns the stored reading's seq and wire bytes.
    async fn poll(&mut self) -> Option<(u64, Vec<u8>)> {
        match self.outbox.is_full().await {
            Ok(true) => {
                AgentStats::inc(&self.stats.skipped_full);
                if !self.stats.outbox_full.swap(true, Ordering::SeqCst) {
                    warn!(meter = %self.cfg.meter, max = self.outbox.max_rows(),
                        "ALARM: outbox full; polling stopped until the engine acknowledges readings");
                }
                return None;
            }
            Ok(false) => {
                if self.stats.outbox_full.swap(false, Ordering::SeqCst) {
                    info!(meter = %self.cfg.meter, "outbox below its bound again; polling resumes");
                }
            }
            Err(error) => {
                AgentStats::inc(&self.stats.db_errors);
                error!(%error, "outbox unreadable; skipping poll");
                return None;
            }
        }
        if !self.ensure_devices().await {
            AgentStats::inc(&self.stats.poll_failures);
            return None;
        }
        let meter = match self.devices.grid.device.as_ref() {
            Some(d) => d.read_grid().await,
            None => return None,
        };
        let inverter = match self.devices.pv.as_ref().and_then(|p| p.device.as_ref()) {
            Some(d) => Some(d.read_pv().await),
            None => None,
        };
        let meter = match meter {
            Ok(m) => m,
            Err(error) => {
                // Without the grid meter there is nothing to report: counters
                // are never invented.
                AgentStats::inc(&self.stats.poll_failures);
                // The link reconnects by itself at the next request.
                warn!(meter = %self.cfg.meter, %error, "meter read failed; no reading");
                return None;
            }
        };
        let (pv, status) = match inverter {
            None => (None, DeviceStatus::Ok),
            Some(Ok(v)) => {
                self.last_inverter = Some(v);
                (
                    Some(v),
                    if v.fault {
                        DeviceStatus::Error
                    } else {
                        DeviceStatus::Ok
                    },
                )
            }
            Some(Err(error)) => {
                warn!(meter = %self.cfg.meter, %error, "inverter read failed");
                match self.last_inverter {
                    Some(v) => (Some(v), DeviceStatus::Stale),
                    None => {
                        AgentStats::inc(&self.stats.poll_failures);
                        return None;
                    }
                }
            }
        };
        let now = self.clock.now();
        let counters = Baseline {
            at: now,
            import_wh: meter.energy.import_wh.0,
            export_wh: meter.energy.export_wh.0,
            pv_wh: pv.map(|v| v.energy.0),
        };
        if let Err(q) = self.guard.check(counters) {
            AgentStats::inc(&self.stats.quarantined);
            warn!(meter = %self.cfg.meter, reason = %q, "counters implausible; reading quarantined, not published");
            if let Err(error) = self
                .outbox
                .quarantine(&self.cfg.meter, &counters, &q.to_string())
                .await
            {
                AgentStats::inc(&self.stats.db_errors);
                error!(%error, "could not record quarantined reading");
            }
            return None;
        }
        let mut reading = Reading {
            grid: self.cfg.grid.clone(),
            household: self.cfg.household.clone(),
            meter: self.cfg.meter.clone(),
            seq: 0,
            ts: now,
            import_wh: meter.energy.import_wh,
            export_wh: meter.energy.export_wh,
            pv_wh: pv.map(|v| v.energy),
            grid_power_w: meter.power,
            pv_power_w: pv.map(|v| v.power),
            status,
        };
        let key = &self.key;
        let stored = self
            .outbox
            .append_reading(&self.cfg.meter, now, &counters, |seq| {
                reading.seq = seq;
                SignedEnvelope::sign_json(Domain::Reading, key, &reading)
            })
            .await;
        match stored {
            Ok((seq, env)) => {
                debug!(meter = %self.cfg.meter, seq, "reading stored");
                self.issued = self.issued.max(seq);
                AgentStats::inc(&self.stats.readings);
                let live = LivePower {
                    household: reading.household.clone(),
                    meter: reading.meter.clone(),
                    ts: reading.ts,
                    grid_power_w: reading.grid_power_w,
                    pv_power_w: reading.pv_power_w,
                };
                self.latest.send_replace(Some(reading));
                if self.connected {
                    // Live power is for dashboards: best effort, QoS 0.
                    let fut = self.mqtt.publish(
                        &self.live_topic,
                        QoS::AtMostOnce,
                        false,
                        canonical_json(&live),
                    );
                    let _ = tokio::time::timeout(Duration::from_millis(200), fut).await;
                }
                Some((seq, env.encode()))
            }
            Err(OutboxError::Full { .. }) => {
                // Raced to the bound between the check and the insert.
                self.stats.outbox_full.store(true, Ordering::SeqCst);
                None
            }
            Err(error) => {
                AgentStats::inc(&self.stats.db_errors);
                error!(meter = %self.cfg.meter, %error, "could not store reading");
                None
            }
        }
    }

    /// Publishes un-acknowledged rows with `seq >= from`, in order, advancing
    /// the cursor. Stops at the edge of the window ([`PUBLISH_WINDOW`] past
    /// the oldest un-acknowledged row) and at the first publish that the
    /// client does not take.
    async fn publish_from(&mut self, from: u64, resend: bool) {
        let mut next = from;
        loop {
            if !self.window_open(next).await {
                return;
            }
            let rows = match self
                .outbox
                .pending(&self.cfg.meter, next, PUBLISH_BATCH)
                .await
            {
                Ok(rows) => rows,
                Err(error) => {
                    AgentStats::inc(&self.stats.db_errors);
                    error!(%error, "outbox unreadable; publish deferred");
                    return;
                }
            };
            if rows.is_empty() {
                return;
            }
            for row in rows {
                if !self.connected {
                    return;
                }
                if !self.window_open(row.seq).await {
                    // The window is full: the next ack opens it.
                    return;
                }
                let fut =
                    self.mqtt
                        .publish(&self.readings_topic, QoS::AtLeastOnce, false, row.envelope);
                match tokio::time::timeout(PUBLISH_TIMEOUT, fut).await {
                    Ok(Ok(())) => {
                        AgentStats::inc(&self.stats.published);
                        if resend || row.seq < self.cursor {
                            AgentStats::inc(&self.stats.resent);
                        }
                        next = row.seq + 1;
                        self.cursor = self.cursor.max(next);
                    }
                    Ok(Err(error)) => {
                        warn!(%error, seq = row.seq, "mqtt client refused publish");
                        return;
                    }
                    Err(_) => {
                        debug!(
                            seq = row.seq,
                            "mqtt event loop busy or offline; publish deferred"
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Publishes the reading just stored: straight from memory when it is
    /// the next to go and the window is open (no outbox read), otherwise
    /// whatever waits from the cursor on.
    async fn publish_new(&mut self, seq: u64, bytes: Vec<u8>) {
        if seq != self.cursor.max(1) || !self.window_open(seq).await {
            let from = self.cursor;
            self.publish_from(from, false).await;
            return;
        }
        let fut = self
            .mqtt
            .publish(&self.readings_topic, QoS::AtLeastOnce, false, bytes);
        match tokio::time::timeout(PUBLISH_TIMEOUT, fut).await {
            Ok(Ok(())) => {
                AgentStats::inc(&self.stats.published);
                self.cursor = seq + 1;
            }
            Ok(Err(error)) => warn!(%error, seq, "mqtt client refused publish"),
            Err(_) => debug!(seq, "mqtt event loop busy or offline; publish deferred"),
        }
    }

    /// Whether `seq` lies within the window (the database is asked only when
    /// the hint says it might not).
    async fn window_open(&mut self, seq: u64) -> bool {
        if seq < self.oldest_hint.saturating_add(PUBLISH_WINDOW) {
            return true;
        }
        match self.outbox.first_pending(&self.cfg.meter).await {
            // Nothing pending: whatever comes next is the oldest.
            Ok(oldest) => self.oldest_hint = oldest.unwrap_or(seq),
            Err(error) => {
                AgentStats::inc(&self.stats.db_errors);
                error!(%error, "outbox unreadable; publish deferred");
                return false;
            }
        }
        seq < self.oldest_hint.saturating_add(PUBLISH_WINDOW)
    }

    /// Handles an incoming message on the acks topic.
    async fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if topic != self.acks_topic {
            return;
        }
        let env = match SignedEnvelope::decode(payload) {
            Ok(env) => env,
            Err(error) => {
                AgentStats::inc(&self.stats.forged_acks);
                warn!(%error, "malformed ack envelope ignored");
                return;
            }
        };
        if let Err(error) = env.verify(Domain::Ack, &self.cfg.engine_key) {
            AgentStats::inc(&self.stats.forged_acks);
            warn!(%error, key_id = %env.key_id, "ack not signed by the engine; ignored");
            return;
        }
        let ack: Ack = match decode_payload(&env.payload) {
            Ok(a) => a,
            Err(error) => {
                warn!(%error, "signed ack does not decode; ignored");
                return;
            }
        };
        if ack.grid != self.cfg.grid || ack.household != self.cfg.household {
            warn!(grid = %ack.grid, household = %ack.household, "ack for another household; ignored");
            return;
        }
        let now = self.clock.now();
        // Accepted and duplicate rows leave in one transaction.
        let mut done = Vec::with_capacity(ack.items.len());
        for item in ack.items {
            if item.kind != AckKind::Reading
                || item.meter.as_ref().is_some_and(|m| *m != self.cfg.meter)
            {
                continue;
            }
            match &item.outcome {
                AckOutcome::Accepted | AckOutcome::Duplicate => done.push(item.seq),
                AckOutcome::Rejected(reason) => {
                    warn!(meter = %self.cfg.meter, seq = item.seq, %reason, "engine rejected reading; dead-lettered");
                    match self
                        .outbox
                        .reject(&self.cfg.meter, item.seq, reason, now)
                        .await
                    {
                        Ok(crate::outbox::AckApplied::Applied) => {
                            AgentStats::inc(&self.stats.rejected);
                            self.on_progress();
                        }
                        Ok(crate::outbox::AckApplied::Unknown) => {
                            debug!(seq = item.seq, "ack for a row already gone")
                        }
                        Err(error) => {
                            AgentStats::inc(&self.stats.db_errors);
                            error!(%error, seq = item.seq, "could not apply ack");
                        }
                    }
                }
            }
        }
        match self.outbox.ack_many(&self.cfg.meter, &done).await {
            Ok(n) => {
                if n > 0 {
                    self.stats.acked.fetch_add(n, Ordering::Relaxed);
                    self.on_progress();
                }
                if n < done.len() as u64 {
                    debug!(
                        repeated = done.len() as u64 - n,
                        "acks for rows already gone"
                    );
                }
            }
            Err(error) => {
                AgentStats::inc(&self.stats.db_errors);
                error!(%error, rows = done.len(), "could not apply acks");
            }
        }
        // A row below an acknowledged one, sent before it, is still
        // waiting: it was lost (an engine killed after taking it, a broker
        // queue that overflowed). Send again from the oldest now rather than
        // after a resend period, with the window stuck meanwhile.
        let top = done.iter().copied().max().unwrap_or(0);
        if self.connected && top > 0 && top >= self.gap_guard {
            match self.outbox.first_pending(&self.cfg.meter).await {
                Ok(Some(oldest)) if oldest < top => {
                    debug!(
                        oldest,
                        acked = top,
                        "gap below an acknowledged reading; resending"
                    );
                    self.resend_from_oldest().await;
                    return;
                }
                Ok(_) => {}
                Err(error) => {
                    AgentStats::inc(&self.stats.db_errors);
                    error!(%error, "outbox unreadable");
                }
            }
        }
        // The window moved: send what waits behind it.
        if self.connected && self.cursor <= self.issued {
            let from = self.cursor;
            self.publish_from(from, false).await;
        }
    }

    /// Sends every un-acknowledged row again from the oldest (up to the
    /// window), in order.
    async fn resend_from_oldest(&mut self) {
        self.cursor = 0;
        self.publish_from(0, true).await;
        self.gap_guard = self.cursor;
    }

    /// The engine took rows off the outbox: it is there, so resends go back
    /// to their base period.
    fn on_progress(&mut self) {
        self.acked_since_resend = true;
        self.resend_wait = 0;
    }

    /// Every `resend_after`: republishes (from the oldest, in order) when the
    /// oldest un-acknowledged row has been out for a whole period; backs off
    /// while no ack comes at all.
    async fn on_resend_tick(&mut self) {
        if !self.connected {
            return;
        }
        let mark = self.resend_mark;
        if self.resend_wait > 0 {
            self.resend_wait -= 1;
        } else if mark > 0 {
            // Rows below the mark were published at least one period ago.
            let stale = self
                .outbox
                .first_pending(&self.cfg.meter)
                .await
                .ok()
                .flatten();
            if stale.is_some_and(|s| s < mark) {
                self.resend_backoff = if self.acked_since_resend {
                    1
                } else {
                    (self.resend_backoff * 2).min(RESEND_BACKOFF_MAX)
                };
                self.acked_since_resend = false;
                self.resend_wait = self.resend_backoff - 1;
                debug!(
                    below = mark,
                    backoff = self.resend_backoff,
                    "resending un-acknowledged readings"
                );
                self.resend_from_oldest().await;
            }
        }
        self.resend_mark = self.cursor;
    }
}

/// Runs one meter agent until `shutdown` turns true (or its sender is
/// dropped). Every stored reading is also sent to `latest`, for the
/// in-process controller. Returns an error only when the outbox cannot be
/// opened; runtime failures (devices, broker, disk) are logged, counted in
/// `stats`, and retried.
pub async fn run_agent(
    cfg: AgentConfig,
    household_key: SigningKey,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
    latest: watch::Sender<Option<Reading>>,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    let setup = DeviceSetup {
        grid: DeviceConfig {
            transport: Transport::Tcp(cfg.modbus),
            unit: cfg.meter_unit,
            kind: DeviceKind::SunSpec,
        },
        pv: (cfg.inverter_unit != 0).then_some(DeviceConfig {
            transport: Transport::Tcp(cfg.modbus),
            unit: cfg.inverter_unit,
            kind: DeviceKind::SunSpec,
        }),
        timeout: MODBUS_TIMEOUT,
    };
    run_agent_with(
        cfg,
        setup,
        GuardLimits::default(),
        household_key,
        clock,
        shutdown,
        latest,
        stats,
    )
    .await
}

/// [`run_agent`] with any devices (SunSpec or register maps, TCP or RTU)
/// and counter-guard limits; `cfg.modbus` and the unit ids are ignored.
#[allow(clippy::too_many_arguments)]
pub async fn run_agent_with(
    cfg: AgentConfig,
    setup: DeviceSetup,
    limits: GuardLimits,
    household_key: SigningKey,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
    latest: watch::Sender<Option<Reading>>,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    if cfg.poll_every.is_zero() || cfg.resend_after.is_zero() {
        return Err(AgentError::Config(
            "poll_every and resend_after must be positive".into(),
        ));
    }
    if cfg.outbox_max == 0 {
        return Err(AgentError::Config("outbox_max must be at least 1".into()));
    }
    // TLS files and credentials are read before anything else is opened.
    let security = MqttSecurity::load(&cfg.broker_security)?;
    let outbox = Outbox::open(&cfg.outbox_path, cfg.outbox_max).await?;
    let guard = CounterGuard::new(limits, outbox.baseline(&cfg.meter).await?);
    let issued = outbox.last_seq(&cfg.meter).await?;
    let devices = Devices::new(&setup, Arc::clone(&clock));

    // A persistent session (clean_session = false, stable client id): acks
    // the engine sends while this gateway is offline are queued by the broker.
    let client_id = format!("vs-{}-{}", cfg.grid, cfg.meter);
    let mut opts = MqttOptions::new(client_id, cfg.broker_host.clone(), cfg.broker_port);
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(10));
    security.apply(&mut opts);
    let (mqtt, eventloop) = AsyncClient::new(opts, 0);
    let (tx, mut events) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive_mqtt(eventloop, tx));

    let mut agent = Agent {
        readings_topic: Topic::Readings {
            grid: cfg.grid.clone(),
            meter: cfg.meter.clone(),
        }
        .to_string(),
        live_topic: Topic::Live {
            grid: cfg.grid.clone(),
            meter: cfg.meter.clone(),
        }
        .to_string(),
        acks_topic: Topic::Acks {
            grid: cfg.grid.clone(),
            household: cfg.household.clone(),
        }
        .to_string(),
        cfg,
        key: household_key,
        clock,
        outbox,
        stats,
        latest,
        mqtt,
        devices,
        modbus_skip: 0,
        modbus_backoff: 1,
        last_inverter: None,
        guard,
        connected: false,
        cursor: 0,
        resend_mark: 0,
        issued,
        oldest_hint: 0,
        acked_since_resend: true,
        resend_wait: 0,
        resend_backoff: 1,
        gap_guard: 0,
    };

    let mut poll_tick = tokio::time::interval(agent.cfg.poll_every);
    poll_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resend_tick = tokio::time::interval(agent.cfg.resend_after);
    resend_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    resend_tick.reset(); // the first resend is one period away, not now

    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = poll_tick.tick() => {
                if let Some((seq, bytes)) = agent.poll().await && agent.connected {
                    agent.publish_new(seq, bytes).await;
                }
            }
            _ = resend_tick.tick() => agent.on_resend_tick().await,
            ev = events.recv() => match ev {
                Some(MqttEvent::Connected { session_present }) => {
                    info!(meter = %agent.cfg.meter, session_present, "mqtt connected");
                    AgentStats::inc(&agent.stats.mqtt_connects);
                    agent.stats.mqtt_connected.store(true, Ordering::SeqCst);
                    agent.connected = true;
                    // Subscribing again is harmless when the session kept it.
                    let sub = agent.mqtt.subscribe(&agent.acks_topic, QoS::AtLeastOnce);
                    if !matches!(tokio::time::timeout(PUBLISH_TIMEOUT, sub).await, Ok(Ok(()))) {
                        warn!("could not subscribe to acks; will retry on the next connection");
                    }
                    // Everything not acknowledged goes out again, in order.
                    agent.resend_from_oldest().await;
                    agent.resend_mark = agent.cursor;
                }
                Some(MqttEvent::Disconnected(reason)) => {
                    let repeated = agent.stats.last_mqtt_error().as_deref() == Some(reason.as_str());
                    if agent.connected {
                        warn!(meter = %agent.cfg.meter, %reason, "mqtt connection lost");
                    } else if !repeated {
                        // Not connected yet: say why once (a wrong CA or a
                        // refused certificate otherwise retries in silence).
                        warn!(meter = %agent.cfg.meter, %reason, "mqtt connection failed; retrying");
                    }
                    if let Ok(mut last) = agent.stats.last_mqtt_error.lock() {
                        *last = Some(reason);
                    }
                    agent.connected = false;
                    agent.stats.mqtt_connected.store(false, Ordering::SeqCst);
                }
                Some(MqttEvent::Message { topic, payload }) => agent.on_message(&topic, &payload).await,
                None => {
                    error!("mqtt driver stopped");
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), agent.mqtt.disconnect()).await;
    driver.abort();
    agent.outbox.close().await;
    Ok(())
}
