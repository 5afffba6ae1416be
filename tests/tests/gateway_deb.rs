//! The Debian package: built by cargo-deb from the already-built binary
//! (stripped, no cargo-deb warning, size-capped), installed with dpkg on
//! this machine, its units verified, the household gateway started with the
//! example configuration as the unit's ExecStart would (as the `voltshare`
//! user) against a Mosquitto with the deploy configuration, and two upgrades
//! while gateways run: integrity-checked copies of every live database, the
//! engine database migrated from the previous schema with its data kept —
//! all in deploy/scripts/deb-check, which this test runs. It installs a
//! package, so it needs root (CI runs as root; without root it fails);
//! `VOLTSHARE_DEB=0` skips it explicitly on a developer machine. It reuses
//! the `voltshare` and `voltshare-agent` binaries of the test build
//! (`cargo build -p controller --bins` first: a no-op when they are fresh);
//! the script checks that both are installed.

use std::process::Command;

#[test]
fn debian_package_builds_installs_and_starts() {
    if std::env::var("VOLTSHARE_DEB").is_ok_and(|v| v == "0") {
        eprintln!("gateway_deb: skipped (VOLTSHARE_DEB=0)");
        return;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        });
    // Not a silent pass: without root this fails, and only an explicit
    // VOLTSHARE_DEB=0 skips it.
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "gateway_deb needs root for dpkg (CI runs as root); set VOLTSHARE_DEB=0 to skip it"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Both binaries the package ships, in the target dir of this test.
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .parent()
        .and_then(std::path::Path::parent)
        .and_then(std::path::Path::parent)
        .expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-p", "controller", "--bins"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(&root)
        .status()
        .expect("running cargo build for the packaged binaries");
    assert!(built.success(), "cargo build -p controller --bins failed");
    let script = root.join("deploy/scripts/deb-check");
    let out = Command::new(&script)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("running deploy/scripts/deb-check");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deb-check failed:\n{text}");
    assert!(text.contains("deb-check: ok"), "{text}");
}
