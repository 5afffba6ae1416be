//! The meter side of Voltshare: device capabilities, Modbus transports,
//! SunSpec and register-map devices, a fault-injecting device simulator, the
//! disk outbox and the agent task that signs readings and publishes them over
//! MQTT until the clearing engine acknowledges them.
//!
//! Code map:
//! - [`capability`]: one trait per device capability (grid meter, PV
//!   inverter, battery, power limit) with units and signs, and the in-memory
//!   simulator of each.
//! - [`link`]: Modbus TCP and RTU links (timeouts, reconnect with backoff,
//!   serialized requests, errors by layer).
//! - [`sunspec_dev`]: SunSpec discovery and typed reads through the `sunspec`
//!   crate (models 1, 101–103, 111–113, 124, 201–204, 211–214).
//! - [`regmap`]: register maps as TOML data; shipped maps in `maps/`.
//! - [`devices`]: the configured devices of one metering point.
//! - [`counters`]: the counter guard (never backwards, no impossible jumps).
//! - [`sim`]: a seeded household model (PV from measured irradiance, load
//!   from the BDEW H0 profile) with exact integer energy counters.
//! - [`simulator`]: Modbus TCP/RTU devices for every supported model and
//!   shipped map, with fault injection.
//! - [`proxy`]: the Modbus TCP proxy that shares a single-client device.
//! - [`outbox`]: the SQLite outbox (sequence numbers, acks, dead letters,
//!   counter baselines, quarantine).
//! - [`agent`]: the task that ties devices, guard, outbox and MQTT together.
//! - [`bench`]: read-rate measurements for `voltshare bench agent`.
//!
//! Architecture invariants: time comes only from the injected
//! `protocol::Clock`; every value that leaves this crate is an integer in
//! the units of `protocol::units`; a failed read, a timeout or a "not
//! implemented" register never becomes a number; counters that go backwards
//! are quarantined, never published.

pub mod agent;
pub mod bench;
pub mod capability;
pub mod counters;
pub mod devices;
pub mod link;
pub mod outbox;
pub mod proxy;
pub mod regmap;
pub mod sim;
pub mod simulator;
pub mod sunspec_dev;

pub use agent::{AgentConfig, AgentError, AgentStats, run_agent, run_agent_with};
pub use outbox::{Outbox, OutboxError};
pub use sim::SimHousehold;
pub use simulator::{SimFaults, spawn_simulator, spawn_simulator_with_faults};
