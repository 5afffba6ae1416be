//! Engine configuration: parsed (serde), then validated before anything binds
//! a socket or opens a file, so that a bad config gets one clear message
//! naming the key.
//!
//! All durations are milliseconds of the engine's [`protocol::Clock`] (sim
//! time under a scaled clock), except where a name says "real".

use ed25519_dalek::VerifyingKey;
use protocol::{AuctionParams, BrokerSecurity, BrokerSecurityError, GridId, HouseholdId, MeterId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One enrolled household: its signing key, its meters and where it is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    pub household: HouseholdId,
    /// The household's ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The household's meters (metering points). Delivery is the sum over them.
    #[serde(default)]
    pub meters: Vec<MeterId>,
    /// An on-chain address for the EVM settlement backend.
    #[serde(default)]
    pub settlement_address: Option<String>,
}

impl Enrolment {
    /// An enrolment for a key, without a settlement address.
    pub fn new(household: HouseholdId, key: &VerifyingKey, meters: Vec<MeterId>) -> Enrolment {
        Enrolment {
            household,
            public_key: hex::encode(key.as_bytes()),
            meters,
            settlement_address: None,
        }
    }

    /// Parses and checks the public key (weak keys are refused).
    pub fn verifying_key(&self) -> Result<VerifyingKey, ConfigError> {
        let bad = |why: &str| ConfigError::BadKey {
            household: self.household.to_string(),
            why: why.to_owned(),
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(self.public_key.trim(), &mut bytes)
            .map_err(|_| bad("not 64 hex digits"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid ed25519 point"))?;
        if key.is_weak() {
            return Err(bad("weak (small-order) key"));
        }
        Ok(key)
    }
}

/// Everything the clearing engine needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub grid: GridId,
    /// Interval length (default 15 minutes).
    #[serde(default = "d_interval")]
    pub interval_ms: u64,
    /// Gate closure of interval `I` is at `I.start − gate_lead_ms`.
    #[serde(default)]
    pub gate_lead_ms: u64,
    /// Settle an interval this long after its end, once readings are in.
    #[serde(default = "d_grace")]
    pub settle_grace_ms: u64,
    /// If readings are still missing this long after the grace period, settle
    /// with what exists (households without data count as undelivered).
    #[serde(default = "d_max_wait")]
    pub settle_max_wait_ms: u64,
    #[serde(default)]
    pub params: AuctionParams,
    /// SQLite database file (created if missing).
    pub db_path: PathBuf,
    #[serde(default = "d_host")]
    pub broker_host: String,
    #[serde(default = "d_port")]
    pub broker_port: u16,
    #[serde(default = "d_client_id")]
    pub client_id: String,
    /// TLS (CA file, client certificate and key) and/or username and
    /// password file for the broker; plain TCP when absent. The files are
    /// read and checked by [`EngineConfig::load_broker_security`] before the
    /// engine opens its database.
    #[serde(default)]
    pub broker_security: BrokerSecurity,
    #[serde(default)]
    pub households: Vec<Enrolment>,
    /// Readings timestamped further than this ahead of the clock are refused.
    #[serde(default = "d_window")]
    pub timestamp_window_ms: u64,
    /// Readings older than this are refused. Long, so that a gateway's outbox
    /// backlog after a broker or engine outage is still accepted.
    #[serde(default = "d_max_age")]
    pub max_reading_age_ms: u64,
    /// Most orders (including amendments) per household per interval.
    #[serde(default = "d_max_orders")]
    pub max_orders_per_interval: u32,
    /// Largest order quantity.
    #[serde(default = "d_max_order_wh")]
    pub max_order_wh: u64,
    /// Orders further ahead than this many intervals are refused (bad_interval).
    #[serde(default = "d_horizon")]
    pub order_horizon_intervals: u32,
    /// A cron expression (with seconds, as the `cron` crate wants) for when to
    /// wake and clear; derived from the interval length when absent.
    #[serde(default)]
    pub cron: Option<String>,
    /// At most this many missed intervals are cleared on start-up.
    #[serde(default = "d_catch_up")]
    pub max_catch_up_intervals: u32,
    /// Intake batch: at most this many messages...
    #[serde(default = "d_batch_max")]
    pub batch_max: usize,
    /// ...or this many real milliseconds after the first one.
    #[serde(default = "d_batch_ms")]
    pub batch_real_ms: u64,
    /// Settle on an EVM chain instead of the embedded ledger alone.
    #[serde(default)]
    pub evm: Option<crate::evm::EvmSettings>,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (e.g.
    /// `"127.0.0.1:9464"`; port 0 picks a free one). Off when absent.
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn d_interval() -> u64 {
    900_000
}
fn d_grace() -> u64 {
    60_000
}
fn d_max_wait() -> u64 {
    900_000
}
fn d_host() -> String {
    "127.0.0.1".to_owned()
}
fn d_port() -> u16 {
    1883
}
fn d_client_id() -> String {
    "voltshare-engine".to_owned()
}
fn d_window() -> u64 {
    300_000
}
fn d_max_age() -> u64 {
    7 * 24 * 3_600_000
}
fn d_max_orders() -> u32 {
    16
}
fn d_max_order_wh() -> u64 {
    100_000
}
fn d_horizon() -> u32 {
    96
}
fn d_catch_up() -> u32 {
    96
}
fn d_batch_max() -> usize {
    // Per batch the engine pays one commit (the WAL pages of every meter's
    // tail), one signed ack per household and one multiscalar
    // multiplication per core; `voltshare bench ingest` stored 40 % more
    // readings a second with 4096 than with 1024.
    4096
}
fn d_batch_ms() -> u64 {
    5
}

impl EngineConfig {
    /// A configuration with defaults for everything but the grid and the
    /// database file.
    pub fn new(grid: GridId, db_path: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            grid,
            interval_ms: d_interval(),
            gate_lead_ms: 0,
            settle_grace_ms: d_grace(),
            settle_max_wait_ms: d_max_wait(),
            params: AuctionParams::default(),
            db_path: db_path.into(),
            broker_host: d_host(),
            broker_port: d_port(),
            client_id: d_client_id(),
            broker_security: BrokerSecurity::default(),
            households: Vec::new(),
            timestamp_window_ms: d_window(),
            max_reading_age_ms: d_max_age(),
            max_orders_per_interval: d_max_orders(),
            max_order_wh: d_max_order_wh(),
            order_horizon_intervals: d_horizon(),
            cron: None,
            max_catch_up_intervals: d_catch_up(),
            batch_max: d_batch_max(),
            batch_real_ms: d_batch_ms(),
            evm: None,
            metrics_addr: None,
        }
    }

    /// Checks the values that parsing cannot: the first problem found, by key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, why: &str| {
            Err(ConfigError::Invalid {
                key,
                why: why.to_owned(),
            })
        };
        if self.interval_ms == 0 {
            return bad("interval_ms", "must be positive");
        }
        if self.gate_lead_ms >= self.interval_ms.saturating_mul(96) {
            return bad("gate_lead_ms", "must be shorter than 96 intervals");
        }
        if self.params.feed_in_tariff > self.params.retail_tariff {
            return bad(
                "params.feed_in_tariff",
                "must not exceed params.retail_tariff",
            );
        }
        if self.max_order_wh == 0 || i64::try_from(self.max_order_wh).is_err() {
            return bad("max_order_wh", "must be positive and fit in 63 bits");
        }
        if self.max_orders_per_interval == 0 {
            return bad("max_orders_per_interval", "must be positive");
        }
        if self.batch_max == 0 {
            return bad("batch_max", "must be positive");
        }
        if self.client_id.is_empty() {
            return bad("client_id", "must not be empty");
        }
        self.broker_security.check()?;
        if let Some(expr) = &self.cron {
            crate::schedule::parse_cron(expr).map_err(|e| ConfigError::Invalid {
                key: "cron",
                why: e.to_string(),
            })?;
        }
        if let Some(evm) = &self.evm {
            evm.validate().map_err(|e| ConfigError::Invalid {
                key: "evm",
                why: e.to_string(),
            })?;
            for e in &self.households {
                let Some(a) = &e.settlement_address else {
                    return Err(ConfigError::Invalid {
                        key: "households.settlement_address",
                        why: format!("{} has none, and the evm backend needs one", e.household),
                    });
                };
                crate::evm::parse_address(a, "households.settlement_address").map_err(|err| {
                    ConfigError::Invalid {
                        key: "households.settlement_address",
                        why: err.to_string(),
                    }
                })?;
            }
        }
        let mut households = std::collections::BTreeSet::new();
        let mut meters = std::collections::BTreeMap::new();
        for e in &self.households {
            if !households.insert(e.household.clone()) {
                return Err(ConfigError::Invalid {
                    key: "households",
                    why: format!("{} is enrolled twice", e.household),
                });
            }
            e.verifying_key()?;
            for m in &e.meters {
                if let Some(other) = meters.insert(m.clone(), e.household.clone()) {
                    return Err(ConfigError::Invalid {
                        key: "households.meters",
                        why: format!("meter {m} is enrolled for both {other} and {}", e.household),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config key `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("config key `households.public_key` of {household}: {why}")]
    BadKey { household: String, why: String },
    /// A problem in `broker_security`: `.0.key` is relative to it.
    #[error("config `broker_security`: {0}")]
    BrokerSecurity(#[from] BrokerSecurityError),
}

impl EngineConfig {
    /// Reads and checks the broker security files (CA, client certificate
    /// and key, password file); an error names the key and the file.
    pub fn load_broker_security(&self) -> Result<MqttSecurity, ConfigError> {
        Ok(MqttSecurity::load(&self.broker_security)?)
    }
}

pub use mqtt_security::MqttSecurity;
