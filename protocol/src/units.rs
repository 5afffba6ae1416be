//! Unit newtypes. Every quantity that crosses a crate boundary carries its
//! unit in its type.
//!
//! Conventions (fixed here, relied on everywhere):
//! - Energy: integer watt-hours ([`WattHours`]); meter counters are cumulative
//!   and never decrease.
//! - Power: integer watts ([`Watts`]); at the grid meter `+` is import from the
//!   grid and `−` is export to it.
//! - Money: integer micro-units of the settlement currency ([`Micros`]).
//! - Price: micro-units per kWh ([`MicroPerKwh`]).
//! - Time: UTC Unix milliseconds ([`UnixMs`]); an interval is named by its
//!   start ([`IntervalId`]).
//!
//! No floating point appears in this module: money is computed with
//! [`MicroPerKwh::cost_of`], which rounds down (see its docs).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Energy in watt-hours.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct WattHours(pub u64);

/// Power in watts. At a grid meter `+` is import from the grid, `−` export.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Watts(pub i64);

/// Money in micro-units (10⁻⁶) of the settlement currency. Signed: a net
/// transfer may go either way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub i64);

/// Price in micro-units of the settlement currency per kWh.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroPerKwh(pub u64);

/// A point in time: milliseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub u64);

/// An interval, named by its start in Unix milliseconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct IntervalId(pub u64);

impl MicroPerKwh {
    /// The money for `energy` at this price: `energy_wh × price / 1000`,
    /// rounded down to a whole micro-unit.
    ///
    /// Rounding rule: every trade's money is computed once with this function
    /// and the same number is debited from the buyer and credited to the
    /// seller, so rounding never creates or destroys money. The result
    /// saturates at `i64::MAX` (far beyond any real interval).
    pub fn cost_of(self, energy: WattHours) -> Micros {
        let v = u128::from(energy.0) * u128::from(self.0) / 1000;
        Micros(i64::try_from(v).unwrap_or(i64::MAX))
    }

    /// Saturating addition of two prices (a limit plus a fee).
    pub fn saturating_add(self, other: MicroPerKwh) -> MicroPerKwh {
        MicroPerKwh(self.0.saturating_add(other.0))
    }
}

impl IntervalId {
    /// The interval of length `len_ms` that contains `t`.
    pub fn containing(t: UnixMs, len_ms: u64) -> IntervalId {
        let len = len_ms.max(1);
        IntervalId(t.0 - t.0 % len)
    }
    /// The start of the interval.
    pub fn start(self) -> UnixMs {
        UnixMs(self.0)
    }
    /// The end (exclusive) of the interval for an interval length.
    pub fn end(self, len_ms: u64) -> UnixMs {
        UnixMs(self.0.saturating_add(len_ms))
    }
    /// The next interval.
    pub fn next(self, len_ms: u64) -> IntervalId {
        IntervalId(self.0.saturating_add(len_ms))
    }
}

impl std::ops::Add for Micros {
    type Output = Micros;
    fn add(self, o: Micros) -> Micros {
        Micros(self.0.saturating_add(o.0))
    }
}
impl std::ops::Sub for Micros {
    type Output = Micros;
    fn sub(self, o: Micros) -> Micros {
        Micros(self.0.saturating_sub(o.0))
    }
}
impl std::ops::Neg for Micros {
    type Output = Micros;
    fn neg(self) -> Micros {
        Micros(self.0.saturating_neg())
    }
}
impl std::ops::AddAssign for Micros {
    fn add_assign(&mut self, o: Micros) {
        *self = *self + o;
    }
}
impl std::ops::SubAssign for Micros {
    fn sub_assign(&mut self, o: Micros) {
        *self = *self - o;
    }
}
impl std::iter::Sum for Micros {
    fn sum<I: Iterator<Item = Micros>>(iter: I) -> Micros {
        iter.fold(Micros(0), |a, b| a + b)
    }
}
impl std::ops::Add for WattHours {
    type Output = WattHours;
    fn add(self, o: WattHours) -> WattHours {
        WattHours(self.0.saturating_add(o.0))
    }
}
impl std::ops::AddAssign for WattHours {
    fn add_assign(&mut self, o: WattHours) {
        *self = *self + o;
    }
}
impl std::iter::Sum for WattHours {
    fn sum<I: Iterator<Item = WattHours>>(iter: I) -> WattHours {
        iter.fold(WattHours(0), |a, b| a + b)
    }
}
impl WattHours {
    /// `self − o`, or zero when `o` is larger.
    pub fn saturating_sub(self, o: WattHours) -> WattHours {
        WattHours(self.0.saturating_sub(o.0))
    }
}

macro_rules! display_unit {
    ($t:ty, $suffix:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} {}", self.0, $suffix)
            }
        }
    };
}
display_unit!(WattHours, "Wh");
display_unit!(Watts, "W");
display_unit!(Micros, "µ");
display_unit!(MicroPerKwh, "µ/kWh");
display_unit!(UnixMs, "ms");
display_unit!(IntervalId, "ms");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_down_and_is_exact_for_whole_kwh() {
        assert_eq!(
            MicroPerKwh(250_000).cost_of(WattHours(1000)),
            Micros(250_000)
        );
        assert_eq!(MicroPerKwh(250_000).cost_of(WattHours(1)), Micros(250));
        assert_eq!(MicroPerKwh(333).cost_of(WattHours(1)), Micros(0));
        assert_eq!(
            MicroPerKwh(u64::MAX).cost_of(WattHours(u64::MAX)),
            Micros(i64::MAX)
        );
    }

    #[test]
    fn interval_containing() {
        assert_eq!(
            IntervalId::containing(UnixMs(1_000_999), 1000),
            IntervalId(1_000_000)
        );
        assert_eq!(IntervalId(0).next(900_000), IntervalId(900_000));
    }
}
