//! The suite's JSON report. Each test writes its own section to
//! `target/fault-report.d/<section>.json`; the sections are then merged
//! into `target/fault-report.json` (written to a temporary file and
//! renamed, so a reader never sees half a file) and the whole report is
//! printed. Test binaries run one after another, so the report printed by
//! the last one is the complete one; `cat target/fault-report.json` shows
//! it at any time.

use serde_json::{Map, Value};
use std::path::PathBuf;

/// The cargo target directory this test executable was built into.
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash>
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from)
        .or_else(|| exe.ancestors().nth(3).map(PathBuf::from))
        .expect("a target directory above the test executable")
}

/// Writes one section and prints the merged report.
pub fn write_section(section: &str, value: Value) {
    let dir = target_dir().join("fault-report.d");
    std::fs::create_dir_all(&dir).expect("report directory");
    let text = serde_json::to_string_pretty(&value).expect("report JSON");
    std::fs::write(dir.join(format!("{section}.json")), text).expect("report section");
    let mut all = Map::new();
    all.insert("long".into(), Value::Bool(crate::util::long()));
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("report directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for p in names {
        let Some(name) = p.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let parsed = std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        if let Some(v) = parsed {
            all.insert(name, v);
        }
    }
    let merged = serde_json::to_string_pretty(&Value::Object(all)).expect("report JSON");
    let out = target_dir().join("fault-report.json");
    let tmp = target_dir().join(format!(
        "fault-report.json.{}.{section}.tmp",
        std::process::id()
    ));
    std::fs::write(&tmp, &merged).expect("report file");
    std::fs::rename(&tmp, &out).expect("report file");
    println!(
        "== fault report section `{section}`:\n{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    println!("== fault report so far ({}):\n{merged}", out.display());
}
