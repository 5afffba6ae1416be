//! `voltshare clear` as a user runs it: the real binary, a JSON order book
//! in a file, JSON on stdout; a bad book exits with code 2 and a message
//! that names the order and the field.

use std::path::PathBuf;
use std::process::Command;

fn book_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vs-cli-clear-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn voltshare(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_voltshare"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("runs")
}

const BOOK: &str = r#"{
  "params": {"feed_in_tariff": 80000, "retail_tariff": 300000},
  "orders": [
    {"id": "s1", "household": "alice", "side": "sell", "quantity_wh": 1000, "limit_price": 100000},
    {"id": "b1", "household": "bob", "side": "buy", "quantity_wh": 600, "limit_price": 200000},
    {"id": "b2", "household": "carol", "side": "buy", "quantity_wh": 600, "limit_price": 50000}
  ]
}"#;

#[test]
fn clears_a_book_file_and_prints_json() {
    let file = book_file("book.json", BOOK);
    let out = voltshare(&["clear", "--orders", file.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["volume_wh"], 600, "{v}");
    let trades = v["trades"].as_array().expect("trades");
    assert_eq!(trades.len(), 1, "{v}");
    let t = &trades[0];
    assert_eq!(
        (
            &t["buyer"],
            &t["seller"],
            &t["buy_order"],
            &t["sell_order"],
            &t["quantity_wh"]
        ),
        (
            &serde_json::json!("bob"),
            &serde_json::json!("alice"),
            &serde_json::json!("b1"),
            &serde_json::json!("s1"),
            &serde_json::json!(600)
        )
    );
    assert!(v["clearing_price"].is_u64(), "{v}");
    assert!(t["price"].is_u64(), "{v}");

    // Pay-as-bid: the buyer pays its own limit.
    let out = voltshare(&[
        "clear",
        "--orders",
        file.to_str().expect("utf-8"),
        "--mechanism",
        "pay_as_bid",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["volume_wh"], 600, "{v}");
}

#[test]
fn errors_name_the_order_and_the_field() {
    let bad = BOOK.replace(
        r#""id": "b1", "household": "bob", "side": "buy", "quantity_wh": 600"#,
        r#""id": "b1", "household": "bob", "side": "buy", "quantity_wh": -5"#,
    );
    let file = book_file("bad.json", &bad);
    let out = voltshare(&["clear", "--orders", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("orders[1]") && err.contains("b1"), "{err}");
    assert!(err.contains("quantity_wh"), "{err}");

    let bad = BOOK.replace(r#""side": "sell""#, r#""side": "lend""#);
    let file = book_file("bad-side.json", &bad);
    let out = voltshare(&["clear", "--orders", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s1") && err.contains("side"), "{err}");

    let out = voltshare(&["clear", "--orders", "/nonexistent/book.json"]);
    assert_eq!(out.status.code(), Some(2));
    let out = voltshare(&[
        "clear",
        "--orders",
        file.to_str().expect("utf-8"),
        "--mechanism",
        "vickrey",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mechanism"));
}

#[test]
fn bench_clearing_prints_orders_mechanism_millis() {
    let out = voltshare(&[
        "bench",
        "clearing",
        "--orders",
        "20000",
        "--mechanism",
        "mcafee",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["orders"], 20000);
    assert_eq!(v["mechanism"], "mcafee");
    assert!(v["millis"].is_u64(), "{v}");
    // The best run is never slower than the first, and a random book of
    // 20 000 orders trades.
    assert!(v["micros_first"].as_u64() >= v["micros"].as_u64(), "{v}");
    assert!(v["trades"].as_u64().is_some_and(|t| t > 0), "{v}");
    assert!(v["millis_indexed"].is_u64(), "{v}");
    // On Linux the clearing thread's CPU time is reported too, and it never
    // exceeds the wall-clock time by more than the counter's granularity
    // (the kernel brings a running thread's total up to date at scheduler
    // ticks: a few ms).
    if cfg!(target_os = "linux") {
        let cpu = v["cpu_micros"].as_u64().expect("cpu_micros on Linux");
        assert!(cpu <= v["micros"].as_u64().unwrap_or(0) + 20_000, "{v}");
    }
}
