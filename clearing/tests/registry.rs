//! The enrolment registry on a real SQLite file: weak and malformed keys are
//! refused, a replaced key is revoked (and messages signed with it are
//! refused as `revoked_key`), and a meter cannot change households.

mod common;

use clearing::intake::{Inbound, Intake};
use clearing::registry::Registry;
use clearing::{ConfigError, EngineConfig, EngineError, Enrolment, RejectReason, store};
use common::*;
use protocol::{GridId, KeyId, UnixMs};
use std::sync::Arc;

#[tokio::test]
async fn key_rotation_revokes_and_weak_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = store::open(&dir.path().join("reg.db")).await.expect("open");
    let grid = GridId::new("reg").expect("id");
    let old = household("alice", 1);
    let new = household("alice", 2);

    let reg = Registry::sync(&pool, &[old.enrolment()], UnixMs(T0))
        .await
        .expect("sync");
    let old_id = KeyId::of(&old.key.verifying_key());
    assert!(!reg.key(&old_id).expect("enrolled").revoked);

    // The household's key changes in the configuration.
    let reg = Arc::new(
        Registry::sync(&pool, &[new.enrolment()], UnixMs(T0 + 1))
            .await
            .expect("sync"),
    );
    assert!(reg.key(&old_id).expect("kept for history").revoked);
    assert!(
        !reg.key(&KeyId::of(&new.key.verifying_key()))
            .expect("new")
            .revoked
    );
    // Listing the old key again does not revive it.
    let reg2 = Registry::sync(&pool, &[old.enrolment()], UnixMs(T0 + 2))
        .await
        .expect("sync");
    assert!(reg2.key(&old_id).expect("old").revoked);

    let rules = intake_rules(&grid);
    let mut intake = Intake::new(rules, reg, pool.clone());
    let msg = Inbound {
        topic: old.reading_topic(&grid),
        payload: old.sign_reading(&old.reading(&grid, 1, T0, 1, 1)),
    };
    let out = intake
        .process(vec![msg], UnixMs(T0))
        .await
        .expect("process");
    assert_eq!(out.rejects.get(&RejectReason::RevokedKey), Some(&1));
    assert_eq!(out.readings, 0);

    // A weak (small-order) key: the identity point.
    let mut weak = old.enrolment();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    weak.public_key = hex::encode(identity);
    assert!(matches!(
        weak.verifying_key(),
        Err(ConfigError::BadKey { .. })
    ));
    let err = Registry::sync(&pool, &[weak], UnixMs(T0))
        .await
        .expect_err("weak key refused");
    assert!(matches!(err, EngineError::Config(_)), "{err}");
    let mut junk = old.enrolment();
    junk.public_key = "zz".into();
    assert!(junk.verifying_key().is_err());

    // A meter cannot move to another household.
    let mut thief = household("bob", 3).enrolment();
    thief.meters = vec![new.meter.clone()];
    let moved: Enrolment = thief;
    assert!(
        Registry::sync(&pool, &[new.enrolment(), moved], UnixMs(T0))
            .await
            .is_err()
    );
}

#[test]
fn config_validation_names_the_key() {
    let grid = GridId::new("cfg").expect("id");
    let mut cfg = EngineConfig::new(grid, "/tmp/x.db");
    assert!(cfg.validate().is_ok());
    cfg.interval_ms = 0;
    assert!(
        cfg.validate()
            .expect_err("bad")
            .to_string()
            .contains("interval_ms")
    );
    cfg.interval_ms = LEN;
    cfg.cron = Some("not a cron".into());
    assert!(
        cfg.validate()
            .expect_err("bad")
            .to_string()
            .contains("cron")
    );
    cfg.cron = Some("0 */15 * * * *".into());
    assert!(cfg.validate().is_ok());
    let a = household("alice", 1);
    cfg.households = vec![a.enrolment(), a.enrolment()];
    assert!(
        cfg.validate()
            .expect_err("dup")
            .to_string()
            .contains("twice")
    );
}
