//! Actuation through the gateway's own code path: a gateway configuration
//! (meter agent + controller with `[controller.export_price]` and
//! `[controller.actuation]`) parsed and validated by `config`, run by
//! `gateway::run_gateway` (what `voltshare run` calls) against the real
//! Mosquitto at 127.0.0.1:1883 and the Modbus TCP device simulator, on a
//! `ScaledClock` (20× real time, one-minute intervals) shared by the
//! gateway and the simulator. Everything the test checks it reads the way
//! another party would: the inverter's model 123 and the battery's model 124
//! over Modbus with a client of its own, the orders on the broker.
//!
//! - An export-price schedule that goes negative and back: the inverter's
//!   power limit is written while exporting costs money and released when
//!   the price is positive again.
//! - The battery: a discharge decided by the strategy is written to model
//!   124 and read back; a charge and a discharge carried out by the
//!   `Actuator` are read back by a second client, and `Auto` releases them.
//! - A unit without models 123 and 124: both capabilities are reported
//!   unsupported and the gateway goes on placing orders.

use controller::actuate::{Actuator, ActuatorConfig, Outcome};
use controller::strategy::{BatteryMode, Forecast, Plan};
use meter_agent::SimHousehold;
use meter_agent::capability::{PvInverter, StorageCommand};
use meter_agent::link::{Link, Transport};
use meter_agent::simulator::{SimUnit, spawn_devices};
use meter_agent::sunspec_dev::SunSpecDevice;
use protocol::{Clock, ManualClock, ScaledClock, UnixMs, Watts};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// 2021-06-21 10:00 UTC (noon in Essen, summer time): the sun is high.
const JUNE_21_10H: u64 = 1_624_269_600_000;
const ENGINE_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const T: Duration = Duration::from_secs(2);
/// Simulated time runs 20× real time: a decision late by up to 30 s of
/// simulated time (1.5 s real, on a loaded machine) still passes.
const SPEED: u64 = 20;
const MINUTE: u64 = 60_000;

fn scratch(tag: &str) -> PathBuf {
    let n: u64 = rand::random();
    let dir = std::env::temp_dir().join(format!("vs-gw-act-{tag}-{n:016x}"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A household producing well over 3 kW at 10:00 UTC on June 21.
fn sunny() -> SimHousehold {
    (0..200)
        .map(SimHousehold::from_seed)
        .find(|h| h.pv_power_w(UnixMs(JUNE_21_10H)) > 3_000)
        .expect("a sunny household")
}

fn rfc3339(t: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(t).expect("time"))
        .expect("time")
        .to_rfc3339()
}

/// A gateway config: meter agent on units 1 (inverter) and 2 (meter),
/// controller with curtailment, an export price and actuation of `unit`.
/// Feed-in and retail tariffs are equal, so without any clearing price the
/// market price counts as "high" and the strategy discharges a battery
/// above its reserve.
fn gateway_toml(dir: &Path, grid: &str, modbus: SocketAddr, unit: u8, schedule: &Path) -> String {
    format!(
        r#"grid = "{grid}"
data_dir = "{dir}"
interval_ms = 60000

[broker]
host = "127.0.0.1"
port = 1883

[household]
id = "h1"
key_file = "{dir}/household.key"
engine_public_key = "{ENGINE_PK}"

[meter_agent]
enabled = true
meter = "h1-main"
modbus = "{modbus}"
inverter_unit = 1
meter_unit = 2
poll_ms = 100

[controller]
enabled = true
min_sell_price = 100000
max_buy_price = 300000
feed_in_tariff = 200000
retail_tariff = 200000
curtail = true

[controller.battery]
capacity_wh = 10000
reserve_wh = 2000
max_power_w = 3000

[controller.export_price]
fixed = 30000
schedule_file = "{schedule}"

[controller.actuation]
enabled = true
inverter_unit = {unit}
battery_unit = {unit}
timeout_ms = 1000
"#,
        dir = dir.display(),
        schedule = schedule.display(),
    )
}

/// Counts the household's orders on the real broker.
async fn count_orders(grid: String, counter: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    let n: u64 = rand::random();
    let mut opts = MqttOptions::new(format!("gw-act-orders-{n:x}"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut ev) = AsyncClient::new(opts, 64);
    let topic = format!("voltshare/{grid}/orders/h1");
    client
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            e = ev.poll() => match e {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                Ok(_) => {}
                Err(e) => panic!("the test's MQTT client failed (is Mosquitto at 127.0.0.1:1883?): {e}"),
            }
        }
    }
}

/// What a second Modbus client sees at one moment.
#[derive(Debug, Clone, Copy)]
struct Seen {
    t: u64,
    limit_enabled: bool,
    battery: StorageCommand,
    ctl_mod: u16,
    in_pct: i64,
    out_pct: i64,
}

/// Starts the gateway on `config`, watches unit 1 over Modbus every 100 ms
/// real time until the clock reaches `until`, and returns what it saw and
/// the orders counted (before and after `split`).
async fn run_and_watch(
    text: &str,
    dir: &Path,
    grid: &str,
    clock: Arc<ScaledClock>,
    sim_addr: SocketAddr,
    watch_unit: Option<u8>,
    (until, split): (u64, u64),
) -> (Vec<Seen>, u64, u64) {
    let file = dir.join("gateway.toml");
    std::fs::write(&file, text).expect("config");
    let cfg = controller::config::load(&file).unwrap_or_else(|e| panic!("config: {e}"));
    let c = cfg.controller.as_ref().expect("controller");
    assert!(c.actuator.is_some(), "actuation configured");
    assert!(c.export_price.is_some(), "export price configured");

    let orders = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let counter = tokio::spawn(count_orders(
        grid.to_owned(),
        orders.clone(),
        stop_rx.clone(),
    ));
    // Let the subscription settle before the first orders.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let gw = tokio::spawn(controller::gateway::run_gateway(
        cfg,
        dyn_clock.clone(),
        stop_rx.clone(),
    ));

    let link = Link::tcp(sim_addr, T, dyn_clock.clone());
    let watcher = match watch_unit {
        Some(u) => Some(SunSpecDevice::discover(&link, u).await.expect("discover")),
        None => None,
    };
    let mut seen = Vec::new();
    let mut orders_before = 0;
    while clock.now().0 < until {
        assert!(!gw.is_finished(), "the gateway stopped");
        if let Some(w) = &watcher {
            let l = w.read_power_limit().await.expect("read 123");
            let s = w.read_storage_control().await.expect("read 124");
            seen.push(Seen {
                t: clock.now().0 - JUNE_21_10H,
                limit_enabled: l.enabled,
                battery: s.command(),
                ctl_mod: s.ctl_mod,
                in_pct: s.in_pct_centi,
                out_pct: s.out_pct_centi,
            });
        }
        if clock.now().0 < split {
            orders_before = orders.load(Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    gw.await.expect("join").expect("gateway stops cleanly");
    let _ = counter.await;
    let total = orders.load(Ordering::SeqCst);
    (seen, orders_before, total - orders_before)
}

/// The schedule goes negative from minute 2 to minute 5: the limit is
/// written for the decisions made for those intervals (halfway through the
/// interval before each) and released by the decision for minute 5. The
/// battery is discharged (the strategy's decision), read back by a second
/// client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_export_price_curtails_then_releases_and_battery_follows() {
    let dir = scratch("curtail");
    let grid = format!("gwact{:x}", rand::random::<u32>());
    let schedule = dir.join("export-prices.txt");
    std::fs::write(
        &schedule,
        format!(
            "# a dynamic feed-in tariff, µ/kWh\n{} -20000\n{} 5000\n",
            rfc3339(JUNE_21_10H + 2 * MINUTE),
            rfc3339(JUNE_21_10H + 5 * MINUTE)
        ),
    )
    .expect("schedule");
    let clock = Arc::new(ScaledClock::new(UnixMs(JUNE_21_10H), SPEED));
    let sim = spawn_devices(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![
            SimUnit::sunspec(1, 40000, &[1, 103, 120, 121, 123, 124]),
            SimUnit::sunspec(2, 40000, &[1, 203]),
        ],
        sunny(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let text = gateway_toml(&dir, &grid, sim.addr, 1, &schedule);
    let (seen, orders_before, orders_after) = run_and_watch(
        &text,
        &dir,
        &grid,
        clock.clone(),
        sim.addr,
        Some(1),
        (
            JUNE_21_10H + 6 * MINUTE + MINUTE / 4,
            JUNE_21_10H + 5 * MINUTE,
        ),
    )
    .await;
    let line = |s: &Seen| format!("{s:?}");
    let log = seen.iter().map(line).collect::<Vec<_>>().join("\n");

    // Before the first negative interval's decision (minute 1.5): no limit.
    assert!(
        seen.iter()
            .filter(|s| s.t < 88_000)
            .all(|s| !s.limit_enabled),
        "a limit before the price went negative:\n{log}"
    );
    // The decisions for minutes 2, 3 and 4 (made at 1.5, 2.5, 3.5): limited
    // from the start of minute 2 to the end of minute 3 at least.
    let during: Vec<&Seen> = seen
        .iter()
        .filter(|s| (120_000..240_000).contains(&s.t))
        .collect();
    assert!(!during.is_empty(), "no samples while negative:\n{log}");
    assert!(
        during.iter().all(|s| s.limit_enabled),
        "the limit is not in force while exporting costs money:\n{log}"
    );
    // Released by the decision for minute 5 (made at 4.5), by minute 5.
    let after: Vec<&Seen> = seen.iter().filter(|s| s.t >= 300_000).collect();
    assert!(
        !after.is_empty(),
        "no samples after the price turned positive:\n{log}"
    );
    assert!(
        after.iter().all(|s| !s.limit_enabled),
        "the limit was not released when the price turned positive:\n{log}"
    );
    // The battery: SoC 44 % of 10 kWh at 10:00 UTC, above the 2 kWh
    // reserve, and the price "high": discharge at the full 3 kW, written
    // as OutWRte = 100 %, InWRte = −100 %, both rates in force.
    // The first decision (at 0.5 min) may come before any reading: from
    // the second on, the strategy has a forecast.
    let discharging: Vec<&Seen> = seen.iter().filter(|s| s.t >= 120_000).collect();
    assert!(
        discharging.iter().all(|s| s.ctl_mod == 3
            && s.out_pct == 10_000
            && s.in_pct == -10_000
            && s.battery == StorageCommand::Discharge(Watts(3_000))),
        "the battery discharge was not written:\n{log}"
    );
    // Trading went on throughout.
    assert!(orders_before > 0, "no orders before minute 5");
    assert!(orders_after > 0, "no orders after minute 5");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A unit without models 123 and 124: both decisions are reported
/// unsupported (once), and the gateway keeps placing orders every interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_without_controls_is_unsupported_and_trading_goes_on() {
    // The actuator alone first: what it reports.
    let mclock = Arc::new(ManualClock::new(UnixMs(JUNE_21_10H)));
    let sim = spawn_devices(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![
            SimUnit::sunspec(1, 40000, &[1, 103]),
            SimUnit::sunspec(2, 40000, &[1, 203]),
        ],
        sunny(),
        mclock.clone(),
    )
    .await
    .expect("simulator");
    let mut a = Actuator::new(
        ActuatorConfig {
            transport: Transport::Tcp(sim.addr),
            inverter_unit: 1,
            battery_unit: Some(1),
            timeout: T,
            revert_s: 120,
        },
        mclock.clone(),
    );
    let plan = Plan {
        forecast: Forecast::default(),
        orders: Vec::new(),
        battery: Some(BatteryMode::Charge { w: 2_000 }),
        curtail_export_w: Some(Watts(500)),
    };
    let out = a.apply(&plan, None).await;
    assert!(
        matches!(
            &out[..],
            [
                Outcome::Unsupported {
                    capability: "power limit",
                    ..
                },
                Outcome::Unsupported {
                    capability: "battery control",
                    ..
                }
            ]
        ),
        "{out:?}"
    );
    assert_eq!(a.stats.unsupported.load(Ordering::Relaxed), 2);
    // Reported once, not every interval.
    assert_eq!(a.apply(&plan, None).await, vec![Outcome::Unchanged]);
    assert_eq!(a.stats.unsupported.load(Ordering::Relaxed), 2);
    assert_eq!(a.battery_soc_pct().await, None);
    drop(sim);

    // The gateway with that device: the price is negative all along, the
    // battery would discharge, and neither can be carried out.
    let dir = scratch("unsupported");
    let grid = format!("gwact{:x}", rand::random::<u32>());
    let schedule = dir.join("export-prices.txt");
    std::fs::write(&schedule, format!("{} -20000\n", rfc3339(JUNE_21_10H))).expect("schedule");
    let clock = Arc::new(ScaledClock::new(UnixMs(JUNE_21_10H), SPEED));
    let sim = spawn_devices(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![
            SimUnit::sunspec(1, 40000, &[1, 103]),
            SimUnit::sunspec(2, 40000, &[1, 203]),
        ],
        sunny(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let text = gateway_toml(&dir, &grid, sim.addr, 1, &schedule);
    let (_, before, after) = run_and_watch(
        &text,
        &dir,
        &grid,
        clock.clone(),
        sim.addr,
        None,
        (JUNE_21_10H + 4 * MINUTE, JUNE_21_10H + 2 * MINUTE),
    )
    .await;
    assert!(before > 0, "no orders in the first two minutes");
    assert!(after > 0, "orders stopped after the unsupported decisions");
    // The inverter still produces at full power: nothing was limited.
    let link = Link::tcp(sim.addr, T, clock.clone());
    let inv = SunSpecDevice::discover(&link, 1).await.expect("discover");
    assert_eq!(
        inv.read_pv().await.expect("pv").power.0,
        sunny().pv_power_w(clock.now())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `Actuator` on a storage unit of its own (model 124 only): a charge
/// and a discharge are written and read back by a second client, the
/// battery's power follows at the grid meter, `Auto` releases, and the
/// state of charge is read from the same unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_charge_and_discharge_are_written_and_read_back() {
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_10H)));
    let sim = spawn_devices(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![
            SimUnit::sunspec(1, 40000, &[1, 103, 120, 121, 123]),
            SimUnit::sunspec(2, 40000, &[1, 203]),
            SimUnit::sunspec(4, 40000, &[1, 124]),
        ],
        sunny(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let mut a = Actuator::new(
        ActuatorConfig {
            transport: Transport::Tcp(sim.addr),
            inverter_unit: 1,
            battery_unit: Some(4),
            timeout: T,
            revert_s: 120,
        },
        clock.clone(),
    );
    let other = Link::tcp(sim.addr, T, clock.clone());
    let storage = SunSpecDevice::discover(&other, 4).await.expect("discover");
    let meter = SunSpecDevice::discover(&other, 2).await.expect("discover");
    let grid_w = || async {
        use meter_agent::capability::GridMeter;
        meter.read_grid().await.expect("grid").power.0
    };
    let natural = grid_w().await;
    let (_, natural_battery) = meter_agent::capability::sim_battery(&sunny(), clock.now());
    // 10:00 UTC: 10 + 240 × 85 / 600 = 44 %.
    assert_eq!(a.battery_soc_pct().await, Some(44));

    let plan = |battery| Plan {
        forecast: Forecast::default(),
        orders: Vec::new(),
        battery,
        curtail_export_w: None,
    };
    let out = a
        .apply(&plan(Some(BatteryMode::Charge { w: 1_200 })), None)
        .await;
    assert_eq!(
        out,
        vec![
            Outcome::LimitReleased,
            Outcome::BatterySet {
                command: StorageCommand::Charge(Watts(1_200))
            }
        ]
    );
    let s = storage.read_storage_control().await.expect("read 124");
    assert_eq!(
        (s.ctl_mod, s.in_pct_centi, s.out_pct_centi, s.revert_s),
        (3, 4_000, -4_000, 120)
    );
    assert_eq!(grid_w().await - natural, 1_200 - natural_battery);
    assert_eq!(a.stats.battery_w.load(Ordering::Relaxed), 1_200);

    let out = a
        .apply(&plan(Some(BatteryMode::Discharge { w: 2_400 })), None)
        .await;
    assert_eq!(
        out,
        vec![
            Outcome::Unchanged,
            Outcome::BatterySet {
                command: StorageCommand::Discharge(Watts(2_400))
            }
        ]
    );
    let s = storage.read_storage_control().await.expect("read 124");
    assert_eq!(
        (s.ctl_mod, s.in_pct_centi, s.out_pct_centi),
        (3, -8_000, 8_000)
    );
    assert_eq!(grid_w().await - natural, -2_400 - natural_battery);
    assert_eq!(a.stats.battery_w.load(Ordering::Relaxed), -2_400);

    // Self-consumption (and later no decision at all): the device's own
    // control, written once.
    let out = a.apply(&plan(Some(BatteryMode::SelfConsume)), None).await;
    assert_eq!(
        out[1],
        Outcome::BatterySet {
            command: StorageCommand::Auto
        }
    );
    assert_eq!(
        storage.read_storage_control().await.expect("read").ctl_mod,
        0
    );
    assert_eq!(grid_w().await, natural);
    assert_eq!(a.apply(&plan(None), None).await, vec![Outcome::Unchanged]);
    assert_eq!(a.stats.battery_commands.load(Ordering::Relaxed), 3);
}
