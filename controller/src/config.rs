//! The gateway's configuration: one TOML file per gateway, each role enabled
//! or not (meter agent, controller, clearing engine, dashboard, Home
//! Assistant).
//!
//! Parse, then validate, then bind: [`load`] reads and parses the file
//! (serde, unknown keys refused), then [`RawConfig::validate`] checks every
//! value parsing cannot (ids, addresses, price limits, key and certificate
//! files, the engine's own rules) and returns a [`GatewayConfig`] whose
//! values are ready to use. Nothing here opens a socket, so a bad file stops
//! `voltshare run` before any port is bound. Every error names its key, and
//! the file and line where the key (or its section) stands.

use crate::strategy::{BatteryParams, Location};
use clearing::config::EngineConfig;
use meter_agent::agent::MqttSecurity;
use protocol::BrokerSecurityError;
use protocol::{GridId, HouseholdId, MeterId, MicroPerKwh};
use rumqttc::MqttOptions;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration problem: which file, where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path (`controller.max_buy_price`); empty for whole-file problems.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// How a gateway reaches a broker: the settings as configured (TLS with a
/// CA file, a client certificate and key, and/or a username with a password
/// file), with their files already read and checked while the configuration
/// was validated. The meter agent and the engine get the settings and read
/// the same files natively (`meter_agent::agent::MqttSecurity`,
/// `clearing::config::MqttSecurity`); there is no relay in between.
#[derive(Debug, Clone, Default)]
pub struct BrokerSecurity {
    pub settings: protocol::BrokerSecurity,
    loaded: MqttSecurity,
}

impl BrokerSecurity {
    /// Checks the settings and reads their files; an error names the key
    /// (relative to the settings) and the file.
    pub fn load(settings: protocol::BrokerSecurity) -> Result<BrokerSecurity, BrokerSecurityError> {
        let loaded = MqttSecurity::load(&settings)?;
        Ok(BrokerSecurity { settings, loaded })
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.loaded.tls.is_some()
    }

    /// Sets the TLS transport and the credentials on rumqttc options. The
    /// files were read by [`BrokerSecurity::load`], so today this never
    /// fails; the `Result` keeps callers ready for settings that can.
    pub fn apply(&self, opts: &mut MqttOptions) -> Result<(), BrokerSecurityError> {
        self.loaded.apply(opts);
        Ok(())
    }
}

// ---------------------------------------------------------------- raw file

/// The file as parsed, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub grid: String,
    /// Where databases and keys live (the unit's StateDirectory).
    pub data_dir: PathBuf,
    #[serde(default = "d_interval")]
    pub interval_ms: u64,
    pub broker: RawBroker,
    #[serde(default)]
    pub household: Option<RawHousehold>,
    #[serde(default)]
    pub meter_agent: Option<RawAgent>,
    #[serde(default)]
    pub controller: Option<RawController>,
    /// The clearing engine: `enabled`, `key_file`, and any key of the
    /// engine's own configuration (`clearing::EngineConfig`).
    #[serde(default)]
    pub engine: Option<toml::Table>,
    #[serde(default)]
    pub dashboard: Option<RawDashboard>,
    #[serde(default)]
    pub home_assistant: Option<RawHomeAssistant>,
}

fn d_interval() -> u64 {
    900_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    /// The password, in its own file (mode 0600), never in this one.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl RawBroker {
    /// The security keys of the section, as the clients take them.
    pub fn settings(&self) -> protocol::BrokerSecurity {
        protocol::BrokerSecurity {
            tls: self.tls,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHousehold {
    pub id: String,
    /// The household's ed25519 key (hex); created on first start if missing.
    pub key_file: PathBuf,
    /// The clearing engine's public key, 64 hex digits.
    pub engine_public_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    #[serde(default)]
    pub enabled: bool,
    pub meter: String,
    /// Modbus TCP address of the inverter/meter gateway.
    pub modbus: String,
    #[serde(default)]
    pub inverter_unit: u8,
    #[serde(default = "d_meter_unit")]
    pub meter_unit: u8,
    #[serde(default = "d_poll")]
    pub poll_ms: u64,
    #[serde(default = "d_outbox_max")]
    pub outbox_max: u64,
}

fn d_meter_unit() -> u8 {
    2
}
fn d_poll() -> u64 {
    1_000
}
fn d_outbox_max() -> u64 {
    1_000_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawController {
    #[serde(default)]
    pub enabled: bool,
    /// µ/kWh.
    pub min_sell_price: u64,
    /// µ/kWh, grid fee included.
    pub max_buy_price: u64,
    #[serde(default = "d_feed_in")]
    pub feed_in_tariff: u64,
    #[serde(default = "d_retail")]
    pub retail_tariff: u64,
    /// Degrees north (negative south).
    #[serde(default)]
    pub latitude: Option<f64>,
    /// Degrees east (negative west).
    #[serde(default)]
    pub longitude: Option<f64>,
    #[serde(default)]
    pub curtail: bool,
    #[serde(default = "d_min_order")]
    pub min_order_wh: u64,
    #[serde(default)]
    pub battery: Option<RawBattery>,
    /// The price for exporting to the utility now (a dynamic feed-in
    /// tariff): drives curtailment.
    #[serde(default)]
    pub export_price: Option<RawExportPrice>,
    /// Carrying the controller's decisions out on the devices.
    #[serde(default)]
    pub actuation: Option<RawActuation>,
}

/// `[controller.export_price]`: a fixed price, a schedule file, or both (the
/// fixed price applies before the schedule's first entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExportPrice {
    /// Signed µ/kWh (negative: exporting costs money).
    #[serde(default)]
    pub fixed: Option<i64>,
    /// One entry a line: `FROM PRICE` (RFC 3339 time, signed µ/kWh); read
    /// again whenever it changes.
    #[serde(default)]
    pub schedule_file: Option<PathBuf>,
}

/// `[controller.actuation]`: which devices the controller writes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActuation {
    #[serde(default)]
    pub enabled: bool,
    /// Modbus TCP address; default: `meter_agent.modbus`.
    #[serde(default)]
    pub modbus: Option<String>,
    /// The SunSpec inverter (model 123); default: `meter_agent.inverter_unit`.
    #[serde(default)]
    pub inverter_unit: Option<u8>,
    /// The SunSpec storage (model 124); default: the inverter's unit when
    /// `[controller.battery]` is set.
    #[serde(default)]
    pub battery_unit: Option<u8>,
    #[serde(default = "d_actuation_timeout")]
    pub timeout_ms: u64,
}

fn d_actuation_timeout() -> u64 {
    2_000
}

fn d_feed_in() -> u64 {
    80_000
}
fn d_retail() -> u64 {
    320_000
}
fn d_min_order() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBattery {
    pub capacity_wh: u64,
    pub reserve_wh: u64,
    pub max_power_w: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    #[serde(default)]
    pub enabled: bool,
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHomeAssistant {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "d_ha_prefix")]
    pub discovery_prefix: String,
    /// Home Assistant's own broker (usually its Mosquitto add-on).
    #[serde(default = "d_ha_host")]
    pub host: String,
    #[serde(default = "d_ha_port")]
    pub port: u16,
    /// TLS to Home Assistant's broker, with the same keys as `[broker]`.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "d_ha_every")]
    pub publish_every_ms: u64,
}

fn d_ha_prefix() -> String {
    "homeassistant".into()
}
fn d_ha_host() -> String {
    "127.0.0.1".into()
}
fn d_ha_port() -> u16 {
    1883
}
fn d_ha_every() -> u64 {
    10_000
}

// ------------------------------------------------------------ valid config

/// The household's identity on the gateway.
#[derive(Debug, Clone)]
pub struct HouseholdIdentity {
    pub id: HouseholdId,
    pub key_file: PathBuf,
    pub engine_key: ed25519_dalek::VerifyingKey,
}

/// The meter agent role, validated.
#[derive(Debug, Clone)]
pub struct AgentRole {
    pub meter: MeterId,
    pub modbus: SocketAddr,
    pub inverter_unit: u8,
    pub meter_unit: u8,
    pub poll_ms: u64,
    pub outbox_max: u64,
}

/// The controller role, validated.
#[derive(Debug, Clone)]
pub struct ControllerRole {
    pub strategy: crate::strategy::StrategyParams,
    /// Where the export price comes from (`None`: the fixed feed-in tariff
    /// applies and nothing is ever curtailed).
    pub export_price: Option<ExportPriceSource>,
    /// The devices the decisions are written to (`None`: only logged).
    pub actuator: Option<crate::actuate::ActuatorConfig>,
}

/// The highest export price magnitude accepted, µ/kWh (10 units per kWh).
pub const MAX_EXPORT_PRICE: i64 = 10_000_000;

/// Largest export-price schedule file read (a year of 15-minute entries is
/// about 1.4 MB).
pub const MAX_SCHEDULE_BYTES: u64 = 4 * 1024 * 1024;

/// The price for exporting to the utility over time: a dynamic feed-in
/// tariff, as a fixed price and/or a schedule file of `FROM PRICE` entries.
/// The schedule file is read while the configuration is validated, and again
/// by [`ExportPriceSource::reload`] whenever its modification time changes,
/// so that a day-ahead tariff can be written into it by another program
/// while the gateway runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPriceSource {
    /// Applies before the schedule's first entry, or always without one.
    pub fixed: Option<i64>,
    pub schedule_file: Option<PathBuf>,
    /// (from, signed µ/kWh), strictly increasing in time.
    pub schedule: Vec<(protocol::UnixMs, i64)>,
    modified: Option<std::time::SystemTime>,
}

impl ExportPriceSource {
    /// A fixed price and a schedule as data (no file).
    pub fn new(fixed: Option<i64>, schedule: Vec<(protocol::UnixMs, i64)>) -> ExportPriceSource {
        ExportPriceSource {
            fixed,
            schedule_file: None,
            schedule,
            modified: None,
        }
    }

    /// Reads `schedule_file` (the fixed price applies before its first
    /// entry). The error says file, line and why.
    pub fn from_file(fixed: Option<i64>, file: &Path) -> Result<ExportPriceSource, String> {
        let mut s = ExportPriceSource {
            fixed,
            schedule_file: Some(file.to_owned()),
            schedule: Vec::new(),
            modified: None,
        };
        s.reload()?;
        Ok(s)
    }

    /// The price in force at `t`: the last schedule entry that started at or
    /// before `t`, else the fixed price. Pure.
    pub fn price_at(&self, t: protocol::UnixMs) -> Option<i64> {
        let n = self.schedule.partition_point(|(from, _)| *from <= t);
        match n {
            0 => self.fixed,
            n => self.schedule.get(n - 1).map(|(_, p)| *p),
        }
    }

    /// Reads the schedule file again if it changed since the last read;
    /// `Ok(true)` when a new schedule was loaded. On error the previous
    /// schedule stays in force.
    pub fn reload(&mut self) -> Result<bool, String> {
        let Some(file) = &self.schedule_file else {
            return Ok(false);
        };
        let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let modified = meta
            .modified()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if self.modified == Some(modified) {
            return Ok(false);
        }
        if meta.len() > MAX_SCHEDULE_BYTES {
            return Err(format!(
                "{}: {} bytes, more than the {MAX_SCHEDULE_BYTES} an export-price schedule may have",
                file.display(),
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        self.schedule = parse_price_schedule(&text)
            .map_err(|(line, why)| format!("{}:{line}: {why}", file.display()))?;
        self.modified = Some(modified);
        Ok(true)
    }
}

/// Parses an export-price schedule: one entry a line, `FROM PRICE` separated
/// by blanks or a comma, FROM an RFC 3339 time (`2026-07-01T11:00:00Z`,
/// any offset) and PRICE signed µ/kWh (within ±[`MAX_EXPORT_PRICE`]);
/// blank lines and `#` comments are ignored; entries must be in strictly
/// increasing time. Errors carry the 1-based line. Pure.
pub fn parse_price_schedule(text: &str) -> Result<Vec<(protocol::UnixMs, i64)>, (usize, String)> {
    let mut out: Vec<(protocol::UnixMs, i64)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let mut parts = l
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty());
        let (Some(from), Some(price), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err((line, format!("expected `FROM PRICE`, found {l:?}")));
        };
        let t = chrono::DateTime::parse_from_rfc3339(from)
            .map_err(|e| (line, format!("{from:?} is not an RFC 3339 time: {e}")))?;
        let ms = u64::try_from(t.timestamp_millis())
            .map_err(|_| (line, format!("{from} is before 1970")))?;
        let price: i64 = price
            .parse()
            .map_err(|_| (line, format!("{price:?} is not an integer price in µ/kWh")))?;
        if !(-MAX_EXPORT_PRICE..=MAX_EXPORT_PRICE).contains(&price) {
            return Err((
                line,
                format!("{price} µ/kWh is outside ±{MAX_EXPORT_PRICE}"),
            ));
        }
        if out.last().is_some_and(|(prev, _)| prev.0 >= ms) {
            return Err((line, format!("{from} is not after the previous entry")));
        }
        out.push((protocol::UnixMs(ms), price));
    }
    Ok(out)
}

/// The engine role, validated.
#[derive(Debug, Clone)]
pub struct EngineRole {
    pub config: EngineConfig,
    pub key_file: PathBuf,
}

/// Home Assistant discovery, validated.
#[derive(Debug, Clone)]
pub struct HomeAssistantRole {
    pub discovery_prefix: String,
    pub host: String,
    pub port: u16,
    pub security: BrokerSecurity,
    pub publish_every_ms: u64,
}

/// A configuration that passed validation: every value is ready to use.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub file: PathBuf,
    pub grid: GridId,
    pub data_dir: PathBuf,
    pub interval_ms: u64,
    pub broker_host: String,
    pub broker_port: u16,
    pub security: BrokerSecurity,
    pub household: Option<HouseholdIdentity>,
    pub agent: Option<AgentRole>,
    pub controller: Option<ControllerRole>,
    pub engine: Option<EngineRole>,
    pub dashboard: Option<SocketAddr>,
    pub home_assistant: Option<HomeAssistantRole>,
}

impl GatewayConfig {
    /// The enabled roles, for logs and `config check`.
    pub fn roles(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if self.agent.is_some() {
            r.push("meter_agent");
        }
        if self.controller.is_some() {
            r.push("controller");
        }
        if self.engine.is_some() {
            r.push("engine");
        }
        if self.dashboard.is_some() {
            r.push("dashboard");
        }
        if self.home_assistant.is_some() {
            r.push("home_assistant");
        }
        r
    }
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)?.validate(&text, path)
}

/// Parses the text of a configuration file (no validation yet).
pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str::<RawConfig>(text).map_err(|e| {
        let line = e.span().map(|s| line_at(text, s.start));
        // serde names the offending key in the message for unknown and
        // missing fields; for type errors the span points at the value, so
        // the key is the text before `=` on that line.
        let key = e
            .span()
            .and_then(|s| {
                let line_start = text[..s.start.min(text.len())]
                    .rfind('\n')
                    .map_or(0, |i| i + 1);
                let rest = &text[line_start..];
                let l = rest.lines().next().unwrap_or("");
                l.split_once('=').map(|(k, _)| k.trim().to_owned())
            })
            .unwrap_or_default();
        let section = e
            .span()
            .map(|s| section_at(text, s.start))
            .unwrap_or_default();
        let key = match (section.is_empty(), key.is_empty()) {
            (_, true) => section,
            (true, false) => key,
            (false, false) => format!("{section}.{key}"),
        };
        ConfigError {
            file: path.to_owned(),
            line,
            key,
            message: e.message().trim().to_owned(),
        }
    })
}

/// 1-based line of byte offset `at`.
fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The `[section]` header in force at byte offset `at`.
fn section_at(text: &str, at: usize) -> String {
    let mut section = String::new();
    let mut pos = 0;
    for l in text.split_inclusive('\n') {
        if pos > at {
            break;
        }
        let t = l.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
        pos += l.len();
    }
    section
}

/// The line of dotted `key` in the file: its own line if written there, else
/// its section's header.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    let mut section_line = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            if current == section {
                section_line = Some(i + 1);
            }
            continue;
        }
        if current == section && t.split_once('=').is_some_and(|(k, _)| k.trim() == leaf) {
            return Some(i + 1);
        }
    }
    section_line
}

impl RawConfig {
    /// Checks every value; the first problem is returned, naming its key.
    pub fn validate(self, text: &str, path: &Path) -> Result<GatewayConfig, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: path.to_owned(),
            line: line_of(text, key),
            key: key.to_owned(),
            message,
        };
        let grid = GridId::new(self.grid.clone()).map_err(|e| err("grid", e.to_string()))?;
        if self.interval_ms < 60_000 || 86_400_000 % self.interval_ms != 0 {
            return Err(err(
                "interval_ms",
                "must be at least 60000 and divide a day".into(),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "must not be empty".into()));
        }

        // Broker.
        let b = &self.broker;
        if b.host.trim().is_empty() {
            return Err(err("broker.host", "must not be empty".into()));
        }
        if b.port == 0 {
            return Err(err("broker.port", "must be 1 to 65535".into()));
        }
        let settings = b.settings();
        let in_section = |section: &str, e: BrokerSecurityError| {
            let message = match &e.file {
                Some(f) => format!("{}: {}", f.display(), e.why),
                None => e.why.clone(),
            };
            err(&format!("{section}.{}", e.key), message)
        };
        settings.check().map_err(|e| in_section("broker", e))?;
        if !settings.has_credentials() && !is_loopback(&b.host) {
            return Err(err(
                "broker.tls",
                format!(
                    "a broker on {} needs credentials: a client certificate or username/password",
                    b.host
                ),
            ));
        }
        let security = BrokerSecurity::load(settings).map_err(|e| in_section("broker", e))?;

        let enabled = |e: bool| e;
        let agent_on = self
            .meter_agent
            .as_ref()
            .is_some_and(|a| enabled(a.enabled));
        let ctl_on = self.controller.as_ref().is_some_and(|c| enabled(c.enabled));

        // Household identity, needed by the household roles.
        let household = match (&self.household, agent_on || ctl_on) {
            (Some(h), _) => {
                let id = HouseholdId::new(h.id.clone())
                    .map_err(|e| err("household.id", e.to_string()))?;
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(h.engine_public_key.trim(), &mut bytes).map_err(|_| {
                    err(
                        "household.engine_public_key",
                        "must be 64 hex digits".into(),
                    )
                })?;
                let engine_key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    err(
                        "household.engine_public_key",
                        "not a valid ed25519 public key".into(),
                    )
                })?;
                if h.key_file.as_os_str().is_empty() {
                    return Err(err("household.key_file", "must not be empty".into()));
                }
                Some(HouseholdIdentity {
                    id,
                    key_file: h.key_file.clone(),
                    engine_key,
                })
            }
            (None, true) => {
                return Err(err(
                    "household",
                    "required by meter_agent and controller".into(),
                ));
            }
            (None, false) => None,
        };

        let agent = match &self.meter_agent {
            Some(a) if a.enabled => {
                let meter = MeterId::new(a.meter.clone())
                    .map_err(|e| err("meter_agent.meter", e.to_string()))?;
                let modbus: SocketAddr = a.modbus.parse().map_err(|_| {
                    err(
                        "meter_agent.modbus",
                        format!("{:?} is not an IP:PORT address", a.modbus),
                    )
                })?;
                if a.meter_unit == 0 || a.meter_unit > 247 {
                    return Err(err(
                        "meter_agent.meter_unit",
                        "must be a Modbus unit id 1 to 247".into(),
                    ));
                }
                if a.inverter_unit > 247 {
                    return Err(err(
                        "meter_agent.inverter_unit",
                        "must be 0 (none) or 1 to 247".into(),
                    ));
                }
                if a.poll_ms < 100 {
                    return Err(err("meter_agent.poll_ms", "must be at least 100".into()));
                }
                if a.outbox_max == 0 {
                    return Err(err("meter_agent.outbox_max", "must be positive".into()));
                }
                Some(AgentRole {
                    meter,
                    modbus,
                    inverter_unit: a.inverter_unit,
                    meter_unit: a.meter_unit,
                    poll_ms: a.poll_ms,
                    outbox_max: a.outbox_max,
                })
            }
            _ => None,
        };

        let controller = match &self.controller {
            Some(c) if c.enabled => {
                let strategy = strategy_params(c, self.interval_ms, &err)?;
                let export_price = match &c.export_price {
                    None => None,
                    Some(e) => Some(export_price(e, &err)?),
                };
                let actuator = match &c.actuation {
                    Some(a) if a.enabled => Some(actuator_config(
                        a,
                        c,
                        self.meter_agent.as_ref(),
                        self.interval_ms,
                        &err,
                    )?),
                    _ => None,
                };
                Some(ControllerRole {
                    strategy,
                    export_price,
                    actuator,
                })
            }
            _ => None,
        };

        let engine = match &self.engine {
            Some(t)
                if t.get("enabled")
                    .and_then(toml::Value::as_bool)
                    .unwrap_or(false) =>
            {
                Some(engine_role(t, &grid, &self, &err)?)
            }
            Some(t) => {
                if let Some(v) = t.get("enabled").filter(|v| !v.is_bool()) {
                    return Err(err(
                        "engine.enabled",
                        format!("expected true or false, found {v}"),
                    ));
                }
                None
            }
            None => None,
        };

        let dashboard = match &self.dashboard {
            Some(d) if d.enabled => {
                let addr: SocketAddr = d.listen.parse().map_err(|_| {
                    err(
                        "dashboard.listen",
                        format!("{:?} is not an IP:PORT address", d.listen),
                    )
                })?;
                if engine.is_none() {
                    return Err(err(
                        "dashboard.enabled",
                        "the dashboard reads the clearing engine's database: enable [engine] on this gateway".into(),
                    ));
                }
                Some(addr)
            }
            _ => None,
        };

        let home_assistant = match &self.home_assistant {
            Some(h) if h.enabled => {
                if household.is_none() {
                    return Err(err(
                        "home_assistant.enabled",
                        "needs a [household] on this gateway".into(),
                    ));
                }
                if h.discovery_prefix.is_empty() || h.discovery_prefix.contains(['+', '#']) {
                    return Err(err(
                        "home_assistant.discovery_prefix",
                        "must be a plain topic prefix".into(),
                    ));
                }
                if h.port == 0 {
                    return Err(err("home_assistant.port", "must be 1 to 65535".into()));
                }
                if h.publish_every_ms < 1_000 {
                    return Err(err(
                        "home_assistant.publish_every_ms",
                        "must be at least 1000".into(),
                    ));
                }
                let ha_settings = protocol::BrokerSecurity {
                    tls: h.tls,
                    ca_file: h.ca_file.clone(),
                    cert_file: h.cert_file.clone(),
                    key_file: h.key_file.clone(),
                    username: h.username.clone(),
                    password_file: h.password_file.clone(),
                };
                ha_settings
                    .check()
                    .map_err(|e| in_section("home_assistant", e))?;
                let security = BrokerSecurity::load(ha_settings)
                    .map_err(|e| in_section("home_assistant", e))?;
                Some(HomeAssistantRole {
                    discovery_prefix: h.discovery_prefix.clone(),
                    host: h.host.clone(),
                    port: h.port,
                    security,
                    publish_every_ms: h.publish_every_ms,
                })
            }
            _ => None,
        };

        let cfg = GatewayConfig {
            file: path.to_owned(),
            grid,
            data_dir: self.data_dir.clone(),
            interval_ms: self.interval_ms,
            broker_host: b.host.clone(),
            broker_port: b.port,
            security,
            household,
            agent,
            controller,
            engine,
            dashboard,
            home_assistant,
        };
        if cfg.roles().is_empty() {
            return Err(err(
                "",
                "no role is enabled (meter_agent, controller, engine, dashboard, home_assistant)"
                    .into(),
            ));
        }
        Ok(cfg)
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

fn export_price(
    e: &RawExportPrice,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ExportPriceSource, ConfigError> {
    if let Some(f) = e.fixed
        && !(-MAX_EXPORT_PRICE..=MAX_EXPORT_PRICE).contains(&f)
    {
        return Err(err(
            "controller.export_price.fixed",
            format!("{f} µ/kWh is outside ±{MAX_EXPORT_PRICE}"),
        ));
    }
    match &e.schedule_file {
        Some(file) => ExportPriceSource::from_file(e.fixed, file)
            .map_err(|why| err("controller.export_price.schedule_file", why)),
        None if e.fixed.is_some() => Ok(ExportPriceSource::new(e.fixed, Vec::new())),
        None => Err(err(
            "controller.export_price",
            "needs `fixed` (signed µ/kWh) and/or `schedule_file`".into(),
        )),
    }
}

fn actuator_config(
    a: &RawActuation,
    c: &RawController,
    agent: Option<&RawAgent>,
    interval_ms: u64,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::actuate::ActuatorConfig, ConfigError> {
    if !c.curtail && c.battery.is_none() {
        return Err(err(
            "controller.actuation.enabled",
            "nothing to carry out: set controller.curtail = true and/or [controller.battery]"
                .into(),
        ));
    }
    let modbus = match (&a.modbus, agent) {
        (Some(m), _) => ("controller.actuation.modbus", m),
        (None, Some(ag)) => ("meter_agent.modbus", &ag.modbus),
        (None, None) => {
            return Err(err(
                "controller.actuation.modbus",
                "required without a [meter_agent] section".into(),
            ));
        }
    };
    let addr: SocketAddr = modbus.1.parse().map_err(|_| {
        err(
            modbus.0,
            format!("{:?} is not an IP:PORT address", modbus.1),
        )
    })?;
    let unit_ok = |u: u8| (1..=247).contains(&u);
    let inverter_unit = match (a.inverter_unit, agent.map(|ag| ag.inverter_unit)) {
        (Some(u), _) if unit_ok(u) => u,
        (Some(_), _) => {
            return Err(err(
                "controller.actuation.inverter_unit",
                "must be a Modbus unit id 1 to 247".into(),
            ));
        }
        (None, Some(u)) if unit_ok(u) => u,
        (None, _) => {
            return Err(err(
                "controller.actuation.inverter_unit",
                "required (meter_agent.inverter_unit names no inverter)".into(),
            ));
        }
    };
    let battery_unit = match a.battery_unit {
        Some(u) if unit_ok(u) => Some(u),
        Some(_) => {
            return Err(err(
                "controller.actuation.battery_unit",
                "must be a Modbus unit id 1 to 247".into(),
            ));
        }
        None => c.battery.map(|_| inverter_unit),
    };
    if !(100..=60_000).contains(&a.timeout_ms) {
        return Err(err(
            "controller.actuation.timeout_ms",
            "must be 100 to 60000".into(),
        ));
    }
    Ok(crate::actuate::ActuatorConfig {
        transport: meter_agent::link::Transport::Tcp(addr),
        inverter_unit,
        battery_unit,
        timeout: std::time::Duration::from_millis(a.timeout_ms),
        revert_s: crate::actuate::ActuatorConfig::revert_for_interval(interval_ms),
    })
}

fn strategy_params(
    c: &RawController,
    interval_ms: u64,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::strategy::StrategyParams, ConfigError> {
    if c.feed_in_tariff > c.retail_tariff {
        return Err(err(
            "controller.feed_in_tariff",
            "must not exceed controller.retail_tariff".into(),
        ));
    }
    if c.min_sell_price > c.retail_tariff {
        return Err(err(
            "controller.min_sell_price",
            format!(
                "{} is above the retail tariff {}: nobody would ever buy",
                c.min_sell_price, c.retail_tariff
            ),
        ));
    }
    if c.max_buy_price < c.feed_in_tariff {
        return Err(err(
            "controller.max_buy_price",
            format!(
                "{} is below the feed-in tariff {}: no neighbour would ever sell",
                c.max_buy_price, c.feed_in_tariff
            ),
        ));
    }
    let location = match (c.latitude, c.longitude) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(
                "controller.longitude",
                "required with controller.latitude".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "controller.latitude",
                "required with controller.longitude".into(),
            ));
        }
        (Some(lat), Some(lon)) => {
            if !(-90.0..=90.0).contains(&lat) {
                return Err(err(
                    "controller.latitude",
                    format!("{lat} is not within -90 to 90 degrees"),
                ));
            }
            if !(-180.0..=180.0).contains(&lon) {
                return Err(err(
                    "controller.longitude",
                    format!("{lon} is not within -180 to 180 degrees"),
                ));
            }
            // In range, so the conversion cannot overflow.
            Some(Location {
                lat_millideg: (lat * 1000.0).round() as i32,
                lon_millideg: (lon * 1000.0).round() as i32,
            })
        }
    };
    let battery = match c.battery {
        None => None,
        Some(b) => {
            if b.capacity_wh == 0 {
                return Err(err(
                    "controller.battery.capacity_wh",
                    "must be positive".into(),
                ));
            }
            if b.reserve_wh > b.capacity_wh {
                return Err(err(
                    "controller.battery.reserve_wh",
                    "must not exceed capacity_wh".into(),
                ));
            }
            if b.max_power_w == 0 {
                return Err(err(
                    "controller.battery.max_power_w",
                    "must be positive".into(),
                ));
            }
            Some(BatteryParams {
                capacity_wh: b.capacity_wh,
                reserve_wh: b.reserve_wh,
                max_power_w: b.max_power_w,
            })
        }
    };
    Ok(crate::strategy::StrategyParams {
        min_sell_price: MicroPerKwh(c.min_sell_price),
        max_buy_price: MicroPerKwh(c.max_buy_price),
        feed_in_tariff: MicroPerKwh(c.feed_in_tariff),
        retail_tariff: MicroPerKwh(c.retail_tariff),
        interval_ms,
        min_order_wh: c.min_order_wh,
        window_ms: interval_ms / 3,
        location,
        battery,
        curtail: c.curtail,
    })
}

fn engine_role(
    table: &toml::Table,
    grid: &GridId,
    raw: &RawConfig,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<EngineRole, ConfigError> {
    let mut t = table.clone();
    t.remove("enabled");
    let key_file = match t.remove("key_file") {
        Some(toml::Value::String(s)) if !s.is_empty() => PathBuf::from(s),
        Some(_) => return Err(err("engine.key_file", "must be a file path".into())),
        None => {
            return Err(err(
                "engine.key_file",
                "required with engine.enabled = true".into(),
            ));
        }
    };
    // The gateway's own grid, interval and broker unless the section overrides them.
    let defaults: [(&str, toml::Value); 4] = [
        ("grid", toml::Value::String(grid.to_string())),
        (
            "interval_ms",
            toml::Value::Integer(i64::try_from(raw.interval_ms).unwrap_or(i64::MAX)),
        ),
        ("broker_host", toml::Value::String(raw.broker.host.clone())),
        (
            "broker_port",
            toml::Value::Integer(i64::from(raw.broker.port)),
        ),
    ];
    for (k, v) in defaults {
        t.entry(k.to_owned()).or_insert(v);
    }
    // The engine connects natively with the gateway's own broker security
    // unless the section gives its own `[engine.broker_security]`.
    if !t.contains_key("broker_security") {
        let own = toml::Value::try_from(raw.broker.settings())
            .map_err(|e| err("broker", format!("cannot pass the broker settings on: {e}")))?;
        t.insert("broker_security".into(), own);
    }
    if !t.contains_key("db_path") {
        let db = raw.data_dir.join("engine.db");
        t.insert(
            "db_path".into(),
            toml::Value::String(db.display().to_string()),
        );
    }
    let config: EngineConfig = t.try_into().map_err(|e: toml::de::Error| {
        // serde's message names the field ("unknown field `x`"); point at the section.
        let msg = e.message().trim().to_owned();
        let key = msg
            .split('`')
            .nth(1)
            .map(|k| format!("engine.{k}"))
            .unwrap_or_else(|| "engine".to_owned());
        err(&key, msg)
    })?;
    let to_key = |e: clearing::ConfigError| match &e {
        clearing::ConfigError::Invalid { key, why } => err(&format!("engine.{key}"), why.clone()),
        clearing::ConfigError::BadKey { .. } => err("engine.households.public_key", e.to_string()),
        clearing::ConfigError::BrokerSecurity(b) => {
            let message = match &b.file {
                Some(f) => format!("{}: {}", f.display(), b.why),
                None => b.why.clone(),
            };
            err(&format!("engine.broker_security.{}", b.key), message)
        }
    };
    config.validate().map_err(to_key)?;
    // The engine's own broker files, read now rather than at start.
    config.load_broker_security().map_err(to_key)?;
    Ok(EngineRole { config, key_file })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGINE_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn good() -> String {
        format!(
            r#"
grid = "lindenweg"
data_dir = "/var/lib/voltshare"

[broker]
host = "127.0.0.1"
port = 1883

[household]
id = "h07"
key_file = "/var/lib/voltshare/household.key"
engine_public_key = "{ENGINE_PK}"

[meter_agent]
enabled = true
meter = "h07-main"
modbus = "192.168.1.50:502"
inverter_unit = 1

[controller]
enabled = true
min_sell_price = 100000
max_buy_price = 300000
latitude = 51.45
longitude = 7.01
"#
        )
    }

    fn check(text: &str) -> Result<GatewayConfig, ConfigError> {
        let p = Path::new("gw.toml");
        parse(text, p)?.validate(text, p)
    }

    #[test]
    fn good_config_validates() {
        let cfg = check(&good()).expect("valid");
        assert_eq!(cfg.roles(), vec!["meter_agent", "controller"]);
        let s = cfg.controller.expect("controller").strategy;
        assert_eq!(
            s.location,
            Some(Location {
                lat_millideg: 51_450,
                lon_millideg: 7_010
            })
        );
        assert_eq!(s.window_ms, 300_000);
    }

    /// (edit of the good file, expected key, expected line, words in the message).
    #[test]
    fn table_errors_name_the_key() {
        let cases: Vec<(&str, &str, &str, Option<usize>, &str)> = vec![
            (
                "max_buy_price = 300000",
                "max_buy_pric = 300000",
                "controller.max_buy_pric",
                Some(23),
                "unknown field `max_buy_pric`",
            ),
            (
                "port = 1883",
                "port = \"x\"",
                "broker.port",
                Some(7),
                "invalid type",
            ),
            (
                "max_buy_price = 300000",
                "max_buy_price = 1000",
                "controller.max_buy_price",
                Some(23),
                "below the feed-in",
            ),
            (
                "latitude = 51.45",
                "latitude = 151.45",
                "controller.latitude",
                Some(24),
                "-90 to 90",
            ),
            (
                "modbus = \"192.168.1.50:502\"",
                "modbus = \"gateway\"",
                "meter_agent.modbus",
                Some(17),
                "IP:PORT",
            ),
            (
                "id = \"h07\"",
                "id = \"h 07\"",
                "household.id",
                Some(10),
                "",
            ),
            (
                ENGINE_PK,
                "abc",
                "household.engine_public_key",
                Some(12),
                "64 hex digits",
            ),
            (
                "port = 1883",
                "port = 1883\ntls = true",
                "broker.ca_file",
                Some(5),
                "required with tls",
            ),
            (
                "host = \"127.0.0.1\"",
                "host = \"mqtt.example.org\"",
                "broker.tls",
                Some(5),
                "needs credentials",
            ),
        ];
        for (from, to, key, line, words) in cases {
            let text = good().replacen(from, to, 1);
            let e = check(&text).expect_err(to);
            assert_eq!(e.key, key, "{to}: {e}");
            assert_eq!(e.line, line, "{to}: {e}");
            assert!(e.message.contains(words), "{to}: {e}");
            assert!(e.to_string().starts_with("gw.toml:"), "{e}");
        }
    }

    /// The engine connects with the gateway's `[broker]` security unless
    /// its section has its own, whose files are read while validating.
    #[test]
    fn engine_inherits_or_overrides_broker_security() {
        let dir = std::env::temp_dir().join(format!("voltshare-cfg-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pw = dir.join("pw");
        std::fs::write(&pw, "secret\n").expect("password file");
        let base = good().replacen(
            "port = 1883",
            &format!(
                "port = 1883\nusername = \"h07\"\npassword_file = \"{}\"",
                pw.display()
            ),
            1,
        );
        let text = format!("{base}\n[engine]\nenabled = true\nkey_file = \"k\"\n");
        let cfg = check(&text).expect("engine with the broker's credentials");
        let sec = cfg.engine.expect("engine").config.broker_security;
        assert_eq!(sec.username.as_deref(), Some("h07"));
        assert_eq!(sec.password_file.as_deref(), Some(pw.as_path()));
        assert_eq!(cfg.security.settings, sec);

        let text = format!(
            "{base}\n[engine]\nenabled = true\nkey_file = \"k\"\n[engine.broker_security]\ntls = true\nca_file = \"{}\"\n",
            dir.join("missing-ca.crt").display()
        );
        let e = check(&text).expect_err("missing CA of the engine");
        assert_eq!(e.key, "engine.broker_security.ca_file", "{e}");
        assert!(e.message.contains("missing-ca.crt"), "{e}");
        assert!(!e.message.contains("key `"), "the key is named once: {e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn engine_section_uses_engine_rules() {
        let text = format!(
            "{}\n[engine]\nenabled = true\nkey_file = \"/var/lib/voltshare/engine.key\"\ninterval_ms = 0\n",
            good()
        );
        let e = check(&text).expect_err("interval 0");
        assert_eq!(e.key, "engine.interval_ms", "{e}");
        let text = format!(
            "{}\n[engine]\nenabled = true\nkey_file = \"k\"\nbogus = 1\n",
            good()
        );
        assert_eq!(check(&text).expect_err("unknown").key, "engine.bogus");
        let text = format!(
            "{}\n[engine]\nenabled = true\nkey_file = \"k\"\n[dashboard]\nenabled = true\nlisten = \"127.0.0.1:8080\"\n",
            good()
        );
        let cfg = check(&text).expect("engine + dashboard");
        assert_eq!(
            cfg.engine.expect("engine").config.db_path,
            PathBuf::from("/var/lib/voltshare/engine.db")
        );
        let text = format!(
            "{}\n[dashboard]\nenabled = true\nlisten = \"127.0.0.1:8080\"\n",
            good()
        );
        assert_eq!(
            check(&text).expect_err("no engine").key,
            "dashboard.enabled"
        );
    }

    /// `[controller.export_price]` and `[controller.actuation]`: defaults
    /// from `[meter_agent]`, and errors naming the key (and the schedule
    /// file's line).
    #[test]
    fn export_price_and_actuation() {
        let dir = std::env::temp_dir().join(format!("voltshare-cfg-price-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sched = dir.join("prices.txt");
        std::fs::write(
            &sched,
            "# day-ahead feed-in\n2021-06-21T10:00:00Z  -20000\n2021-06-21T13:00:00+02:00, 5000 # back\n",
        )
        .expect("schedule");
        let base = good();
        let with = |extra: &str| format!("{base}curtail = true\n{extra}");
        let text = with(&format!(
            "[controller.export_price]\nfixed = 30000\nschedule_file = \"{}\"\n[controller.actuation]\nenabled = true\n",
            sched.display()
        ));
        let c = check(&text).expect("valid").controller.expect("controller");
        let ep = c.export_price.expect("export price");
        assert_eq!(ep.schedule.len(), 2);
        assert_eq!(
            ep.price_at(protocol::UnixMs(1_624_269_599_999)),
            Some(30_000)
        );
        assert_eq!(
            ep.price_at(protocol::UnixMs(1_624_269_600_000)),
            Some(-20_000)
        );
        assert_eq!(
            ep.price_at(protocol::UnixMs(1_624_269_600_000 + 3_600_000)),
            Some(5_000)
        );
        let a = c.actuator.expect("actuator");
        assert_eq!(a.inverter_unit, 1);
        assert_eq!(a.battery_unit, None);
        assert_eq!(
            a.transport,
            meter_agent::link::Transport::Tcp("192.168.1.50:502".parse().expect("addr"))
        );
        assert_eq!(a.revert_s, 1_800);

        let bad = dir.join("bad.txt");
        std::fs::write(
            &bad,
            "2021-06-21T10:00:00Z -20000\n2021-06-21T09:00:00Z 1\n",
        )
        .expect("schedule");
        let huge = dir.join("huge.txt");
        let line = "2021-06-21T10:00:00Z -20000\n";
        let lines = usize::try_from(MAX_SCHEDULE_BYTES).expect("fits") / line.len() + 1;
        std::fs::write(&huge, line.repeat(lines)).expect("schedule");
        let cases: Vec<(String, &str, &str)> = vec![
            (
                with(&format!(
                    "[controller.export_price]\nschedule_file = \"{}\"\n",
                    huge.display()
                )),
                "controller.export_price.schedule_file",
                "more than the 4194304",
            ),
            (
                with("[controller.export_price]\n"),
                "controller.export_price",
                "needs `fixed`",
            ),
            (
                with("[controller.export_price]\nfixed = -20000000\n"),
                "controller.export_price.fixed",
                "outside",
            ),
            (
                with(&format!(
                    "[controller.export_price]\nschedule_file = \"{}\"\n",
                    bad.display()
                )),
                "controller.export_price.schedule_file",
                "bad.txt:2: 2021-06-21T09:00:00Z is not after",
            ),
            (
                with(&format!(
                    "[controller.export_price]\nschedule_file = \"{}\"\n",
                    dir.join("missing.txt").display()
                )),
                "controller.export_price.schedule_file",
                "missing.txt",
            ),
            (
                good() + "[controller.actuation]\nenabled = true\n",
                "controller.actuation.enabled",
                "nothing to carry out",
            ),
            (
                with("[controller.actuation]\nenabled = true\ninverter_unit = 0\n"),
                "controller.actuation.inverter_unit",
                "1 to 247",
            ),
            (
                with("[controller.actuation]\nenabled = true\nmodbus = \"inverter\"\n"),
                "controller.actuation.modbus",
                "IP:PORT",
            ),
            (
                with("[controller.actuation]\nenabled = true\ntimeout_ms = 5\n"),
                "controller.actuation.timeout_ms",
                "100 to 60000",
            ),
        ];
        for (text, key, words) in cases {
            let e = check(&text).expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(words), "{e}");
            assert!(e.line.is_some(), "{e}");
        }
        let t = "2021-06-21T10:00:00Z 1 2\n";
        assert_eq!(parse_price_schedule(t).expect_err("3 fields").0, 1);
        assert!(
            parse_price_schedule("\n# only a comment\n")
                .expect("empty")
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Home Assistant's broker takes the same TLS keys as `[broker]`,
    /// checked and read while validating.
    #[test]
    fn home_assistant_broker_may_use_tls() {
        let ha = "[home_assistant]\nenabled = true\nhost = \"ha.local\"\nport = 8883\ntls = true\n";
        let e = check(&format!("{}{ha}", good())).expect_err("no CA");
        assert_eq!(e.key, "home_assistant.ca_file", "{e}");
        assert!(e.message.contains("required with tls"), "{e}");
        let e = check(&format!(
            "{}{ha}ca_file = \"/nonexistent/ha-ca.crt\"\n",
            good()
        ))
        .expect_err("missing CA file");
        assert_eq!(e.key, "home_assistant.ca_file", "{e}");
        assert!(e.message.contains("ha-ca.crt"), "{e}");
        let e = check(&format!(
            "{}{ha}ca_file = \"/nonexistent/ha-ca.crt\"\ncert_file = \"c.crt\"\n",
            good()
        ))
        .expect_err("cert without key");
        assert_eq!(e.key, "home_assistant.key_file", "{e}");
        // Without TLS, as before.
        let cfg = check(&format!("{}[home_assistant]\nenabled = true\n", good())).expect("plain");
        assert!(!cfg.home_assistant.expect("ha").security.is_tls());
    }
}
