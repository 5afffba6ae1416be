//! Shared parts of the chain tests: a real Anvil (the npm-installed binary;
//! a test fails loudly when it is missing, it never skips), the contracts
//! deployed from the committed artifact, and an engine on the real Mosquitto
//! (127.0.0.1:1883) with a manual clock that settles through the `evm`
//! backend. Households publish signed orders and readings over MQTT exactly
//! as gateways do.

#![allow(dead_code)]

use clearing::evm::alloy::node_bindings::{Anvil, AnvilInstance};
use clearing::evm::alloy::primitives::Address;
use clearing::evm::alloy::signers::local::PrivateKeySigner;
use clearing::evm::chain::Chain;
use clearing::evm::{
    ANVIL_KEYS, Deployment, EvmSettings, deploy, fund_test_accounts, key_from_hex,
};
use clearing::{EngineConfig, EngineHandle, Enrolment, start_engine};
use ed25519_dalek::SigningKey;
use protocol::{
    AuctionParams, DeviceStatus, Domain, GridId, HouseholdId, IntervalId, ManualClock, MeterId,
    MicroPerKwh, Order, Reading, Side, SignedEnvelope, Topic, UnixMs, WattHours, Watts,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// 15 minutes.
pub const LEN: u64 = 900_000;
/// First interval of the tests (aligned).
pub const I1: u64 = 1_750_000_000_000 - 1_750_000_000_000 % LEN + LEN;
/// What each household deposits before trading.
pub const DEPOSIT: u64 = 50_000_000;

/// Starts Anvil from the npm package; panics (never skips) when missing.
pub fn anvil(extra: &[&str]) -> AnvilInstance {
    let path = clearing::evm::anvil_path().expect(
        "Anvil is missing: run scripts/setup.d/20-contracts.sh (npm ci in deploy/contracts)",
    );
    Anvil::at(path).args(extra.iter().copied()).spawn()
}

pub fn chain(anvil: &AnvilInstance) -> Chain {
    Chain::http(&anvil.endpoint(), Duration::from_secs(5)).expect("rpc url")
}

/// Anvil's dev key `i` (0: admin and pauser, 1: settler).
pub fn dev_key(i: usize) -> PrivateKeySigner {
    key_from_hex(ANVIL_KEYS[i]).expect("dev key")
}

/// Deploys token and settlement contract: admin/pauser = key 0, settler = key 1.
pub async fn deploy_all(chain: &Chain) -> Deployment {
    let admin = dev_key(0);
    deploy(chain, &admin, None, dev_key(1).address(), admin.address())
        .await
        .expect("deploy")
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n: u32 = rand::random();
        let p = std::env::temp_dir().join(format!(
            "voltshare-{tag}-{}-{n:08x}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A household with one meter, a deterministic ed25519 key and an on-chain
/// account.
#[derive(Debug, Clone)]
pub struct Home {
    pub id: HouseholdId,
    pub meter: MeterId,
    pub key: SigningKey,
    pub account: Address,
}

pub fn home(name: &str, seed: u8) -> Home {
    Home {
        id: HouseholdId::new(name).expect("id"),
        meter: MeterId::new(format!("{name}-grid")).expect("id"),
        key: SigningKey::from_bytes(&[seed; 32]),
        account: Address::repeat_byte(seed),
    }
}

impl Home {
    pub fn enrolment(&self) -> Enrolment {
        let mut e = Enrolment::new(
            self.id.clone(),
            &self.key.verifying_key(),
            vec![self.meter.clone()],
        );
        e.settlement_address = Some(self.account.to_string());
        e
    }

    pub fn reading(&self, grid: &GridId, seq: u64, ts: u64, import: u64, export: u64) -> Vec<u8> {
        let r = Reading {
            grid: grid.clone(),
            household: self.id.clone(),
            meter: self.meter.clone(),
            seq,
            ts: UnixMs(ts),
            import_wh: WattHours(import),
            export_wh: WattHours(export),
            pv_wh: None,
            grid_power_w: Watts(0),
            pv_power_w: None,
            status: DeviceStatus::Ok,
        };
        SignedEnvelope::sign_json(Domain::Reading, &self.key, &r)
            .expect("sign")
            .encode()
    }

    // Every field of an order, spelled out at the call site on purpose.
    #[allow(clippy::too_many_arguments)]
    pub fn order(
        &self,
        grid: &GridId,
        interval: IntervalId,
        side: Side,
        wh: u64,
        price: u64,
        nonce: u64,
        ts: u64,
    ) -> Vec<u8> {
        let o = Order {
            grid: grid.clone(),
            household: self.id.clone(),
            interval,
            side,
            quantity_wh: WattHours(wh),
            limit_price: MicroPerKwh(price),
            nonce,
            ts: UnixMs(ts),
            replaces: None,
        };
        SignedEnvelope::sign_json(Domain::Order, &self.key, &o)
            .expect("sign")
            .encode()
    }
}

pub fn engine_key() -> SigningKey {
    SigningKey::from_bytes(&[201; 32])
}

pub fn unique_grid(tag: &str) -> GridId {
    let n: u32 = rand::random();
    GridId::new(format!("c-{tag}-{n:08x}")).expect("grid id")
}

/// The utility's on-chain account in the tests.
pub fn utility() -> Address {
    Address::repeat_byte(0xee)
}

/// An engine config settling through the evm backend on `rpc`.
pub fn config(
    grid: &GridId,
    dir: &Path,
    homes: &[Home],
    d: &Deployment,
    rpc: &str,
) -> EngineConfig {
    let key_file = dir.join("settler.key");
    std::fs::write(&key_file, ANVIL_KEYS[1]).expect("key file");
    let mut cfg = EngineConfig::new(grid.clone(), dir.join("engine.db"));
    cfg.client_id = format!("engine-{grid}");
    cfg.households = homes.iter().map(Home::enrolment).collect();
    cfg.params = AuctionParams::default();
    cfg.settle_grace_ms = 1_000;
    cfg.settle_max_wait_ms = 600_000;
    let mut evm = EvmSettings::new(rpc, d.chain_id, d.contract, key_file, utility());
    evm.confirmations = 2;
    evm.rpc_timeout_ms = 2_000;
    cfg.evm = Some(evm);
    cfg
}

pub async fn start(cfg: EngineConfig, clock: Arc<ManualClock>) -> EngineHandle {
    start_engine(cfg, engine_key(), clock)
        .await
        .expect("engine starts")
}

pub async fn fund(chain: &Chain, d: &Deployment, homes: &[Home]) {
    let accounts: Vec<Address> = homes.iter().map(|h| h.account).collect();
    fund_test_accounts(chain, &dev_key(0), d, &accounts, DEPOSIT)
        .await
        .expect("deposits");
}

/// An MQTT client on the real Mosquitto that publishes for the households
/// and counts acks.
pub struct Gateway {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    pub async fn connect(grid: &GridId) -> Gateway {
        let mut opts = MqttOptions::new(format!("gw-{grid}"), "127.0.0.1", 1883);
        opts.set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut el) = AsyncClient::new(opts, 10_000);
        let (tx, acks) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let filter = Topic::filter(grid, "acks");
        let c = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.try_subscribe(filter.clone(), QoS::AtLeastOnce)
                            .expect("subscribe");
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let env = SignedEnvelope::decode(&p.payload).expect("ack envelope");
                        let ack: protocol::Ack =
                            protocol::decode_payload(&env.payload).expect("ack");
                        for item in ack.items {
                            assert_eq!(item.outcome, protocol::AckOutcome::Accepted, "{item:?}");
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("gateway subscribed");
        Gateway { client, acks, task }
    }

    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// Waits for `n` accepted acks.
    pub async fn acked(&mut self, n: usize) {
        for i in 0..n {
            tokio::time::timeout(Duration::from_secs(15), self.acks.recv())
                .await
                .unwrap_or_else(|_| panic!("only {i} of {n} acks"))
                .expect("gateway alive");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two sellers and two buyers.
pub fn homes() -> Vec<Home> {
    vec![
        home("s1", 11),
        home("s2", 12),
        home("b1", 21),
        home("b2", 22),
    ]
}

/// Drives the market: interval `k` (0-based from [`I1`]) gets orders from
/// every household, and the boundary readings at its start. Sellers export
/// a little less than they sold in odd intervals (a shortfall the utility
/// covers); buyers import a little more than they bought.
pub struct Market {
    pub grid: GridId,
    pub homes: Vec<Home>,
    pub seq: u64,
}

impl Market {
    pub fn interval(k: u64) -> IntervalId {
        IntervalId(I1 + k * LEN)
    }

    /// Publishes interval `k`'s orders (clock must be before its gate).
    pub async fn orders(&self, gw: &mut Gateway, k: u64, now: u64) {
        let i = Market::interval(k);
        for (n, h) in self.homes.iter().enumerate() {
            let (side, price) = if h.id.as_str().starts_with('s') {
                (Side::Sell, 100_000 + 1_000 * n as u64)
            } else {
                (Side::Buy, 300_000 - 1_000 * n as u64)
            };
            let wh = 1_000 + 100 * ((k + n as u64) % 5);
            let topic = Topic::Orders {
                grid: self.grid.clone(),
                household: h.id.clone(),
            }
            .to_string();
            gw.publish(topic, h.order(&self.grid, i, side, wh, price, k + 1, now))
                .await;
        }
        gw.acked(self.homes.len()).await;
    }

    /// Publishes the readings at the start of interval `k` (clock at it).
    pub async fn readings(&mut self, gw: &mut Gateway, k: u64) {
        self.seq += 1;
        let ts = Market::interval(k).0;
        for (n, h) in self.homes.iter().enumerate() {
            // Cumulative counters: about 1 kWh per interval, varying.
            let total: u64 = (0..k).map(|j| 900 + 60 * ((j + n as u64) % 4)).sum();
            let (import, export) = if h.id.as_str().starts_with('s') {
                (0, total)
            } else {
                (total, 0)
            };
            let topic = Topic::Readings {
                grid: self.grid.clone(),
                meter: h.meter.clone(),
            }
            .to_string();
            gw.publish(topic, h.reading(&self.grid, self.seq, ts, import, export))
                .await;
        }
        gw.acked(self.homes.len()).await;
    }
}

/// Polls `f` every 100 ms until it returns true, or panics after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(f().await, "timed out waiting for {what}");
}

/// (status, tx_hash) of every settlement row, by interval.
pub async fn statuses(pool: &sqlx::SqlitePool) -> Vec<(i64, String, Option<String>)> {
    sqlx::query_as("SELECT interval_start, status, tx_hash FROM settlements ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("settlements")
}

/// Σ transfers per household and Σ utility from the engine's books.
pub async fn books(pool: &sqlx::SqlitePool) -> (Vec<(String, i64)>, i64) {
    let per: Vec<(String, i64)> = sqlx::query_as(
        "SELECT household, SUM(amount) FROM transfers GROUP BY household ORDER BY household",
    )
    .fetch_all(pool)
    .await
    .expect("transfers");
    let utility: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(utility_micros), 0) FROM settlements")
            .fetch_one(pool)
            .await
            .expect("utility");
    (per, utility)
}

/// Checks that the contract's balances equal the engine's books.
pub async fn assert_books_match_chain(
    chain: &Chain,
    d: &Deployment,
    pool: &sqlx::SqlitePool,
    homes: &[Home],
) {
    let (per, utility_sum) = books(pool).await;
    for h in homes {
        let booked = per
            .iter()
            .find(|(id, _)| id == h.id.as_str())
            .map_or(0, |(_, a)| *a);
        let onchain = chain
            .balance_of(d.contract, h.account)
            .await
            .expect("balance");
        assert_eq!(
            onchain,
            i128::from(DEPOSIT) + i128::from(booked),
            "balance of {}",
            h.id
        );
    }
    let u = chain
        .balance_of(d.contract, utility())
        .await
        .expect("utility balance");
    assert_eq!(u, i128::from(utility_sum), "utility balance");
}

/// A fresh Anvil with the contracts deployed and every test household's
/// deposit made: the chain side every scenario starts from.
pub async fn chain_env() -> (AnvilInstance, Chain, Deployment, Vec<Home>) {
    let anvil = anvil(&[]);
    let chain = chain(&anvil);
    let d = deploy_all(&chain).await;
    let homes = homes();
    fund(&chain, &d, &homes).await;
    (anvil, chain, d, homes)
}

/// The engine side of a scenario: an engine settling through the `evm`
/// backend (its database in `dir`), its manual clock at two minutes before
/// the first interval, and a gateway publishing for every household.
pub struct EngineEnv {
    /// Keeps the engine's directory alive.
    pub dir: TempDir,
    pub grid: GridId,
    pub clock: Arc<ManualClock>,
    /// The config the engine started with (to restart it).
    pub cfg: EngineConfig,
    pub db: PathBuf,
    pub engine: EngineHandle,
    pub pool: sqlx::SqlitePool,
    pub gw: Gateway,
    pub market: Market,
}

/// Starts the engine side of a scenario named `tag`, settling on `rpc`;
/// `tune` adjusts the config first.
pub async fn engine_env(
    tag: &str,
    homes: &[Home],
    d: &Deployment,
    rpc: &str,
    tune: impl FnOnce(&mut EngineConfig),
) -> EngineEnv {
    let dir = TempDir::new(tag);
    let grid = unique_grid(tag);
    let clock = Arc::new(ManualClock::new(UnixMs(I1 - 120_000)));
    let mut cfg = config(&grid, dir.path(), homes, d, rpc);
    tune(&mut cfg);
    let db = cfg.db_path.clone();
    let engine = start(cfg.clone(), clock.clone()).await;
    let pool = engine.pool();
    let gw = Gateway::connect(&grid).await;
    let market = Market {
        grid: grid.clone(),
        homes: homes.to_vec(),
        seq: 0,
    };
    EngineEnv {
        dir,
        grid,
        clock,
        cfg,
        db,
        engine,
        pool,
        gw,
        market,
    }
}

/// Runs intervals `from..=to` through the market: orders for each but the
/// last, the boundary readings of each, and the clock past each start.
pub async fn run_intervals(
    clock: &ManualClock,
    gw: &mut Gateway,
    market: &mut Market,
    from: u64,
    to: u64,
) {
    for k in from..=to {
        let start = Market::interval(k).0;
        clock.set(UnixMs(start - 60_000));
        if k < to {
            market.orders(gw, k, start - 60_000).await;
        }
        clock.set(UnixMs(start));
        market.readings(gw, k).await;
        clock.set(UnixMs(start + 2_000));
    }
}
