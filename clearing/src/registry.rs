//! The enrolment registry: which keys sign for which household, and which
//! meters belong to it.
//!
//! The configuration is the source of truth at start-up; it is written to
//! the database (so that stored rows keep their foreign keys and auditors can
//! see which key signed what), and the decoded keys are cached in memory for
//! the intake's hot path. A household's key that is no longer in the
//! configuration is revoked (never deleted: old signatures must stay
//! checkable), and a revoked key is never revived. Weak (small-order) keys
//! are refused at enrolment.
//!
//! Households can also be enrolled by the operator from signed requests
//! ([`crate::enrol`]); those keys are marked `source = 'operator'` and the
//! start-up sync leaves them alone. Every change bumps a version counter (by
//! trigger, see migration 0003), which the running engine compares before
//! each intake batch to reload the registry without a restart.

use crate::config::{ConfigError, Enrolment};
use crate::error::{EngineError, StoreError};
use ed25519_dalek::VerifyingKey;
use protocol::{HouseholdId, KeyId, MeterId, UnixMs};
use sqlx::SqlitePool;
use std::collections::{BTreeMap, HashMap};
use tracing::{info, warn};

/// One enrolled key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub household: HouseholdId,
    pub key: VerifyingKey,
    pub revoked: bool,
}

/// Keys and meters of the enrolled households, in memory.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    keys: HashMap<KeyId, KeyEntry>,
    meters: HashMap<MeterId, HouseholdId>,
    households: BTreeMap<HouseholdId, Vec<MeterId>>,
    /// The database's registry version this copy was loaded at.
    version: i64,
}

/// The registry version stored in the database: it changes whenever a
/// household, key or meter row does.
pub async fn stored_version(pool: &SqlitePool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT version FROM registry_version WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

impl Registry {
    /// Writes the enrolments to the database and loads the whole registry
    /// back from it.
    pub async fn sync(
        pool: &SqlitePool,
        enrolments: &[Enrolment],
        now: UnixMs,
    ) -> Result<Registry, EngineError> {
        let now_i = crate::error::to_i64(now.0, "time")?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for e in enrolments {
            let key = e.verifying_key()?;
            let key_id = KeyId::of(&key);
            let h = e.household.as_str();
            sqlx::query(
                "INSERT INTO households (household, settlement_address, enrolled_at) VALUES (?, ?, ?) \
                 ON CONFLICT(household) DO UPDATE SET settlement_address = excluded.settlement_address",
            )
            .bind(h)
            .bind(e.settlement_address.as_deref())
            .bind(now_i)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO keys (key_id, household, public_key, added_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT(key_id) DO NOTHING",
            )
            .bind(&key_id.0)
            .bind(h)
            .bind(key.as_bytes().as_slice())
            .bind(now_i)
            .execute(&mut *tx)
            .await?;
            let (owner, revoked): (String, Option<i64>) =
                sqlx::query_as("SELECT household, revoked_at FROM keys WHERE key_id = ?")
                    .bind(&key_id.0)
                    .fetch_one(&mut *tx)
                    .await?;
            if owner != h {
                return Err(ConfigError::BadKey {
                    household: h.to_owned(),
                    why: format!("key {key_id} is already enrolled for {owner}"),
                }
                .into());
            }
            if revoked.is_some() {
                warn!(household = h, key_id = %key_id, "configured key was revoked earlier and stays revoked");
            }
            // Only keys that came from the configuration: a key the operator
            // approved or rotated in is not undone by a restart.
            let superseded = sqlx::query(
                "UPDATE keys SET revoked_at = ? WHERE household = ? AND key_id <> ? \
                 AND revoked_at IS NULL AND source = 'config'",
            )
            .bind(now_i)
            .bind(h)
            .bind(&key_id.0)
            .execute(&mut *tx)
            .await?;
            if superseded.rows_affected() > 0 {
                info!(
                    household = h,
                    revoked = superseded.rows_affected(),
                    "revoked keys no longer configured"
                );
            }
            for m in &e.meters {
                sqlx::query("INSERT INTO meters (meter, household) VALUES (?, ?) ON CONFLICT(meter) DO NOTHING")
                    .bind(m.as_str())
                    .bind(h)
                    .execute(&mut *tx)
                    .await?;
                let owner: String =
                    sqlx::query_scalar("SELECT household FROM meters WHERE meter = ?")
                        .bind(m.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                if owner != h {
                    // Moving a meter would rewrite the history of stored readings.
                    return Err(ConfigError::Invalid {
                        key: "households.meters",
                        why: format!("meter {m} is stored as {owner}'s, not {h}'s"),
                    }
                    .into());
                }
            }
        }
        // Households that left the configuration keep their history but can
        // no longer sign.
        let configured: Vec<&str> = enrolments.iter().map(|e| e.household.as_str()).collect();
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT household FROM households WHERE source = 'config'")
                .fetch_all(&mut *tx)
                .await?;
        for h in stored.iter().filter(|h| !configured.contains(&h.as_str())) {
            sqlx::query(
                "UPDATE keys SET revoked_at = ? WHERE household = ? AND revoked_at IS NULL \
                 AND source = 'config'",
            )
            .bind(now_i)
            .bind(h)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Self::load(pool).await
    }

    /// Loads the registry from the database.
    pub async fn load(pool: &SqlitePool) -> Result<Registry, EngineError> {
        let corrupt = |what: String| EngineError::Store(StoreError::Corrupt(what));
        // Read before the rows: a change committed in between leaves this
        // copy marked older than it is, so it is reloaded again (never the
        // other way round).
        let version = stored_version(pool).await?;
        let mut reg = Registry {
            version,
            ..Registry::default()
        };
        let keys: Vec<(String, String, Vec<u8>, Option<i64>)> =
            sqlx::query_as("SELECT key_id, household, public_key, revoked_at FROM keys")
                .fetch_all(pool)
                .await?;
        for (key_id, household, public, revoked) in keys {
            let bytes: [u8; 32] = public
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(format!("key {key_id} is not 32 bytes")))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| corrupt(format!("key {key_id} is invalid")))?;
            if KeyId::of(&key).0 != key_id || key.is_weak() {
                return Err(corrupt(format!(
                    "key {key_id} does not match its id or is weak"
                )));
            }
            let household = HouseholdId::new(household).map_err(|e| corrupt(e.to_string()))?;
            reg.keys.insert(
                KeyId(key_id),
                KeyEntry {
                    household,
                    key,
                    revoked: revoked.is_some(),
                },
            );
        }
        let households: Vec<String> = sqlx::query_scalar("SELECT household FROM households")
            .fetch_all(pool)
            .await?;
        for h in households {
            reg.households.insert(
                HouseholdId::new(h).map_err(|e| corrupt(e.to_string()))?,
                Vec::new(),
            );
        }
        let meters: Vec<(String, String)> =
            sqlx::query_as("SELECT meter, household FROM meters ORDER BY meter")
                .fetch_all(pool)
                .await?;
        for (m, h) in meters {
            let m = MeterId::new(m).map_err(|e| corrupt(e.to_string()))?;
            let h = HouseholdId::new(h).map_err(|e| corrupt(e.to_string()))?;
            reg.households.entry(h.clone()).or_default().push(m.clone());
            reg.meters.insert(m, h);
        }
        Ok(reg)
    }

    /// The database's registry version this copy reflects.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The key enrolled under an id.
    pub fn key(&self, id: &KeyId) -> Option<&KeyEntry> {
        self.keys.get(id)
    }

    /// The household a meter belongs to.
    pub fn household_of(&self, meter: &MeterId) -> Option<&HouseholdId> {
        self.meters.get(meter)
    }

    /// A household's meters, sorted.
    pub fn meters_of(&self, household: &HouseholdId) -> &[MeterId] {
        self.households.get(household).map_or(&[], Vec::as_slice)
    }

    /// Every household, sorted.
    pub fn households(&self) -> impl Iterator<Item = &HouseholdId> {
        self.households.keys()
    }
}
