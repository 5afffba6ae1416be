//! The wire decoders: the signed envelope and the JSON payloads. Needs only
//! `protocol` (and ed25519-dalek for a key).

use protocol::{
    Ack, ClearingResult, Domain, Order, Reading, SignedEnvelope, canonical_json, decode_payload,
};

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
