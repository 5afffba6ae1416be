//! `voltshare config check` on the shipped example configurations: they
//! validate (with their certificate paths pointed at real files), and a typo
//! or a bad value gives exit code 2 and one message naming the file, line and
//! key. Also the strategy benchmark's acceptance: a simulated week of 20
//! households in which every household saves against the utility alone.

use anyhow::{Context, Result, ensure};
use controller::cli::{self, ConfigCommand};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The examples with `/etc/voltshare/tls/` pointed at freshly made
/// certificates in a temporary directory.
fn examples(tag: &str) -> Result<(PathBuf, String, String)> {
    let dir = std::env::temp_dir().join(format!("voltshare-config-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let d = dir.to_str().context("utf-8")?;
    let certs = repo().join("deploy/scripts/voltshare-certs");
    for args in [
        vec!["ca", d],
        vec!["broker", d, "localhost"],
        vec!["client", d, "gateway"],
        vec!["client", d, "engine"],
    ] {
        let out = Command::new(&certs).args(&args).output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fix = |name: &str| -> Result<String> {
        Ok(
            std::fs::read_to_string(repo().join("deploy/examples").join(name))?
                .replace("/etc/voltshare/tls/", &format!("{d}/"))
                .replace("/var/lib/voltshare", d),
        )
    };
    Ok((
        dir.clone(),
        fix("household.toml")?,
        fix("clearing-host.toml")?,
    ))
}

fn check(dir: &Path, name: &str, text: &str) -> Result<(), cli::CliError> {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write config");
    cli::config(ConfigCommand::Check { file })
}

#[test]
fn shipped_examples_validate() -> Result<()> {
    let (dir, household, clearing) = examples("ok")?;
    check(&dir, "household.toml", &household).map_err(|e| anyhow::anyhow!(e.message()))?;
    check(&dir, "clearing.toml", &clearing).map_err(|e| anyhow::anyhow!(e.message()))?;
    // The documented password alternative: uncommented, certificate lines
    // dropped, the password file in place.
    let d = dir.to_str().context("utf-8")?;
    std::fs::write(dir.join("broker.password"), "secret\n")?;
    let password: String = household
        .lines()
        .filter(|l| !l.contains("/gateway.crt\"") && !l.contains("/gateway.key\""))
        .map(|l| match l.strip_prefix("# ") {
            Some(k)
                if k.starts_with("port = 8884")
                    || k.starts_with("username")
                    || k.starts_with("password_file") =>
            {
                k.replace("/etc/voltshare/tls/", &format!("{d}/"))
            }
            _ => l.to_owned(),
        })
        .filter(|l| l != "port = 8883")
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(password.contains("\nusername = \"h07\""), "{password}");
    check(&dir, "password.toml", &password).map_err(|e| anyhow::anyhow!(e.message()))?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn typos_and_bad_values_exit_2_naming_the_key() -> Result<()> {
    let (dir, household, clearing) = examples("bad")?;
    // (which example, from, to, words the one-line message must contain)
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        (
            &household,
            "max_buy_price = 300000",
            "max_buy_prize = 300000",
            vec![
                "typo.toml:",
                "key `controller.max_buy_prize`",
                "unknown field",
            ],
        ),
        (
            &household,
            "poll_ms = 1000",
            "poll_ms = \"1s\"",
            vec!["key `meter_agent.poll_ms`", "invalid type"],
        ),
        (
            &household,
            "latitude = 51.45",
            "latitude = 514.5",
            vec!["key `controller.latitude`", "-90 to 90"],
        ),
        (
            &household,
            "port = 8883",
            "port = 0",
            vec!["key `broker.port`"],
        ),
        (
            &household,
            "cert_file = ",
            "#cert_file = ",
            vec!["key `broker.cert_file`", "required with key_file"],
        ),
        // The TLS files are read while validating: a missing one, a key
        // where a certificate belongs and a key of another certificate are
        // refused, naming the key and the file.
        (
            &household,
            "gateway.crt\"",
            "missing.crt\"",
            vec!["key `broker.cert_file`", "missing.crt", "No such file"],
        ),
        (
            &household,
            "ca.crt\"",
            "gateway.key\"",
            vec!["key `broker.ca_file`", "gateway.key", "no PEM certificate"],
        ),
        (
            &clearing,
            "engine.key\"",
            "gateway.key\"",
            vec!["key `broker.key_file`", "gateway.key", "does not fit"],
        ),
        (
            &clearing,
            "settle_grace_ms = 60000",
            "settle_grace_msec = 60000",
            vec!["key `engine.settle_grace_msec`", "unknown field"],
        ),
        (
            &clearing,
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            vec!["key `dashboard.listen`", "IP:PORT"],
        ),
    ];
    for (base, from, to, words) in cases {
        ensure!(base.contains(from), "example lacks {from:?}");
        let text = base.replacen(from, to, 1);
        let err = check(&dir, "typo.toml", &text)
            .err()
            .with_context(|| format!("{to:?} was accepted"))?;
        ensure!(
            err.exit_code() == 2,
            "{to:?}: exit code {}",
            err.exit_code()
        );
        let msg = err.message();
        ensure!(!msg.contains('\n'), "one line: {msg}");
        for w in words {
            ensure!(msg.contains(w), "{to:?}: message {msg:?} lacks {w:?}");
        }
        // The line number points at the edited line (or its section).
        let line: usize = msg
            .split(':')
            .nth(1)
            .and_then(|l| l.parse().ok())
            .context("a line number")?;
        let edited = text
            .lines()
            .position(|l| l.contains(to.lines().last().unwrap_or(to)))
            .map(|i| i + 1);
        ensure!(
            Some(line) == edited
                || text
                    .lines()
                    .nth(line - 1)
                    .is_some_and(|l| l.starts_with('[')),
            "{msg}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn strategy_week_every_household_saves() {
    let opts = controller::strategy_bench::StrategyBenchOptions {
        households: 20,
        days: 7,
        start_ms: 1_783_296_000_000, // Monday 2026-07-06
        seed: 42,
    };
    let r = controller::strategy_bench::run(&opts);
    let json = serde_json::to_value(&r).expect("JSON");
    assert_eq!(json["households"].as_array().map(Vec::len), Some(20));
    assert_eq!(r.intervals, 7 * 96);
    assert!(
        r.every_household_saves,
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    assert!(r.median_saving_micros > 0);
    for h in &r.households {
        assert_eq!(
            h.saving_micros,
            h.bill_utility_only_micros - h.bill_voltshare_micros
        );
    }
}
