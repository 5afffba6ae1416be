//! Enrolment from the command line, with the real binary: `keygen` (mode
//! 0600), `enroll` (a signed request), `clearing approve` into an engine
//! database, `clearing keys`, `clearing rotate` and `clearing revoke`; bad
//! requests and unknown keys exit with code 2 and a message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn voltshare(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_voltshare"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("runs")
}

fn ok(args: &[&str]) -> serde_json::Value {
    let out = voltshare(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn scratch() -> PathBuf {
    let n: u64 = rand::random();
    let dir = std::env::temp_dir().join(format!("vs-cli-enrol-{n:016x}"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[test]
fn keygen_enroll_approve_rotate_revoke() {
    let dir = scratch();
    let key = dir.join("nina.key");
    let kg = ok(&["keygen", "--out", s(&key)]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let req = dir.join("nina.req");
    let en = ok(&[
        "enroll",
        "--key",
        s(&key),
        "--grid",
        "g1",
        "--household",
        "nina",
        "--meter",
        "nina-grid",
        "--meter",
        "nina-pv",
        "--out",
        s(&req),
    ]);
    assert_eq!(en["key_id"], kg["key_id"]);

    // The engine's database (created and migrated as the engine does).
    let db = dir.join("engine.db");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        clearing::store::open(&db)
            .await
            .expect("open")
            .close()
            .await;
    });
    // Another grid is refused when the operator names the grid.
    let out = voltshare(&[
        "clearing",
        "approve",
        s(&req),
        "--db",
        s(&db),
        "--grid",
        "g2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grid"));

    let ap = ok(&[
        "clearing",
        "approve",
        s(&req),
        "--db",
        s(&db),
        "--grid",
        "g1",
    ]);
    assert_eq!(ap["key_id"], kg["key_id"]);
    assert_eq!(ap["meters"], serde_json::json!(["nina-grid", "nina-pv"]));
    // Twice: refused, naming the household.
    let out = voltshare(&["clearing", "approve", s(&req), "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nina"));

    // Rotate to a new key.
    let key2 = dir.join("nina2.key");
    let kg2 = ok(&["keygen", "--out", s(&key2)]);
    let req2 = dir.join("nina2.req");
    ok(&[
        "enroll",
        "--key",
        s(&key2),
        "--grid",
        "g1",
        "--household",
        "nina",
        "--meter",
        "nina-grid",
        "--out",
        s(&req2),
    ]);
    let rot = ok(&["clearing", "rotate", s(&req2), "--db", s(&db)]);
    assert_eq!(rot["revoked"], serde_json::json!([kg["key_id"]]));
    let keys = ok(&["clearing", "keys", "--db", s(&db)]);
    let keys = keys["keys"].as_array().expect("keys").clone();
    assert_eq!(keys.len(), 2);
    let revoked = |id: &serde_json::Value| {
        keys.iter()
            .find(|k| k["key_id"] == *id)
            .map(|k| !k["revoked_at"].is_null())
    };
    assert_eq!(revoked(&kg["key_id"]), Some(true));
    assert_eq!(revoked(&kg2["key_id"]), Some(false));

    // Revoke by key id; an unknown id is a usage error.
    let rv = ok(&[
        "clearing",
        "revoke",
        "--db",
        s(&db),
        "--key-id",
        kg2["key_id"].as_str().expect("id"),
    ]);
    assert_eq!(rv["revoked"], serde_json::json!([kg2["key_id"]]));
    let out = voltshare(&[
        "clearing",
        "revoke",
        "--db",
        s(&db),
        "--key-id",
        "0000000000000000",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A missing database is not created by a typo.
    let out = voltshare(&["clearing", "keys", "--db", s(&dir.join("nope.db"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.join("nope.db").exists());
    // A tampered request is refused.
    let text = std::fs::read_to_string(&req2).expect("read");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut env = v["envelope"].as_str().expect("hex").to_owned();
    let last = env.pop().expect("nonempty");
    env.push(if last == '0' { '1' } else { '0' });
    let tampered = dir.join("tampered.req");
    std::fs::write(
        &tampered,
        serde_json::json!({ "envelope": env }).to_string(),
    )
    .expect("write");
    let out = voltshare(&["clearing", "approve", s(&tampered), "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
