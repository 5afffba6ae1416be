//! The dashboard's own store: accounts, sessions, one-time login links,
//! enrolment requests and operator settings, in a small SQLite database
//! beside the engine's (which the dashboard never writes).
//!
//! Secrets: passwords are stored as argon2id PHC strings; session tokens and
//! login-link tokens are 32 random bytes given to the browser once and stored
//! only as SHA-256 digests, so a leaked database file logs nobody in.
//!
//! Time: expiry is judged by the store's own [`Clock`], which is real time
//! even when the dashboard's clock is a fast simulated one (a 12-hour
//! session must not end after four real minutes of a 180× demo).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use protocol::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time login link stays valid by default.
pub const LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted password, to bound hashing work per request.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Who an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees aggregates and its own household's data.
    Household,
    /// Sees everything, approves enrolments, sets parameters.
    Operator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Household => "household",
            Role::Operator => "operator",
        }
    }
    fn parse(s: &str) -> Option<Role> {
        match s {
            "household" => Some(Role::Household),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// A logged-in account as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub role: Role,
    /// The household a household account belongs to.
    pub household: Option<String>,
}

/// A valid session: the account and the session's CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub account: Account,
    pub csrf: String,
}

/// A session just created: the secret token for the cookie and its CSRF token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub token: String,
    pub csrf: String,
    pub max_age: Duration,
}

/// One enrolment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EnrolmentRequest {
    pub id: i64,
    pub household: String,
    /// Hex ed25519 public key of the new gateway.
    pub public_key: String,
    pub meters: Vec<String>,
    pub requested_by: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Unix ms.
    pub created_at: u64,
    pub decided_by: Option<String>,
}

/// Failures of the account store.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account store: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("account store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("password hashing: {0}")]
    Hash(String),
    #[error("invalid account: {0}")]
    Invalid(String),
    #[error("no such account: {0}")]
    NoSuchAccount(String),
    #[error("corrupt account store: {0}")]
    Corrupt(String),
}

/// The store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccountStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    /// A real hash of a random password, verified against when the username
    /// is unknown, so that a failed login takes as long either way.
    dummy_hash: Arc<String>,
}

/// 32 random bytes as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Usernames and household ids: short, printable, no separators that could
/// confuse a URL or a log line.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::Invalid("password too long".into()));
    }
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

type AccountTuple = (String, String, Option<String>);

fn account_of((username, role, household): AccountTuple) -> Result<Account, AccountError> {
    let role = Role::parse(&role)
        .ok_or_else(|| AccountError::Corrupt(format!("account {username}: role {role}")))?;
    Ok(Account {
        username,
        role,
        household,
    })
}

impl AccountStore {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub async fn open(path: &Path) -> Result<AccountStore, AccountError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        AccountStore::with_pool(pool).await
    }

    /// A store in memory, for tests and for a dashboard without accounts.
    pub async fn in_memory() -> Result<AccountStore, AccountError> {
        let opts = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true);
        // One connection: every connection to `:memory:` is its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        AccountStore::with_pool(pool).await
    }

    async fn with_pool(pool: SqlitePool) -> Result<AccountStore, AccountError> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        let dummy_hash = Arc::new(hash_password(&random_token())?);
        Ok(AccountStore {
            pool,
            clock: Arc::new(SystemClock),
            dummy_hash,
        })
    }

    /// Replaces the store's clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> AccountStore {
        self.clock = clock;
        self
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.now().0).unwrap_or(i64::MAX)
    }

    /// Creates or updates an account. A `None` password keeps the current
    /// one (or none: such an account logs in only by one-time link).
    pub async fn upsert_account(
        &self,
        username: &str,
        role: Role,
        household: Option<&str>,
        password: Option<&str>,
    ) -> Result<(), AccountError> {
        if !valid_name(username) {
            return Err(AccountError::Invalid(format!(
                "username {username:?}: use 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        match (role, household) {
            (Role::Household, Some(h)) if valid_name(h) => {}
            (Role::Household, _) => {
                return Err(AccountError::Invalid(
                    "a household account needs a valid household id".into(),
                ));
            }
            (Role::Operator, Some(_)) => {
                return Err(AccountError::Invalid(
                    "an operator account belongs to no household".into(),
                ));
            }
            (Role::Operator, None) => {}
        }
        let hash = password.map(hash_password).transpose()?;
        sqlx::query(
            "INSERT INTO accounts (username, role, household, password_hash, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT(username) DO UPDATE SET role = excluded.role, household = excluded.household, \
             password_hash = COALESCE(excluded.password_hash, accounts.password_hash)",
        )
        .bind(username)
        .bind(role.as_str())
        .bind(household)
        .bind(hash)
        .bind(self.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates an account only if the username is free (demo seeding keeps
    /// whatever an operator already changed).
    pub async fn ensure_account(
        &self,
        username: &str,
        role: Role,
        household: Option<&str>,
    ) -> Result<(), AccountError> {
        if self.account(username).await?.is_none() {
            self.upsert_account(username, role, household, None).await?;
        }
        Ok(())
    }

    /// One account by name.
    pub async fn account(&self, username: &str) -> Result<Option<Account>, AccountError> {
        let row: Option<AccountTuple> =
            sqlx::query_as("SELECT username, role, household FROM accounts WHERE username = ?")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        row.map(account_of).transpose()
    }

    /// Checks a password. Unknown users and accounts without a password take
    /// the same time as a wrong password.
    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Account>, AccountError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(None);
        }
        let row: Option<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT username, role, household, password_hash FROM accounts WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let (tuple, phc) = match row {
            Some((u, r, h, Some(phc))) => (Some((u, r, h)), phc),
            _ => (None, self.dummy_hash.to_string()),
        };
        let password = password.to_owned();
        // Argon2 is deliberately slow: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .unwrap_or(false);
        match (ok, tuple) {
            (true, Some(t)) => Ok(Some(account_of(t)?)),
            _ => Ok(None),
        }
    }

    /// Starts a session for an account.
    pub async fn create_session(&self, username: &str) -> Result<NewSession, AccountError> {
        let token = random_token();
        let csrf = random_token();
        let now = self.now();
        // Opportunistic cleanup keeps the table small without a timer task.
        sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, username, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(digest(&token))
        .bind(username)
        .bind(&csrf)
        .bind(now)
        .bind(now.saturating_add(ms(SESSION_TTL)))
        .execute(&self.pool)
        .await?;
        Ok(NewSession {
            token,
            csrf,
            max_age: SESSION_TTL,
        })
    }

    /// The live session of a cookie token, if any.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, AccountError> {
        if token.len() != 64 {
            return Ok(None);
        }
        let row: Option<(String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT a.username, a.role, a.household, s.csrf FROM sessions s \
             JOIN accounts a ON a.username = s.username WHERE s.token_hash = ? AND s.expires_at > ?",
        )
        .bind(digest(token))
        .bind(self.now())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some((u, r, h, csrf)) => Ok(Some(Session {
                account: account_of((u, r, h))?,
                csrf,
            })),
        }
    }

    /// Ends a session.
    pub async fn end_session(&self, token: &str) -> Result<(), AccountError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(digest(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates a one-time login link token for an existing account.
    pub async fn create_login_link(
        &self,
        username: &str,
        ttl: Duration,
    ) -> Result<String, AccountError> {
        if self.account(username).await?.is_none() {
            return Err(AccountError::NoSuchAccount(username.to_owned()));
        }
        let token = random_token();
        let now = self.now();
        sqlx::query(
            "INSERT INTO login_links (token_hash, username, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(digest(&token))
        .bind(username)
        .bind(now)
        .bind(now.saturating_add(ms(ttl)))
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Uses a login link: succeeds once, before it expires.
    pub async fn redeem_login_link(&self, token: &str) -> Result<Option<Account>, AccountError> {
        if token.len() != 64 {
            return Ok(None);
        }
        let now = self.now();
        // One statement marks it used, so two concurrent redemptions cannot
        // both succeed.
        let username: Option<String> = sqlx::query_scalar(
            "UPDATE login_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? \
             RETURNING username",
        )
        .bind(now)
        .bind(digest(token))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match username {
            None => Ok(None),
            Some(u) => self.account(&u).await,
        }
    }

    /// Files an enrolment request: the signed request file and what was
    /// read from it after checking its signature.
    pub async fn request_enrolment(
        &self,
        household: &str,
        public_key: &str,
        meters: &[String],
        requested_by: &str,
        request: &str,
    ) -> Result<i64, AccountError> {
        let meters =
            serde_json::to_string(meters).map_err(|e| AccountError::Invalid(e.to_string()))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO enrolment_requests (household, public_key, meters, requested_by, status, created_at, request) \
             VALUES (?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
        )
        .bind(household)
        .bind(public_key)
        .bind(meters)
        .bind(requested_by)
        .bind(self.now())
        .bind(request)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The signed request file of a pending request: `None` if there is no
    /// pending request with that id, `Some(None)` if it has no file.
    pub async fn pending_request(&self, id: i64) -> Result<Option<Option<String>>, AccountError> {
        let row: Option<Option<String>> = sqlx::query_scalar(
            "SELECT request FROM enrolment_requests WHERE id = ? AND status = 'pending'",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Enrolment requests, newest first.
    pub async fn enrolments(&self) -> Result<Vec<EnrolmentRequest>, AccountError> {
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            String,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, household, public_key, meters, requested_by, status, created_at, decided_by \
             FROM enrolment_requests ORDER BY id DESC LIMIT 500",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(id, household, public_key, meters, by, status, created, decided_by)| {
                    Ok(EnrolmentRequest {
                        id,
                        household,
                        public_key,
                        meters: serde_json::from_str(&meters)
                            .map_err(|e| AccountError::Corrupt(format!("enrolment {id}: {e}")))?,
                        requested_by: by,
                        status,
                        created_at: u64::try_from(created).unwrap_or(0),
                        decided_by,
                    })
                },
            )
            .collect()
    }

    /// Approves or rejects a pending request. `false` if there is no
    /// pending request with that id.
    pub async fn decide_enrolment(
        &self,
        id: i64,
        approve: bool,
        by: &str,
    ) -> Result<bool, AccountError> {
        let done = sqlx::query(
            "UPDATE enrolment_requests SET status = ?, decided_at = ?, decided_by = ? \
             WHERE id = ? AND status = 'pending'",
        )
        .bind(if approve { "approved" } else { "rejected" })
        .bind(self.now())
        .bind(by)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A stored setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, AccountError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores a setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), AccountError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_login_link_and_session_lifecycle() {
        let store = AccountStore::in_memory().await.expect("store");
        store
            .upsert_account("alice", Role::Household, Some("h01"), Some("correct horse"))
            .await
            .expect("account");
        assert!(
            store
                .check_password("alice", "wrong")
                .await
                .expect("check")
                .is_none()
        );
        assert!(
            store
                .check_password("nobody", "x")
                .await
                .expect("check")
                .is_none()
        );
        let a = store
            .check_password("alice", "correct horse")
            .await
            .expect("check")
            .expect("valid");
        assert_eq!(a.household.as_deref(), Some("h01"));
        let s = store.create_session("alice").await.expect("session");
        let got = store
            .session(&s.token)
            .await
            .expect("lookup")
            .expect("live");
        assert_eq!(got.csrf, s.csrf);
        store.end_session(&s.token).await.expect("end");
        assert!(store.session(&s.token).await.expect("lookup").is_none());

        let link = store
            .create_login_link("alice", LINK_TTL)
            .await
            .expect("link");
        assert!(
            store
                .redeem_login_link(&link)
                .await
                .expect("redeem")
                .is_some()
        );
        assert!(
            store
                .redeem_login_link(&link)
                .await
                .expect("redeem")
                .is_none(),
            "a link works once"
        );
    }

    #[tokio::test]
    async fn rejects_bad_accounts() {
        let store = AccountStore::in_memory().await.expect("store");
        assert!(
            store
                .upsert_account("a b", Role::Operator, None, None)
                .await
                .is_err()
        );
        assert!(
            store
                .upsert_account("x", Role::Household, None, None)
                .await
                .is_err()
        );
        assert!(
            store
                .upsert_account("x", Role::Operator, Some("h1"), None)
                .await
                .is_err()
        );
    }
}
