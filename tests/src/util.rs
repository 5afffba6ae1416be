//! Small shared pieces: keys, a seeded PRNG, directories, the long switch.

use ed25519_dalek::SigningKey;
use std::path::PathBuf;
use std::time::Duration;

/// Whether the long variants run (`VOLTSHARE_LONG=1`).
pub fn long() -> bool {
    std::env::var("VOLTSHARE_LONG").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `short` in the default run, `long` with `VOLTSHARE_LONG=1`.
pub fn pick<T>(short: T, long_value: T) -> T {
    if long() { long_value } else { short }
}

/// A deterministic key from a tag (tests only).
pub fn key(tag: &str) -> SigningKey {
    let digest = protocol::hash_json(&tag);
    SigningKey::from_bytes(&digest.0)
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("voltshare-fault-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating a temp dir");
    d
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A grid id unique to this process and tag, so that runs sharing the
/// system Mosquitto never see each other's retained messages.
pub fn unique_grid(tag: &str) -> protocol::GridId {
    use protocol::Clock;
    let now = protocol::SystemClock.now().0;
    protocol::GridId::new(format!("fault-{tag}-{}-{now}", std::process::id())).expect("grid id")
}

/// Fails loudly when the system Mosquitto on 127.0.0.1:1883 is not running.
pub fn require_system_mosquitto() {
    let ok = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 1883)),
        Duration::from_secs(2),
    )
    .is_ok();
    assert!(
        ok,
        "this test needs Mosquitto on 127.0.0.1:1883 (scripts/setup.d/10-mosquitto.sh starts it)"
    );
}

/// SplitMix64: a tiny seeded generator, the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// An index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let watch = protocol::Stopwatch::start();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            watch.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
