//! The devices of one metering point, as configured: which transport, which
//! unit id, SunSpec or a register map, and the links they share.
//!
//! Link sharing follows the wire: every Modbus TCP device gets its own
//! connection (a gateway serves each connection independently, and one slow
//! device must not hold up another), while all devices on one serial port
//! share that bus's [`Link`], whose mutex serializes their requests.
//!
//! SunSpec devices are discovered lazily, on the first poll and again after
//! discovery failed; a discovered layout is kept across reconnects (the link
//! reconnects by itself).

use crate::capability::{DeviceError, GridMeter, GridValues, PvInverter, PvValues};
use crate::link::{Link, Transport};
use crate::regmap::{MappedDevice, RegisterMap};
use crate::sunspec_dev::{DiscoverError, SunSpecDevice};
use protocol::Clock;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How a device is read.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceKind {
    SunSpec,
    Map(RegisterMap),
}

/// One configured device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub transport: Transport,
    pub unit: u8,
    pub kind: DeviceKind,
}

/// The devices of a metering point: a grid meter, and a PV inverter if the
/// household has one.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSetup {
    pub grid: DeviceConfig,
    pub pv: Option<DeviceConfig>,
    /// Bound on every Modbus request.
    pub timeout: Duration,
}

/// A connected device of either kind.
#[derive(Debug, Clone)]
pub enum AnyDevice {
    SunSpec(SunSpecDevice),
    Map(MappedDevice),
}

impl GridMeter for AnyDevice {
    async fn read_grid(&self) -> Result<GridValues, DeviceError> {
        match self {
            AnyDevice::SunSpec(d) => d.read_grid().await,
            AnyDevice::Map(d) => d.read_grid().await,
        }
    }
}

impl PvInverter for AnyDevice {
    async fn read_pv(&self) -> Result<PvValues, DeviceError> {
        match self {
            AnyDevice::SunSpec(d) => d.read_pv().await,
            AnyDevice::Map(d) => d.read_pv().await,
        }
    }
}

/// One device slot: its config, link, and (once discovered) the device.
#[derive(Debug)]
pub struct Slot {
    pub config: DeviceConfig,
    pub link: Link,
    pub device: Option<AnyDevice>,
}

impl Slot {
    /// The device, discovering it first if needed.
    pub async fn get(&mut self) -> Result<&AnyDevice, DiscoverError> {
        if self.device.is_none() {
            let d = match &self.config.kind {
                DeviceKind::SunSpec => {
                    AnyDevice::SunSpec(SunSpecDevice::discover(&self.link, self.config.unit).await?)
                }
                DeviceKind::Map(m) => AnyDevice::Map(MappedDevice::new(
                    self.link.clone(),
                    self.config.unit,
                    m.clone(),
                )),
            };
            self.device = Some(d);
        }
        self.device.as_ref().ok_or(DiscoverError::NotSunSpec {
            unit: self.config.unit,
        })
    }
}

/// The running devices of a metering point.
#[derive(Debug)]
pub struct Devices {
    pub grid: Slot,
    pub pv: Option<Slot>,
}

impl Devices {
    /// Creates the links (sharing one per serial port) without connecting.
    pub fn new(setup: &DeviceSetup, clock: Arc<dyn Clock>) -> Devices {
        let mut buses: BTreeMap<PathBuf, Link> = BTreeMap::new();
        let mut link_for = |t: &Transport| match t {
            Transport::Tcp(_) => Link::new(t.clone(), setup.timeout, Arc::clone(&clock)),
            Transport::Rtu { path, .. } => buses
                .entry(path.clone())
                .or_insert_with(|| Link::new(t.clone(), setup.timeout, Arc::clone(&clock)))
                .clone(),
        };
        let grid = Slot {
            link: link_for(&setup.grid.transport),
            config: setup.grid.clone(),
            device: None,
        };
        let pv = setup.pv.as_ref().map(|c| Slot {
            link: link_for(&c.transport),
            config: c.clone(),
            device: None,
        });
        Devices { grid, pv }
    }
}
