//! SunSpec devices through the `sunspec` crate: discovery, then typed reads
//! of the supported models with the crate's point definitions (offsets,
//! lengths, scale-factor points, "not implemented" sentinels).
//!
//! Supported models: common (1); inverters 101/102/103 (integer + scale
//! factor) and 111/112/113 (float); basic storage 124; meters 201–204
//! (integer + scale factor) and 211–214 (float). Others in the chain are
//! skipped by their length (the crate's chain walk does that).
//!
//! Discovery probes the base addresses 40000, 0 and 50000 in the order of the
//! SunSpec specification (40000 is by far the most common; probing it first
//! spares most devices a probe that some answer only with a timeout). A
//! Modbus exception or a timeout at one base moves on to the next; only a
//! broken connection stops discovery. The crate then walks the whole chain
//! from the base that answered `SunS`.
//!
//! Values the device marks "not implemented" (0x8000 for int16 and scale
//! factors, 0xFFFF/0xFFFFFFFF for unsigned values, NaN for floats) are
//! [`DeviceError::NotAvailable`], never zero. Power is rounded to the nearest
//! watt; counters are rounded down so they never run ahead of the device.

use crate::capability::{
    Battery, BatteryValues, DeviceError, GridEnergy, GridMeter, GridValues, PowerLimit, PvInverter,
    PvValues, StorageCommand, StorageControl,
};
use crate::link::{Function, Link, LinkError, from_sunspec};
use protocol::{WattHours, Watts};
use sunspec::Value;
use sunspec::client::{AsyncClient, Config, DiscoveryError};
use sunspec::models::{
    model1, model101, model102, model103, model111, model112, model113, model120, model121,
    model123, model124, model201, model202, model203, model204, model211, model212, model213,
    model214,
};

/// The base addresses probed for the `SunS` marker, in order.
pub const BASES: [u16; 3] = [40000, 0, 50000];

/// The model ids this module reads.
pub const SUPPORTED_MODELS: [u16; 16] = [
    1, 101, 102, 103, 111, 112, 113, 124, 201, 202, 203, 204, 211, 212, 213, 214,
];

/// The control and rating models this module writes or reads for the power
/// limit: nameplate (120), basic settings (121), immediate controls (123).
pub const CONTROL_MODELS: [u16; 3] = [120, 121, 123];

/// Why discovery failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiscoverError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("unit {unit}: no SunSpec marker at any of {BASES:?}")]
    NotSunSpec { unit: u8 },
    #[error("unit {unit}: model chain is malformed ({why})")]
    Malformed { unit: u8, why: String },
}

/// A model block found in the chain: id, body address, body length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ModelBlock {
    pub id: u16,
    pub addr: u16,
    pub len: u16,
}

/// The common model's identification.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct CommonInfo {
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MeterPts {
    Int {
        w: u16,
        w_sf: u16,
        imp: u16,
        exp: u16,
        sf: u16,
    },
    Float {
        w: u16,
        imp: u16,
        exp: u16,
    },
}

macro_rules! meter_int {
    ($m:ty) => {
        MeterPts::Int {
            w: <$m>::W.offset,
            w_sf: <$m>::W_SF.offset,
            imp: <$m>::TOT_WH_IMP.offset,
            exp: <$m>::TOT_WH_EXP.offset,
            sf: <$m>::TOT_WH_SF.offset,
        }
    };
}
macro_rules! meter_float {
    ($m:ty) => {
        MeterPts::Float {
            w: <$m>::W.offset,
            imp: <$m>::TOT_WH_IMP.offset,
            exp: <$m>::TOT_WH_EXP.offset,
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvPts {
    Int {
        w: u16,
        w_sf: u16,
        wh: u16,
        wh_sf: u16,
        st: u16,
    },
    Float {
        w: u16,
        wh: u16,
        st: u16,
    },
}

macro_rules! inv_int {
    ($m:ty) => {
        InvPts::Int {
            w: <$m>::W.offset,
            w_sf: <$m>::W_SF.offset,
            wh: <$m>::WH.offset,
            wh_sf: <$m>::WH_SF.offset,
            st: <$m>::ST.offset,
        }
    };
}
macro_rules! inv_float {
    ($m:ty) => {
        InvPts::Float {
            w: <$m>::W.offset,
            wh: <$m>::WH.offset,
            st: <$m>::ST.offset,
        }
    };
}

fn meter_pts(id: u16) -> Option<MeterPts> {
    Some(match id {
        201 => meter_int!(model201::Model201),
        202 => meter_int!(model202::Model202),
        203 => meter_int!(model203::Model203),
        204 => meter_int!(model204::Model204),
        211 => meter_float!(model211::Model211),
        212 => meter_float!(model212::Model212),
        213 => meter_float!(model213::Model213),
        214 => meter_float!(model214::Model214),
        _ => return None,
    })
}

fn inv_pts(id: u16) -> Option<InvPts> {
    Some(match id {
        101 => inv_int!(model101::Model101),
        102 => inv_int!(model102::Model102),
        103 => inv_int!(model103::Model103),
        111 => inv_float!(model111::Model111),
        112 => inv_float!(model112::Model112),
        113 => inv_float!(model113::Model113),
        _ => return None,
    })
}

/// Registers to read from the start of a block so that every used point is
/// inside (all used points sit in the first 125 registers of every model).
fn span(offsets: &[u16], block_len: u16) -> u16 {
    offsets
        .iter()
        .map(|o| o + 2)
        .max()
        .unwrap_or(0)
        .min(block_len)
        .min(125)
}

fn words(
    block: &[u16],
    offset: u16,
    len: u16,
    point: &'static str,
) -> Result<Vec<u16>, DeviceError> {
    let s = usize::from(offset);
    block
        .get(s..s + usize::from(len))
        .map(<[u16]>::to_vec)
        .ok_or(DeviceError::Invalid {
            point,
            why: "outside the model block".into(),
        })
}

/// An int16 point, `None` when it is the "not implemented" value 0x8000.
pub fn get_i16(block: &[u16], offset: u16, point: &'static str) -> Result<i16, DeviceError> {
    let w = words(block, offset, 1, point)?;
    Option::<i16>::decode(&w)
        .ok()
        .flatten()
        .ok_or(DeviceError::NotAvailable { point })
}

fn get_u16(block: &[u16], offset: u16, point: &'static str) -> Result<u16, DeviceError> {
    let w = words(block, offset, 1, point)?;
    Option::<u16>::decode(&w)
        .ok()
        .flatten()
        .ok_or(DeviceError::NotAvailable { point })
}

fn get_u32(block: &[u16], offset: u16, point: &'static str) -> Result<u32, DeviceError> {
    let w = words(block, offset, 2, point)?;
    Option::<u32>::decode(&w)
        .ok()
        .flatten()
        .ok_or(DeviceError::NotAvailable { point })
}

fn get_f32(block: &[u16], offset: u16, point: &'static str) -> Result<f32, DeviceError> {
    let w = words(block, offset, 2, point)?;
    let v = Option::<f32>::decode(&w)
        .ok()
        .flatten()
        .ok_or(DeviceError::NotAvailable { point })?;
    if !v.is_finite() {
        return Err(DeviceError::Invalid {
            point,
            why: format!("{v}"),
        });
    }
    Ok(v)
}

/// Applies a SunSpec scale factor (−10..=10) to a signed value, rounding
/// half away from zero.
pub fn scale_i(v: i64, sf: i16, point: &'static str) -> Result<i64, DeviceError> {
    let bad = || DeviceError::Invalid {
        point,
        why: format!("scale factor {sf}"),
    };
    match sf {
        0..=10 => v
            .checked_mul(
                10i64
                    .checked_pow(u32::from(sf.unsigned_abs()))
                    .ok_or_else(bad)?,
            )
            .ok_or_else(bad),
        -10..=-1 => {
            let d = 10i64.pow(u32::from(sf.unsigned_abs()));
            Ok((v + v.signum() * d / 2) / d)
        }
        _ => Err(bad()),
    }
}

/// Applies a scale factor to a counter, rounding down.
pub fn scale_u(v: u64, sf: i16, point: &'static str) -> Result<u64, DeviceError> {
    let bad = || DeviceError::Invalid {
        point,
        why: format!("scale factor {sf}"),
    };
    match sf {
        0..=10 => v
            .checked_mul(
                10u64
                    .checked_pow(u32::from(sf.unsigned_abs()))
                    .ok_or_else(bad)?,
            )
            .ok_or_else(bad),
        -10..=-1 => Ok(v / 10u64.pow(u32::from(sf.unsigned_abs()))),
        _ => Err(bad()),
    }
}

/// A float power value to whole watts.
pub fn float_power(v: f64, point: &'static str) -> Result<i64, DeviceError> {
    if !v.is_finite() || v.abs() > 1e12 {
        return Err(DeviceError::Invalid {
            point,
            why: format!("{v}"),
        });
    }
    Ok(v.round() as i64)
}

/// A float counter to whole watt-hours (rounded down; negative is invalid).
pub fn float_counter(v: f64, point: &'static str) -> Result<u64, DeviceError> {
    if !v.is_finite() || !(0.0..1e15).contains(&v) {
        return Err(DeviceError::Invalid {
            point,
            why: format!("{v}"),
        });
    }
    Ok(v.floor() as u64)
}

/// Decodes a meter block (pure).
fn decode_meter(pts: MeterPts, b: &[u16]) -> Result<GridValues, DeviceError> {
    let (power, imp, exp) = match pts {
        MeterPts::Int {
            w,
            w_sf,
            imp,
            exp,
            sf,
        } => {
            let wv = get_i16(b, w, "W")?;
            let wsf = get_i16(b, w_sf, "W_SF")?;
            let tsf = get_i16(b, sf, "TotWh_SF")?;
            let i = get_u32(b, imp, "TotWhImp")?;
            let e = get_u32(b, exp, "TotWhExp")?;
            (
                scale_i(i64::from(wv), wsf, "W")?,
                scale_u(u64::from(i), tsf, "TotWhImp")?,
                scale_u(u64::from(e), tsf, "TotWhExp")?,
            )
        }
        MeterPts::Float { w, imp, exp } => (
            float_power(f64::from(get_f32(b, w, "W")?), "W")?,
            float_counter(f64::from(get_f32(b, imp, "TotWhImp")?), "TotWhImp")?,
            float_counter(f64::from(get_f32(b, exp, "TotWhExp")?), "TotWhExp")?,
        ),
    };
    Ok(GridValues {
        power: Watts(power),
        energy: GridEnergy {
            import_wh: WattHours(imp),
            export_wh: WattHours(exp),
        },
    })
}

/// Operating state FAULT in models 101–103 and 111–113.
const ST_FAULT: u16 = 7;

/// Decodes an inverter block (pure).
fn decode_inverter(pts: InvPts, b: &[u16]) -> Result<PvValues, DeviceError> {
    let (power, energy, st) = match pts {
        InvPts::Int {
            w,
            w_sf,
            wh,
            wh_sf,
            st,
        } => {
            let wv = get_i16(b, w, "W")?;
            let wsf = get_i16(b, w_sf, "W_SF")?;
            let e = get_u32(b, wh, "WH")?;
            let esf = get_i16(b, wh_sf, "WH_SF")?;
            (
                scale_i(i64::from(wv), wsf, "W")?,
                scale_u(u64::from(e), esf, "WH")?,
                get_u16(b, st, "St")?,
            )
        }
        InvPts::Float { w, wh, st } => (
            float_power(f64::from(get_f32(b, w, "W")?), "W")?,
            float_counter(f64::from(get_f32(b, wh, "WH")?), "WH")?,
            get_u16(b, st, "St")?,
        ),
    };
    // A few inverters report a small negative AC power at night (their own
    // consumption); PV production is never negative.
    Ok(PvValues {
        power: Watts(power.max(0)),
        energy: WattHours(energy),
        fault: st == ST_FAULT,
    })
}

/// Decodes a storage (124) block (pure).
fn decode_storage(b: &[u16]) -> Result<BatteryValues, DeviceError> {
    type S = model124::Model124;
    let soc = match get_u16(b, S::CHA_STATE.offset, "ChaState") {
        Ok(raw) => {
            let sf = get_i16(b, S::CHA_STATE_SF.offset, "ChaState_SF")?;
            let pct = scale_u(u64::from(raw), sf, "ChaState")?;
            Some(u8::try_from(pct.min(100)).unwrap_or(100))
        }
        Err(DeviceError::NotAvailable { .. }) => None,
        Err(e) => return Err(e),
    };
    // Model 124 has no battery power point (only rate set-points).
    Ok(BatteryValues {
        soc_pct: soc,
        power: None,
    })
}

/// A discovered SunSpec device behind a [`Link`].
#[derive(Debug, Clone)]
pub struct SunSpecDevice {
    link: Link,
    unit: u8,
    /// Where the `SunS` marker was found.
    pub base: u16,
    pub common: Option<CommonInfo>,
    /// Supported models found, in chain order.
    pub models: Vec<ModelBlock>,
    /// Models the `sunspec` crate does not know, skipped by their length.
    pub unknown: Vec<ModelBlock>,
    meter: Option<(ModelBlock, MeterPts)>,
    inverter: Option<(ModelBlock, InvPts)>,
    storage: Option<ModelBlock>,
    /// Immediate controls (123) and the rating block (121, else 120) that
    /// turns watts into its percentages.
    controls: Option<(ModelBlock, ModelBlock)>,
    /// `WMaxLimPct_RvrtTms` written with every limit (0: never reverts).
    limit_revert_s: u16,
    /// `InOutWRte_RvrtTms` written with every storage command (0: never
    /// reverts).
    storage_revert_s: u16,
}

impl SunSpecDevice {
    /// Finds the `SunS` marker and walks the model chain of `unit`.
    pub async fn discover(link: &Link, unit: u8) -> Result<SunSpecDevice, DiscoverError> {
        let mut base = None;
        for b in BASES {
            match link.read(unit, Function::Holding, b, 2).await {
                Ok(w) if w == sunspec::SUNS_IDENTIFIER => {
                    base = Some(b);
                    break;
                }
                // Something else lives here, or the device refuses this
                // address range, or it stays silent: try the next base.
                Ok(_) | Err(LinkError::Exception { .. }) | Err(LinkError::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let base = base.ok_or(DiscoverError::NotSunSpec { unit })?;
        let client = AsyncClient::new(
            link.clone(),
            Config {
                discovery_addresses: vec![base],
                // The link bounds every request itself.
                read_timeout: None,
                ..Config::default()
            },
        );
        let dev = client.device(unit).await.map_err(|e| match e {
            DiscoveryError::ModbusError(m) => {
                DiscoverError::Link(from_sunspec(unit, link.timeout(), m))
            }
            DiscoveryError::SunsIdentifierNotFound => DiscoverError::NotSunSpec { unit },
            DiscoveryError::AddressOverflow => DiscoverError::Malformed {
                unit,
                why: "address overflow".into(),
            },
        })?;
        let m = &dev.models;
        let found: [(u16, u16, u16); 19] = [
            (1, m.m1.addr, m.m1.len),
            (120, m.m120.addr, m.m120.len),
            (121, m.m121.addr, m.m121.len),
            (123, m.m123.addr, m.m123.len),
            (101, m.m101.addr, m.m101.len),
            (102, m.m102.addr, m.m102.len),
            (103, m.m103.addr, m.m103.len),
            (111, m.m111.addr, m.m111.len),
            (112, m.m112.addr, m.m112.len),
            (113, m.m113.addr, m.m113.len),
            (124, m.m124.addr, m.m124.len),
            (201, m.m201.addr, m.m201.len),
            (202, m.m202.addr, m.m202.len),
            (203, m.m203.addr, m.m203.len),
            (204, m.m204.addr, m.m204.len),
            (211, m.m211.addr, m.m211.len),
            (212, m.m212.addr, m.m212.len),
            (213, m.m213.addr, m.m213.len),
            (214, m.m214.addr, m.m214.len),
        ];
        let mut models: Vec<ModelBlock> = found
            .into_iter()
            .filter(|(_, _, len)| *len > 0)
            .map(|(id, addr, len)| ModelBlock { id, addr, len })
            .collect();
        models.sort_by_key(|b| b.addr);
        let unknown = dev
            .unknown_models
            .iter()
            .map(|u| ModelBlock {
                id: u.id,
                addr: u.addr,
                len: u.len,
            })
            .collect();
        // The first model of each kind in the chain is the one read.
        let meter = models.iter().find_map(|b| meter_pts(b.id).map(|p| (*b, p)));
        let inverter = models.iter().find_map(|b| inv_pts(b.id).map(|p| (*b, p)));
        let storage = models.iter().copied().find(|b| b.id == 124);
        let find = |id: u16| models.iter().copied().find(|b| b.id == id);
        let controls = match (find(123), find(121).or(find(120))) {
            (Some(c), Some(r)) => Some((c, r)),
            _ => None,
        };
        let mut d = SunSpecDevice {
            link: link.clone(),
            unit,
            base,
            common: None,
            models,
            unknown,
            meter,
            inverter,
            storage,
            controls,
            limit_revert_s: 0,
            storage_revert_s: 0,
        };
        d.common = d.read_common().await.ok();
        Ok(d)
    }

    /// The unit id.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Ids of every model found (supported ones, then unknown ones).
    pub fn model_ids(&self) -> Vec<u16> {
        self.models
            .iter()
            .chain(self.unknown.iter())
            .map(|b| b.id)
            .collect()
    }

    /// Whether the device has a meter, inverter or storage model.
    pub fn has_meter(&self) -> bool {
        self.meter.is_some()
    }
    pub fn has_inverter(&self) -> bool {
        self.inverter.is_some()
    }
    pub fn has_storage(&self) -> bool {
        self.storage.is_some()
    }

    async fn read_common(&self) -> Result<CommonInfo, DeviceError> {
        type C = model1::Model1;
        let b = self
            .models
            .iter()
            .find(|b| b.id == 1)
            .copied()
            .ok_or(DeviceError::Unsupported("common model"))?;
        let n = span(&[C::SN.offset + C::SN.length], b.len);
        let regs = self
            .link
            .read(self.unit, Function::Holding, b.addr, n)
            .await?;
        let s = |p: sunspec::Point<C, String>| p.from_data(&regs).unwrap_or_default();
        Ok(CommonInfo {
            manufacturer: s(C::MN),
            model: s(C::MD),
            serial: s(C::SN),
        })
    }

    async fn block(&self, b: ModelBlock, offsets: &[u16]) -> Result<Vec<u16>, DeviceError> {
        let n = span(offsets, b.len);
        Ok(self
            .link
            .read(self.unit, Function::Holding, b.addr, n)
            .await?)
    }
}

impl GridMeter for SunSpecDevice {
    async fn read_grid(&self) -> Result<GridValues, DeviceError> {
        let (b, pts) = self.meter.ok_or(DeviceError::Unsupported("grid meter"))?;
        let offs = match pts {
            MeterPts::Int {
                w,
                w_sf,
                imp,
                exp,
                sf,
            } => vec![w, w_sf, imp, exp, sf],
            MeterPts::Float { w, imp, exp } => vec![w, imp, exp],
        };
        let regs = self.block(b, &offs).await?;
        decode_meter(pts, &regs)
    }
}

impl PvInverter for SunSpecDevice {
    async fn read_pv(&self) -> Result<PvValues, DeviceError> {
        let (b, pts) = self
            .inverter
            .ok_or(DeviceError::Unsupported("PV inverter"))?;
        let offs = match pts {
            InvPts::Int {
                w,
                w_sf,
                wh,
                wh_sf,
                st,
            } => vec![w, w_sf, wh, wh_sf, st],
            InvPts::Float { w, wh, st } => vec![w, wh, st],
        };
        let regs = self.block(b, &offs).await?;
        decode_inverter(pts, &regs)
    }
}

impl Battery for SunSpecDevice {
    async fn read_battery(&self) -> Result<BatteryValues, DeviceError> {
        let b = self.storage.ok_or(DeviceError::Unsupported("battery"))?;
        type S = model124::Model124;
        let regs = self
            .block(b, &[S::CHA_STATE.offset, S::CHA_STATE_SF.offset])
            .await?;
        decode_storage(&regs)
    }
}

/// 100 % in the hundredths of a percent the limit API speaks.
pub const PCT_FULL_CENTI: i64 = 10_000;

/// Hundredths of a percent as text ("-5.00", "101.50").
fn fmt_centi(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        v.unsigned_abs() / 100,
        v.unsigned_abs() % 100
    )
}

/// The inverter's active-power limit as model 123 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LimitStatus {
    /// `WMaxLim_Ena`: whether the limit is in force.
    pub enabled: bool,
    /// `WMaxLimPct` in hundredths of a percent of the rating.
    pub pct_centi: i64,
    /// `WMaxLimPct_RvrtTms`, seconds (0: the limit never reverts by itself).
    pub revert_s: u16,
    /// The rating the percentage refers to (`WMax` of model 121, else
    /// `WRtg` of model 120), W.
    pub rated_w: u64,
}

impl LimitStatus {
    /// The ceiling in watts while the limit is enabled (rounded down).
    pub fn limit_w(&self) -> Option<u64> {
        let pct = u64::try_from(self.pct_centi).unwrap_or(0);
        self.enabled
            .then(|| self.rated_w.saturating_mul(pct) / PCT_FULL_CENTI as u64)
    }
}

/// Checks a limit in hundredths of a percent (0–100 %). Pure; called before
/// any register is written.
pub fn check_pct(pct_centi: i64) -> Result<(), DeviceError> {
    if (0..=PCT_FULL_CENTI).contains(&pct_centi) {
        Ok(())
    } else {
        Err(DeviceError::Invalid {
            point: "WMaxLimPct",
            why: format!(
                "limit {} % is outside 0–100 % of the rated power",
                fmt_centi(pct_centi)
            ),
        })
    }
}

/// The exponent that turns a register value at scale factor `sf` into
/// hundredths of a percent: value = raw × 10^sf %, so hundredths =
/// raw × 10^(sf + 2). Scale factors outside −10…10 are refused for `point`.
fn centi_exponent(sf: i16, point: &'static str) -> Result<i32, DeviceError> {
    if !(-10..=10).contains(&sf) {
        return Err(DeviceError::Invalid {
            point,
            why: format!("scale factor {sf}"),
        });
    }
    Ok(i32::from(sf) + 2)
}

/// Hundredths of a percent as a register value at exponent `e` (see
/// [`centi_exponent`]), rounded toward zero; `None` on overflow.
fn centi_to_reg(pct_centi: i64, e: i32) -> Option<i64> {
    if e <= 0 {
        pct_centi.checked_mul(10i64.pow(e.unsigned_abs()))
    } else {
        Some(pct_centi / 10i64.pow(e.unsigned_abs()))
    }
}

/// A register value at exponent `e` as hundredths of a percent.
fn reg_to_centi(v: i64, e: i32) -> i64 {
    if e <= 0 {
        v / 10i64.pow(e.unsigned_abs())
    } else {
        v * 10i64.pow(e.unsigned_abs())
    }
}

/// A limit in hundredths of a percent as the `WMaxLimPct` register value
/// for scale factor `sf` (rounded down: never more power than asked). Pure.
pub fn pct_to_raw(pct_centi: i64, sf: i16) -> Result<u16, DeviceError> {
    check_pct(pct_centi)?;
    let e = centi_exponent(sf, "WMaxLimPct")?;
    centi_to_reg(pct_centi, e)
        .and_then(|r| u16::try_from(r).ok())
        .ok_or_else(|| DeviceError::Invalid {
            point: "WMaxLimPct",
            why: format!(
                "{} % does not fit the register at scale factor {sf}",
                fmt_centi(pct_centi)
            ),
        })
}

/// The `WMaxLimPct` register value as hundredths of a percent. Pure.
pub fn raw_to_pct(raw: u16, sf: i16) -> Result<i64, DeviceError> {
    let e = centi_exponent(sf, "WMaxLimPct")?;
    Ok(reg_to_centi(i64::from(raw), e))
}

type Ctl = model123::Model123;
/// Registers read from the start of model 123: up to `WMaxLimPct_SF`.
const CTL_SPAN: u16 = Ctl::W_MAX_LIM_PCT_SF.offset + 1;

impl SunSpecDevice {
    /// Whether the device has immediate controls (123) and a rating (121 or
    /// 120), i.e. whether its power can be limited.
    pub fn has_power_limit(&self) -> bool {
        self.controls.is_some()
    }

    /// Writes `WMaxLimPct_RvrtTms = s` with every limit, so that a limit
    /// lapses by itself if the gateway stops refreshing it (0: never).
    pub fn with_limit_revert(mut self, s: u16) -> SunSpecDevice {
        self.limit_revert_s = s;
        self
    }

    fn control_blocks(&self) -> Result<(ModelBlock, ModelBlock), DeviceError> {
        self.controls.ok_or(DeviceError::Unsupported("power limit"))
    }

    /// The rated power the limit percentage refers to, W.
    pub async fn rated_power_w(&self) -> Result<u64, DeviceError> {
        let (_, r) = self.control_blocks()?;
        let (w, sf) = if r.id == 121 {
            type B = model121::Model121;
            let regs = self
                .block(r, &[B::W_MAX.offset, B::W_MAX_SF.offset])
                .await?;
            (
                get_u16(&regs, B::W_MAX.offset, "WMax")?,
                get_i16(&regs, B::W_MAX_SF.offset, "WMax_SF")?,
            )
        } else {
            type N = model120::Model120;
            let regs = self
                .block(r, &[N::W_RTG.offset, N::W_RTG_SF.offset])
                .await?;
            (
                get_u16(&regs, N::W_RTG.offset, "WRtg")?,
                get_i16(&regs, N::W_RTG_SF.offset, "WRtg_SF")?,
            )
        };
        let rated = scale_u(u64::from(w), sf, "WMax")?;
        if rated == 0 {
            return Err(DeviceError::Invalid {
                point: "WMax",
                why: "rated power is 0 W".into(),
            });
        }
        Ok(rated)
    }

    async fn read_controls(&self) -> Result<(Vec<u16>, i16), DeviceError> {
        let (c, _) = self.control_blocks()?;
        let n = CTL_SPAN.min(c.len);
        let regs = self
            .link
            .read(self.unit, Function::Holding, c.addr, n)
            .await?;
        let sf = get_i16(&regs, Ctl::W_MAX_LIM_PCT_SF.offset, "WMaxLimPct_SF")?;
        Ok((regs, sf))
    }

    /// Reads the limit currently in force.
    pub async fn read_power_limit(&self) -> Result<LimitStatus, DeviceError> {
        let rated_w = self.rated_power_w().await?;
        let (regs, sf) = self.read_controls().await?;
        Ok(LimitStatus {
            enabled: get_u16(&regs, Ctl::W_MAX_LIM_ENA.offset, "WMaxLim_Ena")? == 1,
            pct_centi: raw_to_pct(get_u16(&regs, Ctl::W_MAX_LIM_PCT.offset, "WMaxLimPct")?, sf)?,
            revert_s: get_u16(
                &regs,
                Ctl::W_MAX_LIM_PCT_RVRT_TMS.offset,
                "WMaxLimPct_RvrtTms",
            )
            .unwrap_or(0),
            rated_w,
        })
    }

    /// Sets (`Some`, hundredths of a percent of the rated power, 0–100 %) or
    /// releases (`None`) the active-power limit: one write-multiple-registers
    /// request over `WMaxLimPct` … `WMaxLim_Ena` (window and ramp time 0:
    /// at once), then a read-back that must show what was written. A value
    /// outside 0–100 % is refused before anything is written.
    pub async fn set_power_limit_pct(
        &self,
        pct_centi: Option<i64>,
    ) -> Result<LimitStatus, DeviceError> {
        if let Some(p) = pct_centi {
            check_pct(p)?;
        }
        let (c, _) = self.control_blocks()?;
        let (_, sf) = self.read_controls().await?;
        let (addr, words, raw) = match pct_centi {
            Some(p) => {
                let raw = pct_to_raw(p, sf)?;
                // WMaxLimPct, _WinTms, _RvrtTms, _RmpTms, WMaxLim_Ena.
                let words = vec![raw, 0, self.limit_revert_s, 0, 1];
                (Ctl::W_MAX_LIM_PCT.offset, words, Some(raw))
            }
            None => (Ctl::W_MAX_LIM_ENA.offset, vec![0], None),
        };
        self.link.write(self.unit, c.addr + addr, &words).await?;
        let status = self.read_power_limit().await?;
        let (regs, _) = self.read_controls().await?;
        let got_raw = get_u16(&regs, Ctl::W_MAX_LIM_PCT.offset, "WMaxLimPct")?;
        let confirmed = match raw {
            Some(raw) => status.enabled && got_raw == raw,
            None => !status.enabled,
        };
        if !confirmed {
            return Err(DeviceError::Invalid {
                point: "WMaxLimPct",
                why: format!(
                    "write not confirmed: wrote {words:?}, device reports WMaxLimPct={got_raw}, \
                     WMaxLim_Ena={}",
                    u8::from(status.enabled)
                ),
            });
        }
        Ok(status)
    }
}

impl PowerLimit for SunSpecDevice {
    /// Converts watts into a percentage of the rated power (rounded down); a
    /// ceiling at or above the rating is written as 100 %.
    async fn set_power_limit(&self, limit: Option<Watts>) -> Result<(), DeviceError> {
        match limit {
            Some(Watts(w)) if w < 0 => Err(DeviceError::Invalid {
                point: "WMaxLimPct",
                why: format!("negative limit {w} W"),
            }),
            Some(Watts(w)) => {
                self.control_blocks()?;
                let rated = i128::from(self.rated_power_w().await?);
                let pct = (i128::from(w) * i128::from(PCT_FULL_CENTI) / rated)
                    .min(i128::from(PCT_FULL_CENTI));
                let pct = i64::try_from(pct).unwrap_or(PCT_FULL_CENTI);
                self.set_power_limit_pct(Some(pct)).await.map(|_| ())
            }
            None => self.set_power_limit_pct(None).await.map(|_| ()),
        }
    }
}

type Stor = model124::Model124;
/// Registers read from the start of model 124: the whole fixed block, up to
/// `InOutWRte_SF`.
const STOR_SPAN: u16 = Stor::IN_OUT_W_RTE_SF.offset + 1;
/// `StorCtl_Mod` bits: the charge rate (`InWRte`) and the discharge rate
/// (`OutWRte`) are in force.
pub const STOR_CTL_CHARGE: u16 = 1;
pub const STOR_CTL_DISCHARGE: u16 = 2;

/// Model 124's charge control as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StorageStatus {
    /// `StorCtl_Mod`: [`STOR_CTL_CHARGE`] | [`STOR_CTL_DISCHARGE`] bits.
    pub ctl_mod: u16,
    /// `InWRte`, hundredths of a percent of `WChaMax` (negative: the
    /// battery must discharge at least that much).
    pub in_pct_centi: i64,
    /// `OutWRte`, hundredths of a percent of `WChaMax` (negative: the
    /// battery must charge at least that much).
    pub out_pct_centi: i64,
    /// `InOutWRte_RvrtTms`, seconds (0: never reverts by itself).
    pub revert_s: u16,
    /// `WChaMax`, W: what the percentages refer to.
    pub max_w: u64,
    /// `InOutWRte_SF`.
    pub rate_sf: i16,
}

impl StorageStatus {
    /// The command this state carries out: a forced charge or discharge
    /// (both rates in force, one of them negative), else `Auto` (no rate in
    /// force, or only ceilings).
    pub fn command(&self) -> StorageCommand {
        let both = STOR_CTL_CHARGE | STOR_CTL_DISCHARGE;
        let w = |pct: i64| {
            Watts(
                i64::try_from(self.max_w)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(pct.abs())
                    / PCT_FULL_CENTI,
            )
        };
        if self.ctl_mod & both != both {
            StorageCommand::Auto
        } else if self.out_pct_centi < 0 && self.in_pct_centi >= 0 {
            StorageCommand::Charge(w(self.in_pct_centi))
        } else if self.in_pct_centi < 0 && self.out_pct_centi >= 0 {
            StorageCommand::Discharge(w(self.out_pct_centi))
        } else {
            StorageCommand::Auto
        }
    }
}

/// A signed rate in hundredths of a percent (−100 … 100 %) as the `InWRte`
/// / `OutWRte` register value for scale factor `sf` (rounded toward zero:
/// never more power than asked). Pure; called before anything is written.
pub fn rate_to_raw(pct_centi: i64, sf: i16) -> Result<u16, DeviceError> {
    let bad = |why: String| DeviceError::Invalid {
        point: "InOutWRte",
        why,
    };
    if !(-PCT_FULL_CENTI..=PCT_FULL_CENTI).contains(&pct_centi) {
        return Err(bad(format!(
            "rate {} % is outside -100–100 % of WChaMax",
            fmt_centi(pct_centi)
        )));
    }
    let e = centi_exponent(sf, "InOutWRte")?;
    centi_to_reg(pct_centi, e)
        .and_then(|r| i16::try_from(r).ok())
        .map(|r| r as u16)
        .ok_or_else(|| {
            bad(format!(
                "{} % does not fit the register at scale factor {sf}",
                fmt_centi(pct_centi)
            ))
        })
}

/// The `InWRte` / `OutWRte` register value as hundredths of a percent. Pure.
pub fn raw_to_rate(raw: u16, sf: i16) -> Result<i64, DeviceError> {
    let e = centi_exponent(sf, "InOutWRte")?;
    Ok(reg_to_centi(i64::from(raw as i16), e))
}

impl SunSpecDevice {
    /// Whether the device has basic storage controls (124), i.e. whether its
    /// battery can be commanded.
    pub fn has_storage_control(&self) -> bool {
        self.storage.is_some()
    }

    /// Writes `InOutWRte_RvrtTms = s` with every storage command, so that a
    /// forced charge or discharge lapses by itself if the gateway stops
    /// refreshing it (0: never).
    pub fn with_storage_revert(mut self, s: u16) -> SunSpecDevice {
        self.storage_revert_s = s;
        self
    }

    /// Reads model 124's charge control.
    pub async fn read_storage_control(&self) -> Result<StorageStatus, DeviceError> {
        let b = self
            .storage
            .ok_or(DeviceError::Unsupported("storage control"))?;
        let n = STOR_SPAN.min(b.len);
        let regs = self
            .link
            .read(self.unit, Function::Holding, b.addr, n)
            .await?;
        let max = get_u16(&regs, Stor::W_CHA_MAX.offset, "WChaMax")?;
        let max_sf = get_i16(&regs, Stor::W_CHA_MAX_SF.offset, "WChaMax_SF")?;
        let max_w = scale_u(u64::from(max), max_sf, "WChaMax")?;
        if max_w == 0 {
            return Err(DeviceError::Invalid {
                point: "WChaMax",
                why: "maximum charge rate is 0 W".into(),
            });
        }
        let sf = get_i16(&regs, Stor::IN_OUT_W_RTE_SF.offset, "InOutWRte_SF")?;
        let rate = |off: u16, point: &'static str| {
            get_i16(&regs, off, point).and_then(|r| raw_to_rate(r as u16, sf))
        };
        Ok(StorageStatus {
            ctl_mod: get_u16(&regs, Stor::STOR_CTL_MOD.offset, "StorCtl_Mod")?,
            in_pct_centi: rate(Stor::IN_W_RTE.offset, "InWRte")?,
            out_pct_centi: rate(Stor::OUT_W_RTE.offset, "OutWRte")?,
            revert_s: get_u16(
                &regs,
                Stor::IN_OUT_W_RTE_RVRT_TMS.offset,
                "InOutWRte_RvrtTms",
            )
            .unwrap_or(0),
            max_w,
            rate_sf: sf,
        })
    }

    /// Carries out `cmd` through model 124: a forced charge is `InWRte = p`,
    /// `OutWRte = −p` and a forced discharge `OutWRte = p`, `InWRte = −p` (p
    /// the power as a percentage of `WChaMax`, at most 100 %), written in one
    /// request with the window, reversion and ramp times, then `StorCtl_Mod`
    /// = charge | discharge; `Auto` writes `StorCtl_Mod = 0` only. Then a
    /// read-back that must show what was written.
    pub async fn set_storage_control(
        &self,
        cmd: StorageCommand,
    ) -> Result<StorageStatus, DeviceError> {
        let b = self
            .storage
            .ok_or(DeviceError::Unsupported("storage control"))?;
        if let StorageCommand::Charge(Watts(w)) | StorageCommand::Discharge(Watts(w)) = cmd
            && w < 0
        {
            return Err(DeviceError::Invalid {
                point: "InOutWRte",
                why: format!("negative power {w} W"),
            });
        }
        let before = self.read_storage_control().await?;
        let sf = before.rate_sf;
        let pct_of = |w: i64| {
            let max = i128::from(before.max_w);
            let p =
                (i128::from(w) * i128::from(PCT_FULL_CENTI) / max).min(i128::from(PCT_FULL_CENTI));
            i64::try_from(p).unwrap_or(PCT_FULL_CENTI)
        };
        let rates = match cmd {
            StorageCommand::Auto => None,
            StorageCommand::Charge(Watts(w)) => {
                let p = pct_of(w);
                Some((p, -p))
            }
            StorageCommand::Discharge(Watts(w)) => {
                let p = pct_of(w);
                Some((-p, p))
            }
        };
        let ctl_mod = match rates {
            Some((in_p, out_p)) => {
                let words = vec![
                    rate_to_raw(out_p, sf)?,
                    rate_to_raw(in_p, sf)?,
                    0,
                    self.storage_revert_s,
                    0,
                ];
                self.link
                    .write(self.unit, b.addr + Stor::OUT_W_RTE.offset, &words)
                    .await?;
                STOR_CTL_CHARGE | STOR_CTL_DISCHARGE
            }
            None => 0,
        };
        self.link
            .write(self.unit, b.addr + Stor::STOR_CTL_MOD.offset, &[ctl_mod])
            .await?;
        let got = self.read_storage_control().await?;
        let confirmed = got.ctl_mod == ctl_mod
            && rates.is_none_or(|(in_p, out_p)| {
                // What the registers hold at their scale factor.
                let r = |p: i64| rate_to_raw(p, sf).and_then(|raw| raw_to_rate(raw, sf)).ok();
                Some(got.in_pct_centi) == r(in_p) && Some(got.out_pct_centi) == r(out_p)
            });
        if !confirmed {
            return Err(DeviceError::Invalid {
                point: "StorCtl_Mod",
                why: format!(
                    "write not confirmed: asked {cmd:?}, device reports StorCtl_Mod={}, \
                     InWRte={} %, OutWRte={} %",
                    got.ctl_mod,
                    fmt_centi(got.in_pct_centi),
                    fmt_centi(got.out_pct_centi)
                ),
            });
        }
        Ok(got)
    }
}

impl StorageControl for SunSpecDevice {
    async fn set_storage(&self, cmd: StorageCommand) -> Result<(), DeviceError> {
        self.set_storage_control(cmd).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_are_not_values() {
        let pts = meter_int!(model203::Model203);
        let MeterPts::Int { w, imp, exp, .. } = pts else {
            unreachable!()
        };
        let mut b = vec![0u16; 105];
        b[usize::from(w)] = 0x8000;
        assert_eq!(
            decode_meter(pts, &b),
            Err(DeviceError::NotAvailable { point: "W" })
        );
        b[usize::from(w)] = 0xFF38; // −200 W: export
        b[usize::from(imp)] = 0xFFFF;
        b[usize::from(imp) + 1] = 0xFFFF;
        assert_eq!(
            decode_meter(pts, &b),
            Err(DeviceError::NotAvailable { point: "TotWhImp" })
        );
        b[usize::from(imp)] = 0;
        b[usize::from(imp) + 1] = 7;
        b[usize::from(exp) + 1] = 9;
        let v = decode_meter(pts, &b).expect("valid");
        assert_eq!(v.power, Watts(-200));
        assert_eq!(v.energy.import_wh, WattHours(7));
        assert_eq!(v.energy.export_wh, WattHours(9));

        let fp = meter_float!(model213::Model213);
        let MeterPts::Float { w, .. } = fp else {
            unreachable!()
        };
        let mut b = vec![0u16; 124];
        let nan = f32::NAN.to_bits();
        b[usize::from(w)] = (nan >> 16) as u16;
        b[usize::from(w) + 1] = nan as u16;
        assert_eq!(
            decode_meter(fp, &b),
            Err(DeviceError::NotAvailable { point: "W" })
        );
    }

    #[test]
    fn scale_factors_apply_exactly() {
        assert_eq!(scale_i(1234, 0, "W"), Ok(1234));
        assert_eq!(scale_i(-123, 1, "W"), Ok(-1230));
        assert_eq!(scale_i(-1235, -1, "W"), Ok(-124));
        assert!(scale_i(1, i16::MIN, "W").is_err());
        assert_eq!(scale_u(19, -1, "WH"), Ok(1));
        assert!(scale_u(19, 11, "WH").is_err());
        assert_eq!(float_counter(12.9, "x"), Ok(12));
        assert!(float_counter(-1.0, "x").is_err());
        assert_eq!(float_power(-12.5, "x"), Ok(-13));
    }

    #[test]
    fn limit_percentages_follow_the_scale_factor() {
        assert_eq!(pct_to_raw(5_000, -2), Ok(5_000));
        assert_eq!(pct_to_raw(5_055, -1), Ok(505));
        assert_eq!(pct_to_raw(10_000, 0), Ok(100));
        assert_eq!(pct_to_raw(5_000, -3), Ok(50_000));
        assert_eq!(raw_to_pct(505, -1), Ok(5_050));
        assert_eq!(raw_to_pct(100, 0), Ok(10_000));
        assert!(pct_to_raw(10_001, -2).is_err());
        let Err(DeviceError::Invalid { why, .. }) = pct_to_raw(-500, -2) else {
            panic!("negative accepted");
        };
        assert!(why.contains("-5.00 %"), "{why}");
        // 100 % at scale factor −4 is 1,000,000: does not fit a u16.
        assert!(pct_to_raw(10_000, -4).is_err());
        let st = LimitStatus {
            enabled: true,
            pct_centi: 2_500,
            revert_s: 0,
            rated_w: 8_000,
        };
        assert_eq!(st.limit_w(), Some(2_000));
    }

    #[test]
    fn storage_rates_follow_the_scale_factor() {
        assert_eq!(rate_to_raw(5_000, -2), Ok(5_000));
        assert_eq!(rate_to_raw(-5_000, -2), Ok((-5_000i16) as u16));
        assert_eq!(rate_to_raw(-5_055, -1), Ok((-505i16) as u16));
        assert_eq!(raw_to_rate((-505i16) as u16, -1), Ok(-5_050));
        assert!(rate_to_raw(10_001, -2).is_err());
        assert!(rate_to_raw(-10_001, -2).is_err());
        // −100 % at scale factor −3 is −100,000: does not fit an i16.
        assert!(rate_to_raw(-10_000, -3).is_err());
        let st = |ctl_mod, in_p, out_p| StorageStatus {
            ctl_mod,
            in_pct_centi: in_p,
            out_pct_centi: out_p,
            revert_s: 0,
            max_w: 4_000,
            rate_sf: -2,
        };
        assert_eq!(
            st(3, 5_000, -5_000).command(),
            StorageCommand::Charge(Watts(2_000))
        );
        assert_eq!(
            st(3, -2_500, 2_500).command(),
            StorageCommand::Discharge(Watts(1_000))
        );
        assert_eq!(st(0, -2_500, 2_500).command(), StorageCommand::Auto);
        assert_eq!(st(3, 10_000, 10_000).command(), StorageCommand::Auto);
    }

    /// Model 124 over Modbus TCP against the simulator: a forced charge and
    /// a forced discharge are written, read back by a second client and
    /// obeyed (the grid meter sees the battery's power); `Auto` releases;
    /// a device without 124 is `Unsupported`; the simulator refuses a rate
    /// over 100 % and a write outside the control points.
    #[tokio::test]
    async fn storage_control_over_modbus() {
        use crate::capability::GridMeter;
        use crate::link::Link;
        use crate::simulator::{SimUnit, spawn_devices};
        use protocol::{Clock, ManualClock, UnixMs};
        use std::net::SocketAddr;
        use std::sync::Arc;
        use std::time::Duration;
        // 2021-06-21 10:00 UTC.
        let clock = Arc::new(ManualClock::new(UnixMs(1_624_269_600_000)));
        let h = crate::SimHousehold::from_seed(3);
        let sim = spawn_devices(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            vec![
                SimUnit::sunspec(1, 40000, &[1, 103, 124]),
                SimUnit::sunspec(2, 40000, &[1, 203]),
                SimUnit::sunspec(3, 40000, &[1, 103]),
            ],
            h,
            clock.clone(),
        )
        .await
        .expect("simulator");
        let t = Duration::from_secs(2);
        let link = Link::tcp(sim.addr, t, clock.clone());
        let dev = SunSpecDevice::discover(&link, 1)
            .await
            .expect("discover")
            .with_storage_revert(600);
        assert!(dev.has_storage_control());
        // Another client, as anyone else on the bus would see it.
        let other = Link::tcp(sim.addr, t, clock.clone());
        let watcher = SunSpecDevice::discover(&other, 1).await.expect("discover");
        let meter = SunSpecDevice::discover(&other, 2).await.expect("meter");
        let st = watcher.read_storage_control().await.expect("read 124");
        assert_eq!((st.ctl_mod, st.max_w), (0, 3_000));
        assert_eq!(st.command(), StorageCommand::Auto);
        let grid_auto = meter.read_grid().await.expect("grid").power.0;

        dev.set_storage(StorageCommand::Charge(Watts(1_500)))
            .await
            .expect("charge");
        let st = watcher.read_storage_control().await.expect("read 124");
        assert_eq!(
            (st.ctl_mod, st.in_pct_centi, st.out_pct_centi, st.revert_s),
            (3, 5_000, -5_000, 600)
        );
        assert_eq!(st.command(), StorageCommand::Charge(Watts(1_500)));
        let grid_charge = meter.read_grid().await.expect("grid").power.0;
        // At least 1.5 kW into the battery, whatever the house does.
        let natural =
            crate::capability::sim_battery(&crate::SimHousehold::from_seed(3), clock.now()).1;
        assert_eq!(grid_charge - grid_auto, 1_500 - natural);

        dev.set_storage(StorageCommand::Discharge(Watts(6_000)))
            .await
            .expect("discharge, capped at WChaMax");
        let st = watcher.read_storage_control().await.expect("read 124");
        assert_eq!((st.in_pct_centi, st.out_pct_centi), (-10_000, 10_000));
        assert_eq!(st.command(), StorageCommand::Discharge(Watts(3_000)));
        let grid_dis = meter.read_grid().await.expect("grid").power.0;
        assert_eq!(grid_dis - grid_auto, -3_000 - natural);

        dev.set_storage(StorageCommand::Auto).await.expect("auto");
        let st = watcher.read_storage_control().await.expect("read 124");
        assert_eq!(st.ctl_mod, 0);
        assert_eq!(meter.read_grid().await.expect("grid").power.0, grid_auto);
        assert!(matches!(
            dev.set_storage(StorageCommand::Charge(Watts(-1))).await,
            Err(DeviceError::Invalid { .. })
        ));

        // The reversion time lapses a command by itself.
        dev.set_storage(StorageCommand::Charge(Watts(3_000)))
            .await
            .expect("charge");
        clock.advance(601_000);
        assert_eq!(
            watcher.read_storage_control().await.expect("read").ctl_mod,
            0,
            "reverted after InOutWRte_RvrtTms"
        );

        // Refused by the device: a rate over 100 %, a read-only point.
        let b = dev.storage.expect("124");
        let refused = |code| move |e: &LinkError| matches!(e, LinkError::Exception { code: c, .. } if *c == code);
        let e = link
            .write(1, b.addr + Stor::IN_W_RTE.offset, &[10_001])
            .await
            .expect_err("over 100 %");
        assert!(
            refused(crate::link::ExceptionCode::IllegalDataValue)(&e),
            "{e}"
        );
        let e = link
            .write(1, b.addr + Stor::CHA_STATE.offset, &[500])
            .await
            .expect_err("ChaState is read-only");
        assert!(
            refused(crate::link::ExceptionCode::IllegalDataAddress)(&e),
            "{e}"
        );

        let plain = SunSpecDevice::discover(&link, 3).await.expect("discover");
        assert!(!plain.has_storage_control());
        assert_eq!(
            plain.set_storage(StorageCommand::Auto).await,
            Err(DeviceError::Unsupported("storage control"))
        );
    }
}
