//! The decoders of Voltshare as fuzz harnesses: each function takes
//! arbitrary bytes, runs one decoder on them and checks what must hold for
//! any input: no panic, no unbounded allocation (every decoder caps its
//! input size or nesting before it allocates), and for what decodes, a
//! round trip back to the same value.
//!
//! One module per decoder, each needing only the crate it decodes for:
//! [`wire`] needs `protocol`; [`regmap`] needs `meter-agent` (feature
//! `regmap`); [`config`] needs `controller` (feature `config`). Both
//! features are on by default; `--no-default-features` builds the three
//! wire targets on `protocol` alone.
//!
//! The fuzz targets in `fuzz_targets/` call these; so does the test
//! `tests/tests/fault_fuzz_corpus.rs` (which includes these files by path),
//! so that CI runs every seed and a few thousand mutations of them on stable
//! Rust, without libFuzzer.

pub mod wire;
pub use wire::{envelope, order, reading};

#[cfg(feature = "regmap")]
pub mod regmap;
#[cfg(feature = "regmap")]
pub use regmap::regmap;

#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "config")]
pub use config::config;
