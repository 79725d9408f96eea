//! Restoring a partition's state store from its changelog, apart from processing.
//!
//! Every RocksDB batch records the changelog offset it reflects (`changelog_next`), written after
//! the Kafka transaction that published those changelog records, with when that was, and each
//! store the id of the changelog topic its content comes from. So when a partition is assigned,
//! its store is at most behind its changelog, never ahead of it:
//! - **current**: it reflects the whole changelog partition; it processes at once;
//! - **tail**: a crash came between the transaction and the RocksDB batch, the directory was
//!   copied back from an earlier point, or the partition comes back from another instance; only
//!   the records after `changelog_next` are restored;
//! - **full**: no store (a lost disk, a partition new to this instance), a store that predates
//!   changelogs, one whose changelog tail was deleted, one *ahead* of the changelog or from
//!   another changelog topic (it belongs to another history: a reset, a recreated topic), or one
//!   whose tail may have lost deletions (below). The store is deleted and the whole changelog
//!   restored; the inputs' history is not needed.
//!
//! The changelog is compacted: the cleaner drops a deleted key's tombstone `delete.retention.ms`
//! after it first cleans it, and the low offset does not move. A store whose position was
//! reached longer ago than that (less a minute for clocks that disagree) may find the tail after
//! it without a deletion it needs (a team removal, a retraction), and would bring back what was
//! deleted: it is restored in full instead, as Kafka Streams treats a checkpoint older than the
//! compaction horizon as corrupt. Stores of partitions this instance no longer owns are deleted
//! after `state_cleanup_delay_ms` (see the engine), as Kafka Streams' `state.cleanup.delay.ms`.
//!
//! A store is classified against the changelog's high watermark, which counts records of open
//! transactions: a zombie's open transaction holds the last stable offset back, and a store past
//! it is current, not ahead. The restore reads committed records only, and waits for such a
//! transaction to end.
//!
//! [`plan`] makes that decision, purely. [`Restoring`] runs one restore on its own thread with
//! its own consumer, while the engine processes the partitions whose stores are current and keeps
//! the restoring partitions' inputs paused. Every RocksDB batch of a restore carries the
//! changelog position it reaches, so a restore interrupted by a rebalance resumes where it
//! stopped, and one interrupted by a crash where RocksDB last flushed (restored records skip
//! its log). It finishes when the consumer's position reaches the end offset taken at
//! assignment, which also works when the changelog ends in a transaction marker.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crmflow_store::{ChangelogPosition, RestoreBatch, StateStore, StoreError};

use crate::config::Config;
use crate::status::RestoreProgress;

/// Records written to the store in one RocksDB batch (at most; fewer when the fetch runs dry).
const RESTORE_BATCH: usize = 1_000;

/// How long a restore may go without progress before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// What a newly assigned partition's store needs before it may process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePlan {
    /// It reflects its whole changelog partition.
    Current,
    /// It reflects the changelog up to `from`; the records from there on are restored.
    Tail {
        /// The first changelog offset to restore.
        from: i64,
    },
    /// It cannot be trusted or does not exist: delete it and restore the whole changelog.
    Full {
        /// Why, for the log.
        reason: FullRestoreReason,
    },
}

/// Why a store is restored in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullRestoreReason {
    /// It never recorded a changelog offset: new, or written before changelogs.
    NoChangelogOffset,
    /// It is ahead of its changelog: it belongs to another history (a reset, a recreated topic).
    AheadOfChangelog,
    /// It comes from another changelog topic of the same name: the topic was deleted and
    /// created again (a reset), so the store belongs to another history.
    OtherHistory,
    /// The changelog records after its offset were deleted (retention or a manual delete).
    TailDeleted,
    /// Its position was reached longer ago than the changelog keeps deletions: compaction may
    /// have dropped some that the tail after it needs.
    DeletionsMayBeCompacted,
}

impl std::fmt::Display for FullRestoreReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FullRestoreReason::NoChangelogOffset => "the store records no changelog offset (new, or lost)",
            FullRestoreReason::AheadOfChangelog => {
                "the store is ahead of its changelog: it belongs to another history (a reset or a recreated topic)"
            }
            FullRestoreReason::OtherHistory => {
                "the store comes from an earlier changelog topic of that name: it belongs to another history \
                 (a reset or a recreated topic)"
            }
            FullRestoreReason::TailDeleted => "the changelog records after the store's offset were deleted",
            FullRestoreReason::DeletionsMayBeCompacted => {
                "the store's changelog position is older than the changelog keeps deletions (delete.retention.ms): \
                 its tail may miss some"
            }
        })
    }
}

/// What a store records of its changelog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreMark {
    /// How far it reflects its changelog (`None`: never recorded).
    pub position: Option<ChangelogPosition>,
    /// The id of the changelog topic its content comes from (`None`: not recorded).
    pub changelog_id: Option<String>,
    /// Whether it holds any data.
    pub has_data: bool,
}

impl StoreMark {
    /// What `store` records.
    pub fn of(store: &StateStore) -> Result<StoreMark, StoreError> {
        Ok(StoreMark {
            position: store.changelog_position()?,
            changelog_id: store.changelog_id()?,
            has_data: !store.is_empty()?,
        })
    }
}

/// A changelog partition as the brokers describe it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogState {
    /// Its low watermark.
    pub low: i64,
    /// Its high watermark, records of open transactions included.
    pub high: i64,
    /// The topic's id (`None`: the brokers do not say).
    pub id: Option<String>,
    /// How long it keeps a deletion (the topic's `delete.retention.ms`).
    pub deletions_kept_ms: i64,
}

/// How far clocks may disagree: a position reached less than `delete.retention.ms` minus this
/// long ago is young enough for its tail.
pub const CLOCK_ALLOWANCE_MS: i64 = 60_000;

/// What a `store` needs, given its `changelog` partition, at `now_ms` (epoch ms).
pub fn plan(store: &StoreMark, changelog: &ChangelogState, now_ms: i64) -> RestorePlan {
    let full = |reason| RestorePlan::Full { reason };
    let ChangelogState { low, high, .. } = *changelog;
    let changelog_empty = high <= low;
    if let (Some(ours), Some(theirs)) = (&store.changelog_id, &changelog.id) {
        if ours != theirs {
            return full(FullRestoreReason::OtherHistory);
        }
    }
    match store.position {
        None if changelog_empty && !store.has_data => RestorePlan::Current,
        None => full(FullRestoreReason::NoChangelogOffset),
        Some(p) if p.next > high => full(FullRestoreReason::AheadOfChangelog),
        Some(p) if p.next < low => full(FullRestoreReason::TailDeleted),
        Some(p) if p.next == high || changelog_empty => RestorePlan::Current,
        Some(p) if now_ms.saturating_sub(p.written_at) >= changelog.deletions_kept_ms - CLOCK_ALLOWANCE_MS => {
            full(FullRestoreReason::DeletionsMayBeCompacted)
        }
        Some(p) => RestorePlan::Tail { from: p.next },
    }
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The restore consumer could not be created or assigned.
    #[error("restoring partition {partition} from `{topic}`: {context}: {source}")]
    Kafka {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// What failed.
        context: &'static str,
        /// The client's error.
        source: KafkaError,
    },
    /// A batch of changelog records could not be applied.
    #[error("restoring partition {partition} from `{topic}` at offsets {offset}..={last}: {source}")]
    Record {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The batch's first offset.
        offset: i64,
        /// The batch's last offset.
        last: i64,
        /// The store's error.
        source: Box<StoreError>,
    },
    /// The store could not mark its progress.
    #[error("restoring partition {partition}: {0}", partition = .1)]
    Store(#[source] Box<StoreError>, i32),
    /// The restore thread could not start (`source`), or panicked (`None`).
    #[error("restoring partition {partition}: the restore thread {}", match source {
        Some(e) => format!("could not start: {e}"),
        None => "panicked".to_owned(),
    })]
    Thread {
        /// The partition.
        partition: i32,
        /// Why it could not start.
        source: Option<std::io::Error>,
    },
    /// No progress for too long.
    #[error(
        "restoring partition {partition} from `{topic}` made no progress for {}s at offset {position} \
         (end offset {until}); check that the brokers are up and the topic is readable",
        STALL_LIMIT.as_secs()
    )]
    Stalled {
        /// The changelog topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Where it stopped.
        position: i64,
        /// Where it had to go.
        until: i64,
    },
}

/// A finished (or cancelled) restore: the store, and how far it got.
pub struct Restored {
    /// The store, restored up to `next`.
    pub store: StateStore,
    /// The next changelog offset the store reflects.
    pub next: i64,
    /// Whether it reached the end offset (false: cancelled).
    pub complete: bool,
}

/// One partition's restore, running on its own thread.
pub struct Restoring {
    partition: i32,
    from: i64,
    until: i64,
    // The next changelog offset to apply, as the thread moves on.
    reached: Arc<AtomicI64>,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<Result<Restored, RestoreError>>,
}

/// Where a restore reads from and to.
#[derive(Debug, Clone)]
pub struct RestoreRange {
    /// The changelog topic.
    pub topic: String,
    /// The partition (the input partition it mirrors).
    pub partition: i32,
    /// The first offset to read (the partition's start when restoring in full).
    pub from: i64,
    /// When the record before `from` was written (epoch ms; 0: unknown).
    pub written_at: i64,
    /// The end offset at assignment: everything below it is committed.
    pub until: i64,
}

impl Restoring {
    /// Starts restoring `store` over `range`; `restored` counts the records applied, for metrics.
    pub fn start(
        config: &Config,
        store: StateStore,
        range: RestoreRange,
        restored: Arc<AtomicU64>,
    ) -> Result<Restoring, RestoreError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let partition = range.partition;
        let (from, until) = (range.from, range.until);
        let reached = Arc::new(AtomicI64::new(range.from));
        let position = reached.clone();
        let client = config.restore_consumer_config();
        let flag = cancel.clone();
        let handle = std::thread::Builder::new()
            .name(format!("restore-{partition}"))
            .spawn(move || {
                let consumer: BaseConsumer = client.create().map_err(|source| RestoreError::Kafka {
                    topic: range.topic.clone(),
                    partition,
                    context: "creating the restore consumer",
                    source,
                })?;
                restore(&consumer, store, &range, &flag, &restored, &position)
            })
            .map_err(|source| RestoreError::Thread { partition, source: Some(source) })?;
        Ok(Restoring { partition, from, until, reached, cancel, handle })
    }

    /// How far it has come.
    pub fn progress(&self) -> RestoreProgress {
        RestoreProgress { from: self.from, reached: self.reached.load(Ordering::Relaxed), until: self.until }
    }

    /// Whether it is done (successfully or not): [`Restoring::join`] then returns at once.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the restore's end.
    pub fn join(self) -> Result<Restored, RestoreError> {
        let partition = self.partition;
        self.handle.join().unwrap_or(Err(RestoreError::Thread { partition, source: None }))
    }

    /// Stops the restore, keeping its progress in the store, and closes the store.
    pub fn cancel(self) {
        self.cancel.store(true, Ordering::SeqCst);
        let partition = self.partition;
        match self.join() {
            Ok(restored) if restored.complete => tracing::info!(partition, "restore finished as the partition went"),
            Ok(restored) => tracing::info!(partition, next = restored.next, "restore interrupted; it resumes there"),
            Err(e) => tracing::warn!(partition, "restore interrupted: {e}"),
        }
    }
}

/// Applies the changelog range to the store, marking progress; stops early when cancelled.
///
/// Two threads: this one reads the changelog and checks each batch
/// ([`StateStore::prepare_restore`]) while a second writes the previous batch to RocksDB and
/// marks progress. Checking and writing cost about the same, so each hides the other.
fn restore(
    consumer: &BaseConsumer,
    store: StateStore,
    range: &RestoreRange,
    cancel: &AtomicBool,
    restored: &AtomicU64,
    reached: &AtomicI64,
) -> Result<Restored, RestoreError> {
    let RestoreRange { topic, partition, from, .. } = range;
    let partition = *partition;
    let mut assignment = TopicPartitionList::new();
    let assigning = |source| RestoreError::Kafka { topic: topic.clone(), partition, context: "assigning", source };
    assignment.add_partition_offset(topic, partition, Offset::Offset(*from)).map_err(assigning)?;
    consumer.assign(&assignment).map_err(assigning)?;
    let started = Instant::now();
    let (sender, receiver) = mpsc::sync_channel::<Prepared>(PIPELINE_DEPTH);
    let (read, written) = std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name(format!("restore-{partition}-write"))
            .spawn_scoped(scope, || write_batches(&store, partition, receiver, restored, reached))
            .map_err(|source| RestoreError::Thread { partition, source: Some(source) });
        let writer = match writer {
            Ok(writer) => writer,
            Err(e) => return (Err(e), Ok(None)),
        };
        let read = read_batches(consumer, &store, range, cancel, sender);
        let written = writer.join().unwrap_or(Err(RestoreError::Thread { partition, source: None }));
        (read, written)
    });
    // A failed write ends the read too (its channel closes): the write's error is the cause.
    let reached = written?;
    let complete = read?;
    store.finish_restore(reached).map_err(|e| RestoreError::Store(Box::new(e), partition))?;
    let position = reached.map_or(*from, |r| r.next);
    if complete {
        tracing::info!(
            partition,
            from,
            until = position,
            took_ms = started.elapsed().as_millis() as u64,
            "restored the state store from its changelog"
        );
    }
    Ok(Restored { store, next: position, complete })
}

/// Batches in flight between the reading and the writing thread of a restore.
const PIPELINE_DEPTH: usize = 2;

/// A checked batch on its way to the writing thread.
struct Prepared {
    batch: RestoreBatch,
    records: u64,
    /// The changelog position once it is written (past any transaction marker after it), and
    /// when its last record was written.
    reached: ChangelogPosition,
}

/// Reads the range in batches, checks them and hands them on; `Ok(true)` once the end offset
/// is reached, `Ok(false)` when cancelled or when the writer stopped (it says why).
fn read_batches(
    consumer: &BaseConsumer,
    store: &StateStore,
    range: &RestoreRange,
    cancel: &AtomicBool,
    writer: SyncSender<Prepared>,
) -> Result<bool, RestoreError> {
    let RestoreRange { topic, partition, from, until, written_at } = range;
    let (partition, until) = (*partition, *until);
    let mut position = *from;
    let mut written_at = *written_at;
    let mut last_progress = Instant::now();
    while position < until {
        if cancel.load(Ordering::SeqCst) {
            return Ok(false);
        }
        // Up to RESTORE_BATCH records at a time, written as one RocksDB batch.
        let mut records = Vec::new();
        let mut wait = Duration::from_millis(100);
        while records.len() < RESTORE_BATCH {
            match consumer.poll(wait) {
                Some(Ok(m)) => records.push(m),
                Some(Err(e)) => {
                    tracing::warn!(partition, "restore consumer: {e}");
                    break;
                }
                None => break,
            }
            wait = Duration::ZERO;
        }
        let mut next = position;
        let mut batch = RestoreBatch::default();
        if let (Some(first), Some(last)) = (records.first(), records.last()) {
            let (first, last) = (first.offset(), last.offset());
            batch = store.prepare_restore(records.iter().map(|m| (m.key().unwrap_or_default(), m.payload()))).map_err(
                |source| RestoreError::Record {
                    topic: topic.clone(),
                    partition,
                    offset: first,
                    last,
                    source: Box::new(source),
                },
            )?;
            next = last + 1;
            // A record without a time counts as written at the epoch's start (never too young).
            written_at = records.last().and_then(|m| m.timestamp().to_millis()).unwrap_or(0);
        }
        let count = records.len() as u64;
        drop(records);
        // The position also moves past transaction markers, which poll never returns.
        next = next.max(consumer_position(consumer, topic, partition).unwrap_or(next));
        if next > position {
            position = next;
            last_progress = Instant::now();
            let reached = ChangelogPosition { next, written_at };
            if writer.send(Prepared { batch, records: count, reached }).is_err() {
                return Ok(false);
            }
        }
        if last_progress.elapsed() > STALL_LIMIT {
            return Err(RestoreError::Stalled { topic: topic.clone(), partition, position, until });
        }
    }
    Ok(true)
}

/// Writes the batches in order, each with the position it reaches; returns the last position
/// (`None`: nothing written).
fn write_batches(
    store: &StateStore,
    partition: i32,
    batches: Receiver<Prepared>,
    restored: &AtomicU64,
    progress: &AtomicI64,
) -> Result<Option<ChangelogPosition>, RestoreError> {
    let mut last = None;
    for Prepared { batch, records, reached } in batches {
        store.apply_restore(batch, Some(reached)).map_err(|e| RestoreError::Store(Box::new(e), partition))?;
        last = Some(reached);
        restored.fetch_add(records, Ordering::Relaxed);
        progress.store(reached.next, Ordering::Relaxed);
    }
    Ok(last)
}

fn consumer_position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(next) => Some(next),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const KEPT: i64 = 86_400_000;

    fn store(next: Option<i64>, has_data: bool) -> StoreMark {
        StoreMark {
            position: next.map(|next| ChangelogPosition { next, written_at: NOW - 1_000 }),
            changelog_id: Some("id-1".into()),
            has_data,
        }
    }

    fn changelog(low: i64, high: i64) -> ChangelogState {
        ChangelogState { low, high, id: Some("id-1".into()), deletions_kept_ms: KEPT }
    }

    fn plan_of(next: Option<i64>, has_data: bool, low: i64, high: i64) -> RestorePlan {
        plan(&store(next, has_data), &changelog(low, high), NOW)
    }

    #[test]
    fn a_store_at_the_changelog_end_is_current() {
        assert_eq!(plan_of(Some(40), true, 0, 40), RestorePlan::Current);
        assert_eq!(plan_of(None, false, 0, 0), RestorePlan::Current, "new store, new changelog");
        assert_eq!(plan_of(None, false, 7, 7), RestorePlan::Current, "new store, changelog emptied by retention");
        let old = StoreMark { position: Some(ChangelogPosition { next: 40, written_at: 0 }), ..store(None, true) };
        assert_eq!(plan(&old, &changelog(0, 40), NOW), RestorePlan::Current, "nothing after it, however old");
    }

    #[test]
    fn a_store_behind_restores_only_the_tail() {
        assert_eq!(plan_of(Some(12), true, 0, 40), RestorePlan::Tail { from: 12 });
        assert_eq!(plan_of(Some(39), true, 0, 40), RestorePlan::Tail { from: 39 }, "a transaction marker alone");
        assert_eq!(plan_of(Some(12), true, 12, 40), RestorePlan::Tail { from: 12 }, "the tail starts at the low mark");
        let unknown = ChangelogState { id: None, ..changelog(0, 40) };
        assert_eq!(plan(&store(Some(12), true), &unknown, NOW), RestorePlan::Tail { from: 12 }, "no topic id known");
    }

    #[test]
    fn stores_that_cannot_be_trusted_restore_in_full() {
        let full = |reason| RestorePlan::Full { reason };
        assert_eq!(plan_of(None, false, 0, 40), full(FullRestoreReason::NoChangelogOffset), "lost store");
        assert_eq!(plan_of(None, true, 0, 0), full(FullRestoreReason::NoChangelogOffset), "predates changelogs");
        assert_eq!(plan_of(Some(50), true, 0, 40), full(FullRestoreReason::AheadOfChangelog));
        assert_eq!(plan_of(Some(5), true, 0, 0), full(FullRestoreReason::AheadOfChangelog), "recreated topic");
        assert_eq!(plan_of(Some(5), true, 10, 40), full(FullRestoreReason::TailDeleted));
    }

    #[test]
    fn a_store_of_another_changelog_topic_restores_in_full_wherever_its_offset_falls() {
        let other = ChangelogState { id: Some("id-2".into()), ..changelog(0, 40) };
        for next in [12, 40] {
            let planned = plan(&store(Some(next), true), &other, NOW);
            assert_eq!(planned, RestorePlan::Full { reason: FullRestoreReason::OtherHistory }, "at {next}");
        }
    }

    #[test]
    fn a_tail_older_than_the_changelog_keeps_deletions_restores_in_full() {
        let at =
            |written_at| StoreMark { position: Some(ChangelogPosition { next: 12, written_at }), ..store(None, true) };
        let young = NOW - KEPT + CLOCK_ALLOWANCE_MS + 1;
        assert_eq!(plan(&at(young), &changelog(0, 40), NOW), RestorePlan::Tail { from: 12 });
        let full = RestorePlan::Full { reason: FullRestoreReason::DeletionsMayBeCompacted };
        assert_eq!(plan(&at(young - 1), &changelog(0, 40), NOW), full, "within a minute of the horizon");
        assert_eq!(plan(&at(0), &changelog(0, 40), NOW), full, "no time recorded");
        let tiny = ChangelogState { deletions_kept_ms: 100, ..changelog(0, 40) };
        assert_eq!(plan(&at(NOW), &tiny, NOW), full, "a horizon shorter than the clocks' allowance");
    }
}
