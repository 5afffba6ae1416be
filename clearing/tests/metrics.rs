//! The engine's Prometheus endpoint (`metrics_addr`), scraped over a real
//! TCP connection while readings and a forged message flow through the real
//! broker (Mosquitto on 127.0.0.1:1883): ingest counters, rejects by reason,
//! intake and clearing duration histograms and the queue gauges are exposed
//! in the text format; other paths are 404.

mod common;

use common::*;
use protocol::{Domain, ManualClock, SignedEnvelope, UnixMs};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// The value of one sample line, by its exact name and labels.
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_exposes_ingest_rejects_and_durations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("metrics");
    let a = household("alice", 1);
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let mut cfg = config(&grid, dir.path(), &[&a]);
    cfg.metrics_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let engine = start(cfg, clock).await;
    let addr = engine.metrics_addr().expect("metrics served");
    let mut client = TestClient::connect(&grid, "metrics").await;

    for seq in 1..=3 {
        client
            .publish(
                a.reading_topic(&grid),
                a.sign_reading(&a.reading(&grid, seq, T0, 1000 + seq, 0)),
            )
            .await;
    }
    let mut forged =
        SignedEnvelope::sign_json(Domain::Reading, &a.key, &a.reading(&grid, 4, T0, 2000, 0))
            .expect("sign");
    forged.signature[0] ^= 1;
    client
        .publish(a.reading_topic(&grid), forged.encode())
        .await;
    client.acks(3, 10).await;
    let counters = engine.counters();
    eventually(10, "forgery counted", || {
        let c = counters.clone();
        async move { c.snapshot().rejected(clearing::RejectReason::BadSignature) == 1 }
    })
    .await;
    engine.clear_interval(i0()).await.expect("clears");

    let resp = get(addr, "/metrics").await;
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(
        sample(body, "voltshare_readings_accepted_total").as_deref(),
        Some("3")
    );
    assert_eq!(
        sample(body, "voltshare_rejects_total{reason=\"bad_signature\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(body, "voltshare_rejects_total{reason=\"replay\"}").as_deref(),
        Some("0")
    );
    let batches: u64 = sample(body, "voltshare_intake_batch_duration_seconds_count")
        .expect("batch histogram")
        .parse()
        .expect("integer");
    assert!(batches >= 1, "{body}");
    assert!(
        sample(
            body,
            "voltshare_intake_batch_duration_seconds_bucket{le=\"+Inf\"}"
        )
        .is_some()
    );
    // The catch-up at start-up and the explicit call both clear; at least
    // one of them cleared something fresh and was timed.
    let clearings: u64 = sample(body, "voltshare_clearing_duration_seconds_count")
        .expect("clearing histogram")
        .parse()
        .expect("integer");
    assert!(clearings >= 1, "{body}");
    assert!(sample(body, "voltshare_intake_queue_depth").is_some());
    assert!(sample(body, "voltshare_unsettled_intervals").is_some());
    assert!(body.contains("# TYPE voltshare_rejects_total counter"));

    assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    engine.shutdown().await.expect("shutdown");
}
