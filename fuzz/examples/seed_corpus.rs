//! Writes the seed corpora under `fuzz/corpus/<target>/` and the Avro dictionary from real
//! inputs: the lines of `tests/scenarios/*/input.jsonl` and `expected.jsonl`, and their Avro
//! encodings by crmflow's own encoder. Run from the repository root after the scenarios or the
//! schemas change (see fuzz/README.md):
//!
//! ```sh
//! CARGO_TARGET_DIR=~/.cache/crmflow/fuzz-target cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```
//!
//! Each corpus keeps at most [`CAP`] files, taken round-robin over the scenarios and event types
//! so that every story and every type contributes; file names say where a seed came from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crmflow_avro::SchemaRegistry;

/// Files per corpus.
const CAP: usize = 40;

/// A scenario line, with its value as written.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
}

/// One seed: its file name and content.
type Seed = (String, Vec<u8>);

/// Seeds of one target: per scenario, per kind (event type), in file order.
#[derive(Default)]
struct Seeds(BTreeMap<String, BTreeMap<String, Vec<Seed>>>);

impl Seeds {
    fn add(&mut self, scenario: &str, kind: &str, name: String, bytes: Vec<u8>) {
        self.0.entry(scenario.to_owned()).or_default().entry(kind.to_owned()).or_default().push((name, bytes));
    }

    /// Every seed, in the order they are written: round-robin over the scenarios, and within a
    /// scenario over its kinds.
    fn ordered(&self) -> Vec<&Seed> {
        let mut scenarios: Vec<Vec<std::slice::Iter<'_, Seed>>> =
            self.0.values().map(|kinds| kinds.values().map(|v| v.iter()).collect()).collect();
        let mut turn = vec![0usize; scenarios.len()];
        let mut ordered = Vec::new();
        loop {
            let mut progressed = false;
            for (kinds, turn) in scenarios.iter_mut().zip(&mut turn) {
                for _ in 0..kinds.len() {
                    let i = *turn % kinds.len();
                    *turn += 1;
                    if let Some(seed) = kinds[i].next() {
                        ordered.push(seed);
                        progressed = true;
                        break;
                    }
                }
            }
            if !progressed {
                return ordered;
            }
        }
    }

    /// Writes at most CAP distinct seeds.
    fn write(&self, dir: &Path) {
        if dir.exists() {
            fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut seen = BTreeSet::new();
        for (name, bytes) in self.ordered() {
            if seen.len() == CAP {
                break;
            }
            if seen.insert(bytes.clone()) {
                fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        println!("{}: {} seeds", dir.display(), seen.len());
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("fuzz/ is in the repository").to_path_buf();
    let registry = SchemaRegistry::bundled();
    let mut targets: BTreeMap<&str, Seeds> = BTreeMap::new();
    let mut scenarios: Vec<PathBuf> = fs::read_dir(root.join("tests/scenarios"))
        .expect("tests/scenarios")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.join("input.jsonl").exists())
        .collect();
    scenarios.sort();

    for dir in &scenarios {
        let scenario = dir.file_name().and_then(|n| n.to_str()).expect("a scenario name").to_owned();
        let input = fs::read(dir.join("input.jsonl")).expect("input.jsonl");
        let mut workflows = Vec::new();
        let mut records = Vec::new();
        for (i, bytes) in input.split(|b| *b == b'\n').enumerate() {
            if bytes.is_empty() {
                continue;
            }
            let at = format!("{scenario}-{}", i + 1);
            // Seeds are taken round-robin over (scenario, event type), so that every type counts.
            let line = std::str::from_utf8(bytes).ok().and_then(|t| serde_json::from_str::<Line<'_>>(t).ok());
            let value = line.as_ref().and_then(|l| serde_json::from_str::<Value>(l.value.get()).ok());
            let kind = value.as_ref().and_then(|v| v.get("type")).and_then(Value::as_str).unwrap_or("bad").to_owned();
            let kind = kind.as_str();
            targets.entry("simulate_line").or_default().add(&scenario, kind, format!("{at}.jsonl"), bytes.to_vec());
            let Some(line) = line else { continue };
            let raw = line.value.get();
            targets.entry("input_json").or_default().add(
                &scenario,
                kind,
                format!("{at}.json"),
                raw.as_bytes().to_vec(),
            );
            let Some(value) = value else { continue };
            if let Ok(avro) = registry.encode(&value) {
                targets.entry("avro_single_object").or_default().add(&scenario, kind, format!("{at}.avro"), avro);
            }
            match value.get("type").and_then(Value::as_str) {
                Some("WorkflowSaved") => {
                    if let Some(workflow) = value.get("workflow") {
                        let text = serde_json::to_vec(workflow).expect("JSON");
                        targets.entry("workflow").or_default().add(&scenario, "workflow", format!("{at}.json"), text);
                        workflows.push((at.clone(), workflow.clone()));
                    }
                }
                Some("CrmRecordChanged") => {
                    if let Some(fields) = value.get("fields") {
                        records.push((at.clone(), fields.clone()));
                    }
                }
                _ => {}
            }
        }
        // Each workflow's conditions against each record of its scenario.
        for (w_at, workflow) in &workflows {
            let conditions = workflow.get("conditions").cloned().unwrap_or_else(|| json!([]));
            for (r_at, fields) in &records {
                let case = serde_json::to_vec(&json!({"conditions": conditions, "fields": fields})).expect("JSON");
                let name = format!("{w_at}-{}.json", r_at.rsplit('-').next().unwrap_or_default());
                targets.entry("conditions").or_default().add(&scenario, w_at, name, case);
            }
        }

        let expected = fs::read(dir.join("expected.jsonl")).expect("expected.jsonl");
        for (i, bytes) in expected.split(|b| *b == b'\n').enumerate() {
            let Ok(line) = serde_json::from_slice::<Line<'_>>(bytes) else { continue };
            let raw = line.value.get();
            let Ok(value) = serde_json::from_str::<Value>(raw) else { continue };
            if !value.is_object() {
                continue; // a dead letter's original line
            }
            let at = format!("{scenario}-out{}", i + 1);
            let kind = value.get("type").and_then(Value::as_str).unwrap_or("bad");
            targets.entry("output").or_default().add(&scenario, kind, format!("{at}.json"), raw.as_bytes().to_vec());
            if let Ok(avro) = registry.encode(&value) {
                targets.entry("output").or_default().add(
                    &scenario,
                    &format!("{kind}.avro"),
                    format!("{at}.avro"),
                    avro.clone(),
                );
                targets.entry("avro_single_object").or_default().add(&scenario, kind, format!("{at}.avro"), avro);
            }
        }
    }

    // A CrmRecordChanged as a producer still on schema version 1 writes it (no `users`).
    let v1 = fs::read_to_string(root.join("schemas/history/CrmRecordChanged.v1.avsc")).expect("the v1 schema");
    let v1 = apache_avro::Schema::parse_str(&v1).expect("the v1 schema parses");
    let form = v1.canonical_form().replace(r#"{"type":"long"}"#, r#""long""#);
    let changed = json!({"type": "CrmRecordChanged", "event_id": "e1", "company_id": "acme", "integration_id": "sf",
        "object_type": "Opportunity", "object_id": "006A", "operation": "updated", "occurred_at": "2024-05-01T10:00:00Z",
        "fields": {"OwnerId": "005A", "Amount": 1200.5, "Probability": 90, "IsWon": true, "CloseDate": null}});
    let current = registry.encode(&changed).expect("encodes");
    // The current datum less its trailing `users` union index (0: null), after the v1 header.
    let mut v1_bytes = vec![0xC3, 0x01];
    v1_bytes.extend_from_slice(&rabin(form.as_bytes()).to_le_bytes());
    v1_bytes.extend_from_slice(&current[10..current.len() - 1]);
    let mut decoded = registry.decode(&v1_bytes).expect("the v1 message decodes");
    decoded["users"] = Value::Null;
    let mut expected = changed.clone();
    expected["users"] = Value::Null;
    expected["occurred_at"] = json!("2024-05-01T10:00:00.000Z");
    assert_eq!(decoded, expected, "the v1 seed reads back");
    targets.entry("avro_single_object").or_default().add(
        "history",
        "CrmRecordChanged",
        "history-v1.avro".into(),
        v1_bytes.clone(),
    );

    // The Avro dictionary: the single-object header of every schema crmflow knows.
    let mut headers: BTreeSet<Vec<u8>> = BTreeSet::new();
    headers.insert(v1_bytes[..10].to_vec());
    for seeds in [&targets["avro_single_object"], &targets["output"]] {
        for (name, bytes) in seeds.ordered() {
            if name.ends_with(".avro") {
                headers.insert(bytes[..10].to_vec());
            }
        }
    }
    let mut dict = String::from("# Avro single-object headers (C3 01 + CRC-64-AVRO fingerprint), one per schema.\n");
    dict += "# Generated by fuzz/examples/seed_corpus.rs.\n";
    for header in &headers {
        let escaped: String = header.iter().map(|b| format!("\\x{b:02X}")).collect();
        dict += &format!("\"{escaped}\"\n");
    }
    fs::write(root.join("fuzz/dict/avro.dict"), dict).expect("fuzz/dict/avro.dict");
    println!("fuzz/dict/avro.dict: {} headers", headers.len());

    for (target, seeds) in &targets {
        seeds.write(&root.join("fuzz/corpus").join(target));
    }
}

/// CRC-64-AVRO, as the Avro spec defines the single-object fingerprint.
fn rabin(data: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    data.iter().fold(EMPTY, |mut fp, &b| {
        fp ^= u64::from(b);
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        fp
    })
}
