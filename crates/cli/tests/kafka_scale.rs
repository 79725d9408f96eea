//! At realistic scale on the real broker: `crmflow run` decides exactly as `crmflow simulate` on
//! the same records. 100k generated events of 20 companies with 2% malformed records, over 8
//! partitions; produced before the start (a replay) or while running (live); under both
//! guarantees; without kills and with repeated SIGKILLs; and with members joining and leaving.
//! Every output and dead letter is read to the end offsets and compared with simulate's.

#[macro_use]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crmflow_codec::{Encoding, Envelope};

use support::*;

/// Events generated (malformed records come on top, at 2%).
const EVENTS: usize = 100_000;
const PARTITIONS: i32 = 8;
/// How long live traffic takes to publish.
const LIVE_FOR: Duration = Duration::from_secs(40);

/// The generated records and what simulate makes of them, made once per test binary.
fn generated() -> &'static (Vec<Vec<u8>>, Vec<Envelope>) {
    static GENERATED: OnceLock<(Vec<Vec<u8>>, Vec<Envelope>)> = OnceLock::new();
    GENERATED.get_or_init(|| generate(EVENTS))
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    guarantee: ProcessingGuarantee,
    /// Produced while running (else all before the start).
    live: bool,
    /// SIGKILLs during the run, each followed by a restart on the same state directory.
    kills: usize,
}

fn run_case(case: Case) {
    let broker = kafka();
    let topics = own_topics(broker, case.name, PARTITIONS);
    let (lines, expected) = generated();
    let dead = expected.iter().filter(|e| e.topic == "crmflow.dlq").count();
    assert!(lines.len() > EVENTS && dead > EVENTS / 100, "{} lines, {dead} dead letters", lines.len());
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let group = case.name;
    if !case.live {
        produce_lines(broker, &topics, lines);
    }
    let start = || Processor::start(broker, &topics, &state_dir, group, case.guarantee, &[]);
    let mut processor = start();
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = case.live.then(|| {
        let (address, topics, sent) = (broker.address.clone(), topics.clone(), sent.clone());
        std::thread::spawn(move || produce_paced(&address, &topics, lines, Encoding::Json, LIVE_FOR, &sent))
    });
    let mut logs = String::new();
    for kill in 0..case.kills {
        // Spread over the run: live, while records arrive; replaying, while the backlog lasts.
        std::thread::sleep(Duration::from_millis(2_500 + 700 * (kill as u64 % 4)));
        processor.kill();
        logs += &processor.logs();
        processor = start();
    }
    if let Some(publisher) = publisher {
        publisher.join().unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), lines.len());
    }
    let started = Instant::now();
    wait_until_processed(broker, &topics, group, &mut processor, Duration::from_secs(600));
    let status = processor.stop();
    logs += &processor.logs();
    let actual = read_outputs(broker, &topics);
    let duplicates = match case.guarantee {
        ProcessingGuarantee::ExactlyOnce => Duplicates::Fail,
        ProcessingGuarantee::AtLeastOnce => Duplicates::Drop,
    };
    if let Err(diff) = compare(expected, &actual, duplicates) {
        let tail: String =
            logs.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!("{case:?}: crmflow run differs from crmflow simulate: {diff}\n--- log tail ---\n{tail}");
    }
    assert!(status.success(), "{case:?}: exited with {status}");
    eprintln!(
        "{case:?}: {} records, {} outputs as simulate, drained {:?} after the last kill",
        lines.len(),
        actual.len(),
        started.elapsed()
    );
}

#[test]
fn replay_exactly_once() {
    run_case(Case { name: "replay-eos", guarantee: ProcessingGuarantee::ExactlyOnce, live: false, kills: 0 });
}

#[test]
fn replay_exactly_once_killed_repeatedly() {
    run_case(Case { name: "replay-eos-kills", guarantee: ProcessingGuarantee::ExactlyOnce, live: false, kills: 5 });
}

#[test]
fn replay_at_least_once() {
    run_case(Case { name: "replay-alo", guarantee: ProcessingGuarantee::AtLeastOnce, live: false, kills: 0 });
}

#[test]
fn replay_at_least_once_killed_repeatedly() {
    run_case(Case { name: "replay-alo-kills", guarantee: ProcessingGuarantee::AtLeastOnce, live: false, kills: 5 });
}

#[test]
fn live_exactly_once() {
    run_case(Case { name: "live-eos", guarantee: ProcessingGuarantee::ExactlyOnce, live: true, kills: 0 });
}

#[test]
fn live_exactly_once_killed_repeatedly() {
    run_case(Case { name: "live-eos-kills", guarantee: ProcessingGuarantee::ExactlyOnce, live: true, kills: 5 });
}

#[test]
fn live_at_least_once() {
    run_case(Case { name: "live-alo", guarantee: ProcessingGuarantee::AtLeastOnce, live: true, kills: 0 });
}

#[test]
fn live_at_least_once_killed_repeatedly() {
    run_case(Case { name: "live-alo-kills", guarantee: ProcessingGuarantee::AtLeastOnce, live: true, kills: 5 });
}

/// A second member joins and leaves, several times, while live traffic arrives: partitions move
/// back and forth (to a member with no state for them, then back to a stale store); then the
/// inputs gain partitions. The outputs are still exactly simulate's.
#[test]
fn rebalances_do_not_change_decisions() {
    let broker = kafka();
    let topics = own_topics(broker, "rebalance", PARTITIONS);
    let (lines, expected) = generated();
    let state = tempfile::tempdir().unwrap();
    let group = "rebalance";
    let first_dir = state.path().join("first");
    let second_dir = state.path().join("second");
    // Notices new partitions within 2 s rather than librdkafka's default 5 minutes.
    let first_env = [("CRMFLOW_KAFKA__TOPIC_METADATA_REFRESH_INTERVAL_MS", "2000")];
    let mut first = Processor::start(broker, &topics, &first_dir, group, ProcessingGuarantee::ExactlyOnce, &first_env);
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (address, topics, sent) = (broker.address.clone(), topics.clone(), sent.clone());
        std::thread::spawn(move || produce_paced(&address, &topics, lines, Encoding::Json, LIVE_FOR, &sent))
    };
    let mut logs = String::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(4));
        let second_env = [("CRMFLOW_INSTANCE_ID", "1")];
        let mut second =
            Processor::start(broker, &topics, &second_dir, group, ProcessingGuarantee::ExactlyOnce, &second_env);
        // Leaves only once it took partitions over: on a loaded machine a rebalance can take
        // longer than any fixed wait, and a member that never owned anything moves nothing.
        let joined = Instant::now();
        while !second.logs().contains("opened state store") {
            assert!(
                joined.elapsed() < Duration::from_secs(120),
                "the second member got no partitions:\n{}",
                second.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(3));
        assert!(second.stop().success(), "{}", second.logs());
        logs += &second.logs();
    }
    publisher.join().unwrap();
    // Topic metadata changes too: every input grows by two partitions (co-partitioned still, and
    // empty, since everything is produced), which rebalances the group once more.
    for (_, topic) in topics.names.inputs() {
        broker.add_partitions(topic, PARTITIONS as usize + 2);
    }
    let noticed = Instant::now();
    while !first.logs().contains("opened state store partition=9") {
        assert!(noticed.elapsed() < Duration::from_secs(60), "new partitions not assigned:\n{}", first.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until_processed(broker, &topics, group, &mut first, Duration::from_secs(600));
    assert!(first.stop().success(), "{}", first.logs());
    logs += &first.logs();
    assert!(logs.matches("partitions revoked").count() >= 7, "members joined and left:\n{logs}");
    let actual = read_outputs(broker, &topics);
    compare(expected, &actual, Duplicates::Fail).unwrap_or_else(|diff| panic!("{diff}\n{logs}"));
}
