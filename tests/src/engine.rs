//! An in-process clearing engine for tests that drive it through a real
//! broker (the crash tests run the real binary instead, see [`crate::procs`]).

use crate::sender::TestHousehold;
use clearing::{EngineConfig, EngineHandle};
use ed25519_dalek::SigningKey;
use protocol::{Clock, GridId};
use std::path::Path;
use std::sync::Arc;

/// The engine's configuration for a test grid: the given households, the
/// database in `dir`, the broker at `host:port`, a unique client id.
pub fn config(grid: &GridId, households: &[TestHousehold], dir: &Path, port: u16) -> EngineConfig {
    let mut cfg = EngineConfig::new(grid.clone(), dir.join("engine.db"));
    cfg.broker_host = "127.0.0.1".into();
    cfg.broker_port = port;
    cfg.client_id = format!("vs-engine-{grid}");
    cfg.households = households.iter().map(TestHousehold::enrolment).collect();
    cfg
}

/// The engine key of a test grid.
pub fn engine_key(grid: &GridId) -> SigningKey {
    crate::util::key(&format!("engine-{grid}"))
}

/// Starts the engine (panics if it cannot start).
pub async fn start(cfg: EngineConfig, clock: Arc<dyn Clock>) -> EngineHandle {
    let key = engine_key(&cfg.grid);
    clearing::start_engine(cfg, key, clock)
        .await
        .expect("starting the clearing engine")
}

/// The engine's intake totals: (accepted readings, accepted orders,
/// duplicates, rejects by reason).
pub fn totals(e: &EngineHandle) -> (u64, u64, u64, std::collections::BTreeMap<String, u64>) {
    let s = e.counters().snapshot();
    (
        s.readings_accepted,
        s.orders_accepted,
        s.duplicates,
        s.rejects,
    )
}

/// Messages the engine has accounted for: accepted, duplicate or rejected.
pub fn accounted(e: &EngineHandle) -> u64 {
    let (r, o, d, rej) = totals(e);
    r + o + d + rej.values().sum::<u64>()
}

/// Waits until the engine has accounted for `total` messages.
pub async fn wait_accounted(e: &EngineHandle, total: u64, timeout: std::time::Duration) {
    crate::util::wait_for(
        &format!("the engine to account for {total} messages"),
        timeout,
        || async { (accounted(e) >= total).then_some(()) },
    )
    .await;
}

/// Keeps a publisher at most a few hundred messages ahead of the engine
/// (checked every 100 messages): Mosquitto queues at most 1000 messages per
/// subscriber by default and drops the rest, which would be a loss caused
/// by the test, not the engine.
pub async fn keep_up(e: &EngineHandle, sent: u64) {
    if !sent.is_multiple_of(100) {
        return;
    }
    wait_accounted(
        e,
        sent.saturating_sub(300),
        std::time::Duration::from_secs(60),
    )
    .await;
}
