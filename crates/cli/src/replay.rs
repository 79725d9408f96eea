//! `crmflow replay`: reprocess the inputs' history into shadow topics, to see what a change
//! would have done before making it live.
//!
//! A replay is `crmflow_runtime::run` with a derived configuration
//! ([`Config::replay_config`]): the same inputs, outputs and dead letters to `<topic>.<SUFFIX>`,
//! its own consumer group, changelog, transactional id and state directory. The live
//! application is not touched. It stops by itself once its group's committed offsets reach the
//! inputs' end offsets taken at start.
//!
//! - `--from earliest` publishes what every record of the history decides.
//! - `--from <time>` commits the replay group's offsets at each input partition's offset for
//!   that time before it starts. State is built from scratch all the same: the records before
//!   those offsets are processed to build it and publish nothing (the runtime's rule for records
//!   below the group's offsets, see `crmflow_runtime::resume`); the records from there on
//!   publish. So the shadow holds what the history from that time decides, given everything
//!   before it; compare it with `crmflow diff --from <time>`.
//! - `--settings FILE` (see [`SettingsOverride`]) makes the replay read its settings from a copy,
//!   `<settings topic>.<SUFFIX>`: first the file's events, then the history's settings records
//!   (same partitions, keys, values, headers and timestamps) except those of the integrations
//!   the file names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use crmflow_avro::SchemaRegistry;
use crmflow_codec::{decode_input, decode_input_value, Encoding, Envelope, TopicNames};
use crmflow_domain::{InputEvent, InputStream};
use crmflow_runtime::config::ConfigError;
use crmflow_runtime::operations::{Member, Offsets, OperationError, Operations, Read};
use crmflow_runtime::report::Counters;
use crmflow_runtime::{Config, Observer, ProcessingGuarantee, RunError, Shutdown, Watch};

use crate::point::Point;
use crate::reset::describe_members;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// The shadow's suffix (`--into`).
    pub suffix: String,
    /// Where publishing starts.
    pub from: Point,
    /// The settings override file, if any.
    pub settings: Option<PathBuf>,
}

/// Why a replay did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The shadow's configuration cannot be used.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The override file cannot be read.
    #[error("cannot read the settings file {path}: {source}")]
    SettingsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the override file is not a settings event.
    #[error("settings file {path}, line {line}: {message}")]
    SettingsLine {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The override file holds no event.
    #[error("settings file {0} has no events; leave --settings out to replay the history's settings")]
    EmptySettings(PathBuf),
    /// The shadow was used before: a replay into it would not start from fresh state.
    #[error(
        "shadow `{suffix}` was used before ({what}); choose another --into, or remove it first with \
         `crmflow reset --shadow {suffix} --delete-outputs` (and the same --config)"
    )]
    ShadowInUse {
        /// The suffix.
        suffix: String,
        /// What is there.
        what: String,
    },
    /// A replay into the same shadow is running.
    #[error("a replay into `{suffix}` is running (consumer group members: {members})")]
    Running {
        /// The suffix.
        suffix: String,
        /// Its members.
        members: String,
    },
    /// The inputs cannot be replayed.
    #[error("{0}")]
    Inputs(String),
    /// The settings copy is not what was written.
    #[error("the settings copy `{topic}` is incomplete: {detail}")]
    Copy {
        /// The copy topic.
        topic: String,
        /// What differs.
        detail: String,
    },
    /// Kafka refused a request.
    #[error(transparent)]
    Operation(#[from] OperationError),
    /// The replay's processor stopped with an error.
    #[error("the replay stopped: {0}")]
    Run(#[from] RunError),
}

/// The name of the settings copy of shadow `suffix`: `<settings topic>.<suffix>`.
pub fn settings_copy_topic(config: &Config, suffix: &str) -> String {
    format!("{}.{suffix}", config.topics.integration_settings)
}

/// Settings and workflow events that replace, for a replay, those of the integrations they name.
///
/// The rule: an integration is a (`company_id`, `integration_id`) pair. The history's settings
/// events (`IntegrationSettingsChanged`, `WorkflowSaved`, `WorkflowDeleted`) of an integration
/// that has at least one event in the file are skipped; the file's events are applied first, in
/// file order, before any record of the history. Other integrations, team placements and CRM
/// changes are replayed as they are. A settings record of the history that does not decode is
/// kept (it becomes a dead letter, as it did live).
#[derive(Debug, Clone, Default)]
pub struct SettingsOverride {
    /// The events, in file order: the company (the record key) and the JSON value.
    pub events: Vec<(String, Value)>,
    /// The integrations the file names.
    pub integrations: BTreeSet<(String, String)>,
}

impl SettingsOverride {
    /// Reads a JSON Lines file of `{"topic","key","timestamp","value"}` records for the settings
    /// topic (the lines `crmflow simulate` reads), checked as the settings topic's records are
    /// (and that they can be written in its encoding); blank lines are skipped.
    pub fn read(path: &Path, config: &Config) -> Result<SettingsOverride, ReplayError> {
        let topics = &config.topics;
        let text = std::fs::read_to_string(path)
            .map_err(|source| ReplayError::SettingsFile { path: path.to_owned(), source })?;
        let mut result = SettingsOverride::default();
        let defaults = TopicNames::default();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fail = |message: String| ReplayError::SettingsLine { path: path.to_owned(), line: index + 1, message };
            let envelope: Envelope = serde_json::from_str(line).map_err(|e| {
                fail(format!("not a record line {{\"topic\", \"key\", \"timestamp\", \"value\"}}: {e}"))
            })?;
            if envelope.topic != topics.integration_settings && envelope.topic != defaults.integration_settings {
                return Err(fail(format!(
                    "topic `{}`: only settings events can override (topic `{}`)",
                    envelope.topic, topics.integration_settings
                )));
            }
            let key = envelope.key.as_deref().map(str::as_bytes);
            let event = decode_input_value(InputStream::Settings, key, envelope.value.clone())
                .map_err(|e| fail(e.to_string()))?;
            let integration = integration_of(&event).ok_or_else(|| fail("not a settings event".into()))?;
            let encoding = config.encoding.integration_settings;
            encode_settings(&envelope.value, encoding)
                .map_err(|e| fail(format!("cannot be written as {encoding:?} (the settings topic's encoding): {e}")))?;
            result.integrations.insert(integration);
            result.events.push((event.company_id().to_owned(), envelope.value));
        }
        if result.events.is_empty() {
            return Err(ReplayError::EmptySettings(path.to_owned()));
        }
        Ok(result)
    }

    /// Whether `event` is a settings event of an integration the file overrides (and is skipped).
    pub fn overrides(&self, event: &InputEvent) -> bool {
        integration_of(event).is_some_and(|i| self.integrations.contains(&i))
    }
}

/// The integration of a settings event.
fn integration_of(event: &InputEvent) -> Option<(String, String)> {
    let (company, integration) = match event {
        InputEvent::IntegrationSettingsChanged(e) => (&e.company_id, &e.integration_id),
        InputEvent::WorkflowSaved(e) => (&e.company_id, &e.integration_id),
        InputEvent::WorkflowDeleted(e) => (&e.company_id, &e.integration_id),
        _ => return None,
    };
    Some((company.clone(), integration.clone()))
}

/// What the settings copy holds.
#[derive(Debug, Clone)]
pub struct CopySummary {
    /// The override file.
    pub file: PathBuf,
    /// The copy topic.
    pub topic: String,
    /// Events of the file.
    pub events: usize,
    /// The integrations they override, as `company/integration`.
    pub integrations: Vec<String>,
    /// History records copied.
    pub copied: u64,
    /// History records skipped (settings events of the overridden integrations).
    pub skipped: u64,
    /// The timestamp the file's events carry: the earliest of the history, so they come first.
    pub stamped: i64,
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// The shadow's suffix.
    pub suffix: String,
    /// The replay's configuration.
    pub config: Config,
    /// Where publishing started.
    pub from: Point,
    /// Per input partition, where publishing started (the group's offsets at start).
    pub start: Offsets,
    /// Per input partition, the end offsets taken at start.
    pub end: Offsets,
    /// The settings copy, with `--settings`.
    pub settings: Option<CopySummary>,
    /// What the processor counted.
    pub counters: Counters,
    /// Whether it caught up with `end` (false: stopped by a signal first).
    pub caught_up: bool,
}

/// Runs a replay until it has caught up with the inputs' end offsets at start, or `shutdown`.
pub fn replay(
    config: &Config,
    request: &ReplayRequest,
    shutdown: &Shutdown,
    watch: &Watch,
    observer: &mut dyn Observer,
) -> Result<ReplayReport, ReplayError> {
    let settings = match &request.settings {
        Some(path) => Some((path.clone(), SettingsOverride::read(path, config)?)),
        None => None,
    };
    let shadow = config.replay_config(&request.suffix, settings.is_some())?;
    let mut ops = Operations::connect(config)?;
    let partitions = input_partitions(&ops, config)?;
    check_unused(&ops, config, &shadow, &request.suffix)?;
    let live_inputs: Vec<&str> = config.topics.inputs().iter().map(|(_, t)| *t).collect();
    let live_ends = ops.end_offsets(&live_inputs)?;
    let copy = match &settings {
        Some((path, settings)) => {
            Some(write_settings_copy(&mut ops, config, &shadow, partitions, &live_ends, path, settings)?)
        }
        None => None,
    };
    let inputs: Vec<&str> = shadow.topics.inputs().iter().map(|(_, t)| *t).collect();
    let (low, end) = ops.watermarks(&inputs)?;
    let start = match request.from {
        Point::Earliest => low,
        Point::Time(ms) => ops.offsets_for_time(&inputs, ms)?,
    };
    // Outputs stamped in the past would go at the next retention check on topics with
    // time-based retention: the shadow's keep everything until `reset --shadow` deletes them.
    for topic in shadow.topics.outputs() {
        if ops.partitions(topic).is_none() {
            ops.create_topic(topic, partitions, &[("retention.ms", "-1")])?;
        }
    }
    // Fresh group offsets: where publishing starts (see the module's doc).
    ops.commit_group_offsets(&shadow.application_id, &start)?;
    tracing::info!(group = %shadow.application_id, from = %request.from, "replaying into shadow `{}`", request.suffix);

    let caught_up = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    let counters = std::thread::scope(|scope| {
        scope.spawn(|| stop_when_caught_up(&shadow, &end, shutdown, &caught_up, &finished));
        let result = crmflow_runtime::run(shadow.clone(), shutdown, watch, observer);
        finished.store(true, Ordering::SeqCst);
        result
    })?;
    Ok(ReplayReport {
        suffix: request.suffix.clone(),
        config: shadow,
        from: request.from,
        start,
        end,
        settings: copy,
        counters,
        caught_up: caught_up.load(Ordering::SeqCst),
    })
}

/// The inputs' shared partition count (the runtime checks co-partitioning again at start).
fn input_partitions(ops: &Operations, config: &Config) -> Result<i32, ReplayError> {
    let mut counts = BTreeSet::new();
    for (_, topic) in config.topics.inputs() {
        let count = ops.partitions(topic).ok_or_else(|| {
            ReplayError::Inputs(format!("input topic `{topic}` does not exist; check `topics` in the configuration"))
        })?;
        counts.insert(count);
    }
    match counts.into_iter().collect::<Vec<_>>()[..] {
        [count] => Ok(count),
        _ => Err(ReplayError::Inputs("the input topics are not co-partitioned; see `crmflow run`".into())),
    }
}

/// Refuses a shadow that holds something already (a replay starts from fresh state), or whose
/// replay is running.
fn check_unused(ops: &Operations, config: &Config, shadow: &Config, suffix: &str) -> Result<(), ReplayError> {
    let members: Vec<Member> = ops.group_members(&shadow.application_id)?;
    if !members.is_empty() {
        return Err(ReplayError::Running { suffix: suffix.to_owned(), members: describe_members(&members) });
    }
    let in_use = |what: String| Err(ReplayError::ShadowInUse { suffix: suffix.to_owned(), what });
    if ops.partitions(&shadow.changelog_topic()).is_some() {
        return in_use(format!("its changelog `{}` exists", shadow.changelog_topic()));
    }
    if shadow.state_dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        return in_use(format!("its state directory {} is not empty", shadow.state_dir.display()));
    }
    let mut topics: Vec<String> = shadow.topics.outputs().iter().map(|t| t.to_string()).collect();
    topics.push(settings_copy_topic(config, suffix));
    let existing: Vec<&str> = topics.iter().map(String::as_str).filter(|t| ops.partitions(t).is_some()).collect();
    let (low, high) = ops.watermarks(&existing)?;
    if let Some(((topic, _), _)) = high.iter().find(|(key, end)| **end > low[*key]) {
        return in_use(format!("`{topic}` holds records"));
    }
    Ok(())
}

/// Writes the settings copy: the override's events, then the history's settings records up to
/// `ends` except those the override replaces, partition by partition.
fn write_settings_copy(
    ops: &mut Operations,
    config: &Config,
    shadow: &Config,
    partitions: i32,
    ends: &Offsets,
    path: &Path,
    settings: &SettingsOverride,
) -> Result<CopySummary, ReplayError> {
    let live_topic = &config.topics.integration_settings;
    let topic = shadow.topics.integration_settings.clone();
    let encoding = config.encoding.integration_settings;
    // The history's settings records, kept per partition in offset order.
    let mut history: BTreeMap<i32, Vec<CopiedRecord>> = BTreeMap::new();
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut earliest = i64::MAX;
    let mut skipped = 0;
    let settings_ends: Offsets =
        ends.iter().filter(|((t, _), _)| t == live_topic).map(|(k, v)| (k.clone(), *v)).collect();
    ops.read_to(&settings_ends, |m| {
        let timestamp = m.timestamp().to_millis();
        earliest = earliest.min(timestamp.unwrap_or(i64::MAX));
        if let Some(key) = m.key() {
            partition_of.entry(String::from_utf8_lossy(key).into_owned()).or_insert(m.partition());
        }
        let event = decode_input(InputStream::Settings, m.key(), m.payload().unwrap_or_default(), encoding);
        if event.is_ok_and(|e| settings.overrides(&e)) {
            skipped += 1;
            return Ok(());
        }
        let headers = m.headers().map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect());
        history.entry(m.partition()).or_default().push(CopiedRecord {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: headers.unwrap_or_default(),
            timestamp,
        });
        Ok(())
    })?;
    // The first record of each partition of the other inputs: the override must come before them.
    let other_ends: Offsets = ends.iter().filter(|((t, _), _)| t != live_topic).map(|(k, v)| (k.clone(), *v)).collect();
    let companies: BTreeSet<&str> = settings.events.iter().map(|(c, _)| c.as_str()).collect();
    let mut missing: BTreeSet<&str> = companies.iter().copied().filter(|c| !partition_of.contains_key(*c)).collect();
    let mut heads: BTreeSet<(String, i32)> = BTreeSet::new();
    let all_partitions = other_ends.iter().filter(|(_, end)| **end > 0).count();
    ops.read_until(&other_ends, |m| {
        let key = (m.topic().to_owned(), m.partition());
        if heads.insert(key) {
            earliest = earliest.min(m.timestamp().to_millis().unwrap_or(i64::MAX));
        }
        if let Some(company) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
            if missing.remove(company) {
                partition_of.insert(company.to_owned(), m.partition());
            }
        }
        Ok(match (missing.is_empty(), heads.len() == all_partitions) {
            (true, true) => Read::Stop,
            (true, false) => Read::DonePartition,
            _ => Read::Continue,
        })
    })?;
    for company in &missing {
        tracing::warn!(
            company,
            "the override names a company with no records in the inputs; its events go to partition 0"
        );
    }
    let stamped = settings_timestamp(earliest);

    ops.create_topic(&topic, partitions, &[("cleanup.policy", "delete"), ("retention.ms", "-1")])?;
    let mut producer_config = config.client_config();
    for (key, value) in &config.kafka_producer {
        producer_config.set(key, value);
    }
    producer_config.set("enable.idempotence", "true").set("linger.ms", "5");
    let producer: BaseProducer =
        producer_config.create().map_err(|e| RunError::kafka("creating the settings copy's producer", e))?;
    let mut written: BTreeMap<i32, i64> = BTreeMap::new();
    for (company, value) in &settings.events {
        let partition = partition_of.get(company).copied().unwrap_or(0);
        // Checked when the file was read.
        let payload =
            encode_settings(value, encoding).map_err(|detail| ReplayError::Copy { topic: topic.clone(), detail })?;
        let record = BaseRecord::to(&topic).partition(partition).key(company.as_bytes()).payload(&payload[..]);
        send(&producer, record.timestamp(stamped))?;
        *written.entry(partition).or_default() += 1;
    }
    let mut copied = 0;
    for (partition, records) in &history {
        for r in records {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).partition(*partition);
            if let Some(key) = &r.key {
                record = record.key(&key[..]);
            }
            if let Some(payload) = &r.payload {
                record = record.payload(&payload[..]);
            }
            if let Some(timestamp) = r.timestamp {
                record = record.timestamp(timestamp);
            }
            if !r.headers.is_empty() {
                let headers = r
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: value.as_deref() }));
                record = record.headers(headers);
            }
            send(&producer, record)?;
            *written.entry(*partition).or_default() += 1;
            copied += 1;
        }
    }
    producer.flush(Duration::from_secs(60)).map_err(|e| RunError::kafka("writing the settings copy", e))?;
    let copy_ends = ops.end_offsets(&[&topic])?;
    for partition in 0..partitions {
        let (want, got) = (written.get(&partition).copied().unwrap_or(0), copy_ends[&(topic.clone(), partition)]);
        if want != got {
            return Err(ReplayError::Copy {
                topic,
                detail: format!("partition {partition} holds {got} records, {want} were written"),
            });
        }
    }
    Ok(CopySummary {
        file: path.to_owned(),
        topic,
        events: settings.events.len(),
        integrations: settings.integrations.iter().map(|(c, i)| format!("{c}/{i}")).collect(),
        copied,
        skipped,
        stamped,
    })
}

/// A settings record of the history, as copied.
struct CopiedRecord {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

/// The override's events carry the earliest timestamp of the history, so the merge applies them
/// before any record (settings win ties); with no history, now.
fn settings_timestamp(earliest: i64) -> i64 {
    if earliest == i64::MAX {
        chrono::Utc::now().timestamp_millis()
    } else {
        earliest
    }
}

fn encode_settings(value: &Value, encoding: Encoding) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        Encoding::Avro => SchemaRegistry::bundled().encode(value).map_err(|e| e.to_string()),
    }
}

fn send<K, P>(producer: &BaseProducer, mut record: BaseRecord<'_, K, P>) -> Result<(), ReplayError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;
    loop {
        match producer.send(record) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((e, _)) => return Err(RunError::kafka("writing the settings copy", e).into()),
        }
    }
}

/// Requests `shutdown` once the replay group's committed offsets reach `ends` on every input
/// partition; gives up when `finished` (the replay stopped otherwise).
///
/// A partition whose committed offset stays short of its end may hold nothing more to process:
/// inputs written in transactions end with a transaction marker (and aborted records) that no
/// consumer is handed, so the offset the replay commits stays below the end. Once the committed
/// offsets stand still, such partitions are read from their committed offset to the end, and
/// count as caught up if no record comes.
fn stop_when_caught_up(
    shadow: &Config,
    ends: &Offsets,
    shutdown: &Shutdown,
    caught_up: &AtomicBool,
    finished: &AtomicBool,
) {
    let mut ops = None;
    let mut last: Option<Offsets> = None;
    let mut still = 0;
    while !finished.load(Ordering::SeqCst) && !shutdown.is_requested() {
        std::thread::sleep(Duration::from_millis(500));
        if ops.is_none() {
            ops = Operations::connect(shadow).map_err(|e| tracing::warn!("watching the replay's progress: {e}")).ok();
        }
        let Some(ops) = &ops else { continue };
        let committed: Offsets = match ops.committed_offsets(&shadow.application_id, ends.keys().cloned()) {
            Ok(committed) => committed.into_iter().map(|(key, o)| (key, o.unwrap_or(0))).collect(),
            Err(e) => {
                tracing::warn!("watching the replay's progress: {e}");
                continue;
            }
        };
        let behind: Offsets = ends
            .iter()
            .filter(|(key, end)| committed.get(*key).is_none_or(|c| c < *end))
            .map(|(k, e)| (k.clone(), *e))
            .collect();
        still = if last.as_ref() == Some(&committed) { still + 1 } else { 0 };
        let done = behind.is_empty() || (still >= 4 && nothing_left(ops, &committed, &behind));
        last = Some(committed);
        if done {
            tracing::info!("caught up with the inputs' end offsets taken at start; stopping");
            caught_up.store(true, Ordering::SeqCst);
            shutdown.request();
        }
    }
}

/// Whether no record comes between the committed offsets and the ends of the `behind` partitions.
fn nothing_left(ops: &Operations, committed: &Offsets, behind: &Offsets) -> bool {
    let mut found = false;
    let read = ops.read_between(committed, behind, |_| {
        found = true;
        Ok(Read::Stop)
    });
    match read {
        Ok(()) if !found => {
            let partitions: Vec<String> = behind.keys().map(|(t, p)| format!("{t} [{p}]")).collect();
            tracing::info!(
                "no record left before the end offsets of {} (transaction markers or aborted records only)",
                partitions.join(", ")
            );
            true
        }
        Ok(()) => false,
        Err(e) => {
            tracing::info!("the replay is not at the end offsets yet: {e}");
            false
        }
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        if self.caught_up {
            writeln!(f, "replay into shadow `{}`: caught up with the inputs' end offsets taken at start", self.suffix)?;
        } else {
            writeln!(
                f,
                "replay into shadow `{}`: STOPPED before catching up; the shadow is incomplete (remove it with \
                 `crmflow reset --shadow {} --delete-outputs`)",
                self.suffix, self.suffix
            )?;
        }
        writeln!(f, "  published from: {}", self.from)?;
        for (_, topic) in c.topics.inputs() {
            let partitions: Vec<(&(String, i32), &i64)> = self.end.iter().filter(|((t, _), _)| t == topic).collect();
            let published: i64 =
                partitions.iter().map(|(key, end)| **end - self.start.get(*key).copied().unwrap_or(0)).sum();
            writeln!(
                f,
                "    {topic}: {published} records from there to the end offsets, {} partitions",
                partitions.len()
            )?;
        }
        if let Some(s) = &self.settings {
            writeln!(
                f,
                "  settings override {}: {} events for {} applied first (stamped {}); {} settings records of \
                 those integrations in the history skipped, {} copied; the replay read its settings from `{}`",
                s.file.display(),
                s.events,
                s.integrations.join(", "),
                Point::Time(s.stamped),
                s.skipped,
                s.copied,
                s.topic
            )?;
        }
        writeln!(f, "  processed: {}", self.counters.summary())?;
        writeln!(f, "  outputs in: {}", c.topics.outputs().join(", "))?;
        let transactional = match c.processing_guarantee {
            ProcessingGuarantee::ExactlyOnce => format!(", transactional id `{}`", c.transactional_id()),
            ProcessingGuarantee::AtLeastOnce => String::new(),
        };
        writeln!(
            f,
            "  its own: consumer group `{}`, changelog `{}`, state directory {}{transactional}",
            c.application_id,
            c.changelog_topic(),
            c.state_dir.display()
        )?;
        let since = match self.from {
            Point::Earliest => String::new(),
            Point::Time(_) => format!(" --from {}", self.from),
        };
        writeln!(f, "  compare: crmflow diff --shadow {}{since} (with the same --config)", self.suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = r#"{"topic":"integration.settings","key":"acme","timestamp":1,"value":{"type":"WorkflowSaved","company_id":"acme","integration_id":"sf","changed_at":"2024-05-01T10:00:00Z","workflow":{"workflow_id":"w","name":"n","active":true,"object_type":"Opportunity","triggers":["created"],"conditions":[],"activity_type":"Sale","user_field":"OwnerId"}}}"#;

    fn read(text: &str) -> Result<SettingsOverride, ReplayError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("override.jsonl");
        std::fs::write(&path, text).unwrap();
        SettingsOverride::read(&path, &Config::default())
    }

    #[test]
    fn the_override_names_its_integrations_and_skips_only_their_settings() {
        let settings = read(&format!("\n{SAVED}\n")).unwrap();
        assert_eq!(settings.integrations, BTreeSet::from([("acme".to_owned(), "sf".to_owned())]));
        let event = |json: &str| {
            let envelope: Envelope = serde_json::from_str(json).unwrap();
            decode_input_value(InputStream::Settings, Some(b"acme"), envelope.value).unwrap()
        };
        assert!(settings.overrides(&event(SAVED)));
        assert!(!settings.overrides(&event(&SAVED.replace(r#""integration_id":"sf""#, r#""integration_id":"hs""#))));
    }

    #[test]
    fn a_bad_override_line_is_named() {
        let message = |text: &str| read(text).unwrap_err().to_string();
        assert!(message(&format!("{SAVED}\nnope")).contains("line 2"));
        assert!(message(&SAVED.replace("integration.settings", "crm.changes")).contains("only settings events"));
        assert!(message(&SAVED.replace(r#""key":"acme""#, r#""key":"other""#)).contains("wrong_key"));
        assert!(message("\n").contains("no events"));
    }
}
