//! `voltshare scan`, the real binary against the device simulator over real
//! TCP: it lists the unit ids that answer with their SunSpec models (and the
//! shipped map a non-SunSpec meter answers like), and the config snippet it
//! prints, pasted into a household gateway config, passes
//! `voltshare config check`.

use meter_agent::SimHousehold;
use meter_agent::regmap::RegisterMap;
use meter_agent::simulator::{SimUnit, spawn_devices};
use protocol::{Clock, ManualClock, UnixMs};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

const ENGINE_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn scratch() -> PathBuf {
    let n: u64 = rand::random();
    let dir = std::env::temp_dir().join(format!("vs-cli-scan-{n:016x}"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

async fn voltshare(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_voltshare"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("runs")
}

/// A household gateway config around `snippet` (the meter agent section).
fn gateway_config(dir: &std::path::Path, snippet: &str) -> String {
    format!(
        r#"grid = "lindenweg"
data_dir = "{data}"

[broker]
host = "127.0.0.1"
port = 1883

[household]
id = "h07"
key_file = "{data}/household.key"
engine_public_key = "{ENGINE_PK}"

{snippet}
[controller]
enabled = true
min_sell_price = 100000
max_buy_price = 300000
"#,
        data = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_lists_units_and_models_and_its_snippet_passes_config_check() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(UnixMs(1_624_269_600_000)));
    let sim = spawn_devices(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![
            SimUnit::sunspec(1, 40000, &[1, 103, 120, 121, 123]),
            // The meter's map starts at base 0.
            SimUnit::sunspec(2, 0, &[1, 203]),
            SimUnit::map(7, RegisterMap::shipped("sdm630").expect("shipped")),
        ],
        SimHousehold::from_seed(3),
        clock,
    )
    .await
    .expect("simulator");
    let port = sim.addr.port().to_string();

    // Every unit id, 1 to 247.
    let out = voltshare(&["scan", "--host", "127.0.0.1", "--port", &port]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "scan failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let unit = |u: u8| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("unit {u}:")))
            .copied()
            .unwrap_or_else(|| panic!("unit {u} not listed:\n{stdout}"))
    };
    let u1 = unit(1);
    assert!(
        u1.contains("SunSpec at 40000 models [1, 103, 120, 121, 123]"),
        "{u1}"
    );
    assert!(
        u1.contains("Voltshare") && u1.contains("serial VS-U1"),
        "{u1}"
    );
    let u2 = unit(2);
    assert!(u2.contains("SunSpec at 0 models [1, 203]"), "{u2}");
    let u7 = unit(7);
    assert!(u7.contains("answers like"), "{u7}");
    // Exactly the three devices, nobody else.
    let listed = lines.iter().filter(|l| l.starts_with("unit ")).count();
    assert_eq!(listed, 3, "{stdout}");

    // The snippet: everything after the marker line.
    let at = stdout
        .find("# config snippet")
        .unwrap_or_else(|| panic!("no snippet:\n{stdout}"));
    let snippet = &stdout[at..];
    assert!(snippet.contains("[meter_agent]"), "{snippet}");
    assert!(
        snippet.contains(&format!("modbus = \"127.0.0.1:{port}\"")),
        "{snippet}"
    );
    assert!(snippet.contains("meter_unit = 2"), "{snippet}");
    assert!(snippet.contains("inverter_unit = 1"), "{snippet}");
    assert!(snippet.contains("# Unit 7:"), "{snippet}");

    let dir = scratch();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, gateway_config(&dir, snippet)).expect("write");
    let check = voltshare(&["config", "check", file.to_str().expect("utf-8")]).await;
    assert!(
        check.status.success(),
        "config check refused the scan's snippet:\n{}\n{}\n--- config ---\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
        gateway_config(&dir, snippet)
    );
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(said.contains("meter_agent"), "{said}");

    // One unit only, and a unit nobody answers to.
    let out = voltshare(&[
        "scan",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--unit",
        "2",
    ])
    .await;
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        s.lines().filter(|l| l.starts_with("unit ")).count(),
        1,
        "{s}"
    );
    assert!(s.contains("inverter_unit = 0"), "{s}");
    let out = voltshare(&[
        "scan",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--unit",
        "9",
    ])
    .await;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no device answered"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Neither a host nor a serial port: a usage error.
    let out = voltshare(&["scan", "--port", &port]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--host"));
    let _ = std::fs::remove_dir_all(&dir);
}
