//! Enrolment by signed request: a household asks with a request signed by
//! the key it wants enrolled (proof that it holds that key), the operator
//! approves it into the engine's registry, and later rotates or revokes
//! keys.
//!
//! The request travels as a file holding the exact envelope bytes (hex), so
//! that what the operator approves is what the household signed; it is
//! stored with the key in `enrolment_requests`. Approval, rotation and
//! revocation are plain database transactions: they work on a running
//! engine's database from another process, and the engine picks them up
//! before its next intake batch (see [`crate::registry::stored_version`]).
//!
//! Rules:
//! - approve: the household must be new (an enrolled household changes its
//!   key by rotation, never by a second enrolment); its meters must be
//!   nobody's yet.
//! - rotate: the household must exist; the new key is added and every other
//!   active key of the household is revoked in the same transaction; meters
//!   named in the request are added (existing ones stay: their stored
//!   readings belong to the household).
//! - revoke: a revoked key stays in the table (old signatures must remain
//!   checkable) and is never revived, not by a restart nor by a request.

use crate::error::{StoreError, to_i64};
use ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::{
    Domain, EnvelopeError, GridId, HouseholdId, KeyId, MeterId, SignedEnvelope, UnixMs,
    decode_payload,
};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

/// What a household asks for: its key, its meters and where it is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentRequest {
    pub grid: GridId,
    pub household: HouseholdId,
    /// The ed25519 public key to enrol, 64 hex digits; the request is signed
    /// by its secret half.
    pub public_key: String,
    pub meters: Vec<MeterId>,
    #[serde(default)]
    pub settlement_address: Option<String>,
    /// When the request was made (Unix ms), for the operator's records.
    pub ts: UnixMs,
}

/// The request file: the signed envelope, hex-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    pub envelope: String,
}

/// A request whose signature and contents were checked.
#[derive(Debug, Clone)]
pub struct VerifiedRequest {
    pub request: EnrolmentRequest,
    pub key: VerifyingKey,
    pub key_id: KeyId,
    /// The exact envelope bytes that were verified.
    pub envelope: Vec<u8>,
}

/// Why a request or an operator action was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("request file: {0}")]
    File(String),
    #[error("request envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("request field `{field}`: {why}")]
    Field { field: &'static str, why: String },
    #[error("request is signed by key {signer}, not by the key it enrols ({enrolled})")]
    WrongSigner { signer: KeyId, enrolled: KeyId },
    #[error("request is for grid {got}, this engine serves {want}")]
    WrongGrid { got: GridId, want: GridId },
    #[error("household {0} is already enrolled (rotate its key instead)")]
    HouseholdExists(HouseholdId),
    #[error("household {0} is not enrolled")]
    NoSuchHousehold(HouseholdId),
    #[error("key {0} is already enrolled")]
    KeyExists(KeyId),
    #[error("key {0} is not enrolled")]
    NoSuchKey(KeyId),
    #[error("meter {meter} belongs to {owner}")]
    MeterTaken { meter: MeterId, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for EnrolError {
    fn from(e: sqlx::Error) -> Self {
        EnrolError::Store(StoreError::Db(e))
    }
}

/// Signs a request with the key it enrols and returns the request file's
/// contents.
pub fn make_request(key: &SigningKey, request: &EnrolmentRequest) -> Result<String, EnrolError> {
    if request.public_key != hex::encode(key.verifying_key().as_bytes()) {
        return Err(EnrolError::Field {
            field: "public_key",
            why: "is not the signing key's public key".into(),
        });
    }
    let env = SignedEnvelope::sign_json(Domain::Enrolment, key, request)?;
    let file = RequestFile {
        envelope: hex::encode(env.encode()),
    };
    serde_json::to_string_pretty(&file).map_err(|e| EnrolError::File(e.to_string()))
}

/// Parses a request file and checks everything that needs no database: the
/// envelope, the payload, the key (not weak, its own signer) and the grid.
pub fn verify_request(file: &str, grid: Option<&GridId>) -> Result<VerifiedRequest, EnrolError> {
    let parsed: RequestFile =
        serde_json::from_str(file).map_err(|e| EnrolError::File(e.to_string()))?;
    let envelope = hex::decode(parsed.envelope.trim())
        .map_err(|e| EnrolError::File(format!("envelope is not hex: {e}")))?;
    let env = SignedEnvelope::decode(&envelope)?;
    let request: EnrolmentRequest =
        decode_payload(&env.payload).map_err(|e| EnrolError::File(e.to_string()))?;
    let key = parse_key(&request.public_key)?;
    let key_id = KeyId::of(&key);
    if env.key_id != key_id {
        return Err(EnrolError::WrongSigner {
            signer: env.key_id,
            enrolled: key_id,
        });
    }
    env.verify(Domain::Enrolment, &key)?;
    if let Some(want) = grid
        && *want != request.grid
    {
        return Err(EnrolError::WrongGrid {
            got: request.grid,
            want: want.clone(),
        });
    }
    if let Some(a) = &request.settlement_address {
        crate::evm::parse_address(a, "settlement_address").map_err(|e| EnrolError::Field {
            field: "settlement_address",
            why: e.to_string(),
        })?;
    }
    Ok(VerifiedRequest {
        request,
        key,
        key_id,
        envelope,
    })
}

fn parse_key(hex_key: &str) -> Result<VerifyingKey, EnrolError> {
    let bad = |why: &str| EnrolError::Field {
        field: "public_key",
        why: why.to_owned(),
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut bytes).map_err(|_| bad("not 64 hex digits"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid ed25519 point"))?;
    if key.is_weak() {
        return Err(bad("weak (small-order) key"));
    }
    Ok(key)
}

/// Enrols a new household from a verified request.
pub async fn approve(
    pool: &SqlitePool,
    req: &VerifiedRequest,
    now: UnixMs,
) -> Result<(), EnrolError> {
    let now_i = to_i64(now.0, "time")?;
    let h = req.request.household.as_str();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT household FROM households WHERE household = ?")
            .bind(h)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_some() {
        return Err(EnrolError::HouseholdExists(req.request.household.clone()));
    }
    sqlx::query(
        "INSERT INTO households (household, settlement_address, enrolled_at, source) \
         VALUES (?, ?, ?, 'operator')",
    )
    .bind(h)
    .bind(req.request.settlement_address.as_deref())
    .bind(now_i)
    .execute(&mut *tx)
    .await?;
    add_key(&mut tx, req, "enrol", now_i).await?;
    tx.commit().await?;
    Ok(())
}

/// Replaces a household's key: the requested key is added, every other
/// active key of the household revoked, in one transaction.
pub async fn rotate(
    pool: &SqlitePool,
    req: &VerifiedRequest,
    now: UnixMs,
) -> Result<Vec<KeyId>, EnrolError> {
    let now_i = to_i64(now.0, "time")?;
    let h = req.request.household.as_str();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT household FROM households WHERE household = ?")
            .bind(h)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(EnrolError::NoSuchHousehold(req.request.household.clone()));
    }
    let revoked: Vec<String> = sqlx::query_scalar(
        "SELECT key_id FROM keys WHERE household = ? AND revoked_at IS NULL ORDER BY key_id",
    )
    .bind(h)
    .fetch_all(&mut *tx)
    .await?;
    add_key(&mut tx, req, "rotate", now_i).await?;
    sqlx::query(
        "UPDATE keys SET revoked_at = ? WHERE household = ? AND key_id <> ? AND revoked_at IS NULL",
    )
    .bind(now_i)
    .bind(h)
    .bind(&req.key_id.0)
    .execute(&mut *tx)
    .await?;
    if let Some(a) = &req.request.settlement_address {
        sqlx::query("UPDATE households SET settlement_address = ? WHERE household = ?")
            .bind(a)
            .bind(h)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(revoked.into_iter().map(KeyId).collect())
}

/// The key, its request and its meters, inside the caller's transaction.
async fn add_key(
    tx: &mut sqlx::SqliteConnection,
    req: &VerifiedRequest,
    kind: &str,
    now_i: i64,
) -> Result<(), EnrolError> {
    let h = req.request.household.as_str();
    let known: Option<String> = sqlx::query_scalar("SELECT household FROM keys WHERE key_id = ?")
        .bind(&req.key_id.0)
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_some() {
        // Also refuses to revive a revoked key by enrolling it again.
        return Err(EnrolError::KeyExists(req.key_id.clone()));
    }
    sqlx::query(
        "INSERT INTO keys (key_id, household, public_key, added_at, source) \
         VALUES (?, ?, ?, ?, 'operator')",
    )
    .bind(&req.key_id.0)
    .bind(h)
    .bind(req.key.as_bytes().as_slice())
    .bind(now_i)
    .execute(&mut *tx)
    .await?;
    for m in &req.request.meters {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT household FROM meters WHERE meter = ?")
                .bind(m.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        match owner {
            Some(o) if o == h => {}
            Some(o) => {
                return Err(EnrolError::MeterTaken {
                    meter: m.clone(),
                    owner: o,
                });
            }
            None => {
                sqlx::query("INSERT INTO meters (meter, household) VALUES (?, ?)")
                    .bind(m.as_str())
                    .bind(h)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    sqlx::query(
        "INSERT INTO enrolment_requests (key_id, household, kind, envelope, approved_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&req.key_id.0)
    .bind(h)
    .bind(kind)
    .bind(req.envelope.as_slice())
    .bind(now_i)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Revokes one key. Revoking a revoked key is a no-op (its first revocation
/// time is kept).
pub async fn revoke_key(pool: &SqlitePool, key_id: &KeyId, now: UnixMs) -> Result<(), EnrolError> {
    let now_i = to_i64(now.0, "time")?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let known: Option<String> = sqlx::query_scalar("SELECT household FROM keys WHERE key_id = ?")
        .bind(&key_id.0)
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        return Err(EnrolError::NoSuchKey(key_id.clone()));
    }
    sqlx::query("UPDATE keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL")
        .bind(now_i)
        .bind(&key_id.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Revokes every active key of a household (it can no longer sign anything;
/// its history stays). Returns the keys revoked now.
pub async fn revoke_household(
    pool: &SqlitePool,
    household: &HouseholdId,
    now: UnixMs,
) -> Result<Vec<KeyId>, EnrolError> {
    let now_i = to_i64(now.0, "time")?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT key_id FROM keys WHERE household = ? AND revoked_at IS NULL ORDER BY key_id",
    )
    .bind(household.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT household FROM households WHERE household = ?")
            .bind(household.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(EnrolError::NoSuchHousehold(household.clone()));
    }
    sqlx::query("UPDATE keys SET revoked_at = ? WHERE household = ? AND revoked_at IS NULL")
        .bind(now_i)
        .bind(household.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(keys.into_iter().map(KeyId).collect())
}

/// One enrolled key as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    pub key_id: String,
    pub household: String,
    pub source: String,
    pub added_at: i64,
    pub revoked_at: Option<i64>,
}

/// Every enrolled key, by household then key id.
pub async fn list_keys(pool: &SqlitePool) -> Result<Vec<KeyRow>, EnrolError> {
    let rows: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT key_id, household, source, added_at, revoked_at FROM keys ORDER BY household, key_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key_id, household, source, added_at, revoked_at)| KeyRow {
            key_id,
            household,
            source,
            added_at,
            revoked_at,
        })
        .collect())
}
