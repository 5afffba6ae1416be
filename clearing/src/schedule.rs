//! When to clear: gate closures and the cron schedule.
//!
//! Gate closure of interval `I` is at `I.start − gate_lead_ms`; an order for
//! `I` is accepted only before it. The scheduler wakes on a cron schedule
//! (the `cron` crate, seconds field first), either the operator's expression
//! or one derived from the interval length and lead so that it fires exactly
//! at gate closures. Each wake clears every interval whose gate has passed
//! and that is not cleared yet, so a late or sparse schedule delays clearing
//! but never skips an interval (within the catch-up bound).
//!
//! Everything here is a pure function of `now`: the clock is read by the
//! caller (never `chrono::Utc::now`), and chrono times are built from it.

use chrono::{DateTime, Utc};
use cron::Schedule;
use protocol::{IntervalId, UnixMs};
use std::str::FromStr;

/// Parses a cron expression (`sec min hour day-of-month month day-of-week [year]`).
pub fn parse_cron(expr: &str) -> Result<Schedule, cron::error::Error> {
    Schedule::from_str(expr)
}

/// A cron expression that fires at every gate closure, when one exists:
/// the interval must divide a minute, an hour or a day in whole seconds (or
/// minutes, hours) and the lead must be whole seconds. Returns `None`
/// otherwise; the scheduler then wakes by arithmetic alone.
pub fn derived_cron(interval_ms: u64, lead_ms: u64) -> Option<String> {
    if interval_ms == 0 || !interval_ms.is_multiple_of(1000) {
        return None;
    }
    let phase = (interval_ms - lead_ms % interval_ms) % interval_ms;
    if !phase.is_multiple_of(1000) {
        return None;
    }
    let (s, p) = (interval_ms / 1000, phase / 1000);
    if 60 % s == 0 {
        Some(format!("{p}/{s} * * * * *"))
    } else if s % 60 == 0 && s < 3600 && 3600 % s == 0 {
        Some(format!("{} {}/{} * * * *", p % 60, p / 60, s / 60))
    } else if s % 3600 == 0 && 86_400 % s == 0 {
        Some(format!(
            "{} {} {}/{} * * *",
            p % 60,
            (p / 60) % 60,
            p / 3600,
            s / 3600
        ))
    } else {
        None
    }
}

/// The schedule to use: the configured expression, else the derived one.
pub fn schedule_for(
    cron: Option<&str>,
    interval_ms: u64,
    lead_ms: u64,
) -> Result<Option<Schedule>, cron::error::Error> {
    match cron {
        Some(expr) => parse_cron(expr).map(Some),
        None => Ok(derived_cron(interval_ms, lead_ms).and_then(|e| parse_cron(&e).ok())),
    }
}

fn to_chrono(t: UnixMs) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(t.0).ok()?)
}

/// The next gate closure strictly after `now`.
pub fn next_gate(now: UnixMs, interval_ms: u64, lead_ms: u64) -> UnixMs {
    let len = interval_ms.max(1);
    // Gates are at k·len − lead; find the first one > now.
    let shifted = now.0.saturating_add(lead_ms);
    let k = shifted / len + 1;
    UnixMs((k.saturating_mul(len)).saturating_sub(lead_ms))
}

/// When to wake next: the schedule's next firing after `now`, or the next
/// gate closure when there is no schedule.
pub fn next_wake(
    schedule: Option<&Schedule>,
    now: UnixMs,
    interval_ms: u64,
    lead_ms: u64,
) -> UnixMs {
    let by_cron = schedule.and_then(|s| {
        let from = to_chrono(now)?;
        let next = s.after(&from).next()?;
        u64::try_from(next.timestamp_millis()).ok().map(UnixMs)
    });
    by_cron.unwrap_or_else(|| next_gate(now, interval_ms, lead_ms))
}

/// The newest interval whose gate has closed at `now`.
pub fn latest_due(now: UnixMs, interval_ms: u64, lead_ms: u64) -> IntervalId {
    IntervalId::containing(UnixMs(now.0.saturating_add(lead_ms)), interval_ms)
}

/// Intervals to clear at `now`, oldest first: those after `last_cleared`
/// whose gate has closed, at most `max_catch_up` of them (the newest). With
/// nothing cleared yet, only the latest due interval.
pub fn due_intervals(
    last_cleared: Option<IntervalId>,
    now: UnixMs,
    interval_ms: u64,
    lead_ms: u64,
    max_catch_up: u32,
) -> Vec<IntervalId> {
    let len = interval_ms.max(1);
    let latest = latest_due(now, len, lead_ms);
    let Some(last) = last_cleared else {
        return vec![latest];
    };
    if latest <= last {
        return Vec::new();
    }
    let missed = (latest.0 - last.0) / len;
    let take = missed.min(u64::from(max_catch_up.max(1)));
    (0..take)
        .rev()
        .map(|i| IntervalId(latest.0 - i * len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN15: u64 = 900_000;

    #[test]
    fn derived_expressions() {
        assert_eq!(derived_cron(MIN15, 0).as_deref(), Some("0 0/15 * * * *"));
        assert_eq!(
            derived_cron(MIN15, 60_000).as_deref(),
            Some("0 14/15 * * * *")
        );
        assert_eq!(derived_cron(10_000, 0).as_deref(), Some("0/10 * * * * *"));
        assert_eq!(
            derived_cron(3_600_000, 90_000).as_deref(),
            Some("30 58 0/1 * * *")
        );
        assert_eq!(derived_cron(7 * 60_000, 0), None);
        assert_eq!(derived_cron(1500, 0), None);
    }

    #[test]
    fn cron_wakes_at_gate_closures() {
        for lead in [0, 60_000, 90_000] {
            let s = schedule_for(None, MIN15, lead)
                .expect("parse")
                .expect("derivable");
            let mut now = UnixMs(1_750_000_123_456);
            for _ in 0..10 {
                let w = next_wake(Some(&s), now, MIN15, lead);
                assert_eq!(w, next_gate(now, MIN15, lead), "lead {lead}");
                assert!(w > now);
                assert_eq!((w.0 + lead) % MIN15, 0);
                now = w;
            }
        }
    }

    #[test]
    fn next_gate_is_strictly_after() {
        assert_eq!(next_gate(UnixMs(0), 1000, 0), UnixMs(1000));
        assert_eq!(next_gate(UnixMs(999), 1000, 0), UnixMs(1000));
        assert_eq!(next_gate(UnixMs(1000), 1000, 0), UnixMs(2000));
        assert_eq!(next_gate(UnixMs(1000), 1000, 100), UnixMs(1900));
    }

    #[test]
    fn due_and_catch_up() {
        let len = 1000;
        assert_eq!(
            due_intervals(None, UnixMs(5500), len, 0, 96),
            vec![IntervalId(5000)]
        );
        assert_eq!(
            due_intervals(None, UnixMs(5500), len, 600, 96),
            vec![IntervalId(6000)]
        );
        assert_eq!(
            due_intervals(Some(IntervalId(5000)), UnixMs(5999), len, 0, 96),
            vec![]
        );
        assert_eq!(
            due_intervals(Some(IntervalId(2000)), UnixMs(5000), len, 0, 96),
            vec![IntervalId(3000), IntervalId(4000), IntervalId(5000)]
        );
        assert_eq!(
            due_intervals(Some(IntervalId(0)), UnixMs(100_000), len, 0, 2),
            vec![IntervalId(99_000), IntervalId(100_000)]
        );
    }
}
