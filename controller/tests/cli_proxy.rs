//! `voltshare proxy`, the real binary, in front of a device that accepts a
//! single Modbus TCP client: two clients read through the proxy at the same
//! time over the proxy's one upstream connection, and both get the correct
//! values (checked against the household model), while a second direct
//! client of the device is turned away.

use meter_agent::SimHousehold;
use meter_agent::capability::{GridMeter, PvInverter};
use meter_agent::link::Link;
use meter_agent::simulator::{SimUnit, spawn_devices};
use meter_agent::sunspec_dev::SunSpecDevice;
use protocol::{Clock, ManualClock, UnixMs};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

/// 2021-06-21 10:00 UTC (noon in Essen, summer time).
const NOON: u64 = 1_624_269_600_000;
const T: Duration = Duration::from_secs(2);

/// A device that accepts one client only, as many inverters do: the first
/// connection is forwarded to `upstream` byte for byte, every later one is
/// closed at once (and counted).
async fn single_client_device(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let refused = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&refused);
    tokio::spawn(async move {
        let mut served = false;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if served {
                r.fetch_add(1, Ordering::SeqCst);
                drop(client);
                continue;
            }
            served = true;
            tokio::spawn(async move {
                let mut dev = tokio::net::TcpStream::connect(upstream)
                    .await
                    .expect("device");
                let _ = tokio::io::copy_bidirectional(&mut client, &mut dev).await;
            });
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_a_single_client_device_through_the_proxy() {
    let h = SimHousehold::from_seed(5);
    let manual = Arc::new(ManualClock::new(UnixMs(NOON)));
    let clock: Arc<dyn Clock> = manual.clone();
    let sim = spawn_devices(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![
            SimUnit::sunspec(1, 40000, &[1, 103]),
            SimUnit::sunspec(2, 40000, &[1, 203]),
        ],
        h.clone(),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let (device, refused) = single_client_device(sim.addr).await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_voltshare"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--host", "127.0.0.1"])
        .args(["--port", &device.port().to_string()])
        .env("RUST_LOG", "off")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("proxy starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let proxy: SocketAddr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.expect("stderr line") {
            if let Some(a) = l.strip_prefix("voltshare: modbus proxy on ") {
                return a.trim().parse().expect("address");
            }
        }
        panic!("proxy exited without announcing its address");
    })
    .await
    .expect("proxy announces its address");

    // Two clients, each with its own connection to the proxy.
    let a = Link::tcp(proxy, T, clock.clone());
    let b = Link::tcp(proxy, T, clock.clone());
    let (ma, mb) = tokio::join!(
        SunSpecDevice::discover(&a, 2),
        SunSpecDevice::discover(&b, 2)
    );
    let (ma, mb) = (ma.expect("client a"), mb.expect("client b"));
    let inv_b = SunSpecDevice::discover(&b, 1)
        .await
        .expect("inverter via b");
    for step in 0..20u64 {
        let t = UnixMs(NOON + step * 60_000);
        manual.set(t);
        let (ga, gb, pv) = tokio::join!(ma.read_grid(), mb.read_grid(), inv_b.read_pv());
        let (ga, gb, pv) = (ga.expect("a reads"), gb.expect("b reads"), pv.expect("pv"));
        assert_eq!(ga, gb, "both clients see the same meter");
        assert_eq!(ga.power.0, h.grid_power_w(t), "step {step}");
        assert_eq!(pv.power.0, h.pv_power_w(t), "step {step}");
    }
    assert_eq!(a.connects().await, 1);
    assert_eq!(b.connects().await, 1);

    // The device really takes one client: a direct second client is turned
    // away while the proxy holds the only connection.
    let direct = Link::tcp(device, Duration::from_millis(500), clock.clone());
    assert!(SunSpecDevice::discover(&direct, 2).await.is_err());
    assert!(refused.load(Ordering::SeqCst) >= 1);
    // And the proxy's clients still read.
    ma.read_grid().await.expect("a still reads");

    let _ = child.kill().await;
}
