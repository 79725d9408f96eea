//! The engine: the partition tasks, the producer and the three commits, shared between the
//! processing loop and the consumer's rebalance callbacks. Generic over the consumer's context,
//! so it knows nothing of how the consumer is wired (see [`crate::consumer`]).
//!
//! "Commit" means three things here, always in this order under each guarantee:
//! - `exactly_once`: the **Kafka transaction** (outputs and consumer offsets), then each store's
//!   **RocksDB batch**;
//! - `at_least_once`: outputs acknowledged, then the changelog records (state and input
//!   positions) acknowledged, each store's **RocksDB batch**, then the **consumer offsets**.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crmflow_domain::InputStream;
use crmflow_store::{ChangelogPosition, ChangelogRecord, StateStore, StoreOptions};

use crate::changelog_topic::{self, ChangelogTopic};
use crate::config::{Config, ProcessingGuarantee};
use crate::error::RunError;
use crate::processor::{Admission, InputRecord, Origin, OutputRecord, PartitionTask, Progress};
use crate::producer::{flush_delivered, send_waiting, DeliveryTracker};
use crate::report::{Counters, Samples};
use crate::restore::{self, ChangelogState, RestorePlan, RestoreRange, Restoring, StoreMark};
use crate::setup;
use crate::status::{EngineView, Membership, PartitionState, PartitionStatus, Status};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fenced instance waits before it starts transactions again (see
/// [`Engine::rejoin_after_fence`]).
const FENCED_PAUSE: Duration = Duration::from_secs(2);

/// Buffered records from which the partitions are processed on several threads.
const PARALLEL_FROM: usize = 256;

/// The delivery opaque of a record that comes from no single input record (the changelog's).
const NO_ORIGIN: usize = usize::MAX;

/// The input streams in the merge's tie-break order.
const INPUT_STREAMS: [InputStream; 3] = [InputStream::Settings, InputStream::Teams, InputStream::CrmChanges];

fn stream_index(stream: InputStream) -> usize {
    match stream {
        InputStream::Settings => 0,
        InputStream::Teams => 1,
        InputStream::CrmChanges => 2,
    }
}

/// The processing state: partition tasks and the producer, shared with the rebalance callback.
pub struct Engine {
    config: Config,
    producer: ThreadedProducer<DeliveryTracker>,
    tasks: BTreeMap<i32, PartitionTask>,
    // Processes the tasks side by side: each is independent of the others, and one thread at a
    // time works on a task, so each partition keeps its order.
    threads: rayon::ThreadPool,
    outputs: Vec<OutputRecord>,
    // The origins of the records sent in the open round, indexed by their delivery opaque.
    sent: Vec<Origin>,
    // The input timestamps of the outputs sent in the open round, for the latency histogram.
    sent_stamps: Vec<i64>,
    // The open round's counts (and the sample outputs); moved to `committed` when it commits.
    progress: Progress,
    committed: Progress,
    // Where operators read the engine's view and the stores' committed state, and the
    // histograms its commits feed.
    status: Status,
    // When the open transaction began (its first record).
    transaction_started: Option<Instant>,
    membership: Membership,
    in_transaction: bool,
    commits: u64,
    aborts: u64,
    // Times this instance's producer was fenced and replaced.
    fences: u64,
    // Input records deleted by retention before they were processed.
    expired: u64,
    // A failure inside a callback, surfaced by the loop.
    failure: Option<RunError>,
    changelog: Changelog,
    // Partitions whose stores are restoring: no task yet, inputs paused.
    restoring: BTreeMap<i32, RestoringPartition>,
    // Restoring partitions assigned inside a callback, whose inputs the loop has yet to pause.
    to_pause: BTreeSet<i32>,
    restored_records: Arc<AtomicU64>,
    // Partitions whose stores are on disk but not owned here, since when: deleted after
    // `state_cleanup_delay_ms`.
    released: BTreeMap<i32, Instant>,
}

/// A partition whose store is restoring. Its inputs were assigned at concrete offsets (the
/// group's, else the topic's start): a seek racing the client's own offset look-up could be lost.
/// What is fetched before the pause takes effect is kept, and handed to the task at the end.
struct RestoringPartition {
    restoring: Restoring,
    assigned: BTreeMap<String, i64>,
    fetched: Vec<(InputStream, InputRecord)>,
    last_timestamp: i64,
}

/// What one partition's task made of the records its merge released.
struct TaskRound {
    outputs: Vec<OutputRecord>,
    progress: Progress,
    outcome: Result<(), crate::processor::ProcessError>,
}

/// The changelog topic, and a client (no group, read_uncommitted) to read its offsets.
pub struct Changelog {
    /// Its name.
    pub topic: String,
    /// Reads its offsets (the high watermark, open transactions included) and metadata.
    pub client: BaseConsumer,
    /// Its partition count as last seen (it grows with the inputs).
    pub partitions: i32,
    /// Its id and how long it keeps deletions, as last described (at each assignment).
    pub described: ChangelogTopic,
}

/// Milliseconds since the epoch: when a record arrived, for the merge's wait (never a record's time).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// An engine with no partitions yet, keeping `samples` sample outputs between reports and
    /// publishing its view and observing its commits into `status`.
    pub fn new(
        config: Config,
        producer: ThreadedProducer<DeliveryTracker>,
        changelog: Changelog,
        samples: usize,
        status: Status,
    ) -> Result<Self, RunError> {
        let threads = config.processing_threads();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("crmflow-process-{i}"))
            .build()
            .map_err(|source| RunError::Threads { threads, source })?;
        Ok(Engine {
            threads: pool,
            changelog,
            restoring: BTreeMap::new(),
            to_pause: BTreeSet::new(),
            restored_records: Arc::new(AtomicU64::new(0)),
            released: stores_on_disk(&config.state_dir).into_iter().map(|p| (p, Instant::now())).collect(),
            config,
            producer,
            tasks: BTreeMap::new(),
            outputs: Vec::new(),
            sent: Vec::new(),
            sent_stamps: Vec::new(),
            progress: Progress { samples: Samples::new(samples), ..Progress::default() },
            committed: Progress::default(),
            status,
            transaction_started: None,
            membership: Membership::Joining,
            in_transaction: false,
            commits: 0,
            aborts: 0,
            fences: 0,
            expired: 0,
            failure: None,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A failure a rebalance callback met, to be surfaced by the loop.
    pub fn take_failure(&mut self) -> Option<RunError> {
        self.failure.take()
    }

    /// The sample outputs since the last call.
    pub fn take_samples(&mut self) -> Vec<String> {
        self.progress.samples.take()
    }

    /// Opens the state stores of newly assigned partitions. A current store's partition is
    /// positioned at the store's offsets in the assignment itself (see [`crate::resume`]); a
    /// stale or missing store starts restoring from its changelog, its inputs to be paused
    /// (see [`crate::restore`]).
    pub fn on_assign<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, assignment: &TopicPartitionList) {
        if !self.tasks.is_empty() || !self.restoring.is_empty() {
            // Seen when the inputs grow during a rebalance: librdkafka assigns again without
            // revoking first. The partitions are still ours: commit and close as on revocation.
            tracing::info!("assigned again without a revocation; committing and closing the partitions first");
            self.on_revoke(consumer);
        }
        let partitions: BTreeSet<i32> = assignment.elements().iter().map(|e| e.partition()).collect();
        if let Some(needed) = partitions.last().map(|p| p + 1) {
            if needed > self.changelog.partitions {
                // The inputs grew: the changelog grows with them.
                match setup::ensure_changelog(&self.changelog.client, &self.config, needed, false) {
                    Ok(()) => {
                        self.changelog.partitions = needed;
                        // The producer learns of the new partitions before it writes to them.
                        let topic = Some(self.changelog.topic.as_str());
                        if let Err(e) = self.producer.client().fetch_metadata(topic, CLIENT_TIMEOUT) {
                            tracing::warn!("refreshing the changelog's metadata: {e}");
                        }
                    }
                    Err(e) => {
                        self.failure.get_or_insert(e);
                        return;
                    }
                }
            }
        }
        // Which topic the changelog is, and how long it keeps deletions, decide how each store
        // restores: asked at every assignment, as a reset may have recreated it since.
        match describe_changelog(&self.config, &self.changelog.topic) {
            Ok(described) => self.changelog.described = described,
            Err(e) => {
                tracing::error!("cannot open the partitions: {e}");
                self.failure.get_or_insert(e);
                return;
            }
        }
        for partition in &partitions {
            self.released.remove(partition);
        }
        let group = match group_offsets(consumer, &self.config, &partitions) {
            Ok(group) => group,
            Err(e) => {
                tracing::error!("cannot open the partitions: {e}");
                self.failure.get_or_insert(e);
                return;
            }
        };
        for partition in partitions {
            let group = group.get(&partition).cloned().unwrap_or_default();
            if let Err(e) = self.assign_partition(assignment, partition, &group) {
                tracing::error!(partition, "cannot open the partition: {e}");
                self.failure.get_or_insert(e);
            }
        }
        self.membership = Membership::Assigned;
        self.publish();
    }

    fn assign_partition(
        &mut self,
        assignment: &TopicPartitionList,
        partition: i32,
        group: &BTreeMap<String, i64>,
    ) -> Result<(), RunError> {
        let store = self.open_store(partition)?;
        let (low, high) = self.watermarks(&self.changelog.topic, partition)?;
        let described = &self.changelog.described;
        let changelog =
            ChangelogState { low, high, id: described.id.clone(), deletions_kept_ms: described.deletions_kept_ms };
        let mark = StoreMark::of(&store)?;
        let topic = &self.changelog.topic;
        // The changelog id the store to restore records (a store restored in full records none).
        let (store, from, written_at, recorded) = match restore::plan(&mark, &changelog, now_ms()) {
            RestorePlan::Current => {
                adopt(&store, mark.changelog_id.as_deref(), &changelog)?;
                return self.open_task(Some(assignment), partition, store, group);
            }
            RestorePlan::Tail { from } => {
                tracing::info!(
                    partition,
                    from,
                    until = high,
                    "the state store is behind its changelog; restoring the tail"
                );
                (store, from, mark.position.map_or(0, |p| p.written_at), mark.changelog_id)
            }
            RestorePlan::Full { reason } => {
                tracing::warn!(partition, records = high - low, "{reason}; restoring the store in full from `{topic}`");
                store.destroy()?;
                (self.open_store(partition)?, low, 0, None)
            }
        };
        adopt(&store, recorded.as_deref(), &changelog)?;
        // Nothing is processed until the restore ends; the inputs start where the group is.
        let mut assigned = BTreeMap::new();
        for (_, input) in self.config.topics.inputs() {
            // Never below the topic's start: an offset out of range would make the client look
            // one up itself, and that look-up could undo the seek after the restore.
            let low = self.low_watermark(input, partition)?;
            let offset = group.get(input).map_or(low, |offset| (*offset).max(low));
            if let Some(mut element) = assignment.find_partition(input, partition) {
                element
                    .set_offset(Offset::Offset(offset))
                    .map_err(|e| RunError::kafka(format!("positioning {input} [{partition}]"), e))?;
            }
            assigned.insert(input.to_owned(), offset);
        }
        let range = RestoreRange { topic: topic.clone(), partition, from, until: high, written_at };
        let restoring = Restoring::start(&self.config, store, range, self.restored_records.clone())?;
        let pending = RestoringPartition { restoring, assigned, fetched: Vec::new(), last_timestamp: 0 };
        self.restoring.insert(partition, pending);
        self.to_pause.insert(partition);
        Ok(())
    }

    /// The concrete offset an input resumes at: `start` (`None`: the topic's start), or the
    /// topic's start where retention already deleted the records from `start` on. Those records
    /// were never processed: the policy is to go on from the earliest record there is, loudly
    /// (an error in the log, `crmflow_expired_input_records_total`), rather than stop or wait.
    fn resume_offset(&mut self, topic: &str, partition: i32, start: Option<i64>) -> Result<i64, RunError> {
        let low = self.low_watermark(topic, partition)?;
        match start {
            Some(start) if start < low => {
                tracing::error!(
                    topic,
                    partition,
                    from = start,
                    until = low,
                    "input records were deleted (retention) before they were processed; going on from the \
                     earliest record there is. Keep the inputs' retention well above the longest outage"
                );
                self.expired += (low - start) as u64;
                Ok(low)
            }
            Some(start) => Ok(start),
            None => Ok(low),
        }
    }

    fn low_watermark(&self, topic: &str, partition: i32) -> Result<i64, RunError> {
        Ok(self.watermarks(topic, partition)?.0)
    }

    /// The committed low and high offsets of a partition. A partition just added to its topic
    /// may be unknown to the client's metadata for a moment: refresh it and ask again.
    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), RunError> {
        let client = &self.changelog.client;
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            match client.fetch_watermarks(topic, partition, CLIENT_TIMEOUT) {
                Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownPartition)) if Instant::now() < deadline => {
                    if let Err(e) = client.fetch_metadata(Some(topic), CLIENT_TIMEOUT) {
                        tracing::debug!("refreshing the metadata of `{topic}`: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                result => {
                    return result
                        .map_err(|e| RunError::kafka(format!("reading the offsets of `{topic}` [{partition}]"), e))
                }
            }
        }
    }

    fn open_store(&self, partition: i32) -> Result<StateStore, RunError> {
        let path = store_path(&self.config, partition);
        let options = StoreOptions {
            seen_capacity: self.config.seen_capacity,
            max_changelog_record_bytes: self
                .config
                .max_changelog_record_bytes(self.changelog.described.max_message_bytes),
            ..StoreOptions::default()
        };
        Ok(StateStore::open(&path, options)?)
    }

    /// Opens the task of a partition whose store is current; inside the rebalance callback, it
    /// positions its inputs at the store's offsets in the `assignment`.
    fn open_task(
        &mut self,
        assignment: Option<&TopicPartitionList>,
        partition: i32,
        store: StateStore,
        group: &BTreeMap<String, i64>,
    ) -> Result<(), RunError> {
        let path = store.path().to_owned();
        let topics: Vec<&str> = self.config.topics.inputs().iter().map(|(_, t)| *t).collect();
        let task = PartitionTask::open(partition, store, self.config.max_wait_ms as i64, &topics, group)?;
        if let Some(assignment) = assignment {
            for (topic, resume) in task.plan().inputs() {
                let offset = self.resume_offset(topic, partition, resume.start)?;
                if let Some(mut element) = assignment.find_partition(topic, partition) {
                    element
                        .set_offset(Offset::Offset(offset))
                        .map_err(|e| RunError::kafka(format!("positioning {topic} [{partition}]"), e))?;
                }
            }
        }
        for (topic, resume) in task.plan().replays() {
            tracing::warn!(
                topic,
                partition,
                from = resume.start.unwrap_or(0),
                until = resume.published_until,
                "the state store is behind what was published (a changelog that predates this data, or \
                 at_least_once); replaying to rebuild state without publishing again"
            );
        }
        tracing::info!(partition, path = %path.display(), "opened state store");
        self.tasks.insert(partition, task);
        Ok(())
    }

    /// Pauses the inputs of partitions that began restoring in the last rebalance.
    pub fn pause_restoring<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), RunError> {
        let mut paused = TopicPartitionList::new();
        for partition in std::mem::take(&mut self.to_pause) {
            for (_, topic) in self.config.topics.inputs() {
                paused.add_partition(topic, partition);
            }
        }
        if paused.count() > 0 {
            consumer.pause(&paused).map_err(|e| RunError::kafka("pausing restoring partitions", e))?;
        }
        Ok(())
    }

    /// Opens the tasks of partitions whose restore ended and resumes their inputs.
    pub fn finish_restores<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), RunError> {
        let done: Vec<i32> =
            self.restoring.iter().filter(|(_, r)| r.restoring.is_finished()).map(|(p, _)| *p).collect();
        for partition in done {
            let Some(pending) = self.restoring.remove(&partition) else { continue };
            let restored = pending.restoring.join()?;
            self.reopen(consumer, partition, restored.store, pending.fetched, Some(&pending.assigned))?;
        }
        Ok(())
    }

    /// Opens a partition's task outside a rebalance, hands it the records `fetched` meanwhile,
    /// and resumes its inputs. An input whose store position is below where the consumer stands
    /// (`assigned`; `None`: always) is sought back to it, and its fetched records come again.
    fn reopen<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        store: StateStore,
        fetched: Vec<(InputStream, InputRecord)>,
        assigned: Option<&BTreeMap<String, i64>>,
    ) -> Result<(), RunError> {
        let group = group_offsets(consumer, &self.config, &BTreeSet::from([partition]))?;
        self.open_task(None, partition, store, group.get(&partition).unwrap_or(&BTreeMap::new()))?;
        let starts: Vec<(String, Option<i64>)> = match self.tasks.get(&partition) {
            Some(task) => task.plan().inputs().map(|(topic, resume)| (topic.to_owned(), resume.start)).collect(),
            None => return Ok(()),
        };
        let mut seek = TopicPartitionList::new();
        let mut inputs = TopicPartitionList::new();
        for (topic, start) in starts {
            let start = self.resume_offset(&topic, partition, start)?;
            inputs.add_partition(&topic, partition);
            if assigned.is_none_or(|assigned| assigned.get(&topic).is_some_and(|at| start < *at)) {
                seek.add_partition_offset(&topic, partition, Offset::Offset(start))
                    .map_err(|e| RunError::kafka(format!("positioning {topic} [{partition}]"), e))?;
            }
        }
        if let Some(task) = self.tasks.get_mut(&partition) {
            let now = now_ms();
            for (stream, record) in fetched {
                if seek.find_partition(&record.topic, partition).is_none() {
                    task.admit(stream, record, now);
                }
            }
        }
        // Resume before seeking: resuming moves the fetch back to where the application last
        // consumed, which would undo the seek. Nothing is polled in between, and the seek drops
        // what was fetched before it.
        consumer.resume(&inputs).map_err(|e| RunError::kafka(format!("resuming partition {partition}"), e))?;
        if seek.count() > 0 {
            let sought = consumer
                .seek_partitions(seek, CLIENT_TIMEOUT)
                .map_err(|e| RunError::kafka(format!("seeking the inputs of partition {partition}"), e))?;
            for element in sought.elements() {
                element
                    .error()
                    .map_err(|e| RunError::kafka(format!("seeking {} [{partition}]", element.topic()), e))?;
            }
        }
        Ok(())
    }

    /// After an abortable transaction error (the transaction is not committed, the producer is
    /// still usable) or outputs the broker refused: aborts the transaction, drops what every task
    /// processed since the last commit, and rewinds each partition to what its store reflects.
    /// Processing then goes on.
    pub fn abort_and_rewind<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), RunError> {
        self.outputs.clear();
        if self.in_transaction {
            self.producer
                .abort_transaction(CLIENT_TIMEOUT)
                .map_err(|e| self.transaction_error("aborting the transaction", e))?;
            self.in_transaction = false;
        } else if let Err(e) = flush_delivered(&self.producer, CLIENT_TIMEOUT) {
            // at_least_once: what the round sent settles first, so its reports are not taken
            // for the next round's.
            tracing::warn!("waiting for the dropped round's deliveries: {e}");
        }
        let tracker = self.producer.context();
        tracker.take_changelog_next();
        tracker.take_failures();
        // Records whose outputs the broker refused for good are set aside, or the rewound round
        // would fail on them again, forever.
        let mut refused: BTreeMap<i32, Vec<(Origin, RDKafkaErrorCode)>> = BTreeMap::new();
        for (opaque, code) in tracker.take_rejected() {
            if let Some(origin) = self.sent.get(opaque) {
                tracing::warn!(
                    topic = %origin.topic,
                    partition = origin.partition,
                    offset = origin.offset,
                    "the broker refused this record's outputs for good ({code}); it goes to the dead letters"
                );
                refused.entry(origin.partition).or_default().push((origin.clone(), code));
            }
        }
        self.forget_round();
        self.aborts += 1;
        self.rewind(consumer, refused)
    }

    /// After this instance's producer was fenced (fatal for that producer): closes the tasks
    /// without committing (the broker aborts the fenced transaction), starts transactions again
    /// with a new producer, and reopens every partition from its store. The caller stops instead
    /// when it happens again soon: then another live instance shares the transactional id.
    pub fn rejoin_after_fence<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), RunError> {
        self.outputs.clear();
        self.in_transaction = false;
        self.forget_round();
        // The producer that fenced this one may still be finishing its own start: the
        // coordinator answers it "concurrent transactions" until it has aborted the transaction
        // it fenced, and it asks again. Taking the id back meanwhile would be fenced by that
        // retry at once, and count as a second fence (a replacement woken zombie's restart
        // would stop the replacement). So wait for that first.
        std::thread::sleep(FENCED_PAUSE);
        let producer: ThreadedProducer<DeliveryTracker> = self
            .config
            .producer_config()
            .create_with_context(DeliveryTracker::new(self.changelog.topic.clone()))
            .map_err(|e| RunError::kafka("creating a new producer after being fenced", e))?;
        producer
            .init_transactions(CLIENT_TIMEOUT)
            .map_err(|e| RunError::kafka("starting transactions again after being fenced", e))?;
        // What the fenced producer still holds can never be delivered.
        self.producer.purge(PurgeConfig::default().queue().inflight());
        self.producer = producer;
        self.fences += 1;
        self.rewind(consumer, BTreeMap::new())
    }

    /// Reopens every partition from its store, dropping what was processed since its last
    /// RocksDB batch, and sets aside the records whose outputs the broker `refused`.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mut refused: BTreeMap<i32, Vec<(Origin, RDKafkaErrorCode)>>,
    ) -> Result<(), RunError> {
        for (partition, task) in std::mem::take(&mut self.tasks) {
            let (store, rejected) = task.into_store();
            self.reopen(consumer, partition, store, Vec::new(), None)?;
            if let Some(task) = self.tasks.get_mut(&partition) {
                task.carry_rejections(rejected);
                for (origin, code) in refused.remove(&partition).unwrap_or_default() {
                    task.reject(origin.topic, origin.offset, code);
                }
            }
        }
        Ok(())
    }

    /// Stops the restores in progress; each keeps its progress in its store.
    fn cancel_restores(&mut self) {
        self.to_pause.clear();
        for (_, pending) in std::mem::take(&mut self.restoring) {
            pending.restoring.cancel();
        }
    }

    /// Routes a consumed input record to its partition's task; `now` is when it arrived (one
    /// reading of the clock serves a whole poll batch).
    pub fn admit(&mut self, m: &BorrowedMessage<'_>, now: i64) {
        let Some(stream) = self.config.topics.input_stream(m.topic()) else { return };
        let Some(task) = self.tasks.get_mut(&m.partition()) else {
            if let Some(pending) = self.restoring.get_mut(&m.partition()) {
                // Fetched before the pause took effect: kept for the task.
                let timestamp = m.timestamp().to_millis().unwrap_or(pending.last_timestamp);
                pending.last_timestamp = timestamp;
                let record = InputRecord::new(stream, m.topic(), m.offset(), timestamp, m.key(), m.payload());
                pending.fetched.push((stream, record));
                return;
            }
            tracing::warn!(topic = m.topic(), partition = m.partition(), "record of a partition not assigned here");
            return;
        };
        // A record without a timestamp is ordered as if it came with the one before it: the
        // wall clock would make a replay decide differently.
        let timestamp = m.timestamp().to_millis().unwrap_or_else(|| task.last_timestamp());
        let record = InputRecord::new(stream, m.topic(), m.offset(), timestamp, m.key(), m.payload());
        if task.admit(stream, record, now) == Admission::AlreadyApplied {
            tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(), "already applied");
        }
    }

    /// Processes what the merges release, the partitions side by side, and hands the outputs to
    /// the producer, partition by partition.
    pub fn process_ready<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, now: i64) -> Result<(), RunError> {
        let config = &self.config;
        // Read from the client only when a merge asks about an input it has nothing buffered of.
        let positions: OnceLock<TopicPartitionList> = OnceLock::new();
        let samples = self.progress.samples.capacity();
        let run = |(&partition, task): (&i32, &mut PartitionTask)| {
            // Fixed while the merge releases records: nothing is consumed meanwhile.
            let consumed = INPUT_STREAMS.map(|stream| task.consumed_until(config.topics.input_topic(stream)));
            let caught_up = |stream: InputStream| {
                let positions = positions.get_or_init(|| consumer.position().unwrap_or_default());
                let topic = config.topics.input_topic(stream);
                input_caught_up(consumer, positions, topic, partition, consumed[stream_index(stream)])
            };
            let mut round = TaskRound {
                outputs: Vec::new(),
                progress: Progress { samples: Samples::new(samples), ..Progress::default() },
                outcome: Ok(()),
            };
            round.outcome = task.process_ready(now, caught_up, config, &mut round.outputs, &mut round.progress);
            round
        };
        // Handing a few records to the threads costs more than processing them here: under a
        // light live load the loop comes round for every few records.
        let buffered: usize = self.tasks.values().map(PartitionTask::buffered).sum();
        let rounds: Vec<TaskRound> = if buffered < PARALLEL_FROM {
            self.tasks.iter_mut().map(run).collect()
        } else {
            let mut tasks: Vec<(&i32, &mut PartitionTask)> = self.tasks.iter_mut().collect();
            self.threads.install(|| tasks.par_drain(..).map(run).collect())
        };
        let mut outcome = Ok(());
        for mut round in rounds {
            self.outputs.append(&mut round.outputs);
            self.progress.add(round.progress);
            if outcome.is_ok() {
                outcome = round.outcome;
            }
        }
        outcome?;
        if self.outputs.is_empty() {
            return Ok(());
        }
        if self.config.processing_guarantee == ProcessingGuarantee::ExactlyOnce && !self.in_transaction {
            self.begin_transaction()?;
        }
        for record in std::mem::take(&mut self.outputs) {
            self.send(&record)?;
        }
        Ok(())
    }

    fn send(&mut self, record: &OutputRecord) -> Result<(), RunError> {
        // The index of its origin is the delivery opaque: a record the broker refuses for good
        // names the input record to set aside.
        let opaque = self.sent.len();
        self.sent.push(record.origin.clone());
        if let Some(timestamp) = record.timestamp {
            self.sent_stamps.push(timestamp);
        }
        match send_waiting(&self.producer, base_record(record, opaque)) {
            // A dead letter bigger than the producer may send would stop the instance at the same
            // record after every restart: publish it without its value instead, saying so.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) if record.is_dead_letter() => {
                tracing::warn!(topic = %record.topic, bytes = record.payload.len(), "dead letter too large; sent without its value");
                let small = record.without_payload("above the producer's message.max.bytes");
                send_waiting(&self.producer, base_record(&small, opaque))
            }
            // Any other output that large can never be published either: its input record is
            // set aside as a dead letter, as when the broker refuses an output for good.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                self.producer.context().reject(opaque, RDKafkaErrorCode::MessageSizeTooLarge);
                return Err(RunError::OutputsRefused(format!(
                    "an output to {} of {} bytes is above the producer's message.max.bytes",
                    record.topic,
                    record.payload.len()
                )));
            }
            other => other,
        }
        .map_err(|e| self.produce_error(format!("producing to {}", record.topic), e))
    }

    /// Makes processed work durable. Three commits, in this order:
    /// - `at_least_once`: outputs acknowledged, then the changelog records, then each store's
    ///   RocksDB batch, then the consumer offsets;
    /// - `exactly_once`: the Kafka transaction (outputs and consumer offsets), then each
    ///   store's RocksDB batch.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), RunError> {
        let started = Instant::now();
        let mut offsets = TopicPartitionList::new();
        let mut changelog = Vec::new();
        for task in self.tasks.values() {
            for p in task.consumer_offsets() {
                offsets
                    .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
                    .map_err(|e| RunError::kafka("building the offsets to commit", e))?;
            }
            changelog.push((task.partition(), task.changelog_records()?));
        }
        let processed = self.tasks.values().any(PartitionTask::has_processed);
        if !processed && !self.in_transaction {
            return Ok(());
        }
        match self.config.processing_guarantee {
            ProcessingGuarantee::AtLeastOnce => {
                // The changelog carries the input positions, which a restore trusts: it goes out
                // only once every output of the round is acknowledged. Sent together, a round
                // whose outputs failed would leave positions past them in the changelog, and
                // the next owner would skip those records.
                self.wait_delivered("outputs")?;
                self.send_changelog(&changelog)?;
                self.wait_delivered("changelog records")?;
                self.write_batches()?;
                if offsets.count() > 0 {
                    consumer
                        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
                        .map_err(|e| RunError::kafka("committing consumer offsets", e))?;
                }
            }
            ProcessingGuarantee::ExactlyOnce => {
                if !self.in_transaction {
                    self.begin_transaction()?;
                }
                self.send_changelog(&changelog)?;
                let group = consumer
                    .group_metadata()
                    .ok_or_else(|| RunError::Brokers("the consumer has no group metadata yet".into()))?;
                if offsets.count() > 0 {
                    self.retrying("adding offsets to the transaction", |producer| {
                        producer.send_offsets_to_transaction(&offsets, &group, CLIENT_TIMEOUT)
                    })?;
                }
                // See `flush_delivered`: rust-rdkafka's own flush would add 100 ms to every commit.
                flush_delivered(&self.producer, CLIENT_TIMEOUT).map_err(|e| RunError::kafka("flushing outputs", e))?;
                self.retrying("committing the transaction", |producer| producer.commit_transaction(CLIENT_TIMEOUT))?;
                self.in_transaction = false;
                if let Some(began) = self.transaction_started.take() {
                    self.status.timings().transaction.observe(began.elapsed().as_secs_f64());
                }
                self.write_batches()?;
            }
        }
        self.commits += 1;
        self.sent.clear();
        self.committed.absorb(&mut self.progress);
        let now = now_ms();
        for stamp in self.sent_stamps.drain(..) {
            self.status.timings().latency.observe((now - stamp).max(0) as f64 / 1000.0);
        }
        self.status.timings().commit.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Waits until what was handed to the producer is delivered (`at_least_once`); fails if any
    /// of it (`what`) was not.
    fn wait_delivered(&self, what: &str) -> Result<(), RunError> {
        flush_delivered(&self.producer, CLIENT_TIMEOUT).map_err(|e| RunError::kafka(format!("flushing {what}"), e))?;
        let (failed, last) = self.producer.context().take_failures();
        if failed > 0 && self.producer.context().has_rejected() {
            // Some records can never be published; the loop sets their input records aside.
            return Err(RunError::OutputsRefused(last.unwrap_or_default()));
        }
        if failed > 0 {
            return Err(RunError::Delivery(format!(
                "{failed} {what} were not delivered (last error: {}); offsets not committed",
                last.unwrap_or_default()
            )));
        }
        Ok(())
    }

    fn begin_transaction(&mut self) -> Result<(), RunError> {
        self.producer.begin_transaction().map_err(|e| self.transaction_error("beginning a transaction", e))?;
        self.in_transaction = true;
        self.transaction_started = Some(Instant::now());
        Ok(())
    }

    /// Forgets what the open round sent and counted: it is not committed.
    fn forget_round(&mut self) {
        self.sent.clear();
        self.sent_stamps.clear();
        self.progress.discard_counts();
        self.transaction_started = None;
    }

    /// Publishes the state writes of each partition to its changelog partition (inside the
    /// open transaction under `exactly_once`).
    fn send_changelog(&self, changelog: &[(i32, Vec<ChangelogRecord>)]) -> Result<(), RunError> {
        let topic = &self.changelog.topic;
        for (partition, records) in changelog {
            for record in records {
                let mut base = BaseRecord::with_opaque_to(topic, NO_ORIGIN).partition(*partition).key(&record.key[..]);
                if let Some(value) = &record.value {
                    base = base.payload(&value[..]);
                }
                send_waiting(&self.producer, base)
                    .map_err(|e| self.produce_error(format!("producing to {topic} [{partition}]"), e))?;
            }
        }
        Ok(())
    }

    /// A failed transaction call, telling a fenced instance apart (two replicas sharing an id).
    fn transaction_error(&self, context: &str, error: KafkaError) -> RunError {
        match &error {
            _ if matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
            ) =>
            {
                RunError::Fenced(self.config.transactional_id())
            }
            KafkaError::Transaction(e) if e.txn_requires_abort() => {
                RunError::TransactionAborted { context: context.to_owned(), source: error }
            }
            _ => RunError::kafka(context, error),
        }
    }

    /// A failed send. Inside a transaction that already failed (a delivery refused, say), the
    /// producer refuses every send with a state error: the transaction must be aborted. A fenced
    /// producer refuses every send with a fatal error.
    fn produce_error(&self, context: String, error: KafkaError) -> RunError {
        match error {
            KafkaError::MessageProduction(RDKafkaErrorCode::State) if self.in_transaction => {
                RunError::TransactionAborted { context, source: error }
            }
            // The producer hit a fatal error: being fenced is the one crmflow recovers from.
            KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)
                if matches!(
                    self.producer.client().fatal_error(),
                    Some((RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced, _))
                ) =>
            {
                RunError::Fenced(self.config.transactional_id())
            }
            error => RunError::kafka(context, error),
        }
    }

    /// Runs a transactional call, again while it fails with a retriable error (a time-out, a
    /// coordinator moving), as librdkafka documents: the call may be repeated until it succeeds.
    fn retrying(
        &self,
        context: &str,
        mut call: impl FnMut(&ThreadedProducer<DeliveryTracker>) -> Result<(), KafkaError>,
    ) -> Result<(), RunError> {
        let deadline = Instant::now() + CLIENT_TIMEOUT * 2;
        loop {
            match call(&self.producer) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                    tracing::warn!("{context}: {e}; retrying");
                }
                Err(e) => return Err(self.transaction_error(context, e)),
            }
        }
    }

    /// Each store's RocksDB batch: staged state with the input positions and the changelog
    /// offset it reflects. Called once the outputs and the changelog records are durable.
    fn write_batches(&mut self) -> Result<(), RunError> {
        // A committed transaction ends with its marker, right after this instance's last record
        // of each changelog partition (nothing else writes there): a store that counts the marker
        // in is current, not one offset behind.
        let marker = i64::from(self.config.processing_guarantee == ProcessingGuarantee::ExactlyOnce);
        let changelog_next = self.producer.context().take_changelog_next();
        // Every changelog record after these positions is written after now.
        let written_at = now_ms();
        let reached = |partition| {
            changelog_next.get(&partition).map(|next| ChangelogPosition { next: next + marker, written_at })
        };
        let mut tasks: Vec<&mut PartitionTask> = self.tasks.values_mut().collect();
        self.threads
            .install(|| tasks.par_iter_mut().try_for_each(|task| task.write_batch(reached(task.partition()))))?;
        Ok(())
    }

    /// Deletes the stores of partitions that were not owned here for `state_cleanup_delay_ms`:
    /// a partition that comes back later restores in full, and the disk does not fill up with
    /// the stores of every partition this instance ever held.
    pub fn delete_released_stores(&mut self) {
        let delay = Duration::from_millis(self.config.state_cleanup_delay_ms);
        let expired: Vec<i32> = self.released.iter().filter(|(_, at)| at.elapsed() >= delay).map(|(p, _)| *p).collect();
        for partition in expired {
            self.released.remove(&partition);
            let path = store_path(&self.config, partition);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(
                    partition,
                    path = %path.display(),
                    "deleted the state store of a partition not owned here for {} ms",
                    delay.as_millis()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(partition, path = %path.display(), "cannot delete an unowned state store: {e}")
                }
            }
        }
    }

    /// Commits what is processed and lets the partitions go (called before a revocation). A
    /// commit that fails drops the round instead, and leaves the failure for the loop.
    pub fn on_revoke<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        // librdkafka keeps a partition paused across rebalances: resume the restoring ones while
        // they are still assigned, or they would stay paused when assigned again.
        let mut paused = TopicPartitionList::new();
        for partition in self.restoring.keys() {
            for (_, topic) in self.config.topics.inputs() {
                paused.add_partition(topic, *partition);
            }
        }
        if paused.count() > 0 {
            if let Err(e) = consumer.resume(&paused) {
                tracing::warn!("resuming restoring partitions before their revocation: {e}");
            }
        }
        let now = Instant::now();
        for partition in self.tasks.keys().chain(self.restoring.keys()) {
            self.released.insert(*partition, now);
        }
        self.cancel_restores();
        if consumer.assignment_lost() {
            // The group moved on without this member (a missed session): its offsets would be
            // refused, and its partitions may already be processed elsewhere. Drop the round.
            tracing::warn!("the partitions were lost (session timed out); dropping the uncommitted round");
            self.abandon();
        }
        if self.failure.is_none() {
            if let Err(e) = self.commit(consumer) {
                // The round is dropped below and redone by the partitions' next owner; the loop
                // then treats the failure as its own (a fence or an abort goes on, see `service`).
                tracing::warn!("commit before revocation failed: {e}; dropping the round");
                self.failure.get_or_insert(e);
            }
        }
        if self.failure.is_some() {
            self.abandon();
        }
        // Closing a store drops what it staged; anything uncommitted is redone by the next owner.
        self.close_tasks();
        self.membership = Membership::Rebalancing;
        self.publish();
        tracing::info!("partitions revoked; state stores closed");
    }

    /// Drops the round in progress after a failure: nothing of it may be committed. Aborts the
    /// open transaction, and closes the stores without writing what they staged.
    pub fn abandon(&mut self) {
        self.cancel_restores();
        self.outputs.clear();
        self.forget_round();
        if self.in_transaction {
            if let Err(e) = self.producer.abort_transaction(CLIENT_TIMEOUT) {
                tracing::error!("aborting the transaction failed: {e}");
            }
            self.in_transaction = false;
        }
        // Offsets of aborted changelog records must not reach a RocksDB batch.
        self.producer.context().take_changelog_next();
        self.close_tasks();
    }

    /// Drops every task, closing its store once operators' queries are done with it.
    fn close_tasks(&mut self) {
        self.status.withdraw_stores();
        self.tasks.clear();
    }

    /// The counters since start, with the consumer lag the client reported.
    pub fn counters(&self, lag: i64) -> Counters {
        Counters {
            records: self.committed.records,
            replayed: self.committed.replayed,
            late: self.committed.late,
            tally: self.committed.tally.clone(),
            dead_letters: self.committed.dead_letters.clone(),
            lag,
            commits: self.commits,
            aborts: self.aborts,
            fences: self.fences,
            expired: self.expired,
            restoring: self.restoring.len(),
            restored: self.restored_records.load(Ordering::Relaxed),
        }
    }

    /// Publishes, for operators, the counters, the membership and the assigned partitions at once,
    /// and the committed state of the partitions being processed.
    pub fn publish(&self) {
        let restoring = self.restoring.iter().map(|(&partition, pending)| PartitionStatus {
            partition,
            state: PartitionState::Restoring,
            restore: Some(pending.restoring.progress()),
            store_bytes: None,
        });
        let processing = self.tasks.keys().map(|&partition| PartitionStatus {
            partition,
            state: PartitionState::Processing,
            restore: None,
            store_bytes: None,
        });
        let mut partitions: Vec<PartitionStatus> = restoring.chain(processing).collect();
        partitions.sort_by_key(|p| p.partition);
        let committed = self.committed_offsets();
        let view = EngineView { counters: self.counters(-1), membership: self.membership, partitions, committed };
        let stores = self.tasks.iter().map(|(&partition, task)| (partition, task.store().committed_view())).collect();
        self.status.publish(view, stores);
    }

    /// The next offset committed per input topic partition of the tasks (for the lag).
    pub fn committed_offsets(&self) -> BTreeMap<(String, i32), i64> {
        self.tasks
            .iter()
            .flat_map(|(&partition, task)| {
                task.committed_offsets().map(move |(topic, next)| ((topic.to_owned(), partition), next))
            })
            .collect()
    }

    /// When the next buffered record may go at the latest, over all partitions.
    pub fn next_deadline(&self) -> Option<i64> {
        self.tasks.values().filter_map(PartitionTask::next_deadline).min()
    }
}

/// Where the state store of `partition` lives.
fn store_path(config: &Config, partition: i32) -> PathBuf {
    config.state_dir.join(format!("partition-{partition}"))
}

/// The partitions with a store in `state_dir`.
fn stores_on_disk(state_dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(state_dir) else { return Vec::new() };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_prefix("partition-")?.parse().ok()).collect()
}

/// Records in `store` (which records the changelog id `recorded` now) that its content comes
/// from the `changelog` topic, where the brokers say which one that is.
fn adopt(store: &StateStore, recorded: Option<&str>, changelog: &ChangelogState) -> Result<(), RunError> {
    match &changelog.id {
        Some(id) if recorded != Some(id.as_str()) => Ok(store.set_changelog_id(id)?),
        _ => Ok(()),
    }
}

/// The low and high watermarks of a partition as the consumer last saw them in a fetch response
/// (no request to the broker); -1001 (`OFFSET_INVALID`) while unknown.
pub fn cached_watermarks<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> (i64, i64) {
    let (mut low, mut high) = (-1001, -1001);
    let Ok(topic) = CString::new(topic) else { return (low, high) };
    // SAFETY: the client pointer is valid while `consumer` lives; librdkafka only reads the
    // topic name and writes the two integers, under its own partition lock.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return (-1001, -1001);
    }
    (low, high)
}

/// Whether the consumer has read everything the broker holds of an input partition (KIP-695):
/// only then may the merge stop waiting for it after `max_wait_ms`. `consumed` is the offset after
/// the last record the task admitted, or where it was told to start.
fn input_caught_up<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
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
fn base_record(record: &OutputRecord, opaque: usize) -> BaseRecord<'_, [u8], [u8], usize> {
    let mut base = BaseRecord::with_opaque_to(&record.topic, opaque).payload(&record.payload[..]);
    // Only dead letters carry headers; an empty header list would still cost an allocation.
    if !record.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        base = base.headers(headers);
    }
    if let Some(timestamp) = record.timestamp {
        base = base.timestamp(timestamp);
    }
    if let Some(key) = &record.key {
        base = base.key(&key[..]);
    }
    base
}

/// How long one description of topics may take before it is asked again.
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The changelog `topic` as the brokers describe it, asked again for a while when they do not
/// answer.
pub fn describe_changelog(config: &Config, topic: &str) -> Result<ChangelogTopic, RunError> {
    ask_again(|| changelog_topic::describe(config, topic, DESCRIBE_TIMEOUT))
}

/// Asks the brokers again for a while (a coordinator moving, brokers still starting) until `ask`
/// succeeds, then gives its last answer.
pub fn ask_again<T>(mut ask: impl FnMut() -> Result<T, RunError>) -> Result<T, RunError> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        match ask() {
            Err(e) if Instant::now() < deadline => {
                tracing::info!("{e}; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// The consumer group's committed offsets of the input topics, per partition of `partitions`.
///
/// A member that died with offsets in an open transaction makes the broker answer "unstable"
/// for those partitions (KIP-447) until the transaction coordinator aborts it: after its
/// `transaction.timeout.ms`, plus up to 10 s until the coordinator looks. So the question is
/// repeated for that long (at least librdkafka's default of 60 s, plus 20 s), for all
/// partitions at once.
fn group_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    config: &Config,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, BTreeMap<String, i64>>, RunError> {
    let mut wanted = TopicPartitionList::new();
    for partition in partitions {
        for (_, topic) in config.topics.inputs() {
            wanted.add_partition(topic, *partition);
        }
    }
    // A member configured apart may have librdkafka's default time-out (60 s) rather than ours.
    let timeout = Duration::from_millis(config.transaction_timeout_ms()).max(Duration::from_secs(60));
    let deadline = Instant::now() + timeout + Duration::from_secs(20);
    let committed = loop {
        match consumer.committed_offsets(wanted.clone(), CLIENT_TIMEOUT) {
            Ok(committed) => break committed,
            // The coordinator may be moving or loading, or a dead member's offsets pending.
            Err(e) if Instant::now() < deadline => {
                tracing::info!(?partitions, "reading the group's committed offsets: {e}; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(RunError::kafka(
                    format!("reading the group's committed offsets of partitions {partitions:?}"),
                    e,
                ))
            }
        }
    };
    let mut offsets: BTreeMap<i32, BTreeMap<String, i64>> = partitions.iter().map(|p| (*p, BTreeMap::new())).collect();
    for element in committed.elements() {
        if let Offset::Offset(offset) = element.offset() {
            offsets.entry(element.partition()).or_default().insert(element.topic().to_owned(), offset);
        }
    }
    Ok(offsets)
}

/// The engine, also when a callback panicked while holding it.
pub fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A poisoned lock means a callback panicked; the state is still the last consistent one.
    engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
