//! Shared helpers for the end-to-end and fault-injection tests.
//!
//! - [`report`]: the suite's JSON report (`target/fault-report.json`), one
//!   section per test, merged atomically and printed.
//! - [`procs`]: the real `voltshare` binary (located next to the test
//!   executable, built if missing or stale), child processes that are
//!   killed with SIGKILL, and private Mosquitto brokers on loopback ports.
//! - [`sender`]: a test household that signs readings and orders and keeps
//!   them in an in-memory outbox until the engine's signed ack arrives, as
//!   the meter agent and controller do.
//! - [`chain`]: a real Anvil with the contracts deployed and funded, and a
//!   TCP proxy in front of its RPC endpoint that can be cut.
//! - [`util`]: keys, a seeded PRNG, temporary directories, the long-run
//!   switch (`VOLTSHARE_LONG=1`).

pub mod agents;
pub mod chain;
pub mod checks;
pub mod engine;
pub mod orders;
pub mod procs;
pub mod report;
pub mod sender;
pub mod util;
