//! The operator commands against the real Apache Kafka broker: `crmflow replay` into shadow
//! topics, `crmflow diff` of shadow and live outputs, `crmflow reset` of an application.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crmflow_codec::{decode_input_value, Envelope, TopicNames};
use crmflow_domain::InputStream;
use support::*;

/// A live application that has processed a generated stream, shared by the replay tests (each
/// replays into its own shadow).
struct Live {
    topics: Topics,
    state_dir: PathBuf,
    application_id: String,
    lines: Vec<Vec<u8>>,
    _dir: TempDir,
}

impl Live {
    fn operate(&self, args: &[&str]) -> std::process::Output {
        operate(kafka(), &self.topics, &self.state_dir, &self.application_id, args)
    }
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let broker = kafka();
        let topics = own_topics(broker, "ops-live", 4);
        let (lines, expected) = generate(10_000);
        produce_lines(broker, &topics, &lines);
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let application_id = "ops-live".to_owned();
        let mut processor =
            Processor::start(broker, &topics, &state_dir, &application_id, ProcessingGuarantee::ExactlyOnce, &[]);
        wait_until_processed(broker, &topics, &application_id, &mut processor, Duration::from_secs(180));
        assert!(processor.stop().success(), "{}", processor.logs());
        compare(&expected, &read_outputs(broker, &topics), Duplicates::Fail)
            .unwrap_or_else(|d| panic!("the live run differs from simulate: {d}\n{}", processor.logs()));
        Live { topics, state_dir, application_id, lines, _dir: dir }
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn succeed(output: std::process::Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed:\n{}\n{}", text(&output.stdout), text(&output.stderr));
    eprintln!("--- {what}:\n{}", text(&output.stdout));
    text(&output.stdout)
}

/// Runs a command that must fail; returns its stderr.
fn fail(output: std::process::Output, what: &str) -> String {
    assert!(!output.status.success(), "{what} should have failed:\n{}", text(&output.stdout));
    eprintln!("--- {what}:\n{}", text(&output.stderr));
    text(&output.stderr)
}

fn diff_json(live: &Live, shadow: &str) -> Value {
    let out = succeed(live.operate(&["diff", "--shadow", shadow, "--json", "--samples", "1000000"]), "diff");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("diff --json printed no JSON ({e}):\n{out}"))
}

/// The ids of a diff section's samples (all of them: the sample limit is above every count).
fn ids(diff: &Value, section: &str) -> BTreeSet<String> {
    let samples = diff[section]["samples"].as_array().unwrap();
    assert_eq!(samples.len() as u64, diff[section]["total"].as_u64().unwrap(), "{section}: every sample listed");
    samples.iter().map(|s| s["event_id"].as_str().unwrap_or("a dead letter").to_owned()).collect()
}

/// A replay from earliest with the history's own settings reproduces the live outputs exactly,
/// leaves the live group alone, and a shadow cannot be replayed into twice until reset.
#[test]
fn a_replay_with_unchanged_settings_diffs_empty() {
    let live = live();
    let broker = kafka();
    let before = committed_inputs(broker, &live.topics, &live.application_id);
    let report = succeed(live.operate(&["replay", "--from", "earliest", "--into", "same"]), "replay");
    assert!(report.contains("caught up"), "{report}");
    assert!(report.contains("ops-live.replay.same"), "{report}");
    assert_eq!(committed_inputs(broker, &live.topics, &live.application_id), before, "the live group moved");

    let diff = diff_json(live, "same");
    for section in ["added", "removed", "revised"] {
        assert_eq!(diff[section]["total"], 0, "{section}: {diff}");
    }
    let outputs = read_outputs(broker, &live.topics).len() as u64;
    assert_eq!(diff["unchanged"].as_u64().unwrap(), outputs, "every live output is matched: {diff}");
    let human = succeed(live.operate(&["diff", "--shadow", "same"]), "diff");
    assert!(human.contains("no difference"), "{human}");

    let again = fail(live.operate(&["replay", "--from", "earliest", "--into", "same"]), "a second replay");
    assert!(again.contains("was used before") && again.contains("reset --shadow same"), "{again}");
    let reset = succeed(live.operate(&["reset", "--shadow", "same", "--delete-outputs"]), "reset --shadow");
    assert!(reset.contains("users.provisioned.same"), "{reset}");
    let counts = broker.partition_counts().unwrap();
    assert!(counts.keys().all(|t| !t.ends_with(".same") && !t.contains("replay.same")), "{counts:?}");
    assert!(!live.state_dir.with_file_name("state.replay.same").exists());

    // Bad usage says what to fix.
    let bad = fail(live.operate(&["replay", "--from", "yesterday", "--into", "x"]), "replay --from yesterday");
    assert!(bad.contains("RFC 3339"), "{bad}");
    let none = fail(live.operate(&["diff", "--shadow", "nothing-here"]), "diff of a missing shadow");
    assert!(none.contains("crmflow replay --into nothing-here"), "{none}");
    // A topic named like a shadow's output, where no replay ever ran, is not crmflow's to delete.
    let lookalike = format!("{}.not-a-shadow", live.topics.names.users_provisioned);
    broker.create_topics(std::slice::from_ref(&lookalike), 1).unwrap();
    let refused = fail(live.operate(&["reset", "--shadow", "not-a-shadow", "--delete-outputs"]), "reset of no shadow");
    assert!(refused.contains("not a replay shadow"), "{refused}");
    assert!(exists(broker, &lookalike), "the reset deleted a topic no replay made");
}

/// A replay from a time publishes from each input partition's offset for that time, with state
/// built from everything before it: what it publishes equals the live outputs stamped from then on.
#[test]
fn a_replay_from_a_time_publishes_what_the_history_from_then_decides() {
    let live = live();
    let stamps: Vec<i64> =
        live.lines.iter().filter_map(|l| serde_json::from_slice::<Envelope>(l).ok()).map(|e| e.timestamp).collect();
    let middle = stamps[stamps.len() / 2];
    let from = chrono::DateTime::from_timestamp_millis(middle).unwrap().to_rfc3339();
    let report = succeed(live.operate(&["replay", "--from", &from, "--into", "later"]), "replay --from a time");
    assert!(report.contains("caught up") && report.contains("--from"), "{report}");
    let since = diff_json(live, "later");
    assert_eq!((since["added"]["total"].as_u64(), since["revised"]["total"].as_u64()), (Some(0), Some(0)), "{since}");
    assert!(since["removed"]["total"].as_u64().unwrap() > 0, "the outputs before {from} are not in the shadow");
    let out = succeed(live.operate(&["diff", "--shadow", "later", "--from", &from, "--json"]), "diff --from");
    let diff: Value = serde_json::from_str(&out).unwrap();
    for section in ["added", "removed", "revised"] {
        assert_eq!(diff[section]["total"], 0, "{section}: {diff}");
    }
    assert!(diff["unchanged"].as_u64().unwrap() > 0);
}

/// The override of `acme/sf`: its settings events from the history, with `w-won` reporting
/// another activity type (its outputs are revised), `w-meetings` off (removed) and `w-big-deals` from 10k
/// (added).
fn override_lines(lines: &[Vec<u8>]) -> Vec<String> {
    let settings = TopicNames::default().integration_settings;
    let mut out = Vec::new();
    for line in lines {
        let Ok(mut envelope) = serde_json::from_slice::<Envelope>(line) else { continue };
        let v = &mut envelope.value;
        if envelope.topic != settings || v["company_id"] != "acme" || v["integration_id"] != "sf" {
            continue;
        }
        match v["workflow"]["workflow_id"].as_str() {
            Some("w-won") => v["workflow"]["activity_type"] = Value::from("Deal"),
            Some("w-meetings") => v["workflow"]["active"] = Value::Bool(false),
            Some("w-big-deals") => {
                for condition in v["workflow"]["conditions"].as_array_mut().unwrap() {
                    if condition["field"] == "Amount" {
                        condition["value"] = Value::from(10_000);
                    }
                }
            }
            _ => {}
        }
        out.push(serde_json::to_string(&envelope).unwrap());
    }
    assert!(out.len() >= 4, "the generated stream has acme/sf's settings: {out:?}");
    out
}

/// The rule `crmflow replay --settings` documents, applied to the history for simulate: the
/// override's events first, then the history without the settings events of the integrations
/// the override names.
fn with_override(lines: &[Vec<u8>], overrides: &[String]) -> Vec<Vec<u8>> {
    let integration = |line: &[u8]| -> Option<(String, String)> {
        let envelope: Envelope = serde_json::from_slice(line).ok()?;
        (envelope.topic == TopicNames::default().integration_settings).then_some(())?;
        decode_input_value(InputStream::Settings, envelope.key.as_deref().map(str::as_bytes), envelope.value.clone())
            .ok()?;
        Some((envelope.value["company_id"].as_str()?.to_owned(), envelope.value["integration_id"].as_str()?.to_owned()))
    };
    let named: BTreeSet<(String, String)> = overrides.iter().filter_map(|l| integration(l.as_bytes())).collect();
    let mut out: Vec<Vec<u8>> = overrides.iter().map(|l| l.clone().into_bytes()).collect();
    out.extend(lines.iter().filter(|l| integration(l).is_none_or(|i| !named.contains(&i))).cloned());
    out
}

/// Output events by id, as simulate writes them.
fn by_id(envelopes: &[Envelope]) -> BTreeMap<String, Value> {
    envelopes
        .iter()
        .filter(|e| e.value.get("event_id").is_some())
        .map(|e| (e.value["event_id"].as_str().unwrap().to_owned(), e.value.clone()))
        .collect()
}

/// With one integration's workflows changed by `--settings`, the diff is exactly what
/// `crmflow simulate` predicts for the history with the same override.
#[test]
fn a_replay_with_changed_workflows_diffs_as_simulate_predicts() {
    let live = live();
    let overrides = override_lines(&live.lines);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("override.jsonl");
    std::fs::write(&file, overrides.join("\n")).unwrap();
    let report = succeed(
        live.operate(&["replay", "--from", "earliest", "--into", "what-if", "--settings", file.to_str().unwrap()]),
        "replay --settings",
    );
    assert!(report.contains("caught up") && report.contains("acme/sf"), "{report}");

    let before = by_id(&simulate(&live.lines));
    let after = by_id(&simulate(&with_override(&live.lines, &overrides)));
    let added: BTreeSet<String> = after.keys().filter(|id| !before.contains_key(*id)).cloned().collect();
    let removed: BTreeSet<String> = before.keys().filter(|id| !after.contains_key(*id)).cloned().collect();
    let revised: BTreeSet<String> =
        before.iter().filter(|(id, v)| after.get(*id).is_some_and(|w| w != *v)).map(|(id, _)| id.clone()).collect();
    let sizes = (added.len(), removed.len(), revised.len());
    assert!(
        !added.is_empty() && !removed.is_empty() && !revised.is_empty(),
        "the override changes something: {sizes:?}"
    );

    let diff = diff_json(live, "what-if");
    assert_eq!(ids(&diff, "added"), added, "added");
    assert_eq!(ids(&diff, "removed"), removed, "removed");
    assert_eq!(ids(&diff, "revised"), revised, "revised");
    for sample in diff["revised"]["samples"].as_array().unwrap() {
        let id = sample["event_id"].as_str().unwrap();
        assert_eq!(sample["live"], before[id]);
        assert_eq!(sample["shadow"], after[id]);
    }
    let human = succeed(live.operate(&["diff", "--shadow", "what-if", "--samples", "2"]), "diff");
    assert!(human.contains("ActivityAccepted") && human.contains("samples (2 of"), "{human}");
}

fn outputs_by_id(broker: &Broker, topics: &Topics) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut by_id: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for record in read_outputs(broker, topics) {
        let id = match serde_json::from_slice::<Value>(&record.value)
            .ok()
            .and_then(|v| v["event_id"].as_str().map(str::to_owned))
        {
            Some(id) => id,
            None => format!(
                "dead letter of {}/{}/{}",
                record.headers["crmflow.source.topic"],
                record.headers["crmflow.source.partition"],
                record.headers["crmflow.source.offset"]
            ),
        };
        by_id.entry(id).or_default().push(record.value);
    }
    by_id
}

fn exists(broker: &Broker, topic: &str) -> bool {
    broker.partition_counts().unwrap().contains_key(topic)
}

/// Reset refuses while an instance runs (naming it), changes nothing with `--dry-run`, and
/// after a reset to earliest a restarted run publishes every output again, identical.
#[test]
fn reset_to_earliest_publishes_the_same_outputs_again() {
    let broker = kafka();
    let name = "ops-reset";
    let topics = own_topics(broker, name, 2);
    let (lines, _) = generate(4_000);
    produce_lines(broker, &topics, &lines);
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let changelog = format!("{name}-projections-changelog");
    let run = || {
        let mut processor = Processor::start(broker, &topics, &state_dir, name, ProcessingGuarantee::ExactlyOnce, &[]);
        wait_until_processed(broker, &topics, name, &mut processor, Duration::from_secs(120));
        processor
    };
    let mut processor = run();
    let refused = fail(operate(broker, &topics, &state_dir, name, &["reset", "--to-earliest"]), "reset while live");
    assert!(refused.contains("live member") && refused.contains("rdkafka@"), "{refused}");
    assert!(processor.stop().success(), "{}", processor.logs());
    let first = outputs_by_id(broker, &topics);
    assert!(first.values().all(|v| v.len() == 1));
    let processed = committed_inputs(broker, &topics, name);

    let plan = succeed(operate(broker, &topics, &state_dir, name, &["reset", "--to-earliest", "--dry-run"]), "dry run");
    assert!(plan.contains("would delete internal topics: ") && plan.contains(&changelog), "{plan}");
    assert_eq!(committed_inputs(broker, &topics, name), processed, "a dry run moved the offsets");
    assert!(exists(broker, &changelog) && state_dir.exists(), "a dry run deleted something");

    let done = succeed(operate(broker, &topics, &state_dir, name, &["reset", "--to-earliest"]), "reset");
    assert!(done.contains("reset done"), "{done}");
    assert!(committed_inputs(broker, &topics, name).values().all(|o| *o == 0), "{done}");
    assert!(!exists(broker, &changelog) && !state_dir.exists(), "{done}");
    assert!(exists(broker, &topics.names.activities_accepted), "outputs stay without --delete-outputs");

    let mut processor = run();
    assert!(processor.stop().success(), "{}", processor.logs());
    let second = outputs_by_id(broker, &topics);
    assert_eq!(second.keys().collect::<Vec<_>>(), first.keys().collect::<Vec<_>>(), "the same outputs");
    for (id, values) in &second {
        assert_eq!(values.len(), 2, "{id}: once per run");
        assert!(values.iter().all(|v| *v == first[id][0]), "{id}: the same content");
    }
}

/// Inputs written in Kafka transactions end with a transaction marker (here also an aborted
/// record) that no consumer is handed: the replay's committed offsets stay short of the end
/// offsets, and it must still see that it has caught up and stop.
#[test]
fn a_replay_of_transactional_inputs_stops_by_itself() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = kafka();
    let name = "ops-txn";
    let topics = own_topics(broker, name, 2);
    let (generated, _) = generate(600);
    let defaults = TopicNames::default();
    let lines: Vec<Vec<u8>> = generated
        .into_iter()
        .filter(|l| serde_json::from_slice::<Envelope>(l).is_ok_and(|e| defaults.input_stream(&e.topic).is_some()))
        .collect();
    let expected = simulate(&lines);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("transactional.id", "ops-txn-producer")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let envelopes: Vec<Envelope> = lines.iter().map(|l| serde_json::from_slice(l).unwrap()).collect();
    let send_all = |envelopes: &[Envelope]| {
        for e in envelopes {
            let topic = topics.names.input_topic(defaults.input_stream(&e.topic).unwrap()).to_owned();
            let payload = serde_json::to_vec(&e.value).unwrap();
            let key = e.key.clone().unwrap_or_default();
            let mut record = BaseRecord::to(&topic).key(&key).payload(&payload).timestamp(e.timestamp);
            while let Err((_, back)) = producer.send(record) {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
        }
    };
    producer.begin_transaction().unwrap();
    send_all(&envelopes);
    producer.commit_transaction(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    send_all(&envelopes[envelopes.len() - 5..]);
    producer.flush(Duration::from_secs(30)).unwrap();
    producer.abort_transaction(Duration::from_secs(30)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let replay = operate(broker, &topics, &state_dir, name, &["replay", "--from", "earliest", "--into", "t"]);
    let log = text(&replay.stderr);
    let report = succeed(replay, "replay");
    assert!(report.contains("caught up"), "{report}");
    assert!(log.contains("transaction markers or aborted records only"), "{log}");
    let out = succeed(operate(broker, &topics, &state_dir, name, &["diff", "--shadow", "t", "--json"]), "diff");
    let diff: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        diff["added"]["total"].as_u64(),
        Some(expected.len() as u64),
        "no live outputs: all added, none aborted"
    );
}

/// End offsets are high watermarks, records of undecided transactions included. librdkafka
/// answers a read_committed client with the last stable offset instead, and the broker writes a
/// transaction's markers only after the commit has returned: for a moment the group's offsets
/// are committed while an output partition's stable offset still stands before the round's
/// records. Readers that stopped there (`diff`, the tests' output reader) missed that round.
/// Failed before: both reported 0 here.
#[test]
fn end_offsets_count_the_records_of_an_undecided_transaction() {
    use crmflow_runtime::operations::Operations;
    use crmflow_runtime::Config;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::Message;
    let broker = kafka();
    let topic = "ops-undecided.activities.accepted";
    broker.create_topics(&[topic.to_owned()], 1).unwrap();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("transactional.id", "ops-undecided-producer")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    for n in 0..3 {
        producer.send(BaseRecord::to(topic).key("acme").payload(&format!("record {n}"))).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let config = Config { brokers: broker.address.clone(), ..Config::default() };
    let ops = Operations::connect(&config).unwrap();
    let ends = ops.end_offsets(&[topic]).unwrap();
    let key = (topic.to_owned(), 0);
    assert_eq!(ends[&key], 3, "crmflow's operator commands");
    assert_eq!(end_offsets(broker, &[topic], 1).unwrap()[&key], 3, "the tests' output reader");

    producer.commit_transaction(Duration::from_secs(30)).unwrap();
    let mut read = Vec::new();
    ops.read_to(&ends, |m| {
        read.push(m.offset());
        Ok(())
    })
    .unwrap();
    assert_eq!(read, [0, 1, 2], "every committed record, read to the high watermark");
}
