//! The one place in the workspace that reads a clock.
//!
//! Everything else takes `now` as an argument or holds an `Arc<dyn Clock>`.
//! `clippy.toml` bans direct reads of `SystemTime::now`/`Instant::now`
//! elsewhere. Nothing else in this crate calls these implementations: the
//! protocol functions stay pure.
//!
//! A [`ScaledClock`] runs simulated time faster than real time (the demo shows
//! a whole day in minutes); [`Clock::real_duration`] converts a span of
//! simulated time into the real time to sleep for it.

use crate::units::UnixMs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, UTC Unix milliseconds (simulated for a scaled clock).
    fn now(&self) -> UnixMs;
    /// The real time that `sim_ms` milliseconds of this clock's time take.
    fn real_duration(&self, sim_ms: u64) -> Duration;
    /// How many milliseconds of this clock pass per real millisecond.
    fn speed(&self) -> u64 {
        1
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> UnixMs {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMs(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    fn real_duration(&self, sim_ms: u64) -> Duration {
        Duration::from_millis(sim_ms)
    }
}

/// Simulated time that starts at `origin` and runs `speed` times faster than
/// real time.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    origin: UnixMs,
    started: std::time::Instant,
    speed: u64,
}

impl ScaledClock {
    /// A clock that reads `origin` now and runs `speed`× real time.
    #[allow(clippy::disallowed_methods)]
    pub fn new(origin: UnixMs, speed: u64) -> ScaledClock {
        ScaledClock {
            origin,
            started: std::time::Instant::now(),
            speed: speed.max(1),
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> UnixMs {
        let real = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        UnixMs(
            self.origin
                .0
                .saturating_add(real.saturating_mul(self.speed)),
        )
    }
    fn real_duration(&self, sim_ms: u64) -> Duration {
        Duration::from_micros(sim_ms.saturating_mul(1000) / self.speed)
    }
    fn speed(&self) -> u64 {
        self.speed
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A manual clock reading `t`.
    pub fn new(t: UnixMs) -> ManualClock {
        ManualClock(AtomicU64::new(t.0))
    }
    /// Sets the time.
    pub fn set(&self, t: UnixMs) {
        self.0.store(t.0, Ordering::SeqCst);
    }
    /// Moves the time forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMs {
        UnixMs(self.0.load(Ordering::SeqCst))
    }
    fn real_duration(&self, sim_ms: u64) -> Duration {
        Duration::from_millis(sim_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_faster() {
        let c = ScaledClock::new(UnixMs(1_000_000), 90);
        assert!(c.now().0 >= 1_000_000);
        assert_eq!(c.real_duration(900_000), Duration::from_secs(10));
        let m = ManualClock::new(UnixMs(5));
        m.advance(10);
        assert_eq!(m.now(), UnixMs(15));
    }
}

/// Measures elapsed real time, for benchmarks and metrics only (never for
/// protocol decisions, which use a [`Clock`]).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts measuring.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }
    /// Real time since start.
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}
