//! Every supported SunSpec model and every shipped register map, read from
//! the simulator over real TCP (and RTU over a pseudo-terminal pair), with
//! each value and sign checked against the household model; a device served
//! by pymodbus with a layout our simulator never produces; the Modbus TCP
//! proxy; and the faults (timeouts, exceptions, disconnects, slow answers,
//! "not implemented" values, counter resets).

use meter_agent::capability::{Battery, DeviceError, GridMeter, PvInverter};
use meter_agent::counters::{Baseline, CounterGuard, GuardLimits, Quarantine};
use meter_agent::link::{ExceptionCode, Function, Link, LinkError, Transport};
use meter_agent::regmap::{MappedDevice, RegisterMap, shipped};
use meter_agent::sim::HouseholdMeters;
use meter_agent::simulator::{
    SimKind, SimUnit, UNKNOWN_MODEL_ID, spawn_devices, spawn_rtu_devices,
};
use meter_agent::sunspec_dev::{DiscoverError, SunSpecDevice};
use meter_agent::{SimHousehold, proxy::spawn_proxy};
use protocol::{Clock, ManualClock, Stopwatch, UnixMs};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// 2021-06-21 10:00 UTC (noon in Essen, summer time).
const JUNE_21_NOON: u64 = 1_624_269_600_000;
/// 2021-06-21 23:00 UTC.
const JUNE_21_NIGHT: u64 = 1_624_316_400_000;
const T: Duration = Duration::from_millis(500);

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A household exporting at noon (PV above load).
fn sunny() -> SimHousehold {
    (0..100)
        .map(SimHousehold::from_seed)
        .find(|h| {
            h.grid_power_w(UnixMs(JUNE_21_NOON + 900_000)) < -500
                && h.grid_power_w(UnixMs(JUNE_21_NIGHT)) > 50
        })
        .expect("some household exports at noon in June")
}

/// The household's counters at `t`, as the simulator computes them.
fn truth(h: &SimHousehold, t0: u64, t: u64) -> HouseholdMeters {
    let mut m = HouseholdMeters::new(h, UnixMs(t0));
    m.advance(h, UnixMs(t));
    m
}

fn close(read: u64, want: u64, tol: u64, what: &str) {
    assert!(
        read.abs_diff(want) <= tol,
        "{what}: read {read}, expected {want} ± {tol}"
    );
}

const INVERTERS: [u16; 6] = [101, 102, 103, 111, 112, 113];
const METERS: [u16; 8] = [201, 202, 203, 204, 211, 212, 213, 214];
const BASES: [u16; 3] = [40000, 0, 50000];

#[tokio::test]
async fn every_sunspec_model_over_tcp_with_values_and_signs() {
    let h = sunny();
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    // Units 1..=6 inverters, 11..=18 meters, 30 storage; bases rotate over
    // 40000, 0 and 50000; every second device has a model the crate does
    // not know between common and the device model.
    let mut units = Vec::new();
    for (i, m) in INVERTERS.iter().enumerate() {
        units.push(SimUnit {
            unit: 1 + i as u8,
            kind: SimKind::SunSpec {
                base: BASES[i % 3],
                models: vec![1, *m],
                unknown_len: (i % 2 == 0).then_some(17),
            },
        });
    }
    for (i, m) in METERS.iter().enumerate() {
        units.push(SimUnit {
            unit: 11 + i as u8,
            kind: SimKind::SunSpec {
                base: BASES[i % 3],
                models: vec![1, *m],
                unknown_len: (i % 2 == 1).then_some(30),
            },
        });
    }
    units.push(SimUnit::sunspec(30, 40000, &[1, 124]));
    let sim = spawn_devices(local(), units, h.clone(), clock.clone())
        .await
        .expect("simulator");
    let c: Arc<dyn Clock> = clock.clone();
    let t1 = JUNE_21_NOON + 900_000;
    clock.set(UnixMs(t1));
    let want = truth(&h, JUNE_21_NOON, t1);
    let (pv_w, grid_w) = (h.pv_power_w(UnixMs(t1)), h.grid_power_w(UnixMs(t1)));
    assert!(pv_w > 0 && grid_w < 0);

    for (i, m) in INVERTERS.iter().enumerate() {
        let link = Link::tcp(sim.addr, T, c.clone());
        let d = SunSpecDevice::discover(&link, 1 + i as u8)
            .await
            .expect("discovery");
        assert_eq!(d.base, BASES[i % 3], "model {m}");
        assert!(d.model_ids().contains(m), "model {m}: {:?}", d.model_ids());
        if i % 2 == 0 {
            assert_eq!(
                d.unknown.first().map(|b| (b.id, b.len)),
                Some((UNKNOWN_MODEL_ID, 17))
            );
        }
        let common = d.common.clone().expect("common model");
        assert_eq!(common.manufacturer, "Voltshare");
        let v = d.read_pv().await.expect("pv read");
        assert_eq!(v.power.0, pv_w, "model {m} power");
        assert!(v.power.0 > 0, "model {m}: PV power is positive");
        // Float models carry f32 counters: a few Wh of representation error.
        let tol = if *m > 110 { 2 } else { 0 };
        close(v.energy.0, want.pv.wh(), tol, &format!("model {m} WH"));
        assert!(!v.fault);
        assert!(matches!(
            d.read_grid().await,
            Err(DeviceError::Unsupported(_))
        ));
    }
    for (i, m) in METERS.iter().enumerate() {
        let link = Link::tcp(sim.addr, T, c.clone());
        let d = SunSpecDevice::discover(&link, 11 + i as u8)
            .await
            .expect("discovery");
        assert_eq!(d.base, BASES[i % 3], "model {m}");
        let v = d.read_grid().await.expect("meter read");
        assert_eq!(v.power.0, grid_w, "model {m} power");
        assert!(v.power.0 < 0, "model {m}: export at noon is negative");
        let tol = if *m > 210 { 2 } else { 0 };
        close(
            v.energy.import_wh.0,
            want.import.wh(),
            tol,
            &format!("model {m} import"),
        );
        close(
            v.energy.export_wh.0,
            want.export.wh(),
            tol,
            &format!("model {m} export"),
        );
    }
    let link = Link::tcp(sim.addr, T, c.clone());
    let d = SunSpecDevice::discover(&link, 30).await.expect("storage");
    let b = d.read_battery().await.expect("battery");
    let (soc, _) = meter_agent::capability::sim_battery(&h, UnixMs(t1));
    assert_eq!(b.soc_pct, Some(soc));
    assert_eq!(b.power, None, "model 124 has no battery power point");

    // At night the same meters import: positive power.
    clock.set(UnixMs(JUNE_21_NIGHT));
    for (i, m) in METERS.iter().enumerate() {
        let link = Link::tcp(sim.addr, T, c.clone());
        let d = SunSpecDevice::discover(&link, 11 + i as u8)
            .await
            .expect("discovery");
        let v = d.read_grid().await.expect("meter read");
        assert_eq!(
            v.power.0,
            h.grid_power_w(UnixMs(JUNE_21_NIGHT)),
            "model {m}"
        );
        assert!(v.power.0 > 0, "model {m}: import at night is positive");
    }
    // No device at this unit id: the gateway's exception, not a value.
    let err = SunSpecDevice::discover(&link, 99)
        .await
        .expect_err("nobody there");
    assert!(
        matches!(err, DiscoverError::NotSunSpec { unit: 99 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn every_shipped_map_over_tcp_with_values_and_signs() {
    let h = sunny();
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let maps = shipped();
    assert!(maps.len() >= 3);
    let units: Vec<SimUnit> = maps
        .iter()
        .enumerate()
        .map(|(i, m)| SimUnit::map(1 + i as u8, m.clone()))
        .collect();
    let sim = spawn_devices(local(), units, h.clone(), clock.clone())
        .await
        .expect("simulator");
    let c: Arc<dyn Clock> = clock.clone();
    for t in [JUNE_21_NOON + 900_000, JUNE_21_NIGHT] {
        clock.set(UnixMs(t));
        let want = truth(&h, JUNE_21_NOON, t);
        let p = h.grid_power_w(UnixMs(t));
        for (i, m) in maps.iter().enumerate() {
            let d = MappedDevice::new(Link::tcp(sim.addr, T, c.clone()), 1 + i as u8, m.clone());
            let v = d.read_grid().await.expect("map read");
            assert_eq!(v.power.0, p, "{}: power and its sign", m.id);
            assert_eq!(v.power.0 < 0, t < JUNE_21_NIGHT, "{}: sign", m.id);
            // kWh registers: f32 representation (SDM) or 0.01 kWh steps (ABB).
            let (tol, floor10) = match m.id.as_str() {
                "abb-b2x" => (0, true),
                _ => (4, false),
            };
            let q = |x: u64| if floor10 { x / 10 * 10 } else { x };
            close(
                v.energy.import_wh.0,
                q(want.import.wh()),
                tol,
                &format!("{} import", m.id),
            );
            close(
                v.energy.export_wh.0,
                q(want.export.wh()),
                tol,
                &format!("{} export", m.id),
            );
        }
    }
}

#[tokio::test]
async fn user_map_from_disk_with_scale_register_invert_and_word_order() {
    let dir = std::env::temp_dir().join(format!("vs-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("mymeter.toml");
    // A meter that counts export as positive power (invert), keeps a
    // SunSpec-style scale factor register, and stores 32-bit values low word
    // first.
    std::fs::write(
        &path,
        r#"name = "Test meter"
id = "test-meter"
[points.grid_power_w]
address = 100
type = "i32"
order = "low_first"
invert = true
scale_register = { address = 110 }

[points.import_wh]
address = 200
function = "input"
type = "u32"
order = "low_first"

[points.export_wh]
address = 202
function = "input"
type = "f64"
"#,
    )
    .expect("write map");
    let map = RegisterMap::load(&path).expect("user map loads");
    let h = sunny();
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let sim = spawn_devices(
        local(),
        vec![SimUnit::map(7, map.clone())],
        h.clone(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let t = JUNE_21_NOON + 900_000;
    clock.set(UnixMs(t));
    let c: Arc<dyn Clock> = clock.clone();
    let link = Link::tcp(sim.addr, T, c);
    // The raw register really is inverted: export is stored positive.
    let raw = link.read(7, Function::Holding, 100, 2).await.expect("raw");
    let stored = (i64::from(raw[1]) << 16 | i64::from(raw[0])) as i32;
    assert!(
        stored > 0,
        "the device stores export as positive ({stored})"
    );
    let d = MappedDevice::new(link, 7, map);
    let v = d.read_grid().await.expect("read");
    assert_eq!(v.power.0, h.grid_power_w(UnixMs(t)));
    assert!(v.power.0 < 0);
    let want = truth(&h, JUNE_21_NOON, t);
    assert_eq!(v.energy.import_wh.0, want.import.wh());
    assert_eq!(v.energy.export_wh.0, want.export.wh());

    // A broken user map names file, line and key.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nid = \"x\"\n[points.import_wh]\naddress = 1\ntype = \"u32\"\nfunction = \"coil\"\n").expect("write");
    let e = RegisterMap::load(&bad).expect_err("bad function");
    assert_eq!((e.line, e.key.as_str()), (6, "function"), "{e}");
    assert!(
        e.to_string().starts_with(&format!("{}:6:", bad.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn faults_never_hang_never_fabricate_and_reconnect_within_one_poll() {
    let h = sunny();
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let sim = spawn_devices(
        local(),
        vec![
            SimUnit::sunspec(2, 40000, &[1, 203]),
            SimUnit::map(3, RegisterMap::shipped("sdm630").expect("shipped")),
        ],
        h.clone(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let c: Arc<dyn Clock> = clock.clone();
    let link = Link::tcp(sim.addr, T, c.clone());
    let d = SunSpecDevice::discover(&link, 2).await.expect("discovery");
    let good = d.read_grid().await.expect("read");
    assert_eq!(link.connects().await, 1);
    let f = sim.faults(2);

    // Silence: the request ends at its timeout with no value.
    f.silent.store(true, Ordering::SeqCst);
    let sw = Stopwatch::start();
    let r = d.read_grid().await;
    let took = sw.elapsed();
    assert_eq!(r, Err(DeviceError::Link(LinkError::Timeout(T))));
    assert!(
        took >= T && took < T + Duration::from_millis(300),
        "took {took:?}"
    );
    f.silent.store(false, Ordering::SeqCst);
    // The very next poll reconnects and reads.
    let v = d.read_grid().await.expect("reconnected within one poll");
    assert_eq!(v.power, good.power);
    assert_eq!(link.connects().await, 2);

    // An exception is an answer: no value, and the connection stays up.
    f.exception.store(4, Ordering::SeqCst);
    let r = d.read_grid().await;
    assert_eq!(
        r,
        Err(DeviceError::Link(LinkError::Exception {
            unit: 2,
            code: ExceptionCode::ServerDeviceFailure
        }))
    );
    assert!(!r.expect_err("exception").is_link_failure());
    f.exception.store(0, Ordering::SeqCst);
    d.read_grid().await.expect("same connection");
    assert_eq!(link.connects().await, 2, "no reconnect after an exception");

    // The device drops the connection: that poll fails, the next one works.
    f.disconnect.store(true, Ordering::SeqCst);
    let r = d.read_grid().await;
    assert!(
        matches!(r, Err(DeviceError::Link(LinkError::Transport(_)))),
        "{r:?}"
    );
    d.read_grid().await.expect("reconnected within one poll");
    assert_eq!(link.connects().await, 3);

    // Slow but within the timeout: a value; slower than the timeout: none.
    f.slow_ms.store(200, Ordering::SeqCst);
    d.read_grid().await.expect("slow answer within timeout");
    f.slow_ms.store(800, Ordering::SeqCst);
    let sw = Stopwatch::start();
    let r = d.read_grid().await;
    assert_eq!(r, Err(DeviceError::Link(LinkError::Timeout(T))));
    assert!(sw.elapsed() < T + Duration::from_millis(300));
    f.slow_ms.store(0, Ordering::SeqCst);
    // The late answer of the timed-out request must not be taken for the
    // answer to this one: the link dropped that connection.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(d.read_grid().await.expect("read").power, good.power);

    // "Not implemented" power is not a value, not zero (SunSpec and map).
    f.not_implemented.store(true, Ordering::SeqCst);
    assert_eq!(
        d.read_grid().await,
        Err(DeviceError::NotAvailable { point: "W" })
    );
    sim.faults(3).not_implemented.store(true, Ordering::SeqCst);
    let sdm = MappedDevice::new(
        Link::tcp(sim.addr, T, c.clone()),
        3,
        RegisterMap::shipped("sdm630").expect("shipped"),
    );
    assert_eq!(
        sdm.read_grid().await,
        Err(DeviceError::NotAvailable {
            point: "grid_power_w"
        })
    );
    f.not_implemented.store(false, Ordering::SeqCst);

    // A counter reset is caught by the guard and not accepted.
    let mut guard = CounterGuard::new(GuardLimits::default(), None);
    let at = |t: u64, v: &meter_agent::capability::GridValues| Baseline {
        at: UnixMs(t),
        import_wh: v.energy.import_wh.0,
        export_wh: v.energy.export_wh.0,
        pv_wh: None,
    };
    let t = clock.now().0;
    let before = d.read_grid().await.expect("read");
    guard.check(at(t, &before)).expect("first poll accepted");
    f.reset_counters();
    clock.advance(1000);
    let after = d.read_grid().await.expect("read");
    assert!(after.energy.import_wh < before.energy.import_wh);
    assert!(matches!(
        guard.check(at(t + 1000, &after)),
        Err(Quarantine::Decrease {
            counter: "import_wh",
            ..
        })
    ));
    assert_eq!(
        guard.baseline().map(|b| b.import_wh),
        Some(before.energy.import_wh.0)
    );

    // A dead device: connection refused, backoff, never a value.
    sim.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dead = Link::tcp(sim.addr, T, c.clone());
    let sw = Stopwatch::start();
    let e = dead
        .read(2, Function::Holding, 40000, 2)
        .await
        .expect_err("refused");
    assert!(matches!(e, LinkError::Transport(_)), "{e:?}");
    let _ = dead.read(2, Function::Holding, 40000, 2).await;
    let e = dead
        .read(2, Function::Holding, 40000, 2)
        .await
        .expect_err("backoff");
    assert!(matches!(e, LinkError::Backoff { .. }), "{e:?}");
    assert!(sw.elapsed() < T);
}

#[tokio::test]
async fn proxy_shares_one_upstream_between_clients() {
    let h = sunny();
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let sim = spawn_devices(
        local(),
        vec![SimUnit::sunspec(1, 40000, &[1, 113])],
        h.clone(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let c: Arc<dyn Clock> = clock.clone();
    let upstream = Link::tcp(sim.addr, T, c.clone());
    let (paddr, _task) = spawn_proxy(local(), upstream.clone()).await.expect("proxy");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let link = Link::tcp(paddr, T, c);
            let d = SunSpecDevice::discover(&link, 1)
                .await
                .expect("discovery through proxy");
            let mut out = Vec::new();
            for _ in 0..20 {
                out.push(d.read_pv().await.expect("read through proxy").power.0);
            }
            out
        }));
    }
    for t in tasks {
        let v = t.await.expect("client");
        assert!(v.iter().all(|p| *p == h.pv_power_w(UnixMs(JUNE_21_NOON))));
    }
    assert_eq!(
        upstream.connects().await,
        1,
        "one upstream connection for all clients"
    );
    // The device's exception reaches the client as the same exception.
    sim.faults(1).exception.store(6, Ordering::SeqCst);
    let link = Link::tcp(paddr, T, c.clone());
    let e = link
        .read(1, Function::Holding, 40000, 2)
        .await
        .expect_err("busy");
    assert_eq!(
        e,
        LinkError::Exception {
            unit: 1,
            code: ExceptionCode::ServerDeviceBusy
        }
    );
    // A dead upstream is a gateway exception, not a hang.
    sim.stop();
    let sw = Stopwatch::start();
    let e = link
        .read(1, Function::Holding, 40000, 2)
        .await
        .expect_err("down");
    assert!(
        matches!(
            e,
            LinkError::Exception {
                code: ExceptionCode::GatewayTargetDevice,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(sw.elapsed() < T * 2);
}

/// A pseudo-terminal pair from socat; the child is killed on drop.
struct PtyPair {
    child: std::process::Child,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
}

impl PtyPair {
    fn open() -> PtyPair {
        let dir = std::env::temp_dir().join(format!(
            "vs-pty-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let (a, b) = (dir.join("a"), dir.join("b"));
        let child = std::process::Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is required for the RTU tests: run scripts/setup-test-tools");
        for _ in 0..100 {
            if a.exists() && b.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            a.exists() && b.exists(),
            "socat did not create the pty pair"
        );
        PtyPair { child, a, b }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn rtu_bus_with_several_units_over_a_pty_pair() {
    let pty = PtyPair::open();
    let h = sunny();
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let sim = spawn_rtu_devices(
        &pty.a,
        9600,
        vec![
            SimUnit::map(1, RegisterMap::shipped("sdm120").expect("shipped")),
            SimUnit::sunspec(2, 40000, &[1, 101]),
            SimUnit::map(3, RegisterMap::shipped("abb-b2x").expect("shipped")),
        ],
        h.clone(),
        clock.clone(),
    )
    .expect("rtu simulator");
    let c: Arc<dyn Clock> = clock.clone();
    // One bus, one link: every device shares it.
    let bus = Link::new(
        Transport::Rtu {
            path: pty.b.clone(),
            baud: 9600,
        },
        Duration::from_millis(800),
        c.clone(),
    );
    let inv = SunSpecDevice::discover(&bus, 2)
        .await
        .expect("discovery over RTU");
    let sdm = MappedDevice::new(bus.clone(), 1, RegisterMap::shipped("sdm120").expect("map"));
    let abb = MappedDevice::new(
        bus.clone(),
        3,
        RegisterMap::shipped("abb-b2x").expect("map"),
    );
    // Concurrent pollers: the link serializes them on the bus, and each
    // answer lands with its own request.
    let (a, b, d) = tokio::join!(
        async {
            let mut v = Vec::new();
            for _ in 0..5 {
                v.push(sdm.read_grid().await.expect("sdm120").power.0);
            }
            v
        },
        async {
            let mut v = Vec::new();
            for _ in 0..5 {
                v.push(inv.read_pv().await.expect("101").power.0);
            }
            v
        },
        async {
            let mut v = Vec::new();
            for _ in 0..5 {
                v.push(abb.read_grid().await.expect("abb").energy.import_wh.0);
            }
            v
        },
    );
    let p = h.grid_power_w(UnixMs(JUNE_21_NOON));
    assert!(a.iter().all(|x| *x == p && *x < 0), "{a:?}");
    assert!(
        b.iter().all(|x| *x == h.pv_power_w(UnixMs(JUNE_21_NOON))),
        "{b:?}"
    );
    let want = truth(&h, JUNE_21_NOON, JUNE_21_NOON).import.wh() / 10 * 10;
    assert!(d.iter().all(|x| *x == want), "{d:?} vs {want}");
    assert_eq!(bus.connects().await, 1, "one serial port for three devices");
    // A unit nobody answers to on a bus is silence: a timeout, no value.
    let e = bus
        .read(9, Function::Input, 0, 2)
        .await
        .expect_err("silence");
    assert!(matches!(e, LinkError::Timeout(_)), "{e:?}");
    // After the timeout the port is reopened and the bus works again.
    assert_eq!(sdm.read_grid().await.expect("after timeout").power.0, p);
    drop(sim);
}

#[tokio::test]
async fn pymodbus_device_with_a_foreign_sunspec_layout() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/meter_pymodbus_sunspec.py"
    );
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg("0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is required");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("pymodbus server starts in time (is pymodbus installed? run scripts/setup-test-tools)")
        .expect("read")
        .expect("pymodbus server printed its port (is pymodbus installed? run scripts/setup-test-tools)");
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the pymodbus server: {line:?}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let c: Arc<dyn Clock> = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let link = Link::tcp(addr, Duration::from_secs(2), c);
    // The layout (see the script): the marker at 50000 only, with an
    // IllegalAddress at 40000 and 0; models 1, 120 (nameplate: known to the
    // crate, not read here), a vendor model 64900, 213 (float meter), 111
    // (float inverter), then 124 and the end.
    let d = SunSpecDevice::discover(&link, 1).await.expect("discovery");
    assert_eq!(d.base, 50000);
    assert_eq!(
        d.common.as_ref().map(|c| c.manufacturer.as_str()),
        Some("PyModbusCo")
    );
    assert_eq!(
        d.common.as_ref().map(|c| c.serial.as_str()),
        Some("PM-0042")
    );
    let ids = d.model_ids();
    for m in [1, 213, 111, 124] {
        assert!(ids.contains(&m), "{m} in {ids:?}");
    }
    let g = d.read_grid().await.expect("meter");
    assert_eq!(g.power.0, -1501, "−1500.6 W rounds to −1501 (export)");
    assert_eq!(g.energy.import_wh.0, 123_456);
    assert_eq!(g.energy.export_wh.0, 7_890);
    let pv = d.read_pv().await.expect("inverter");
    assert_eq!(pv.power.0, 2500);
    assert_eq!(pv.energy.0, 1_000_000);
    let b = d.read_battery().await.expect("storage");
    assert_eq!(b.soc_pct, Some(57), "ChaState 573 × 10^-1 rounds down");
    let _ = child.kill().await;
}

/// The inverter power limit (SunSpec 123) written over real TCP: a limit is
/// written with write-multiple-registers and read back, the simulated PV
/// obeys it (and the grid meter sees the clipped export), releasing it
/// restores full power, a reversion time lapses it, illegal values never
/// reach the wire, and a write to a read-only register is a device's
/// exception, not a broken link.
#[tokio::test]
async fn inverter_power_limit_written_over_modbus() {
    use meter_agent::capability::PowerLimit;
    use meter_agent::sunspec_dev::PCT_FULL_CENTI;
    use protocol::Watts;

    let h = (0..200)
        .map(SimHousehold::from_seed)
        .find(|h| h.pv_power_w(UnixMs(JUNE_21_NOON)) > 3_000)
        .expect("a sunny household");
    let rated = (h.pv_kwp * 1000.0).round() as i64;
    let full = h.pv_power_w(UnixMs(JUNE_21_NOON));
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let sim = spawn_devices(
        local(),
        vec![
            // Rating from model 121 on unit 1, from model 120 only on unit 3.
            SimUnit::sunspec(1, 40000, &[1, 103, 120, 121, 123]),
            SimUnit::sunspec(2, 40000, &[1, 203]),
            SimUnit::sunspec(3, 0, &[1, 113, 120, 123]),
            SimUnit::sunspec(4, 40000, &[1, 101]),
        ],
        h.clone(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let link = Link::tcp(sim.addr, T, clock.clone());
    let inv = SunSpecDevice::discover(&link, 1).await.expect("discover 1");
    let meter = SunSpecDevice::discover(&link, 2).await.expect("discover 2");
    assert!(inv.has_power_limit());
    assert_eq!(inv.rated_power_w().await, Ok(rated as u64));
    let st = inv.read_power_limit().await.expect("read limit");
    assert!(!st.enabled);
    assert_eq!(st.pct_centi, PCT_FULL_CENTI);
    let grid_full = meter.read_grid().await.expect("grid").power.0;
    assert_eq!(inv.read_pv().await.expect("pv").power.0, full);

    // 25.00 %: written, read back, obeyed by the inverter and seen by the
    // grid meter as less export.
    let st = inv
        .set_power_limit_pct(Some(2_500))
        .await
        .expect("limit set");
    assert!(st.enabled);
    assert_eq!(st.pct_centi, 2_500);
    let cap = rated * 2_500 / 10_000;
    assert_eq!(st.limit_w(), Some(cap as u64));
    assert!(cap < full, "the cap must bite: {cap} W vs {full} W");
    assert_eq!(inv.read_pv().await.expect("pv").power.0, cap);
    assert_eq!(
        meter.read_grid().await.expect("grid").power.0,
        grid_full + (full - cap)
    );
    // Another client sees the same registers.
    let other = Link::tcp(sim.addr, T, clock.clone());
    let b123 = *inv.models.iter().find(|b| b.id == 123).expect("123");
    let regs = other
        .read(1, Function::Holding, b123.addr, 22)
        .await
        .expect("raw read");
    assert_eq!((regs[3], regs[7], regs[21] as i16), (2_500, 1, -2));

    // Illegal values are refused before anything is written: over 100 %,
    // negative percent, negative watts. The registers still hold 25 %.
    for bad in [10_001, 15_000, -1, -500] {
        let e = inv
            .set_power_limit_pct(Some(bad))
            .await
            .expect_err("illegal limit accepted");
        let DeviceError::Invalid { point, why } = &e else {
            panic!("{bad}: expected a validation error, got {e:?}");
        };
        assert_eq!(*point, "WMaxLimPct");
        assert!(why.contains("outside 0–100 %"), "{why}");
    }
    let e = inv
        .set_power_limit(Some(Watts(-100)))
        .await
        .expect_err("negative watts");
    assert!(e.to_string().contains("negative limit -100 W"), "{e}");
    assert_eq!(inv.read_power_limit().await.expect("read").pct_centi, 2_500);
    // ... and truly without IO: with the simulator gone they still fail as
    // validation errors, not link errors (checked at the end).

    // Watts through the capability trait: 1 kW becomes 1000/rated, rounded
    // down, and the inverter never makes more than 1 kW.
    inv.set_power_limit(Some(Watts(1_000))).await.expect("1 kW");
    let pv = inv.read_pv().await.expect("pv").power.0;
    assert!(pv <= 1_000 && pv > 990, "PV {pv} W under a 1 kW cap");
    // A ceiling above the rating is 100 %.
    inv.set_power_limit(Some(Watts(rated * 3)))
        .await
        .expect("above rating");
    assert_eq!(
        inv.read_power_limit().await.expect("read").pct_centi,
        PCT_FULL_CENTI
    );

    // Releasing restores full power.
    inv.set_power_limit(None).await.expect("release");
    assert!(!inv.read_power_limit().await.expect("read").enabled);
    assert_eq!(inv.read_pv().await.expect("pv").power.0, full);
    assert_eq!(meter.read_grid().await.expect("grid").power.0, grid_full);

    // A reversion time: the limit lapses by itself once it has passed.
    let timed = inv.clone().with_limit_revert(60);
    timed
        .set_power_limit_pct(Some(1_000))
        .await
        .expect("timed limit");
    assert_eq!(timed.read_power_limit().await.expect("read").revert_s, 60);
    clock.set(UnixMs(JUNE_21_NOON + 59_000));
    assert!(timed.read_pv().await.expect("pv").power.0 <= rated / 10);
    clock.set(UnixMs(JUNE_21_NOON + 60_000));
    let after = h.pv_power_w(UnixMs(JUNE_21_NOON + 60_000));
    assert_eq!(timed.read_pv().await.expect("pv").power.0, after);
    assert!(!timed.read_power_limit().await.expect("read").enabled);

    // A float inverter whose only rating is the nameplate (120), at base 0.
    let inv3 = SunSpecDevice::discover(&link, 3).await.expect("discover 3");
    assert_eq!(inv3.base, 0);
    assert_eq!(inv3.rated_power_w().await, Ok(rated as u64));
    inv3.set_power_limit_pct(Some(5_000)).await.expect("50 %");
    assert!(inv3.read_pv().await.expect("pv").power.0 <= rated / 2);
    inv3.set_power_limit(None).await.expect("release 3");

    // No immediate controls: the capability is unsupported, nothing written.
    let inv4 = SunSpecDevice::discover(&link, 4).await.expect("discover 4");
    assert!(!inv4.has_power_limit());
    assert_eq!(
        inv4.set_power_limit(Some(Watts(500))).await,
        Err(DeviceError::Unsupported("power limit"))
    );

    // Writes the device refuses are its exceptions, and the link stays up:
    // a read-only register (the inverter's W) gets 02, a limit over 100 %
    // written raw gets 03, a model without writable points 02.
    let connects = link.connects().await;
    let b103 = *inv.models.iter().find(|b| b.id == 103).expect("103");
    // W is at offset 12 of model 103 (read-only in the SunSpec definition).
    let w_addr = b103.addr + 12;
    assert_eq!(
        link.write(1, w_addr, &[0]).await,
        Err(LinkError::Exception {
            unit: 1,
            code: ExceptionCode::IllegalDataAddress
        })
    );
    assert_eq!(
        link.write(1, b123.addr + 3, &[10_001]).await,
        Err(LinkError::Exception {
            unit: 1,
            code: ExceptionCode::IllegalDataValue
        })
    );
    // A write that runs from a writable into a read-only register.
    assert_eq!(
        link.write(1, b123.addr + 7, &[1, 0]).await,
        Err(LinkError::Exception {
            unit: 1,
            code: ExceptionCode::IllegalDataAddress
        })
    );
    assert_eq!(
        link.connects().await,
        connects,
        "no reconnect after exceptions"
    );
    assert_eq!(
        inv.read_pv().await.expect("pv after exceptions").power.0,
        after
    );
    assert!(!inv.read_power_limit().await.expect("read").enabled);

    // With the simulator gone, illegal values are still validation errors:
    // they never reached the link.
    sim.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    link.disconnect().await;
    for bad in [10_001, -1] {
        assert!(matches!(
            inv.set_power_limit_pct(Some(bad)).await,
            Err(DeviceError::Invalid { .. })
        ));
    }
    assert!(matches!(
        inv.set_power_limit(Some(Watts(-5))).await,
        Err(DeviceError::Invalid { .. })
    ));
    assert!(inv.set_power_limit_pct(Some(5_000)).await.is_err());
}
