//! The Modbus poller: discovers SunSpec models on the inverter and the grid
//! meter with the `sunspec` crate, then reads power, energy and their scale
//! factors on every poll.
//!
//! Errors keep their layer: a transport failure (connection refused or
//! reset, a timeout) is [`PollError::Transport`] or [`PollError::Timeout`]
//! and makes the caller reconnect; a Modbus exception from a device is
//! [`PollError::Exception`] and leaves the connection up; a value that the
//! device marks "not implemented" or that does not decode is
//! [`PollError::Invalid`]. None of them ever turns into a number: a failed
//! read yields no value.
//!
//! Model support: inverters 101/102/103 and meters 201–204 share their point
//! offsets for the values read here, but the offsets are still taken from the
//! matching model type's point constants.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use sunspec::client::{AsyncClient, AsyncModbusClient, Config, DiscoveryError, ModbusError};
use sunspec::models::{model101, model102, model103, model201, model202, model203, model204};
use sunspec::{Point, Value};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_modbus::client::Context;

/// Why a poll failed, by layer.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The connection failed or broke: reconnect.
    #[error("modbus transport error: {0}")]
    Transport(String),
    /// No answer within the timeout: reconnect (the answer may still come and
    /// would be mismatched to the next request).
    #[error("modbus request timed out after {0:?}")]
    Timeout(Duration),
    /// The device answered with a Modbus exception; the link is fine.
    #[error("device unit {unit} answered with an exception: {error}")]
    Exception { unit: u8, error: String },
    /// The device has no SunSpec map or lacks a required model.
    #[error("device unit {unit}: {reason}")]
    Discovery { unit: u8, reason: String },
    /// A value is marked not implemented or does not decode.
    #[error("device unit {unit}: invalid value for {point}")]
    Invalid { unit: u8, point: &'static str },
}

impl PollError {
    /// Whether the connection should be dropped and re-established.
    pub fn needs_reconnect(&self) -> bool {
        matches!(self, PollError::Transport(_) | PollError::Timeout(_))
    }
}

fn classify(unit: u8, timeout: Duration, e: ModbusError) -> PollError {
    match e {
        ModbusError::Timeout => PollError::Timeout(timeout),
        ModbusError::IO(e) => PollError::Transport(e.to_string()),
        ModbusError::Protocol(e) => PollError::Transport(e.to_string()),
        other => PollError::Exception {
            unit,
            error: other.to_string(),
        },
    }
}

/// Point offsets of the inverter values, taken from the discovered model's
/// definitions.
#[derive(Debug, Clone, Copy)]
struct InverterPoints {
    w: u16,
    w_sf: u16,
    wh: u16,
    wh_sf: u16,
    st: u16,
}

macro_rules! inverter_points {
    ($m:ty) => {
        InverterPoints {
            w: <$m>::W.offset,
            w_sf: <$m>::W_SF.offset,
            wh: <$m>::WH.offset,
            wh_sf: <$m>::WH_SF.offset,
            st: <$m>::ST.offset,
        }
    };
}

/// Point offsets of the meter values.
#[derive(Debug, Clone, Copy)]
struct MeterPoints {
    w: u16,
    w_sf: u16,
    imp: u16,
    exp: u16,
    tot_sf: u16,
}

macro_rules! meter_points {
    ($m:ty) => {
        MeterPoints {
            w: <$m>::W.offset,
            w_sf: <$m>::W_SF.offset,
            imp: <$m>::TOT_WH_IMP.offset,
            exp: <$m>::TOT_WH_EXP.offset,
            tot_sf: <$m>::TOT_WH_SF.offset,
        }
    };
}

/// A discovered model block: where it is and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelBlock {
    pub id: u16,
    pub addr: u16,
    pub len: u16,
}

/// One inverter poll, in integer SI units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InverterValues {
    /// AC power, W.
    pub power_w: i64,
    /// Lifetime AC energy, Wh.
    pub energy_wh: u64,
    /// The inverter reports a fault.
    pub fault: bool,
}

/// One meter poll, in integer SI units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterValues {
    /// Total real power, W: `+` import, `−` export.
    pub power_w: i64,
    pub import_wh: u64,
    pub export_wh: u64,
}

/// Applies a SunSpec scale factor to an integer. Scale factors outside
/// −10..=10 (including the "not implemented" sentinel −32768) are refused.
fn apply_sf_i(v: i64, sf: i16) -> Option<i64> {
    match sf {
        0..=10 => v.checked_mul(10i64.checked_pow(u32::try_from(sf).ok()?)?),
        -10..=-1 => {
            let d = 10i64.pow(u32::from(sf.unsigned_abs()));
            // Round half away from zero: power is an instantaneous value.
            Some((v + v.signum() * d / 2) / d)
        }
        _ => None,
    }
}

/// Applies a scale factor to a counter. Negative factors round down so that a
/// counter never appears to run ahead of the device.
fn apply_sf_u(v: u64, sf: i16) -> Option<u64> {
    match sf {
        0..=10 => v.checked_mul(10u64.checked_pow(u32::try_from(sf).ok()?)?),
        -10..=-1 => Some(v / 10u64.pow(u32::from(sf.unsigned_abs()))),
        _ => None,
    }
}

fn decode_at<T: Value>(
    block: &[u16],
    unit: u8,
    name: &'static str,
    offset: u16,
    len: u16,
) -> Result<T, PollError> {
    let start = usize::from(offset);
    let words = block
        .get(start..start + usize::from(len))
        .ok_or(PollError::Invalid { unit, point: name })?;
    T::decode(words).map_err(|_| PollError::Invalid { unit, point: name })
}

fn point<G: sunspec::Group, T: Value>(p: &Point<G, T>) -> (u16, u16) {
    (p.offset, p.length)
}

/// Decodes an inverter model block (pure: no IO), checking "not implemented"
/// sentinels.
fn decode_inverter(
    unit: u8,
    p: InverterPoints,
    block: &[u16],
) -> Result<InverterValues, PollError> {
    let (_, l1) = point(&model103::Model103::W);
    let (_, l2) = point(&model103::Model103::WH);
    let w: i16 = decode_at(block, unit, "W", p.w, l1)?;
    let w_sf: i16 = decode_at(block, unit, "W_SF", p.w_sf, 1)?;
    let wh: u32 = decode_at(block, unit, "WH", p.wh, l2)?;
    let wh_sf: i16 = decode_at(block, unit, "WH_SF", p.wh_sf, 1)?;
    let st: u16 = decode_at(block, unit, "St", p.st, 1)?;
    if w == i16::MIN {
        return Err(PollError::Invalid { unit, point: "W" });
    }
    // acc32 "not accumulated" is 0 per SunSpec; the crate's u32 sentinel is
    // all ones. Neither is a real reading.
    if wh == 0 || wh == u32::MAX {
        return Err(PollError::Invalid { unit, point: "WH" });
    }
    let power_w = apply_sf_i(i64::from(w), w_sf).ok_or(PollError::Invalid {
        unit,
        point: "W_SF",
    })?;
    let energy_wh = apply_sf_u(u64::from(wh), wh_sf).ok_or(PollError::Invalid {
        unit,
        point: "WH_SF",
    })?;
    // St 7 is FAULT in models 101–103.
    Ok(InverterValues {
        power_w: power_w.max(0),
        energy_wh,
        fault: st == 7,
    })
}

/// Decodes a meter model block (pure).
fn decode_meter(unit: u8, p: MeterPoints, block: &[u16]) -> Result<MeterValues, PollError> {
    let w: i16 = decode_at(block, unit, "W", p.w, 1)?;
    let w_sf: i16 = decode_at(block, unit, "W_SF", p.w_sf, 1)?;
    let imp: u32 = decode_at(block, unit, "TotWhImp", p.imp, 2)?;
    let exp: u32 = decode_at(block, unit, "TotWhExp", p.exp, 2)?;
    let sf: i16 = decode_at(block, unit, "TotWh_SF", p.tot_sf, 1)?;
    if w == i16::MIN {
        return Err(PollError::Invalid { unit, point: "W" });
    }
    if imp == u32::MAX || exp == u32::MAX {
        return Err(PollError::Invalid {
            unit,
            point: "TotWh",
        });
    }
    Ok(MeterValues {
        power_w: apply_sf_i(i64::from(w), w_sf).ok_or(PollError::Invalid {
            unit,
            point: "W_SF",
        })?,
        import_wh: apply_sf_u(u64::from(imp), sf).ok_or(PollError::Invalid {
            unit,
            point: "TotWh_SF",
        })?,
        export_wh: apply_sf_u(u64::from(exp), sf).ok_or(PollError::Invalid {
            unit,
            point: "TotWh_SF",
        })?,
    })
}

type Link = Arc<Mutex<Context>>;

/// A connected, discovered pair of devices.
pub struct SunSpecPoller {
    link: Link,
    timeout: Duration,
    inverter: Option<(u8, ModelBlock, InverterPoints)>,
    meter: (u8, ModelBlock, MeterPoints),
}

impl std::fmt::Debug for SunSpecPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Modbus context has no Debug; the discovered layout is what matters.
        f.debug_struct("SunSpecPoller")
            .field("inverter", &self.inverter)
            .field("meter", &self.meter)
            .finish()
    }
}

impl SunSpecPoller {
    /// Connects over TCP (with TCP_NODELAY) and discovers the SunSpec models
    /// of the meter (required) and the inverter (optional: `None` for a
    /// household without PV). Every request is bounded by `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        inverter_unit: Option<u8>,
        meter_unit: u8,
        timeout: Duration,
    ) -> Result<SunSpecPoller, PollError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| PollError::Timeout(timeout))?
            .map_err(|e| PollError::Transport(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| PollError::Transport(e.to_string()))?;
        let link: Link = Arc::new(Mutex::new(tokio_modbus::client::tcp::attach(stream)));
        let config = Config {
            // The project's devices put their map at 40000; probing 0 and
            // 50000 as well would only slow down discovery on a fault.
            discovery_addresses: vec![crate::simulator::SUNSPEC_BASE],
            read_timeout: Some(timeout),
            ..Config::default()
        };
        let client = AsyncClient::new(Arc::clone(&link), config);

        let meter_dev = client
            .device(meter_unit)
            .await
            .map_err(|e| discovery_error(meter_unit, timeout, e))?;
        let meter = [
            (
                203u16,
                meter_dev.models.m203.addr,
                meter_dev.models.m203.len,
                meter_points!(model203::Model203),
            ),
            (
                204,
                meter_dev.models.m204.addr,
                meter_dev.models.m204.len,
                meter_points!(model204::Model204),
            ),
            (
                201,
                meter_dev.models.m201.addr,
                meter_dev.models.m201.len,
                meter_points!(model201::Model201),
            ),
            (
                202,
                meter_dev.models.m202.addr,
                meter_dev.models.m202.len,
                meter_points!(model202::Model202),
            ),
        ]
        .into_iter()
        .find(|(_, _, len, _)| *len > 0)
        .map(|(id, addr, len, pts)| (meter_unit, ModelBlock { id, addr, len }, pts))
        .ok_or(PollError::Discovery {
            unit: meter_unit,
            reason: "no SunSpec meter model (201-204)".into(),
        })?;

        let inverter = match inverter_unit {
            None => None,
            Some(unit) => {
                let dev = client
                    .device(unit)
                    .await
                    .map_err(|e| discovery_error(unit, timeout, e))?;
                let found = [
                    (
                        103u16,
                        dev.models.m103.addr,
                        dev.models.m103.len,
                        inverter_points!(model103::Model103),
                    ),
                    (
                        101,
                        dev.models.m101.addr,
                        dev.models.m101.len,
                        inverter_points!(model101::Model101),
                    ),
                    (
                        102,
                        dev.models.m102.addr,
                        dev.models.m102.len,
                        inverter_points!(model102::Model102),
                    ),
                ]
                .into_iter()
                .find(|(_, _, len, _)| *len > 0)
                .map(|(id, addr, len, pts)| (unit, ModelBlock { id, addr, len }, pts))
                .ok_or(PollError::Discovery {
                    unit,
                    reason: "no SunSpec inverter model (101-103)".into(),
                })?;
                Some(found)
            }
        };
        Ok(SunSpecPoller {
            link,
            timeout,
            inverter,
            meter,
        })
    }

    /// The discovered inverter and meter model blocks.
    pub fn models(&self) -> (Option<ModelBlock>, ModelBlock) {
        (self.inverter.map(|(_, b, _)| b), self.meter.1)
    }

    async fn read_block(&self, unit: u8, block: ModelBlock) -> Result<Vec<u16>, PollError> {
        // Blocks longer than one request (125 registers) are not needed for
        // the points read here: read only the prefix that holds them.
        let len = block.len.min(sunspec::client::DEFAULT_MAX_READ_LENGTH);
        match tokio::time::timeout(
            self.timeout,
            self.link.read_registers(unit, block.addr, len),
        )
        .await
        {
            Err(_) => Err(PollError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(classify(unit, self.timeout, e)),
            Ok(Ok(words)) if words.len() == usize::from(len) => Ok(words),
            Ok(Ok(_)) => Err(PollError::Transport("short register response".into())),
        }
    }

    /// Reads the inverter, or `None` when the household has none configured.
    pub async fn read_inverter(&self) -> Option<Result<InverterValues, PollError>> {
        let (unit, block, pts) = self.inverter?;
        Some(match self.read_block(unit, block).await {
            Ok(words) => decode_inverter(unit, pts, &words),
            Err(e) => Err(e),
        })
    }

    /// Reads the grid meter.
    pub async fn read_meter(&self) -> Result<MeterValues, PollError> {
        let (unit, block, pts) = self.meter;
        let words = self.read_block(unit, block).await?;
        decode_meter(unit, pts, &words)
    }
}

fn discovery_error(unit: u8, timeout: Duration, e: DiscoveryError) -> PollError {
    match e {
        DiscoveryError::ModbusError(m) => classify(unit, timeout, m),
        other => PollError::Discovery {
            unit,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_factors_apply_exactly() {
        assert_eq!(apply_sf_i(1234, 0), Some(1234));
        assert_eq!(apply_sf_i(-123, 1), Some(-1230));
        assert_eq!(apply_sf_i(-1235, -1), Some(-124));
        assert_eq!(apply_sf_i(1234, -1), Some(123));
        assert_eq!(apply_sf_i(1, i16::MIN), None);
        assert_eq!(apply_sf_u(19, -1), Some(1));
        assert_eq!(apply_sf_u(19, 3), Some(19_000));
        assert_eq!(apply_sf_u(19, 11), None);
    }

    #[test]
    fn not_implemented_is_not_a_value() {
        let pts = inverter_points!(model103::Model103);
        let mut block = vec![0u16; 50];
        block[usize::from(pts.w)] = 0x8000;
        block[usize::from(pts.wh) + 1] = 5;
        assert!(matches!(
            decode_inverter(1, pts, &block),
            Err(PollError::Invalid { point: "W", .. })
        ));
        block[usize::from(pts.w)] = 100;
        block[usize::from(pts.wh_sf)] = 0x8000;
        assert!(matches!(
            decode_inverter(1, pts, &block),
            Err(PollError::Invalid { point: "WH_SF", .. })
        ));
        block[usize::from(pts.wh_sf)] = 0;
        let v = decode_inverter(1, pts, &block).expect("valid");
        assert_eq!(
            v,
            InverterValues {
                power_w: 100,
                energy_wh: 5,
                fault: false
            }
        );
        assert!(decode_inverter(1, pts, &block[..10]).is_err());
    }
}
