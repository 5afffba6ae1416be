//! The household controller task: follows the meter agent's latest readings,
//! and once per interval places the strategy's signed orders for the next
//! interval on `voltshare/{grid}/orders/{household}`. It also follows the
//! engine's signed acknowledgements of its orders and counts the outcomes,
//! and the engine's signed clearing results: their prices feed the strategy's
//! market view, and the household's own trades make up today's bill (shown
//! in Home Assistant).
//!
//! Device decisions (an export limit when exporting costs money, a battery
//! mode) go to the devices through [`crate::actuate::Actuator`] when one is
//! given ([`run_controller_with`]; `voltshare run` gives one when the config
//! has `[controller.actuation]`); without one they are only logged. The
//! export price of the target interval comes from the configured
//! [`crate::config::ExportPriceSource`] (its schedule file is read again
//! when it changes); with an actuator and a `[controller.battery]`, the
//! battery's state of charge is read from the device before each plan.
//!
//! History: the strategy's consumption profile looks a week back, so the
//! controller keeps eight days of observations, thinned to one a minute
//! outside the recent window (a week of 1 s readings would be 600,000).

use crate::strategy::{MarketView, Observation, StrategyParams, plan_interval};
use ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::{
    Ack, AckKind, AckOutcome, ClearingResult, Clock, DeviceStatus, Domain, GridId, HouseholdId,
    IntervalId, MicroPerKwh, Order, Reading, SignedEnvelope, Topic, decode_payload,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Configuration of one household's controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub grid: GridId,
    pub household: HouseholdId,
    pub broker_host: String,
    pub broker_port: u16,
    pub strategy: StrategyParams,
    /// When, within the current interval, to place orders for the next one,
    /// in thousandths of the interval (e.g. 500 = halfway).
    pub place_at_permille: u64,
    /// The engine's public key, to verify acknowledgements and results.
    pub engine_key: VerifyingKey,
    /// TLS and credentials for the broker (plain TCP by default).
    pub security: crate::config::BrokerSecurity,
    /// Where the price for exporting to the utility comes from, when a
    /// dynamic feed-in tariff applies (drives curtailment); `None`: the
    /// fixed feed-in tariff, nothing is ever curtailed.
    pub export_price: Option<crate::config::ExportPriceSource>,
}

/// What the controller has done, for the dashboard and tests.
#[derive(Debug, Default)]
pub struct ControllerStats {
    pub orders_sent: AtomicU64,
    pub orders_accepted: AtomicU64,
    pub orders_rejected: AtomicU64,
    pub forged_acks: AtomicU64,
    /// Clearing results that verified against the engine key.
    pub results: AtomicU64,
    /// The latest clearing price, µ/kWh (0: nothing traded yet).
    pub last_price: AtomicU64,
    /// The household's contracted money today (UTC day `bill_day`), µ:
    /// `+` paid, `−` earned.
    pub bill_today_micros: AtomicI64,
    /// Day number (Unix days) that `bill_today_micros` belongs to.
    pub bill_day: AtomicU64,
    /// Recent clearing prices (oldest first) for the strategy.
    pub recent_prices: Mutex<VecDeque<Option<MicroPerKwh>>>,
    /// What the device decisions did (see [`crate::actuate`]).
    pub actuation: Arc<crate::actuate::ActuationStats>,
}

impl ControllerStats {
    /// Books one verified clearing result: its price and the household's
    /// own trades into today's bill (the day of the interval).
    pub fn book_result(&self, result: &ClearingResult, household: &HouseholdId) {
        self.results.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = result.clearing_price {
            self.last_price.store(p.0, Ordering::Relaxed);
        }
        if let Ok(mut r) = self.recent_prices.lock() {
            r.push_back(result.clearing_price);
            while r.len() > 16 {
                r.pop_front();
            }
        }
        let day = result.interval.0 / 86_400_000;
        if self.bill_day.swap(day, Ordering::Relaxed) != day {
            self.bill_today_micros.store(0, Ordering::Relaxed);
        }
        let mut delta = 0i64;
        for t in &result.trades {
            if &t.buyer == household {
                delta = delta.saturating_add(t.buyer_pays().0);
            }
            if &t.seller == household {
                delta = delta.saturating_sub(t.seller_receives().0);
            }
        }
        self.bill_today_micros.fetch_add(delta, Ordering::Relaxed);
    }
}

/// The nonce of the `step`-th order for `target`: strictly increasing with
/// the target interval, so no state is needed to keep nonces fresh across
/// restarts.
pub fn nonce_for(target: IntervalId, step: usize) -> u64 {
    (target.0 / 1000)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(step).unwrap_or(999).min(999))
}

/// Runs the controller until `shutdown` turns true; device decisions are
/// only logged.
pub async fn run_controller(
    cfg: ControllerConfig,
    key: SigningKey,
    clock: Arc<dyn Clock>,
    readings: watch::Receiver<Option<Reading>>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<ControllerStats>,
) -> Result<(), rumqttc::ClientError> {
    run_controller_with(cfg, key, clock, readings, shutdown, stats, None).await
}

/// [`run_controller`], sending the strategy's device decisions through
/// `actuator` (its counters are shared into `stats.actuation`).
pub async fn run_controller_with(
    cfg: ControllerConfig,
    key: SigningKey,
    clock: Arc<dyn Clock>,
    mut readings: watch::Receiver<Option<Reading>>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<ControllerStats>,
    actuator: Option<crate::actuate::Actuator>,
) -> Result<(), rumqttc::ClientError> {
    let mut actuator = actuator.map(|a| a.with_stats(Arc::clone(&stats.actuation)));
    let mut export_price = cfg.export_price.clone();
    let mut latest: Option<Reading> = None;
    let mut opts = MqttOptions::new(
        format!("vs-ctl-{}-{}", cfg.grid, cfg.household),
        &cfg.broker_host,
        cfg.broker_port,
    );
    opts.set_keep_alive(Duration::from_secs(10));
    // Clearing results grow with the interval's trades, past the 10 KiB
    // default; a result the client could not take would break the session.
    opts.set_max_packet_size(protocol::MAX_PACKET_BYTES, protocol::MAX_PACKET_BYTES);
    opts.set_clean_session(false);
    if let Err(e) = cfg.security.apply(&mut opts) {
        // Validated before start-up; a file that vanished since is a
        // runtime failure of this role only.
        warn!(household = %cfg.household, error = %e, "broker TLS setup failed; controller not started");
        return Ok(());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let acks = Topic::Acks {
        grid: cfg.grid.clone(),
        household: cfg.household.clone(),
    }
    .to_string();
    let results = Topic::filter(&cfg.grid, "results");
    client.subscribe(acks.clone(), QoS::AtLeastOnce).await?;
    client.subscribe(results.clone(), QoS::AtLeastOnce).await?;

    // The event loop must be polled for anything to move; it also delivers
    // the engine's acknowledgements.
    let ev_stats = stats.clone();
    let engine_key = cfg.engine_key;
    let ev_client = client.clone();
    let mut ev_shutdown = shutdown.clone();
    let ev_household = cfg.household.clone();
    let events = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = ev_shutdown.changed() => break,
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == acks => {
                        count_ack(&p.payload, &engine_key, &ev_stats);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(r) = verified_result(&p.payload, &engine_key) {
                            ev_stats.book_result(&r, &ev_household);
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // A new session may have lost the subscriptions.
                        let _ = ev_client.try_subscribe(acks.clone(), QoS::AtLeastOnce);
                        let _ = ev_client.try_subscribe(results.clone(), QoS::AtLeastOnce);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "controller connection error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    });

    let len = cfg.strategy.interval_ms.max(1);
    let mut history: VecDeque<Observation> = VecDeque::new();
    let mut last_target: Option<IntervalId> = None;
    loop {
        let now = clock.now();
        let current = IntervalId::containing(now, len);
        let place_at = current.0 + len * cfg.place_at_permille.min(999) / 1000;
        let target = current.next(len);
        let wait_ms = if last_target == Some(target) {
            // Already placed for this interval: wait for the next one.
            current.next(len).0 + len * cfg.place_at_permille.min(999) / 1000 - now.0
        } else {
            place_at.saturating_sub(now.0)
        };
        let sleep = tokio::time::sleep(clock.real_duration(wait_ms));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                changed = readings.changed() => {
                    if changed.is_err() { break; }
                    if let Some(r) = readings.borrow_and_update().as_ref() {
                        observe(&mut history, r);
                        latest = Some(r.clone());
                    }
                }
                _ = shutdown.changed() => {
                    let _ = client.disconnect().await;
                    let _ = events.await;
                    return Ok(());
                }
            }
        }
        let now = clock.now();
        let target = IntervalId::containing(now, len).next(len);
        if last_target == Some(target) {
            continue;
        }
        last_target = Some(target);
        let obs: Vec<Observation> = history.iter().copied().collect();
        let prices: Vec<Option<MicroPerKwh>> = stats
            .recent_prices
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        // The export price in force when the target interval starts.
        let export_price_now = match export_price.as_mut() {
            Some(src) => {
                match src.reload() {
                    Ok(true) => {
                        info!(household = %cfg.household, entries = src.schedule.len(), "export price schedule loaded")
                    }
                    Ok(false) => {}
                    Err(error) => {
                        warn!(household = %cfg.household, %error, "export price schedule not reloaded; the previous one stays")
                    }
                }
                src.price_at(target.start())
            }
            None => None,
        };
        // The battery's state of charge, from the device the actuator
        // commands (the meter agent reads inverter and grid meter only).
        let battery_soc_wh = match (cfg.strategy.battery, actuator.as_mut()) {
            // Bounded, so that a silent device never holds the orders back.
            (Some(b), Some(a)) => tokio::time::timeout(Duration::from_secs(5), a.battery_soc_pct())
                .await
                .ok()
                .flatten()
                .map(|pct| b.capacity_wh.saturating_mul(u64::from(pct)) / 100),
            _ => None,
        };
        let market = MarketView {
            recent_prices: &prices,
            export_price_now,
            battery_soc_wh,
        };
        let decided = plan_interval(&obs, &market, target, &cfg.strategy);
        if let Some(limit) = decided.curtail_export_w {
            info!(household = %cfg.household, interval = target.0, export_limit_w = limit.0, ?export_price_now, "curtailment decided");
        }
        let planned = &decided.orders;
        for (step, p) in planned.iter().enumerate() {
            let order = Order {
                grid: cfg.grid.clone(),
                household: cfg.household.clone(),
                interval: p.interval,
                side: p.side,
                quantity_wh: p.quantity_wh,
                limit_price: p.limit_price,
                nonce: nonce_for(target, step),
                ts: now,
                replaces: None,
            };
            match SignedEnvelope::sign_json(Domain::Order, &key, &order) {
                Ok(env) => {
                    let topic = Topic::Orders {
                        grid: cfg.grid.clone(),
                        household: cfg.household.clone(),
                    };
                    client
                        .publish(topic.to_string(), QoS::AtLeastOnce, false, env.encode())
                        .await?;
                    stats.orders_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => warn!(household = %cfg.household, error = %e, "could not sign order"),
            }
        }
        if !planned.is_empty() {
            info!(household = %cfg.household, interval = target.0, orders = planned.len(), side = ?planned[0].side, "orders placed");
        }
        // After the orders, so that a slow or absent device never delays
        // trading; the actuator logs and counts each outcome itself.
        if let Some(a) = actuator.as_mut() {
            a.apply(&decided, latest.as_ref()).await;
        }
    }
}

fn observe(history: &mut VecDeque<Observation>, r: &Reading) {
    if r.status != DeviceStatus::Ok {
        return;
    }
    if history.back().is_some_and(|b| b.ts >= r.ts) {
        return;
    }
    // One observation a minute is plenty for the forecast (it interpolates
    // counters), and a week of 1 s readings would be 600,000: the newest
    // observation replaces the previous one while that is under a minute
    // younger than the one before it.
    let len = history.len();
    if len >= 2 && history[len - 1].ts.0.saturating_sub(history[len - 2].ts.0) < 60_000 {
        history.pop_back();
    }
    history.push_back(Observation {
        ts: r.ts,
        import_wh: r.import_wh,
        export_wh: r.export_wh,
        pv_wh: r.pv_wh,
        grid_power_w: r.grid_power_w,
        battery_net_wh: 0,
    });
    while history
        .front()
        .is_some_and(|f| r.ts.0.saturating_sub(f.ts.0) > HISTORY_MS)
    {
        history.pop_front();
    }
}

/// How far back the controller keeps observations: a week of profile plus a day.
const HISTORY_MS: u64 = 8 * 86_400_000;

/// The clearing result in `payload`, if it verifies against the engine key.
fn verified_result(payload: &[u8], engine_key: &VerifyingKey) -> Option<ClearingResult> {
    let env = SignedEnvelope::decode_for(Domain::Result, payload).ok()?;
    env.verify(Domain::Result, engine_key).ok()?;
    decode_payload::<ClearingResult>(&env.payload).ok()
}

fn count_ack(payload: &[u8], engine_key: &VerifyingKey, stats: &ControllerStats) {
    let Ok(env) = SignedEnvelope::decode(payload) else {
        stats.forged_acks.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if env.verify(Domain::Ack, engine_key).is_err() {
        stats.forged_acks.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Ok(ack) = decode_payload::<Ack>(&env.payload) else {
        stats.forged_acks.fetch_add(1, Ordering::Relaxed);
        return;
    };
    for item in ack.items.iter().filter(|i| i.kind == AckKind::Order) {
        match &item.outcome {
            AckOutcome::Accepted | AckOutcome::Duplicate => {
                stats.orders_accepted.fetch_add(1, Ordering::Relaxed)
            }
            AckOutcome::Rejected(reason) => {
                warn!(household = %ack.household, nonce = item.seq, %reason, "order rejected");
                stats.orders_rejected.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_increase_with_interval_and_step() {
        let a = nonce_for(IntervalId(900_000), 0);
        let b = nonce_for(IntervalId(900_000), 1);
        let c = nonce_for(IntervalId(1_800_000), 0);
        assert!(a < b && b < c);
    }
}
