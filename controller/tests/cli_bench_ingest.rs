//! `voltshare bench ingest` end to end with the real binary: signed
//! readings through a real broker (a private Mosquitto, and the embedded
//! rumqttd) into the engine, and the JSON it prints. Small counts: this
//! checks the benchmark works and reports honestly, not the rate.

use std::process::Command;

fn bench_ingest(broker: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_voltshare"))
        .args([
            "bench",
            "ingest",
            "--readings",
            "3000",
            "--meters",
            "30",
            "--broker",
            broker,
        ])
        .output()
        .expect("run voltshare");
    assert!(
        out.status.success(),
        "bench ingest --broker {broker} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    serde_json::from_str(text.trim()).expect("one JSON object")
}

fn check(v: &serde_json::Value) {
    assert_eq!(v["readings"], 3000, "{v}");
    // Every reading published was verified and stored, once.
    assert_eq!(v["stored"], 3000, "{v}");
    assert_eq!(v["engine"]["duplicates"], 0, "{v}");
    for key in ["per_sec", "broker_qos1_per_sec", "millis", "payload_bytes"] {
        assert!(v[key].as_u64().is_some_and(|n| n > 0), "{key}: {v}");
    }
    // The ratio is the two rates' quotient, in per mille.
    let per_sec = v["per_sec"].as_u64().unwrap_or(0);
    let raw = v["broker_qos1_per_sec"].as_u64().unwrap_or(1).max(1);
    assert_eq!(
        v["ratio_permille"].as_u64(),
        Some(per_sec * 1000 / raw),
        "{v}"
    );
    // CPU per message of the benchmark process in each run: the engine
    // verifies, decodes and stores every reading, the raw subscriber only
    // counts, so the engine run must cost more per message.
    let us = |run: &str| {
        v["cpu"][run]["process_us_per_msg"]
            .as_u64()
            .unwrap_or_else(|| panic!("cpu.{run}.process_us_per_msg: {v}"))
    };
    assert!(us("engine") > us("broker_qos1"), "{v}");
}

#[test]
fn through_a_private_mosquitto() {
    let v = bench_ingest("mosquitto");
    check(&v);
    // The private broker is a process of its own: its CPU is reported.
    for run in ["broker_qos1", "engine"] {
        assert!(v["cpu"][run]["broker_us_per_msg"].is_u64(), "{v}");
        assert!(v["cpu"][run]["busy_core_percent"].is_u64(), "{v}");
    }
    assert!(v["cpu"]["cores"].as_u64().is_some_and(|c| c >= 1), "{v}");
}

#[test]
fn through_the_embedded_broker() {
    let v = bench_ingest("embedded");
    check(&v);
    // The embedded broker runs inside the process: no separate figure.
    assert!(v["cpu"]["engine"]["broker_us_per_msg"].is_null(), "{v}");
}
