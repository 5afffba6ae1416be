//! `voltshare run --config FILE`: the roles a gateway's configuration
//! enables, composed in one process.
//!
//! Order of start-up, and why: the configuration has already been validated
//! (nothing is bound before that); then the keys are loaded or created; then
//! the dashboard's port is bound (a taken port stops everything before any
//! other role has started); then the clearing engine, the meter agent, the
//! controller and Home Assistant discovery start, in that order, so that the
//! engine is listening before this gateway's own readings arrive.
//!
//! Every role connects to the broker itself, natively over TLS (rustls with
//! the `ring` provider) when the configuration says so: the meter agent and
//! the engine get the `[broker]` security settings in their own
//! configurations and read the CA, certificate and key files themselves; the
//! controller, the status publisher and Home Assistant discovery use the
//! files the validation already read. The broker sees the gateway's
//! certificate identity on every connection, which is what its ACLs key on.

use crate::actuate::Actuator;
use crate::config::{AgentRole, BrokerSecurity, GatewayConfig, HouseholdIdentity};
use crate::household::{ControllerConfig, ControllerStats, run_controller_with};
use anyhow::{Context, anyhow};
use meter_agent::{AgentConfig, AgentStats, run_agent};
use protocol::{Clock, GridId};
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Publishes `online` (retained) on the node's status topic, with an
/// `offline` last will, and keeps the connection alive until shutdown.
async fn run_status(
    grid: GridId,
    node: String,
    host: String,
    port: u16,
    security: BrokerSecurity,
    mut shutdown: watch::Receiver<bool>,
) {
    let topic = protocol::Topic::Status {
        grid: grid.clone(),
        node: node.clone(),
    }
    .to_string();
    let mut opts = MqttOptions::new(format!("vs-status-{grid}-{node}"), host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_last_will(LastWill::new(&topic, "offline", QoS::AtLeastOnce, true));
    if let Err(e) = security.apply(&mut opts) {
        warn!(error = %e, "status publisher: broker settings unusable");
        return;
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 8);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.publish(&topic, QoS::AtLeastOnce, true, "offline").await;
                let _ = tokio::time::timeout(Duration::from_millis(500), async { while eventloop.poll().await.is_ok() {} }).await;
                let _ = client.disconnect().await;
                return;
            }
            ev = eventloop.poll() => match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    info!(%topic, "connected to the broker");
                    let _ = client.try_publish(&topic, QoS::AtLeastOnce, true, "online");
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "broker connection failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// The meter agent's settings from a gateway config's `[meter_agent]` and
/// `[household]` (used by `voltshare run` and by `voltshare-agent`).
pub(crate) fn agent_config(
    cfg: &GatewayConfig,
    a: &AgentRole,
    h: &HouseholdIdentity,
) -> AgentConfig {
    AgentConfig {
        grid: cfg.grid.clone(),
        household: h.id.clone(),
        meter: a.meter.clone(),
        modbus: a.modbus,
        inverter_unit: a.inverter_unit,
        meter_unit: a.meter_unit,
        poll_every: Duration::from_millis(a.poll_ms),
        outbox_path: cfg.data_dir.join(format!("outbox-{}.db", a.meter)),
        outbox_max: a.outbox_max,
        broker_host: cfg.broker_host.clone(),
        broker_port: cfg.broker_port,
        broker_security: cfg.security.settings.clone(),
        engine_key: h.engine_key,
        resend_after: Duration::from_secs(30),
    }
}

/// Runs the enabled roles until `shutdown` turns true.
pub async fn run_gateway(
    cfg: GatewayConfig,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let household_key = match &cfg.household {
        Some(h) => Some(
            crate::keys::load_or_create(&h.key_file)
                .with_context(|| format!("household key {}", h.key_file.display()))?,
        ),
        None => None,
    };
    let engine_key = match &cfg.engine {
        Some(e) => Some(
            crate::keys::load_or_create(&e.key_file)
                .with_context(|| format!("engine key {}", e.key_file.display()))?,
        ),
        None => None,
    };
    if let Some(k) = &household_key {
        info!(public_key = %hex::encode(k.verifying_key().as_bytes()), "household key (enrol it with the clearing host)");
    }

    // Bind the dashboard before anything else runs.
    let dashboard = match cfg.dashboard {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("dashboard.listen {addr}"))?,
        ),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();

    let node = cfg
        .household
        .as_ref()
        .map_or_else(|| "engine".to_owned(), |h| h.id.to_string());
    tasks.push(tokio::spawn(run_status(
        cfg.grid.clone(),
        node,
        cfg.broker_host.clone(),
        cfg.broker_port,
        cfg.security.clone(),
        stop_rx.clone(),
    )));

    let engine = match (&cfg.engine, engine_key) {
        (Some(e), Some(key)) => Some(
            clearing::engine::start_engine(e.config.clone(), key, clock.clone())
                .await
                .context("starting the clearing engine")?,
        ),
        _ => None,
    };

    let (latest_tx, latest_rx) = watch::channel(None);
    let ctl_stats = Arc::new(ControllerStats::default());
    if let (Some(a), Some(h), Some(key)) = (&cfg.agent, &cfg.household, &household_key) {
        let acfg = agent_config(&cfg, a, h);
        let (k, c, s, stats) = (
            key.clone(),
            clock.clone(),
            stop_rx.clone(),
            Arc::new(AgentStats::default()),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run_agent(acfg, k, c, s, latest_tx, stats).await {
                warn!(error = %e, "meter agent stopped");
            }
        }));
    }
    if let (Some(c), Some(h), Some(key)) = (&cfg.controller, &cfg.household, &household_key) {
        let ccfg = ControllerConfig {
            grid: cfg.grid.clone(),
            household: h.id.clone(),
            broker_host: cfg.broker_host.clone(),
            broker_port: cfg.broker_port,
            strategy: c.strategy,
            place_at_permille: 500,
            engine_key: h.engine_key,
            security: cfg.security.clone(),
            export_price: c.export_price.clone(),
        };
        // The devices the decisions are written to, when the config names
        // them (`[controller.actuation]`); otherwise they are only logged.
        let actuator = c.actuator.clone().map(|a| {
            info!(transport = %a.transport, inverter_unit = a.inverter_unit, battery_unit = ?a.battery_unit, "controller actuates devices");
            Actuator::new(a, clock.clone())
        });
        let (k, cl, s, r, st) = (
            key.clone(),
            clock.clone(),
            stop_rx.clone(),
            latest_rx.clone(),
            ctl_stats.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run_controller_with(ccfg, k, cl, r, s, st, actuator).await {
                warn!(error = %e, "controller stopped");
            }
        }));
    }
    if let (Some(ha), Some(h)) = (&cfg.home_assistant, &cfg.household) {
        tasks.push(tokio::spawn(crate::ha::run_home_assistant(
            ha.clone(),
            cfg.grid.clone(),
            h.id.clone(),
            clock.clone(),
            latest_rx.clone(),
            ctl_stats.clone(),
            stop_rx.clone(),
        )));
    }
    if let (Some(listener), Some(engine)) = (dashboard, &engine) {
        let mut state =
            web::AppState::new(engine.read_model(), cfg.grid.to_string(), cfg.interval_ms);
        state.clock = clock.clone();
        state.operator = Some(engine.operator());
        let app = web::app(state);
        let mut web_stop = stop_rx.clone();
        info!(addr = %listener.local_addr()?, "dashboard listening");
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = web_stop.changed().await;
            });
            if let Err(e) = serve.await {
                warn!(error = %e, "dashboard stopped");
            }
        }));
    }

    info!(grid = %cfg.grid, roles = ?cfg.roles(), config = %cfg.file.display(), "gateway running");
    let mut shutdown = shutdown;
    let _ = shutdown.changed().await;
    info!("stopping the gateway");
    let _ = stop_tx.send(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            warn!("a role did not stop in time");
        }
    }
    if let Some(e) = engine {
        e.shutdown()
            .await
            .map_err(|e| anyhow!("stopping the engine: {e}"))?;
    }
    Ok(())
}
