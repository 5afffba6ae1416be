//! Register decoding (the `meter-agent` crate's register maps).

/// Register decoding: the bytes before the first NUL are a register map
/// (TOML, parsed and validated); the rest are register words. Every point of
/// that map and of the shipped maps is decoded from those words.
pub fn regmap(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (text, rest) = data.split_at(split);
    let words: Vec<u16> = rest
        .get(1..)
        .unwrap_or(&[])
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect();
    // The shipped maps are parsed once (they are constants); the fuzzed one
    // is decoded after them.
    static SHIPPED: std::sync::OnceLock<Vec<meter_agent::regmap::RegisterMap>> =
        std::sync::OnceLock::new();
    let mut maps: Vec<&meter_agent::regmap::RegisterMap> = SHIPPED
        .get_or_init(meter_agent::regmap::shipped)
        .iter()
        .collect();
    let shipped = maps.len();
    let fuzzed;
    if let Ok(src) = std::str::from_utf8(text)
        && let Ok(m) = meter_agent::regmap::RegisterMap::parse("fuzz.toml", src)
    {
        fuzzed = m;
        maps.push(&fuzzed);
    }
    for (i, m) in maps.iter().enumerate() {
        for (n, p) in m.points.values().enumerate() {
            let need = usize::from(p.ty.words());
            let w: Vec<u16> = (0..need)
                .map(|j| words.get(n * 4 + j).copied().unwrap_or(0))
                .collect();
            let scale = words.get(n * 4 + 3).copied();
            if let Ok(v) = p.decode(&w, scale, "fuzz") {
                assert!(!v.is_nan(), "a decoded value is never NaN");
                if i < shipped {
                    assert!(v.is_finite(), "a shipped map decodes to finite values");
                }
            }
        }
    }
}
