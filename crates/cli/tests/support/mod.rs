//! Shared harness of the Kafka tests: brokers started by the project's own commands, the
//! processor as a child process, and scenario files played through real topics.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tempfile::TempDir;

use crmflow_avro::SchemaRegistry;
use crmflow_codec::{decode_output, Encoding, Envelope, TopicNames};

/// The crmflow binary under test.
pub const CRMFLOW: &str = env!("CARGO_BIN_EXE_crmflow");

/// Which broker implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// librdkafka's mock cluster via `crmflow dev-broker` (transactions supported).
    Mock,
    /// tansu with its SQLite engine (no transactions).
    Tansu,
}

impl BrokerKind {
    /// The guarantee this broker supports.
    pub fn guarantee(self) -> &'static str {
        match self {
            BrokerKind::Mock => "exactly_once",
            BrokerKind::Tansu => "at_least_once",
        }
    }
}

/// A broker process with crmflow's topics, killed on drop.
pub struct Broker {
    child: Child,
    /// Bootstrap address.
    pub address: String,
    /// Partitions per topic.
    pub partitions: i32,
    /// Which implementation.
    pub kind: BrokerKind,
    _dir: TempDir,
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Broker {
    /// Starts `crmflow dev-broker` with every default topic, plus extra `name:partitions` topics.
    pub fn mock(partitions: i32, extra_topics: &[&str]) -> Broker {
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
        Broker { child, address, partitions, kind: BrokerKind::Mock, _dir: dir }
    }

    /// Starts tansu (SQLite engine) on a free port and creates crmflow's topics.
    pub fn tansu(partitions: i32) -> Broker {
        let broker = Broker::tansu_bare(partitions);
        let topics = TopicNames::default();
        let mut names: Vec<String> = topics.inputs().iter().map(|(_, t)| t.to_string()).collect();
        names.extend(topics.outputs().iter().map(|t| t.to_string()));
        broker.create_topics(&names, partitions);
        broker
    }

    /// Starts tansu (SQLite engine) on a free port with no topics.
    pub fn tansu_bare(partitions: i32) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let tansu = which_tansu();
        let log = fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(tansu)
            .current_dir(dir.path())
            .args(["broker", "--storage-engine", "sqlite://state/tansu.db", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        let broker =
            Broker { child, address: format!("127.0.0.1:{port}"), partitions, kind: BrokerKind::Tansu, _dir: dir };
        let topics = TopicNames::default();
        let mut names: Vec<String> = topics.inputs().iter().map(|(_, t)| t.to_string()).collect();
        names.extend(topics.outputs().iter().map(|t| t.to_string()));
        broker.create_topics(&names, partitions);
        broker
    }

    /// Partition count of each topic that exists, by name.
    pub fn partition_counts(&self) -> BTreeMap<String, usize> {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.address).create().unwrap();
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect()
    }

    /// Creates topics through the admin API (tansu; the mock cluster cannot).
    pub fn create_topics(&self, names: &[String], partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.address).create().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let topics: Vec<NewTopic> =
            names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        wait_for("topic creation", Duration::from_secs(30), || {
            runtime.block_on(admin.create_topics(&topics, &options)).ok()
        });
    }
}

fn which_tansu() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin")));
    candidates
        .map(|dir| dir.join("tansu"))
        .find(|p| p.exists())
        .expect("tansu is not installed: run `make deps` (cargo install tansu --locked --features libsql)")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `crmflow run` as a child process with its configuration in the environment.
pub struct Processor {
    child: Child,
    /// Its stderr log.
    pub log: PathBuf,
}

impl Processor {
    /// Starts the processor on a broker with a state directory; `env` adds CRMFLOW_ overrides.
    pub fn start(broker: &Broker, state_dir: &Path, application_id: &str, env: &[(&str, &str)]) -> Processor {
        let log = next_free(state_dir);
        let mut command = Command::new(CRMFLOW);
        command
            .args(["run", "--report-seconds", "1"])
            .env("CRMFLOW_BROKERS", &broker.address)
            .env("CRMFLOW_STATE_DIR", state_dir)
            .env("CRMFLOW_APPLICATION_ID", application_id)
            .env("CRMFLOW_PROCESSING_GUARANTEE", broker.kind.guarantee())
            .env("CRMFLOW_MAX_WAIT_MS", "1000")
            .env("CRMFLOW_STARTUP_TIMEOUT_MS", "20000")
            // A restarted or killed member's old session must not hold the group for the default 45 s.
            .env("CRMFLOW_KAFKA_CONSUMER__SESSION_TIMEOUT_MS", "6000")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "crmflow run did not stop on SIGTERM:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// Produces scenario lines: envelopes to their topics with their keys and timestamps; lines that are
/// not envelopes go raw to the CRM changes topic; lines for topics crmflow does not read are skipped.
pub fn produce_lines(broker: &Broker, lines: &[String]) {
    produce_lines_as(broker, lines, Encoding::Json)
}

/// [`produce_lines`] with the event values in the given encoding.
pub fn produce_lines_as(broker: &Broker, lines: &[String], encoding: Encoding) {
    produce_paced(&broker.address, lines, encoding, Duration::ZERO, &AtomicUsize::new(0));
}

/// Produces lines spread evenly over `over`, counting what was sent in `sent` (live traffic).
pub fn produce_paced(address: &str, lines: &[String], encoding: Encoding, over: Duration, sent: &AtomicUsize) {
    let started = Instant::now();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", address).create().unwrap();
    let topics = TopicNames::default();
    for (i, line) in lines.iter().enumerate() {
        if let Some(wait) =
            (started + over.mul_f64(i as f64 / lines.len() as f64)).checked_duration_since(Instant::now())
        {
            producer.poll(wait);
        }
        sent.store(i + 1, Ordering::SeqCst);
        match serde_json::from_str::<Envelope>(line) {
            Ok(envelope) if topics.input_stream(&envelope.topic).is_some() => {
                let payload = match encoding {
                    Encoding::Json => serde_json::to_vec(&envelope.value).unwrap(),
                    // Values that do not fit the schema cannot be written as Avro; send their JSON,
                    // which the Avro decoder rejects as not single-object encoded.
                    Encoding::Avro => SchemaRegistry::bundled()
                        .encode(&envelope.value)
                        .unwrap_or_else(|_| serde_json::to_vec(&envelope.value).unwrap()),
                };
                let mut record: BaseRecord<'_, str, [u8]> =
                    BaseRecord::to(&envelope.topic).payload(&payload[..]).timestamp(envelope.timestamp);
                if let Some(key) = &envelope.key {
                    record = record.key(key.as_str());
                }
                send(&producer, record);
            }
            Ok(_) => {}
            Err(_) => send(&producer, BaseRecord::<str, [u8]>::to(&topics.crm_changes).payload(line.as_bytes())),
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
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

/// An output record as consumed.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Topic.
    pub topic: String,
    /// Key as text.
    pub key: Option<String>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers as text.
    pub headers: BTreeMap<String, String>,
    /// Record timestamp.
    pub timestamp: i64,
}

/// Reads the output and dead-letter topics from the start (committed data only) until `count`
/// records are there and nothing more arrives for a moment, or until `timeout`.
pub fn consume_outputs(broker: &Broker, count: usize, timeout: Duration) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", "crmflow-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for topic in TopicNames::default().outputs() {
        for p in 0..broker.partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
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
                    topic: m.topic().to_owned(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    timestamp: m.timestamp().to_millis().unwrap_or(-1),
                });
                quiet_since = Instant::now();
            }
            Some(Err(e)) => eprintln!("test consumer: {e}"),
            None => {
                if records.len() >= count && quiet_since.elapsed() > Duration::from_millis(1500) {
                    break;
                }
            }
        }
    }
    records
}

/// A scenario's input lines and expected output envelopes.
pub fn scenario(name: &str) -> (Vec<String>, Vec<Envelope>) {
    let dir = scenarios_dir().join(name);
    let input = fs::read_to_string(dir.join("input.jsonl")).unwrap();
    let expected = fs::read_to_string(dir.join("expected.jsonl")).unwrap();
    (
        input.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect(),
        expected.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
    )
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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")
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

/// Compares consumed records with expected envelopes: per (topic, key) the same values in the same
/// order with the same timestamps; dead letters by key and error kind, with their source headers.
pub fn compare(expected: &[Envelope], actual: &[Consumed]) -> Result<(), String> {
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
    for r in actual {
        if r.topic == dlq {
            for header in
                ["crmflow.error.message", "crmflow.source.topic", "crmflow.source.partition", "crmflow.source.offset"]
            {
                if !r.headers.contains_key(header) {
                    return Err(format!("dead letter without header {header}: {:?}", r.headers));
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
            got.entry((r.topic.clone(), r.key.clone())).or_default().push((r.timestamp, value));
        }
    }
    want_dead.sort();
    got_dead.sort();
    if want_dead != got_dead {
        return Err(format!("dead letters differ:\n want {want_dead:?}\n got  {got_dead:?}"));
    }
    for (key, values) in &want {
        let actual = got.get(key).cloned().unwrap_or_default();
        if &actual != values {
            return Err(format!(
                "{key:?} differs:\n want {}\n got  {}",
                serde_json::to_string(values).unwrap(),
                serde_json::to_string(&actual).unwrap()
            ));
        }
    }
    if let Some(extra) = got.keys().find(|k| !want.contains_key(*k)) {
        return Err(format!("unexpected outputs for {extra:?}: {:?}", got[extra]));
    }
    Ok(())
}

/// One test per scenario file on a broker kind, plus a check that no scenario lacks its test.
#[allow(unused_macros)]
macro_rules! scenario_tests {
    ($kind:expr) => {
        scenario_tests!($kind;
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
    ($kind:expr; $($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                play_scenario($kind, $name);
            }
        )*

        #[test]
        fn every_scenario_directory_has_a_kafka_test() {
            assert_eq!(scenario_names(), vec![$($name.to_string()),*]);
        }
    };
}

/// Plays one scenario through a fresh broker and processor and checks the outputs.
pub fn play_scenario(kind: BrokerKind, name: &str) {
    let broker = match kind {
        BrokerKind::Mock => Broker::mock(4, &[]),
        BrokerKind::Tansu => Broker::tansu(4),
    };
    let (input, expected) = scenario(name);
    let expected = reproducible(&expected);
    produce_lines(&broker, &input);
    let state = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&broker, &state.path().join("state"), &format!("scenario-{name}"), &[]);
    let actual = consume_outputs(&broker, expected.len(), Duration::from_secs(60));
    let status = processor.stop();
    if let Err(diff) = compare(&expected, &actual) {
        panic!("scenario {name} on {kind:?}: {diff}\n--- processor log ---\n{}", processor.logs());
    }
    assert!(status.success(), "crmflow run exited with {status}:\n{}", processor.logs());
}
