//! `voltshare demo`: a whole simulated microgrid in one process.
//!
//! It starts an MQTT broker (embedded, unless one is given), one simulated
//! SunSpec inverter and grid meter per household on loopback Modbus TCP
//! ports, a meter agent and a controller per household, the clearing engine
//! and the dashboard. Every part talks to the others through the same
//! interfaces it would use across machines: Modbus TCP, MQTT with signed
//! messages, SQLite.
//!
//! Time: each trading interval is 15 simulated minutes; the simulated clock
//! runs `900 / interval_secs` times faster than real time so that an interval
//! takes `interval_secs` real seconds. A demo starts fresh each time: the
//! databases in the data directory are recreated (the keys are kept).

use crate::household::{ControllerConfig, ControllerStats, run_controller};
use crate::strategy::StrategyParams;
use anyhow::{Context, anyhow};
use clearing::config::{EngineConfig, Enrolment};
use meter_agent::{AgentConfig, AgentStats, SimHousehold, run_agent};
use protocol::{
    AuctionParams, Clock, GridId, HouseholdId, MeterId, MicroPerKwh, ScaledClock, UnixMs,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Simulated length of one trading interval.
pub const SIM_INTERVAL_MS: u64 = 900_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub households: u32,
    pub interval_secs: u64,
    pub port: u16,
    pub data_dir: PathBuf,
    /// `(host, port)` of an existing broker; `None` starts an embedded one.
    pub broker: Option<(String, u16)>,
    pub run_for: Option<Duration>,
    pub seed: u64,
    /// Simulated start, Unix ms.
    pub start_ms: u64,
}

/// What ran, for the caller (tests read the databases afterwards).
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub grid: GridId,
    pub dashboard: SocketAddr,
    pub broker: (String, u16),
    pub engine_db: PathBuf,
    pub keys_dir: PathBuf,
    pub readings_stored: u64,
    pub orders_sent: u64,
}

/// The simulated clock's speed and the interval length for `interval_secs`.
pub fn timing(interval_secs: u64) -> (u64, u64) {
    let real_ms = interval_secs.max(1).saturating_mul(1000);
    let speed = (SIM_INTERVAL_MS / real_ms).max(1);
    (speed, real_ms.saturating_mul(speed))
}

/// The demo's grid id: derived from the seed and the data directory, so that
/// two demos on one shared broker do not see each other's retained results.
fn grid_id(opts: &DemoOptions) -> anyhow::Result<GridId> {
    let tag = protocol::hash_json(&(
        opts.seed,
        opts.data_dir.display().to_string(),
        opts.start_ms,
    ));
    GridId::new(format!("demo-{}", &tag.to_hex()[..8])).map_err(|e| anyhow!("grid id: {e}"))
}

/// A household of the simulated neighbourhood: about 60 % have PV; the
/// others are larger consumers (a heat pump or an electric car).
fn sim_household(seed: u64, i: u32) -> SimHousehold {
    let mut h = SimHousehold::from_seed(seed.wrapping_mul(1_000_003).wrapping_add(u64::from(i)));
    if i % 5 == 1 || i % 5 == 3 {
        h.pv_kwp = 0.0;
        h.annual_kwh += 3000.0;
    }
    h
}

fn remove_if_exists(p: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn fresh_db(p: &std::path::Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        remove_if_exists(std::path::Path::new(&s))
            .with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// Runs the demo until `shutdown` turns true or `run_for` has passed.
pub async fn run_demo(
    opts: DemoOptions,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<DemoReport> {
    run_demo_on(opts, crate::chain_cli::DemoChain::Ledger, shutdown).await
}

/// Runs the demo, settling on `chain` (`voltshare demo --chain anvil`
/// starts a local Anvil, deploys the contract and settles there).
pub async fn run_demo_on(
    opts: DemoOptions,
    chain: crate::chain_cli::DemoChain,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<DemoReport> {
    let grid = grid_id(&opts)?;
    let (speed, interval_ms) = timing(opts.interval_secs);
    let keys_dir = opts.data_dir.join("keys");
    std::fs::create_dir_all(&keys_dir)
        .with_context(|| format!("creating {}", keys_dir.display()))?;

    // Bind the dashboard first: a taken port is a usage error, before
    // anything else has started.
    let web_addr = SocketAddr::from(([127, 0, 0, 1], opts.port));
    let listener = tokio::net::TcpListener::bind(web_addr)
        .await
        .with_context(|| format!("dashboard port {} on 127.0.0.1", opts.port))?;

    let broker = match &opts.broker {
        Some(b) => b.clone(),
        None => {
            let addr = crate::broker::start_embedded()?;
            (addr.ip().to_string(), addr.port())
        }
    };

    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(UnixMs(opts.start_ms), speed));
    let engine_key =
        crate::keys::load_or_create(&keys_dir.join("engine.key")).context("engine key")?;
    let params = AuctionParams::default();

    // Households: keys, enrolments.
    let mut homes = Vec::new();
    for i in 1..=opts.households {
        let household = HouseholdId::new(format!("h{i:02}")).map_err(|e| anyhow!("{e}"))?;
        let meter = MeterId::new(format!("h{i:02}-main")).map_err(|e| anyhow!("{e}"))?;
        let key = crate::keys::load_or_create(&keys_dir.join(format!("{household}.key")))
            .with_context(|| format!("key of {household}"))?;
        homes.push((i, household, meter, key));
    }

    let engine_db = opts.data_dir.join("engine.db");
    fresh_db(&engine_db)?;
    let mut ecfg = EngineConfig::new(grid.clone(), engine_db.clone());
    ecfg.interval_ms = interval_ms;
    // Settle once a few readings past the interval's end are in.
    ecfg.settle_grace_ms = interval_ms / 5;
    ecfg.settle_max_wait_ms = interval_ms;
    ecfg.broker_host = broker.0.clone();
    ecfg.broker_port = broker.1;
    ecfg.client_id = format!("vs-engine-{grid}");
    ecfg.params = params.clone();
    // Readings are taken once a real second, i.e. `speed` simulated seconds
    // apart; allow a few of them of clock skew.
    ecfg.timestamp_window_ms = ecfg.timestamp_window_ms.max(speed * 10_000);
    ecfg.households = homes
        .iter()
        .map(|(_, h, m, k)| Enrolment::new(h.clone(), &k.verifying_key(), vec![m.clone()]))
        .collect();
    // Kept until the demo returns: dropping it stops Anvil.
    let _anvil = match chain {
        crate::chain_cli::DemoChain::Ledger => None,
        crate::chain_cli::DemoChain::Anvil => {
            let ids: Vec<HouseholdId> = ecfg
                .households
                .iter()
                .map(|e| e.household.clone())
                .collect();
            let (anvil, evm) = crate::chain_cli::start_demo_chain(&keys_dir, &ids).await?;
            for e in &mut ecfg.households {
                e.settlement_address =
                    Some(crate::chain_cli::demo_account(&e.household).to_string());
            }
            println!(
                "Chain: Anvil at {} (settlement contract {})",
                anvil.endpoint(),
                evm.contract
            );
            ecfg.evm = Some(evm);
            Some(anvil)
        }
    };
    let engine = clearing::engine::start_engine(ecfg, engine_key.clone(), clock.clone())
        .await
        .context("starting the clearing engine")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut sims = Vec::new();
    let mut agent_stats = Vec::new();
    let mut ctl_stats = Vec::new();
    for (i, household, meter, key) in homes {
        let sim = sim_household(opts.seed, i);
        let has_pv = sim.pv_kwp > 0.0;
        let (addr, sim_task) =
            meter_agent::spawn_simulator(SocketAddr::from(([127, 0, 0, 1], 0)), sim, clock.clone())
                .await
                .context("starting a device simulator")?;
        sims.push(sim_task);
        let outbox = opts.data_dir.join(format!("outbox-{household}.db"));
        fresh_db(&outbox)?;
        let acfg = AgentConfig {
            grid: grid.clone(),
            household: household.clone(),
            meter: meter.clone(),
            modbus: addr,
            inverter_unit: if has_pv { 1 } else { 0 },
            meter_unit: 2,
            poll_every: Duration::from_secs(1),
            outbox_path: outbox,
            outbox_max: 100_000,
            broker_host: broker.0.clone(),
            broker_port: broker.1,
            broker_security: Default::default(),
            engine_key: engine_key.verifying_key(),
            resend_after: Duration::from_secs(5),
        };
        let (latest_tx, latest_rx) = watch::channel(None);
        let stats = Arc::new(AgentStats::default());
        agent_stats.push(stats.clone());
        let (k, c, s) = (key.clone(), clock.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run_agent(acfg, k, c, s, latest_tx, stats).await {
                warn!(error = %e, "meter agent stopped");
            }
        }));

        // Each household has its own limits, spread across the tariff band.
        let spread = params.retail_tariff.0 - params.feed_in_tariff.0;
        let frac = u64::from(i % 7) + 1; // 1..=7 eighths... of a third of the spread
        let strategy = StrategyParams {
            min_sell_price: MicroPerKwh(params.feed_in_tariff.0 + spread * frac / 24),
            max_buy_price: MicroPerKwh(params.retail_tariff.0 - spread * frac / 24),
            feed_in_tariff: params.feed_in_tariff,
            retail_tariff: params.retail_tariff,
            interval_ms,
            min_order_wh: 10,
            window_ms: interval_ms / 3,
            location: None,
            battery: None,
            curtail: false,
        };
        let ccfg = ControllerConfig {
            grid: grid.clone(),
            household: household.clone(),
            broker_host: broker.0.clone(),
            broker_port: broker.1,
            strategy,
            place_at_permille: 500,
            engine_key: engine_key.verifying_key(),
            security: Default::default(),
            export_price: None,
        };
        let stats = Arc::new(ControllerStats::default());
        ctl_stats.push(stats.clone());
        let (c, s) = (clock.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run_controller(ccfg, key, c, latest_rx, s, stats).await {
                warn!(error = %e, "controller stopped");
            }
        }));
    }

    let mut state = web::AppState::new(engine.read_model(), grid.to_string(), interval_ms);
    state.clock = clock.clone();
    state.operator = Some(engine.operator());
    let names: Vec<String> = (1..=opts.households).map(|i| format!("h{i:02}")).collect();
    let state = crate::web_cli::attach_dashboard(state, &opts.data_dir, &names)
        .await
        .context("dashboard accounts")?;
    let app = web::app(state);
    let mut web_stop = stop_rx.clone();
    let web_task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = web_stop.changed().await;
        });
        if let Err(e) = serve.await {
            warn!(error = %e, "dashboard stopped");
        }
    });

    println!(
        "Voltshare demo: {} households, one 15-minute interval every {} s (clock {}× real time)",
        opts.households, opts.interval_secs, speed
    );
    println!("Dashboard: http://{web_addr}/");
    println!("Broker: mqtt://{}:{}  grid: {grid}", broker.0, broker.1);
    info!(%grid, dashboard = %web_addr, "demo running");

    let deadline = async {
        match opts.run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = deadline => {}
        _ = shutdown.changed() => {}
    }

    info!("stopping the demo");
    let _ = stop_tx.send(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            warn!("a household task did not stop in time");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), web_task).await;
    engine
        .shutdown()
        .await
        .map_err(|e| anyhow!("stopping the engine: {e}"))?;
    for s in sims {
        s.abort();
    }
    let readings_stored = agent_stats
        .iter()
        .map(|s| AgentStats::get(&s.readings))
        .sum();
    let orders_sent = ctl_stats
        .iter()
        .map(|s| s.orders_sent.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    Ok(DemoReport {
        grid,
        dashboard: web_addr,
        broker,
        engine_db,
        keys_dir,
        readings_stored,
        orders_sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_fits_interval() {
        assert_eq!(timing(10), (90, 900_000));
        assert_eq!(timing(5), (180, 900_000));
        assert_eq!(timing(900), (1, 900_000));
        let (speed, len) = timing(7);
        assert_eq!(speed, 128);
        assert_eq!(len, 896_000);
    }
}
