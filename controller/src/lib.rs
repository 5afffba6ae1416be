//! The household's brain and the `voltshare` command: the trading strategy,
//! the household controller task, and the composition of roles (meter agent,
//! controller, clearing engine, dashboard) into one process, including the
//! simulated microgrid of `voltshare demo`.

pub mod actuate;
pub mod bench;
pub mod broker;
pub mod chain_cli;
pub mod cli;
pub mod config;
pub mod db_cli;
pub mod demo;
pub mod enrol_cli;
pub mod gateway;
pub mod ha;
pub mod household;
pub mod ingest_bench;
pub mod keys;
pub mod meters_cli;
pub mod strategy;
pub mod strategy_bench;
pub mod web_cli;
