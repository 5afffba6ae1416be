//! Device capabilities: one trait per thing a household device can tell or
//! do, each with its unit and sign fixed here, and an in-memory simulator of
//! each beside it ([`SimDevice`]).
//!
//! | trait | unit | sign |
//! |---|---|---|
//! | [`GridMeter`] | W, Wh | power `+` import from the grid, `−` export to it; counters cumulative, never decreasing |
//! | [`PvInverter`] | W, Wh | AC output power ≥ 0; lifetime AC energy cumulative |
//! | [`Battery`] | %, W | state of charge 0–100 %; power `+` charging, `−` discharging |
//! | [`PowerLimit`] | W | the inverter's active-power ceiling (write) |
//! | [`StorageControl`] | W | the battery's charge or discharge power, or its own control (write) |
//!
//! Implementations: SunSpec devices ([`crate::sunspec_dev::SunSpecDevice`]),
//! register-map devices ([`crate::regmap::MappedDevice`]) and the simulator
//! here. A value a device does not provide, or marks "not implemented"
//! (0x8000, 0xFFFF, NaN), is [`DeviceError::NotAvailable`]: never zero.

use crate::link::LinkError;
use crate::sim::{HouseholdMeters, SimHousehold};
use protocol::{Clock, WattHours, Watts};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a capability read (or write) gave no value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The link or the device failed (see [`LinkError`] for the layer).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The device has no such value, or marks it "not implemented".
    #[error("{point} not available")]
    NotAvailable { point: &'static str },
    /// The value decoded but makes no sense (negative counter, scale factor
    /// out of range, overflow).
    #[error("{point}: implausible value ({why})")]
    Invalid { point: &'static str, why: String },
    /// The device does not support this capability at all.
    #[error("capability {0} not supported by this device")]
    Unsupported(&'static str),
}

impl DeviceError {
    /// Whether the link should be considered broken (timeouts and transport
    /// errors, not exceptions or missing values).
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            DeviceError::Link(
                LinkError::Timeout(_) | LinkError::Transport(_) | LinkError::Backoff { .. }
            )
        )
    }
}

/// Grid meter counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridEnergy {
    /// Energy imported from the grid, cumulative.
    pub import_wh: WattHours,
    /// Energy exported to the grid, cumulative.
    pub export_wh: WattHours,
}

/// One grid meter poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridValues {
    /// Total active power: `+` import, `−` export.
    pub power: Watts,
    pub energy: GridEnergy,
}

/// One PV inverter poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvValues {
    /// AC output power, ≥ 0.
    pub power: Watts,
    /// Lifetime AC energy, cumulative.
    pub energy: WattHours,
    /// The inverter reports a fault state.
    pub fault: bool,
}

/// One battery poll. Each value may be missing on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatteryValues {
    /// State of charge, percent (0–100).
    pub soc_pct: Option<u8>,
    /// Battery power: `+` charging, `−` discharging.
    pub power: Option<Watts>,
}

/// A grid (utility) meter. Power in W, `+` import from the grid, `−` export;
/// energy counters in Wh, cumulative.
pub trait GridMeter: Send + Sync {
    /// Reads power and both counters in one poll.
    fn read_grid(&self) -> impl Future<Output = Result<GridValues, DeviceError>> + Send;
}

/// A PV inverter. AC power in W (≥ 0), lifetime AC energy in Wh.
pub trait PvInverter: Send + Sync {
    /// Reads power, energy and fault state in one poll.
    fn read_pv(&self) -> impl Future<Output = Result<PvValues, DeviceError>> + Send;
}

/// A battery. State of charge in %, power in W (`+` charging, `−`
/// discharging).
pub trait Battery: Send + Sync {
    /// Reads state of charge and power; a missing value is `None`, a failed
    /// read an error.
    fn read_battery(&self) -> impl Future<Output = Result<BatteryValues, DeviceError>> + Send;
}

/// An inverter whose active power can be capped.
pub trait PowerLimit: Send + Sync {
    /// Caps AC output at `limit` W (`None` lifts the cap).
    fn set_power_limit(
        &self,
        limit: Option<Watts>,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;
}

/// A command to a battery's charge controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StorageCommand {
    /// The device's own control (usually self-consumption): no set-point.
    Auto,
    /// Charge at this power (W, > 0), from the grid if the house has no
    /// surplus.
    Charge(Watts),
    /// Discharge at this power (W, > 0), into the grid if the house does
    /// not use it.
    Discharge(Watts),
}

/// A battery whose charging and discharging can be commanded.
pub trait StorageControl: Send + Sync {
    /// Applies `cmd`; a power at or above the device's maximum rate is
    /// written as the maximum, a negative power is refused before anything
    /// is written.
    fn set_storage(
        &self,
        cmd: StorageCommand,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;
}

/// The in-memory simulator of every capability: the household model of
/// [`crate::sim`] (real irradiance and load data) read at the clock's time,
/// with a battery whose state of charge follows the day, a power limit that
/// clips PV, and switches for faults.
#[derive(Debug)]
pub struct SimDevice {
    household: SimHousehold,
    meters: Mutex<HouseholdMeters>,
    clock: Arc<dyn Clock>,
    /// When set, every read fails as a broken link would.
    pub offline: AtomicBool,
    /// The PV cap, W; negative means none.
    limit_w: AtomicI64,
    /// The last storage command (`None`: never commanded, i.e. automatic).
    storage: Mutex<Option<StorageCommand>>,
}

impl SimDevice {
    /// A simulated household at the clock's current time.
    pub fn new(household: SimHousehold, clock: Arc<dyn Clock>) -> SimDevice {
        let meters = HouseholdMeters::new(&household, clock.now());
        SimDevice {
            household,
            meters: Mutex::new(meters),
            clock,
            offline: AtomicBool::new(false),
            limit_w: AtomicI64::new(-1),
            storage: Mutex::new(None),
        }
    }

    /// The storage command in force (`Auto` when never commanded).
    pub fn storage_command(&self) -> StorageCommand {
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(StorageCommand::Auto)
    }

    fn check(&self) -> Result<(), DeviceError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(DeviceError::Link(LinkError::Transport(
                "simulated outage".into(),
            )));
        }
        Ok(())
    }

    fn snapshot(&self) -> (HouseholdMeters, protocol::UnixMs) {
        let now = self.clock.now();
        // A poisoned lock means a panic elsewhere mid-update; the counters
        // stay consistent because `advance` never leaves them half-done.
        let mut m = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        m.advance(&self.household, now);
        (m.clone(), now)
    }
}

impl GridMeter for SimDevice {
    async fn read_grid(&self) -> Result<GridValues, DeviceError> {
        self.check()?;
        let (m, now) = self.snapshot();
        Ok(GridValues {
            power: Watts(self.household.grid_power_w(now)),
            energy: GridEnergy {
                import_wh: WattHours(m.import.wh()),
                export_wh: WattHours(m.export.wh()),
            },
        })
    }
}

impl PvInverter for SimDevice {
    async fn read_pv(&self) -> Result<PvValues, DeviceError> {
        self.check()?;
        let (m, now) = self.snapshot();
        let mut p = self.household.pv_power_w(now);
        let lim = self.limit_w.load(Ordering::SeqCst);
        if lim >= 0 {
            p = p.min(lim);
        }
        Ok(PvValues {
            power: Watts(p),
            energy: WattHours(m.pv.wh()),
            fault: false,
        })
    }
}

impl Battery for SimDevice {
    async fn read_battery(&self) -> Result<BatteryValues, DeviceError> {
        self.check()?;
        let now = self.clock.now();
        let (soc, power) = sim_battery(&self.household, now);
        Ok(BatteryValues {
            soc_pct: Some(soc),
            power: Some(Watts(power)),
        })
    }
}

impl PowerLimit for SimDevice {
    async fn set_power_limit(&self, limit: Option<Watts>) -> Result<(), DeviceError> {
        self.check()?;
        match limit {
            Some(Watts(w)) if w < 0 => Err(DeviceError::Invalid {
                point: "WMaxLim",
                why: format!("negative limit {w} W"),
            }),
            Some(Watts(w)) => {
                self.limit_w.store(w, Ordering::SeqCst);
                Ok(())
            }
            None => {
                self.limit_w.store(-1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

impl StorageControl for SimDevice {
    async fn set_storage(&self, cmd: StorageCommand) -> Result<(), DeviceError> {
        self.check()?;
        if let StorageCommand::Charge(Watts(w)) | StorageCommand::Discharge(Watts(w)) = cmd
            && w < 0
        {
            return Err(DeviceError::Invalid {
                point: "InOutWRte",
                why: format!("negative power {w} W"),
            });
        }
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = Some(cmd);
        Ok(())
    }
}

/// The simulated battery: it soaks up the household's surplus and covers its
/// deficit up to 3 kW, and its state of charge follows the hour of the day
/// (empty at 06:00 UTC, full at 16:00). Shared by [`SimDevice`] and the
/// Modbus simulator so that both tell the same story.
pub fn sim_battery(h: &SimHousehold, now: protocol::UnixMs) -> (u8, i64) {
    let minute_of_day = (now.0 / 60_000) % 1440;
    let soc = if (360..960).contains(&minute_of_day) {
        10 + (minute_of_day - 360) * 85 / 600
    } else {
        let back = (minute_of_day + 1440 - 960) % 1440;
        95 - back * 85 / 840
    };
    // Surplus (negative grid power) charges the battery.
    let power = (-h.grid_power_w(now)).clamp(-3000, 3000);
    (u8::try_from(soc.min(100)).unwrap_or(100), power)
}
