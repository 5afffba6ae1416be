//! The signed envelope.
//!
//! A signed message carries the exact payload bytes that were signed, the
//! signer's key id and an ed25519 signature. Nothing is re-serialized before
//! verifying: the verifier checks the bytes it received.
//!
//! Binary layout (version 1):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, `0x01` |
//! | 1 | key id length `L`, 1..=64 |
//! | L | key id, identifier alphabet (see [`crate::ids`]) |
//! | 64 | ed25519 signature |
//! | rest | payload (at most [`MAX_PAYLOAD_BYTES`]) |
//!
//! The signature covers `domain tag ‖ 0x00 ‖ L ‖ key id ‖ payload`, so that a
//! signature made for one message kind never verifies as another, and a
//! changed key id fails even when the same key would be found under it.
//! Size is capped before anything is parsed.

use crate::ids::validate_id;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Largest payload accepted, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Largest envelope accepted, in bytes (checked before any parsing).
pub const MAX_ENVELOPE_BYTES: usize = 2 + 64 + 64 + MAX_PAYLOAD_BYTES;
const VERSION: u8 = 1;
const SIG_LEN: usize = 64;

/// What kind of message a signature is for. The tag is part of the signed
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Reading,
    Order,
    Result,
    Ack,
    Batch,
    Enrolment,
}

impl Domain {
    /// Every domain, for tests and iteration.
    pub const ALL: [Domain; 6] = [
        Domain::Reading,
        Domain::Order,
        Domain::Result,
        Domain::Ack,
        Domain::Batch,
        Domain::Enrolment,
    ];

    /// The domain separation tag.
    pub fn tag(self) -> &'static str {
        match self {
            Domain::Reading => "voltshare/reading/v1",
            Domain::Order => "voltshare/order/v1",
            Domain::Result => "voltshare/result/v1",
            Domain::Ack => "voltshare/ack/v1",
            Domain::Batch => "voltshare/batch/v1",
            Domain::Enrolment => "voltshare/enrolment/v1",
        }
    }
}

/// A key identifier: the first 8 bytes of SHA-256 of the public key, in hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    /// The key id of a public key.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        KeyId(hex::encode(&digest[..8]))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {0} bytes, more than the {MAX_ENVELOPE_BYTES}-byte limit")]
    Oversized(usize),
    #[error("envelope is truncated")]
    Truncated,
    #[error("unknown envelope version {0}")]
    BadVersion(u8),
    #[error("key id is malformed")]
    BadKeyId,
    #[error("payload is {0} bytes, more than the {MAX_PAYLOAD_BYTES}-byte limit")]
    PayloadTooLarge(usize),
    #[error("signature does not verify")]
    BadSignature,
}

/// A decoded (not yet verified) signed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    pub key_id: KeyId,
    pub signature: [u8; SIG_LEN],
    pub payload: Vec<u8>,
}

fn signed_bytes(domain: Domain, key_id: &KeyId, payload: &[u8]) -> Vec<u8> {
    let tag = domain.tag().as_bytes();
    let kid = key_id.0.as_bytes();
    let mut m = Vec::with_capacity(tag.len() + 2 + kid.len() + payload.len());
    m.extend_from_slice(tag);
    m.push(0);
    // Key ids are at most 64 bytes (checked on construction and decoding).
    m.push(u8::try_from(kid.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(kid);
    m.extend_from_slice(payload);
    m
}

impl SignedEnvelope {
    /// Signs `payload` for `domain` with `key`. The key id is derived from the
    /// key. Fails only if the payload is larger than [`MAX_PAYLOAD_BYTES`].
    pub fn sign(domain: Domain, key: &SigningKey, payload: Vec<u8>) -> Result<Self, EnvelopeError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(EnvelopeError::PayloadTooLarge(payload.len()));
        }
        let key_id = KeyId::of(&key.verifying_key());
        let sig = key.sign(&signed_bytes(domain, &key_id, &payload));
        Ok(SignedEnvelope {
            key_id,
            signature: sig.to_bytes(),
            payload,
        })
    }

    /// Serializes a value as JSON and signs it.
    pub fn sign_json<T: Serialize>(
        domain: Domain,
        key: &SigningKey,
        value: &T,
    ) -> Result<Self, EnvelopeError> {
        // Serializing our own message types cannot fail: they hold no maps
        // with non-string keys and no floats.
        let payload = serde_json::to_vec(value).map_err(|_| EnvelopeError::Truncated)?;
        Self::sign(domain, key, payload)
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let kid = self.key_id.0.as_bytes();
        let mut out = Vec::with_capacity(2 + kid.len() + SIG_LEN + self.payload.len());
        out.push(VERSION);
        out.push(u8::try_from(kid.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(kid);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses wire bytes. The size cap is checked first.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::Oversized(bytes.len()));
        }
        let (&version, rest) = bytes.split_first().ok_or(EnvelopeError::Truncated)?;
        if version != VERSION {
            return Err(EnvelopeError::BadVersion(version));
        }
        let (&klen, rest) = rest.split_first().ok_or(EnvelopeError::Truncated)?;
        let klen = usize::from(klen);
        if klen == 0 || klen > 64 {
            return Err(EnvelopeError::BadKeyId);
        }
        if rest.len() < klen + SIG_LEN {
            return Err(EnvelopeError::Truncated);
        }
        let (kid, rest) = rest.split_at(klen);
        let kid = std::str::from_utf8(kid).map_err(|_| EnvelopeError::BadKeyId)?;
        validate_id(kid).map_err(|_| EnvelopeError::BadKeyId)?;
        let (sig, payload) = rest.split_at(SIG_LEN);
        let mut signature = [0u8; SIG_LEN];
        signature.copy_from_slice(sig);
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(EnvelopeError::PayloadTooLarge(payload.len()));
        }
        Ok(SignedEnvelope {
            key_id: KeyId(kid.to_owned()),
            signature,
            payload: payload.to_vec(),
        })
    }

    /// Verifies the signature under `domain` with `key` (strict: rejects
    /// small-order keys and malleable signatures).
    pub fn verify(&self, domain: Domain, key: &VerifyingKey) -> Result<(), EnvelopeError> {
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(&signed_bytes(domain, &self.key_id, &self.payload), &sig)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// The message that the signature covers (for batch verification).
    pub fn signed_message(&self, domain: Domain) -> Vec<u8> {
        signed_bytes(domain, &self.key_id, &self.payload)
    }

    /// The signature as a typed value (for batch verification).
    pub fn signature(&self) -> Signature {
        Signature::from_bytes(&self.signature)
    }

    /// SHA-256 of the wire encoding: the identity of this exact message.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// Verifies many envelopes at once with ed25519 batch verification. Returns
/// one verdict per envelope; when the batch fails, each is checked alone so
/// that the bad ones are found and the good ones are kept.
pub fn verify_many(
    items: &[(&SignedEnvelope, Domain, &VerifyingKey)],
) -> Vec<Result<(), EnvelopeError>> {
    if items.is_empty() {
        return Vec::new();
    }
    let msgs: Vec<Vec<u8>> = items.iter().map(|(e, d, _)| e.signed_message(*d)).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let sigs: Vec<Signature> = items.iter().map(|(e, _, _)| e.signature()).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(_, _, k)| **k).collect();
    // Batch verification is not "strict" about small-order keys, so the keys
    // are checked for weakness separately (they come from the registry, where
    // weak keys are refused at enrolment; this is defence in depth).
    if keys.iter().all(|k| !k.is_weak()) && ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok()
    {
        return vec![Ok(()); items.len()];
    }
    items.iter().map(|(e, d, k)| e.verify(*d, k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn roundtrip_and_verify() {
        let k = key(7);
        let env = SignedEnvelope::sign(Domain::Reading, &k, b"{\"x\":1}".to_vec()).expect("sign");
        let wire = env.encode();
        let back = SignedEnvelope::decode(&wire).expect("decode");
        assert_eq!(back, env);
        back.verify(Domain::Reading, &k.verifying_key())
            .expect("verifies");
        assert_eq!(
            back.verify(Domain::Order, &k.verifying_key()),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(
            back.verify(Domain::Reading, &key(8).verifying_key()),
            Err(EnvelopeError::BadSignature)
        );
    }

    #[test]
    fn size_capped_before_parsing() {
        let big = vec![1u8; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(
            SignedEnvelope::decode(&big),
            Err(EnvelopeError::Oversized(MAX_ENVELOPE_BYTES + 1))
        );
        assert_eq!(SignedEnvelope::decode(&[]), Err(EnvelopeError::Truncated));
        assert_eq!(
            SignedEnvelope::decode(&[2]),
            Err(EnvelopeError::BadVersion(2))
        );
        assert_eq!(
            SignedEnvelope::decode(&[1, 0]),
            Err(EnvelopeError::BadKeyId)
        );
        assert_eq!(
            SignedEnvelope::decode(&[1, 3, b'a', b'b', b'c']),
            Err(EnvelopeError::Truncated)
        );
        assert!(
            SignedEnvelope::sign(Domain::Order, &key(1), vec![0; MAX_PAYLOAD_BYTES + 1]).is_err()
        );
    }

    #[test]
    fn batch_finds_the_bad_one() {
        let k = key(3);
        let vk = k.verifying_key();
        let good = SignedEnvelope::sign(Domain::Order, &k, b"a".to_vec()).expect("sign");
        let mut bad = SignedEnvelope::sign(Domain::Order, &k, b"b".to_vec()).expect("sign");
        bad.payload[0] = b'c';
        let verdicts = verify_many(&[
            (&good, Domain::Order, &vk),
            (&bad, Domain::Order, &vk),
            (&good, Domain::Order, &vk),
        ]);
        assert_eq!(
            verdicts,
            vec![Ok(()), Err(EnvelopeError::BadSignature), Ok(())]
        );
    }
}
