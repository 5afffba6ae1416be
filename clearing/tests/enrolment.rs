//! Enrolment by signed request, against a running engine (real SQLite file,
//! real Mosquitto on 127.0.0.1:1883): the operator approves, rotates and
//! revokes through a second connection pool to the engine's database (as
//! `voltshare clearing …` does from another process), and the running
//! engine follows without a restart: an approved key signs from the next
//! batch on, a revoked key's messages are refused and counted as
//! `revoked_key` (not acknowledged: see the test), and a restart with the
//! original configuration undoes none of it.

mod common;

use clearing::enrol::{self, EnrolError, EnrolmentRequest};
use clearing::store;
use common::*;
use protocol::{AckOutcome, GridId, KeyId, ManualClock, MeterId, UnixMs};
use std::sync::Arc;

fn request(grid: &GridId, h: &Household, meters: Vec<MeterId>) -> EnrolmentRequest {
    EnrolmentRequest {
        grid: grid.clone(),
        household: h.id.clone(),
        public_key: hex::encode(h.key.verifying_key().as_bytes()),
        meters,
        settlement_address: Some("0x00000000000000000000000000000000000000a1".into()),
        ts: UnixMs(T0),
    }
}

#[test]
fn requests_are_checked_before_any_database() {
    let grid = GridId::new("enrol").expect("id");
    let n = household("nina", 40);
    let file =
        enrol::make_request(&n.key, &request(&grid, &n, vec![n.meter.clone()])).expect("request");
    let ok = enrol::verify_request(&file, Some(&grid)).expect("valid");
    assert_eq!(ok.key_id, KeyId::of(&n.key.verifying_key()));

    // Signed by another key than the one it enrols: refused when made, and
    // when forged by hand.
    let other = household("oscar", 41);
    assert!(enrol::make_request(&other.key, &request(&grid, &n, vec![])).is_err());
    let forged = protocol::SignedEnvelope::sign_json(
        protocol::Domain::Enrolment,
        &other.key,
        &request(&grid, &n, vec![]),
    )
    .expect("sign");
    let forged = serde_json::json!({ "envelope": hex::encode(forged.encode()) }).to_string();
    assert!(matches!(
        enrol::verify_request(&forged, None),
        Err(EnrolError::WrongSigner { .. })
    ));
    // Signed for another domain (a reading signature reused).
    let wrong_domain = protocol::SignedEnvelope::sign_json(
        protocol::Domain::Reading,
        &n.key,
        &request(&grid, &n, vec![]),
    )
    .expect("sign");
    let wrong_domain =
        serde_json::json!({ "envelope": hex::encode(wrong_domain.encode()) }).to_string();
    assert!(matches!(
        enrol::verify_request(&wrong_domain, None),
        Err(EnrolError::Envelope(_))
    ));
    // Another grid; a bad settlement address; not a request file.
    let elsewhere = GridId::new("elsewhere").expect("id");
    assert!(matches!(
        enrol::verify_request(&file, Some(&elsewhere)),
        Err(EnrolError::WrongGrid { .. })
    ));
    let mut bad_addr = request(&grid, &n, vec![]);
    bad_addr.settlement_address = Some("not an address".into());
    let bad_addr = enrol::make_request(&n.key, &bad_addr).expect("signs");
    assert!(matches!(
        enrol::verify_request(&bad_addr, None),
        Err(EnrolError::Field {
            field: "settlement_address",
            ..
        })
    ));
    assert!(matches!(
        enrol::verify_request("{}", None),
        Err(EnrolError::File(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_rotate_and_revoke_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = unique_grid("enrol");
    let a = household("alice", 1);
    let clock = Arc::new(ManualClock::new(UnixMs(T0)));
    let cfg = config(&grid, dir.path(), &[&a]);
    let engine = start(cfg.clone(), clock.clone()).await;
    let mut client = TestClient::connect(&grid, "enrol").await;
    // The operator's own connection, as from another process.
    let operator = store::open(&cfg.db_path).await.expect("open");

    let n = household("nina", 40);
    let send_n = |key: &Household, seq: u64| {
        let signer = Household {
            key: key.key.clone(),
            ..n.clone()
        };
        (
            n.reading_topic(&grid),
            signer.sign_reading(&n.reading(&grid, seq, T0, 1_000 + seq, 0)),
        )
    };
    // Not enrolled yet: refused as unknown_key, and (unauthenticated) not
    // acknowledged.
    let (t, p) = send_n(&n, 1);
    client.publish(t, p).await;
    let counters = engine.counters();
    eventually(10, "unknown key counted", || {
        let c = counters.clone();
        async move { c.snapshot().rejected(clearing::RejectReason::UnknownKey) == 1 }
    })
    .await;

    // Approve: the very next message is accepted.
    let req = enrol::verify_request(
        &enrol::make_request(&n.key, &request(&grid, &n, vec![n.meter.clone()])).expect("req"),
        Some(&grid),
    )
    .expect("valid");
    enrol::approve(&operator, &req, UnixMs(T0))
        .await
        .expect("approve");
    let (t, p) = send_n(&n, 1);
    client.publish(t, p).await;
    assert_eq!(client.acks(1, 10).await[0].1.outcome, AckOutcome::Accepted);
    // Approving the same household again is refused (rotate instead).
    assert!(matches!(
        enrol::approve(&operator, &req, UnixMs(T0)).await,
        Err(EnrolError::HouseholdExists(_))
    ));
    // A meter cannot be taken from another household.
    let thief = household("trent", 42);
    let steal = enrol::verify_request(
        &enrol::make_request(&thief.key, &request(&grid, &thief, vec![a.meter.clone()]))
            .expect("req"),
        None,
    )
    .expect("valid");
    assert!(matches!(
        enrol::approve(&operator, &steal, UnixMs(T0)).await,
        Err(EnrolError::MeterTaken { .. })
    ));

    // Rotate to a new key: the old one is refused, the new one accepted.
    let n2 = Household {
        key: household("nina", 43).key,
        ..n.clone()
    };
    let rot = enrol::verify_request(
        &enrol::make_request(&n2.key, &request(&grid, &n2, vec![])).expect("req"),
        None,
    )
    .expect("valid");
    let revoked = enrol::rotate(&operator, &rot, UnixMs(T0 + 1))
        .await
        .expect("rotate");
    assert_eq!(revoked, vec![KeyId::of(&n.key.verifying_key())]);
    // A revoked key's message is counted but not acknowledged: an ack
    // would let a stolen, revoked key still empty the household's outbox.
    let (t, p) = send_n(&n, 2);
    client.publish(t, p).await;
    eventually(10, "revoked key counted", || {
        let c = counters.clone();
        async move { c.snapshot().rejected(clearing::RejectReason::RevokedKey) == 1 }
    })
    .await;
    let (t, p) = send_n(&n2, 2);
    client.publish(t, p).await;
    let ack = client.acks(1, 10).await;
    assert_eq!(
        (ack[0].1.seq, &ack[0].1.outcome),
        (2, &AckOutcome::Accepted)
    );
    // A revoked key cannot be enrolled again.
    assert!(matches!(
        enrol::rotate(&operator, &req, UnixMs(T0 + 2)).await,
        Err(EnrolError::KeyExists(_))
    ));

    // Revoke a configured household's key at run time.
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 1, T0, 10, 0)),
        )
        .await;
    assert_eq!(client.acks(1, 10).await[0].1.outcome, AckOutcome::Accepted);
    let a_key = KeyId::of(&a.key.verifying_key());
    enrol::revoke_key(&operator, &a_key, UnixMs(T0 + 3))
        .await
        .expect("revoke");
    client
        .publish(
            a.reading_topic(&grid),
            a.sign_reading(&a.reading(&grid, 2, T0, 20, 0)),
        )
        .await;
    eventually(10, "second revoked key counted", || {
        let c = counters.clone();
        async move { c.snapshot().rejected(clearing::RejectReason::RevokedKey) == 2 }
    })
    .await;
    let a_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings WHERE meter = ?")
        .bind(a.meter.as_str())
        .fetch_one(&operator)
        .await
        .expect("count");
    assert_eq!(a_rows, 1, "the revoked key's reading is not stored");
    assert!(
        engine
            .registry()
            .key(&a_key)
            .expect("kept for history")
            .revoked
    );
    assert!(matches!(
        enrol::revoke_key(&operator, &KeyId("0000000000000000".into()), UnixMs(T0)).await,
        Err(EnrolError::NoSuchKey(_))
    ));
    engine.shutdown().await.expect("shutdown");

    // A restart with the same configuration neither revives alice's key nor
    // revokes nina's operator-approved one.
    let engine = start(cfg, clock).await;
    let reg = engine.registry();
    assert!(reg.key(&a_key).expect("a").revoked);
    assert!(
        !reg.key(&KeyId::of(&n2.key.verifying_key()))
            .expect("n2")
            .revoked
    );
    assert_eq!(reg.household_of(&n.meter), Some(&n.id));
    let keys = enrol::list_keys(&operator).await.expect("list");
    assert_eq!(keys.len(), 3, "{keys:?}");
    // The approved requests are kept, signed, for audit.
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT envelope FROM enrolment_requests ORDER BY approved_at")
            .fetch_all(&operator)
            .await
            .expect("rows");
    assert_eq!(stored, vec![req.envelope.clone(), rot.envelope.clone()]);
    engine.shutdown().await.expect("shutdown");
    operator.close().await;
}
