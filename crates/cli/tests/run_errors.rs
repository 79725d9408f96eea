//! `crmflow run` refuses to start on misconfiguration, with a message that says what to fix.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let state = tempfile::tempdir().unwrap();
    let mut command = crmflow_command(CRMFLOW);
    command.arg("run").args(args).env("CRMFLOW_STATE_DIR", state.path());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn assert_fails_with(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in:\n{stderr}");
}

#[test]
fn a_bad_config_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "brokers = \"localhost:9092\"\ncommit_interval = 100\n").unwrap();
    let output = run(&["--config", path.to_str().unwrap()], &[]);
    assert_fails_with(&output, "commit_interval");
    std::fs::write(&path, "processing_guarantee = \"sometimes\"\n").unwrap();
    assert_fails_with(&run(&["--config", path.to_str().unwrap()], &[]), "sometimes");
    assert_fails_with(&run(&["--config", "/nonexistent/crmflow.toml"], &[]), "cannot read config file");
}

#[test]
fn a_bad_environment_override_names_the_key() {
    assert_fails_with(&run(&[], &[("CRMFLOW_BROKERS", "no-port")]), "`brokers`");
    assert_fails_with(&run(&[], &[("CRMFLOW_KAFKA__GROUP_ID", "x")]), "kafka.\"group.id\"");
}

#[test]
fn unreachable_brokers_fail_after_a_bounded_wait() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let output = run(&[], &[("CRMFLOW_BROKERS", &format!("127.0.0.1:{port}")), ("CRMFLOW_STARTUP_TIMEOUT_MS", "2000")]);
    assert_fails_with(&output, "cannot reach Kafka");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn inputs_that_are_not_co_partitioned_are_refused() {
    let broker = mock_broker(4, &["teams.narrow:2"]);
    let output =
        run(&[], &[("CRMFLOW_BROKERS", &broker.address), ("CRMFLOW_TOPICS__TEAM_ASSIGNMENTS", "teams.narrow")]);
    assert_fails_with(&output, "not co-partitioned");
    assert_fails_with(&output, "teams.narrow: 2");
    assert_fails_with(&output, "crm.changes: 4");
}

#[test]
fn a_missing_input_topic_is_named() {
    let broker = mock_broker(2, &[]);
    let output = run(&[], &[("CRMFLOW_BROKERS", &broker.address), ("CRMFLOW_TOPICS__CRM_CHANGES", "nope.changes")]);
    assert_fails_with(&output, "nope.changes");
}

#[test]
fn logs_can_be_json_lines() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let state = tempfile::tempdir().unwrap();
    let output = crmflow_command(CRMFLOW)
        .args(["--log-format", "json", "run"])
        .env("CRMFLOW_STATE_DIR", state.path())
        .env("CRMFLOW_BROKERS", format!("127.0.0.1:{port}"))
        .env("CRMFLOW_STARTUP_TIMEOUT_MS", "1000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(logs.iter().all(|l| l.get("level").is_some()), "{stderr}");
    // The start and the reason it stopped are log lines whatever librdkafka said meanwhile.
    let messages: Vec<&str> = logs.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
    assert!(messages.contains(&"connecting to Kafka"), "{stderr}");
    assert!(messages.iter().any(|m| m.contains("cannot reach Kafka")), "{stderr}");
}

/// `exactly_once` against brokers that do not offer transactions (librdkafka's mock cluster, in
/// this process, with the InitProducerId API switched off) stops at start and names the way out.
#[test]
fn exactly_once_without_broker_transactions_names_at_least_once() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaApiKey;
    let mock = MockCluster::new(1).unwrap();
    let topics = crmflow_codec::TopicNames::default();
    for (_, topic) in topics.inputs() {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    for topic in topics.outputs() {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    mock.apiversion(RDKafkaApiKey::InitProducerId, None, None).unwrap();
    let output = run(
        &[],
        &[
            ("CRMFLOW_BROKERS", &mock.bootstrap_servers()),
            ("CRMFLOW_PROCESSING_GUARANTEE", "exactly_once"),
            ("CRMFLOW_STARTUP_TIMEOUT_MS", "5000"),
        ],
    );
    assert_fails_with(&output, "transactions");
    assert_fails_with(&output, "at_least_once");
}

/// A second SIGTERM exits at once, even while the first one waits for brokers that never answer.
#[test]
fn a_second_signal_exits_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let state = tempfile::tempdir().unwrap();
    let mut child = crmflow_command(CRMFLOW)
        .arg("run")
        .env("CRMFLOW_STATE_DIR", state.path())
        .env("CRMFLOW_BROKERS", format!("127.0.0.1:{port}"))
        .env("CRMFLOW_STARTUP_TIMEOUT_MS", "60000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = child.id().to_string();
    let started = std::time::Instant::now();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the first signal asks for a graceful stop, which waits");
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "still running after two signals");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
}

/// An abortable transaction error (the group coordinator rejects the transaction's offsets with
/// ILLEGAL_GENERATION, as for a member that missed a rebalance) aborts the transaction, rewinds
/// every partition to its last commit and goes on, instead of stopping. The fault is injected into
/// librdkafka's mock cluster in this process. The mock cannot prove exactly-once (its
/// read_committed consumers see aborted records; the Kafka tests do that), so this checks that
/// processing survives the error and finishes the input.
#[test]
fn an_abortable_transaction_error_rewinds_and_goes_on() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    let names = crmflow_codec::TopicNames::default();
    let mut all: Vec<String> = names.inputs().iter().map(|(_, t)| t.to_string()).collect();
    all.extend(names.outputs().iter().map(|t| t.to_string()));
    all.push("crmflow-projections-changelog".into());
    for topic in &all {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    mock.request_errors(RDKafkaApiKey::TxnOffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION]);
    let (input, _) = scenario("seed-walkthrough");
    let topics = Topics::defaults(2);
    produce_paced(
        &mock.bootstrap_servers(),
        &topics,
        &input,
        crmflow_codec::Encoding::Json,
        Duration::ZERO,
        &Default::default(),
    );

    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log");
    let mut child = crmflow_command(CRMFLOW)
        .arg("run")
        .env("CRMFLOW_STATE_DIR", state.path().join("state"))
        .env("CRMFLOW_BROKERS", mock.bootstrap_servers())
        .env("CRMFLOW_PROCESSING_GUARANTEE", "exactly_once")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = std::time::Instant::now();
    while !logs().contains("rewinding to the last commit and going on") {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("crmflow stopped with {status}:\n{}", logs());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no abort and rewind:\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The rewound records are processed again, and the next commits succeed.
    std::thread::sleep(Duration::from_secs(3));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", logs());
    let summary = logs().lines().find(|l| l.contains("stopped after committing")).map(str::to_owned);
    let processed: usize = summary
        .as_deref()
        .and_then(|l| l.split("stopped after committing: ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary:\n{}", logs()));
    // Counters count committed rounds: the aborted one is not counted, its records are once more.
    assert_eq!(processed, input.len(), "every record processed again and committed once: {summary:?}");
}
