//! Register maps as data: a meter that does not speak SunSpec is described
//! by a TOML file, so supporting a new meter needs no code.
//!
//! ```toml
//! name = "Eastron SDM120"        # shown by `voltshare scan`
//! id = "sdm120"                  # how a config refers to it
//! default_unit = 1               # optional
//!
//! [points.grid_power_w]          # one table per capability value
//! address = 0x000C               # protocol address (0-based)
//! function = "input"             # "holding" (03, default) or "input" (04)
//! type = "f32"                   # u16 i16 u32 i32 u64 f32 f64
//! order = "high_first"           # word order: "high_first" (default) or "low_first"
//! scale = 1.0                    # fixed factor to W / Wh / % (default 1)
//! # scale_register = { address = 0x0100, type = "i16" }  # or a power-of-ten register
//! invert = false                 # flip the sign (power points only)
//! # not_available = -1           # raw value meaning "not implemented"
//!                                # (default: all ones unsigned, minimum signed)
//! ```
//!
//! Point names and their units and signs (as in [`crate::capability`]):
//! `grid_power_w` (W, `+` import), `import_wh`, `export_wh` (Wh),
//! `pv_power_w` (W ≥ 0), `pv_energy_wh` (Wh), `battery_soc_pct` (%),
//! `battery_power_w` (W, `+` charging).
//!
//! Shipped maps are compiled into the binary ([`shipped`]); user maps are
//! loaded from disk ([`RegisterMap::load`]). Every error names the file, the
//! line and the key ([`MapError`]). Decoding is a pure function of the
//! registers ([`PointDef::decode`]); floats that are NaN and integers equal to
//! the point's `not_available` value are "not available", never zero.

use crate::capability::{
    Battery, BatteryValues, DeviceError, GridEnergy, GridMeter, GridValues, PvInverter, PvValues,
};
use crate::link::{Function, Link};
use protocol::{WattHours, Watts};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The shipped maps: (id, TOML source).
pub const SHIPPED: [(&str, &str); 3] = [
    ("sdm630", include_str!("../maps/sdm630.toml")),
    ("sdm120", include_str!("../maps/sdm120.toml")),
    ("abb-b2x", include_str!("../maps/abb-b2x.toml")),
];

/// A map that could not be loaded: where, and what is wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: key `{key}`: {message}")]
pub struct MapError {
    pub file: String,
    /// 1-based line of the offending key (or table).
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// Register data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegType {
    U16,
    I16,
    U32,
    I32,
    U64,
    F32,
    F64,
}

impl RegType {
    /// Registers the type occupies.
    pub fn words(self) -> u16 {
        match self {
            RegType::U16 | RegType::I16 => 1,
            RegType::U32 | RegType::I32 | RegType::F32 => 2,
            RegType::U64 | RegType::F64 => 4,
        }
    }
    fn is_float(self) -> bool {
        matches!(self, RegType::F32 | RegType::F64)
    }
}

/// Order of the 16-bit words of a multi-register value (bytes within a word
/// are always big-endian, as Modbus defines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    #[default]
    HighFirst,
    LowFirst,
}

/// A register that holds a power-of-ten scale factor (SunSpec style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRegister {
    pub address: u16,
    #[serde(default = "holding")]
    pub function: Function,
}

fn holding() -> Function {
    Function::Holding
}

/// One value of the map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointDef {
    pub address: u16,
    #[serde(default = "holding")]
    pub function: Function,
    #[serde(rename = "type")]
    pub ty: RegType,
    #[serde(default)]
    pub order: WordOrder,
    pub scale: Option<f64>,
    pub scale_register: Option<ScaleRegister>,
    #[serde(default)]
    pub invert: bool,
    /// The raw value meaning "not implemented" (default: all ones for
    /// unsigned types, the minimum for signed ones).
    pub not_available: Option<i64>,
}

/// The smallest and largest magnitude a fixed `scale` may have: a register
/// in nano-units up to one in giga-units. Anything beyond is a typo, and a
/// scale like 1e308 would turn an ordinary reading into infinity.
pub const MIN_SCALE: f64 = 1e-9;
pub const MAX_SCALE: f64 = 1e9;

/// The raw register value before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    Int(i128),
    Float(f64),
}

impl PointDef {
    /// Orders `words` (as read) so that the most significant comes first.
    fn ordered(&self, words: &[u16]) -> Vec<u16> {
        let mut w = words.to_vec();
        if self.order == WordOrder::LowFirst {
            w.reverse();
        }
        w
    }

    fn raw(&self, words: &[u16]) -> Option<Raw> {
        let w = self.ordered(words);
        let mut bits: u64 = 0;
        for x in &w {
            bits = (bits << 16) | u64::from(*x);
        }
        let raw = match self.ty {
            RegType::U16 | RegType::U32 | RegType::U64 => Raw::Int(i128::from(bits)),
            RegType::I16 => Raw::Int(i128::from(bits as u16 as i16)),
            RegType::I32 => Raw::Int(i128::from(bits as u32 as i32)),
            RegType::F32 => return Some(Raw::Float(f64::from(f32::from_bits(bits as u32)))),
            RegType::F64 => return Some(Raw::Float(f64::from_bits(bits))),
        };
        let Raw::Int(i) = raw else { return Some(raw) };
        // Without an explicit value, the SunSpec convention applies: all
        // ones for unsigned types, the minimum for signed ones.
        let na = match (self.not_available, self.ty) {
            (Some(v), _) => i128::from(v),
            (None, RegType::U16) => i128::from(u16::MAX),
            (None, RegType::U32) => i128::from(u32::MAX),
            (None, RegType::U64) => i128::from(u64::MAX),
            (None, RegType::I16) => i128::from(i16::MIN),
            (None, _) => i128::from(i32::MIN),
        };
        (i != na).then_some(raw)
    }

    /// Decodes the point from its registers and (if the map uses one) its
    /// scale-factor register, to an SI value as `f64`. Pure.
    pub fn decode(
        &self,
        words: &[u16],
        scale_reg: Option<u16>,
        point: &'static str,
    ) -> Result<f64, DeviceError> {
        let raw = self.raw(words).ok_or(DeviceError::NotAvailable { point })?;
        let mut v = match raw {
            Raw::Int(i) => i as f64,
            Raw::Float(f) if f.is_nan() => return Err(DeviceError::NotAvailable { point }),
            Raw::Float(f) if !f.is_finite() => {
                return Err(DeviceError::Invalid {
                    point,
                    why: format!("{f}"),
                });
            }
            Raw::Float(f) => f,
        };
        if let Some(s) = self.scale {
            v *= s;
        }
        if self.scale_register.is_some() {
            let sf = scale_reg.ok_or(DeviceError::NotAvailable { point })? as i16;
            if sf == i16::MIN {
                return Err(DeviceError::NotAvailable { point });
            }
            if !(-10..=10).contains(&sf) {
                return Err(DeviceError::Invalid {
                    point,
                    why: format!("scale factor {sf}"),
                });
            }
            v *= 10f64.powi(i32::from(sf));
        }
        if self.invert {
            v = -v;
        }
        // Load-time validation bounds the scale, but a map built in code
        // (or an f64 register near its maximum) could still overflow: a
        // non-finite value never leaves this function.
        if !v.is_finite() {
            return Err(DeviceError::Invalid {
                point,
                why: format!("value out of range after scaling ({v})"),
            });
        }
        Ok(v)
    }

    /// Encodes an SI value into registers (for the simulator): the inverse of
    /// [`PointDef::decode`] with scale-factor exponent `sf`.
    pub fn encode(&self, value: f64, sf: i16) -> Vec<u16> {
        let mut v = if self.invert { -value } else { value };
        if self.scale_register.is_some() {
            v /= 10f64.powi(i32::from(sf));
        }
        if let Some(s) = self.scale {
            v /= s;
        }
        let bits: u64 = match self.ty {
            // Integers are truncated toward zero like a meter's display:
            // counters never run ahead.
            RegType::U16 => u64::from(v.max(0.0) as u16),
            RegType::I16 => u64::from(v as i16 as u16),
            RegType::U32 => u64::from(v.max(0.0) as u32),
            RegType::I32 => u64::from(v as i32 as u32),
            RegType::U64 => v.max(0.0) as u64,
            RegType::F32 => u64::from((v as f32).to_bits()),
            RegType::F64 => v.to_bits(),
        };
        let n = usize::from(self.ty.words());
        let mut w: Vec<u16> = (0..n)
            .map(|i| (bits >> (16 * (n - 1 - i))) as u16)
            .collect();
        if self.order == WordOrder::LowFirst {
            w.reverse();
        }
        w
    }
}

/// The capability values a map may define.
pub const POINT_NAMES: [&str; 7] = [
    "grid_power_w",
    "import_wh",
    "export_wh",
    "pv_power_w",
    "pv_energy_wh",
    "battery_soc_pct",
    "battery_power_w",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    name: String,
    id: String,
    default_unit: Option<u8>,
    #[serde(default)]
    description: Option<String>,
    points: BTreeMap<String, PointDef>,
}

/// A loaded, validated register map.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    pub name: String,
    pub id: String,
    pub default_unit: u8,
    pub description: Option<String>,
    /// By point name (one of [`POINT_NAMES`]).
    pub points: BTreeMap<String, PointDef>,
}

/// The 1-based line of byte offset `at`.
fn line_at(src: &str, at: usize) -> usize {
    src[..at.min(src.len())].matches('\n').count() + 1
}

/// The key written on line `line` (the text before `=`, or a table header).
fn key_on_line(src: &str, line: usize) -> String {
    let text = src.lines().nth(line.saturating_sub(1)).unwrap_or("").trim();
    if let Some(h) = text.strip_prefix('[') {
        return h.trim_end_matches(']').trim().to_owned();
    }
    text.split('=').next().unwrap_or("").trim().to_owned()
}

/// Where `key` is written inside table `[table]` (or the table itself).
fn find_key(src: &str, table: &str, key: Option<&str>) -> usize {
    let header = format!("[{table}]");
    let mut in_table = table.is_empty();
    let mut table_line = 1;
    for (i, l) in src.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_table = t.replace(' ', "") == header.replace(' ', "");
            if in_table {
                table_line = i + 1;
            }
            continue;
        }
        if in_table
            && let Some(k) = key
            && t.split('=').next().map(str::trim) == Some(k)
        {
            return i + 1;
        }
    }
    table_line
}

impl RegisterMap {
    /// Parses and validates a map; `file` names it in errors.
    pub fn parse(file: &str, src: &str) -> Result<RegisterMap, MapError> {
        let err = |line: usize, key: String, message: String| MapError {
            file: file.to_owned(),
            line,
            key,
            message,
        };
        let raw: MapFile = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| line_at(src, s.start)).unwrap_or(1);
            err(line, key_on_line(src, line), e.message().to_owned())
        })?;
        if raw.points.is_empty() {
            return Err(err(
                1,
                "points".into(),
                "a map needs at least one point".into(),
            ));
        }
        for (name, p) in &raw.points {
            let table = format!("points.{name}");
            if !POINT_NAMES.contains(&name.as_str()) {
                return Err(err(
                    find_key(src, &table, None),
                    table,
                    format!("unknown point; expected one of {}", POINT_NAMES.join(", ")),
                ));
            }
            if p.scale.is_some() && p.scale_register.is_some() {
                return Err(err(
                    find_key(src, &table, Some("scale_register")),
                    format!("{table}.scale_register"),
                    "give either scale or scale_register, not both".into(),
                ));
            }
            if let Some(s) = p.scale
                && !(s.is_finite() && (MIN_SCALE..=MAX_SCALE).contains(&s.abs()))
            {
                return Err(err(
                    find_key(src, &table, Some("scale")),
                    format!("{table}.scale"),
                    format!(
                        "scale must be a number whose magnitude is between {MIN_SCALE:e} and \
                         {MAX_SCALE:e}, not {s}"
                    ),
                ));
            }
            if p.invert && !name.ends_with("_w") {
                return Err(err(
                    find_key(src, &table, Some("invert")),
                    format!("{table}.invert"),
                    "only power points can be inverted; counters never go negative".into(),
                ));
            }
            if p.not_available.is_some() && p.ty.is_float() {
                return Err(err(
                    find_key(src, &table, Some("not_available")),
                    format!("{table}.not_available"),
                    "float points use NaN for \"not available\"".into(),
                ));
            }
            if u32::from(p.address) + u32::from(p.ty.words()) > 0x1_0000 {
                return Err(err(
                    find_key(src, &table, Some("address")),
                    format!("{table}.address"),
                    "the value runs past register 65535".into(),
                ));
            }
        }
        Ok(RegisterMap {
            name: raw.name,
            id: raw.id,
            default_unit: raw.default_unit.unwrap_or(1),
            description: raw.description,
            points: raw.points,
        })
    }

    /// Loads a user map from disk.
    pub fn load(path: &Path) -> Result<RegisterMap, MapError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| MapError {
            file: file.clone(),
            line: 0,
            key: String::new(),
            message: e.to_string(),
        })?;
        RegisterMap::parse(&file, &src)
    }

    /// A shipped map by id.
    pub fn shipped(id: &str) -> Option<RegisterMap> {
        shipped().into_iter().find(|m| m.id == id)
    }

    /// A point by name.
    pub fn point(&self, name: &str) -> Option<&PointDef> {
        self.points.get(name)
    }
}

/// Every shipped map, parsed (they are tested to parse).
pub fn shipped() -> Vec<RegisterMap> {
    SHIPPED
        .iter()
        .filter_map(|(id, src)| RegisterMap::parse(&format!("<shipped {id}>"), src).ok())
        .collect()
}

/// A device read through a register map.
#[derive(Debug, Clone)]
pub struct MappedDevice {
    link: Link,
    unit: u8,
    map: RegisterMap,
}

impl MappedDevice {
    pub fn new(link: Link, unit: u8, map: RegisterMap) -> MappedDevice {
        MappedDevice { link, unit, map }
    }

    pub fn map(&self) -> &RegisterMap {
        &self.map
    }

    /// Reads the named points in as few requests as the layout allows
    /// (neighbouring registers of one function in one request, ≤ 125 words)
    /// and decodes each. A point the map lacks is `NotAvailable`.
    async fn read_points(
        &self,
        names: &[&'static str],
    ) -> Result<Vec<Result<f64, DeviceError>>, DeviceError> {
        // The registers needed: (function, first address, words).
        let mut want: Vec<(Function, u16, u16)> = Vec::new();
        for n in names {
            if let Some(p) = self.map.point(n) {
                want.push((p.function, p.address, p.ty.words()));
                if let Some(s) = p.scale_register {
                    want.push((s.function, s.address, 1));
                }
            }
        }
        want.sort_by_key(|(f, a, _)| (*f as u8, *a));
        let mut ranges: Vec<(Function, u16, u16)> = Vec::new();
        for (f, a, n) in want {
            if let Some(last) = ranges.last_mut()
                && last.0 == f
                && u32::from(a) + u32::from(n) <= u32::from(last.1) + 125
                && a <= last.1.saturating_add(last.2).saturating_add(16)
            {
                let end = (a + n).max(last.1 + last.2);
                last.2 = end - last.1;
                continue;
            }
            ranges.push((f, a, n));
        }
        let mut regs: BTreeMap<(u8, u16), u16> = BTreeMap::new();
        for (f, a, n) in ranges {
            let w = self.link.read(self.unit, f, a, n).await?;
            for (i, x) in w.into_iter().enumerate() {
                regs.insert((f as u8, a + i as u16), x);
            }
        }
        let get = |f: Function, a: u16, n: u16| -> Option<Vec<u16>> {
            (0..n)
                .map(|i| regs.get(&(f as u8, a + i)).copied())
                .collect()
        };
        Ok(names
            .iter()
            .map(|n| {
                let p = self
                    .map
                    .point(n)
                    .ok_or(DeviceError::NotAvailable { point: n })?;
                let w = get(p.function, p.address, p.ty.words())
                    .ok_or(DeviceError::NotAvailable { point: n })?;
                let sf = p
                    .scale_register
                    .and_then(|s| get(s.function, s.address, 1))
                    .and_then(|w| w.first().copied());
                p.decode(&w, sf, n)
            })
            .collect())
    }
}

fn to_power(v: f64, point: &'static str) -> Result<Watts, DeviceError> {
    crate::sunspec_dev::float_power(v, point).map(Watts)
}

fn to_counter(v: f64, point: &'static str) -> Result<WattHours, DeviceError> {
    crate::sunspec_dev::float_counter(v, point).map(WattHours)
}

fn take(v: &mut std::vec::IntoIter<Result<f64, DeviceError>>) -> Result<f64, DeviceError> {
    v.next()
        .unwrap_or(Err(DeviceError::NotAvailable { point: "?" }))
}

impl GridMeter for MappedDevice {
    async fn read_grid(&self) -> Result<GridValues, DeviceError> {
        if self.map.point("grid_power_w").is_none() {
            return Err(DeviceError::Unsupported("grid meter"));
        }
        let mut v = self
            .read_points(&["grid_power_w", "import_wh", "export_wh"])
            .await?
            .into_iter();
        Ok(GridValues {
            power: to_power(take(&mut v)?, "grid_power_w")?,
            energy: GridEnergy {
                import_wh: to_counter(take(&mut v)?, "import_wh")?,
                export_wh: to_counter(take(&mut v)?, "export_wh")?,
            },
        })
    }
}

impl PvInverter for MappedDevice {
    async fn read_pv(&self) -> Result<PvValues, DeviceError> {
        if self.map.point("pv_power_w").is_none() {
            return Err(DeviceError::Unsupported("PV inverter"));
        }
        let mut v = self
            .read_points(&["pv_power_w", "pv_energy_wh"])
            .await?
            .into_iter();
        Ok(PvValues {
            power: Watts(to_power(take(&mut v)?, "pv_power_w")?.0.max(0)),
            energy: to_counter(take(&mut v)?, "pv_energy_wh")?,
            fault: false,
        })
    }
}

impl Battery for MappedDevice {
    async fn read_battery(&self) -> Result<BatteryValues, DeviceError> {
        if self.map.point("battery_soc_pct").is_none()
            && self.map.point("battery_power_w").is_none()
        {
            return Err(DeviceError::Unsupported("battery"));
        }
        let mut v = self
            .read_points(&["battery_soc_pct", "battery_power_w"])
            .await?
            .into_iter();
        let soc = match take(&mut v) {
            Ok(x) => Some(x.round().clamp(0.0, 100.0) as u8),
            Err(DeviceError::NotAvailable { .. }) => None,
            Err(e) => return Err(e),
        };
        let power = match take(&mut v) {
            Ok(x) => Some(to_power(x, "battery_power_w")?),
            Err(DeviceError::NotAvailable { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(BatteryValues {
            soc_pct: soc,
            power,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_maps_parse() {
        for (id, src) in SHIPPED {
            let m = RegisterMap::parse(id, src).expect("shipped map parses");
            assert_eq!(m.id, id);
            assert!(m.point("grid_power_w").is_some(), "{id}");
        }
        assert_eq!(shipped().len(), SHIPPED.len());
    }

    #[test]
    fn absurd_scales_are_refused_at_load_and_never_decode_to_infinity() {
        for (scale, ok) in [
            ("1e308", false),
            ("-1e308", false),
            ("1e-300", false),
            ("1e10", false),
            ("0.0", false),
            ("1e9", true),
            ("-0.001", true),
            ("1e-9", true),
        ] {
            let src = format!(
                "name = \"x\"\nid = \"x\"\n\n[points.grid_power_w]\naddress = 1\ntype = \"f64\"\nscale = {scale}\n"
            );
            let r = RegisterMap::parse("user/big.toml", &src);
            if ok {
                assert!(r.is_ok(), "{scale}: {r:?}");
                continue;
            }
            let e = r.expect_err(scale);
            assert_eq!(
                (e.file.as_str(), e.line, e.key.as_str()),
                ("user/big.toml", 7, "points.grid_power_w.scale"),
                "{scale}"
            );
            assert!(e.message.contains("between 1e-9 and 1e9"), "{e}");
            assert!(e.to_string().starts_with("user/big.toml:7:"), "{e}");
        }
        // A map built in code skips that check; decoding still refuses to
        // produce a non-finite number: f64::MAX × 1e308 and × 1e9.
        let max = f64::MAX.to_bits();
        let words: Vec<u16> = (0..4).map(|i| (max >> (48 - 16 * i)) as u16).collect();
        for scale in [1e308, 1e9] {
            let p = PointDef {
                address: 0,
                function: Function::Holding,
                ty: RegType::F64,
                order: WordOrder::HighFirst,
                scale: Some(scale),
                scale_register: None,
                invert: false,
                not_available: None,
            };
            let r = p.decode(&words, None, "grid_power_w");
            assert!(
                matches!(
                    r,
                    Err(DeviceError::Invalid {
                        point: "grid_power_w",
                        ..
                    })
                ),
                "{scale}: {r:?}"
            );
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let src =
            "name = \"x\"\nid = \"x\"\n\n[points.grid_power_w]\naddress = 12\ntype = \"f16\"\n";
        let e = RegisterMap::parse("my.toml", src).expect_err("bad type");
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("my.toml", 6, "type")
        );
        assert!(e.message.contains("f16"), "{e}");

        let src = "name = \"x\"\nid = \"x\"\n[points.grid_power_w]\naddress = 1\ntype = \"i16\"\nscale = 1.0\nscale_register = { address = 2 }\n";
        let e = RegisterMap::parse("m.toml", src).expect_err("both scales");
        assert_eq!(
            (e.line, e.key.as_str()),
            (7, "points.grid_power_w.scale_register")
        );

        let src = "name = \"x\"\nid = \"x\"\n[points.import_wh]\naddress = 1\ntype = \"u32\"\ninvert = true\n";
        let e = RegisterMap::parse("m.toml", src).expect_err("inverted counter");
        assert_eq!((e.line, e.key.as_str()), (6, "points.import_wh.invert"));

        let src = "name = \"x\"\nid = \"x\"\n[points.gird_power_w]\naddress = 1\ntype = \"u32\"\n";
        let e = RegisterMap::parse("m.toml", src).expect_err("typo");
        assert_eq!((e.line, e.key.as_str()), (3, "points.gird_power_w"));

        let src = "name = \"x\"\nid = \"x\"\n[points.grid_power_w]\naddress = 1\ntype = \"u32\"\nadress = 3\n";
        let e = RegisterMap::parse("m.toml", src).expect_err("unknown key");
        assert_eq!(e.line, 6, "{e}");
    }

    #[test]
    fn encode_decode_round_trip_every_type_and_order() {
        for ty in [
            RegType::U16,
            RegType::I16,
            RegType::U32,
            RegType::I32,
            RegType::U64,
            RegType::F32,
            RegType::F64,
        ] {
            for order in [WordOrder::HighFirst, WordOrder::LowFirst] {
                let p = PointDef {
                    address: 0,
                    function: Function::Input,
                    ty,
                    order,
                    scale: Some(10.0),
                    scale_register: None,
                    invert: false,
                    not_available: None,
                };
                let w = p.encode(1230.0, 0);
                assert_eq!(w.len(), usize::from(ty.words()));
                assert_eq!(p.decode(&w, None, "x"), Ok(1230.0), "{ty:?} {order:?}");
            }
        }
        // High word first vs low word first really differ.
        let mut p = PointDef {
            address: 0,
            function: Function::Holding,
            ty: RegType::I32,
            order: WordOrder::HighFirst,
            scale: None,
            scale_register: Some(ScaleRegister {
                address: 9,
                function: Function::Holding,
            }),
            invert: true,
            not_available: None,
        };
        assert_eq!(p.decode(&[0xFFFF, 0xFF38], Some(1), "w"), Ok(2000.0));
        assert_eq!(
            p.decode(&[0x8000, 0x0000], Some(1), "w"),
            Err(DeviceError::NotAvailable { point: "w" })
        );
        assert_eq!(
            p.decode(&[0xFFFF, 0xFF38], Some(0x8000), "w"),
            Err(DeviceError::NotAvailable { point: "w" })
        );
        p.order = WordOrder::LowFirst;
        assert_eq!(p.decode(&[0xFF38, 0xFFFF], Some(0), "w"), Ok(200.0));
    }
}
