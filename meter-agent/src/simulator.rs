//! A Modbus device simulator (TCP and RTU) for tests and the demo: SunSpec
//! devices with any of the supported models, and devices laid out by any
//! register map, all reporting one simulated household (real irradiance and
//! load data from [`crate::sim`]) at the injected clock's time.
//!
//! A simulator serves several unit ids ([`SimUnit`]); each is either a
//! SunSpec device ([`SimKind::SunSpec`]: the `SunS` marker at a chosen base
//! address, a chain of models laid out from the `sunspec` crate's point
//! definitions and lengths, optionally with a model the crate does not know,
//! then the end model) or a register-map device ([`SimKind::Map`]: each point
//! encoded as its map describes, everything else reading as zero, as meters
//! do). Inverter models carry the household's PV, meter models its grid
//! connection (`+` import, `−` export), storage models its battery.
//!
//! Faults ([`UnitFaults`], per unit, switchable while running): a Modbus
//! exception, silence (the request times out), slow answers, dropping every
//! open connection, "not implemented" sentinels for power, and a counter
//! reset (the device's counters restart from zero).
//!
//! Reads outside a SunSpec map are answered with `IllegalDataAddress`; a unit
//! id nobody answers to gets `GatewayTargetDevice` over TCP and silence on an
//! RTU bus, as a gateway and a bus would.
//!
//! Writes (function codes 06 and 16) are accepted only on the registers the
//! `sunspec` crate marks writable and the simulator models: the power limit
//! of model 123 (`WMaxLimPct`, its window, reversion and ramp times,
//! `WMaxLim_Ena`) and the charge control of model 124 (`StorCtl_Mod`,
//! `InWRte`, `OutWRte`, their window, reversion and ramp times). Any other
//! register answers `IllegalDataAddress` (02), a value out of range (a limit
//! over 100 %, an enable flag other than 0/1, a `StorCtl_Mod` over 3, a rate
//! outside ±100 %) `IllegalDataValue` (03). An enabled limit clips the PV
//! power every unit reports (and so raises grid power by what was clipped)
//! until it is disabled or its reversion time passes; the energy counters
//! follow the unclipped household model. Models 120 and 121 report the PV
//! peak power as the rating the percentage refers to. A charge control
//! moves the battery's power (3 kW `WChaMax`) into the range its rates
//! allow (a negative rate forces charging or discharging), and the grid
//! power by the difference, until `StorCtl_Mod` is 0 again or its reversion
//! time passes.
//!
//! [`spawn_simulator`] keeps the household layout of the demo: inverter
//! (common, 103, and 120/121/123 for the power limit) at unit 1 and grid
//! meter (common + model 203) at unit 2, both at 40000.

use crate::capability::sim_battery;
use crate::link::Function;
use crate::regmap::RegisterMap;
use crate::sim::{HouseholdMeters, SimHousehold};
use protocol::{Clock, UnixMs};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;
use sunspec::models::{
    model1, model101, model102, model103, model111, model112, model113, model120, model121,
    model123, model124, model201, model202, model203, model204, model211, model212, model213,
    model214,
};
use sunspec::{Group, Model};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tracing::{debug, warn};

/// Where the demo's SunSpec maps start.
pub const SUNSPEC_BASE: u16 = 40000;
/// Unit id of the demo's inverter.
pub const INVERTER_UNIT: u8 = 1;
/// Unit id of the demo's grid meter.
pub const METER_UNIT: u8 = 2;
/// A model id the `sunspec` crate does not know, for chain-walk tests.
pub const UNKNOWN_MODEL_ID: u16 = 63_999;

/// Switches of the demo layout: a failed device answers every request with
/// `ServerDeviceFailure`.
#[derive(Debug, Default)]
pub struct SimFaults {
    pub inverter_failed: AtomicBool,
    pub meter_failed: AtomicBool,
}

/// Faults of one simulated unit.
#[derive(Debug, Default)]
pub struct UnitFaults {
    /// Non-zero: answer every request with this exception code.
    pub exception: AtomicU8,
    /// Never answer (the client's request times out).
    pub silent: AtomicBool,
    /// Delay every answer by this many milliseconds.
    pub slow_ms: AtomicU64,
    /// Drop every open connection at the next request (one-shot).
    pub disconnect: AtomicBool,
    /// Report power as "not implemented" (0x8000, NaN, all ones).
    pub not_implemented: AtomicBool,
    reset_pending: AtomicBool,
    /// Subtracted from (import, export, pv) after a reset.
    offsets: Mutex<[u64; 3]>,
}

impl UnitFaults {
    /// The device's counters restart from zero at its next answer.
    pub fn reset_counters(&self) {
        self.reset_pending.store(true, Ordering::SeqCst);
    }
    /// Clears every fault (a reset stays in effect).
    pub fn clear(&self) {
        self.exception.store(0, Ordering::SeqCst);
        self.silent.store(false, Ordering::SeqCst);
        self.slow_ms.store(0, Ordering::SeqCst);
        self.disconnect.store(false, Ordering::SeqCst);
        self.not_implemented.store(false, Ordering::SeqCst);
    }
}

/// What a unit is.
#[derive(Debug, Clone)]
pub enum SimKind {
    /// A SunSpec device: `SunS` at `base`, then `models` in order (ids from
    /// [`crate::sunspec_dev::SUPPORTED_MODELS`] and
    /// [`crate::sunspec_dev::CONTROL_MODELS`]), with an unknown model of
    /// `unknown_len` registers after the common model when given.
    SunSpec {
        base: u16,
        models: Vec<u16>,
        unknown_len: Option<u16>,
    },
    /// A register-map device.
    Map(RegisterMap),
}

/// One unit id on the simulator.
#[derive(Debug, Clone)]
pub struct SimUnit {
    pub unit: u8,
    pub kind: SimKind,
}

impl SimUnit {
    pub fn sunspec(unit: u8, base: u16, models: &[u16]) -> SimUnit {
        SimUnit {
            unit,
            kind: SimKind::SunSpec {
                base,
                models: models.to_vec(),
                unknown_len: None,
            },
        }
    }
    pub fn map(unit: u8, map: RegisterMap) -> SimUnit {
        SimUnit {
            unit,
            kind: SimKind::Map(map),
        }
    }
}

/// The household's values at one instant, as the devices report them.
#[derive(Debug, Clone, Copy, Default)]
struct Truth {
    /// The inverter's rating (`WRtg`, `WMax`): the PV peak power.
    rated_w: i64,
    grid_w: i64,
    pv_w: i64,
    import_wh: u64,
    export_wh: u64,
    pv_wh: u64,
    soc: u8,
    battery_w: i64,
}

/// Builds a SunSpec register image: `SunS`, models, end model; with which
/// registers a client may write and where each model body starts.
struct MapBuilder {
    regs: Vec<u16>,
    writable: Vec<bool>,
    /// (model id, index of the body in `regs`, body length).
    blocks: Vec<(u16, usize, u16)>,
}

/// A unit's register image (from its base address on).
#[derive(Debug, Clone, Default)]
struct Image {
    regs: Vec<u16>,
    writable: Vec<bool>,
    blocks: Vec<(u16, usize, u16)>,
}

impl Image {
    /// The body index of the first model `id` in the chain.
    fn body(&self, id: u16) -> Option<usize> {
        self.blocks.iter().find(|b| b.0 == id).map(|b| b.1)
    }
    /// The model and offset that register `idx` belongs to.
    fn point_at(&self, idx: usize) -> Option<(u16, u16)> {
        self.blocks
            .iter()
            .find(|(_, body, len)| (*body..*body + usize::from(*len)).contains(&idx))
            .and_then(|(id, body, _)| Some((*id, u16::try_from(idx - body).ok()?)))
    }
}

impl MapBuilder {
    fn new() -> MapBuilder {
        MapBuilder {
            regs: sunspec::SUNS_IDENTIFIER.to_vec(),
            writable: vec![false; 2],
            blocks: Vec::new(),
        }
    }
    fn header(&mut self, id: u16, len: u16) -> usize {
        self.regs.push(id);
        self.regs.push(len);
        let base = self.regs.len();
        self.regs.resize(base + usize::from(len), 0);
        self.writable.resize(self.regs.len(), false);
        self.blocks.push((id, base, len));
        base
    }
    /// Lets clients write `p` (it must be writable in the crate's
    /// definition: the simulator never accepts a write a device would not).
    fn allow<G: Group, T: sunspec::Value>(&mut self, base: usize, p: &sunspec::Point<G, T>) {
        if !p.writable {
            return;
        }
        let start = base + usize::from(p.offset);
        for w in self
            .writable
            .iter_mut()
            .skip(start)
            .take(usize::from(p.length))
        {
            *w = true;
        }
    }
    fn model<M: Model + Group>(&mut self) -> usize {
        self.header(M::ID, <M as Group>::LEN)
    }
    fn put(&mut self, base: usize, offset: u16, words: &[u16]) {
        let start = base + usize::from(offset);
        for (i, w) in words.iter().enumerate() {
            if let Some(slot) = self.regs.get_mut(start + i) {
                *slot = *w;
            }
        }
    }
    fn finish(mut self) -> Image {
        self.regs.push(0xFFFF);
        self.regs.push(0);
        self.writable.resize(self.regs.len(), false);
        Image {
            regs: self.regs,
            writable: self.writable,
            blocks: self.blocks,
        }
    }
}

fn f32w(v: f64) -> [u16; 2] {
    let b = (v as f32).to_bits();
    [(b >> 16) as u16, b as u16]
}

fn u32w(v: u32) -> [u16; 2] {
    [(v >> 16) as u16, v as u16]
}

/// `value` as an `i16` and a scale factor: `value ≈ v × 10^sf`.
fn scaled_i16(value: i64) -> (i16, i16) {
    let mut sf = 0i16;
    let mut v = value;
    while !(i64::from(i16::MIN) + 1..=i64::from(i16::MAX)).contains(&v) && sf < 9 {
        sf += 1;
        v = (value as f64 / 10f64.powi(i32::from(sf))).round() as i64;
    }
    (i16::try_from(v).unwrap_or(0), sf)
}

/// Counters as `u32` with one shared scale factor; exact below 4.29 GWh.
fn scaled_u32_pair(a: u64, b: u64) -> (u32, u32, i16) {
    let mut sf = 0i16;
    let mut div = 1u64;
    while a.max(b) / div > u64::from(u32::MAX - 1) && sf < 9 {
        sf += 1;
        div *= 10;
    }
    let cut = |x: u64| u32::try_from(x / div).unwrap_or(u32::MAX - 1);
    (cut(a), cut(b), sf)
}

macro_rules! int_inverter {
    ($b:expr, $m:ty, $t:expr, $na:expr) => {{
        type I = $m;
        let base = $b.model::<I>();
        let (w, w_sf) = scaled_i16($t.pv_w);
        let w = if $na { 0x8000 } else { w as u16 };
        $b.put(base, I::W.offset, &[w]);
        $b.put(base, I::W_SF.offset, &[w_sf as u16]);
        let (wh, _, wh_sf) = scaled_u32_pair($t.pv_wh, 0);
        $b.put(base, I::WH.offset, &u32w(wh));
        $b.put(base, I::WH_SF.offset, &[wh_sf as u16]);
        $b.put(base, I::HZ.offset, &[5000]);
        $b.put(base, I::HZ_SF.offset, &[(-2i16) as u16]);
        // 4 = MPPT, 2 = sleeping.
        $b.put(base, I::ST.offset, &[if $t.pv_w > 0 { 4 } else { 2 }]);
    }};
}

macro_rules! float_inverter {
    ($b:expr, $m:ty, $t:expr, $na:expr) => {{
        type I = $m;
        let base = $b.model::<I>();
        let w = if $na { f64::NAN } else { $t.pv_w as f64 };
        $b.put(base, I::W.offset, &f32w(w));
        $b.put(base, I::WH.offset, &f32w($t.pv_wh as f64));
        $b.put(base, I::HZ.offset, &f32w(50.0));
        $b.put(base, I::ST.offset, &[if $t.pv_w > 0 { 4 } else { 2 }]);
    }};
}

macro_rules! int_meter {
    ($b:expr, $m:ty, $t:expr, $na:expr) => {{
        type M = $m;
        let base = $b.model::<M>();
        let (w, w_sf) = scaled_i16($t.grid_w);
        let w = if $na { 0x8000 } else { w as u16 };
        $b.put(base, M::W.offset, &[w]);
        $b.put(base, M::W_SF.offset, &[w_sf as u16]);
        let (imp, exp, sf) = scaled_u32_pair($t.import_wh, $t.export_wh);
        $b.put(base, M::TOT_WH_IMP.offset, &u32w(imp));
        $b.put(base, M::TOT_WH_EXP.offset, &u32w(exp));
        $b.put(base, M::TOT_WH_SF.offset, &[sf as u16]);
        $b.put(base, M::HZ.offset, &[5000]);
        $b.put(base, M::V_SF.offset, &[(-1i16) as u16]);
    }};
}

macro_rules! float_meter {
    ($b:expr, $m:ty, $t:expr, $na:expr) => {{
        type M = $m;
        let base = $b.model::<M>();
        let w = if $na { f64::NAN } else { $t.grid_w as f64 };
        $b.put(base, M::W.offset, &f32w(w));
        $b.put(base, M::TOT_WH_IMP.offset, &f32w($t.import_wh as f64));
        $b.put(base, M::TOT_WH_EXP.offset, &f32w($t.export_wh as f64));
        $b.put(base, M::HZ.offset, &f32w(50.0));
    }};
}

/// The register image of a SunSpec unit (from its base address on).
fn sunspec_image(unit: u8, models: &[u16], unknown_len: Option<u16>, t: &Truth, na: bool) -> Image {
    let mut b = MapBuilder::new();
    for (i, id) in models.iter().enumerate() {
        match id {
            1 => {
                type C = model1::Model1;
                let base = b.model::<C>();
                let s = |v: &str| sunspec::Value::encode(v.to_owned());
                b.put(base, C::MN.offset, &s("Voltshare"));
                b.put(
                    base,
                    C::MD.offset,
                    &s(&format!(
                        "VS-SIM-{}",
                        models[1..]
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join("-")
                    )),
                );
                b.put(base, C::SN.offset, &s(&format!("VS-U{unit}")));
                b.put(base, C::DA.offset, &[u16::from(unit)]);
            }
            101 => int_inverter!(b, model101::Model101, t, na),
            102 => int_inverter!(b, model102::Model102, t, na),
            103 => int_inverter!(b, model103::Model103, t, na),
            111 => float_inverter!(b, model111::Model111, t, na),
            112 => float_inverter!(b, model112::Model112, t, na),
            113 => float_inverter!(b, model113::Model113, t, na),
            120 => {
                type N = model120::Model120;
                let base = b.model::<N>();
                let (w, sf) = scaled_i16(t.rated_w);
                // DERTyp 4: PV.
                b.put(base, N::DER_TYP.offset, &[4]);
                b.put(base, N::W_RTG.offset, &[w as u16]);
                b.put(base, N::W_RTG_SF.offset, &[sf as u16]);
            }
            121 => {
                // Settings are fixed in the simulator: WMax is read-only
                // here (a device may refuse to change it).
                type B = model121::Model121;
                let base = b.model::<B>();
                let (w, sf) = scaled_i16(t.rated_w);
                b.put(base, B::W_MAX.offset, &[w as u16]);
                b.put(base, B::W_MAX_SF.offset, &[sf as u16]);
            }
            123 => {
                // Immediate controls: the power limit is writable, at
                // 100.00 % and disabled until a client writes it.
                type C = model123::Model123;
                let base = b.model::<C>();
                b.put(base, C::W_MAX_LIM_PCT.offset, &[SIM_PCT_FULL]);
                b.put(base, C::W_MAX_LIM_PCT_SF.offset, &[(-2i16) as u16]);
                b.put(base, C::W_MAX_LIM_ENA.offset, &[0]);
                b.put(base, C::CONN.offset, &[1]);
                b.put(base, C::OUT_PF_SET_SF.offset, &[(-3i16) as u16]);
                b.put(base, C::V_AR_PCT_SF.offset, &[0x8000]);
                for p in [
                    C::W_MAX_LIM_PCT_WIN_TMS,
                    C::W_MAX_LIM_PCT_RVRT_TMS,
                    C::W_MAX_LIM_PCT_RMP_TMS,
                ] {
                    b.allow(base, &p);
                }
                b.allow(base, &C::W_MAX_LIM_PCT);
                b.allow(base, &C::W_MAX_LIM_ENA);
            }
            124 => {
                // Basic storage: the charge control (StorCtl_Mod and the
                // rates with their times) is writable; no rate is in force
                // (StorCtl_Mod 0, both rates 100.00 %) until a client
                // writes one.
                type S = model124::Model124;
                let base = b.model::<S>();
                b.put(base, S::W_CHA_MAX.offset, &[SIM_BATTERY_MAX_W as u16]);
                b.put(base, S::W_CHA_MAX_SF.offset, &[0]);
                let soc = if na { 0xFFFF } else { u16::from(t.soc) * 10 };
                b.put(base, S::CHA_STATE.offset, &[soc]);
                b.put(base, S::CHA_STATE_SF.offset, &[(-1i16) as u16]);
                b.put(base, S::STOR_CTL_MOD.offset, &[0]);
                b.put(base, S::IN_W_RTE.offset, &[SIM_PCT_FULL]);
                b.put(base, S::OUT_W_RTE.offset, &[SIM_PCT_FULL]);
                b.put(base, S::IN_OUT_W_RTE_SF.offset, &[(-2i16) as u16]);
                b.put(base, S::W_CHA_DIS_CHA_GRA_SF.offset, &[0]);
                b.allow(base, &S::STOR_CTL_MOD);
                b.allow(base, &S::OUT_W_RTE);
                b.allow(base, &S::IN_W_RTE);
                for p in [
                    S::IN_OUT_W_RTE_WIN_TMS,
                    S::IN_OUT_W_RTE_RVRT_TMS,
                    S::IN_OUT_W_RTE_RMP_TMS,
                ] {
                    b.allow(base, &p);
                }
            }
            201 => int_meter!(b, model201::Model201, t, na),
            202 => int_meter!(b, model202::Model202, t, na),
            203 => int_meter!(b, model203::Model203, t, na),
            204 => int_meter!(b, model204::Model204, t, na),
            211 => float_meter!(b, model211::Model211, t, na),
            212 => float_meter!(b, model212::Model212, t, na),
            213 => float_meter!(b, model213::Model213, t, na),
            214 => float_meter!(b, model214::Model214, t, na),
            other => warn!(
                model = other,
                "simulator has no layout for this model; skipped"
            ),
        }
        if i == 0
            && let Some(len) = unknown_len
        {
            // Garbage that would decode as nonsense if the walk did not skip
            // it by its length.
            let base = b.header(UNKNOWN_MODEL_ID, len);
            let junk: Vec<u16> = (0..len).map(|i| 0xA5A5 ^ i).collect();
            b.put(base, 0, &junk);
        }
    }
    b.finish()
}

/// The register values of a map unit: (function, address) → word.
fn map_image(map: &RegisterMap, t: &Truth, na: bool) -> BTreeMap<(u8, u16), u16> {
    let mut out = BTreeMap::new();
    for (name, p) in &map.points {
        let v = match name.as_str() {
            "grid_power_w" => t.grid_w as f64,
            "import_wh" => t.import_wh as f64,
            "export_wh" => t.export_wh as f64,
            "pv_power_w" => t.pv_w as f64,
            "pv_energy_wh" => t.pv_wh as f64,
            "battery_soc_pct" => f64::from(t.soc),
            "battery_power_w" => t.battery_w as f64,
            _ => continue,
        };
        // Scale-factor registers: −1 keeps one decimal for power, 0 for the
        // rest.
        let sf = if name.ends_with("_w") { -1 } else { 0 };
        let mut words = p.encode(v, sf);
        if na && name.ends_with("_w") {
            words = match p.ty {
                crate::regmap::RegType::F32 => f32w(f64::NAN).to_vec(),
                crate::regmap::RegType::F64 => {
                    let b = f64::NAN.to_bits();
                    (0..4).map(|i| (b >> (48 - 16 * i)) as u16).collect()
                }
                _ => {
                    // The map's own sentinel, or the default convention.
                    let mut q = p.clone();
                    q.scale = None;
                    q.scale_register = None;
                    q.invert = false;
                    let raw = match (p.not_available, p.ty) {
                        (Some(v), _) => v as f64,
                        (None, crate::regmap::RegType::I16) => f64::from(i16::MIN),
                        (None, crate::regmap::RegType::I32) => f64::from(i32::MIN),
                        (None, _) => f64::MAX,
                    };
                    q.encode(raw, 0)
                }
            };
        }
        for (i, w) in words.into_iter().enumerate() {
            out.insert((p.function as u8, p.address.wrapping_add(i as u16)), w);
        }
        if let Some(s) = p.scale_register {
            out.insert((s.function as u8, s.address), sf as u16);
        }
    }
    out
}

/// 100.00 % of `WMaxLimPct`, `InWRte` and `OutWRte` at the simulator's
/// scale factor (−2).
const SIM_PCT_FULL: u16 = 10_000;

/// The simulated battery's maximum charge and discharge rate (`WChaMax`), W.
const SIM_BATTERY_MAX_W: i64 = 3_000;

/// What clients wrote to a unit: register values over its image, and when
/// the power limit was last written (its reversion timer starts there).
#[derive(Debug, Default)]
struct Written {
    regs: BTreeMap<usize, u16>,
    limit_since: Option<UnixMs>,
    /// When model 124's charge control was last written.
    storage_since: Option<UnixMs>,
}

impl Written {
    /// The written value of the point at `off` in the model whose body
    /// starts at `body`, or `default` if it was never written.
    fn get(&self, body: usize, off: u16, default: u16) -> u16 {
        self.regs
            .get(&(body + usize::from(off)))
            .copied()
            .unwrap_or(default)
    }
}

struct UnitState {
    kind: SimKind,
    faults: Arc<UnitFaults>,
    /// The layout of a SunSpec unit (which registers are writable, where
    /// each model starts); empty for a map unit.
    layout: Image,
    written: Mutex<Written>,
}

impl UnitState {
    /// The PV ceiling this unit's model 123 imposes now, W (`None`: no
    /// limit in force). A limit whose reversion time has passed is disabled
    /// here, as the device would do.
    fn pv_cap_w(&self, rated_w: i64, now: UnixMs) -> Option<i64> {
        type C = model123::Model123;
        let body = self.layout.body(123)?;
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if w.get(body, C::W_MAX_LIM_ENA.offset, 0) != 1 {
            return None;
        }
        let revert_ms = u64::from(w.get(body, C::W_MAX_LIM_PCT_RVRT_TMS.offset, 0)) * 1000;
        if revert_ms > 0
            && w.limit_since
                .is_some_and(|since| now.0 >= since.0.saturating_add(revert_ms))
        {
            w.regs
                .insert(body + usize::from(C::W_MAX_LIM_ENA.offset), 0);
            return None;
        }
        let pct = i64::from(w.get(body, C::W_MAX_LIM_PCT.offset, SIM_PCT_FULL));
        Some(rated_w * pct / i64::from(SIM_PCT_FULL))
    }

    /// The battery power range (lowest, highest; W, `+` charging) this
    /// unit's model 124 imposes now (`None`: no rate in force). `InWRte`
    /// caps charging when `StorCtl_Mod` bit 0 is set and `OutWRte` caps
    /// discharging when bit 1 is; a negative rate forces the other way. A
    /// command whose reversion time has passed is dropped here
    /// (`StorCtl_Mod` back to 0), as the device would do.
    fn battery_range_w(&self, now: UnixMs) -> Option<(i64, i64)> {
        type S = model124::Model124;
        let body = self.layout.body(124)?;
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let ctl = w.get(body, S::STOR_CTL_MOD.offset, 0);
        if ctl & 3 == 0 {
            return None;
        }
        let revert_ms = u64::from(w.get(body, S::IN_OUT_W_RTE_RVRT_TMS.offset, 0)) * 1000;
        if revert_ms > 0
            && w.storage_since
                .is_some_and(|since| now.0 >= since.0.saturating_add(revert_ms))
        {
            w.regs.insert(body + usize::from(S::STOR_CTL_MOD.offset), 0);
            return None;
        }
        let pct = |off: u16| i64::from(w.get(body, off, SIM_PCT_FULL) as i16);
        let of_max = |p: i64| SIM_BATTERY_MAX_W * p / i64::from(SIM_PCT_FULL);
        let hi = if ctl & 1 != 0 {
            of_max(pct(S::IN_W_RTE.offset))
        } else {
            SIM_BATTERY_MAX_W
        };
        let lo = if ctl & 2 != 0 {
            -of_max(pct(S::OUT_W_RTE.offset))
        } else {
            -SIM_BATTERY_MAX_W
        };
        Some((lo, hi))
    }

    /// Checks and applies a write of `words` at image index `start`:
    /// `IllegalDataAddress` (02) for a register that is not writable,
    /// `IllegalDataValue` (03) for a value the point does not accept.
    fn write(&self, start: usize, words: &[u16], now: UnixMs) -> Result<(), ExceptionCode> {
        type C = model123::Model123;
        let end = start + words.len();
        if words.is_empty()
            || self
                .layout
                .writable
                .get(start..end)
                .is_none_or(|w| w.iter().any(|x| !x))
        {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        type S = model124::Model124;
        let mut limit = false;
        let mut storage = false;
        for (i, v) in words.iter().enumerate() {
            let ok = match self.layout.point_at(start + i) {
                Some((123, off)) => {
                    limit = true;
                    match off {
                        o if o == C::W_MAX_LIM_PCT.offset => *v <= SIM_PCT_FULL,
                        o if o == C::W_MAX_LIM_ENA.offset => *v <= 1,
                        _ => true,
                    }
                }
                Some((124, off)) => {
                    storage = true;
                    match off {
                        o if o == S::STOR_CTL_MOD.offset => *v <= 3,
                        o if o == S::IN_W_RTE.offset || o == S::OUT_W_RTE.offset => {
                            (*v as i16).unsigned_abs() <= SIM_PCT_FULL
                        }
                        _ => true,
                    }
                }
                _ => true,
            };
            if !ok {
                return Err(ExceptionCode::IllegalDataValue);
            }
        }
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        for (i, v) in words.iter().enumerate() {
            w.regs.insert(start + i, *v);
        }
        if limit {
            w.limit_since = Some(now);
        }
        if storage {
            w.storage_since = Some(now);
        }
        Ok(())
    }
}

/// The shared state behind every connection to one simulator.
struct SimState {
    household: SimHousehold,
    meters: Mutex<HouseholdMeters>,
    clock: Arc<dyn Clock>,
    units: BTreeMap<u8, UnitState>,
    legacy: Option<Arc<SimFaults>>,
    /// Bumped to drop every open TCP connection.
    kill_epoch: Arc<AtomicU64>,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("units", &self.units.keys())
            .finish()
    }
}

/// What the service does with a request.
enum Outcome {
    Answer(Result<Response, ExceptionCode>),
    /// Nobody is there (RTU: silence).
    NoDevice,
}

impl SimState {
    fn truth(&self, faults: &UnitFaults) -> Truth {
        let now: UnixMs = self.clock.now();
        let m = {
            let mut m = self.meters.lock().unwrap_or_else(|e| e.into_inner());
            m.advance(&self.household, now);
            m.clone()
        };
        let raw = [m.import.wh(), m.export.wh(), m.pv.wh()];
        let mut off = faults.offsets.lock().unwrap_or_else(|e| e.into_inner());
        if faults.reset_pending.swap(false, Ordering::SeqCst) {
            *off = raw;
        }
        let (soc, battery_w) = sim_battery(&self.household, now);
        let rated_w = (self.household.pv_kwp * 1000.0).round() as i64;
        let mut pv_w = self.household.pv_power_w(now);
        let mut grid_w = self.household.grid_power_w(now);
        // The household has one inverter: a limit on any unit clips its PV,
        // and what is clipped is no longer exported (the grid meter sees
        // it). The energy counters follow the unclipped model.
        for u in self.units.values() {
            if let Some(cap) = u.pv_cap_w(rated_w, now)
                && pv_w > cap
            {
                grid_w += pv_w - cap;
                pv_w = cap;
            }
        }
        // And one battery: a charge control on any unit moves its power
        // into the commanded range; what it charges more (or discharges
        // less) than it would on its own comes from the grid.
        let mut battery_w = battery_w;
        for u in self.units.values() {
            if let Some((lo, hi)) = u.battery_range_w(now) {
                let forced = battery_w.max(lo).min(hi);
                grid_w += forced - battery_w;
                battery_w = forced;
            }
        }
        Truth {
            rated_w,
            grid_w,
            pv_w,
            import_wh: raw[0].saturating_sub(off[0]),
            export_wh: raw[1].saturating_sub(off[1]),
            pv_wh: raw[2].saturating_sub(off[2]),
            soc,
            battery_w,
        }
    }

    fn handle(&self, unit: u8, req: &Request<'_>) -> Outcome {
        let Some(u) = self.units.get(&unit) else {
            return Outcome::NoDevice;
        };
        if let Some(l) = &self.legacy {
            let failed = match unit {
                INVERTER_UNIT => l.inverter_failed.load(Ordering::SeqCst),
                METER_UNIT => l.meter_failed.load(Ordering::SeqCst),
                _ => false,
            };
            if failed {
                return Outcome::Answer(Err(ExceptionCode::ServerDeviceFailure));
            }
        }
        let code = u.faults.exception.load(Ordering::SeqCst);
        if code != 0 {
            return Outcome::Answer(Err(ExceptionCode::new(code)));
        }
        let (function, addr, qty, write) = match req {
            Request::ReadHoldingRegisters(a, q) => (Function::Holding, *a, *q, None),
            Request::ReadInputRegisters(a, q) => (Function::Input, *a, *q, None),
            Request::WriteMultipleRegisters(a, w) => {
                (Function::Holding, *a, w.len() as u16, Some(w.to_vec()))
            }
            Request::WriteSingleRegister(a, w) => (Function::Holding, *a, 1, Some(vec![*w])),
            _ => return Outcome::Answer(Err(ExceptionCode::IllegalFunction)),
        };
        if qty == 0 || qty > 125 {
            return Outcome::Answer(Err(ExceptionCode::IllegalDataValue));
        }
        if let Some(words) = write {
            // Only SunSpec control points are writable; a register-map
            // meter is read-only everywhere.
            let SimKind::SunSpec { base, .. } = &u.kind else {
                return Outcome::Answer(Err(ExceptionCode::IllegalDataAddress));
            };
            let Some(start) = addr.checked_sub(*base) else {
                return Outcome::Answer(Err(ExceptionCode::IllegalDataAddress));
            };
            return Outcome::Answer(u.write(usize::from(start), &words, self.clock.now()).map(
                |()| match req {
                    Request::WriteSingleRegister(a, w) => Response::WriteSingleRegister(*a, *w),
                    _ => Response::WriteMultipleRegisters(addr, qty),
                },
            ));
        }
        let na = u.faults.not_implemented.load(Ordering::SeqCst);
        let t = self.truth(&u.faults);
        let words = match &u.kind {
            SimKind::SunSpec {
                base,
                models,
                unknown_len,
            } => {
                if function != Function::Holding {
                    return Outcome::Answer(Err(ExceptionCode::IllegalFunction));
                }
                let mut image = sunspec_image(unit, models, *unknown_len, &t, na).regs;
                {
                    let w = u.written.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, v) in &w.regs {
                        if let Some(slot) = image.get_mut(*i) {
                            *slot = *v;
                        }
                    }
                }
                let Some(start) = addr.checked_sub(*base) else {
                    // Some devices refuse register 0 with IllegalFunction
                    // rather than IllegalDataAddress; discovery must move on
                    // to the next base either way.
                    return Outcome::Answer(Err(if addr < 2 {
                        ExceptionCode::IllegalFunction
                    } else {
                        ExceptionCode::IllegalDataAddress
                    }));
                };
                let start = usize::from(start);
                match image.get(start..start + usize::from(qty)) {
                    Some(w) => w.to_vec(),
                    None => return Outcome::Answer(Err(ExceptionCode::IllegalDataAddress)),
                }
            }
            SimKind::Map(map) => {
                let image = map_image(map, &t, na);
                (0..qty)
                    .map(|i| {
                        image
                            .get(&(function as u8, addr.wrapping_add(i)))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect()
            }
        };
        Outcome::Answer(Ok(match function {
            Function::Holding => Response::ReadHoldingRegisters(words),
            Function::Input => Response::ReadInputRegisters(words),
        }))
    }

    /// The future that answers (or, for faults, delays or never answers).
    fn respond(
        self: &Arc<Self>,
        unit: u8,
        req: Request<'static>,
        rtu: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>> {
        let state = Arc::clone(self);
        Box::pin(async move {
            if let Some(u) = state.units.get(&unit) {
                if u.faults.silent.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let slow = u.faults.slow_ms.load(Ordering::SeqCst);
                if slow > 0 {
                    tokio::time::sleep(Duration::from_millis(slow)).await;
                }
                if u.faults.disconnect.swap(false, Ordering::SeqCst) {
                    // Every stream created before this bump fails its next
                    // IO, this one included: the answer is never sent.
                    state.kill_epoch.fetch_add(1, Ordering::SeqCst);
                }
            }
            match state.handle(unit, &req) {
                Outcome::Answer(r) => r.map(Some),
                Outcome::NoDevice if rtu => Ok(None),
                Outcome::NoDevice => Err(ExceptionCode::GatewayTargetDevice),
            }
        })
    }
}

/// One connection's (or one bus's) Modbus service.
#[derive(Clone)]
struct SimService {
    state: Arc<SimState>,
    rtu: bool,
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.state.respond(req.slave, req.request, self.rtu)
    }
}

/// A TCP stream that fails all IO once the simulator's kill epoch moves past
/// the one it was created in: how the simulator drops connections.
struct KillableStream {
    inner: TcpStream,
    epoch: u64,
    global: Arc<AtomicU64>,
}

impl KillableStream {
    fn killed(&self) -> bool {
        self.global.load(Ordering::SeqCst) != self.epoch
    }
}

fn killed_err() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "simulated disconnect")
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(killed_err()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(killed_err()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(killed_err()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimServer {
    /// The TCP address (for a TCP simulator).
    pub addr: SocketAddr,
    pub handle: JoinHandle<()>,
    faults: BTreeMap<u8, Arc<UnitFaults>>,
}

impl SimServer {
    /// The fault switches of `unit`.
    pub fn faults(&self, unit: u8) -> Arc<UnitFaults> {
        self.faults.get(&unit).cloned().unwrap_or_default()
    }
    /// Stops the simulator and closes every connection.
    pub fn stop(&self) {
        self.handle.abort();
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn build_state(
    units: Vec<SimUnit>,
    household: SimHousehold,
    clock: Arc<dyn Clock>,
    legacy: Option<Arc<SimFaults>>,
) -> (Arc<SimState>, BTreeMap<u8, Arc<UnitFaults>>) {
    let mut faults = BTreeMap::new();
    let mut map = BTreeMap::new();
    for u in units {
        let f = Arc::new(UnitFaults::default());
        faults.insert(u.unit, Arc::clone(&f));
        let layout = match &u.kind {
            SimKind::SunSpec {
                models,
                unknown_len,
                ..
            } => sunspec_image(u.unit, models, *unknown_len, &Truth::default(), false),
            SimKind::Map(_) => Image::default(),
        };
        map.insert(
            u.unit,
            UnitState {
                kind: u.kind,
                faults: f,
                layout,
                written: Mutex::new(Written::default()),
            },
        );
    }
    let meters = HouseholdMeters::new(&household, clock.now());
    (
        Arc::new(SimState {
            household,
            meters: Mutex::new(meters),
            clock,
            units: map,
            legacy,
            kill_epoch: Arc::new(AtomicU64::new(0)),
        }),
        faults,
    )
}

async fn serve_tcp(listener: TcpListener, state: Arc<SimState>) {
    let server = Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let service = SimService {
            state: Arc::clone(&state),
            rtu: false,
        };
        let global = Arc::clone(&state.kill_epoch);
        async move {
            // Without TCP_NODELAY, Nagle's algorithm adds up to 40 ms to
            // each answer.
            stream.set_nodelay(true)?;
            debug!(%peer, "modbus client connected");
            let epoch = global.load(Ordering::SeqCst);
            Ok(Some((
                service,
                KillableStream {
                    inner: stream,
                    epoch,
                    global,
                },
            )))
        }
    };
    let on_error = |error: io::Error| debug!(%error, "modbus connection ended with an error");
    if let Err(error) = server.serve(&on_connected, on_error).await {
        warn!(%error, "modbus simulator stopped");
    }
}

/// Starts a simulator with `units` on `bind` (port 0: the OS chooses).
pub async fn spawn_devices(
    bind: SocketAddr,
    units: Vec<SimUnit>,
    household: SimHousehold,
    clock: Arc<dyn Clock>,
) -> io::Result<SimServer> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let (state, faults) = build_state(units, household, clock, None);
    let handle = tokio::spawn(serve_tcp(listener, state));
    Ok(SimServer {
        addr,
        handle,
        faults,
    })
}

/// Serves `units` as Modbus RTU devices on a serial port (or one end of a
/// pseudo-terminal pair), all on one bus.
pub fn spawn_rtu_devices(
    path: &std::path::Path,
    baud: u32,
    units: Vec<SimUnit>,
    household: SimHousehold,
    clock: Arc<dyn Clock>,
) -> io::Result<SimServer> {
    let port = tokio_serial::SerialStream::open(&tokio_serial::new(path.to_string_lossy(), baud))
        .map_err(io::Error::other)?;
    let (state, faults) = build_state(units, household, clock, None);
    let service = SimService { state, rtu: true };
    let handle = tokio::spawn(async move {
        if let Err(error) = tokio_modbus::server::rtu::Server::new(port)
            .serve_forever(service)
            .await
        {
            warn!(%error, "modbus RTU simulator stopped");
        }
    });
    Ok(SimServer {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        handle,
        faults,
    })
}

/// The demo household layout on `bind`: inverter (1 + 103) at unit 1, grid
/// meter (1 + 203) at unit 2. Aborting the task closes every connection.
pub async fn spawn_simulator(
    bind: SocketAddr,
    household: SimHousehold,
    clock: Arc<dyn Clock>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    spawn_simulator_with_faults(bind, household, clock, Arc::new(SimFaults::default())).await
}

/// [`spawn_simulator`] with the demo's fault switches.
pub async fn spawn_simulator_with_faults(
    bind: SocketAddr,
    household: SimHousehold,
    clock: Arc<dyn Clock>,
    faults: Arc<SimFaults>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let units = vec![
        SimUnit::sunspec(INVERTER_UNIT, SUNSPEC_BASE, &[1, 103, 120, 121, 123]),
        SimUnit::sunspec(METER_UNIT, SUNSPEC_BASE, &[1, 203]),
    ];
    let (state, _) = build_state(units, household, clock, Some(faults));
    Ok((addr, tokio::spawn(serve_tcp(listener, state))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunspec::models::model203::AcMeterAbcn as M;

    #[test]
    fn map_layout_follows_the_crate() {
        let t = Truth {
            rated_w: 5000,
            grid_w: -1234,
            pv_w: 3000,
            import_wh: 77_000,
            export_wh: 5,
            pv_wh: 9,
            soc: 50,
            battery_w: 0,
        };
        let map = sunspec_image(2, &[1, 203], Some(10), &t, false).regs;
        assert_eq!(&map[0..2], &sunspec::SUNS_IDENTIFIER);
        assert_eq!((map[2], map[3]), (1, 66));
        assert_eq!((map[70], map[71]), (UNKNOWN_MODEL_ID, 10));
        let at = 72 + 10;
        assert_eq!((map[at], map[at + 1]), (203, 105));
        let body = &map[at + 2..at + 2 + 105];
        assert_eq!(M::TOT_WH_IMP.from_data(body).expect("decodes"), 77_000);
        assert_eq!(M::W.from_data(body).expect("decodes"), -1234);
        assert_eq!(&map[map.len() - 2..], &[0xFFFF, 0]);
    }

    #[test]
    fn scale_factors() {
        assert_eq!(scaled_i16(1234), (1234, 0));
        assert_eq!(scaled_i16(-40_000), (-4000, 1));
        assert_eq!(scaled_u32_pair(5, 7), (5, 7, 0));
        assert_eq!(scaled_u32_pair(50_000_000_000, 7), (500_000_000, 0, 2));
    }
}
