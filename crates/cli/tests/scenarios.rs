//! Scenario files (`tests/scenarios/*/input.jsonl` → `expected.jsonl`) through the core and the binary.
//!
//! Set `CRMFLOW_BLESS=1` to (re)write the expected files from the current behaviour; review the diff.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crmflow::simulate::simulate;
use crmflow_codec::TopicNames;

fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.join("input.jsonl").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "expected the scenario suite under {}", root.display());
    dirs
}

fn expected(dir: &Path, actual: &str) -> String {
    let path = dir.join("expected.jsonl");
    if std::env::var_os("CRMFLOW_BLESS").is_some() {
        fs::write(&path, actual).unwrap();
    }
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn assert_same(dir: &Path, how: &str, actual: &str, expected: &str) {
    for (i, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, e, "{} via {how}: output line {} differs", dir.display(), i + 1);
    }
    assert_eq!(
        actual.lines().count(),
        expected.lines().count(),
        "{} via {how}: number of output lines differs",
        dir.display()
    );
}

#[test]
fn every_scenario_through_the_core() {
    for dir in scenarios() {
        let input = fs::read(dir.join("input.jsonl")).unwrap();
        let mut out = Vec::new();
        simulate(&input[..], &mut out, &TopicNames::default()).unwrap();
        let actual = String::from_utf8(out).unwrap();
        assert_same(&dir, "the core", &actual, &expected(&dir, &actual));
    }
}

#[test]
fn every_scenario_through_the_simulate_binary() {
    for dir in scenarios() {
        let out = Command::new(env!("CARGO_BIN_EXE_crmflow"))
            .args(["simulate", "--input"])
            .arg(dir.join("input.jsonl"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("UserProvisioned"), "summary on stderr: {stderr}");
        let actual = String::from_utf8(out.stdout).unwrap();
        let expected = fs::read_to_string(dir.join("expected.jsonl")).unwrap();
        assert_same(&dir, "crmflow simulate", &actual, &expected);
    }
}

#[test]
fn simulate_reads_stdin_and_writes_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let scenario = scenarios().into_iter().next().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crmflow"))
        .args(["simulate", "--input", "-", "--output"])
        .arg(&output)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = fs::read(scenario.join("input.jsonl")).unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &input).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let expected = fs::read_to_string(scenario.join("expected.jsonl")).unwrap();
    assert_eq!(fs::read_to_string(output).unwrap(), expected);
}

#[test]
fn a_missing_input_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_crmflow"))
        .args(["simulate", "--input", "/nonexistent/input.jsonl"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open input file /nonexistent/input.jsonl"));
}
