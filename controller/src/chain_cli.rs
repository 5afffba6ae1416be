//! The chain subcommands of `voltshare`: deploying the settlement contract,
//! verifying a settled interval from its signed inputs against the chain,
//! a household's offline inclusion proofs, and the settlement gas
//! benchmark. Each is a library function so that tests run it in-process.

use crate::cli::CliError;
use anyhow::Context;
use clap::{Args, Subcommand};
use clearing::evm::alloy::primitives::Address;
use clearing::evm::alloy::signers::local::PrivateKeySigner;
use clearing::evm::chain::Chain;
use clearing::evm::verify::{
    ProofBundle, Published, Report, proof_bundle, proof_from_published, verify_bundle,
    verify_interval, verify_published,
};
use clearing::evm::{ANVIL_KEYS, EvmError, key_from_hex, parse_address, read_key};
use protocol::{HouseholdId, IntervalId};
use sqlx::sqlite::SqliteConnectOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `voltshare chain …`.
#[derive(Subcommand, Debug, Clone)]
pub enum ChainCommand {
    /// Deploy the settlement contract (and, without --token, a test token).
    Deploy(DeployArgs),
}

/// `voltshare chain deploy`.
#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    /// JSON-RPC endpoint of the chain.
    #[arg(long)]
    pub rpc: String,
    /// Deployer key file (hex); becomes the contract's admin. Without it,
    /// Anvil's first development key (local chains only).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The settlement currency (ERC-20). Without it a freely mintable test
    /// token is deployed: never on a real chain.
    #[arg(long)]
    pub token: Option<String>,
    /// The engine's settler address (default: Anvil's second dev account).
    #[arg(long)]
    pub settler: Option<String>,
    /// The operator who may pause (default: the deployer).
    #[arg(long)]
    pub pauser: Option<String>,
}

fn usage(e: EvmError) -> CliError {
    CliError::Usage(e.to_string())
}

fn runtime(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Runtime(e.into())
}

fn rt() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new().map_err(runtime)
}

fn deployer(key: Option<&Path>) -> Result<PrivateKeySigner, CliError> {
    match key {
        Some(p) => read_key(p).map_err(usage),
        None => key_from_hex(ANVIL_KEYS[0]).map_err(usage),
    }
}

/// Runs a chain subcommand.
pub fn chain(c: ChainCommand) -> Result<(), CliError> {
    match c {
        ChainCommand::Deploy(a) => {
            let chain = Chain::http(&a.rpc, Duration::from_secs(10)).map_err(usage)?;
            let key = deployer(a.key.as_deref())?;
            let token = a
                .token
                .as_deref()
                .map(|t| parse_address(t, "--token"))
                .transpose()
                .map_err(usage)?;
            let settler = match &a.settler {
                Some(s) => parse_address(s, "--settler").map_err(usage)?,
                None => key_from_hex(ANVIL_KEYS[1]).map_err(usage)?.address(),
            };
            let pauser = a
                .pauser
                .as_deref()
                .map(|p| parse_address(p, "--pauser"))
                .transpose()
                .map_err(usage)?;
            let d = rt()?
                .block_on(clearing::evm::deploy(
                    &chain,
                    &key,
                    token,
                    settler,
                    pauser.unwrap_or(key.address()),
                ))
                .map_err(runtime)?;
            println!("{}", serde_json::to_string_pretty(&d).map_err(runtime)?);
            Ok(())
        }
    }
}

/// `voltshare verify`.
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The interval's start, Unix ms.
    #[arg(long)]
    pub interval: u64,
    /// The engine's dashboard (`http://host:port`): the published signed
    /// inputs are fetched from its `/api/published/{interval}`. The
    /// documented way.
    #[arg(long, conflicts_with = "db")]
    pub api: Option<String>,
    /// Or the engine's database (opened read-only), on the engine's host.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The engine's interval length, ms.
    #[arg(long, default_value_t = 900_000)]
    pub interval_ms: u64,
    /// The chain's JSON-RPC endpoint; without it only the engine's records
    /// are checked.
    #[arg(long)]
    pub rpc: Option<String>,
    /// The settlement contract (with --rpc).
    #[arg(long)]
    pub contract: Option<String>,
}

async fn open_ro(db: &Path) -> Result<sqlx::SqlitePool, CliError> {
    if !db.exists() {
        return Err(CliError::Usage(format!(
            "{}: no such database",
            db.display()
        )));
    }
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    sqlx::SqlitePool::connect_with(opts)
        .await
        .with_context(|| format!("opening {}", db.display()))
        .map_err(CliError::Runtime)
}

/// Fetches what the engine publishes for `interval` from its API.
pub async fn fetch_published(api: &str, interval: u64) -> Result<Published, CliError> {
    use clearing::evm::alloy::transports::http::reqwest;
    let base = api.trim_end_matches('/');
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "--api {api:?}: expected http://host:port"
        )));
    }
    let url = format!("{base}/api/published/{interval}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(runtime)?;
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))
        .map_err(CliError::Runtime)?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("GET {url}"))
        .map_err(CliError::Runtime)?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(CliError::Runtime(anyhow::anyhow!(
            "interval {interval} was not cleared (404 from {url})"
        )));
    }
    if !status.is_success() {
        return Err(CliError::Runtime(anyhow::anyhow!(
            "GET {url}: {status}: {body}"
        )));
    }
    serde_json::from_str(&body)
        .with_context(|| format!("GET {url}: not a published interval"))
        .map_err(CliError::Runtime)
}

/// Verifies an interval; the report as JSON. Fails (exit 1) if any check fails.
pub async fn verify_report(a: &VerifyArgs) -> Result<Report, CliError> {
    let chain = match (&a.rpc, &a.contract) {
        (Some(rpc), Some(c)) => Some((
            Chain::http(rpc, Duration::from_secs(10)).map_err(usage)?,
            parse_address(c, "--contract").map_err(usage)?,
        )),
        (None, None) => None,
        _ => return Err(CliError::Usage("--rpc and --contract go together".into())),
    };
    let chain = chain.as_ref().map(|(c, a)| (c, *a));
    match (&a.api, &a.db) {
        (Some(api), _) => {
            let p = fetch_published(api, a.interval).await?;
            if p.interval != a.interval {
                return Err(CliError::Runtime(anyhow::anyhow!(
                    "{api} answered for interval {} instead of {}",
                    p.interval,
                    a.interval
                )));
            }
            verify_published(&p, a.interval_ms, chain)
                .await
                .map_err(runtime)
        }
        (None, Some(db)) => {
            let pool = open_ro(db).await?;
            let rep = verify_interval(&pool, IntervalId(a.interval), a.interval_ms, chain)
                .await
                .map_err(runtime)?;
            pool.close().await;
            Ok(rep)
        }
        (None, None) => Err(CliError::Usage(
            "verify needs --api URL (the engine's dashboard) or --db FILE".into(),
        )),
    }
}

/// `voltshare verify`.
pub fn verify(a: VerifyArgs) -> Result<(), CliError> {
    let rep = rt()?.block_on(verify_report(&a))?;
    println!("{}", serde_json::to_string_pretty(&rep).map_err(runtime)?);
    if rep.ok {
        Ok(())
    } else {
        Err(CliError::Runtime(anyhow::anyhow!(
            "interval {} does not verify",
            a.interval
        )))
    }
}

/// `voltshare proof`.
#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProofArgs {
    #[command(subcommand)]
    pub command: Option<ProofCommand>,
    /// The household.
    #[arg(long)]
    pub household: Option<String>,
    /// The interval's start, Unix ms.
    #[arg(long)]
    pub interval: Option<u64>,
    /// The engine's dashboard (`http://host:port`).
    #[arg(long, conflicts_with = "db")]
    pub api: Option<String>,
    /// Or the engine's database (opened read-only).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The engine's interval length, ms (with --db).
    #[arg(long, default_value_t = 900_000)]
    pub interval_ms: u64,
    /// Write the bundle here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `voltshare proof verify`.
#[derive(Subcommand, Debug, Clone)]
pub enum ProofCommand {
    /// Check a proof bundle offline.
    Verify {
        file: PathBuf,
        /// Pin the engine's public key (hex).
        #[arg(long)]
        engine_key: Option<String>,
    },
}

/// Where a proof's inputs come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The engine's dashboard API.
    Api(String),
    /// The engine's database, with its interval length.
    Db(PathBuf, u64),
}

/// Builds a household's proof bundle.
pub async fn build_proof(
    source: &Source,
    household: &str,
    interval: u64,
) -> Result<ProofBundle, CliError> {
    let h =
        HouseholdId::new(household).map_err(|e| CliError::Usage(format!("--household: {e}")))?;
    match source {
        Source::Api(api) => {
            let p = fetch_published(api, interval).await?;
            proof_from_published(&p, &h).map_err(runtime)
        }
        Source::Db(db, interval_ms) => {
            let pool = open_ro(db).await?;
            let b = proof_bundle(&pool, &h, IntervalId(interval), *interval_ms)
                .await
                .map_err(runtime)?;
            pool.close().await;
            Ok(b)
        }
    }
}

/// `voltshare proof`.
pub fn proof(a: ProofArgs) -> Result<(), CliError> {
    if let Some(ProofCommand::Verify { file, engine_key }) = a.command {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        let b: ProofBundle = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        let rep = verify_bundle(&b, engine_key.as_deref(), None);
        println!("{}", serde_json::to_string_pretty(&rep).map_err(runtime)?);
        return if rep.ok {
            Ok(())
        } else {
            Err(CliError::Runtime(anyhow::anyhow!("proof does not verify")))
        };
    }
    let source = match (a.api, a.db) {
        (Some(api), _) => Some(Source::Api(api)),
        (None, Some(db)) => Some(Source::Db(db, a.interval_ms)),
        (None, None) => None,
    };
    let (Some(h), Some(i), Some(source)) = (a.household, a.interval, source) else {
        return Err(CliError::Usage(
            "proof needs --household, --interval and --api URL (or --db FILE); or: proof verify FILE"
                .into(),
        ));
    };
    let b = rt()?.block_on(build_proof(&source, &h, i))?;
    let json = serde_json::to_string_pretty(&b).map_err(runtime)?;
    match a.out {
        Some(p) => std::fs::write(&p, json)
            .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?,
        None => println!("{json}"),
    }
    Ok(())
}

/// `voltshare bench settlement`.
pub fn bench_settlement(
    rpc: &str,
    trades: usize,
    households: Option<usize>,
) -> Result<(), CliError> {
    if trades == 0 {
        return Err(CliError::Usage("--trades must be positive".into()));
    }
    let chain = Chain::http(rpc, Duration::from_secs(30)).map_err(usage)?;
    let admin = key_from_hex(ANVIL_KEYS[0]).map_err(usage)?;
    let settler = key_from_hex(ANVIL_KEYS[1]).map_err(usage)?;
    // Five trades per household by default: a step-curve book.
    let households = households.unwrap_or((trades / 5).max(2));
    let report = rt()?
        .block_on(clearing::evm::bench::settlement_gas(
            &chain, &admin, &settler, trades, households,
        ))
        .map_err(runtime)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(runtime)?
    );
    Ok(())
}

/// The settlement address of a demo household: derived from its name, so
/// the demo needs no keys for households on the chain.
pub fn demo_account(h: &HouseholdId) -> Address {
    clearing::evm::bench::account_of(h)
}

/// Where `voltshare demo` settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemoChain {
    /// The embedded ledger (the default).
    #[default]
    Ledger,
    /// A local Anvil started from the npm-installed binary.
    Anvil,
}

/// Parses `--chain`.
pub fn parse_demo_chain(s: &str) -> Result<DemoChain, CliError> {
    match s {
        "ledger" | "none" => Ok(DemoChain::Ledger),
        "anvil" => Ok(DemoChain::Anvil),
        _ => Err(CliError::Usage(format!(
            "--chain {s:?}: expected anvil (or ledger)"
        ))),
    }
}

/// Starts a local Anvil, deploys the contracts (test token), deposits for
/// every household and the utility, and returns the running node with the
/// engine's `[evm]` settings. The settler key (Anvil's second dev key) is
/// written to `keys_dir/settler.key`.
pub async fn start_demo_chain(
    keys_dir: &Path,
    households: &[HouseholdId],
) -> anyhow::Result<(
    clearing::evm::alloy::node_bindings::AnvilInstance,
    clearing::evm::EvmSettings,
)> {
    let path = clearing::evm::anvil_path().ok_or_else(|| {
        anyhow::anyhow!("Anvil is not installed: run scripts/setup.d/20-contracts.sh (npm ci in deploy/contracts)")
    })?;
    // One-second blocks, so that confirmations advance on their own.
    let anvil = clearing::evm::alloy::node_bindings::Anvil::at(path)
        .arg("--block-time")
        .arg("1")
        .try_spawn()
        .context("starting Anvil")?;
    let chain = Chain::http(&anvil.endpoint(), Duration::from_secs(10))?;
    let admin = key_from_hex(ANVIL_KEYS[0])?;
    let settler = key_from_hex(ANVIL_KEYS[1])?;
    let d = clearing::evm::deploy(&chain, &admin, None, settler.address(), admin.address()).await?;
    let utility = Address::repeat_byte(0xee);
    let mut accounts: Vec<Address> = households.iter().map(demo_account).collect();
    accounts.push(utility);
    clearing::evm::fund_test_accounts(&chain, &admin, &d, &accounts, 100_000_000).await?;
    let key_file = keys_dir.join("settler.key");
    std::fs::write(&key_file, ANVIL_KEYS[1])
        .with_context(|| format!("writing {}", key_file.display()))?;
    let mut evm = clearing::evm::EvmSettings::new(
        anvil.endpoint(),
        d.chain_id,
        d.contract,
        key_file,
        utility,
    );
    evm.confirmations = 3;
    evm.bump_after_ms = 10_000;
    evm.from_block = d.block;
    Ok((anvil, evm))
}
