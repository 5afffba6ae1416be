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
pub fn write_section(section: &str, mut value: Value) {
    // Each section says which variant measured it (sections of runs with
    // and without VOLTSHARE_LONG=1 meet in one report).
    if let Value::Object(m) = &mut value {
        m.insert("long".into(), Value::Bool(crate::util::long()));
    }
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
    let summary = summary(&all);
    all.insert("summary".into(), summary);
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

/// The sections the figures live in, by the test that measures them.
pub const SECTIONS: [(&str, &str); 11] = [
    ("engine_crash", "fault_crash: 200 SIGKILLs of the engine"),
    (
        "engine_crash_chain",
        "fault_crash: SIGKILLs while settling on Anvil",
    ),
    (
        "gateway_power_loss",
        "fault_power_loss: 100 SIGKILLs of the meter agent",
    ),
    ("outages", "fault_outage: broker 10 min, engine 30 min"),
    ("chain_rpc_outage", "fault_outage: chain RPC 15 min"),
    ("duplicates", "fault_adversarial: every message three times"),
    (
        "adversarial",
        "fault_adversarial: bad cases by reason, false rejections",
    ),
    ("fuzz_corpus", "fault_fuzz_corpus: harnesses on stable"),
    ("fuzz_libfuzzer", "scripts/fuzz-ci: libFuzzer"),
    ("determinism_books", "fault_determinism: shuffled books"),
    ("determinism_replay", "fault_determinism: replayed week"),
];

/// Totals over every section of the figures that must be zero, and which
/// sections are missing (their test has not run into this target dir).
fn summary(all: &Map<String, Value>) -> Value {
    const MUST_BE_ZERO: [&str; 11] = [
        "readings_lost",
        "readings_duplicated",
        "readings_gaps",
        "readings_stored_out_of_order",
        "duplicate_settlements",
        "unsettled",
        "reclear_mismatches",
        "digest_mismatches",
        "batches_on_chain_not_in_database",
        "false_rejections",
        "mismatches",
    ];
    fn walk(v: &Value, key: &str, total: &mut u64) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == key {
                        *total += x.as_u64().unwrap_or(0);
                    } else {
                        walk(x, key, total);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, key, total)),
            _ => {}
        }
    }
    let mut out = Map::new();
    for key in MUST_BE_ZERO {
        let mut total = 0;
        for (name, v) in all {
            if name != "summary" {
                walk(v, key, &mut total);
            }
        }
        out.insert(key.to_owned(), Value::from(total));
    }
    let missing: Vec<Value> = SECTIONS
        .iter()
        .filter(|(s, _)| !all.contains_key(*s))
        .map(|(s, by)| Value::from(format!("{s} ({by})")))
        .collect();
    out.insert("sections_missing".into(), Value::Array(missing));
    Value::Object(out)
}
