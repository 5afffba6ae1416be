//! The real broker, secured as deploy/ configures it: each test starts its
//! own Mosquitto with deploy/mosquitto/voltshare.conf and deploy/mosquitto/acl
//! (only file paths and ports rewritten to a temporary directory and free
//! loopback ports; the system broker on 1883 is left alone), with
//! certificates made by deploy/scripts/voltshare-certs. The clients are
//! rumqttc over rustls, configured from the same settings a gateway's
//! `[broker]` section gives (`protocol::BrokerSecurity`).
//!
//! Shown here:
//! - the meter agent and the clearing engine connect natively over TLS, each
//!   with its own certificate, and a signed reading flows end to end: agent →
//!   broker → engine (verified, stored) → signed ack → agent (outbox row
//!   deleted);
//! - household A cannot publish on household B's topics: the broker drops the
//!   message, and a subscriber with full read rights never sees it, while A's
//!   publish on its own topic (sent right after) arrives;
//! - clients without valid credentials are refused: no client certificate, a
//!   certificate from another CA, plain TCP on the TLS port, a wrong password;
//! - a wrong CA file (the broker's certificate does not chain to it) fails
//!   with an error that says so, in the agent's stats and in the engine's
//!   start-up error; missing or unusable files are refused before anything
//!   connects, naming the key and the file;
//! - the gateway (`voltshare run` composition) connects over TLS: its meter
//!   agent's signed readings (natively, under the household's certificate)
//!   and its status reach the engine's subscriber;
//! - the gateway's Home Assistant role connects to a second Mosquitto (Home
//!   Assistant's own broker: TLS, username and password file, no ACL) and
//!   publishes the sensors' discovery configs, availability and state;
//!   after the gateway stops, the configs stay retained and the
//!   availability says `offline`.

use anyhow::{Context, Result, bail, ensure};
use controller::config::BrokerSecurity;
use protocol::BrokerSecurity as Settings;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Mosquitto process with the deploy configuration; killed on drop.
struct Broker {
    child: Child,
    dir: PathBuf,
    cert_port: u16,
    password_port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn certs(dir: &Path, args: &[&str]) -> Result<()> {
    run(Command::new(repo().join("deploy/scripts/voltshare-certs"))
        .args(args.iter().copied())
        .env("DIR", dir))
}

impl Broker {
    fn start(tag: &str) -> Result<Broker> {
        let dir =
            std::env::temp_dir().join(format!("voltshare-broker-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let d = dir.to_str().context("utf-8 temp dir")?;
        certs(&dir, &["ca", d])?;
        certs(&dir, &["broker", d, "localhost", "127.0.0.1"])?;
        for who in ["engine", "h01", "h02"] {
            certs(&dir, &["client", d, who])?;
        }
        // A second, foreign CA and a client it signed.
        let rogue = dir.join("rogue");
        let r = rogue.to_str().context("utf-8")?;
        certs(&rogue, &["ca", r])?;
        certs(&rogue, &["client", r, "h02"])?;
        run(Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(dir.join("passwd"))
            .args(["h01", "right-password"]))?;
        // Mosquitto may drop root privileges to its own user: let it read
        // these throw-away test files.
        for e in std::fs::read_dir(&dir)?.flatten() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o755))?;
        }

        let (cert_port, password_port) = (free_port(), free_port());
        let conf = std::fs::read_to_string(repo().join("deploy/mosquitto/voltshare.conf"))?
            .replace("/etc/mosquitto/voltshare/", &format!("{d}/"))
            .replace("listener 8883", &format!("listener {cert_port} 127.0.0.1"))
            .replace(
                "listener 8884",
                &format!("listener {password_port} 127.0.0.1"),
            );
        ensure!(
            conf.contains(&format!("{d}/acl")),
            "the deploy config names its ACL file"
        );
        std::fs::copy(repo().join("deploy/mosquitto/acl"), dir.join("acl"))?;
        std::fs::write(dir.join("mosquitto.conf"), conf)?;
        let log = std::fs::File::create(dir.join("mosquitto.log"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mosquitto (scripts/setup.d installs it)")?;
        let broker = Broker {
            child,
            dir,
            cert_port,
            password_port,
        };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", cert_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", password_port)).is_ok()
            {
                return Ok(broker);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "mosquitto did not listen: {}",
            std::fs::read_to_string(broker.dir.join("mosquitto.log")).unwrap_or_default()
        )
    }

    /// TLS with `who`'s certificate, as a gateway's `[broker]` section says.
    fn cert_security(&self, who: &str) -> Settings {
        Settings {
            tls: true,
            ca_file: Some(self.dir.join("ca.crt")),
            cert_file: Some(self.dir.join(format!("{who}.crt"))),
            key_file: Some(self.dir.join(format!("{who}.key"))),
            ..Settings::default()
        }
    }

    /// TLS (server checked) with a username and a password file.
    fn password_security(&self, user: &str, password: &str) -> Result<Settings> {
        let file = self.dir.join(format!("pw-{user}-{password}"));
        std::fs::write(&file, format!("{password}\n"))?;
        Ok(Settings {
            tls: true,
            ca_file: Some(self.dir.join("ca.crt")),
            username: Some(user.to_owned()),
            password_file: Some(file),
            ..Settings::default()
        })
    }
}

fn client(id: &str, port: u16, settings: &Settings) -> Result<(AsyncClient, EventLoop)> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    BrokerSecurity::load(settings.clone())?.apply(&mut opts)?;
    Ok(AsyncClient::new(opts, 16))
}

/// Polls until ConnAck (Ok with its code) or a connection error (Err).
async fn connect(el: &mut EventLoop) -> Result<ConnectReturnCode> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return Ok(a.code),
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => bail!("{e}"),
            }
        }
    })
    .await
    .context("connect timed out")?
}

/// A client subscribed to `filter` (QoS 1), forwarding every message it
/// gets as (topic, payload, retained).
async fn subscriber(
    id: &str,
    port: u16,
    settings: &Settings,
    filter: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>> {
    let (c, mut el) = client(id, port, settings)?;
    ensure!(
        connect(&mut el).await? == ConnectReturnCode::Success,
        "{id} connects"
    );
    c.subscribe(filter, QoS::AtLeastOnce).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The client lives as long as its event loop.
        let _client = c;
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
            }
        }
    });
    Ok(rx)
}

fn drive(mut el: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while el.poll().await.is_ok() {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn household_cannot_publish_on_another_households_topics() -> Result<()> {
    let broker = Broker::start("acl")?;
    let mut rx = subscriber(
        "engine-sub",
        broker.cert_port,
        &broker.cert_security("engine"),
        "voltshare/g/#",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (a, mut a_el) = client("h01-gw", broker.cert_port, &broker.cert_security("h01"))?;
    ensure!(
        connect(&mut a_el).await? == ConnectReturnCode::Success,
        "h01 with its own certificate connects"
    );
    let a_task = drive(a_el);
    // Forgeries first, on every kind of B's topic; then A's own order as the
    // control. The broker handles one connection's publishes in order, so
    // once the control has arrived a forgery can no longer come.
    for topic in [
        "voltshare/g/orders/h02",
        "voltshare/g/readings/h02-main",
        "voltshare/g/status/h02",
        "voltshare/g/acks/h02",
        "voltshare/g/results/900000",
    ] {
        a.publish(topic, QoS::AtLeastOnce, false, "forged by h01")
            .await?;
    }
    a.publish(
        "voltshare/g/orders/h01",
        QoS::AtLeastOnce,
        false,
        "own order",
    )
    .await?;

    let mut seen = Vec::new();
    let got_control = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((topic, payload, _)) = rx.recv().await {
            let done = topic == "voltshare/g/orders/h01";
            seen.push((topic, payload));
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    ensure!(
        got_control,
        "h01's own order reached the engine; seen {seen:?}"
    );
    // And nothing else arrives afterwards either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok((topic, payload, _)) = rx.try_recv() {
        seen.push((topic, payload));
    }
    let forged: Vec<_> = seen.iter().filter(|(_, p)| p == b"forged by h01").collect();
    ensure!(
        forged.is_empty(),
        "forged messages reached a subscriber: {forged:?}"
    );
    ensure!(seen.len() == 1, "only the control arrived: {seen:?}");

    // B itself may publish on its own order topic (the ACL is per household,
    // not a blanket deny).
    let (b, mut b_el) = client("h02-gw", broker.cert_port, &broker.cert_security("h02"))?;
    ensure!(connect(&mut b_el).await? == ConnectReturnCode::Success);
    let b_task = drive(b_el);
    b.publish(
        "voltshare/g/orders/h02",
        QoS::AtLeastOnce,
        false,
        "b's own order",
    )
    .await?;
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .context("b's order")?;
    ensure!(
        got.as_ref().map(|(t, ..)| t.as_str()) == Some("voltshare/g/orders/h02"),
        "{got:?}"
    );
    a_task.abort();
    b_task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_valid_credentials_are_refused() -> Result<()> {
    let broker = Broker::start("auth")?;
    let ca_only = Settings {
        tls: true,
        ca_file: Some(broker.dir.join("ca.crt")),
        ..Settings::default()
    };
    // 1. TLS but no client certificate.
    let (_c, mut el) = client("no-cert", broker.cert_port, &ca_only)?;
    ensure!(
        connect(&mut el).await.is_err(),
        "a client without a certificate was let in"
    );
    // 2. A certificate from another CA, even with a valid household name.
    let rogue = Settings {
        cert_file: Some(broker.dir.join("rogue/h02.crt")),
        key_file: Some(broker.dir.join("rogue/h02.key")),
        ..ca_only.clone()
    };
    let (_c, mut el) = client("rogue", broker.cert_port, &rogue)?;
    ensure!(
        connect(&mut el).await.is_err(),
        "a certificate from a foreign CA was accepted"
    );
    // 3. Plain TCP on the TLS port.
    let (_c, mut el) = client("plain", broker.cert_port, &Settings::default())?;
    ensure!(
        connect(&mut el).await.is_err(),
        "plain MQTT was accepted on the TLS listener"
    );
    // 4. Password listener: wrong password, no credentials, then the right one.
    let (_c, mut el) = client(
        "wrong-pw",
        broker.password_port,
        &broker.password_security("h01", "wrong")?,
    )?;
    let code = connect(&mut el).await;
    ensure!(
        !matches!(code, Ok(ConnectReturnCode::Success)),
        "a wrong password was accepted: {code:?}"
    );
    let (_c, mut el) = client("anon", broker.password_port, &ca_only)?;
    let code = connect(&mut el).await;
    ensure!(
        !matches!(code, Ok(ConnectReturnCode::Success)),
        "an anonymous client was accepted: {code:?}"
    );
    let (_c, mut el) = client(
        "right-pw",
        broker.password_port,
        &broker.password_security("h01", "right-password")?,
    )?;
    ensure!(
        connect(&mut el).await? == ConnectReturnCode::Success,
        "the right password is accepted"
    );
    // 5. And the certificate listener lets a proper gateway in (control).
    let (_c, mut el) = client("h01-ok", broker.cert_port, &broker.cert_security("h01"))?;
    ensure!(connect(&mut el).await? == ConnectReturnCode::Success);
    Ok(())
}

/// A household gateway's config (h01: meter agent against the Modbus
/// simulator at `modbus`, controller) on `broker`'s certificate listener,
/// with `extra` appended.
fn gateway_toml(broker: &Broker, modbus: std::net::SocketAddr, extra: &str) -> String {
    let engine_key = controller::keys::generate();
    let d = broker.dir.display();
    format!(
        r#"
grid = "lindenweg"
data_dir = "{d}/gw"

[broker]
host = "localhost"
port = {port}
tls = true
ca_file = "{d}/ca.crt"
cert_file = "{d}/h01.crt"
key_file = "{d}/h01.key"

[household]
id = "h01"
key_file = "{d}/gw/household.key"
engine_public_key = "{pk}"

[meter_agent]
enabled = true
meter = "h01-main"
modbus = "{modbus}"
inverter_unit = 1
poll_ms = 200

[controller]
enabled = true
min_sell_price = 100000
max_buy_price = 300000
latitude = 51.45
longitude = 7.01
{extra}"#,
        port = broker.cert_port,
        pk = hex::encode(engine_key.verifying_key().as_bytes()),
    )
}

/// The gateway composition over TLS: a household gateway config (meter agent
/// against the Modbus simulator, controller, status) pointed at the secured
/// broker; the engine's subscriber sees its signed readings and its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_connects_over_tls_with_its_certificate() -> Result<()> {
    let broker = Broker::start("gw")?;
    let mut rx = subscriber(
        "engine-sub",
        broker.cert_port,
        &broker.cert_security("engine"),
        "voltshare/lindenweg/#",
    )
    .await?;

    let clock: Arc<dyn protocol::Clock> = Arc::new(protocol::SystemClock);
    let sim = meter_agent::SimHousehold::from_seed(7);
    let (modbus, sim_task) =
        meter_agent::spawn_simulator("127.0.0.1:0".parse()?, sim, clock.clone()).await?;
    let text = gateway_toml(&broker, modbus, "");
    let path = broker.dir.join("gateway.toml");
    std::fs::write(&path, text)?;
    let cfg = controller::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gw = tokio::spawn(controller::gateway::run_gateway(cfg, clock, stop_rx));

    let (mut reading, mut status) = (false, false);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some((topic, payload, _)) = rx.recv().await {
            if topic == "voltshare/lindenweg/readings/h01-main" {
                let env = protocol::SignedEnvelope::decode(&payload).expect("a signed envelope");
                let r: protocol::Reading =
                    protocol::decode_payload(&env.payload).expect("a reading");
                assert_eq!(r.household.as_str(), "h01");
                reading = true;
            }
            if topic == "voltshare/lindenweg/status/h01" && payload == b"online" {
                status = true;
            }
            if reading && status {
                break;
            }
        }
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), gw).await;
    sim_task.abort();
    ensure!(
        reading,
        "no signed reading arrived over the agent's TLS connection"
    );
    ensure!(status, "the gateway's status did not arrive");
    Ok(())
}

/// An agent (household h01, its own certificate) and an engine (its own
/// certificate), both connecting natively over TLS; the engine verifies,
/// stores and acknowledges the agent's readings, and the agent deletes them
/// from its outbox on the signed ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_engine_connect_natively_and_a_reading_flows() -> Result<()> {
    let broker = Broker::start("native")?;
    let clock: Arc<dyn protocol::Clock> = Arc::new(protocol::SystemClock);
    let grid = protocol::GridId::new("lindenweg")?;
    let household = protocol::HouseholdId::new("h01")?;
    let meter = protocol::MeterId::new("h01-main")?;
    let (household_key, engine_key) = (controller::keys::generate(), controller::keys::generate());

    let mut ecfg = clearing::EngineConfig::new(grid.clone(), broker.dir.join("engine.db"));
    // An IP address as the host: rustls checks it against the certificate's
    // IP subject name (the agent below uses the DNS name).
    ecfg.broker_host = "127.0.0.1".into();
    ecfg.broker_port = broker.cert_port;
    ecfg.broker_security = broker.cert_security("engine");
    ecfg.households = vec![clearing::Enrolment::new(
        household.clone(),
        &household_key.verifying_key(),
        vec![meter.clone()],
    )];
    let engine = clearing::start_engine(ecfg, engine_key.clone(), clock.clone())
        .await
        .map_err(|e| anyhow::anyhow!("the engine did not start over TLS: {e}"))?;

    let sim = meter_agent::SimHousehold::from_seed(11);
    let (modbus, sim_task) =
        meter_agent::spawn_simulator("127.0.0.1:0".parse()?, sim, clock.clone()).await?;
    let cfg = agent_config(
        &broker,
        &grid,
        &household,
        &meter,
        modbus,
        &engine_key,
        "h01",
    );
    let stats = Arc::new(meter_agent::AgentStats::default());
    let (latest_tx, _latest) = tokio::sync::watch::channel(None);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(meter_agent::run_agent(
        cfg,
        household_key,
        clock.clone(),
        stop_rx,
        latest_tx,
        stats.clone(),
    ));

    let acked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if meter_agent::AgentStats::get(&stats.acked) >= 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    let _ = stop.send(true);
    let stopped = tokio::time::timeout(Duration::from_secs(10), agent).await;
    sim_task.abort();
    ensure!(
        acked,
        "no reading was acknowledged over TLS: acked {}, published {}, last MQTT error {:?}",
        meter_agent::AgentStats::get(&stats.acked),
        meter_agent::AgentStats::get(&stats.published),
        stats.last_mqtt_error()
    );
    ensure!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the agent did not stop cleanly: {stopped:?}"
    );
    let (stored,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM readings WHERE meter = ? AND household = ?")
            .bind(meter.as_str())
            .bind(household.as_str())
            .fetch_one(&engine.pool())
            .await?;
    ensure!(
        stored >= 3,
        "the engine stored {stored} readings of h01-main"
    );
    engine
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("engine shutdown: {e}"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn agent_config(
    broker: &Broker,
    grid: &protocol::GridId,
    household: &protocol::HouseholdId,
    meter: &protocol::MeterId,
    modbus: std::net::SocketAddr,
    engine_key: &ed25519_dalek::SigningKey,
    who: &str,
) -> meter_agent::AgentConfig {
    meter_agent::AgentConfig {
        grid: grid.clone(),
        household: household.clone(),
        meter: meter.clone(),
        modbus,
        inverter_unit: 1,
        meter_unit: 2,
        poll_every: Duration::from_millis(200),
        outbox_path: broker.dir.join(format!("outbox-{who}-{meter}.db")),
        outbox_max: 10_000,
        broker_host: "localhost".into(),
        broker_port: broker.cert_port,
        broker_security: broker.cert_security(who),
        engine_key: engine_key.verifying_key(),
        resend_after: Duration::from_secs(30),
    }
}

/// Whether a connection error says the broker's certificate does not chain
/// to the configured CA. Both test CAs carry the same name, so rustls finds
/// the "issuer" and reports the signature as bad; with differently named CAs
/// it says UnknownIssuer.
fn names_bad_issuer(e: &str) -> bool {
    e.contains("invalid peer certificate")
        && (e.contains("BadSignature") || e.contains("UnknownIssuer"))
}

/// A CA file that did not sign the broker's certificate: the agent never
/// connects and says why; the engine refuses to start and says why. Files
/// that are missing or hold the wrong thing are refused before anything
/// connects, naming the key and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_and_bad_files_fail_with_clear_errors() -> Result<()> {
    let broker = Broker::start("wrongca")?;
    let clock: Arc<dyn protocol::Clock> = Arc::new(protocol::SystemClock);
    let grid = protocol::GridId::new("lindenweg")?;
    let household = protocol::HouseholdId::new("h01")?;
    let meter = protocol::MeterId::new("h01-main")?;
    let engine_key = controller::keys::generate();
    let wrong_ca = Settings {
        ca_file: Some(broker.dir.join("rogue/ca.crt")),
        ..broker.cert_security("h01")
    };

    // The agent: TLS handshake refused on our side, reported in its stats.
    let sim = meter_agent::SimHousehold::from_seed(12);
    let (modbus, sim_task) =
        meter_agent::spawn_simulator("127.0.0.1:0".parse()?, sim, clock.clone()).await?;
    let mut cfg = agent_config(
        &broker,
        &grid,
        &household,
        &meter,
        modbus,
        &engine_key,
        "h01",
    );
    cfg.broker_security = wrong_ca.clone();
    let stats = Arc::new(meter_agent::AgentStats::default());
    let (latest_tx, _latest) = tokio::sync::watch::channel(None);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(meter_agent::run_agent(
        cfg.clone(),
        controller::keys::generate(),
        clock.clone(),
        stop_rx,
        latest_tx,
        stats.clone(),
    ));
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(e) = stats.last_mqtt_error() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the agent reported no connection error")?;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    sim_task.abort();
    ensure!(
        names_bad_issuer(&error),
        "the agent's error does not say the broker's certificate is not from the CA: {error}"
    );
    ensure!(
        meter_agent::AgentStats::get(&stats.mqtt_connects) == 0,
        "connected despite a wrong CA"
    );

    // The engine: start-up fails, and the error carries the TLS reason.
    let mut ecfg = clearing::EngineConfig::new(grid.clone(), broker.dir.join("engine.db"));
    ecfg.broker_host = "localhost".into();
    ecfg.broker_port = broker.cert_port;
    ecfg.broker_security = Settings {
        ca_file: Some(broker.dir.join("rogue/ca.crt")),
        ..broker.cert_security("engine")
    };
    let e = clearing::start_engine(ecfg.clone(), engine_key.clone(), clock.clone())
        .await
        .err()
        .context("the engine started with a CA that did not sign the broker")?
        .to_string();
    ensure!(
        names_bad_issuer(&e),
        "the engine's error does not name the certificate problem: {e}"
    );

    // Bad files, before any connection: the key and the file are named.
    let missing = broker.dir.join("nowhere/ca.crt");
    cfg.broker_security = Settings {
        ca_file: Some(missing.clone()),
        ..broker.cert_security("h01")
    };
    let (latest_tx, _latest) = tokio::sync::watch::channel(None);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let outbox = cfg.outbox_path.clone();
    let _ = std::fs::remove_file(&outbox);
    let r = meter_agent::run_agent(
        cfg.clone(),
        controller::keys::generate(),
        clock.clone(),
        stop_rx,
        latest_tx,
        Arc::new(meter_agent::AgentStats::default()),
    )
    .await;
    let msg = match r {
        Err(meter_agent::AgentError::BrokerSecurity(e)) => {
            ensure!(e.key == "ca_file", "{e}");
            ensure!(e.file.as_deref() == Some(missing.as_path()), "{e}");
            e.to_string()
        }
        other => bail!("a missing CA file was not refused up front: {other:?}"),
    };
    ensure!(
        msg.contains("ca_file") && msg.contains("nowhere/ca.crt"),
        "{msg}"
    );
    ensure!(
        !outbox.exists(),
        "the outbox was opened before the TLS files were checked"
    );

    // A key file given as the certificate: the engine names cert_file.
    ecfg.broker_security = Settings {
        cert_file: Some(broker.dir.join("engine.key")),
        ..broker.cert_security("engine")
    };
    let e = clearing::start_engine(ecfg.clone(), engine_key.clone(), clock.clone())
        .await
        .err()
        .context("a key file as certificate was accepted")?
        .to_string();
    ensure!(
        e.contains("cert_file") && e.contains("engine.key") && e.contains("no PEM certificate"),
        "{e}"
    );
    // Another household's key with this certificate: key_file is named.
    ecfg.broker_security = Settings {
        key_file: Some(broker.dir.join("h01.key")),
        ..broker.cert_security("engine")
    };
    let e = clearing::start_engine(ecfg, engine_key, clock)
        .await
        .err()
        .context("a key that does not fit the certificate was accepted")?
        .to_string();
    ensure!(e.contains("key_file") && e.contains("h01.key"), "{e}");
    Ok(())
}

/// A child process, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Home Assistant's own broker as a gateway meets it: a second Mosquitto
/// with one TLS listener (the test CA's server certificate) that takes
/// only a username and password (h01's, from the password file) and has no
/// ACL. Returns the process and its port.
fn home_assistant_broker(broker: &Broker) -> Result<(Killed, u16)> {
    let port = free_port();
    let d = broker.dir.display();
    let conf = broker.dir.join("ha-mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\nlistener {port} 127.0.0.1\n\
             certfile {d}/broker.crt\nkeyfile {d}/broker.key\ntls_version tlsv1.2\n\
             require_certificate false\nallow_anonymous false\npassword_file {d}/passwd\n\
             persistence false\n"
        ),
    )?;
    let log = std::fs::File::create(broker.dir.join("ha-mosquitto.log"))?;
    let child = Killed(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mosquitto (scripts/setup.d installs it)")?,
    );
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((child, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "Home Assistant's mosquitto did not listen: {}",
        std::fs::read_to_string(broker.dir.join("ha-mosquitto.log")).unwrap_or_default()
    )
}

/// The gateway's Home Assistant role over TLS with a username and a
/// password file, against a real Mosquitto standing in for Home
/// Assistant's: the six sensors' discovery configs arrive (pointing at the
/// household's state and availability topics), the availability goes
/// online, the state carries the meter agent's latest reading, and after
/// the gateway stops a newcomer (Home Assistant restarting) still finds the
/// configs retained and the availability `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_gets_the_sensors_over_tls_with_a_password() -> Result<()> {
    let broker = Broker::start("ha")?;
    let (_ha_broker, ha_port) = home_assistant_broker(&broker)?;
    let ha = broker.password_security("h01", "right-password")?;
    let mut rx = subscriber("ha-live", ha_port, &ha, "#").await?;

    let clock: Arc<dyn protocol::Clock> = Arc::new(protocol::SystemClock);
    let sim = meter_agent::SimHousehold::from_seed(11);
    let (modbus, sim_task) =
        meter_agent::spawn_simulator("127.0.0.1:0".parse()?, sim, clock.clone()).await?;
    let password = broker.dir.join("ha-password");
    std::fs::write(&password, "right-password\n")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600))?;
    }
    let d = broker.dir.display();
    let text = gateway_toml(
        &broker,
        modbus,
        &format!(
            r#"
[home_assistant]
enabled = true
host = "localhost"
port = {ha_port}
tls = true
ca_file = "{d}/ca.crt"
username = "h01"
password_file = "{d}/ha-password"
publish_every_ms = 1000
"#
        ),
    );
    let path = broker.dir.join("gateway.toml");
    std::fs::write(&path, text)?;
    let cfg = controller::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(cfg.roles().contains(&"home_assistant"), "{:?}", cfg.roles());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gw = tokio::spawn(controller::gateway::run_gateway(cfg, clock, stop_rx));

    let state_topic = "voltshare/lindenweg/ha/h01/state";
    let availability = "voltshare/lindenweg/ha/h01/availability";
    let mut configs = std::collections::BTreeMap::new();
    let (mut online, mut state) = (false, None::<serde_json::Value>);
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some((topic, payload, _)) = rx.recv().await {
            if topic.starts_with("homeassistant/sensor/") && topic.ends_with("/config") {
                let v: serde_json::Value =
                    serde_json::from_slice(&payload).expect("discovery config is JSON");
                configs.insert(topic, v);
            } else if topic == availability && payload == b"online" {
                online = true;
            } else if topic == state_topic {
                let v: serde_json::Value = serde_json::from_slice(&payload).expect("state is JSON");
                // The first states may precede the agent's first reading.
                if v.get("power_w").is_some_and(|p| p.is_number()) {
                    state = Some(v);
                }
            }
            if configs.len() == 6 && online && state.is_some() {
                break;
            }
        }
    })
    .await;
    ensure!(
        configs.len() == 6,
        "discovery configs that arrived: {:?}",
        configs.keys()
    );
    for (topic, c) in &configs {
        ensure!(
            topic.starts_with("homeassistant/sensor/voltshare_lindenweg_h01/"),
            "{topic}"
        );
        ensure!(c["state_topic"] == state_topic, "{topic}: {c}");
        ensure!(c["availability_topic"] == availability, "{topic}: {c}");
    }
    ensure!(online, "the availability never went online");
    let state = state.context("no state with the agent's reading arrived")?;
    for key in ["power_w", "import_kwh", "export_kwh"] {
        ensure!(state[key].is_number(), "{key} in {state}");
    }

    // The gateway stops; Home Assistant (re)connecting finds what it needs.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), gw).await;
    sim_task.abort();
    let mut rx = subscriber("ha-later", ha_port, &ha, "#").await?;
    let (mut retained_configs, mut offline) = (0, false);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((topic, payload, retained)) = rx.recv().await {
            if retained && configs.contains_key(&topic) {
                retained_configs += 1;
            }
            if retained && topic == availability && payload == b"offline" {
                offline = true;
            }
            if retained_configs == 6 && offline {
                break;
            }
        }
    })
    .await;
    ensure!(
        retained_configs == 6,
        "retained configs: {retained_configs}"
    );
    ensure!(offline, "the availability was not left offline");
    Ok(())
}
