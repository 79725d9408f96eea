//! crmflow against tansu, a Kafka-compatible broker that is not librdkafka's own (at-least-once).

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmflow_codec::Encoding;

use support::*;

scenario_tests!(BrokerKind::Tansu);

/// The demo stream as scenario lines, and what `crmflow simulate` makes of it.
fn demo(count: usize) -> (Vec<String>, Vec<crmflow_codec::Envelope>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let status = std::process::Command::new(CRMFLOW)
        .args(["generate", "--count", &count.to_string(), "--companies", "6", "--output"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    let output = std::process::Command::new(CRMFLOW).args(["simulate", "--input"]).arg(&input).output().unwrap();
    assert!(output.status.success());
    let lines = std::fs::read_to_string(&input).unwrap().lines().map(str::to_owned).collect();
    let expected =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (lines, expected)
}

/// Outputs by event id; a re-emitted output must equal its first emission.
fn distinct(records: &[Consumed]) -> BTreeMap<String, serde_json::Value> {
    let mut by_id = BTreeMap::new();
    for record in records {
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        let id = value["event_id"].as_str().unwrap().to_owned();
        if let Some(previous) = by_id.insert(id.clone(), value.clone()) {
            assert_eq!(previous, value, "a re-emitted output differs from the first emission: {id}");
        }
    }
    by_id
}

/// SIGKILL mid-stream, restart on the same state directory: the outputs, de-duplicated by event id,
/// equal those of an uninterrupted run (`crmflow simulate` on the same input).
#[test]
fn sigkill_mid_stream_then_restart_loses_and_changes_nothing() {
    let broker = Broker::tansu(4);
    let (input, expected) = demo(4000);
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let env = [("CRMFLOW_COMMIT_INTERVAL_MS", "50")];
    let mut processor = Processor::start(&broker, &state_dir, "killed", &env);

    // Live traffic over 8 s; the processor is killed when half of it has been published.
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (address, sent) = (broker.address.clone(), sent.clone());
        std::thread::spawn(move || produce_paced(&address, &input, Encoding::Json, Duration::from_secs(8), &sent))
    };
    let started = Instant::now();
    while sent.load(Ordering::SeqCst) < 2000 {
        assert!(started.elapsed() < Duration::from_secs(60), "publishing stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    processor.kill();
    let first_logs = processor.logs();
    let before_restart = distinct(&consume_outputs(&broker, 1, Duration::from_secs(3))).len();
    assert!(
        before_restart > 0 && before_restart < expected.len(),
        "kill not mid-stream: {before_restart} of {}\n{first_logs}",
        expected.len()
    );
    // tansu drops the killed member only once its session (6 s here) has expired; a restart
    // before that finds the group waiting for it.
    std::thread::sleep(Duration::from_secs(7));

    let mut processor = Processor::start(&broker, &state_dir, "killed", &env);
    publisher.join().unwrap();
    let actual = consume_outputs(&broker, expected.len(), Duration::from_secs(60));
    assert!(processor.stop().success(), "{}", processor.logs());

    let by_id = distinct(&actual);
    let want: BTreeMap<String, serde_json::Value> =
        expected.iter().map(|e| (e.value["event_id"].as_str().unwrap().to_owned(), e.value.clone())).collect();
    assert_eq!(
        by_id.len(),
        want.len(),
        "distinct outputs ({before_restart} before the restart)\n{first_logs}\n---\n{}",
        processor.logs()
    );
    assert!(by_id == want, "outputs differ from the uninterrupted run");
}

/// Output and dead-letter topics that do not exist are created with the inputs' partition count.
#[test]
fn missing_output_topics_are_created_like_the_inputs() {
    let broker = Broker::tansu_bare(3);
    let topics = crmflow_codec::TopicNames::default();
    let inputs: Vec<String> = topics.inputs().iter().map(|(_, t)| t.to_string()).collect();
    broker.create_topics(&inputs, 3);
    let (input, expected) = scenario("bad-lines");
    produce_lines(&broker, &input);
    let state = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&broker, &state.path().join("state"), "create-outputs", &[]);
    let actual = consume_outputs(&broker, reproducible(&expected).len(), Duration::from_secs(60));
    assert!(processor.stop().success(), "{}", processor.logs());
    let counts = broker.partition_counts();
    for topic in topics.outputs() {
        assert_eq!(counts.get(topic), Some(&3), "{topic} in {counts:?}\n{}", processor.logs());
    }
    compare(&reproducible(&expected), &actual).unwrap_or_else(|diff| panic!("{diff}\n{}", processor.logs()));
}
