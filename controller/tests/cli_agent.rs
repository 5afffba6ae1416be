//! `voltshare-agent`, the agent-only binary, run for real: usage and config
//! errors exit with code 2 and say what is wrong; with a gateway config it
//! polls the device simulator over TCP and publishes signed readings on the
//! real Mosquitto broker at 127.0.0.1:1883, and stops cleanly on SIGTERM.

use meter_agent::SimHousehold;
use meter_agent::simulator::{SimUnit, spawn_devices};
use protocol::{Clock, Domain, Reading, SignedEnvelope, SystemClock, decode_payload};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_voltshare-agent");
const ENGINE_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn scratch() -> PathBuf {
    let n: u64 = rand::random();
    let dir = std::env::temp_dir().join(format!("vs-cli-agent-{n:016x}"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[test]
fn usage_and_config_errors_exit_2() {
    let out = std::process::Command::new(EXE).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config FILE"));

    let dir = scratch();
    let file = dir.join("gw.toml");
    // A config whose only role is the controller: nothing for this binary.
    std::fs::write(
        &file,
        format!(
            "grid = \"g\"\ndata_dir = \"{}\"\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\n\
             [household]\nid = \"h1\"\nkey_file = \"{}/k\"\nengine_public_key = \"{ENGINE_PK}\"\n\
             [controller]\nenabled = true\nmin_sell_price = 100000\nmax_buy_price = 300000\n",
            dir.display(),
            dir.display()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(EXE)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no enabled [meter_agent]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad key names the key.
    std::fs::write(
        &file,
        format!(
            "grid = \"g\"\ndata_dir = \"{}\"\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\n\
             [household]\nid = \"h1\"\nkey_file = \"{}/k\"\nengine_public_key = \"{ENGINE_PK}\"\n\
             [meter_agent]\nenabled = true\nmeter = \"m1\"\nmodbus = \"nowhere\"\n",
            dir.display(),
            dir.display()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(EXE)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("meter_agent.modbus"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_signed_readings_from_the_simulator_and_stops_on_sigterm() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sim = spawn_devices(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![
            SimUnit::sunspec(1, 40000, &[1, 103]),
            SimUnit::sunspec(2, 40000, &[1, 203]),
        ],
        SimHousehold::from_seed(4),
        clock,
    )
    .await
    .expect("simulator");
    let dir = scratch();
    let grid = format!("agentcli{:08x}", rand::random::<u32>());
    let file = dir.join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "grid = \"{grid}\"\ndata_dir = \"{d}\"\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\n\
             [household]\nid = \"h1\"\nkey_file = \"{d}/household.key\"\n\
             engine_public_key = \"{ENGINE_PK}\"\n\
             [meter_agent]\nenabled = true\nmeter = \"m1\"\nmodbus = \"{addr}\"\n\
             inverter_unit = 1\nmeter_unit = 2\npoll_ms = 200\n",
            d = dir.display(),
            addr = sim.addr
        ),
    )
    .expect("write");

    // Subscribe before the agent starts.
    let mut opts = MqttOptions::new(format!("t-{grid}"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("voltshare/{grid}/readings/#"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = events.poll().await {
            break;
        }
    }

    let mut agent = tokio::process::Command::new(EXE)
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "off")
        .kill_on_drop(true)
        .spawn()
        .expect("agent starts");
    let reading = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                return p;
            }
        }
    })
    .await
    .expect("a reading within 30 s");
    assert_eq!(reading.topic, format!("voltshare/{grid}/readings/m1"));
    // Signed with the household key the agent created from the config.
    let key = controller::keys::read(&dir.join("household.key")).expect("key file");
    let env = SignedEnvelope::decode(&reading.payload).expect("envelope");
    env.verify(Domain::Reading, &key.verifying_key())
        .expect("signed by the household key");
    let r: Reading = decode_payload(&env.payload).expect("reading");
    assert_eq!(r.meter.to_string(), "m1");
    assert!(r.pv_wh.is_some(), "inverter configured: PV counter present");

    // SIGTERM: a clean stop.
    let pid = agent.id().expect("pid");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(15), agent.wait())
        .await
        .expect("stops within 15 s")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(dir.join("outbox-m1.db").exists());
    let _ = client.disconnect().await;
    let _ = std::fs::remove_dir_all(&dir);
}
