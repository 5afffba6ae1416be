//! A stream of crossing orders for the fault tests: at the start of every
//! interval of the given clock, one or two orders per household for the
//! interval `ahead` intervals later, through a [`Sender`] (so each is
//! republished until the engine acknowledges it). Even households sell
//! low and odd ones buy high, so every book crosses.

use crate::sender::{AckKey, Sender, TestHousehold, order, orders_topic, signed};
use crate::util::Rng;
use protocol::{Clock, Domain, GridId, IntervalId, Order, Side};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Orders placed, by (household, nonce), with their wire bytes.
pub type SentOrders = BTreeMap<(String, u64), (Order, Vec<u8>)>;

/// What the feed places.
#[derive(Debug, Clone)]
pub struct FeedPlan {
    pub interval_ms: u64,
    /// Orders target the interval this many intervals after the current one.
    pub ahead: u64,
    /// Orders per household and interval: `1..=max_per_household`.
    pub max_per_household: u64,
    /// Only the first this many households trade.
    pub traders: usize,
    pub seed: u64,
}

/// The running feed.
#[derive(Debug)]
pub struct OrderFeed {
    placing: Arc<AtomicBool>,
    sent: Arc<Mutex<SentOrders>>,
    task: JoinHandle<()>,
}

impl OrderFeed {
    pub fn start(
        sender: Arc<Sender>,
        grid: &GridId,
        homes: &[TestHousehold],
        clock: Arc<dyn Clock>,
        plan: FeedPlan,
    ) -> OrderFeed {
        let placing = Arc::new(AtomicBool::new(true));
        let sent: Arc<Mutex<SentOrders>> = Arc::default();
        let (p, s, grid, homes) = (placing.clone(), sent.clone(), grid.clone(), homes.to_vec());
        let task = tokio::spawn(async move {
            let mut rng = Rng::new(plan.seed);
            let mut nonce = vec![0u64; homes.len()];
            let mut last = None;
            let len = plan.interval_ms;
            while p.load(Ordering::SeqCst) {
                let now = clock.now();
                let current = IntervalId::containing(now, len);
                if last != Some(current) {
                    last = Some(current);
                    let target = IntervalId(current.0 + plan.ahead * len);
                    for (i, h) in homes.iter().enumerate().take(plan.traders) {
                        for _ in 0..rng.range(1, plan.max_per_household.max(1)) {
                            nonce[i] += 1;
                            let (side, price) = if i % 2 == 0 {
                                (Side::Sell, rng.range(90, 160))
                            } else {
                                (Side::Buy, rng.range(200, 310))
                            };
                            let o = order(
                                &grid,
                                h,
                                target,
                                side,
                                rng.range(20, 800),
                                price * 1000,
                                nonce[i],
                                now,
                            );
                            let bytes = signed(Domain::Order, &h.key, &o);
                            s.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert((h.id.to_string(), o.nonce), (o.clone(), bytes.clone()));
                            sender
                                .send_tracked(
                                    AckKey::order(&h.id, o.nonce),
                                    orders_topic(&grid, &h.id),
                                    bytes,
                                )
                                .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        OrderFeed {
            placing,
            sent,
            task,
        }
    }

    /// Stops placing; returns every order placed.
    pub async fn stop(self) -> SentOrders {
        self.placing.store(false, Ordering::SeqCst);
        self.task.await.expect("the order feed task");
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The latest interval any order targets.
pub fn last_target(sent: &SentOrders) -> IntervalId {
    sent.values()
        .map(|(o, _)| o.interval)
        .max()
        .expect("orders were placed")
}
