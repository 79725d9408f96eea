//! The user-facing configuration: TOML file, `CRMFLOW_…` environment overrides, validation,
//! and the one place it turns into librdkafka client configurations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;
use serde::Deserialize;

use crmflow_codec::{Encoding, TopicNames};

/// How outputs and input offsets are made durable together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// Outputs and offsets in one Kafka transaction; needs a broker with transactions.
    #[cfg_attr(feature = "clap", value(name = "exactly_once", alias = "exactly-once"))]
    ExactlyOnce,
    /// Outputs acknowledged before offsets commit; a crash re-emits exact duplicates.
    #[cfg_attr(feature = "clap", value(name = "at_least_once", alias = "at-least-once"))]
    AtLeastOnce,
}

impl ProcessingGuarantee {
    /// The configuration value (`processing_guarantee`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingGuarantee::ExactlyOnce => "exactly_once",
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
        }
    }
}

/// The encoding of each topic's values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicEncodings {
    /// `crm.changes`.
    pub crm_changes: Encoding,
    /// `integration.settings`.
    pub integration_settings: Encoding,
    /// `team.assignments`.
    pub team_assignments: Encoding,
    /// `users.provisioned`.
    pub users_provisioned: Encoding,
    /// `activities.accepted`.
    pub activities_accepted: Encoding,
    /// `activities.ignored`.
    pub activities_ignored: Encoding,
}

/// Everything `crmflow run` needs to know.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The consumer group, the prefix of internal topics and of the transactional id.
    pub application_id: String,
    /// Distinguishes instances of one application: part of the transactional id, so no two
    /// replicas may share it. Defaults to the host name.
    pub instance_id: String,
    /// `exactly_once` or `at_least_once`.
    pub processing_guarantee: ProcessingGuarantee,
    /// How often processed work is committed, in milliseconds.
    pub commit_interval_ms: u64,
    /// How long a record waits for a lagging input stream before it is processed, in ms.
    pub max_wait_ms: u64,
    /// Where the RocksDB state stores live (one per input partition).
    pub state_dir: PathBuf,
    /// How long the store of a partition this instance no longer owns is kept before it is
    /// deleted, in milliseconds (Kafka Streams' `state.cleanup.delay.ms`): a partition that
    /// comes back soon restores only its changelog's tail.
    pub state_cleanup_delay_ms: u64,
    /// How many processed CRM event ids of each company are remembered, to drop resends.
    pub seen_capacity: usize,
    /// How many CRM records' last decision traces each partition keeps for the explain query
    /// (the oldest are forgotten first); 0 keeps none and skips tracing.
    pub explain_capacity: usize,
    /// Threads that process the assigned partitions side by side (each partition on one at a
    /// time, so its order holds); 0: one per CPU core.
    pub processing_threads: usize,
    /// How long to wait for the brokers at start before giving up, in milliseconds.
    pub startup_timeout_ms: u64,
    /// Replication factor of output topics crmflow creates (-1: the broker's default).
    pub replication_factor: i32,
    /// Topic names.
    pub topics: TopicNames,
    /// Value encoding per topic.
    pub encoding: TopicEncodings,
    /// librdkafka properties for every client, passed through as they are (security.protocol, sasl.*, ssl.*, …).
    pub kafka: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only (session.timeout.ms, fetch.*, …).
    pub kafka_consumer: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (linger.ms, compression.type, …).
    pub kafka_producer: BTreeMap<String, String>,
    /// Where the HTTP server listens (`host:port`: health, readiness, metrics, queries); empty:
    /// no HTTP server.
    pub http_listen: String,
    /// The `host:port` other instances reach this one's HTTP server at, to forward queries about
    /// companies it holds. Default: `http_listen`, with an all-interfaces host (`0.0.0.0`)
    /// replaced by the address the brokers see this instance at.
    pub http_advertised: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            brokers: "localhost:9092".into(),
            application_id: "crmflow".into(),
            instance_id: host_name(),
            processing_guarantee: ProcessingGuarantee::ExactlyOnce,
            commit_interval_ms: 100,
            max_wait_ms: 500,
            state_dir: PathBuf::from("state"),
            state_cleanup_delay_ms: 600_000,
            seen_capacity: crmflow_domain::state::DEFAULT_SEEN_CAPACITY,
            explain_capacity: 10_000,
            processing_threads: 0,
            startup_timeout_ms: 30_000,
            replication_factor: -1,
            topics: TopicNames::default(),
            encoding: TopicEncodings::default(),
            kafka: BTreeMap::new(),
            kafka_consumer: BTreeMap::new(),
            kafka_producer: BTreeMap::new(),
            http_listen: String::new(),
            http_advertised: String::new(),
        }
    }
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override does not parse or names an unknown key.
    #[error("config {origin}: {message}")]
    Parse {
        /// The file, or "environment".
        origin: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// The producer's transaction time-out unless configured: Kafka Streams' value.
const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 10_000;

/// How the restore consumer fetches (see [`Config::restore_consumer_config`]).
const RESTORE_FETCH: [(&str, &str); 2] = [("fetch.queue.backoff.ms", "10"), ("queued.max.messages.kbytes", "16384")];

/// Keys whose environment overrides are numbers.
const NUMERIC_KEYS: [&str; 8] = [
    "commit_interval_ms",
    "max_wait_ms",
    "state_cleanup_delay_ms",
    "seen_capacity",
    "explain_capacity",
    "processing_threads",
    "startup_timeout_ms",
    "replication_factor",
];

/// librdkafka properties crmflow sets itself; setting them by hand would break its guarantees.
const MANAGED_KAFKA_KEYS: [&str; 7] = [
    "bootstrap.servers",
    "partition.assignment.strategy",
    "group.id",
    "enable.auto.commit",
    "transactional.id",
    "isolation.level",
    "enable.auto.offset.store",
];

impl Config {
    /// Reads an optional TOML file, then applies `CRMFLOW_…` variables from `env`, then validates.
    ///
    /// `CRMFLOW_BROKERS` sets `brokers`; `CRMFLOW_TOPICS__CRM_CHANGES` sets `topics.crm_changes`;
    /// `CRMFLOW_KAFKA__SECURITY_PROTOCOL` sets the librdkafka property `security.protocol`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.message().to_owned(),
                })?;
                (table, path.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_owned()),
        };
        let mut overridden = false;
        for (name, value) in env {
            let Some(path) = name.strip_prefix("CRMFLOW_") else { continue };
            if path == "LOG" || path == "LOG_FORMAT" {
                continue;
            }
            set_override(&mut table, path, value);
            overridden = true;
        }
        let origin = if overridden { format!("{origin} with CRMFLOW_ environment overrides") } else { origin };
        let config: Config = toml::Table::try_into(table)
            .map_err(|e: toml::de::Error| ConfigError::Parse { origin, message: e.message().to_owned() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| Err(ConfigError::Invalid { key: key.into(), problem });
        if self.brokers.trim().is_empty() {
            return invalid(
                "brokers",
                "is empty; set it to host:port of your Kafka brokers, e.g. \"localhost:9092\"".into(),
            );
        }
        for broker in self.brokers.split(',') {
            let ok = broker
                .trim()
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return invalid("brokers", format!("`{broker}` is not host:port (e.g. \"localhost:9092\")"));
            }
        }
        for (key, value) in [("application_id", &self.application_id), ("instance_id", &self.instance_id)] {
            if !is_kafka_name(value) {
                return invalid(key, format!("`{value}` must be 1-200 characters of letters, digits, `.`, `_` or `-`"));
            }
        }
        if self.processing_threads > 1024 {
            return invalid(
                "processing_threads",
                format!("{} is more than 1024; use 0 for one per CPU core", self.processing_threads),
            );
        }
        if !(10..=60_000).contains(&self.commit_interval_ms) {
            return invalid("commit_interval_ms", format!("{} is outside 10..=60000", self.commit_interval_ms));
        }
        if self.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
            let timeout = self.transaction_timeout_ms();
            if self.commit_interval_ms.saturating_mul(5) > timeout {
                return invalid(
                    "commit_interval_ms",
                    format!(
                        "{} is too close to the producer's transaction.timeout.ms ({timeout}): a transaction stays \
                         open for a commit interval, so keep it below a fifth of the timeout",
                        self.commit_interval_ms
                    ),
                );
            }
        }
        if !self.http_listen.is_empty() && self.http_listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "http_listen",
                format!(
                    "`{}` is not an address and port such as \"0.0.0.0:8080\" (empty turns HTTP off)",
                    self.http_listen
                ),
            );
        }
        if !self.http_advertised.is_empty()
            && !self
                .http_advertised
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return invalid(
                "http_advertised",
                format!("`{}` is not host:port, e.g. \"crmflow-0.crmflow:8080\"", self.http_advertised),
            );
        }
        if self.max_wait_ms > 60_000 {
            return invalid("max_wait_ms", format!("{} is above 60000", self.max_wait_ms));
        }
        if self.seen_capacity == 0 {
            return invalid("seen_capacity", "must be at least 1".into());
        }
        let names = [
            ("topics.crm_changes", &self.topics.crm_changes),
            ("topics.integration_settings", &self.topics.integration_settings),
            ("topics.team_assignments", &self.topics.team_assignments),
            ("topics.users_provisioned", &self.topics.users_provisioned),
            ("topics.activities_accepted", &self.topics.activities_accepted),
            ("topics.activities_ignored", &self.topics.activities_ignored),
            ("topics.dead_letters", &self.topics.dead_letters),
        ];
        for (i, (key, name)) in names.iter().enumerate() {
            if !is_kafka_name(name) || name.len() > 249 {
                return invalid(key, format!("`{name}` is not a valid topic name (letters, digits, `.`, `_`, `-`)"));
            }
            if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
                return invalid(key, format!("`{name}` is also the name of {other}; every topic must be distinct"));
            }
        }
        for (table, properties) in
            [("kafka", &self.kafka), ("kafka_consumer", &self.kafka_consumer), ("kafka_producer", &self.kafka_producer)]
        {
            if let Some(key) = properties.keys().find(|k| MANAGED_KAFKA_KEYS.contains(&k.as_str())) {
                return invalid(
                    &format!("{table}.\"{key}\""),
                    "is set by crmflow itself (from brokers, application_id and processing_guarantee); remove it"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Properties every client shares: brokers plus the `kafka` table.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.kafka {
            config.set(key, value);
        }
        config
    }

    fn client_config_with(&self, specific: &BTreeMap<String, String>) -> ClientConfig {
        let mut config = self.client_config();
        for (key, value) in specific {
            config.set(key, value);
        }
        config
    }

    /// The consumer: manual commits, from the earliest offset, committed data only under exactly-once.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = self.client_config_with(&self.kafka_consumer);
        config
            .set("group.id", &self.application_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Range assignment gives one instance the same partition numbers of every input topic.
            .set("partition.assignment.strategy", "range");
        set_default(&mut config, "auto.offset.reset", "earliest");
        set_default(&mut config, "statistics.interval.ms", "5000");
        if let Some(client_id) = self.http_client_id() {
            config.set("client.id", client_id);
        }
        if self.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
            config.set("isolation.level", "read_committed");
        }
        config
    }

    /// The consumer's `client.id` when it serves HTTP: it tells the other instances where to
    /// forward queries (see [`crate::peers`]). `None` without HTTP, or when the `kafka` tables set
    /// a `client.id` of their own (queries are then not forwarded to this instance).
    pub fn http_client_id(&self) -> Option<String> {
        if self.http_listen.is_empty()
            || self.kafka.contains_key("client.id")
            || self.kafka_consumer.contains_key("client.id")
        {
            return None;
        }
        let advertised = if self.http_advertised.is_empty() { &self.http_listen } else { &self.http_advertised };
        Some(crate::peers::client_id(&self.instance_id, advertised))
    }

    /// The consumer that restores state stores from their changelog: no group (it is assigned
    /// partitions directly and commits nothing), committed records only.
    ///
    /// Once its prefetch queue is full, librdkafka postpones the next fetch by
    /// `fetch.queue.backoff.ms` (default 1 s), and a restore writes more slowly than it fetches,
    /// so it kept hitting that pause with the CPU idle. It waits 10 ms instead, and prefetches
    /// at most 16 MiB (not 64) per restoring partition: restores run side by side. `[kafka]`
    /// and `[kafka_consumer]` settings override both.
    pub fn restore_consumer_config(&self) -> ClientConfig {
        let mut config = self.client_config_with(&self.kafka_consumer);
        for (key, value) in RESTORE_FETCH {
            if !self.kafka.contains_key(key) && !self.kafka_consumer.contains_key(key) {
                config.set(key, value);
            }
        }
        config
            .set("group.id", format!("{}-restore", self.application_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest");
        config
    }

    /// The compacted topic that mirrors every state store write, one partition per input
    /// partition: `<application_id>-projections-changelog`.
    pub fn changelog_topic(&self) -> String {
        format!("{}-projections-changelog", self.application_id)
    }

    /// The threads that process partitions: `processing_threads`, or one per CPU core.
    pub fn processing_threads(&self) -> usize {
        match self.processing_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The client that reads the changelog's offsets and metadata: it sees the high watermark,
    /// records of open transactions included (see [`crate::restore`]).
    pub fn changelog_client_config(&self) -> ClientConfig {
        let mut config = self.restore_consumer_config();
        config.set("isolation.level", "read_uncommitted");
        config
    }

    /// The producer: idempotent always, transactional under exactly-once.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config_with(&self.kafka_producer);
        set_default(&mut config, "enable.idempotence", "true");
        set_default(&mut config, "linger.ms", "5");
        if self.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
            config.set("transactional.id", self.transactional_id());
            // As Kafka Streams does: a crashed instance's open transaction holds back its
            // partitions' committed offsets (and read_committed readers) until it times out.
            set_default(&mut config, "transaction.timeout.ms", &DEFAULT_TRANSACTION_TIMEOUT_MS.to_string());
        }
        config
    }

    /// A producer property as configured (producer table first, then the shared one).
    fn producer_setting(&self, key: &str) -> Option<&str> {
        self.kafka_producer.get(key).or_else(|| self.kafka.get(key)).map(String::as_str)
    }

    /// The largest record the producer sends: its `message.max.bytes` (librdkafka's default:
    /// 1,000,000).
    pub fn producer_max_message_bytes(&self) -> i64 {
        self.producer_setting("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
    }

    /// The largest changelog record (key and value) a state store may write: what both the
    /// producer and the changelog topic (`max_message_bytes`) take, less a record's framing.
    pub fn max_changelog_record_bytes(&self, max_message_bytes: i64) -> usize {
        let limit = self.producer_max_message_bytes().min(max_message_bytes);
        usize::try_from(limit).unwrap_or(0).saturating_sub(crmflow_store::CHANGELOG_RECORD_FRAMING).max(1)
    }

    /// Keeps the producer's batches within `max_message_bytes` (the smallest any topic it writes
    /// takes): librdkafka does not split a batch the broker refuses as too large, and would
    /// report every record in it as too large. A single larger record still goes in a batch of
    /// its own, and is refused (and set aside) alone.
    pub fn fit_batches_within(&mut self, max_message_bytes: i64) {
        let configured = self.producer_setting("batch.size").and_then(|v| v.parse::<i64>().ok()).unwrap_or(1_000_000);
        let framing = crmflow_store::CHANGELOG_RECORD_FRAMING as i64;
        let batch = configured.min(max_message_bytes - framing).max(1);
        self.kafka_producer.insert("batch.size".to_owned(), batch.to_string());
    }

    /// The producer's `transaction.timeout.ms`: how long a crashed member's open transaction
    /// (and the consumer offsets in it) can hold back its partitions.
    pub fn transaction_timeout_ms(&self) -> u64 {
        self.producer_setting("transaction.timeout.ms")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS)
    }

    /// The producer's transactional id under exactly-once: `application_id.instance_id`.
    pub fn transactional_id(&self) -> String {
        format!("{}.{}", self.application_id, self.instance_id)
    }

    /// The output and dead-letter topics of shadow `suffix`: `<topic>.<suffix>`; the inputs stay.
    pub fn shadow_topics(&self, suffix: &str) -> TopicNames {
        let shadow = |topic: &str| format!("{topic}.{suffix}");
        TopicNames {
            users_provisioned: shadow(&self.topics.users_provisioned),
            activities_accepted: shadow(&self.topics.activities_accepted),
            activities_ignored: shadow(&self.topics.activities_ignored),
            dead_letters: shadow(&self.topics.dead_letters),
            ..self.topics.clone()
        }
    }

    /// The configuration of a replay into shadow `suffix` (`crmflow replay --into`): the same
    /// inputs (the settings from `<settings>.<suffix>` when `settings_copy`), outputs and dead
    /// letters to [`Config::shadow_topics`], and its own consumer group, changelog, transactional
    /// id (all from the application id `<application_id>.replay.<suffix>`) and state directory
    /// (`<state_dir>.replay.<suffix>`), so the live application is left as it is.
    pub fn replay_config(&self, suffix: &str, settings_copy: bool) -> Result<Config, ConfigError> {
        if !is_kafka_name(suffix) {
            return Err(ConfigError::Invalid {
                key: "--into".into(),
                problem: format!("`{suffix}` must be 1-200 characters of letters, digits, `.`, `_` or `-`"),
            });
        }
        let mut topics = self.shadow_topics(suffix);
        if settings_copy {
            topics.integration_settings = format!("{}.{suffix}", self.topics.integration_settings);
        }
        let state_dir = match self.state_dir.file_name() {
            Some(name) => self.state_dir.with_file_name(format!("{}.replay.{suffix}", name.to_string_lossy())),
            None => self.state_dir.join(format!("replay.{suffix}")),
        };
        let config = Config {
            application_id: format!("{}.replay.{suffix}", self.application_id),
            state_dir,
            topics,
            ..self.clone()
        };
        config.validate()?;
        Ok(config)
    }

    /// The encoding of an output topic's values.
    pub fn output_encoding(&self, event: &crmflow_domain::OutputEvent) -> Encoding {
        use crmflow_domain::OutputEvent::*;
        match event {
            UserProvisioned(_) => self.encoding.users_provisioned,
            ActivityAccepted(_) => self.encoding.activities_accepted,
            ActivityIgnored(_) => self.encoding.activities_ignored,
        }
    }

    /// The encoding of an input stream's values.
    pub fn input_encoding(&self, stream: crmflow_domain::InputStream) -> Encoding {
        use crmflow_domain::InputStream::*;
        match stream {
            Settings => self.encoding.integration_settings,
            Teams => self.encoding.team_assignments,
            CrmChanges => self.encoding.crm_changes,
        }
    }
}

/// The host name, made fit for a transactional id (`0` if it cannot be read).
fn host_name() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(200)
        .collect();
    if name.is_empty() {
        "0".into()
    } else {
        name
    }
}

/// Sets a property unless the pass-through table already did.
fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

fn is_kafka_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Sets `A__B__C` (lower-cased) in the table; under the librdkafka tables, `_` in the last part
/// becomes `.` (librdkafka property names have dots, never underscores).
fn set_override(table: &mut toml::Table, path: &str, value: String) {
    let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    let Some((last, parents)) = parts.split_last() else { return };
    let mut current = table;
    for part in parents {
        let entry = current.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else { return };
        current = next;
    }
    let librdkafka = matches!(parents.first().map(String::as_str), Some("kafka" | "kafka_consumer" | "kafka_producer"));
    let key = if librdkafka { last.replace('_', ".") } else { last.clone() };
    let value = match value.parse::<i64>() {
        Ok(n) if NUMERIC_KEYS.contains(&key.as_str()) => toml::Value::Integer(n),
        _ => toml::Value::String(value),
    };
    current.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crmflow.toml");
        std::fs::write(&path, toml_text).unwrap();
        Config::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_example_config_loads() {
        let example = include_str!("../../../deploy/crmflow.example.toml");
        let config = load(example, &[]).unwrap();
        assert_eq!(config.processing_guarantee, ProcessingGuarantee::ExactlyOnce);
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "brokers = \"a:1\"\n[topics]\ncrm_changes = \"in\"\n",
            &[
                ("CRMFLOW_BROKERS", "b:2"),
                ("CRMFLOW_COMMIT_INTERVAL_MS", "250"),
                ("CRMFLOW_TOPICS__DEAD_LETTERS", "dlq"),
                ("CRMFLOW_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
                ("CRMFLOW_ENCODING__CRM_CHANGES", "avro"),
                ("CRMFLOW_KAFKA_CONSUMER__SESSION_TIMEOUT_MS", "6000"),
            ],
        )
        .unwrap();
        assert_eq!(config.brokers, "b:2");
        assert_eq!(config.commit_interval_ms, 250);
        assert_eq!(config.topics.crm_changes, "in");
        assert_eq!(config.topics.dead_letters, "dlq");
        assert_eq!(config.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(config.encoding.crm_changes, Encoding::Avro);
        assert_eq!(config.kafka_consumer["session.timeout.ms"], "6000");
        assert_eq!(config.consumer_config().get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.producer_config().get("session.timeout.ms"), None);
    }

    #[test]
    fn the_restore_consumer_fetches_again_soon_unless_told_otherwise() {
        let config = load("", &[]).unwrap();
        let restore = config.restore_consumer_config();
        assert_eq!(restore.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(restore.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(config.consumer_config().get("fetch.queue.backoff.ms"), None, "only the restore's");
        let tuned = load("", &[("CRMFLOW_KAFKA_CONSUMER__FETCH_QUEUE_BACKOFF_MS", "50")]).unwrap();
        assert_eq!(tuned.restore_consumer_config().get("fetch.queue.backoff.ms"), Some("50"));
        let shared = load("", &[("CRMFLOW_KAFKA__QUEUED_MAX_MESSAGES_KBYTES", "4096")]).unwrap();
        assert_eq!(shared.restore_consumer_config().get("queued.max.messages.kbytes"), Some("4096"));
    }

    #[test]
    fn a_replay_config_shares_the_inputs_and_nothing_else() {
        let live = load("application_id = \"crm\"\nstate_dir = \"/var/lib/crmflow\"\n", &[]).unwrap();
        let replay = live.replay_config("try1", false).unwrap();
        assert_eq!(replay.application_id, "crm.replay.try1");
        assert_eq!(replay.changelog_topic(), "crm.replay.try1-projections-changelog");
        assert_ne!(replay.transactional_id(), live.transactional_id());
        assert_eq!(replay.state_dir, PathBuf::from("/var/lib/crmflow.replay.try1"));
        assert_eq!(replay.topics.inputs(), live.topics.inputs());
        assert_eq!(replay.topics.activities_accepted, "activities.accepted.try1");
        assert_eq!(replay.topics.dead_letters, "crmflow.dlq.try1");
        let with_settings = live.replay_config("try1", true).unwrap();
        assert_eq!(with_settings.topics.integration_settings, "integration.settings.try1");
        assert!(live.replay_config("no way", false).unwrap_err().to_string().contains("--into"));
    }

    #[test]
    fn mistakes_name_the_key() {
        let message = |r: Result<Config, ConfigError>| r.unwrap_err().to_string();
        assert!(message(load("brokerz = \"a:1\"", &[])).contains("brokerz"));
        assert!(message(load("brokers = \"nohost\"", &[])).contains("`brokers`"));
        assert!(message(load("processing_guarantee = \"maybe\"", &[])).contains("maybe"));
        assert!(message(load("commit_interval_ms = 0", &[])).contains("commit_interval_ms"));
        assert!(message(load("commit_interval_ms = 5000", &[])).contains("transaction.timeout.ms"));
        assert!(load("commit_interval_ms = 5000\nprocessing_guarantee = \"at_least_once\"", &[]).is_ok());
        assert!(message(load("[topics]\ncrm_changes = \"crmflow.dlq\"", &[])).contains("distinct"));
        assert!(message(load("[kafka]\n\"group.id\" = \"x\"", &[])).contains("remove it"));
        assert!(message(load("[encoding]\ncrm_changes = \"xml\"", &[])).contains("xml"));
        assert!(message(load("processing_threads = 5000", &[])).contains("processing_threads"));
    }

    #[test]
    fn processing_threads_default_to_the_cores() {
        let config = load("", &[("CRMFLOW_PROCESSING_THREADS", "0")]).unwrap();
        assert!(config.processing_threads() >= 1);
        assert_eq!(load("processing_threads = 3", &[]).unwrap().processing_threads(), 3);
    }
}
