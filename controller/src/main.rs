//! `voltshare`: one binary for every role. `voltshare demo` runs a whole
//! simulated microgrid; other subcommands run single roles or tools.
//!
//! Errors end the process with a message and an exit code: 2 for bad usage or
//! configuration (nothing has been started), 1 for failures at run time.

use clap::{Parser, Subcommand};
use controller::cli;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc. The engine's intake allocates and
/// frees small buffers per message (topics, payloads, ids, rows, acks) on
/// several threads; under glibc, malloc, free and the consolidation of its
/// fast bins took about a sixth of the samples of `voltshare bench ingest`,
/// and the engine's CPU per reading fell from 54–56 µs to 43–44 µs with
/// mimalloc (29–30k readings/s instead of 23–24k on a 2-core VM). The
/// auction's big buffers gain too (1M-order clearing 117–121 ms instead of
/// 133–141).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "voltshare",
    version,
    about = "Peer-to-peer energy trading for a microgrid"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole simulated microgrid on this machine, with its dashboard.
    Demo(cli::DemoArgs),
    /// Clear a JSON order book offline and print the result as JSON.
    Clear(cli::ClearArgs),
    /// Benchmarks that print JSON.
    #[command(subcommand)]
    Bench(cli::BenchCommand),
    /// Make a household (or engine) key, written with file mode 0600.
    Keygen(cli::KeygenArgs),
    /// Write a signed enrolment request for a household's key and meters.
    Enroll(controller::enrol_cli::EnrollArgs),
    /// Operator tools on the clearing engine's database: approve, rotate, revoke, keys.
    #[command(subcommand)]
    Clearing(controller::enrol_cli::ClearingCommand),
    /// Run the roles a gateway configuration file enables.
    Run(cli::RunArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(cli::ConfigCommand),
    /// Database tools: `db backup` copies a live SQLite database consistently.
    #[command(subcommand)]
    Db(controller::db_cli::DbCommand),
    /// Find Modbus devices (SunSpec or a shipped register map) and print a config snippet.
    Scan(controller::meters_cli::ScanArgs),
    /// Share one Modbus TCP device (or RS-485 bus) between several clients.
    Proxy(controller::meters_cli::ProxyArgs),
    /// The settlement chain: deploy the contract.
    #[command(subcommand)]
    Chain(controller::chain_cli::ChainCommand),
    /// Re-run an interval's auction and reconciliation from its signed
    /// inputs and check the roots against the records and the chain.
    Verify(controller::chain_cli::VerifyArgs),
    /// A household's inclusion proofs for an interval (`proof verify FILE`
    /// checks one offline).
    Proof(controller::chain_cli::ProofArgs),
    /// Dashboard accounts: create users, print one-time login links.
    #[command(subcommand)]
    Web(controller::web_cli::WebCommand),
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    cli::init_tracing();
    let result = match args.command {
        Command::Demo(a) => cli::demo(a),
        Command::Clear(a) => cli::clear(a),
        Command::Bench(b) => cli::bench(b),
        Command::Keygen(a) => cli::keygen(a),
        Command::Enroll(a) => controller::enrol_cli::enroll(a),
        Command::Clearing(c) => controller::enrol_cli::clearing(c),
        Command::Run(a) => cli::run(a),
        Command::Config(c) => cli::config(c),
        Command::Db(c) => controller::db_cli::db(c),
        Command::Scan(a) => controller::meters_cli::scan(a),
        Command::Proxy(a) => controller::meters_cli::proxy(a),
        Command::Web(c) => controller::web_cli::web(c),
        Command::Chain(c) => controller::chain_cli::chain(c),
        Command::Verify(a) => controller::chain_cli::verify(a),
        Command::Proof(a) => controller::chain_cli::proof(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voltshare: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}
