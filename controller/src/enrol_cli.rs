//! `voltshare enroll` (the household's side: a signed enrolment request) and
//! `voltshare clearing approve|rotate|revoke|keys` (the operator's side, on
//! the engine's database).
//!
//! The operator commands work on a running engine's database: SQLite's
//! locking orders them with the engine's own writes, and the engine reloads
//! its registry before its next intake batch, so an approval or revocation
//! takes effect without a restart.

use crate::cli::CliError;
use clap::{Args, Subcommand};
use clearing::enrol::{self, EnrolmentRequest};
use protocol::{Clock, GridId, HouseholdId, KeyId, MeterId, SystemClock};
use std::path::PathBuf;

/// `voltshare enroll`.
#[derive(Args, Debug, Clone)]
pub struct EnrollArgs {
    /// The household's key file (from `voltshare keygen`); it signs the
    /// request, proving the household holds the key it enrols.
    #[arg(long)]
    pub key: PathBuf,
    /// The grid (microgrid id) to enrol in.
    #[arg(long)]
    pub grid: String,
    /// The household id.
    #[arg(long)]
    pub household: String,
    /// A meter of the household (repeat for several).
    #[arg(long = "meter")]
    pub meters: Vec<String>,
    /// Where the household is paid on the settlement chain (0x…).
    #[arg(long)]
    pub settlement_address: Option<String>,
    /// Where to write the request; refused if it exists.
    #[arg(long)]
    pub out: PathBuf,
}

fn usage<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> CliError + '_ {
    move |e| CliError::Usage(format!("{what}: {e}"))
}

/// Writes a signed enrolment request and prints what it asks for.
pub fn enroll(a: EnrollArgs) -> Result<(), CliError> {
    let key = crate::keys::read(&a.key).map_err(usage(&a.key.display().to_string()))?;
    let grid = GridId::new(a.grid.clone()).map_err(usage("--grid"))?;
    let household = HouseholdId::new(a.household.clone()).map_err(usage("--household"))?;
    let meters = a
        .meters
        .iter()
        .map(|m| MeterId::new(m.clone()).map_err(usage("--meter")))
        .collect::<Result<Vec<_>, _>>()?;
    if meters.is_empty() {
        return Err(CliError::Usage(
            "--meter: at least one meter is needed".into(),
        ));
    }
    let request = EnrolmentRequest {
        grid,
        household,
        public_key: hex::encode(key.verifying_key().as_bytes()),
        meters,
        settlement_address: a.settlement_address.clone(),
        ts: SystemClock.now(),
    };
    let text = enrol::make_request(&key, &request).map_err(|e| CliError::Usage(e.to_string()))?;
    // Check it as the operator will, so a bad address fails here first.
    enrol::verify_request(&text, None).map_err(|e| CliError::Usage(e.to_string()))?;
    write_new(&a.out, &text)?;
    println!(
        "{}",
        serde_json::json!({
            "request": a.out.display().to_string(),
            "household": request.household,
            "key_id": KeyId::of(&key.verifying_key()).0,
            "meters": request.meters,
        })
    );
    Ok(())
}

fn write_new(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(usage(&path.display().to_string()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("{}: {e}", path.display())))
}

/// `voltshare clearing …`.
#[derive(Subcommand, Debug, Clone)]
pub enum ClearingCommand {
    /// Enrol a new household from its signed request.
    Approve(RequestArgs),
    /// Replace a household's key with the one in its signed request; its
    /// other keys are revoked.
    Rotate(RequestArgs),
    /// Revoke a key (or every key of a household): its messages are refused
    /// from then on.
    Revoke(RevokeArgs),
    /// List the enrolled keys as JSON.
    Keys(DbArgs),
}

/// A request file and the engine's database.
#[derive(Args, Debug, Clone)]
pub struct RequestArgs {
    /// The request file written by `voltshare enroll`.
    pub request: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
    /// Refuse requests for any other grid.
    #[arg(long)]
    pub grid: Option<String>,
}

/// The engine's database.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// The clearing engine's SQLite database (its `db_path`).
    #[arg(long)]
    pub db: PathBuf,
}

/// `voltshare clearing revoke`.
#[derive(Args, Debug, Clone)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The key id to revoke (as `voltshare keygen` prints it).
    #[arg(
        long,
        conflicts_with = "household",
        required_unless_present = "household"
    )]
    pub key_id: Option<String>,
    /// Revoke every active key of this household.
    #[arg(long)]
    pub household: Option<String>,
}

/// Runs an operator command.
pub fn clearing(c: ClearingCommand) -> Result<(), CliError> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| CliError::Runtime(e.into()))?;
    rt.block_on(clearing_async(c))
}

async fn open(db: &DbArgs) -> Result<sqlx::SqlitePool, CliError> {
    // Only an existing database: a typo must not create an empty one.
    if !db.db.exists() {
        return Err(CliError::Usage(format!(
            "--db {}: no such file",
            db.db.display()
        )));
    }
    clearing::store::open(&db.db)
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("{}: {e}", db.db.display())))
}

fn refused(e: enrol::EnrolError) -> CliError {
    match e {
        enrol::EnrolError::Store(e) => CliError::Runtime(e.into()),
        other => CliError::Usage(other.to_string()),
    }
}

async fn clearing_async(c: ClearingCommand) -> Result<(), CliError> {
    let now = SystemClock.now();
    match c {
        ClearingCommand::Approve(a) => {
            let (pool, req) = load_request(&a).await?;
            enrol::approve(&pool, &req, now).await.map_err(refused)?;
            pool.close().await;
            print_json(serde_json::json!({
                "approved": req.request.household,
                "key_id": req.key_id.0,
                "meters": req.request.meters,
            }));
        }
        ClearingCommand::Rotate(a) => {
            let (pool, req) = load_request(&a).await?;
            let revoked = enrol::rotate(&pool, &req, now).await.map_err(refused)?;
            pool.close().await;
            print_json(serde_json::json!({
                "rotated": req.request.household,
                "key_id": req.key_id.0,
                "revoked": revoked,
            }));
        }
        ClearingCommand::Revoke(a) => {
            let pool = open(&a.db).await?;
            let revoked = match (&a.key_id, &a.household) {
                (Some(k), _) => {
                    let id = KeyId(k.clone());
                    enrol::revoke_key(&pool, &id, now).await.map_err(refused)?;
                    vec![id]
                }
                (None, Some(h)) => {
                    let h = HouseholdId::new(h.clone()).map_err(usage("--household"))?;
                    enrol::revoke_household(&pool, &h, now)
                        .await
                        .map_err(refused)?
                }
                (None, None) => {
                    return Err(CliError::Usage("give --key-id or --household".into()));
                }
            };
            pool.close().await;
            print_json(serde_json::json!({ "revoked": revoked }));
        }
        ClearingCommand::Keys(db) => {
            let pool = open(&db).await?;
            let keys = enrol::list_keys(&pool).await.map_err(refused)?;
            pool.close().await;
            print_json(serde_json::json!({ "keys": keys }));
        }
    }
    Ok(())
}

async fn load_request(
    a: &RequestArgs,
) -> Result<(sqlx::SqlitePool, enrol::VerifiedRequest), CliError> {
    let text =
        std::fs::read_to_string(&a.request).map_err(usage(&a.request.display().to_string()))?;
    let grid = a
        .grid
        .as_ref()
        .map(|g| GridId::new(g.clone()).map_err(usage("--grid")))
        .transpose()?;
    let req = enrol::verify_request(&text, grid.as_ref())
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.request.display())))?;
    let pool = open(&a.db).await?;
    Ok((pool, req))
}

fn print_json(v: serde_json::Value) {
    println!("{v}");
}
