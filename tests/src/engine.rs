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
