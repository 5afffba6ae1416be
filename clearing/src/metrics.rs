//! Counters of what the intake did: rejects by reason (persisted, so they
//! survive restarts) and plain throughput counts (in memory only); timing
//! histograms of intake batches and clearings; queue depths. [`render`]
//! writes them in the Prometheus text exposition format (version 0.0.4) and
//! [`serve`] answers `GET /metrics` with it.
//!
//! Rates are left to Prometheus (`rate(voltshare_readings_accepted_total[1m])`):
//! the engine exports monotonic counters, which survive scrape gaps.
//! Durations are kept as integer microseconds and printed as decimal seconds
//! by integer arithmetic: no floating point in the engine, even here.
//!
//! The HTTP side is written by hand on tokio (one GET, one response, close):
//! an HTTP framework would be a large dependency for one fixed page, and the
//! dashboard's router (the `web` crate) can mount [`render`] itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a message was refused. The string forms ([`RejectReason::as_str`])
/// are part of the protocol: they appear in acks and in the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// Larger than the envelope size cap.
    Oversized,
    /// Not a parseable envelope, or a payload that is not a valid message.
    Malformed,
    /// Signed under a key id that is not enrolled.
    UnknownKey,
    /// Signed with a revoked key.
    RevokedKey,
    /// The signature does not verify under the topic's domain.
    BadSignature,
    /// The message names another grid.
    WrongGrid,
    /// The message's meter or household differs from the topic's.
    TopicMismatch,
    /// The message's household is not the signing key's, or the meter is not
    /// that household's.
    WrongHousehold,
    /// The meter is not enrolled.
    UnknownMeter,
    /// A reading with this seq is stored with different bytes.
    SeqConflict,
    /// Counters lower than an earlier reading's (or higher than a later one's).
    CounterRewind,
    /// The reading's timestamp is too far from the engine's clock.
    TimestampOutOfWindow,
    /// An order nonce not above the household's highest.
    Replay,
    /// The order's interval is past gate closure.
    GateClosed,
    /// The order's interval is not aligned, or too far ahead.
    BadInterval,
    /// Zero without `replaces`, or above the maximum.
    BadQuantity,
    /// Too many orders for the household in that interval.
    TooManyOrders,
    /// `replaces` names no earlier order of the household in that interval.
    BadReplaces,
    /// A number does not fit the store (above 2⁶³).
    OutOfRange,
}

impl RejectReason {
    /// The reason as it appears in acks and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::RevokedKey => "revoked_key",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::WrongGrid => "wrong_grid",
            RejectReason::TopicMismatch => "topic_mismatch",
            RejectReason::WrongHousehold => "wrong_household",
            RejectReason::UnknownMeter => "unknown_meter",
            RejectReason::SeqConflict => "seq_conflict",
            RejectReason::CounterRewind => "counter_rewind",
            RejectReason::TimestampOutOfWindow => "timestamp_out_of_window",
            RejectReason::Replay => "replay",
            RejectReason::GateClosed => "gate_closed",
            RejectReason::BadInterval => "bad_interval",
            RejectReason::BadQuantity => "bad_quantity",
            RejectReason::TooManyOrders => "too_many_orders",
            RejectReason::BadReplaces => "bad_replaces",
            RejectReason::OutOfRange => "out_of_range",
        }
    }

    /// Every reason, for documentation and tests.
    pub const ALL: [RejectReason; 19] = [
        RejectReason::Oversized,
        RejectReason::Malformed,
        RejectReason::UnknownKey,
        RejectReason::RevokedKey,
        RejectReason::BadSignature,
        RejectReason::WrongGrid,
        RejectReason::TopicMismatch,
        RejectReason::WrongHousehold,
        RejectReason::UnknownMeter,
        RejectReason::SeqConflict,
        RejectReason::CounterRewind,
        RejectReason::TimestampOutOfWindow,
        RejectReason::Replay,
        RejectReason::GateClosed,
        RejectReason::BadInterval,
        RejectReason::BadQuantity,
        RejectReason::TooManyOrders,
        RejectReason::BadReplaces,
        RejectReason::OutOfRange,
    ];
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rejects of authenticated senders: (household, meter, reason) → count.
/// Orders carry no meter and count under an empty one.
pub type SenderRejects = BTreeMap<(String, String, String), u64>;

/// Counts the rejections among a batch's acknowledgements: each is an
/// authenticated sender's message refused for a reason (readings name their
/// meter, orders none).
pub fn sender_rejects_of<'a>(
    acks: impl IntoIterator<Item = (&'a protocol::HouseholdId, &'a [protocol::AckItem])>,
) -> SenderRejects {
    let mut map = SenderRejects::new();
    for (household, items) in acks {
        for item in items {
            if let protocol::AckOutcome::Rejected(reason) = &item.outcome {
                let meter = item
                    .meter
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let n = map
                    .entry((household.to_string(), meter, reason.clone()))
                    .or_insert(0);
                *n = n.saturating_add(1);
            }
        }
    }
    map
}

/// The engine's counters. Shared (`Arc`) between the intake, the scheduler
/// and the read model.
#[derive(Debug, Default)]
pub struct Counters {
    rejects: Mutex<BTreeMap<String, u64>>,
    /// Rejects of authenticated senders by (household, meter, reason);
    /// orders carry no meter and count under an empty meter. Persisted too.
    sender_rejects: Mutex<SenderRejects>,
    /// Readings and orders taken from the broker connection (before any
    /// check): the ingest rate as offered.
    pub received: AtomicU64,
    pub readings_accepted: AtomicU64,
    pub orders_accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub acks_sent: AtomicU64,
    pub acks_dropped: AtomicU64,
    pub batches: AtomicU64,
    pub intervals_cleared: AtomicU64,
    pub intervals_settled: AtomicU64,
    /// Messages waiting in the channel from the broker connection to the
    /// intake, sampled whenever a batch is taken.
    pub inbound_queue: AtomicU64,
    /// Messages in the last intake batch.
    pub last_batch: AtomicU64,
    /// Intervals cleared but not yet settled, sampled by the settler.
    pub unsettled_intervals: AtomicU64,
    /// Wall time of storing one intake batch: validation against history,
    /// the commit and the acks (verification runs before, overlapped).
    pub batch_duration: Histogram,
    /// Wall time of clearing one interval (load, auction, sign, store).
    pub clearing_duration: Histogram,
}

/// Bucket bounds of the duration histograms, in microseconds.
const BOUNDS_US: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    5_000_000,
];

/// A Prometheus histogram over durations with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BOUNDS_US.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(b.load(Ordering::Relaxed));
            let le = BOUNDS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| seconds(*us));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum {}",
            seconds(self.sum_us.load(Ordering::Relaxed))
        );
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

/// Microseconds as decimal seconds, exactly (`2500` → `0.0025`).
fn seconds(us: u64) -> String {
    let frac = format!("{:06}", us % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", us / 1_000_000)
    } else {
        format!("{}.{frac}", us / 1_000_000)
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CountersSnapshot {
    pub rejects: BTreeMap<String, u64>,
    pub readings_accepted: u64,
    pub orders_accepted: u64,
    pub duplicates: u64,
    pub acks_sent: u64,
    pub acks_dropped: u64,
    pub batches: u64,
    pub intervals_cleared: u64,
    pub intervals_settled: u64,
}

impl CountersSnapshot {
    /// Rejects counted for a reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejects.get(reason.as_str()).copied().unwrap_or(0)
    }
}

impl Counters {
    /// Adds reject counts (after they were persisted).
    pub fn add_rejects(&self, counts: &BTreeMap<RejectReason, u64>) {
        let mut map = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
        for (r, n) in counts {
            *map.entry(r.as_str().to_owned()).or_insert(0) += n;
        }
    }

    /// Replaces the reject counts with persisted ones (at start-up).
    pub fn load_rejects(&self, rows: Vec<(String, u64)>) {
        let mut map = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
        *map = rows.into_iter().collect();
    }

    /// Adds rejects of authenticated senders (after they were persisted).
    pub fn add_sender_rejects(&self, counts: &SenderRejects) {
        let mut map = self
            .sender_rejects
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (key, n) in counts {
            let total = map.entry(key.clone()).or_insert(0);
            *total = total.saturating_add(*n);
        }
    }

    /// Replaces the rejects of authenticated senders with persisted ones
    /// (at start-up).
    pub fn load_sender_rejects(&self, counts: SenderRejects) {
        let mut map = self
            .sender_rejects
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *map = counts;
    }

    /// Rejects of authenticated senders as (household, meter, reason,
    /// count), sorted; the meter is empty for orders.
    pub fn sender_rejects(&self) -> Vec<(String, String, String, u64)> {
        let map = self
            .sender_rejects
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|((h, m, r), n)| (h.clone(), m.clone(), r.clone(), *n))
            .collect()
    }

    /// Reject counts, sorted by reason.
    pub fn rejects(&self) -> Vec<(String, u64)> {
        let map = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// All counters at once.
    pub fn snapshot(&self) -> CountersSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            rejects: self.rejects().into_iter().collect(),
            readings_accepted: l(&self.readings_accepted),
            orders_accepted: l(&self.orders_accepted),
            duplicates: l(&self.duplicates),
            acks_sent: l(&self.acks_sent),
            acks_dropped: l(&self.acks_dropped),
            batches: l(&self.batches),
            intervals_cleared: l(&self.intervals_cleared),
            intervals_settled: l(&self.intervals_settled),
        }
    }

    /// Records the intake's queue depth.
    pub fn set_queue_depth(&self, n: usize) {
        self.inbound_queue
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn bump(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// The counters in the Prometheus text exposition format. Every reject
/// reason is listed, zero or not, so that dashboards and alerts see the
/// series from the first scrape.
pub fn render(c: &Counters) -> String {
    let mut out = String::with_capacity(4096);
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {v}");
    };
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {v}");
    };
    counter(
        &mut out,
        "voltshare_messages_received_total",
        "Readings and orders received from the broker, before any check.",
        l(&c.received),
    );
    counter(
        &mut out,
        "voltshare_readings_accepted_total",
        "Signed readings verified and stored.",
        l(&c.readings_accepted),
    );
    counter(
        &mut out,
        "voltshare_orders_accepted_total",
        "Signed orders verified and stored.",
        l(&c.orders_accepted),
    );
    counter(
        &mut out,
        "voltshare_duplicates_total",
        "Redelivered messages acknowledged again but not stored twice.",
        l(&c.duplicates),
    );
    counter(
        &mut out,
        "voltshare_intake_batches_total",
        "Intake batches committed.",
        l(&c.batches),
    );
    counter(
        &mut out,
        "voltshare_acks_sent_total",
        "Signed acknowledgements queued for publishing.",
        l(&c.acks_sent),
    );
    counter(
        &mut out,
        "voltshare_acks_dropped_total",
        "Acknowledgements dropped because the client queue was full.",
        l(&c.acks_dropped),
    );
    counter(
        &mut out,
        "voltshare_intervals_cleared_total",
        "Intervals cleared by this process.",
        l(&c.intervals_cleared),
    );
    counter(
        &mut out,
        "voltshare_intervals_settled_total",
        "Intervals settled by this process.",
        l(&c.intervals_settled),
    );
    let _ = writeln!(
        out,
        "# HELP voltshare_rejects_total Messages refused, by reason (persisted across restarts)."
    );
    let _ = writeln!(out, "# TYPE voltshare_rejects_total counter");
    let rejects: BTreeMap<String, u64> = c.rejects().into_iter().collect();
    for r in RejectReason::ALL {
        let n = rejects.get(r.as_str()).copied().unwrap_or(0);
        let _ = writeln!(out, "voltshare_rejects_total{{reason=\"{r}\"}} {n}");
    }
    gauge(
        &mut out,
        "voltshare_intake_queue_depth",
        "Messages waiting between the broker connection and the intake.",
        l(&c.inbound_queue),
    );
    gauge(
        &mut out,
        "voltshare_intake_last_batch_size",
        "Messages in the last intake batch.",
        l(&c.last_batch),
    );
    gauge(
        &mut out,
        "voltshare_unsettled_intervals",
        "Cleared intervals waiting for settlement.",
        l(&c.unsettled_intervals),
    );
    c.batch_duration.render(
        &mut out,
        "voltshare_intake_batch_duration_seconds",
        "Time to validate, store and acknowledge one verified intake batch.",
    );
    c.clearing_duration.render(
        &mut out,
        "voltshare_clearing_duration_seconds",
        "Time to clear one interval: load the book, run the auction, sign and store.",
    );
    out
}

/// Largest request head read before answering.
const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` until `shutdown` changes. Anything else is a 404
/// (or 405 for another method); each connection gets one response and is
/// closed, which is all a Prometheus scraper needs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    counters: std::sync::Arc<Counters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            _ = shutdown.changed() => break,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let counters = counters.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &counters)).await;
                });
            }
            Err(error) => {
                tracing::warn!(%error, "metrics listener failed to accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: tokio::net::TcpStream, counters: &Counters) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", render(counters)),
        (_, b"/metrics") => ("405 Method Not Allowed", String::new()),
        _ => ("404 Not Found", String::new()),
    };
    respond(&mut stream, status, &body).await?;
    stream.shutdown().await
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(500), "0.0005");
        assert_eq!(seconds(2_500), "0.0025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(5_250_000), "5.25");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum 10.0034\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn every_reason_is_exposed() {
        let c = Counters::default();
        c.add_rejects(&BTreeMap::from([(RejectReason::Replay, 2)]));
        let text = render(&c);
        assert!(text.contains("voltshare_rejects_total{reason=\"replay\"} 2\n"));
        assert!(text.contains("voltshare_rejects_total{reason=\"revoked_key\"} 0\n"));
        assert!(text.contains("# TYPE voltshare_intake_batch_duration_seconds histogram"));
    }
}
