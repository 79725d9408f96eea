//! Shared harness of the Kafka tests: the real Apache Kafka broker started by the project's own
//! script (one per test binary), each test on its own topics and group, the processor as a child
//! process, and outputs read back to the end offsets and checked against `crmflow simulate`.
//!
//! The broker, topics and offsets are `crmflow-testkit`'s, which the bench shares; what is
//! here is only the tests'.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, AlterConfig, NewPartitions, ResourceSpecifier};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use crmflow_avro::SchemaRegistry;
use crmflow_codec::{decode_output, Encoding, Envelope, TopicNames};
pub use crmflow_runtime::ProcessingGuarantee;
pub use crmflow_testkit::{committed, crmflow_command, end_offsets, Broker, Topics};

/// The crmflow binary under test.
pub const CRMFLOW: &str = env!("CARGO_BIN_EXE_crmflow");

/// The binary `crmflow run` starts from: `TEST_CRMFLOW_BIN` points the Kafka tests at another
/// build (to show that a test fails on the code before a fix).
fn run_binary() -> String {
    std::env::var("TEST_CRMFLOW_BIN").unwrap_or_else(|_| CRMFLOW.to_owned())
}

/// Polls `probe` until it returns something; fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    crmflow_testkit::wait_for(what, timeout, Duration::from_millis(50), || Ok::<_, crmflow_testkit::Error>(probe()))
        .unwrap_or_else(|e| panic!("{e}"))
}

static KAFKA: OnceLock<Broker> = OnceLock::new();

/// The real Apache Kafka broker of this test binary, started on first use by
/// `deploy/kafka/kafka.sh` (which stops it when this process exits).
pub fn kafka() -> &'static Broker {
    KAFKA.get_or_init(start_kafka)
}

fn start_kafka() -> Broker {
    // Under the target directory, per test binary: the broker outlives this process by a
    // moment (its script stops it once we are gone), so no temporary directory could be
    // removed in time; the next start of this binary's broker wipes it.
    let exe = std::env::current_exe().unwrap().file_stem().unwrap().to_string_lossy().into_owned();
    // `kafka_scale-<hash>`: one directory per test file, whatever the build.
    let binary = exe.rsplit_once('-').map_or(exe.as_str(), |(name, _)| name);
    let broker_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka").join(binary);
    Broker::start(&broker_dir, &[])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_topic_creation_timeout(Duration::from_secs(10))
}

/// Starts `crmflow dev-broker` (librdkafka's mock cluster) with every default topic, plus
/// extra `name:partitions` topics: for start-up checks that need no transactions.
pub fn mock_broker(partitions: i32, extra_topics: &[&str]) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let address_file = dir.path().join("address");
    let mut command = Command::new(CRMFLOW);
    command
        .args(["dev-broker", "--partitions", &partitions.to_string(), "--address-file"])
        .arg(&address_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for topic in extra_topics {
        command.args(["--topic", topic]);
    }
    let child = command.spawn().expect("starting crmflow dev-broker");
    let address = wait_for("the dev broker's address", Duration::from_secs(20), || {
        fs::read_to_string(&address_file).ok().filter(|a| !a.is_empty())
    });
    Broker::adopt(child, address)
}

/// Admin requests only the tests make, on the shared broker.
pub trait TestAdmin {
    /// Kafka's own account of the producers (and their open transactions) of a partition, for
    /// failure messages.
    fn describe_producers(&self, topic: &str, partition: i32) -> String;
    /// Grows a topic to `total` partitions.
    fn add_partitions(&self, topic: &str, total: usize);
    /// Deletes a topic, and waits until the metadata no longer shows it.
    fn delete_topic(&self, topic: &str);
    /// Deletes every record of every partition of `topic` (as retention would, in time).
    fn delete_all_records(&self, topic: &str);
    /// Sets one configuration property of a topic (and resets the others it had set: Kafka's
    /// AlterConfigs replaces a topic's whole configuration).
    fn set_topic_config(&self, topic: &str, key: &str, value: &str) {
        self.set_topic_configs(topic, &[(key, value)]);
    }
    /// Sets a topic's configuration to these properties (the others go back to their defaults).
    fn set_topic_configs(&self, topic: &str, properties: &[(&str, &str)]);
}

impl TestAdmin for Broker {
    fn describe_producers(&self, topic: &str, partition: i32) -> String {
        let output = Command::new(crmflow_testkit::kafka_script())
            .args(["tool", "TransactionsCommand", "--bootstrap-server", &self.address, "describe-producers"])
            .args(["--topic", topic, "--partition", &partition.to_string()])
            .output();
        match output {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => e.to_string(),
        }
    }

    fn add_partitions(&self, topic: &str, total: usize) {
        let (grow, options) = ([NewPartitions::new(topic, total)], AdminOptions::new());
        let results = self.admin().unwrap().run(|a| a.create_partitions(&grow, &options)).unwrap();
        assert!(results.iter().all(Result::is_ok), "adding partitions to {topic}: {results:?}");
    }

    fn delete_topic(&self, topic: &str) {
        let results = self.admin().unwrap().run(|a| a.delete_topics(&[topic], &AdminOptions::new())).unwrap();
        assert!(results.iter().all(Result::is_ok), "deleting {topic}: {results:?}");
        wait_for(&format!("{topic} deleted"), Duration::from_secs(30), || {
            (!self.partition_counts().unwrap().contains_key(topic)).then_some(())
        });
    }

    fn delete_all_records(&self, topic: &str) {
        let partitions = self.partition_counts().unwrap()[topic];
        let mut offsets = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            offsets.add_partition_offset(topic, partition, Offset::End).unwrap();
        }
        let result = self.admin().unwrap().run(|a| a.delete_records(&offsets, &AdminOptions::new())).unwrap();
        assert!(result.elements().iter().all(|e| e.error().is_ok()), "deleting the records of {topic}: {result:?}");
    }

    fn set_topic_configs(&self, topic: &str, properties: &[(&str, &str)]) {
        let change = properties
            .iter()
            .fold(AlterConfig::new(ResourceSpecifier::Topic(topic)), |change, (key, value)| change.set(key, value));
        let (changes, options) = ([change], AdminOptions::new());
        let results = self.admin().unwrap().run(|a| a.alter_configs(&changes, &options)).unwrap();
        assert!(results.iter().all(Result::is_ok), "setting {properties:?} of {topic}: {results:?}");
    }
}

/// One test's own topics on the shared broker, crmflow's names behind `prefix`: creates the
/// inputs and outputs of a test named `prefix` on `broker`.
pub fn own_topics(broker: &Broker, prefix: &str, partitions: i32) -> Topics {
    let topics = Topics::prefixed(prefix, partitions);
    topics.create(broker).unwrap();
    topics
}

/// Like [`own_topics`], but creates only the inputs (crmflow creates the outputs).
pub fn own_inputs(broker: &Broker, prefix: &str, partitions: i32) -> Topics {
    let topics = Topics::prefixed(prefix, partitions);
    topics.create_inputs(broker).unwrap();
    topics
}

/// `crmflow run` as a child process with its configuration in the environment.
pub struct Processor {
    child: Child,
    /// Its stderr log.
    pub log: PathBuf,
}

impl Processor {
    /// Starts the processor on `topics` with a state directory; `env` adds CRMFLOW_ overrides.
    pub fn start(
        broker: &Broker,
        topics: &Topics,
        state_dir: &Path,
        application_id: &str,
        guarantee: ProcessingGuarantee,
        env: &[(&str, &str)],
    ) -> Processor {
        let log = next_free(state_dir);
        let mut command = crmflow_command(run_binary());
        command
            .args(["run", "--report-seconds", "1"])
            .env("CRMFLOW_BROKERS", &broker.address)
            .env("CRMFLOW_STATE_DIR", state_dir)
            .env("CRMFLOW_APPLICATION_ID", application_id)
            .env("CRMFLOW_PROCESSING_GUARANTEE", guarantee.as_str())
            .env("CRMFLOW_MAX_WAIT_MS", "1000")
            .env("CRMFLOW_STARTUP_TIMEOUT_MS", "20000")
            // A killed member's old session must not hold the group for the default 45 s.
            .env("CRMFLOW_KAFKA_CONSUMER__SESSION_TIMEOUT_MS", "6000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        for (k, v) in topics.env() {
            command.env(k, v);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        Processor { child: command.spawn().expect("starting crmflow run"), log }
    }

    /// SIGKILL: no chance to commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the graceful exit.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "crmflow run did not stop on SIGTERM:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `<state_dir>.N.log` for the first N not taken, so restarts keep earlier logs.
fn next_free(state_dir: &Path) -> PathBuf {
    let mut n = 0;
    loop {
        let candidate = state_dir.with_extension(format!("{n}.log"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `events` generated events of 20 companies with 2% malformed records (`crmflow generate
/// --bad-ratio 0.02`), and what `crmflow simulate` makes of them.
pub fn generate(events: usize) -> (Vec<Vec<u8>>, Vec<Envelope>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.jsonl");
    let status = Command::new(CRMFLOW)
        .args(["generate", "--count", &events.to_string(), "--companies", "20", "--users", "30"])
        .args(["--bad-ratio", "0.02", "--output"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let lines = read_lines(&file);
    let expected = simulate(&lines);
    (lines, expected)
}

/// Reads the lines of a simulate/scenario file as bytes (a bad line need not be UTF-8).
pub fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Produces lines: envelopes to their topics with their keys and timestamps; lines that are not
/// envelopes go raw to the CRM changes topic, stamped like the line before (a raw line has no
/// timestamp of its own); lines for topics crmflow does not read are skipped.
pub fn produce_lines(broker: &Broker, topics: &Topics, lines: &[Vec<u8>]) {
    produce_paced(&broker.address, topics, lines, Encoding::Json, Duration::ZERO, &AtomicUsize::new(0));
}

/// The record line of an Opportunity `opp-<event_id>` of `company` (integration `sf`) created in
/// the CRM: owned by `owner`, at `stage`, closing on `close_date`, worth 10.
pub fn opportunity_line(
    company: &str,
    event_id: &str,
    owner: &str,
    stage: &str,
    close_date: &str,
    timestamp: i64,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"topic": "crm.changes", "key": company, "timestamp": timestamp,
        "value": {"type": "CrmRecordChanged", "event_id": event_id, "company_id": company, "integration_id": "sf",
            "object_type": "Opportunity", "object_id": format!("opp-{event_id}"), "operation": "created",
            "occurred_at": "2024-05-01T10:00:09Z", "fields": {"OwnerId": owner, "StageName": stage,
            "Amount": 10, "CloseDate": close_date}}}))
    .unwrap()
}

/// Produces lines spread evenly over `over`, counting what was sent in `sent` (live traffic).
pub fn produce_paced(
    address: &str,
    topics: &Topics,
    lines: &[Vec<u8>],
    encoding: Encoding,
    over: Duration,
    sent: &AtomicUsize,
) {
    let started = Instant::now();
    // Idempotent, as a connector should be: a batch retried after an error (a new topic's
    // leadership settling) must not land behind later ones, or simulate's order is not Kafka's.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let defaults = TopicNames::default();
    let mut last_timestamp = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Some(wait) =
            (started + over.mul_f64(i as f64 / lines.len() as f64)).checked_duration_since(Instant::now())
        {
            producer.poll(wait);
        }
        sent.store(i + 1, Ordering::SeqCst);
        let Ok(envelope) = serde_json::from_slice::<Envelope>(line) else {
            let raw = BaseRecord::<str, [u8]>::to(&topics.names.crm_changes).payload(&line[..]);
            send(&producer, raw.timestamp(last_timestamp));
            continue;
        };
        let Some(stream) = defaults.input_stream(&envelope.topic) else { continue };
        let payload = match encoding {
            Encoding::Json => serde_json::to_vec(&envelope.value).unwrap(),
            // Values that do not fit the schema cannot be written as Avro; send their JSON,
            // which the Avro decoder rejects as not single-object encoded.
            Encoding::Avro => SchemaRegistry::bundled()
                .encode(&envelope.value)
                .unwrap_or_else(|_| serde_json::to_vec(&envelope.value).unwrap()),
        };
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topics.names.input_topic(stream)).payload(&payload[..]).timestamp(envelope.timestamp);
        if let Some(key) = &envelope.key {
            record = record.key(key.as_str());
        }
        send(&producer, record);
        last_timestamp = envelope.timestamp;
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn send(producer: &BaseProducer, mut record: BaseRecord<'_, str, [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
        }
    }
}

/// Waits until the group has committed offsets at the end of every input partition: everything
/// produced so far is processed and its outputs committed. Fails if the processor exits.
pub fn wait_until_processed(
    broker: &Broker,
    topics: &Topics,
    group: &str,
    processor: &mut Processor,
    timeout: Duration,
) {
    wait_until_processed_by(broker, topics, group, &mut [processor], timeout);
}

/// An output record as consumed.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Topic, by crmflow's default name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Key as text.
    pub key: Option<String>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers as text.
    pub headers: BTreeMap<String, String>,
    /// Record timestamp.
    pub timestamp: i64,
}

/// Reads every committed record of the output and dead-letter topics, from the start to the end
/// offsets as they are now (not "until N records came").
pub fn read_outputs(broker: &Broker, topics: &Topics) -> Vec<Consumed> {
    let consumer = broker.reader("crmflow-test-reader").unwrap();
    let ends = end_offsets(broker, &topics.outputs(), topics.partitions).unwrap();
    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in ends.keys() {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut records = Vec::new();
    loop {
        let positions = consumer.position().unwrap();
        let done = ends.iter().all(|((topic, partition), end)| {
            *end == 0
                || positions.find_partition(topic, *partition).is_some_and(|e| match e.offset() {
                    Offset::Offset(o) => o >= *end,
                    _ => false,
                })
        });
        if done {
            return records;
        }
        if Instant::now() >= deadline {
            let stuck: Vec<String> = ends
                .iter()
                .filter(|((topic, partition), end)| {
                    **end > 0
                        && positions
                            .find_partition(topic, *partition)
                            .is_none_or(|e| !matches!(e.offset(), Offset::Offset(o) if o >= **end))
                })
                .map(|((topic, partition), end)| {
                    format!("{topic} [{partition}] (end {end}): {}", broker.describe_producers(topic, *partition))
                })
                .collect();
            panic!("outputs not readable to their end offsets within 120 s:\n{}", stuck.join("\n"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Consumed {
                    topic: topics.default_name(m.topic()).unwrap_or_else(|| m.topic().to_owned()),
                    partition: m.partition(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    timestamp: m.timestamp().to_millis().unwrap_or(-1),
                });
            }
            Some(Err(e)) => eprintln!("test consumer: {e}"),
            None => {}
        }
    }
}

/// What `crmflow simulate` makes of `lines`.
pub fn simulate(lines: &[Vec<u8>]) -> Vec<Envelope> {
    let input: Vec<u8> = lines.join(&b'\n');
    let mut out = Vec::new();
    crmflow::simulate::simulate(&input[..], &mut out, &TopicNames::default()).unwrap();
    String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A scenario's input lines and expected output envelopes.
pub fn scenario(name: &str) -> (Vec<Vec<u8>>, Vec<Envelope>) {
    let dir = scenarios_dir().join(name);
    let expected = fs::read_to_string(dir.join("expected.jsonl")).unwrap();
    (read_lines(&dir.join("input.jsonl")), expected.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

/// Every scenario's name.
pub fn scenario_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input.jsonl").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn scenarios_dir() -> PathBuf {
    crmflow_testkit::repo_root().join("tests/scenarios")
}

/// Dead letters whose source is an input topic: the only ones a Kafka run can reproduce.
pub fn reproducible(expected: &[Envelope]) -> Vec<Envelope> {
    expected
        .iter()
        .filter(|e| e.headers.get("crmflow.error.kind").map(String::as_str) != Some("unknown_topic"))
        .cloned()
        .collect()
}

/// Output values with timestamps, per (topic, key), in partition order.
type Streams = BTreeMap<(String, Option<String>), Vec<(i64, Value)>>;

/// How outputs that occur more than once are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// A duplicate fails the comparison (exactly-once).
    Fail,
    /// Later copies of an output (same event id, or a dead letter of the same source record)
    /// must equal the first and are then dropped (at-least-once after a crash).
    Drop,
}

/// Compares consumed records with expected envelopes: per (topic, key) the same values in the same
/// order with the same timestamps (so the same multiset); dead letters one per bad record, by key
/// and error kind, with their source headers.
pub fn compare(expected: &[Envelope], actual: &[Consumed], duplicates: Duplicates) -> Result<(), String> {
    let dlq = TopicNames::default().dead_letters;
    let mut want: Streams = BTreeMap::new();
    let mut want_dead: Vec<(Option<String>, String)> = Vec::new();
    for e in expected {
        if e.topic == dlq {
            want_dead.push((e.key.clone(), e.headers["crmflow.error.kind"].clone()));
        } else {
            want.entry((e.topic.clone(), e.key.clone())).or_default().push((e.timestamp, e.value.clone()));
        }
    }
    let mut got: Streams = BTreeMap::new();
    let mut got_dead: Vec<(Option<String>, String)> = Vec::new();
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut copies_got: BTreeMap<String, usize> = BTreeMap::new();
    let mut copies_wanted: BTreeMap<String, usize> = BTreeMap::new();
    for (_, value) in want.values().flatten() {
        *copies_wanted.entry(value["event_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    let mut seen_dead: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in actual {
        if r.topic == dlq {
            for header in
                ["crmflow.error.message", "crmflow.source.topic", "crmflow.source.partition", "crmflow.source.offset"]
            {
                if !r.headers.contains_key(header) {
                    return Err(format!("dead letter without header {header}: {:?}", r.headers));
                }
            }
            let source = format!(
                "{}/{}/{}",
                r.headers["crmflow.source.topic"],
                r.headers["crmflow.source.partition"],
                r.headers["crmflow.source.offset"]
            );
            if let Some(first) = seen_dead.insert(source.clone(), r.value.clone()) {
                match duplicates {
                    Duplicates::Fail => return Err(format!("dead letter of {source} published twice")),
                    Duplicates::Drop if first == r.value => continue,
                    Duplicates::Drop => return Err(format!("dead letters of {source} differ")),
                }
            }
            got_dead.push((r.key.clone(), r.headers.get("crmflow.error.kind").cloned().unwrap_or_default()));
        } else {
            let value: Value = match serde_json::from_slice(&r.value) {
                Ok(value) => value,
                Err(_) => decode_output(&r.value, Encoding::Avro)
                    .map(|event| serde_json::to_value(event).unwrap())
                    .map_err(|e| format!("output is neither JSON nor Avro: {e}"))?,
            };
            let id = value["event_id"].as_str().unwrap_or_default().to_owned();
            let first = seen.entry(id.clone()).or_insert_with(|| value.clone()).clone();
            let copies = copies_got.entry(id.clone()).or_insert(0);
            *copies += 1;
            // A forgotten event id sent again is decided again, legitimately: as often as
            // simulate publishes an output, and no more.
            if *copies > copies_wanted.get(&id).copied().unwrap_or(1) {
                match duplicates {
                    Duplicates::Fail => return Err(format!("output {id} published {copies} times: {value}")),
                    Duplicates::Drop if first == value => continue,
                    Duplicates::Drop => return Err(format!("a repeated output differs from the first: {id}")),
                }
            }
            got.entry((r.topic.clone(), r.key.clone())).or_default().push((r.timestamp, value));
        }
    }
    want_dead.sort();
    got_dead.sort();
    if want_dead != got_dead {
        return Err(format!(
            "dead letters differ ({} wanted, {} got):\n want {want_dead:?}\n got  {got_dead:?}",
            want_dead.len(),
            got_dead.len()
        ));
    }
    let mut differences = Vec::new();
    for (key, values) in &want {
        let actual = got.get(key).cloned().unwrap_or_default();
        if &actual != values {
            let first = values.iter().zip(&actual).position(|(w, g)| w != g).unwrap_or(values.len().min(actual.len()));
            differences.push(format!(
                "{key:?}: {} wanted, {} got; first difference at #{first}:\n want {}\n got  {}",
                values.len(),
                actual.len(),
                values.get(first).map(|v| v.1.to_string()).unwrap_or_default(),
                actual.get(first).map(|v| v.1.to_string()).unwrap_or_default(),
            ));
        }
    }
    for (key, values) in &got {
        if !want.contains_key(key) {
            differences.push(format!("{key:?}: {} unexpected outputs, e.g. {}", values.len(), values[0].1));
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(format!("{} output streams differ:\n{}", differences.len(), differences.join("\n")))
    }
}

/// One test per scenario file, plus a check that no scenario lacks its test.
#[allow(unused_macros)]
macro_rules! scenario_tests {
    () => {
        scenario_tests!(
            auto_sync_off => "auto-sync-off",
            bad_lines => "bad-lines",
            companies_and_integrations => "companies-and-integrations",
            conditions_no_longer_met => "conditions-no-longer-met",
            delete => "delete",
            duplicate_event_ids => "duplicate-event-ids",
            inactive_and_deleted_workflows => "inactive-and-deleted-workflows",
            operators => "operators",
            owner_change => "owner-change",
            seed_walkthrough => "seed-walkthrough",
            workflows_and_teams => "workflows-and-teams",
        );
    };
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                play_scenario($name);
            }
        )*

        #[test]
        fn every_scenario_directory_has_a_kafka_test() {
            assert_eq!(scenario_names(), vec![$($name.to_string()),*]);
        }
    };
}

/// Plays one scenario through the real broker under exactly-once and checks every output.
pub fn play_scenario(name: &str) {
    let broker = kafka();
    let topics = own_topics(broker, &format!("scenario-{name}"), 4);
    let (input, expected) = scenario(name);
    let expected = reproducible(&expected);
    produce_lines(broker, &topics, &input);
    let state = tempfile::tempdir().unwrap();
    let group = format!("scenario-{name}");
    let mut processor =
        Processor::start(broker, &topics, &state.path().join("state"), &group, ProcessingGuarantee::ExactlyOnce, &[]);
    wait_until_processed(broker, &topics, &group, &mut processor, Duration::from_secs(120));
    let status = processor.stop();
    let actual = read_outputs(broker, &topics);
    if let Err(diff) = compare(&expected, &actual, Duplicates::Fail) {
        panic!("scenario {name}: {diff}\n--- processor log ---\n{}", processor.logs());
    }
    assert!(status.success(), "crmflow run exited with {status}:\n{}", processor.logs());
}

/// Several instances, zombies and state directories (`kafka_instances.rs`).
impl Processor {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process freezes as in a long GC pause or a stalled VM; its session with the
    /// group lapses and its open transaction stays open. [`Processor::resume`] wakes it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT: a paused process carries on where it froze (a zombie, if it was replaced).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Like [`wait_until_processed`] for a group of several members: waits until the group has
/// committed offsets at the end of every input partition; fails if any of `members` exits.
pub fn wait_until_processed_by(
    broker: &Broker,
    topics: &Topics,
    group: &str,
    members: &mut [&mut Processor],
    timeout: Duration,
) {
    let consumer = broker.reader(group).unwrap();
    let ends = end_offsets(broker, &topics.inputs(), topics.partitions).unwrap();
    let all_logs = |members: &[&mut Processor]| members.iter().map(|m| m.logs()).collect::<Vec<_>>().join("\n---\n");
    let deadline = Instant::now() + timeout;
    loop {
        for member in members.iter_mut() {
            if let Some(status) = member.exited() {
                panic!(
                    "a member ({}) exited with {status} before processing everything:\n{}",
                    member.log.display(),
                    member.logs()
                );
            }
        }
        let Ok(committed) = committed(&consumer, ends.keys(), Duration::from_secs(10)) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let behind: Vec<String> = ends
            .iter()
            .filter_map(|((topic, partition), end)| {
                let at = committed.get(&(topic.clone(), *partition)).copied().flatten().unwrap_or(0);
                (at < *end).then(|| format!("{topic} [{partition}] at {at} of {end}"))
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not processed within {timeout:?}: {}\n{}",
            behind.join(", "),
            all_logs(members)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Copies a directory tree (a state directory snapshot: take it while the processor is paused
/// or dead, so the RocksDB files are what a crash would leave).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs a crmflow operator command (`replay`, `diff`, `reset`, …) to its end, configured like
/// [`Processor::start`]'s `crmflow run` (exactly-once): same broker, topics, state directory and
/// application id.
pub fn operate(
    broker: &Broker,
    topics: &Topics,
    state_dir: &Path,
    application_id: &str,
    args: &[&str],
) -> std::process::Output {
    let mut command = crmflow_command(CRMFLOW);
    command
        .args(args)
        .env("CRMFLOW_BROKERS", &broker.address)
        .env("CRMFLOW_STATE_DIR", state_dir)
        .env("CRMFLOW_APPLICATION_ID", application_id)
        .env("CRMFLOW_PROCESSING_GUARANTEE", ProcessingGuarantee::ExactlyOnce.as_str())
        .env("CRMFLOW_MAX_WAIT_MS", "1000")
        .env("CRMFLOW_STARTUP_TIMEOUT_MS", "20000")
        .env("CRMFLOW_KAFKA_CONSUMER__SESSION_TIMEOUT_MS", "6000")
        .stdin(Stdio::null());
    for (k, v) in topics.env() {
        command.env(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("starting crmflow");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "crmflow {args:?} did not finish within 180 s:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output { status, stdout: fs::read(&stdout).unwrap(), stderr: fs::read(&stderr).unwrap() }
}

/// The committed offsets of `group` on every input partition of `topics` (-1: none).
pub fn committed_inputs(broker: &Broker, topics: &Topics, group: &str) -> BTreeMap<(String, i32), i64> {
    let consumer = broker.reader(group).unwrap();
    let inputs: Vec<(String, i32)> =
        topics.inputs().into_iter().flat_map(|topic| (0..topics.partitions).map(move |p| (topic.clone(), p))).collect();
    let committed = committed(&consumer, &inputs, Duration::from_secs(10)).unwrap();
    committed.into_iter().map(|(partition, offset)| (partition, offset.unwrap_or(-1))).collect()
}
