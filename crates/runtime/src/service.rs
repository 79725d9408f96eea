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

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crmflow_store::{StateStore, StoreOptions};

use crate::config::{Config, ProcessingGuarantee};
use crate::error::RunError;
use crate::kafka::{send_waiting, DeliveryTracker, InputContext};
use crate::processor::{decode_record, Admission, OutputRecord, PartitionTask, Progress};
use crate::report::{Counters, Samples};
use crate::setup;
use crate::shutdown::Shutdown;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The task of a partition, opening its state store on first use.
    fn task(&mut self, partition: i32, consumer: &BaseConsumer<InputContext>) -> Result<&mut PartitionTask, RunError> {
        match self.tasks.entry(partition) {
            Entry::Occupied(task) => Ok(task.into_mut()),
            Entry::Vacant(slot) => {
                let path: PathBuf = self.config.state_dir.join(format!("partition-{partition}"));
                let options = StoreOptions { seen_capacity: self.config.seen_capacity, ..StoreOptions::default() };
                let store = StateStore::open(&path, options)
                    .map_err(|e| RunError::Store { path: path.display().to_string(), message: e.to_string() })?;
                let group_offsets = group_offsets(consumer, &self.config, partition)?;
                tracing::info!(partition, path = %path.display(), "opened state store");
                let task = PartitionTask::new(partition, store, self.config.max_wait_ms as i64, &group_offsets)?;
                for topic in task.rebuild_topics() {
                    tracing::warn!(
                        topic,
                        partition,
                        "state store has no record of this input; rebuilding it from the start of the topic \
                         (without publishing again what was published before)"
                    );
                    consumer
                        .seek(topic, partition, Offset::Beginning, CLIENT_TIMEOUT)
                        .map_err(|e| RunError::kafka(format!("rewinding {topic} [{partition}] to rebuild state"), e))?;
                }
                Ok(slot.insert(task))
            }
        }
    }

    /// Routes a consumed input record to its partition's task, rewinding the consumer where the
    /// partition's store needs records again.
    fn admit(&mut self, consumer: &BaseConsumer<InputContext>, m: &BorrowedMessage<'_>) -> Result<(), RunError> {
        let Some(stream) = self.config.topics.input_stream(m.topic()) else { return Ok(()) };
        let timestamp = m.timestamp().to_millis().unwrap_or_else(now_ms);
        let record = decode_record(stream, m.topic(), m.offset(), timestamp, m.key(), m.payload(), &self.config);
        let opening = !self.tasks.contains_key(&m.partition());
        let task = self.task(m.partition(), consumer)?;
        if opening && task.rebuild_topics().any(|t| t == m.topic()) {
            // Fetched from the group's offset before the rebuild's rewind: it comes again, in order.
            return Ok(());
        }
        if let Admission::RewindTo(offset) = task.push(stream, record, now_ms()) {
            tracing::warn!(
                topic = m.topic(),
                partition = m.partition(),
                offset,
                "state store is behind the committed offsets; consuming again from its position"
            );
            consumer
                .seek(m.topic(), m.partition(), Offset::Offset(offset), CLIENT_TIMEOUT)
                .map_err(|e| RunError::kafka("rewinding to the state store's position", e))?;
        }
        Ok(())
    }

    /// Processes what the merges release and hands the outputs to the producer.
    fn process_ready(&mut self, now: i64) -> Result<(), RunError> {
        for task in self.tasks.values_mut() {
            task.process_ready(now, &self.config, &mut self.outputs, &mut self.progress)?;
        }
        if self.outputs.is_empty() {
            return Ok(());
        }
        if self.config.processing_guarantee == ProcessingGuarantee::ExactlyOnce && !self.in_transaction {
            self.producer.begin_transaction().map_err(|e| RunError::kafka("beginning a transaction", e))?;
            self.in_transaction = true;
        }
        for record in std::mem::take(&mut self.outputs) {
            self.send(&record)?;
        }
        Ok(())
    }

    fn send(&self, record: &OutputRecord) -> Result<(), RunError> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let mut base: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&record.topic).payload(&record.payload[..]).timestamp(record.timestamp).headers(headers);
        if let Some(key) = &record.key {
            base = base.key(&key[..]);
        }
        send_waiting(&self.producer, base).map_err(|e| RunError::kafka(format!("producing to {}", record.topic), e))
    }

    /// Makes processed work durable: outputs, then state with positions, then offsets.
    fn commit(&mut self, consumer: &BaseConsumer<InputContext>) -> Result<(), RunError> {
        let mut offsets = TopicPartitionList::new();
        for task in self.tasks.values() {
            for p in task.pending_positions() {
                offsets
                    .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
                    .map_err(|e| RunError::kafka("building the offsets to commit", e))?;
            }
        }
        if offsets.count() == 0 && !self.in_transaction {
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
                for task in self.tasks.values_mut() {
                    task.commit()?;
                }
                if offsets.count() > 0 {
                    consumer
                        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
                        .map_err(|e| RunError::kafka("committing consumer offsets", e))?;
                }
            }
            ProcessingGuarantee::ExactlyOnce => {
                if !self.in_transaction {
                    self.producer.begin_transaction().map_err(|e| RunError::kafka("beginning a transaction", e))?;
                    self.in_transaction = true;
                }
                let group = consumer
                    .group_metadata()
                    .ok_or_else(|| RunError::Brokers("the consumer has no group metadata yet".into()))?;
                if offsets.count() > 0 {
                    self.producer
                        .send_offsets_to_transaction(&offsets, &group, CLIENT_TIMEOUT)
                        .map_err(|e| RunError::kafka("adding offsets to the transaction", e))?;
                }
                self.producer
                    .commit_transaction(CLIENT_TIMEOUT)
                    .map_err(|e| RunError::kafka("committing the transaction", e))?;
                self.in_transaction = false;
                for task in self.tasks.values_mut() {
                    task.commit()?;
                }
            }
        }
        self.commits += 1;
        Ok(())
    }

    /// Commits what is processed and lets the partitions go (called before a revocation).
    pub fn on_revoke(&mut self, consumer: &BaseConsumer<InputContext>) {
        if let Err(e) = self.commit(consumer) {
            tracing::error!("commit before revocation failed: {e}");
            self.failure.get_or_insert(e);
        }
        // Dropping a task closes its store; anything uncommitted is redone by the next owner.
        self.tasks.clear();
        tracing::info!("partitions revoked; state stores closed");
    }

    fn counters(&self, lag: i64) -> Counters {
        Counters {
            records: self.progress.records,
            replayed: self.progress.replayed,
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
    let committed = consumer
        .committed_offsets(wanted, CLIENT_TIMEOUT)
        .map_err(|e| RunError::kafka(format!("reading the group's committed offsets of partition {partition}"), e))?;
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
        lock(&engine).producer.init_transactions(CLIENT_TIMEOUT).map_err(|e| {
            RunError::kafka("initialising transactions (does the broker support them? else use at_least_once)", e)
        })?;
    }
    let inputs: Vec<&str> = config.topics.inputs().iter().map(|(_, t)| *t).collect();
    consumer.subscribe(&inputs).map_err(|e| RunError::kafka("subscribing to the input topics", e))?;
    tracing::info!(brokers = %config.brokers, partitions, guarantee = ?config.processing_guarantee, "crmflow is running");

    let commit_every = Duration::from_millis(config.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    while !shutdown.is_requested() {
        let wait = {
            let engine = lock(&engine);
            engine.next_deadline().map_or(50, |d| (d - now_ms()).clamp(0, 50))
        };
        // Poll without holding the engine: rebalance callbacks run inside poll and lock it.
        let message = consumer.poll(Duration::from_millis(wait as u64));
        let mut engine = lock(&engine);
        if let Some(failure) = engine.failure.take() {
            return Err(failure);
        }
        match message {
            Some(Ok(m)) => engine.admit(&consumer, &m)?,
            Some(Err(e)) => tracing::warn!("consumer: {e}"),
            None => {}
        }
        engine.process_ready(now_ms())?;
        if last_commit.elapsed() >= commit_every {
            engine.commit(&consumer)?;
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
    let mut engine = lock(&engine);
    engine.commit(&consumer)?;
    let counters = engine.counters(lag.load(Ordering::Relaxed));
    tracing::info!("stopped after committing: {}", counters.summary());
    Ok(counters)
}
