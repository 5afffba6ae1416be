//! `voltshare web …`: the dashboard's account tools, and how the demo
//! attaches the dashboard's account store.
//!
//! - `voltshare web add-user --db web.db --user NAME --role household --household h01 [--password-stdin]`
//! - `voltshare web link --db web.db --user NAME [--base-url URL] [--ttl-hours H]`
//!   prints a one-time login link (valid once, for `--ttl-hours`).
//!
//! Passwords are read from standard input only, never from the command line,
//! so that they do not end up in shell history or `ps`.

use crate::cli::CliError;
use clap::{Args, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use web::{AccountStore, AppState, Role, Settings};

/// `voltshare web …`.
#[derive(Subcommand, Debug, Clone)]
pub enum WebCommand {
    /// Create or update a dashboard account.
    AddUser(AddUserArgs),
    /// Print a one-time login link for an account.
    Link(LinkArgs),
}

/// `voltshare web add-user`.
#[derive(Args, Debug, Clone)]
pub struct AddUserArgs {
    /// The dashboard's account database (the demo's is `<data-dir>/web.db`).
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long)]
    pub user: String,
    /// `household` or `operator`.
    #[arg(long, default_value = "household")]
    pub role: String,
    /// The household of a household account.
    #[arg(long)]
    pub household: Option<String>,
    /// Read the password from standard input (one line). Without it the
    /// account can log in only by one-time link.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `voltshare web link`.
#[derive(Args, Debug, Clone)]
pub struct LinkArgs {
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long)]
    pub user: String,
    /// The dashboard's address, to print a whole URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// How long the link stays valid.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub ttl_hours: u64,
}

fn parse_role(s: &str) -> Result<Role, CliError> {
    match s {
        "household" => Ok(Role::Household),
        "operator" => Ok(Role::Operator),
        _ => Err(CliError::Usage(format!(
            "--role {s:?}: expected household or operator"
        ))),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(e.into()))
}

/// Creates or updates an account (library form of `web add-user`).
pub async fn add_user(
    db: &Path,
    user: &str,
    role: Role,
    household: Option<&str>,
    password: Option<&str>,
) -> Result<(), CliError> {
    let store = AccountStore::open(db)
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("{}: {e}", db.display())))?;
    store
        .upsert_account(user, role, household, password)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// Makes a one-time login URL (library form of `web link`).
pub async fn login_link(
    db: &Path,
    user: &str,
    base_url: &str,
    ttl: Duration,
) -> Result<String, CliError> {
    let store = AccountStore::open(db)
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("{}: {e}", db.display())))?;
    let token = store
        .create_login_link(user, ttl)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(format!(
        "{}/login/link?token={token}",
        base_url.trim_end_matches('/')
    ))
}

/// Runs `voltshare web …`.
pub fn web(cmd: WebCommand) -> Result<(), CliError> {
    match cmd {
        WebCommand::AddUser(a) => {
            let role = parse_role(&a.role)?;
            let password = if a.password_stdin {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CliError::Usage(format!("reading the password: {e}")))?;
                let p = s.lines().next().unwrap_or("").to_owned();
                if p.len() < 8 {
                    return Err(CliError::Usage(
                        "the password must have at least 8 characters".into(),
                    ));
                }
                Some(p)
            } else {
                None
            };
            runtime()?.block_on(add_user(
                &a.db,
                &a.user,
                role,
                a.household.as_deref(),
                password.as_deref(),
            ))?;
            println!("{}", serde_json::json!({ "user": a.user, "role": a.role }));
            Ok(())
        }
        WebCommand::Link(a) => {
            let ttl = Duration::from_secs(a.ttl_hours.saturating_mul(3600));
            let url = runtime()?.block_on(login_link(&a.db, &a.user, &a.base_url, ttl))?;
            println!("{url}");
            Ok(())
        }
    }
}

/// Gives the demo's dashboard an account store at `<data_dir>/web.db`, with
/// an `operator` account and one account per household (named like the
/// household), all without passwords: log in with `voltshare web link`, or
/// set a password with `voltshare web add-user --password-stdin`. The block
/// explorer link comes from `VOLTSHARE_EXPLORER_URL` when set.
pub async fn attach_dashboard(
    state: AppState,
    data_dir: &Path,
    households: &[String],
) -> anyhow::Result<AppState> {
    let db = data_dir.join("web.db");
    let store = AccountStore::open(&db).await?;
    store
        .ensure_account("operator", Role::Operator, None)
        .await?;
    for h in households {
        store.ensure_account(h, Role::Household, Some(h)).await?;
    }
    let defaults = Settings {
        public_aggregates: true,
        explorer_tx_url: std::env::var("VOLTSHARE_EXPLORER_URL").ok(),
    };
    Ok(state.with_accounts(store, defaults).await?)
}
