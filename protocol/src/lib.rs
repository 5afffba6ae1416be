//! Wire format of Voltshare: unit newtypes, the messages households and the
//! clearing engine exchange, the signed envelope that carries them, Merkle
//! trees over them and the MQTT topic names.
//!
//! Architecture invariant: this crate does no IO, has no async runtime and
//! never reads a clock. Every function is a pure function of its arguments, so
//! that any party (a household, an auditor, the engine itself) computes the
//! same bytes, hashes and verdicts.

pub mod broker_security;
pub mod clock;
pub mod envelope;
pub mod ids;
pub mod merkle;
pub mod messages;
pub mod topics;
pub mod units;

pub use broker_security::{BrokerSecurity, BrokerSecurityError, CheckedSecurity};
pub use clock::{Clock, ManualClock, ScaledClock, Stopwatch, SystemClock};
pub use envelope::{
    Domain, EnvelopeError, KeyId, MAX_ENGINE_PAYLOAD_BYTES, MAX_ENVELOPE_BYTES, MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES, SignedEnvelope, verify_many,
};
pub use ids::{GridId, HouseholdId, IdError, MeterId};
pub use merkle::{Hash32, MerkleProof, MerkleTree};
pub use messages::*;
pub use topics::{Topic, TopicError};
pub use units::*;
