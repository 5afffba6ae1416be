//! Energy counters never go backwards: the guard that decides whether a
//! poll's counters may be published as a valid reading.
//!
//! A pure state machine (no IO, no clock: the poll time is an argument).
//! Each counter is compared with the last accepted value:
//! - a **decrease** (a reset to zero, a meter swap, a decoding error) is
//!   flagged;
//! - an **impossible jump**, more energy than the connection's maximum power
//!   could have moved in the elapsed time (plus a small allowance for the
//!   counter's resolution), is flagged.
//!
//! A flagged poll is quarantined: the agent keeps it locally for inspection
//! and does not publish it, and the baseline stays where it was, so a single
//! glitch does not poison the next reading. A counter that really restarted
//! stays quarantined until an operator accepts the new baseline
//! ([`CounterGuard::rebaseline`]); settlement never sees a counter run
//! backwards.

use protocol::UnixMs;

/// Limits of plausibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// The most power any counted flow can carry (the grid connection), W.
    pub max_power_w: u64,
    /// Allowance for counter resolution (a coarse scale factor or a kWh
    /// register rounds in steps), Wh.
    pub slack_wh: u64,
}

impl Default for GuardLimits {
    fn default() -> Self {
        // 3 × 63 A at 230 V is about 43.5 kW; 100 kW leaves room for any
        // household connection. 10 Wh covers a 0.01 kWh register step.
        GuardLimits {
            max_power_w: 100_000,
            slack_wh: 10,
        }
    }
}

/// Why a poll was quarantined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub enum Quarantine {
    #[error("{counter} went backwards: {before} Wh -> {now} Wh")]
    Decrease {
        counter: &'static str,
        before: u64,
        now: u64,
    },
    #[error("{counter} jumped by {delta} Wh in {elapsed_ms} ms (at most {max} Wh possible)")]
    Jump {
        counter: &'static str,
        delta: u64,
        elapsed_ms: u64,
        max: u64,
    },
}

/// The last accepted counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    pub at: UnixMs,
    /// (name, value) of each guarded counter, in a fixed order: import,
    /// export, pv (absent counters are `None`).
    pub import_wh: u64,
    pub export_wh: u64,
    pub pv_wh: Option<u64>,
}

/// The guard of one metering point.
#[derive(Debug, Clone, Default)]
pub struct CounterGuard {
    limits: GuardLimits,
    last: Option<Baseline>,
}

impl CounterGuard {
    pub fn new(limits: GuardLimits, last: Option<Baseline>) -> CounterGuard {
        CounterGuard { limits, last }
    }

    /// The last accepted counters.
    pub fn baseline(&self) -> Option<Baseline> {
        self.last
    }

    /// Accepts `now` as the new baseline whatever it is (an operator's
    /// decision after a meter swap).
    pub fn rebaseline(&mut self, now: Baseline) {
        self.last = Some(now);
    }

    /// Checks a poll; on success it becomes the baseline.
    pub fn check(&mut self, now: Baseline) -> Result<(), Quarantine> {
        if let Some(last) = self.last {
            let elapsed_ms = now.at.0.saturating_sub(last.at.0);
            // Wh possible at max power over the elapsed time, rounded up.
            let max =
                (u128::from(self.limits.max_power_w) * u128::from(elapsed_ms)).div_ceil(3_600_000);
            let max = u64::try_from(max)
                .unwrap_or(u64::MAX)
                .saturating_add(self.limits.slack_wh);
            let pairs = [
                ("import_wh", Some(last.import_wh), Some(now.import_wh)),
                ("export_wh", Some(last.export_wh), Some(now.export_wh)),
                ("pv_wh", last.pv_wh, now.pv_wh),
            ];
            for (counter, before, cur) in pairs {
                let (Some(before), Some(cur)) = (before, cur) else {
                    continue;
                };
                if cur < before {
                    return Err(Quarantine::Decrease {
                        counter,
                        before,
                        now: cur,
                    });
                }
                let delta = cur - before;
                if delta > max {
                    return Err(Quarantine::Jump {
                        counter,
                        delta,
                        elapsed_ms,
                        max,
                    });
                }
            }
        }
        self.last = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(at: u64, i: u64, e: u64, pv: Option<u64>) -> Baseline {
        Baseline {
            at: UnixMs(at),
            import_wh: i,
            export_wh: e,
            pv_wh: pv,
        }
    }

    #[test]
    fn table_of_polls() {
        let mut g = CounterGuard::new(GuardLimits::default(), None);
        // (poll, accepted?)
        let table = [
            (b(0, 1000, 500, Some(200)), true),
            (b(1000, 1001, 500, Some(201)), true),
            // Reset to zero: quarantined, baseline kept.
            (b(2000, 0, 0, Some(0)), false),
            // Import moves 27.8 Wh max in 1 s at 100 kW (+10 slack).
            (b(3000, 1001 + 1000, 500, Some(201)), false),
            (b(3000, 1001 + 30, 500, Some(201)), true),
            // PV alone goes backwards.
            (b(4000, 1031, 500, Some(200)), false),
            // An hour later (100 kWh possible), 150 kWh is too much, 90 fine.
            (b(3_604_000, 151_031, 500, Some(201)), false),
            (b(3_604_000, 91_031, 500, Some(201)), true),
        ];
        for (i, (poll, ok)) in table.into_iter().enumerate() {
            assert_eq!(g.check(poll).is_ok(), ok, "row {i}: {:?}", g.check(poll));
        }
        assert_eq!(g.baseline().map(|b| b.import_wh), Some(91_031));
        g.rebaseline(b(3_605_000, 0, 0, Some(0)));
        assert!(g.check(b(3_606_000, 1, 0, Some(0))).is_ok());
    }
}
