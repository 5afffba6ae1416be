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
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use std::collections::HashMap;
use std::fmt;

/// Largest payload of a message a household signs (readings, orders,
/// enrolment requests) and of an ack, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Largest envelope accepted from a household, in bytes (checked before any
/// parsing).
pub const MAX_ENVELOPE_BYTES: usize = envelope_cap(MAX_PAYLOAD_BYTES);
/// Largest payload of what the engine signs for everyone to read: clearing
/// results and settlement batches. They grow with the interval's trades and
/// the grid's households (a result of 100 trades is already ~16 KiB), and
/// they come only from the engine's key, so their cap is set for size, not
/// for hostile input: about 25,000 trades per interval.
pub const MAX_ENGINE_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;
/// The MQTT packet size every Voltshare client and the embedded broker
/// accept: the largest envelope plus room for the topic and headers. An
/// oversized household message then reaches the engine and is counted and
/// refused by the envelope cap instead of breaking a connection.
pub const MAX_PACKET_BYTES: usize = envelope_cap(MAX_ENGINE_PAYLOAD_BYTES) + 4 * 1024;
const VERSION: u8 = 1;
const SIG_LEN: usize = 64;

const fn envelope_cap(payload: usize) -> usize {
    2 + 64 + SIG_LEN + payload
}
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

    /// The largest payload signed or accepted for this kind of message.
    pub fn max_payload(self) -> usize {
        match self {
            Domain::Result | Domain::Batch => MAX_ENGINE_PAYLOAD_BYTES,
            Domain::Reading | Domain::Order | Domain::Ack | Domain::Enrolment => MAX_PAYLOAD_BYTES,
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
    #[error("envelope is {0} bytes, more than the size limit")]
    Oversized(usize),
    #[error("envelope is truncated")]
    Truncated,
    #[error("unknown envelope version {0}")]
    BadVersion(u8),
    #[error("key id is malformed")]
    BadKeyId,
    #[error("payload is {0} bytes, more than the size limit")]
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
    /// key. Fails only if the payload is larger than the domain's
    /// [`Domain::max_payload`].
    pub fn sign(domain: Domain, key: &SigningKey, payload: Vec<u8>) -> Result<Self, EnvelopeError> {
        if payload.len() > domain.max_payload() {
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

    /// Parses wire bytes of a household's message or an ack (the
    /// [`MAX_ENVELOPE_BYTES`] cap is checked first).
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::decode_capped(bytes, MAX_PAYLOAD_BYTES)
    }

    /// Parses wire bytes of a message of `domain`, capped at that domain's
    /// [`Domain::max_payload`]: how clearing results and settlement batches,
    /// which may be larger than any household message, are read.
    pub fn decode_for(domain: Domain, bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::decode_capped(bytes, domain.max_payload())
    }

    fn decode_capped(bytes: &[u8], max_payload: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > envelope_cap(max_payload) {
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
        if payload.len() > max_payload {
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

/// Feeds the bytes a signature covers (see [`signed_bytes`]) into a hash,
/// without copying the payload.
fn hash_signed(h: &mut Sha512, domain: Domain, key_id: &KeyId, payload: &[u8]) {
    let kid = key_id.0.as_bytes();
    h.update(domain.tag().as_bytes());
    h.update([0u8, u8::try_from(kid.len()).unwrap_or(u8::MAX)]);
    h.update(kid);
    h.update(payload);
}

/// Batches at most this large that fail are checked one by one; larger ones
/// are split in halves first, so that one forged message among hundreds
/// costs a few extra batch checks instead of a single check per message.
const SINGLE_BELOW: usize = 8;

/// Verifies many envelopes at once with ed25519 batch verification. Returns
/// one verdict per envelope. When a batch fails it is split in halves and
/// each half is checked again, down to single strict checks, so that the bad
/// ones are found and the good ones are kept.
///
/// The batch equation is the one of `ed25519_dalek::verify_batch`
/// (cofactorless, with 128-bit coefficients derived by hashing every input,
/// so that a sender cannot choose them), with one change: the terms of
/// signatures by the same key are summed before the multiscalar
/// multiplication, so a batch of `n` signatures by `k` keys costs a
/// multiplication over `n + k + 1` points instead of `2n + 1`. A meter
/// catching up on its backlog sends many readings under one key.
pub fn verify_many(
    items: &[(&SignedEnvelope, Domain, &VerifyingKey)],
) -> Vec<Result<(), EnvelopeError>> {
    let mut out = vec![Ok(()); items.len()];
    let all: Vec<usize> = (0..items.len()).collect();
    check(items, &all, &mut out);
    out
}

/// Verifies `items[i]` for every `i` in `idx`, writing failures into `out`.
fn check(
    items: &[(&SignedEnvelope, Domain, &VerifyingKey)],
    idx: &[usize],
    out: &mut [Result<(), EnvelopeError>],
) {
    if idx.len() > 1 && batch_holds(items, idx) {
        return;
    }
    if idx.len() < SINGLE_BELOW {
        for &i in idx {
            let (e, d, k) = items[i];
            out[i] = e.verify(d, k);
        }
        return;
    }
    let (a, b) = idx.split_at(idx.len() / 2);
    check(items, a, out);
    check(items, b, out);
}

/// Whether the batch equation holds for `items[i]`, `i` in `idx`:
/// `[−Σ zᵢsᵢ]B + Σ [zᵢ]Rᵢ + Σ_A [Σ_{i by A} zᵢhᵢ]A = 0`, with
/// `hᵢ = SHA-512(Rᵢ ‖ A ‖ signed bytes) mod ℓ`.
fn batch_holds(items: &[(&SignedEnvelope, Domain, &VerifyingKey)], idx: &[usize]) -> bool {
    let n = idx.len();
    let mut s = Vec::with_capacity(n);
    let mut r = Vec::with_capacity(n);
    let mut h = Vec::with_capacity(n);
    // Each distinct key once, with the index of its summed coefficient.
    let mut keys: Vec<EdwardsPoint> = Vec::new();
    let mut key_of: Vec<usize> = Vec::with_capacity(n);
    let mut slots: HashMap<[u8; 32], usize> = HashMap::new();
    // Every input goes into the transcript that the coefficients come from.
    let mut transcript = Sha512::new();
    transcript.update(b"voltshare/batch-verify/v1");
    for &i in idx {
        let (env, domain, key) = items[i];
        let slot = match slots.get(key.as_bytes()) {
            Some(&slot) => slot,
            None => {
                // Batch verification does not refuse small-order keys by
                // itself (the registry refuses them at enrolment already).
                if key.is_weak() {
                    return false;
                }
                keys.push(key.to_edwards());
                slots.insert(*key.as_bytes(), keys.len() - 1);
                keys.len() - 1
            }
        };
        key_of.push(slot);
        let (r_bytes, s_bytes) = env.signature.split_at(32);
        let (Ok(r_bytes), Ok(s_bytes)) =
            (<[u8; 32]>::try_from(r_bytes), <[u8; 32]>::try_from(s_bytes))
        else {
            return false;
        };
        let Some(si) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let Some(ri) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        let mut hh = Sha512::new();
        hh.update(r_bytes);
        hh.update(key.as_bytes());
        hash_signed(&mut hh, domain, &env.key_id, &env.payload);
        let digest: [u8; 64] = hh.finalize().into();
        transcript.update(digest);
        transcript.update(s_bytes);
        s.push(si);
        r.push(ri);
        h.push(Scalar::from_bytes_mod_order_wide(&digest));
    }
    let seed: [u8; 64] = transcript.finalize().into();
    // zᵢ: four 128-bit coefficients per SHA-512 block of (seed, counter).
    let mut z = Vec::with_capacity(n);
    let mut block = 0u64;
    while z.len() < n {
        let mut b = Sha512::new();
        b.update(seed);
        b.update(block.to_le_bytes());
        let out: [u8; 64] = b.finalize().into();
        for chunk in out.chunks_exact(16) {
            if z.len() < n {
                let mut c = [0u8; 16];
                c.copy_from_slice(chunk);
                z.push(Scalar::from(u128::from_le_bytes(c)));
            }
        }
        block += 1;
    }
    let mut b_coeff = Scalar::ZERO;
    let mut a_coeff = vec![Scalar::ZERO; keys.len()];
    for j in 0..n {
        b_coeff -= z[j] * s[j];
        a_coeff[key_of[j]] += z[j] * h[j];
    }
    let scalars = std::iter::once(b_coeff).chain(z).chain(a_coeff);
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(r)
        .chain(keys);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
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
    fn results_and_batches_may_be_larger_than_household_messages() {
        let k = key(4);
        let vk = k.verifying_key();
        // A result of a few thousand trades: over the household cap.
        let big = vec![b'x'; 200 * 1024];
        for d in [Domain::Result, Domain::Batch] {
            let env = SignedEnvelope::sign(d, &k, big.clone()).expect("engine kinds sign large");
            let wire = env.encode();
            // Read as what it is, it decodes and verifies...
            let back = SignedEnvelope::decode_for(d, &wire).expect("decode_for");
            back.verify(d, &vk).expect("verifies");
            // ...but never through the household cap the intake uses.
            assert_eq!(
                SignedEnvelope::decode(&wire),
                Err(EnvelopeError::Oversized(wire.len()))
            );
            assert!(SignedEnvelope::sign(d, &k, vec![0; MAX_ENGINE_PAYLOAD_BYTES + 1]).is_err());
        }
        for d in [
            Domain::Reading,
            Domain::Order,
            Domain::Ack,
            Domain::Enrolment,
        ] {
            assert!(SignedEnvelope::sign(d, &k, big.clone()).is_err(), "{d:?}");
            assert_eq!(d.max_payload(), MAX_PAYLOAD_BYTES);
        }
        // A household message cannot be smuggled in as large under a
        // household domain read with decode_for.
        let mut wire = SignedEnvelope::sign(Domain::Result, &k, big)
            .expect("sign")
            .encode();
        assert!(matches!(
            SignedEnvelope::decode_for(Domain::Order, &wire),
            Err(EnvelopeError::Oversized(_))
        ));
        wire.truncate(10);
        assert!(SignedEnvelope::decode_for(Domain::Result, &wire).is_err());
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

    /// Many signatures under few keys (the summed-key path), with forged
    /// ones at chosen positions: exactly those are refused, whatever the
    /// batch size, and a clean batch passes whole.
    #[test]
    fn batch_with_repeated_keys_finds_every_forgery() {
        let keys: Vec<SigningKey> = (1..=5).map(key).collect();
        let vks: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
        for n in [2usize, 7, 8, 9, 64, 200] {
            let mut envs: Vec<SignedEnvelope> = (0..n)
                .map(|i| {
                    SignedEnvelope::sign(
                        Domain::Reading,
                        &keys[i % 5],
                        format!("r{i}").into_bytes(),
                    )
                    .expect("sign")
                })
                .collect();
            let clean: Vec<(&SignedEnvelope, Domain, &VerifyingKey)> = envs
                .iter()
                .enumerate()
                .map(|(i, e)| (e, Domain::Reading, &vks[i % 5]))
                .collect();
            assert!(
                verify_many(&clean).iter().all(Result::is_ok),
                "clean batch of {n}"
            );
            drop(clean);
            // Forge: a changed payload, a signature moved to another message,
            // and a wrong domain at the end.
            let forged = [0, n / 2, n - 1];
            envs[0].payload.push(b'x');
            let moved = envs[(n / 2 + 1) % n].signature;
            envs[n / 2].signature = moved;
            let items: Vec<(&SignedEnvelope, Domain, &VerifyingKey)> = envs
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let d = if i == n - 1 {
                        Domain::Order
                    } else {
                        Domain::Reading
                    };
                    (e, d, &vks[i % 5])
                })
                .collect();
            let all: Vec<usize> = (0..n).collect();
            assert!(!batch_holds(&items, &all), "forged batch of {n}");
            let verdicts = verify_many(&items);
            for (i, v) in verdicts.iter().enumerate() {
                let bad = forged.contains(&i);
                assert_eq!(v.is_err(), bad, "batch of {n}, message {i}");
            }
            // Each one alone agrees.
            for (i, (e, d, k)) in items.iter().enumerate() {
                assert_eq!(e.verify(*d, k).is_err(), forged.contains(&i), "single {i}");
            }
        }
    }

    /// A non-canonical s (s + ℓ) is refused in a batch as singly.
    #[test]
    fn batch_refuses_non_canonical_s() {
        let k = key(9);
        let vk = k.verifying_key();
        let good: Vec<SignedEnvelope> = (0..20)
            .map(|i| SignedEnvelope::sign(Domain::Ack, &k, vec![i]).expect("sign"))
            .collect();
        let mut bad = good[3].clone();
        // ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (b, lj) in bad.signature[32..].iter_mut().zip(l) {
            let v = u16::from(*b) + u16::from(lj) + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        let mut items: Vec<(&SignedEnvelope, Domain, &VerifyingKey)> =
            good.iter().map(|e| (e, Domain::Ack, &vk)).collect();
        items[3] = (&bad, Domain::Ack, &vk);
        let verdicts = verify_many(&items);
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(v.is_err(), i == 3, "message {i}");
        }
    }
}
