//! The only place that talks to Kafka while running: the consume → decide → produce → commit loop.
//!
//! One thread polls the consumer, routes each record to its partition's [`PartitionTask`],
//! sends what the tasks release, and commits every `commit_interval_ms`:
//! - `at_least_once`: flush the producer (every output acknowledged), persist the state
//!   stores with their input positions, then commit the consumer offsets.
//! - `exactly_once`: outputs and offsets in one Kafka transaction; the stores are persisted
//!   once the transaction commits.
//!
//! The state stores record which input offsets they reflect, so records redelivered after a
//! crash are skipped rather than applied twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crmflow_domain::InputStream;
use crmflow_store::{StateStore, StoreOptions};

use crate::config::{Config, ProcessingGuarantee};
use crate::error::RunError;
use crate::kafka::{cached_watermarks, send_waiting, DeliveryTracker, InputContext};
use crate::processor::{decode_record, Admission, OutputRecord, PartitionTask, Progress};
use crate::report::{Counters, Samples};
use crate::setup;
use crate::shutdown::Shutdown;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Records admitted per poll round before the merges release what they can.
const POLL_BATCH: usize = 500;

/// The input streams in the merge's tie-break order.
const INPUT_STREAMS: [InputStream; 3] = [InputStream::Settings, InputStream::Teams, InputStream::CrmChanges];

fn stream_index(stream: InputStream) -> usize {
    match stream {
        InputStream::Settings => 0,
        InputStream::Teams => 1,
        InputStream::CrmChanges => 2,
    }
}

/// What the loop reports to its caller every `report_every`.
pub trait Observer {
    /// Called with the counters since start and the sample lines since the last call.
    fn report(&mut self, counters: &Counters, samples: Vec<String>);
}

/// How the caller wants to watch the loop.
#[derive(Debug, Clone)]
pub struct Watch {
    /// How often to report.
    pub report_every: Duration,
    /// How many sample events to keep between reports (0: none).
    pub samples: usize,
}

/// The processing state: partition tasks and the producer, shared with the rebalance callback.
pub struct Engine {
    config: Config,
    producer: ThreadedProducer<DeliveryTracker>,
    tasks: BTreeMap<i32, PartitionTask>,
    outputs: Vec<OutputRecord>,
    progress: Progress,
    in_transaction: bool,
    commits: u64,
    // A failure inside a callback, surfaced by the loop.
    failure: Option<RunError>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// Opens the state stores of newly assigned partitions and positions every input of each
    /// at the store's position, in the assignment itself (see [`crate::resume`]).
    pub fn on_assign(&mut self, consumer: &BaseConsumer<InputContext>, assignment: &TopicPartitionList) {
        let partitions: BTreeSet<i32> = assignment.elements().iter().map(|e| e.partition()).collect();
        for partition in partitions {
            if let Err(e) = self.open_task(consumer, assignment, partition) {
                tracing::error!(partition, "cannot open the partition: {e}");
                self.failure.get_or_insert(e);
            }
        }
    }

    fn open_task(
        &mut self,
        consumer: &BaseConsumer<InputContext>,
        assignment: &TopicPartitionList,
        partition: i32,
    ) -> Result<(), RunError> {
        let path: PathBuf = self.config.state_dir.join(format!("partition-{partition}"));
        let options = StoreOptions { seen_capacity: self.config.seen_capacity, ..StoreOptions::default() };
        let store = StateStore::open(&path, options)
            .map_err(|e| RunError::Store { path: path.display().to_string(), message: e.to_string() })?;
        let group_offsets = group_offsets(consumer, &self.config, partition)?;
        let topics: Vec<&str> = self.config.topics.inputs().iter().map(|(_, t)| *t).collect();
        let task = PartitionTask::open(partition, store, self.config.max_wait_ms as i64, &topics, &group_offsets)?;
        for (topic, resume) in task.plan().inputs() {
            let offset = resume.start.map_or(Offset::Beginning, Offset::Offset);
            if let Some(mut element) = assignment.find_partition(topic, partition) {
                element
                    .set_offset(offset)
                    .map_err(|e| RunError::kafka(format!("positioning {topic} [{partition}]"), e))?;
            }
        }
        for (topic, resume) in task.plan().replays() {
            tracing::warn!(
                topic,
                partition,
                from = resume.start.unwrap_or(0),
                until = resume.published_until,
                "the state store is behind what was published (a crash before its write, a lost state \
                 directory or a partition new to this instance); replaying to rebuild state without \
                 publishing again"
            );
        }
        tracing::info!(partition, path = %path.display(), "opened state store");
        self.tasks.insert(partition, task);
        Ok(())
    }

    /// Routes a consumed input record to its partition's task.
    fn admit(&mut self, m: &BorrowedMessage<'_>) {
        let Some(stream) = self.config.topics.input_stream(m.topic()) else { return };
        let Some(task) = self.tasks.get_mut(&m.partition()) else {
            tracing::warn!(topic = m.topic(), partition = m.partition(), "record of a partition not assigned here");
            return;
        };
        // A record without a timestamp is ordered as if it came with the one before it: the
        // wall clock would make a replay decide differently.
        let timestamp = m.timestamp().to_millis().unwrap_or_else(|| task.last_timestamp());
        let record = decode_record(stream, m.topic(), m.offset(), timestamp, m.key(), m.payload(), &self.config);
        if task.admit(stream, record, now_ms()) == Admission::AlreadyApplied {
            tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(), "already applied");
        }
    }

    /// Processes what the merges release and hands the outputs to the producer.
    fn process_ready(&mut self, consumer: &BaseConsumer<InputContext>, now: i64) -> Result<(), RunError> {
        let config = &self.config;
        // Read from the client only when a merge asks about an input it has nothing buffered of.
        let mut positions: Option<TopicPartitionList> = None;
        for (&partition, task) in self.tasks.iter_mut() {
            // Fixed while the merge releases records: nothing is consumed meanwhile.
            let consumed = INPUT_STREAMS.map(|stream| task.consumed_until(config.topics.input_topic(stream)));
            let caught_up = |stream: InputStream| {
                let positions = positions.get_or_insert_with(|| consumer.position().unwrap_or_default());
                let topic = config.topics.input_topic(stream);
                input_caught_up(consumer, positions, topic, partition, consumed[stream_index(stream)])
            };
            task.process_ready(now, caught_up, config, &mut self.outputs, &mut self.progress)?;
        }
        if self.outputs.is_empty() {
            return Ok(());
        }
        if self.config.processing_guarantee == ProcessingGuarantee::ExactlyOnce && !self.in_transaction {
            self.producer.begin_transaction().map_err(|e| self.transaction_error("beginning a transaction", e))?;
            self.in_transaction = true;
        }
        for record in std::mem::take(&mut self.outputs) {
            self.send(&record)?;
        }
        Ok(())
    }

    fn send(&self, record: &OutputRecord) -> Result<(), RunError> {
        match send_waiting(&self.producer, base_record(record)) {
            // A dead letter bigger than the producer may send would stop the instance at the same
            // record after every restart: publish it without its value instead, saying so.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) if record.is_dead_letter() => {
                tracing::warn!(topic = %record.topic, bytes = record.payload.len(), "dead letter too large; sent without its value");
                send_waiting(&self.producer, base_record(&record.without_payload()))
            }
            other => other,
        }
        .map_err(|e| RunError::kafka(format!("producing to {}", record.topic), e))
    }

    /// Makes processed work durable. Three commits, in this order:
    /// - `at_least_once`: outputs acknowledged, then each store's RocksDB batch, then the
    ///   consumer offsets;
    /// - `exactly_once`: the Kafka transaction (outputs and consumer offsets), then each
    ///   store's RocksDB batch.
    fn commit(&mut self, consumer: &BaseConsumer<InputContext>) -> Result<(), RunError> {
        let mut offsets = TopicPartitionList::new();
        for task in self.tasks.values() {
            for p in task.consumer_offsets() {
                offsets
                    .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
                    .map_err(|e| RunError::kafka("building the offsets to commit", e))?;
            }
        }
        let processed = self.tasks.values().any(PartitionTask::has_processed);
        if !processed && !self.in_transaction {
            return Ok(());
        }
        match self.config.processing_guarantee {
            ProcessingGuarantee::AtLeastOnce => {
                self.producer.flush(CLIENT_TIMEOUT).map_err(|e| RunError::kafka("flushing outputs", e))?;
                let (failed, last) = self.producer.context().failures();
                if failed > 0 {
                    return Err(RunError::Delivery(format!(
                        "{failed} output records were not delivered (last error: {}); offsets not committed",
                        last.unwrap_or_default()
                    )));
                }
                self.write_batches()?;
                if offsets.count() > 0 {
                    consumer
                        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
                        .map_err(|e| RunError::kafka("committing consumer offsets", e))?;
                }
            }
            ProcessingGuarantee::ExactlyOnce => {
                if offsets.count() > 0 && !self.in_transaction {
                    self.producer
                        .begin_transaction()
                        .map_err(|e| self.transaction_error("beginning a transaction", e))?;
                    self.in_transaction = true;
                }
                if self.in_transaction {
                    let group = consumer
                        .group_metadata()
                        .ok_or_else(|| RunError::Brokers("the consumer has no group metadata yet".into()))?;
                    if offsets.count() > 0 {
                        self.producer
                            .send_offsets_to_transaction(&offsets, &group, CLIENT_TIMEOUT)
                            .map_err(|e| self.transaction_error("adding offsets to the transaction", e))?;
                    }
                    self.producer
                        .commit_transaction(CLIENT_TIMEOUT)
                        .map_err(|e| self.transaction_error("committing the transaction", e))?;
                    self.in_transaction = false;
                }
                self.write_batches()?;
            }
        }
        self.commits += 1;
        Ok(())
    }

    /// A failed transaction call, telling a fenced instance apart (two replicas sharing an id).
    fn transaction_error(&self, context: &str, error: KafkaError) -> RunError {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced) => {
                RunError::Fenced(format!("{}.{}", self.config.application_id, self.config.instance_id))
            }
            _ => RunError::kafka(context, error),
        }
    }

    /// Each store's RocksDB batch: staged state with the input positions it reflects.
    fn write_batches(&mut self) -> Result<(), RunError> {
        for task in self.tasks.values_mut() {
            task.write_batch()?;
        }
        Ok(())
    }

    /// Commits what is processed and lets the partitions go (called before a revocation).
    pub fn on_revoke(&mut self, consumer: &BaseConsumer<InputContext>) {
        if self.failure.is_none() {
            if let Err(e) = self.commit(consumer) {
                tracing::error!("commit before revocation failed: {e}");
                self.failure.get_or_insert(e);
            }
        }
        if self.failure.is_some() {
            self.abandon();
        }
        // Dropping a task closes its store; anything uncommitted is redone by the next owner.
        self.tasks.clear();
        tracing::info!("partitions revoked; state stores closed");
    }

    /// Drops the round in progress after a failure: nothing of it may be committed. Aborts the
    /// open transaction, and closes the stores without writing what they staged.
    fn abandon(&mut self) {
        self.outputs.clear();
        if self.in_transaction {
            if let Err(e) = self.producer.abort_transaction(CLIENT_TIMEOUT) {
                tracing::error!("aborting the transaction failed: {e}");
            }
            self.in_transaction = false;
        }
        self.tasks.clear();
    }

    fn counters(&self, lag: i64) -> Counters {
        Counters {
            records: self.progress.records,
            replayed: self.progress.replayed,
            late: self.progress.late,
            tally: self.progress.tally.clone(),
            dead_letters: self.progress.dead_letters.clone(),
            lag,
            commits: self.commits,
        }
    }

    fn next_deadline(&self) -> Option<i64> {
        self.tasks.values().filter_map(PartitionTask::next_deadline).min()
    }
}

/// Whether the consumer has read everything the broker holds of an input partition (KIP-695):
/// only then may the merge stop waiting for it after `max_wait_ms`. `consumed` is the offset after
/// the last record the task admitted, or where it was told to start.
fn input_caught_up(
    consumer: &BaseConsumer<InputContext>,
    positions: &TopicPartitionList,
    topic: &str,
    partition: i32,
    consumed: Option<i64>,
) -> bool {
    let (low, high) = cached_watermarks(consumer, topic, partition);
    // The client's position also moves past transaction markers, which are never admitted.
    let fetched = positions.find_partition(topic, partition).and_then(|e| match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    });
    let next = consumed.max(fetched).or((low >= 0).then_some(low));
    high >= 0 && next.is_some_and(|next| next >= high)
}

/// The producer record of an output.
fn base_record(record: &OutputRecord) -> BaseRecord<'_, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    for (key, value) in &record.headers {
        headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
    }
    let mut base =
        BaseRecord::to(&record.topic).payload(&record.payload[..]).timestamp(record.timestamp).headers(headers);
    if let Some(key) = &record.key {
        base = base.key(&key[..]);
    }
    base
}

/// The consumer group's committed offsets of one partition of the input topics.
fn group_offsets(
    consumer: &BaseConsumer<InputContext>,
    config: &Config,
    partition: i32,
) -> Result<BTreeMap<String, i64>, RunError> {
    let mut wanted = TopicPartitionList::new();
    for (_, topic) in config.topics.inputs() {
        wanted.add_partition(topic, partition);
    }
    // The group coordinator may be moving or loading (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS):
    // such errors pass, so ask again until the client time-out.
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let committed = loop {
        match consumer.committed_offsets(wanted.clone(), CLIENT_TIMEOUT) {
            Ok(committed) => break committed,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(partition, "reading the group's committed offsets: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(RunError::kafka(
                    format!("reading the group's committed offsets of partition {partition}"),
                    e,
                ))
            }
        }
    };
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.topic().to_owned(), offset)),
            _ => None,
        })
        .collect())
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A poisoned lock means a callback panicked; the state is still the last consistent one.
    engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the processor until shutdown is requested or a failure stops it.
pub fn run(
    config: Config,
    shutdown: &Shutdown,
    watch: &Watch,
    observer: &mut dyn Observer,
) -> Result<Counters, RunError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|e| RunError::Store {
        path: config.state_dir.display().to_string(),
        message: format!("cannot create the state directory: {e}; set `state_dir` to a writable path"),
    })?;
    let producer: ThreadedProducer<DeliveryTracker> = config
        .producer_config()
        .create_with_context(DeliveryTracker::default())
        .map_err(|e| RunError::kafka("creating the producer", e))?;
    let engine = Arc::new(Mutex::new(Engine {
        config: config.clone(),
        producer,
        tasks: BTreeMap::new(),
        outputs: Vec::new(),
        progress: Progress { samples: Samples::new(watch.samples), ..Progress::default() },
        in_transaction: false,
        commits: 0,
        failure: None,
    }));
    let lag = Arc::new(AtomicI64::new(-1));
    let context = InputContext { engine: engine.clone(), lag: lag.clone() };
    let consumer: BaseConsumer<InputContext> = config
        .consumer_config()
        .create_with_context(context)
        .map_err(|e| RunError::kafka("creating the consumer", e))?;

    let metadata = setup::wait_for_brokers(&consumer, &config)?;
    let partitions = setup::input_partitions(&metadata, &config)?;
    setup::ensure_output_topics(&metadata, &config, partitions)?;
    if config.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
        let timeout = Duration::from_millis(config.startup_timeout_ms);
        lock(&engine).producer.init_transactions(timeout).map_err(|e| {
            RunError::kafka(
                format!(
                    "the brokers at `{}` did not start a transaction within {} ms; processing_guarantee = \
                     \"exactly_once\" needs Kafka transactions: set processing_guarantee = \"at_least_once\" \
                     for brokers without them",
                    config.brokers, config.startup_timeout_ms
                ),
                e,
            )
        })?;
    }
    let inputs: Vec<&str> = config.topics.inputs().iter().map(|(_, t)| *t).collect();
    consumer.subscribe(&inputs).map_err(|e| RunError::kafka("subscribing to the input topics", e))?;
    tracing::info!(brokers = %config.brokers, partitions, guarantee = ?config.processing_guarantee, "crmflow is running");

    let result = process_until_stopped(&engine, &consumer, shutdown, watch, observer, &lag);
    let mut engine = lock(&engine);
    if let Err(e) = &result {
        tracing::error!("stopping without committing the round in progress: {e}");
        engine.abandon();
    }
    result?;
    let counters = engine.counters(lag.load(Ordering::Relaxed));
    tracing::info!("stopped after committing: {}", counters.summary());
    Ok(counters)
}

/// The consume → decide → produce → commit loop; returns once shutdown is requested and the
/// last round is committed, or with the error that stopped it (the round is then not committed).
fn process_until_stopped(
    engine: &Mutex<Engine>,
    consumer: &BaseConsumer<InputContext>,
    shutdown: &Shutdown,
    watch: &Watch,
    observer: &mut dyn Observer,
    lag: &AtomicI64,
) -> Result<(), RunError> {
    let commit_every = Duration::from_millis(engine_config(engine).commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    while !shutdown.is_requested() {
        let wait = lock(engine).next_deadline().map_or(50, |d| (d - now_ms()).clamp(0, 50));
        let mut timeout = Duration::from_millis(wait as u64);
        // Poll without holding the engine: rebalance callbacks run inside poll and lock it.
        for _ in 0..POLL_BATCH {
            let Some(message) = consumer.poll(timeout) else { break };
            timeout = Duration::ZERO;
            match message {
                Ok(m) => lock(engine).admit(&m),
                Err(e) => consumer_error(e)?,
            }
        }
        let mut engine = lock(engine);
        if let Some(failure) = engine.failure.take() {
            return Err(failure);
        }
        engine.process_ready(consumer, now_ms())?;
        if last_commit.elapsed() >= commit_every {
            engine.commit(consumer)?;
            last_commit = Instant::now();
        }
        if last_report.elapsed() >= watch.report_every {
            let counters = engine.counters(lag.load(Ordering::Relaxed));
            let samples = engine.progress.samples.take();
            drop(engine);
            observer.report(&counters, samples);
            last_report = Instant::now();
        }
    }
    lock(engine).commit(consumer)
}

fn engine_config(engine: &Mutex<Engine>) -> Config {
    lock(engine).config.clone()
}

/// Logs a consumer error that the client recovers from by itself; stops on one it cannot.
fn consumer_error(error: KafkaError) -> Result<(), RunError> {
    use rdkafka::types::RDKafkaErrorCode::*;
    match &error {
        KafkaError::MessageConsumptionFatal(_) => Err(RunError::kafka("consuming (fatal)", error)),
        KafkaError::MessageConsumption(
            TopicAuthorizationFailed | GroupAuthorizationFailed | ClusterAuthorizationFailed,
        ) => Err(RunError::kafka("consuming: check the ACLs of the application's principal", error)),
        _ => {
            tracing::warn!("consumer: {error}");
            Ok(())
        }
    }
}
