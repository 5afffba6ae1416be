//! Item 2 of the fault suite: gateway power loss.
//!
//! The meter agent is the real `voltshare` binary (`voltshare run --config`
//! with only the `[meter_agent]` role, polling every 100 ms, so that a kill
//! lands in or near an outbox write most of the time). It polls a Modbus TCP
//! SunSpec simulator in this process and publishes through the real
//! Mosquitto on 127.0.0.1:1883 to an in-process clearing engine (real
//! SQLite). The agent is killed with SIGKILL 100 times at random points
//! (after 150–700 ms of running) and started again each time.
//!
//! Afterwards (the agent started once more to deliver its backlog): every
//! reading the agent accepted (issued a sequence number for, in its
//! outbox's `meter_seq`) up to the last crash is stored by the engine, any
//! later one is still in the outbox, and the
//! engine's sequence numbers are exactly 1..=last: no gaps, no repeats, no
//! number issued twice for different readings (which the engine would
//! refuse as `seq_conflict`).

use protocol::{Clock, SystemClock};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use voltshare_tests::checks::{self, audit_seqs};
use voltshare_tests::procs::Proc;
use voltshare_tests::sender::TestHousehold;
use voltshare_tests::util::{self, Rng};
use voltshare_tests::{engine, report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_agent_killed_mid_write_loses_nothing() {
    util::require_system_mosquitto();
    // The figure in every run.
    let kills: u32 = 100;
    let grid = util::unique_grid("power");
    let dir = util::temp_dir("power-loss");
    let home = TestHousehold::new("power", 0);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let eng = engine::start(
        engine::config(&grid, std::slice::from_ref(&home), &dir, 1883),
        clock.clone(),
    )
    .await;
    let (modbus, sim) = meter_agent::spawn_simulator(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        meter_agent::SimHousehold::from_seed(7),
        clock.clone(),
    )
    .await
    .expect("simulator");
    let key_file = dir.join("household.key");
    controller::keys::write_new(&key_file, &home.key).expect("household key file");
    let meter = home.meters[0].clone();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "grid = \"{grid}\"\ndata_dir = \"{d}/gw\"\n\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\n\n\
             [household]\nid = \"{h}\"\nkey_file = \"{k}\"\nengine_public_key = \"{e}\"\n\n\
             [meter_agent]\nenabled = true\nmeter = \"{meter}\"\nmodbus = \"{modbus}\"\ninverter_unit = 1\nmeter_unit = 2\npoll_ms = 100\n",
            d = dir.display(),
            h = home.id,
            k = key_file.display(),
            e = hex::encode(eng.engine_key().as_bytes()),
        ),
    )
    .expect("agent config");
    let outbox = dir.join("gw").join(format!("outbox-{meter}.db"));
    let log = dir.join("agent.log");
    let mut agent = Proc::voltshare_run("meter agent", &config, &log);

    let mut rng = Rng::new(0x5eed_0002);
    let mut last_seen = Vec::new();
    let watch = protocol::Stopwatch::start();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.range(150, 700))).await;
        assert!(
            agent.running(),
            "the agent exited by itself:\n{}",
            agent.log_tail(3000)
        );
        agent.kill9();
        if outbox.exists() {
            last_seen.push(checks::outbox_state(&outbox, &meter).await.0);
        }
        tokio::time::sleep(Duration::from_millis(rng.range(10, 150))).await;
        agent = Proc::voltshare_run("meter agent", &config, &log);
    }
    let kill_seconds = watch.elapsed().as_secs_f64();
    // The last crash: every reading accepted up to it must reach the
    // engine. The agent is started once more to deliver its backlog (it
    // goes on taking readings meanwhile, which may still wait in the
    // outbox at the end: they were accepted after the last crash).
    agent.kill9();
    let (accepted_by_last_crash, _) = checks::outbox_state(&outbox, &meter).await;
    agent = Proc::voltshare_run("meter agent", &config, &log);
    let pool = eng.pool();
    let drained = util::wait_for(
        "the backlog of the last crash to be delivered",
        Duration::from_secs(60),
        || async {
            let stored = checks::engine_seqs(&pool, &meter).await;
            let through = stored
                .iter()
                .filter(|s| **s <= accepted_by_last_crash)
                .count() as u64;
            (through == accepted_by_last_crash).then_some(true)
        },
    )
    .await;
    agent.kill9();
    let (last, waiting) = checks::outbox_state(&outbox, &meter).await;
    let stored = checks::engine_seqs(&pool, &meter).await;
    let audit = audit_seqs(&meter, last, &stored, &waiting);
    let delivered_by_last_crash = stored
        .iter()
        .filter(|s| **s <= accepted_by_last_crash)
        .count() as u64;
    let snapshot = eng.counters().snapshot();
    let monotonic = last_seen.windows(2).all(|w| w[0] <= w[1]);
    report::write_section(
        "gateway_power_loss",
        json!({
            "kills": kills,
            "seconds": kill_seconds,
            "readings_expected": audit.expected,
            "readings_delivered": audit.delivered,
            "readings_waiting": audit.waiting,
            "readings_lost": audit.lost,
            "readings_duplicated": audit.unexpected,
            "gaps": audit.gaps,
            "engine_duplicates_acked": snapshot.duplicates,
            "engine_rejects": snapshot.rejects,
            "accepted_by_last_crash": accepted_by_last_crash,
            "delivered_of_those": delivered_by_last_crash,
            "backlog_delivered": drained,
            "last_seq_never_went_back": monotonic,
        }),
    );
    assert!(
        audit.expected >= u64::from(kills),
        "the agent made too little progress: {audit:?}"
    );
    assert_eq!(audit.lost, 0, "readings lost: {audit:?}");
    assert_eq!(
        audit.unexpected, 0,
        "readings repeated or never issued: {audit:?}"
    );
    assert_eq!(audit.gaps, 0, "gaps in the sequence: {audit:?}");
    assert_eq!(
        delivered_by_last_crash, accepted_by_last_crash,
        "every reading accepted before the last crash delivered"
    );
    assert_eq!(
        audit.delivered + audit.waiting,
        audit.expected,
        "every accepted reading delivered or still in the outbox: {audit:?}"
    );
    assert!(
        snapshot.rejects.is_empty(),
        "the engine refused readings of the agent: {:?}",
        snapshot.rejects
    );
    assert!(
        monotonic,
        "a sequence number went backwards across a crash: {last_seen:?}"
    );
    sim.abort();
    eng.shutdown().await.expect("engine shutdown");
}
