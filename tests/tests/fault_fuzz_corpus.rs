//! Item 6 of the fault suite, on stable Rust: every fuzz target's harness
//! (`fuzz/src/{wire,regmap,config}.rs`, included here by path) runs on
//!
//! - every file of the target's committed seeds in `fuzz/seeds/<target>/`
//!   and of its local corpus `fuzz/corpus/<target>/` (what `scripts/fuzz`
//!   found on this machine; not committed), and
//! - generated seeds (valid envelopes, readings, orders, acks, results,
//!   register maps, gateway configs) and a few thousand seeded mutations of
//!   each (bit flips, truncations, splices, byte insertions), 20 000 in all
//!   by default and 200 000 with `VOLTSHARE_LONG=1`,
//!
//! so CI exercises every decoder without libFuzzer or nightly. With
//! `VOLTSHARE_WRITE_SEEDS=1` the generated seeds are written to
//! `fuzz/seeds/` (that is how the committed seeds were made).

// The harness modules of the fuzz crate, by path (that crate is its own
// workspace; its lib.rs gates two of them behind cargo features).
#[path = "../../fuzz/src/config.rs"]
mod config_harness;
#[path = "../../fuzz/src/regmap.rs"]
mod regmap_harness;
#[path = "../../fuzz/src/wire.rs"]
mod wire_harness;

use protocol::{
    Ack, AckItem, AckKind, AckOutcome, AuctionParams, ClearingResult, Domain, GridId, Hash32,
    HouseholdId, IntervalId, MeterId, SignedEnvelope, UnixMs,
};
use serde_json::json;
use std::path::PathBuf;
use voltshare_tests::sender::{TestHousehold, order, reading};
use voltshare_tests::util::{self, Rng};
use voltshare_tests::{procs, report};

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 5] = [
    ("envelope", wire_harness::envelope),
    ("reading", wire_harness::reading),
    ("order", wire_harness::order),
    ("regmap", regmap_harness::regmap),
    ("config", config_harness::config),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let grid = GridId::new("fuzzgrid").expect("id");
    let h = TestHousehold::new("fuzz", 1);
    let r = reading(
        &grid,
        &h,
        &h.meters[0],
        7,
        UnixMs(1_780_000_000_000),
        1234,
        56,
    );
    let o = order(
        &grid,
        &h,
        IntervalId(1_780_000_200_000),
        protocol::Side::Sell,
        500,
        120_000,
        9,
        UnixMs(1_780_000_000_000),
    );
    let ack = Ack {
        grid: grid.clone(),
        household: h.id.clone(),
        items: vec![
            AckItem {
                kind: AckKind::Reading,
                meter: Some(h.meters[0].clone()),
                seq: 7,
                outcome: AckOutcome::Accepted,
            },
            AckItem {
                kind: AckKind::Order,
                meter: None,
                seq: 9,
                outcome: AckOutcome::Rejected("replay".into()),
            },
        ],
    };
    let result = ClearingResult {
        grid: grid.clone(),
        interval: IntervalId(1_780_000_200_000),
        params: AuctionParams::default(),
        clearing_price: Some(protocol::MicroPerKwh(150_000)),
        volume_wh: protocol::WattHours(500),
        trades: vec![],
        orders_root: Hash32::ZERO,
        trades_root: Hash32::ZERO,
    };
    let mut r2 = r.clone();
    r2.pv_wh = Some(protocol::WattHours(99));
    r2.meter = MeterId::new("m-2").expect("id");
    r2.household = HouseholdId::new("h-2").expect("id");
    match target {
        "envelope" => vec![
            SignedEnvelope::sign_json(Domain::Reading, &h.key, &r).expect("sign").encode(),
            SignedEnvelope::sign_json(Domain::Order, &h.key, &o).expect("sign").encode(),
            SignedEnvelope::sign_json(Domain::Ack, &h.key, &ack).expect("sign").encode(),
            vec![1, 1, b'a'],
            vec![],
        ],
        "reading" => vec![
            protocol::canonical_json(&r),
            protocol::canonical_json(&r2),
            protocol::canonical_json(&ack),
            br#"{"grid":"g","household":"h","meter":"m","seq":18446744073709551615,"ts":0,"import_wh":0,"export_wh":0,"pv_wh":null,"grid_power_w":-9223372036854775808,"pv_power_w":null,"status":"error"}"#.to_vec(),
        ],
        "order" => vec![
            protocol::canonical_json(&o),
            protocol::canonical_json(&protocol::Order { replaces: Some(3), ..o.clone() }),
            protocol::canonical_json(&result),
        ],
        "regmap" => {
            let mut v: Vec<Vec<u8>> = meter_agent::regmap::SHIPPED
                .iter()
                .map(|(_, src)| {
                    let mut b = src.as_bytes().to_vec();
                    b.push(0);
                    b.extend_from_slice(&[0x43, 0x48, 0, 0, 0xff, 0xff, 0x7f, 0xc0, 0, 1, 0x80, 0, 0, 0, 0, 0]);
                    b
                })
                .collect();
            v.push(b"name = \"x\"\nid = \"x\"\n[points.grid_power_w]\naddress = 1\ntype = \"i32\"\nscale_register = { address = 9 }\ninvert = true\n\0\xff\xff\xff\xfe\x00\x02\xff\xf6".to_vec());
            v
        }
        _ => {
            let ex = procs::workspace_root().join("deploy/examples");
            let mut v: Vec<Vec<u8>> = ["household.toml", "clearing-host.toml"]
                .iter()
                .filter_map(|f| std::fs::read(ex.join(f)).ok())
                .collect();
            v.push(
                format!(
                    "grid = \"g\"\ndata_dir = \"/tmp/x\"\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\n[engine]\nenabled = true\nkey_file = \"k\"\ninterval_ms = 4000\n[[engine.households]]\nhousehold = \"h1\"\npublic_key = \"{}\"\nmeters = [\"m1\"]\n",
                    hex::encode(h.key.verifying_key().as_bytes())
                )
                .into_bytes(),
            );
            v
        }
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.range(1, 4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let cut = rng.below(b.len());
                b.truncate(cut);
            }
            2 => {
                let i = rng.below(b.len() + 1);
                let byte =
                    [b'{', b'[', b'"', b'\\', b'0', 0xff, b'\n', b'=', b']', b'}'][rng.below(10)];
                for _ in 0..rng.range(1, 40) {
                    b.insert(i, byte);
                }
            }
            3 if !other.is_empty() => {
                let i = rng.below(b.len() + 1);
                let j = rng.below(other.len());
                b.splice(i..i, other[j..].iter().take(64).copied());
            }
            4 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = (rng.next_u64() & 0xff) as u8;
            }
            _ => {
                let i = rng.below(b.len() + 1);
                let v = (rng.next_u64() % 10).to_string();
                b.splice(i..i, v.bytes());
            }
        }
    }
    b
}

/// The committed seeds of a target.
fn seeds_dir(target: &str) -> PathBuf {
    procs::workspace_root()
        .join("fuzz")
        .join("seeds")
        .join(target)
}

/// The local corpus libFuzzer grows (not committed; absent on CI).
fn corpus_dir(target: &str) -> PathBuf {
    procs::workspace_root()
        .join("fuzz")
        .join("corpus")
        .join(target)
}

#[test]
fn fuzz_targets_run_on_corpus_and_mutations() {
    let per_target: usize = util::pick(4_000, 40_000);
    let write = std::env::var("VOLTSHARE_WRITE_SEEDS").is_ok_and(|v| v == "1");
    let mut figures = serde_json::Map::new();
    let mut rng = Rng::new(0x5eed_0006);
    let watch = protocol::Stopwatch::start();
    for (name, run) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty());
        if write {
            std::fs::create_dir_all(seeds_dir(name)).expect("seeds dir");
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(seeds_dir(name).join(format!("seed-{i}")), s).expect("seed");
            }
        }
        let mut files = 0usize;
        let mut corpus: Vec<Vec<u8>> = Vec::new();
        for dir in [seeds_dir(name), corpus_dir(name)] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if let Ok(b) = std::fs::read(e.path()) {
                        files += 1;
                        corpus.push(b);
                    }
                }
            }
        }
        for input in corpus.iter().chain(seeds.iter()) {
            run(input);
        }
        let pool: Vec<Vec<u8>> = corpus.iter().chain(seeds.iter()).cloned().collect();
        for _ in 0..per_target {
            let a = &pool[rng.below(pool.len())];
            let b = &pool[rng.below(pool.len())];
            run(&mutate(&mut rng, a, b));
        }
        figures.insert(
            name.into(),
            json!({"corpus_files": files, "seeds": seeds.len(), "mutations": per_target}),
        );
    }
    figures.insert("seconds".into(), json!(watch.elapsed().as_secs_f64()));
    figures.insert(
        "libfuzzer".into(),
        json!("see the section fuzz_libfuzzer (scripts/fuzz-ci: each target under libFuzzer; fuzz/README.md)"),
    );
    report::write_section("fuzz_corpus", serde_json::Value::Object(figures));
    let missing: Vec<&str> = TARGETS
        .iter()
        .map(|t| t.0)
        // The committed seeds must be there; the local cargo-fuzz corpus
        // (fuzz/corpus, git-ignored) exists only where scripts/fuzz has run.
        .filter(|t| !seeds_dir(t).is_dir())
        .collect();
    assert!(
        missing.is_empty() || write,
        "fuzz seed directories missing for {missing:?}: run with VOLTSHARE_WRITE_SEEDS=1"
    );
}
