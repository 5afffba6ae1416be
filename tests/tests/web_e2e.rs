//! The dashboard against a running demo, from outside: headless Chromium
//! (Debian's, driven by playwright-core from `web/e2e/run.mjs`) and
//! schemathesis (PyPI) fuzzing the OpenAPI document.
//!
//! One demo (4 households, a 2-second interval) serves both tests. Missing
//! tools fail loudly: `scripts/setup.d/40-web.sh` installs them (the
//! project's test script runs it first). Screenshots land in
//! `target/artifacts/web/`.

use controller::demo::{DemoOptions, run_demo};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The two tests share one demo but not at the same time: the fuzzer, as
/// the operator, changes settings (e.g. switches public aggregates off)
/// that the browser test relies on.
static EXCLUSIVE: Mutex<()> = Mutex::new(());
use std::time::Duration;

const HOUSEHOLDS: u32 = 4;
const INTERVAL_SECS: u64 = 2;
const PASSWORD: &str = "household-password-1";

struct Demo {
    base: String,
    data_dir: PathBuf,
    /// A household whose bills are not empty.
    household: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Pulls `name=value` out of a response's Set-Cookie headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// Logs in through a one-time link and returns (cookie header, csrf token).
async fn operator_session(base: &str, data_dir: &Path) -> (String, String) {
    let link = controller::web_cli::login_link(
        &data_dir.join("web.db"),
        "operator",
        base,
        Duration::from_secs(600),
    )
    .await
    .expect("login link");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = client.get(&link).send().await.expect("link");
    assert_eq!(resp.status(), 303);
    let session = set_cookie(&resp, "vs_session").expect("session cookie");
    let csrf = set_cookie(&resp, "vs_csrf").expect("csrf cookie");
    (format!("vs_session={session}; vs_csrf={csrf}"), csrf)
}

fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let port = free_port();
        let data_dir =
            std::env::temp_dir().join(format!("voltshare-web-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let opts = DemoOptions {
            households: HOUSEHOLDS,
            interval_secs: INTERVAL_SECS,
            port,
            data_dir: data_dir.clone(),
            broker: None,
            // A safety net: the process ends with the tests anyway.
            run_for: Some(Duration::from_secs(900)),
            seed: 7,
            start_ms: controller::cli::parse_start("2026-07-04T09:00").expect("start"),
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let (_tx, rx) = tokio::sync::watch::channel(false);
            if let Err(e) = rt.block_on(run_demo(opts, rx)) {
                eprintln!("demo stopped: {e:#}");
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let household = rt.block_on(async {
            // Wait until settlements exist and some household has a bill.
            let deadline = 40 * INTERVAL_SECS;
            let mut cookie = None;
            for _ in 0..deadline * 4 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Ok(r) = reqwest::get(format!("{base}/api/settlements")).await else {
                    continue;
                };
                let Ok(list) = r.json::<serde_json::Value>().await else {
                    continue;
                };
                if list.as_array().is_none_or(|l| l.len() < 2) {
                    continue;
                }
                if cookie.is_none() {
                    cookie = Some(operator_session(&base, &data_dir).await.0);
                }
                let c = cookie.as_deref().unwrap_or_default();
                for i in 1..=HOUSEHOLDS {
                    let h = format!("h{i:02}");
                    let bills: serde_json::Value = reqwest::Client::new()
                        .get(format!("{base}/api/households/{h}/bills"))
                        .header("cookie", c)
                        .send()
                        .await
                        .expect("bills")
                        .json()
                        .await
                        .expect("bills json");
                    if bills["days"].as_array().is_some_and(|d| !d.is_empty()) {
                        return h;
                    }
                }
            }
            panic!("the demo produced no settled household bills in time");
        });
        rt.block_on(controller::web_cli::add_user(
            &data_dir.join("web.db"),
            &household,
            web::Role::Household,
            Some(&household),
            Some(PASSWORD),
        ))
        .expect("set the household's password");
        Demo {
            base,
            data_dir,
            household,
        }
    })
}

fn require(tool: &str, probe: &[&str]) {
    let ok = Command::new(tool)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{tool} is missing: run scripts/setup-test-tools (scripts/setup.d/40-web.sh installs it)"
    );
}

#[test]
fn browser_pages_live_updates_login_bill_and_screenshots() {
    require("node", &["--version"]);
    require("/usr/bin/chromium", &["--version"]);
    let e2e = root().join("web/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing in web/e2e: run scripts/setup-test-tools"
    );
    let _one_at_a_time = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let d = demo();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Visitors must see the aggregates, whatever a fuzzer set before.
    let (cookie, csrf) = rt.block_on(operator_session(&d.base, &d.data_dir));
    let reset = rt
        .block_on(
            reqwest::Client::new()
                .post(format!("{}/api/settings", d.base))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&serde_json::json!({"public_aggregates": true, "explorer_tx_url": null}))
                .send(),
        )
        .expect("settings");
    assert!(reset.status().is_success(), "{}", reset.status());
    // The demo's own parameters, whatever a fuzzer changed before (it
    // applies from the next open interval; gate leads are capped at 4
    // intervals, so that is soon).
    let reset = rt
        .block_on(
            reqwest::Client::new()
                .post(format!("{}/api/params", d.base))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&serde_json::json!({
                    "mechanism": "uniform", "price_rule": "midpoint", "feed_in_tariff": 80_000,
                    "retail_tariff": 320_000, "grid_fee": 0, "capacity_wh": null, "gate_lead_ms": 0
                }))
                .send(),
        )
        .expect("params");
    assert!(reset.status().is_success(), "{}", reset.status());
    // A new household's signed enrolment request, for the operator to file
    // and approve in the browser.
    let summary: serde_json::Value = rt
        .block_on(async {
            reqwest::get(format!("{}/api/summary", d.base))
                .await?
                .json()
                .await
        })
        .expect("summary");
    let grid = protocol::GridId::new(summary["grid"].as_str().expect("grid")).expect("grid id");
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let newcomer = format!("h{}", 50 + std::process::id() % 40);
    let request = clearing::enrol::make_request(
        &key,
        &clearing::enrol::EnrolmentRequest {
            grid,
            household: protocol::HouseholdId::new(newcomer.clone()).expect("id"),
            public_key: hex::encode(key.verifying_key().as_bytes()),
            meters: vec![protocol::MeterId::new(format!("{newcomer}-grid")).expect("id")],
            settlement_address: None,
            ts: protocol::UnixMs(0),
        },
    )
    .expect("request");
    let link = rt
        .block_on(controller::web_cli::login_link(
            &d.data_dir.join("web.db"),
            "operator",
            &d.base,
            Duration::from_secs(600),
        ))
        .expect("link");
    let artifacts = root().join("target/artifacts/web");
    let out = Command::new("node")
        .arg("run.mjs")
        .current_dir(&e2e)
        .env("BASE_URL", &d.base)
        .env("HOUSEHOLD", &d.household)
        .env("HOUSEHOLD_PASSWORD", PASSWORD)
        .env("OPERATOR_LINK", &link)
        .env("ENROL_REQUEST", &request)
        .env("ENROL_HOUSEHOLD", &newcomer)
        .env("ARTIFACTS", &artifacts)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    for shot in [
        "overview-public",
        "market",
        "settlements",
        "interval",
        "household",
        "devices",
        "admin",
        "admin-approved",
        "market-params",
    ] {
        for size in ["desktop", "375"] {
            let p = artifacts.join(format!("{shot}-{size}.png"));
            assert!(
                p.metadata().is_ok_and(|m| m.len() > 1000),
                "screenshot {}",
                p.display()
            );
        }
    }
}

#[test]
fn openapi_validates_and_schemathesis_finds_no_server_errors() {
    let python = if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    };
    let probe = Command::new(python)
        .args(["-c", "import schemathesis"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        probe,
        "schemathesis is missing: run scripts/setup-test-tools (pip install schemathesis)"
    );
    let _one_at_a_time = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let d = demo();
    let (cookie, csrf) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(operator_session(&d.base, &d.data_dir));
    // The document must load and validate as OpenAPI before any fuzzing.
    let out = Command::new(python)
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/api/openapi.json", d.base))
        .args(["--checks", "not_a_server_error"])
        .args(["--max-examples", "25"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args([
            "--exclude-path",
            "/api/logout",
            "--exclude-path",
            "/api/stream",
        ])
        .args(["-H", &format!("Cookie: {cookie}")])
        .args(["-H", &format!("X-CSRF-Token: {csrf}")])
        .args(["--no-color"])
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(" 500 ") && !stdout.contains("Server error"),
        "{stdout}"
    );
}
