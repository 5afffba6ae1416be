//! Actuation: the household controller's device decisions leave the process
//! here. The strategy ([`crate::strategy::plan_interval`]) decides an export
//! limit when exporting costs money and a battery mode; this module turns
//! them into writes through the device capability traits of `meter_agent`
//! ([`PowerLimit`]) and reports what happened.
//!
//! The export limit is a ceiling at the grid connection; the inverter limits
//! its own output, so the ceiling written to the inverter is the export limit
//! plus what the household consumes right now (from the latest reading:
//! `load = pv + grid`). Without a PV power reading the export limit itself is
//! written, which curtails more than needed but never exports more.
//!
//! A decision is applied when it is made (halfway through the interval
//! before the one it is for) and stays until the next decision. Every limit
//! is written with a reversion time of about two intervals
//! (`WMaxLimPct_RvrtTms`), so that a gateway that dies leaves an inverter
//! that returns to full power by itself instead of staying curtailed.
//!
//! The battery mode becomes a [`StorageCommand`] written through
//! [`StorageControl`] (SunSpec 124: `StorCtl_Mod`, `InWRte`, `OutWRte` at
//! their scale factor, read back): self-consumption is the device's own
//! control (`Auto`), a charge or discharge decision a forced rate with the
//! same reversion time as the limit. When the strategy stops deciding a
//! battery mode, a forced rate is released to `Auto`. The battery's state of
//! charge, which the strategy needs to decide anything, is read from the
//! same device ([`Actuator::battery_soc_pct`]).
//!
//! A device without the capability is reported ([`Outcome::Unsupported`],
//! counted in [`ActuationStats`]; once per capability), never a crash, and
//! the controller goes on trading.

use crate::strategy::BatteryMode;
use crate::strategy::Plan;
use meter_agent::capability::{Battery, DeviceError, PowerLimit, StorageCommand, StorageControl};
use meter_agent::link::{Link, Transport};
use meter_agent::sunspec_dev::SunSpecDevice;
use protocol::{Clock, Reading, Watts};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tracing::{info, warn};

/// Where the inverter to actuate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActuatorConfig {
    pub transport: Transport,
    /// The SunSpec inverter's unit id.
    pub inverter_unit: u8,
    /// The SunSpec storage (124) unit id (`None`: no battery control).
    pub battery_unit: Option<u8>,
    /// Bound on every Modbus request.
    pub timeout: Duration,
    /// `WMaxLimPct_RvrtTms` written with each limit and
    /// `InOutWRte_RvrtTms` with each battery command, seconds (0: never
    /// reverts).
    pub revert_s: u16,
}

impl ActuatorConfig {
    /// A reversion time of two intervals (at least a minute, at most the
    /// register's 65,535 s).
    pub fn revert_for_interval(interval_ms: u64) -> u16 {
        u16::try_from((interval_ms.saturating_mul(2) / 1000).max(60)).unwrap_or(u16::MAX)
    }
}

/// What one decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The inverter's ceiling was written and read back.
    LimitSet { pv_limit_w: i64 },
    /// A previous ceiling was lifted.
    LimitReleased,
    /// The battery command was written and read back.
    BatterySet { command: StorageCommand },
    /// Nothing needed writing.
    Unchanged,
    /// The device cannot do this; the decision is dropped and reported.
    Unsupported {
        capability: &'static str,
        why: String,
    },
    /// The device or the link failed; the next decision tries again.
    Failed {
        capability: &'static str,
        error: String,
    },
}

/// Counters of what actuation did, for logs, the dashboard and tests.
#[derive(Debug)]
pub struct ActuationStats {
    pub limits_set: AtomicU64,
    pub limits_released: AtomicU64,
    pub unsupported: AtomicU64,
    pub failures: AtomicU64,
    /// The inverter ceiling in force, W; −1 when none.
    pub pv_limit_w: AtomicI64,
    /// Battery commands written and confirmed.
    pub battery_commands: AtomicU64,
    /// The battery command in force, W: `+` charge, `−` discharge, 0 the
    /// device's own control.
    pub battery_w: AtomicI64,
}

impl Default for ActuationStats {
    fn default() -> ActuationStats {
        ActuationStats {
            limits_set: AtomicU64::new(0),
            limits_released: AtomicU64::new(0),
            unsupported: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            pv_limit_w: AtomicI64::new(-1),
            battery_commands: AtomicU64::new(0),
            battery_w: AtomicI64::new(0),
        }
    }
}

impl ActuationStats {
    fn count(&self, o: &Outcome) {
        match o {
            Outcome::LimitSet { pv_limit_w } => {
                self.limits_set.fetch_add(1, Ordering::Relaxed);
                self.pv_limit_w.store(*pv_limit_w, Ordering::Relaxed);
            }
            Outcome::LimitReleased => {
                self.limits_released.fetch_add(1, Ordering::Relaxed);
                self.pv_limit_w.store(-1, Ordering::Relaxed);
            }
            Outcome::BatterySet { command } => {
                self.battery_commands.fetch_add(1, Ordering::Relaxed);
                let w = match command {
                    StorageCommand::Auto => 0,
                    StorageCommand::Charge(w) => w.0,
                    StorageCommand::Discharge(w) => -w.0,
                };
                self.battery_w.store(w, Ordering::Relaxed);
            }
            Outcome::Unchanged => {}
            Outcome::Unsupported { .. } => {
                self.unsupported.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed { .. } => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The inverter ceiling, W, that keeps export at or below `export_limit`:
/// the export limit plus the household's present consumption (`pv + grid`
/// of the latest reading, never negative). Pure.
pub fn pv_ceiling_w(export_limit: Watts, latest: Option<&Reading>) -> i64 {
    let load = latest
        .and_then(|r| r.pv_power_w.map(|pv| pv.0.saturating_add(r.grid_power_w.0)))
        .unwrap_or(0)
        .max(0);
    export_limit.0.max(0).saturating_add(load)
}

/// Applies one limit decision (`Some`: ceiling in W, `None`: no ceiling)
/// through any [`PowerLimit`] device. `limited` is what the caller believes
/// is in force (`None`: unknown, e.g. after a restart); a release is only
/// written when a limit may be in force.
pub async fn apply_limit<D: PowerLimit>(
    dev: &D,
    want: Option<i64>,
    limited: &mut Option<bool>,
) -> Outcome {
    if want.is_none() && *limited == Some(false) {
        return Outcome::Unchanged;
    }
    match dev.set_power_limit(want.map(Watts)).await {
        Ok(()) => {
            *limited = Some(want.is_some());
            match want {
                Some(w) => Outcome::LimitSet { pv_limit_w: w },
                None => Outcome::LimitReleased,
            }
        }
        Err(DeviceError::Unsupported(what)) => {
            // Never asked again for a release: there is nothing to release.
            *limited = Some(false);
            Outcome::Unsupported {
                capability: "power limit",
                why: format!("the device has no {what}"),
            }
        }
        Err(e) => Outcome::Failed {
            capability: "power limit",
            error: e.to_string(),
        },
    }
}

/// The battery command for a strategy decision (`None`: no decision, the
/// device's own control). Pure.
pub fn storage_command(mode: Option<BatteryMode>) -> StorageCommand {
    let w = |w: u64| Watts(i64::try_from(w).unwrap_or(i64::MAX));
    match mode {
        None | Some(BatteryMode::SelfConsume) => StorageCommand::Auto,
        Some(BatteryMode::Charge { w: x }) => StorageCommand::Charge(w(x)),
        Some(BatteryMode::Discharge { w: x }) => StorageCommand::Discharge(w(x)),
    }
}

/// Applies one battery command through any [`StorageControl`] device.
/// `last` is what the caller believes is in force (`None`: unknown); `Auto`
/// is only written when something else may be in force. A forced rate is
/// written every time, which restarts its reversion timer.
pub async fn apply_storage<D: StorageControl>(
    dev: &D,
    cmd: StorageCommand,
    last: &mut Option<StorageCommand>,
) -> Outcome {
    if cmd == StorageCommand::Auto && *last == Some(StorageCommand::Auto) {
        return Outcome::Unchanged;
    }
    match dev.set_storage(cmd).await {
        Ok(()) => {
            *last = Some(cmd);
            Outcome::BatterySet { command: cmd }
        }
        Err(DeviceError::Unsupported(what)) => {
            *last = Some(StorageCommand::Auto);
            Outcome::Unsupported {
                capability: "battery control",
                why: format!("the device has no {what}"),
            }
        }
        Err(e) => Outcome::Failed {
            capability: "battery control",
            error: e.to_string(),
        },
    }
}

/// Sends the controller's decisions to a household's SunSpec inverter.
#[derive(Debug)]
pub struct Actuator {
    cfg: ActuatorConfig,
    link: Link,
    device: Option<SunSpecDevice>,
    limited: Option<bool>,
    /// The storage device, when it is another unit than the inverter.
    battery_device: Option<SunSpecDevice>,
    /// The battery command believed in force (`None`: unknown).
    battery_last: Option<StorageCommand>,
    /// Unsupported capabilities are reported once, not every interval.
    limit_unsupported: bool,
    battery_unsupported: bool,
    pub stats: Arc<ActuationStats>,
}

impl Actuator {
    /// An actuator that connects on its first decision.
    pub fn new(cfg: ActuatorConfig, clock: Arc<dyn Clock>) -> Actuator {
        let link = Link::new(cfg.transport.clone(), cfg.timeout, clock);
        Actuator {
            cfg,
            link,
            device: None,
            limited: None,
            battery_device: None,
            battery_last: None,
            limit_unsupported: false,
            battery_unsupported: false,
            stats: Arc::new(ActuationStats::default()),
        }
    }

    /// Shares `stats` (e.g. the controller's) instead of its own counters.
    pub fn with_stats(mut self, stats: Arc<ActuationStats>) -> Actuator {
        self.stats = stats;
        self
    }

    async fn device(&mut self) -> Result<&SunSpecDevice, String> {
        if self.device.is_none() {
            let d = SunSpecDevice::discover(&self.link, self.cfg.inverter_unit)
                .await
                .map_err(|e| e.to_string())?;
            self.device = Some(
                d.with_limit_revert(self.cfg.revert_s)
                    .with_storage_revert(self.cfg.revert_s),
            );
        }
        self.device
            .as_ref()
            .ok_or_else(|| "inverter not discovered".to_string())
    }

    /// The storage device: the inverter itself when the units agree.
    async fn battery_device(&mut self) -> Result<SunSpecDevice, String> {
        let unit = self
            .cfg
            .battery_unit
            .ok_or_else(|| "no battery unit configured".to_string())?;
        if unit == self.cfg.inverter_unit {
            return self.device().await.cloned();
        }
        if self.battery_device.is_none() {
            let d = SunSpecDevice::discover(&self.link, unit)
                .await
                .map_err(|e| e.to_string())?;
            self.battery_device = Some(d.with_storage_revert(self.cfg.revert_s));
        }
        self.battery_device
            .clone()
            .ok_or_else(|| "battery not discovered".to_string())
    }

    /// The battery's state of charge, % (model 124's `ChaState`), for the
    /// strategy's market view; `None` without a battery unit or when it
    /// cannot be read (logged).
    pub async fn battery_soc_pct(&mut self) -> Option<u8> {
        self.cfg.battery_unit?;
        if self.battery_unsupported {
            return None;
        }
        let dev = match self.battery_device().await {
            Ok(d) => d,
            Err(error) => {
                warn!(%error, "battery state of charge not read");
                return None;
            }
        };
        match dev.read_battery().await {
            Ok(v) => v.soc_pct,
            Err(DeviceError::Unsupported(what)) => {
                self.battery_unsupported = true;
                self.stats.count(&Outcome::Unsupported {
                    capability: "battery control",
                    why: format!("the device has no {what}"),
                });
                warn!(
                    unit = dev.unit(),
                    "battery control unsupported: the device has no {what}"
                );
                None
            }
            Err(error) => {
                warn!(unit = dev.unit(), %error, "battery state of charge not read");
                None
            }
        }
    }

    /// Applies `plan`'s device decisions; `latest` is the newest reading
    /// (for the household's present consumption). Returns what each
    /// decision did; every outcome is also logged and counted.
    pub async fn apply(&mut self, plan: &Plan, latest: Option<&Reading>) -> Vec<Outcome> {
        let mut out = Vec::new();
        let want = plan.curtail_export_w.map(|x| pv_ceiling_w(x, latest));
        let limit = if want.is_none() && self.limited == Some(false) {
            Outcome::Unchanged
        } else if self.limit_unsupported {
            // Reported once already; a new limit is still dropped.
            Outcome::Unchanged
        } else {
            let unit = self.cfg.inverter_unit;
            let dev = self.device().await.cloned();
            match dev {
                Ok(d) => apply_limit(&d, want, &mut self.limited).await,
                Err(error) => Outcome::Failed {
                    capability: "power limit",
                    error: format!("unit {unit}: {error}"),
                },
            }
        };
        if matches!(limit, Outcome::Unsupported { .. }) {
            self.limit_unsupported = true;
        }
        out.push(limit);
        let cmd = storage_command(plan.battery);
        let battery = if self.cfg.battery_unit.is_none() {
            // No battery to command: a decision is reported once.
            match plan.battery {
                Some(mode) if !self.battery_unsupported => {
                    self.battery_unsupported = true;
                    Some(Outcome::Unsupported {
                        capability: "battery control",
                        why: format!("no battery unit configured to carry out {mode:?}"),
                    })
                }
                _ => None,
            }
        } else if self.battery_unsupported
            || (cmd == StorageCommand::Auto && self.battery_last == Some(StorageCommand::Auto))
        {
            None
        } else {
            match self.battery_device().await {
                Ok(d) => Some(apply_storage(&d, cmd, &mut self.battery_last).await),
                Err(error) => Some(Outcome::Failed {
                    capability: "battery control",
                    error: format!("unit {:?}: {error}", self.cfg.battery_unit),
                }),
            }
        };
        if let Some(b) = battery {
            if matches!(b, Outcome::Unsupported { .. }) {
                self.battery_unsupported = true;
            }
            out.push(b);
        }
        for o in &out {
            self.stats.count(o);
            let unit = self.cfg.inverter_unit;
            match o {
                Outcome::LimitSet { pv_limit_w } => {
                    info!(unit, pv_limit_w, "inverter power limit set")
                }
                Outcome::LimitReleased => info!(unit, "inverter power limit released"),
                Outcome::BatterySet { command } => {
                    info!(unit = ?self.cfg.battery_unit, ?command, "battery command set")
                }
                Outcome::Unchanged => {}
                Outcome::Unsupported { capability, why } => {
                    warn!(unit, capability, %why, "decision not carried out: unsupported")
                }
                Outcome::Failed { capability, error } => {
                    warn!(unit, capability, %error, "decision not carried out")
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{MarketView, Observation, StrategyParams, plan_interval};
    use meter_agent::SimHousehold;
    use meter_agent::capability::PvInverter;
    use meter_agent::link::Function;
    use meter_agent::simulator::{SimUnit, spawn_devices};
    use protocol::{
        DeviceStatus, GridId, HouseholdId, IntervalId, ManualClock, MeterId, MicroPerKwh, UnixMs,
        WattHours,
    };
    use std::net::SocketAddr;

    /// 2021-06-21 10:00 UTC (noon in Essen, summer time).
    const JUNE_21_NOON: u64 = 1_624_269_600_000;
    const T: Duration = Duration::from_secs(2);

    fn params() -> StrategyParams {
        StrategyParams {
            min_sell_price: MicroPerKwh(100_000),
            max_buy_price: MicroPerKwh(300_000),
            feed_in_tariff: MicroPerKwh(80_000),
            retail_tariff: MicroPerKwh(320_000),
            interval_ms: 900_000,
            min_order_wh: 10,
            window_ms: 300_000,
            location: None,
            battery: None,
            curtail: true,
        }
    }

    fn reading(grid_w: i64, pv_w: i64) -> Reading {
        Reading {
            grid: GridId::new("g1").expect("id"),
            household: HouseholdId::new("h1").expect("id"),
            meter: MeterId::new("m1").expect("id"),
            seq: 1,
            ts: UnixMs(JUNE_21_NOON),
            import_wh: WattHours(0),
            export_wh: WattHours(0),
            pv_wh: Some(WattHours(0)),
            grid_power_w: Watts(grid_w),
            pv_power_w: Some(Watts(pv_w)),
            status: DeviceStatus::Ok,
        }
    }

    /// A household producing well over 3 kW at noon in June.
    fn sunny() -> SimHousehold {
        (0..200)
            .map(SimHousehold::from_seed)
            .find(|h| h.pv_power_w(UnixMs(JUNE_21_NOON)) > 3_000)
            .expect("a sunny household")
    }

    /// Model 123's (WMaxLimPct, WMaxLim_Ena) read over Modbus with a link
    /// of its own, as any other client would see them.
    async fn limit_registers(addr: SocketAddr, unit: u8, clock: Arc<dyn Clock>) -> (u16, u16) {
        let link = Link::tcp(addr, T, clock);
        let d = SunSpecDevice::discover(&link, unit)
            .await
            .expect("discover");
        let b = d.models.iter().find(|b| b.id == 123).expect("model 123");
        let r = link
            .read(unit, Function::Holding, b.addr, 8)
            .await
            .expect("read 123");
        (r[3], r[7])
    }

    #[test]
    fn ceiling_adds_present_consumption() {
        assert_eq!(pv_ceiling_w(Watts(1_000), None), 1_000);
        // PV 3 kW, exporting 2.5 kW: the house uses 500 W.
        assert_eq!(
            pv_ceiling_w(Watts(1_000), Some(&reading(-2_500, 3_000))),
            1_500
        );
        // A reading that would make consumption negative adds nothing.
        assert_eq!(
            pv_ceiling_w(Watts(1_000), Some(&reading(-4_000, 3_000))),
            1_000
        );
        assert_eq!(ActuatorConfig::revert_for_interval(900_000), 1_800);
        assert_eq!(ActuatorConfig::revert_for_interval(5_000), 60);
    }

    #[tokio::test]
    async fn curtailment_decision_changes_the_inverter_limit_over_modbus() {
        let h = sunny();
        let rated = (h.pv_kwp * 1000.0).round() as i64;
        let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
        let sim = spawn_devices(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            vec![
                SimUnit::sunspec(1, 40000, &[1, 103, 120, 121, 123]),
                SimUnit::sunspec(2, 40000, &[1, 203]),
                // An inverter without immediate controls.
                SimUnit::sunspec(3, 40000, &[1, 103]),
            ],
            h.clone(),
            clock.clone(),
        )
        .await
        .expect("simulator");
        let before = limit_registers(sim.addr, 1, clock.clone()).await;
        assert_eq!(before, (10_000, 0), "100.00 %, disabled at start");

        // The strategy: 1 kW of export observed, exporting costs money now.
        let history = [Observation {
            ts: UnixMs(5),
            import_wh: WattHours(0),
            export_wh: WattHours(0),
            pv_wh: None,
            grid_power_w: Watts(-1_000),
            battery_net_wh: 0,
        }];
        let market = MarketView {
            recent_prices: &[],
            export_price_now: Some(-10_000),
            battery_soc_wh: None,
        };
        let plan = plan_interval(&history, &market, IntervalId(900_000), &params());
        assert_eq!(plan.curtail_export_w, Some(Watts(1_000)));

        let cfg = ActuatorConfig {
            transport: Transport::Tcp(sim.addr),
            inverter_unit: 1,
            battery_unit: None,
            timeout: T,
            revert_s: 1_800,
        };
        let mut a = Actuator::new(cfg.clone(), clock.clone());
        // The house uses 500 W: the inverter may make 1.5 kW.
        let latest = reading(-2_500, 3_000);
        let out = a.apply(&plan, Some(&latest)).await;
        assert_eq!(out, vec![Outcome::LimitSet { pv_limit_w: 1_500 }]);
        let (pct, ena) = limit_registers(sim.addr, 1, clock.clone()).await;
        assert_eq!(ena, 1);
        assert_eq!(i64::from(pct), 1_500 * 10_000 / rated);
        // The simulated inverter obeys.
        let link = Link::tcp(sim.addr, T, clock.clone());
        let inv = SunSpecDevice::discover(&link, 1).await.expect("discover");
        let pv = inv.read_pv().await.expect("pv").power.0;
        assert!(pv <= 1_500 && pv > 1_400, "clipped PV {pv} W");
        assert_eq!(a.stats.pv_limit_w.load(Ordering::Relaxed), 1_500);

        // No curtailment next interval: the limit is lifted.
        let calm = Plan {
            curtail_export_w: None,
            ..plan.clone()
        };
        assert_eq!(
            a.apply(&calm, Some(&latest)).await,
            vec![Outcome::LimitReleased]
        );
        assert_eq!(limit_registers(sim.addr, 1, clock.clone()).await.1, 0);
        assert_eq!(
            inv.read_pv().await.expect("pv").power.0,
            h.pv_power_w(UnixMs(JUNE_21_NOON))
        );
        // And not written again while nothing changes.
        assert_eq!(
            a.apply(&calm, Some(&latest)).await,
            vec![Outcome::Unchanged]
        );

        // An inverter without the capability is reported, not a crash.
        let mut b = Actuator::new(
            ActuatorConfig {
                inverter_unit: 3,
                ..cfg.clone()
            },
            clock.clone(),
        );
        let out = b.apply(&plan, Some(&latest)).await;
        assert!(
            matches!(
                &out[..],
                [Outcome::Unsupported {
                    capability: "power limit",
                    ..
                }]
            ),
            "{out:?}"
        );
        assert_eq!(b.stats.unsupported.load(Ordering::Relaxed), 1);
        // Nobody at unit 9: a failure, reported, and tried again next time.
        let mut c = Actuator::new(
            ActuatorConfig {
                inverter_unit: 9,
                ..cfg
            },
            clock.clone(),
        );
        let out = c.apply(&plan, None).await;
        assert!(matches!(&out[..], [Outcome::Failed { .. }]), "{out:?}");
        assert_eq!(c.stats.failures.load(Ordering::Relaxed), 1);
    }
}
