//! `crmflow simulate --explain`: one trace line per input line, output records unchanged.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios").join(name)
}

fn simulate(args: &[&str], input: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_crmflow"))
        .args(["simulate", "--input"])
        .arg(input)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The JSON trace lines of a text (the summary that follows them is not JSON).
fn traces(text: &str) -> Vec<Value> {
    text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn trace_of_line(traces: &[Value], line: u64) -> &Value {
    traces.iter().find(|t| t["line"] == line).unwrap_or_else(|| panic!("no trace for line {line}: {traces:?}"))
}

#[test]
fn the_failed_condition_is_named_and_outputs_are_unchanged() {
    let dir = scenario("conditions-no-longer-met");
    let out = simulate(&["--explain"], &dir.join("input.jsonl"));
    let expected = fs::read_to_string(dir.join("expected.jsonl")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "stdout keeps only the output records");

    let stderr = String::from_utf8(out.stderr).unwrap();
    let traces = traces(&stderr);
    let input_lines = fs::read_to_string(dir.join("input.jsonl")).unwrap().lines().count();
    assert_eq!(traces.len(), input_lines, "one trace per input line");
    assert!(stderr.contains("UserProvisioned"), "the summary still follows: {stderr}");

    // Line 5 moves the opportunity out of `Closed Won`: the live activity is retracted.
    let retracting = trace_of_line(&traces, 5);
    assert_eq!(retracting["type"], "CrmRecordChanged");
    let workflow = &retracting["workflows"][0];
    assert_eq!(workflow["rule"], "retracted");
    assert_eq!(
        workflow["conditions"][0],
        serde_json::json!({"field": "StageName", "op": "eq", "expected": "Closed Won", "actual": "Negotiation", "held": false})
    );
    // The trace links to the retraction it caused, by the output's event id.
    let retraction = &workflow["outputs"][0];
    assert_eq!(retraction["type"], "ActivityAccepted");
    let published: Vec<Value> = expected.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let linked = published.iter().find(|r| r["value"]["event_id"] == retraction["event_id"]).unwrap();
    assert_eq!(linked["value"]["change"], "retracted");

    // Line 6 fails the same condition with nothing live left to retract.
    assert_eq!(trace_of_line(&traces, 6)["workflows"][0]["rule"], "condition_failed");
}

#[test]
fn explain_output_writes_a_file_and_dead_letters_are_traced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    let out = simulate(&["--explain-output", path.to_str().unwrap()], &scenario("bad-lines").join("input.jsonl"));
    assert!(traces(&String::from_utf8_lossy(&out.stderr)).is_empty(), "traces go to the file only");
    let traces = traces(&fs::read_to_string(&path).unwrap());
    let dead: Vec<&Value> = traces.iter().filter(|t| t["type"] == "DeadLetter").collect();
    assert!(!dead.is_empty(), "{traces:?}");
    assert!(dead.iter().all(|t| t["kind"].is_string() && t["message"].is_string()), "{dead:?}");
}
