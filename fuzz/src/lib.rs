//! The decoders of Voltshare as fuzz harnesses: each function takes
//! arbitrary bytes, runs one decoder on them and checks what must hold for
//! any input: no panic, no unbounded allocation (every decoder caps its
//! input size or nesting before it allocates), and for what decodes, a
//! round trip back to the same value.
//!
//! The cargo-fuzz targets in `fuzz_targets/` call these; so does the test
//! `tests/tests/fault_fuzz_corpus.rs` (which includes this file by path), so
//! that CI runs every seed and a few thousand mutations of them on stable
//! Rust, without libFuzzer.

use protocol::{
    Ack, ClearingResult, Domain, Order, Reading, SignedEnvelope, canonical_json, decode_payload,
};
use std::path::Path;

/// A fixed verifying key: verification must refuse (or accept) without
/// panicking whatever the envelope holds.
fn key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key()
}

/// The signed envelope: decode; what decodes re-encodes to the same bytes
/// and verifies (or not) under every domain without panicking.
pub fn envelope(data: &[u8]) {
    let Ok(env) = SignedEnvelope::decode(data) else {
        return;
    };
    assert_eq!(env.encode(), data, "an envelope re-encodes to its bytes");
    assert!(env.payload.len() <= protocol::MAX_PAYLOAD_BYTES);
    let k = key();
    for d in Domain::ALL {
        let _ = env.verify(d, &k);
    }
    let _ = protocol::verify_many(&[(&env, Domain::Reading, &k), (&env, Domain::Order, &k)]);
}

fn roundtrip<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(v) = decode_payload::<T>(data) else {
        return;
    };
    let again = canonical_json(&v);
    let back: T = decode_payload(&again).expect("canonical JSON of a decoded value decodes");
    assert_eq!(back, v, "canonical JSON round trip");
}

/// A reading payload (and an ack, which the meter agent decodes).
pub fn reading(data: &[u8]) {
    roundtrip::<Reading>(data);
    roundtrip::<Ack>(data);
}

/// An order payload (and a clearing result, which controllers decode).
pub fn order(data: &[u8]) {
    roundtrip::<Order>(data);
    roundtrip::<ClearingResult>(data);
}

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
    let mut maps = meter_agent::regmap::shipped();
    let shipped = maps.len();
    if let Ok(src) = std::str::from_utf8(text)
        && let Ok(m) = meter_agent::regmap::RegisterMap::parse("fuzz.toml", src)
    {
        maps.push(m);
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

/// The gateway configuration: parse, then validate (files named in it are
/// read, as `voltshare config check` does; the fuzzer's inputs rarely name
/// real ones).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    if let Ok(raw) = controller::config::parse(text, path) {
        let _ = raw.validate(text, path);
    }
}
