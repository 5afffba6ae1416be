//! A dashboard over a synthetic read model, for working on the page without
//! a clearing engine: `cargo run -p web --example dashboard [addr]`, then open
//! `http://127.0.0.1:8080/`.
//!
//! The numbers are made up (a sine-shaped PV curve and fixed loads): they
//! exercise the page, they are not a simulation of anything.

use clearing::read::{IntervalRow, LiveRow, ReadFuture, ReadModel, SettlementRow};
use protocol::{Clock, HouseholdId, MeterId, SystemClock, UnixMs, Watts};
use std::sync::Arc;

const QUARTER: u64 = 900_000;
const HOUSEHOLDS: u64 = 8;

#[derive(Debug)]
struct Synthetic {
    clock: Arc<dyn Clock>,
}

impl Synthetic {
    fn now(&self) -> u64 {
        self.clock.now().0
    }
}

/// A repeatable pseudo-random number from a seed.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

impl ReadModel for Synthetic {
    fn intervals(&self, limit: u32) -> ReadFuture<'_, Vec<IntervalRow>> {
        let last = self.now() - self.now() % QUARTER - QUARTER;
        let rows = (0..u64::from(limit).min(200))
            .map(|i| {
                let start = last - i * QUARTER;
                let r = mix(start);
                let trades = r % 7;
                IntervalRow {
                    interval_start: start,
                    clearing_price: (trades > 0).then_some(80_000 + r % 120_000),
                    volume_wh: trades * (200 + r % 400),
                    trades,
                    orders: trades * 2 + r % 5,
                }
            })
            .collect();
        Box::pin(async move { Ok(rows) })
    }

    fn settlements(&self, limit: u32) -> ReadFuture<'_, Vec<SettlementRow>> {
        let last = self.now() - self.now() % QUARTER - 2 * QUARTER;
        let statuses = ["pending", "submitted", "confirmed", "final"];
        let rows = (0..u64::from(limit).min(100))
            .map(|i| {
                let start = last - i * QUARTER;
                SettlementRow {
                    interval_start: start,
                    status: statuses[usize::try_from(i.min(3)).unwrap_or(3)].to_owned(),
                    hash: format!(
                        "{:016x}{:016x}{:016x}{:016x}",
                        mix(start),
                        mix(start + 1),
                        mix(start + 2),
                        mix(start + 3)
                    ),
                    prev_hash: format!(
                        "{:016x}{:016x}{:016x}{:016x}",
                        mix(start - QUARTER),
                        mix(start - QUARTER + 1),
                        0,
                        0
                    ),
                    households: 2 + mix(start) % HOUSEHOLDS,
                    traded_micros: i64::try_from(mix(start) % 900_000).unwrap_or(0),
                    tx_hash: (i > 1)
                        .then(|| format!("0x{:016x}{:016x}", mix(start + 7), mix(start + 8))),
                }
            })
            .collect();
        Box::pin(async move { Ok(rows) })
    }

    fn live(&self) -> Vec<LiveRow> {
        let now = self.now();
        let day_ms = 86_400_000;
        let phase = (now % day_ms) as f64 / day_ms as f64;
        let sun = (std::f64::consts::PI * (phase * 2.0 - 0.5)).sin().max(0.0);
        (0..HOUSEHOLDS)
            .filter_map(|h| {
                let household = HouseholdId::new(format!("h{h:03}")).ok()?;
                let meter = MeterId::new(format!("h{h:03}-grid")).ok()?;
                let jitter = (mix(now / 500 + h) % 300) as f64;
                let pv =
                    (h % 3 != 0).then(|| (sun * 4000.0 * (1.0 + h as f64 / 10.0) + jitter) as i64);
                let load = 300 + (mix(h) % 1500) as i64 + jitter as i64;
                Some(LiveRow {
                    household,
                    meter,
                    ts: UnixMs(now - mix(now / 1000 + h) % 2000),
                    grid_power_w: Watts(load - pv.unwrap_or(0)),
                    pv_power_w: pv.map(Watts),
                })
            })
            .collect()
    }

    fn rejects(&self) -> Vec<(String, u64)> {
        vec![("bad_signature".to_owned(), 1), ("replay".to_owned(), 3)]
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,tower_http=debug")
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut state = web::AppState::new(
        Arc::new(Synthetic {
            clock: clock.clone(),
        }),
        "elmstreet",
        QUARTER,
    );
    state.clock = clock;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "dashboard with synthetic data");
    axum::serve(listener, web::app(state)).await
}
