//! The demo household's SunSpec devices read through `link`/`devices`
//! from the simulator over real TCP, and the outbox on real SQLite files.
//! (Ported from the walking skeleton's poller, which `devices` replaced;
//! every assertion keeps its intent.)

use meter_agent::capability::{DeviceError, GridMeter, PvInverter};
use meter_agent::devices::{AnyDevice, DeviceConfig, DeviceKind, DeviceSetup, Devices};
use meter_agent::link::{Link, LinkError, Transport};
use meter_agent::outbox::{AckApplied, Outbox};
use meter_agent::sim::HouseholdMeters;
use meter_agent::simulator::{INVERTER_UNIT, METER_UNIT};
use meter_agent::sunspec_dev::{DiscoverError, SunSpecDevice};
use meter_agent::{SimFaults, SimHousehold, spawn_simulator, spawn_simulator_with_faults};
use protocol::{Clock, Domain, ManualClock, MeterId, SignedEnvelope, UnixMs};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_modbus::client::Reader;

/// 2021-06-21 10:00 UTC (noon in Essen, summer time), a Monday.
const JUNE_21_NOON: u64 = 1_624_269_600_000;
/// 2021-06-21 23:00 UTC.
const JUNE_21_NIGHT: u64 = 1_624_316_400_000;
const T: Duration = Duration::from_secs(2);

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A sunny-noon seed: PV above consumption, so the meter must show export.
fn sunny_household() -> SimHousehold {
    (0..100)
        .map(SimHousehold::from_seed)
        .find(|h| h.grid_power_w(UnixMs(JUNE_21_NOON + 900_000)) < -500)
        .expect("some household exports at noon in June")
}

/// The demo layout as an agent configures it: grid meter and inverter, each
/// SunSpec over its own TCP connection.
fn setup(addr: SocketAddr) -> DeviceSetup {
    DeviceSetup {
        grid: DeviceConfig {
            transport: Transport::Tcp(addr),
            unit: METER_UNIT,
            kind: DeviceKind::SunSpec,
        },
        pv: Some(DeviceConfig {
            transport: Transport::Tcp(addr),
            unit: INVERTER_UNIT,
            kind: DeviceKind::SunSpec,
        }),
        timeout: T,
    }
}

/// Discovers both devices of the demo layout.
async fn discover(
    addr: SocketAddr,
    clock: Arc<dyn Clock>,
) -> (Devices, SunSpecDevice, SunSpecDevice) {
    let mut devices = Devices::new(&setup(addr), clock);
    let AnyDevice::SunSpec(met) = devices.grid.get().await.expect("meter discovery").clone() else {
        panic!("grid meter configured as SunSpec");
    };
    let AnyDevice::SunSpec(inv) = devices
        .pv
        .as_mut()
        .expect("inverter configured")
        .get()
        .await
        .expect("inverter discovery")
        .clone()
    else {
        panic!("inverter configured as SunSpec");
    };
    (devices, inv, met)
}

#[tokio::test]
async fn devices_discover_and_read_exact_values_with_signs() {
    let h = sunny_household();
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let (addr, server) = spawn_simulator(local(), h.clone(), clock.clone())
        .await
        .expect("simulator");

    let (_devices, inv_dev, met_dev) = discover(addr, clock.clone()).await;
    let inv = *inv_dev
        .models
        .iter()
        .find(|b| b.id == 103)
        .expect("inverter model");
    let met = *met_dev
        .models
        .iter()
        .find(|b| b.id == 203)
        .expect("meter model");
    // SunS (2) + common header (2) + common body (66) + model header (2).
    assert_eq!((inv.id, inv.addr, inv.len), (103, 40072, 50));
    assert_eq!((met.id, met.addr, met.len), (203, 40072, 105));
    assert!(inv_dev.has_inverter() && !inv_dev.has_meter());
    assert!(met_dev.has_meter() && !met_dev.has_inverter());

    // The model of the same household, advanced the same way.
    let mut model = HouseholdMeters::new(&h, UnixMs(JUNE_21_NOON));
    let t1 = UnixMs(JUNE_21_NOON + 900_000);
    clock.set(t1);
    model.advance(&h, t1);

    let m = met_dev.read_grid().await.expect("meter read");
    let i = inv_dev.read_pv().await.expect("inverter read");
    assert_eq!(m.power.0, h.grid_power_w(t1));
    assert!(
        m.power.0 < 0,
        "noon in June exports: negative grid power, got {}",
        m.power.0
    );
    assert_eq!(m.energy.import_wh.0, model.import.wh());
    assert_eq!(m.energy.export_wh.0, model.export.wh());
    assert_eq!(i.power.0, h.pv_power_w(t1));
    assert!(i.power.0 > 0);
    assert_eq!(i.energy.0, model.pv.wh());
    assert!(!i.fault);

    // A quarter hour of export moved the export counter, not the import one.
    let m0 = HouseholdMeters::new(&h, UnixMs(JUNE_21_NOON));
    assert!(m.energy.export_wh.0 > m0.export.wh());

    // At night the same household imports.
    clock.set(UnixMs(JUNE_21_NIGHT));
    let night = met_dev.read_grid().await.expect("meter read");
    assert!(
        night.power.0 > 0,
        "night imports: positive grid power, got {}",
        night.power.0
    );
    assert_eq!(night.power.0, h.grid_power_w(UnixMs(JUNE_21_NIGHT)));
    let pv_night = inv_dev.read_pv().await.expect("read");
    assert_eq!(pv_night.power.0, 0);
    server.abort();
}

#[tokio::test]
async fn counters_are_monotonic_over_tcp() {
    let h = SimHousehold::from_seed(11);
    let clock = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let (addr, server) = spawn_simulator(local(), h.clone(), clock.clone())
        .await
        .expect("simulator");
    let (_devices, inv, met) = discover(addr, clock.clone()).await;
    let first = met.read_grid().await.expect("read").energy;
    let first_pv = inv.read_pv().await.expect("read").energy.0;
    let (mut imp, mut exp, mut pv) = (first.import_wh.0, first.export_wh.0, first_pv);
    for step in 1..=96u64 {
        // A day in uneven steps, with an occasional step back in time, which
        // must not move any counter backwards.
        let t = JUNE_21_NOON + step * 900_000 + (step % 7) * 13_000;
        clock.set(UnixMs(t));
        if step % 10 == 0 {
            clock.set(UnixMs(t - 600_000));
        }
        let m = met.read_grid().await.expect("read").energy;
        let p = inv.read_pv().await.expect("read").energy.0;
        assert!(
            m.import_wh.0 >= imp && m.export_wh.0 >= exp && p >= pv,
            "step {step}"
        );
        (imp, exp, pv) = (m.import_wh.0, m.export_wh.0, p);
    }
    assert!(imp > first.import_wh.0, "a night imports energy");
    assert!(exp > first.export_wh.0, "an afternoon exports energy");
    assert!(pv > first_pv);
    server.abort();
}

#[tokio::test]
async fn unknown_registers_and_failed_devices_are_exceptions_not_values() {
    let h = SimHousehold::from_seed(2);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let faults = Arc::new(SimFaults::default());
    let (addr, server) = spawn_simulator_with_faults(local(), h, clock.clone(), faults.clone())
        .await
        .expect("simulator");

    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut ctx = tokio_modbus::client::tcp::attach_slave(stream, tokio_modbus::Slave(METER_UNIT));
    let below = ctx
        .read_holding_registers(30000, 2)
        .await
        .expect("transport ok");
    assert_eq!(below, Err(tokio_modbus::ExceptionCode::IllegalDataAddress));
    let past_end = ctx
        .read_holding_registers(40170, 20)
        .await
        .expect("transport ok");
    assert_eq!(
        past_end,
        Err(tokio_modbus::ExceptionCode::IllegalDataAddress)
    );
    let marker = ctx
        .read_holding_registers(40000, 2)
        .await
        .expect("transport ok")
        .expect("SunS");
    assert_eq!(marker, vec![0x5375, 0x6e53]);

    let (devices, _inv, met) = discover(addr, clock).await;
    let connects = devices.grid.link.connects().await;
    faults.meter_failed.store(true, Ordering::SeqCst);
    let err = met
        .read_grid()
        .await
        .expect_err("failed device gives no value");
    assert!(
        matches!(
            err,
            DeviceError::Link(LinkError::Exception {
                unit: METER_UNIT,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        !err.is_link_failure(),
        "an exception is not a transport error"
    );
    faults.meter_failed.store(false, Ordering::SeqCst);
    met.read_grid().await.expect("device back, same connection");
    assert_eq!(
        devices.grid.link.connects().await,
        connects,
        "same connection"
    );

    // Transport failure: the server goes away.
    server.abort();
    let _ = server.await;
    let err = met.read_grid().await.expect_err("no server");
    assert!(err.is_link_failure(), "{err:?}");
}

#[tokio::test]
async fn discovery_without_sunspec_map_fails_cleanly() {
    let h = SimHousehold::from_seed(2);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(UnixMs(JUNE_21_NOON)));
    let (addr, server) = spawn_simulator(local(), h, clock.clone())
        .await
        .expect("simulator");
    // Unit 9 has no device behind the simulator's "gateway": every base
    // answers with an exception, which is an answer, not a broken link.
    let link = Link::tcp(addr, T, clock);
    let err = SunSpecDevice::discover(&link, 9)
        .await
        .expect_err("no device");
    assert_eq!(err, DiscoverError::NotSunSpec { unit: 9 });
    assert_eq!(link.connects().await, 1, "no reconnect needed: {err:?}");
    server.abort();
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "voltshare-ma-{}-{}-{name}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("outbox.db")
}

#[tokio::test]
async fn outbox_sequence_survives_reopen() {
    let path = temp_db("reopen");
    let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let m = MeterId::new("h1-grid").expect("id");
    let other = MeterId::new("h2-grid").expect("id");
    let sign = |seq: u64| SignedEnvelope::sign(Domain::Reading, &key, seq.to_string().into_bytes());
    {
        let ob = Outbox::open(&path, 100).await.expect("open");
        for want in 1..=3 {
            assert_eq!(
                ob.append(&m, UnixMs(want), sign).await.expect("append").0,
                want
            );
        }
        assert_eq!(
            ob.append(&other, UnixMs(1), sign).await.expect("append").0,
            1,
            "per-meter numbering"
        );
        assert_eq!(ob.ack(&m, 3).await.expect("ack"), AckApplied::Applied);
        ob.close().await;
    }
    let ob = Outbox::open(&path, 100).await.expect("reopen");
    assert_eq!(ob.last_seq(&m).await.expect("seq"), 3);
    let (seq, env) = ob.append(&m, UnixMs(9), sign).await.expect("append");
    assert_eq!(seq, 4, "the acked (deleted) number 3 is not reused");
    let rows = ob.pending(&m, 0, 10).await.expect("rows");
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    assert_eq!(
        rows[2].envelope,
        env.encode(),
        "stored bytes are the published bytes"
    );
    ob.close().await;
}
