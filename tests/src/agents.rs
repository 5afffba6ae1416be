//! Real meter agents (`meter_agent::run_agent`) in the test process, each
//! polling its own Modbus TCP SunSpec simulator on loopback, with its own
//! SQLite outbox.

use crate::sender::TestHousehold;
use ed25519_dalek::VerifyingKey;
use meter_agent::{AgentConfig, AgentStats, SimHousehold, run_agent};
use protocol::{Clock, GridId, MeterId};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Running agents and their simulators.
#[derive(Debug)]
pub struct Agents {
    pub meters: Vec<(MeterId, PathBuf)>,
    pub stats: Vec<Arc<AgentStats>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sims: Vec<JoinHandle<()>>,
}

impl Agents {
    /// One agent per household (its first meter), polling every `poll`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        grid: &GridId,
        homes: &[TestHousehold],
        dir: &Path,
        broker_port: u16,
        engine_key: VerifyingKey,
        clock: Arc<dyn Clock>,
        poll: Duration,
        resend: Duration,
    ) -> Agents {
        let (stop, stop_rx) = watch::channel(false);
        let mut a = Agents {
            meters: Vec::new(),
            stats: Vec::new(),
            stop,
            tasks: Vec::new(),
            sims: Vec::new(),
        };
        for (i, h) in homes.iter().enumerate() {
            let sim = SimHousehold::from_seed(1_000 + i as u64);
            let (addr, sim_task) = meter_agent::spawn_simulator(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                sim,
                clock.clone(),
            )
            .await
            .expect("starting a device simulator");
            a.sims.push(sim_task);
            let meter = h.meters[0].clone();
            let outbox = dir.join(format!("outbox-{meter}.db"));
            let cfg = AgentConfig {
                grid: grid.clone(),
                household: h.id.clone(),
                meter: meter.clone(),
                modbus: addr,
                inverter_unit: 1,
                meter_unit: 2,
                poll_every: poll,
                outbox_path: outbox.clone(),
                outbox_max: 1_000_000,
                broker_host: "127.0.0.1".into(),
                broker_port,
                broker_security: Default::default(),
                engine_key,
                resend_after: resend,
            };
            let stats = Arc::new(AgentStats::default());
            a.stats.push(stats.clone());
            a.meters.push((meter, outbox));
            let (key, clock, rx) = (h.key.clone(), clock.clone(), stop_rx.clone());
            let (latest, _) = watch::channel(None);
            a.tasks.push(tokio::spawn(async move {
                if let Err(e) = run_agent(cfg, key, clock, rx, latest, stats).await {
                    panic!("meter agent stopped: {e}");
                }
            }));
        }
        a
    }

    /// Readings the agents have stored in their outboxes so far.
    pub fn readings(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| AgentStats::get(&s.readings))
            .sum()
    }

    /// Readings stored by the agents and not yet taken off their outboxes
    /// by an ack (from the agents' counters: no database is opened).
    pub fn pending(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| {
                AgentStats::get(&s.readings)
                    .saturating_sub(AgentStats::get(&s.acked) + AgentStats::get(&s.rejected))
            })
            .sum()
    }

    /// The agents' counters summed, for reports.
    pub fn totals(&self) -> serde_json::Value {
        let sum = |f: fn(&AgentStats) -> &std::sync::atomic::AtomicU64| -> u64 {
            self.stats.iter().map(|s| AgentStats::get(f(s))).sum()
        };
        serde_json::json!({
            "readings": sum(|s| &s.readings),
            "published": sum(|s| &s.published),
            "resent": sum(|s| &s.resent),
            "acked": sum(|s| &s.acked),
            "rejected": sum(|s| &s.rejected),
            "poll_failures": sum(|s| &s.poll_failures),
            "db_errors": sum(|s| &s.db_errors),
            "mqtt_connects": sum(|s| &s.mqtt_connects),
        })
    }

    /// Stops polling (the agents finish and close their outboxes).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        for s in self.sims {
            s.abort();
        }
    }
}

/// Waits until every outbox is empty (all readings acknowledged).
pub async fn wait_outboxes_empty(meters: &[(MeterId, PathBuf)], timeout: Duration) -> bool {
    let watch = protocol::Stopwatch::start();
    loop {
        let mut waiting = 0;
        for (m, p) in meters {
            waiting += crate::checks::outbox_state(p, m).await.1.len();
        }
        if waiting == 0 {
            return true;
        }
        if watch.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
