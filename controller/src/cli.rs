//! The subcommands of `voltshare`, as library functions so that tests can run
//! them in-process. Each maps its failures to a [`CliError`] with an exit code.

use crate::demo::{DemoOptions, run_demo_on};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// A failure of a subcommand.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or configuration: exit code 2, nothing was started.
    Usage(String),
    /// A failure while running: exit code 1.
    Runtime(anyhow::Error),
}

impl CliError {
    /// The message for the user.
    pub fn message(&self) -> String {
        match self {
            CliError::Usage(m) => m.clone(),
            CliError::Runtime(e) => format!("{e:#}"),
        }
    }
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Runtime(e)
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info for voltshare
/// crates). The embedded broker is silenced by default because rumqttd logs
/// every ordinary client disconnect as an error; `RUST_LOG=rumqttd=info`
/// brings it back.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,rumqttd=off,controller=info,clearing=info,meter_agent=info,web=info",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `voltshare demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of simulated households.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=200))]
    pub households: u32,
    /// Real seconds per trading interval (each interval is 15 simulated
    /// minutes; the simulated clock runs faster to fit).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=900))]
    pub interval_secs: u64,
    /// Dashboard port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Where the demo keeps its databases and keys.
    #[arg(long, default_value = "voltshare-demo")]
    pub data_dir: PathBuf,
    /// Use this MQTT broker (mqtt://HOST:PORT) instead of an embedded one.
    #[arg(long)]
    pub broker: Option<String>,
    /// Stop by itself after this many seconds, with exit code 0.
    #[arg(long)]
    pub for_secs: Option<u64>,
    /// Seed of the simulated neighbourhood.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Simulated start, `YYYY-MM-DDTHH:MM` UTC (default: a sunny July morning).
    #[arg(long, default_value = "2026-07-04T07:30")]
    pub start: String,
    /// Settle on a chain: `anvil` starts a local Anvil (from
    /// deploy/contracts' npm packages), deploys the contract and settles
    /// there. Without it the embedded ledger settles.
    #[arg(long)]
    pub chain: Option<String>,
}

/// Parses `mqtt://HOST:PORT` (or `HOST:PORT`).
pub fn parse_broker(s: &str) -> Result<(String, u16), CliError> {
    let rest = s.strip_prefix("mqtt://").unwrap_or(s);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| CliError::Usage(format!("--broker {s:?}: expected mqtt://HOST:PORT")))?;
    let port: u16 = port.parse().map_err(|_| {
        CliError::Usage(format!(
            "--broker {s:?}: port {port:?} is not a number from 1 to 65535"
        ))
    })?;
    if host.is_empty() || port == 0 {
        return Err(CliError::Usage(format!(
            "--broker {s:?}: expected mqtt://HOST:PORT"
        )));
    }
    Ok((host.to_owned(), port))
}

/// Parses `YYYY-MM-DDTHH:MM` (UTC) into Unix milliseconds.
pub fn parse_start(s: &str) -> Result<u64, CliError> {
    let dt = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
        .map_err(|e| CliError::Usage(format!("--start {s:?}: expected YYYY-MM-DDTHH:MM ({e})")))?;
    u64::try_from(dt.and_utc().timestamp_millis())
        .map_err(|_| CliError::Usage(format!("--start {s:?}: must be after 1970")))
}

/// Runs the demo.
pub fn demo(a: DemoArgs) -> Result<(), CliError> {
    let broker = a.broker.as_deref().map(parse_broker).transpose()?;
    let start_ms = parse_start(&a.start)?;
    let chain = a
        .chain
        .as_deref()
        .map(crate::chain_cli::parse_demo_chain)
        .transpose()?
        .unwrap_or_default();
    let opts = DemoOptions {
        households: a.households,
        interval_secs: a.interval_secs,
        port: a.port,
        data_dir: a.data_dir,
        broker,
        run_for: a.for_secs.map(Duration::from_secs),
        seed: a.seed,
        start_ms,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| CliError::Runtime(e.into()))?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("voltshare: stopping (Ctrl-C)");
                let _ = tx.send(true);
            }
        });
        run_demo_on(opts, chain, rx).await.map(|_| ())
    })?;
    Ok(())
}

/// `voltshare clear`.
#[derive(Args, Debug, Clone)]
pub struct ClearArgs {
    /// JSON order book: {"params": {...}, "orders": [...]}.
    #[arg(long)]
    pub orders: PathBuf,
    /// Override the mechanism: uniform, pay_as_bid or mcafee.
    #[arg(long)]
    pub mechanism: Option<String>,
}

/// Parses a mechanism name.
pub fn parse_mechanism(s: &str) -> Result<protocol::Mechanism, CliError> {
    match s.replace('-', "_").as_str() {
        "uniform" | "pay_as_clear" => Ok(protocol::Mechanism::Uniform),
        "pay_as_bid" => Ok(protocol::Mechanism::PayAsBid),
        "mcafee" => Ok(protocol::Mechanism::Mcafee),
        _ => Err(CliError::Usage(format!(
            "--mechanism {s:?}: expected one of uniform, pay_as_bid, mcafee"
        ))),
    }
}

/// Clears a book file and prints the result.
pub fn clear(a: ClearArgs) -> Result<(), CliError> {
    let mech = a.mechanism.as_deref().map(parse_mechanism).transpose()?;
    let text = std::fs::read_to_string(&a.orders)
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.orders.display())))?;
    let out = clearing::auction::clear_json(&text, mech)
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.orders.display())))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| CliError::Runtime(e.into()))?
    );
    Ok(())
}

/// `voltshare bench …`.
#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Clear a random book of N orders and print the time as JSON.
    Clearing {
        #[arg(long, default_value_t = 1_000_000)]
        orders: usize,
        #[arg(long, default_value = "uniform")]
        mechanism: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Repeat and report the best run.
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// Settle one batch of N trades on a chain (Anvil's dev keys) and print
    /// the gas as JSON.
    Settlement {
        /// JSON-RPC endpoint (an Anvil: the benchmark uses its dev keys).
        #[arg(long)]
        rpc: String,
        #[arg(long, default_value_t = 100)]
        trades: usize,
        /// Households among the trades (default: trades / 5).
        #[arg(long)]
        households: Option<usize>,
    },
    /// Simulate a week of trading for N households with the real-data model
    /// and print each household's bill against utility-only, as JSON.
    Strategy {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=500))]
        households: u32,
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
        days: u32,
        /// First billed day, `YYYY-MM-DD` (UTC); one day before warms up.
        #[arg(long, default_value = "2026-07-06")]
        start: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Meter agent RSS and CPU while polling two devices at 1 Hz, and its
    /// Modbus read rate against the raw tokio-modbus client, as JSON.
    Agent(crate::meters_cli::BenchAgentArgs),
    /// Publish N signed readings from many meters through a broker into the
    /// clearing engine; print the end-to-end rate and the broker's raw QoS 1
    /// rate (same payloads, same run) as JSON.
    Ingest(IngestArgs),
}

/// `voltshare bench ingest`.
#[derive(Args, Debug, Clone)]
pub struct IngestArgs {
    #[arg(long, default_value_t = 100_000)]
    pub readings: usize,
    /// The MQTT broker, mqtt://HOST:PORT; `embedded` starts rumqttd
    /// in-process; `mosquitto` (the default) starts a private Mosquitto on a
    /// free loopback port with its per-client queue raised (see
    /// `ingest_bench`: a stock Mosquitto drops QoS 1 messages beyond 1,000
    /// queued for one subscriber, and the run then stops with an error).
    #[arg(long, default_value = "mosquitto")]
    pub broker: String,
    /// Simulated meters (one household each).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub meters: u32,
    /// MQTT connections the readings are published through.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub publishers: u32,
    /// Most messages between publishers and subscriber at a time (brokers
    /// drop QoS 1 beyond a subscriber's queue: Mosquitto's is 1000).
    #[arg(long, default_value_t = 500)]
    pub window: usize,
    /// The engine's intake batch size (`batch_max`; the engine's default).
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
}

/// Runs `voltshare bench ingest`.
pub fn bench_ingest(a: IngestArgs) -> Result<(), CliError> {
    // Kept until the run is over: dropping it stops the private broker.
    let mut _private = None;
    let mut broker_pid = None;
    let broker = if a.broker == "embedded" {
        let addr = crate::broker::start_embedded().map_err(|e| CliError::Runtime(e.into()))?;
        (addr.ip().to_string(), addr.port())
    } else if a.broker == "mosquitto" {
        let m = crate::ingest_bench::PrivateMosquitto::start()
            .map_err(|e| CliError::Runtime(e.into()))?;
        let b = ("127.0.0.1".to_owned(), m.port);
        broker_pid = Some(m.pid());
        _private = Some(m);
        b
    } else {
        parse_broker(&a.broker)?
    };
    let opts = crate::ingest_bench::IngestOptions {
        readings: a.readings,
        meters: usize::try_from(a.meters).unwrap_or(200),
        broker,
        publishers: usize::try_from(a.publishers).unwrap_or(4),
        window: a.window,
        batch_max: a.batch,
        broker_pid,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| CliError::Runtime(e.into()))?;
    let report = rt
        .block_on(crate::ingest_bench::run(&opts))
        .map_err(|e| CliError::Runtime(e.into()))?;
    println!("{report}");
    Ok(())
}

/// Runs a benchmark.
pub fn bench(b: BenchCommand) -> Result<(), CliError> {
    match b {
        BenchCommand::Clearing {
            orders,
            mechanism,
            seed,
            runs,
        } => {
            let mech = parse_mechanism(&mechanism)?;
            let out = crate::bench::clearing(orders, mech, seed, runs);
            println!("{out}");
            Ok(())
        }
        BenchCommand::Settlement {
            rpc,
            trades,
            households,
        } => crate::chain_cli::bench_settlement(&rpc, trades, households),
        BenchCommand::Strategy {
            households,
            days,
            start,
            seed,
        } => {
            let start_ms = parse_start(&format!("{start}T00:00"))
                .map_err(|_| CliError::Usage(format!("--start {start:?}: expected YYYY-MM-DD")))?;
            let opts = crate::strategy_bench::StrategyBenchOptions {
                households,
                days,
                start_ms,
                seed,
            };
            let report = crate::strategy_bench::run(&opts);
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| CliError::Runtime(e.into()))?
            );
            Ok(())
        }
        BenchCommand::Agent(a) => crate::meters_cli::bench_agent(a),
        BenchCommand::Ingest(a) => bench_ingest(a),
    }
}

/// `voltshare config …`.
#[derive(Subcommand, Debug, Clone)]
pub enum ConfigCommand {
    /// Parse and validate a gateway configuration; exit 2 naming the key on error.
    Check {
        /// The gateway's TOML file.
        file: PathBuf,
    },
}

/// Runs a `config` subcommand.
pub fn config(c: ConfigCommand) -> Result<(), CliError> {
    match c {
        ConfigCommand::Check { file } => {
            let cfg = crate::config::load(&file).map_err(|e| CliError::Usage(e.to_string()))?;
            println!(
                "{}: ok (grid {}, roles: {})",
                file.display(),
                cfg.grid,
                cfg.roles().join(", ")
            );
            Ok(())
        }
    }
}

/// `voltshare run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The gateway's TOML file (see deploy/examples/).
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs the roles a configuration enables until SIGTERM or Ctrl-C. The
/// configuration is validated before anything binds a port.
pub fn run(a: RunArgs) -> Result<(), CliError> {
    let cfg = crate::config::load(&a.config).map_err(|e| CliError::Usage(e.to_string()))?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| CliError::Runtime(e.into()))?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "no SIGTERM handler; Ctrl-C only");
                        let _ = tokio::signal::ctrl_c().await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        let clock: std::sync::Arc<dyn protocol::Clock> = std::sync::Arc::new(protocol::SystemClock);
        crate::gateway::run_gateway(cfg, clock, rx).await
    })?;
    Ok(())
}

/// `voltshare keygen`.
#[derive(Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Where to write the secret key (hex); refused if it exists.
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes a new ed25519 key with mode 0600 and prints its public key and id.
pub fn keygen(a: KeygenArgs) -> Result<(), CliError> {
    let key = crate::keys::generate();
    crate::keys::write_new(&a.out, &key)
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.out.display())))?;
    let vk = key.verifying_key();
    println!(
        "{}",
        serde_json::json!({
            "public_key": hex::encode(vk.as_bytes()),
            "key_id": protocol::KeyId::of(&vk).0,
            "file": a.out.display().to_string(),
        })
    );
    Ok(())
}
