//! One partition's processing: records in, decisions made against its state store, records out.
//! No Kafka here: the engine hands records in and sends what comes back.

use std::collections::BTreeMap;

use crmflow_codec::{dead_letter_headers, decode_input, encode_output, DecodeError, ErrorKind, Source};
use crmflow_domain::{decide, explain, Explanation, InputEvent, InputStream, Tally};
use crmflow_store::{ChangelogPosition, ChangelogRecord, InputPosition, StateStore, StoreError};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::merge::Merger;
use crate::report::Samples;
use crate::resume::ResumePlan;

/// A consumed input record, copied out of the client's buffer. It is decoded when processed,
/// on its partition's thread: the merge needs only its timestamp.
#[derive(Debug)]
pub struct InputRecord {
    /// The input stream it belongs to.
    pub stream: InputStream,
    /// Its topic.
    pub topic: String,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (epoch ms), which orders the merge and stamps the outputs.
    pub timestamp: i64,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
}

impl InputRecord {
    /// A record of `stream` as consumed.
    pub fn new(
        stream: InputStream,
        topic: &str,
        offset: i64,
        timestamp: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Self {
        InputRecord {
            stream,
            topic: topic.to_owned(),
            offset,
            timestamp,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    /// The event, or why the record is a dead letter.
    pub fn decode(&self, config: &Config) -> Result<InputEvent, DecodeError> {
        match &self.payload {
            Some(bytes) => decode_input(self.stream, self.key.as_deref(), bytes, config.input_encoding(self.stream)),
            None => Err(DecodeError::new(ErrorKind::Undecodable, "record has no value (a tombstone)")),
        }
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    /// The topic.
    pub topic: String,
    /// The key (company id, or the original key for dead letters).
    pub key: Option<Vec<u8>>,
    /// The value.
    pub payload: Vec<u8>,
    /// Headers (dead letters only).
    pub headers: Vec<(&'static str, String)>,
    /// The timestamp: the input's, so replays reproduce it (`None`: the producer's clock, only
    /// for the dead letter of a record whose timestamp the broker refused).
    pub timestamp: Option<i64>,
    /// The input record it comes from.
    pub origin: Origin,
}

/// Where an output comes from: an input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The input topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

impl OutputRecord {
    /// Whether this is a dead letter (only dead letters carry headers).
    pub fn is_dead_letter(&self) -> bool {
        !self.headers.is_empty()
    }

    /// The dead letter without the offending value (too large to publish), saying `why`.
    pub fn without_payload(&self, why: &str) -> OutputRecord {
        let mut headers = self.headers.clone();
        headers.push((HEADER_VALUE_DROPPED, format!("{} bytes: {why}", self.payload.len())));
        OutputRecord { payload: Vec::new(), headers, ..self.clone() }
    }
}

/// Why an input record is set aside: the broker refused its outputs for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The last refusal's reason.
    pub code: RDKafkaErrorCode,
    /// Whether the dead letter that replaced its outputs was refused too.
    pub again: bool,
}

/// Whether the broker refused a record for its size.
fn too_large(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
}

/// Header of a dead letter published without its value, with the value's size and why.
pub const HEADER_VALUE_DROPPED: &str = "crmflow.value.dropped";

/// What processing produced, for the metrics: the open round's, or the committed totals.
#[derive(Debug, Default)]
pub struct Progress {
    /// Decisions' tallies.
    pub tally: Tally,
    /// Dead letters per kind.
    pub dead_letters: BTreeMap<ErrorKind, u64>,
    /// Input records processed.
    pub records: u64,
    /// Of those, records replayed only to rebuild lost state (their outputs were published before).
    pub replayed: u64,
    /// Of those, records processed after a later-stamped record of their partition: they came
    /// more than `max_wait_ms` late, and a replay may decide them differently.
    pub late: u64,
    /// Recent outputs in words, for operators watching.
    pub samples: Samples,
}

impl Progress {
    /// Moves the counts of a committed round into these totals, so the metrics count what was
    /// published, never a round that was aborted and redone. Samples stay with the round.
    pub fn absorb(&mut self, round: &mut Progress) {
        self.tally.add(&std::mem::take(&mut round.tally));
        for (kind, n) in std::mem::take(&mut round.dead_letters) {
            *self.dead_letters.entry(kind).or_default() += n;
        }
        self.records += std::mem::take(&mut round.records);
        self.replayed += std::mem::take(&mut round.replayed);
        self.late += std::mem::take(&mut round.late);
    }

    /// Adds the counts and samples of part of the open round (one partition's).
    pub fn add(&mut self, mut part: Progress) {
        self.absorb(&mut part);
        self.samples.extend(part.samples.take());
    }

    /// Forgets the counts of a round that is not committed (aborted, abandoned, rewound).
    pub fn discard_counts(&mut self) {
        let samples = std::mem::take(&mut self.samples);
        *self = Progress { samples, ..Progress::default() };
    }
}

/// Why processing a partition failed (the store, or an output that cannot be encoded).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The state store failed.
    #[error("state store of partition {partition}: {source}")]
    Store {
        /// The partition.
        partition: i32,
        /// The store error.
        source: crmflow_store::StoreError,
    },
    /// An output could not be encoded.
    #[error("encoding an output failed: {0}")]
    Encode(#[from] crmflow_codec::EncodeError),
}

/// What became of a consumed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Buffered for processing.
    Buffered,
    /// Dropped: the state store already reflects it.
    AlreadyApplied,
}

/// The merge buffer, state store and positions of one input partition.
pub struct PartitionTask {
    partition: i32,
    store: StateStore,
    merger: Merger<InputRecord>,
    plan: ResumePlan,
    // Next offset per input topic that the store's last RocksDB batch reflects.
    stored: BTreeMap<String, i64>,
    // Next offset per input topic after the records processed since that batch.
    processed: BTreeMap<String, i64>,
    // Next offset per input topic after the last record consumed (buffered or not).
    consumed: BTreeMap<String, i64>,
    // The timestamp of the last record admitted, for records that come without one.
    last_timestamp: i64,
    // The latest timestamp processed, to tell late records.
    processed_until: i64,
    // Input records whose outputs the broker refused for good, with why: dead letters now.
    rejected: BTreeMap<(String, i64), Rejection>,
    // The store's offsets where the group's are behind them (at_least_once: a crash between the
    // RocksDB batch and the offset commit). Records below them are already applied and never
    // processed again, so without these the group's offsets would stay behind for good.
    ahead_of_group: BTreeMap<String, i64>,
}

impl PartitionTask {
    /// Wraps an opened store of a partition whose inputs are `topics`; `group_offsets` are the
    /// consumer group's committed offsets of them. See [`crate::resume`] for what follows.
    pub fn open(
        partition: i32,
        store: StateStore,
        max_wait_ms: i64,
        topics: &[&str],
        group_offsets: &BTreeMap<String, i64>,
    ) -> Result<Self, ProcessError> {
        let stored: BTreeMap<String, i64> = store
            .positions()
            .map_err(|source| ProcessError::Store { partition, source })?
            .into_iter()
            .filter(|p| p.partition == partition)
            .map(|p| (p.topic, p.next_offset))
            .collect();
        let plan = ResumePlan::new(topics, &stored, group_offsets);
        let ahead_of_group = stored
            .iter()
            .filter(|(topic, next)| group_offsets.get(*topic).is_none_or(|group| group < *next))
            .map(|(topic, next)| (topic.clone(), *next))
            .collect();
        Ok(PartitionTask {
            ahead_of_group,
            partition,
            store,
            merger: Merger::new(max_wait_ms),
            consumed: stored.clone(),
            stored,
            processed: BTreeMap::new(),
            plan,
            last_timestamp: 0,
            processed_until: i64::MIN,
            rejected: BTreeMap::new(),
        })
    }

    /// Where each input resumes: the offsets to assign the consumer with.
    pub fn plan(&self) -> &ResumePlan {
        &self.plan
    }

    /// Buffers a consumed record, unless the store already reflects it.
    pub fn admit(&mut self, stream: InputStream, record: InputRecord, now: i64) -> Admission {
        if self.stored.get(&record.topic).is_some_and(|next| record.offset < *next) {
            return Admission::AlreadyApplied;
        }
        self.consumed.insert(record.topic.clone(), record.offset + 1);
        self.last_timestamp = record.timestamp;
        self.merger.push(stream, record.timestamp, now, record);
        Admission::Buffered
    }

    /// The timestamp of the last record admitted (0 before the first).
    pub fn last_timestamp(&self) -> i64 {
        self.last_timestamp
    }

    /// The offset after the last record of `topic` consumed, or where consumption was told to
    /// start (`None`: from the start of the topic, nothing consumed yet).
    pub fn consumed_until(&self, topic: &str) -> Option<i64> {
        self.consumed.get(topic).copied()
    }

    /// How many consumed records wait in the merge.
    pub fn buffered(&self) -> usize {
        self.merger.len()
    }

    /// When the next buffered record may go at the latest.
    pub fn next_deadline(&self) -> Option<i64> {
        self.merger.next_deadline()
    }

    /// Processes every record the merge releases at `now`; appends outputs to `out`.
    /// `caught_up` tells whether the consumer has read all the broker holds of a stream.
    pub fn process_ready(
        &mut self,
        now: i64,
        mut caught_up: impl FnMut(InputStream) -> bool,
        config: &Config,
        out: &mut Vec<OutputRecord>,
        progress: &mut Progress,
    ) -> Result<(), ProcessError> {
        while let Some((_, record)) = self.merger.pop_ready(now, &mut caught_up) {
            self.process(record, config, out, progress)?;
        }
        Ok(())
    }

    fn process(
        &mut self,
        record: InputRecord,
        config: &Config,
        out: &mut Vec<OutputRecord>,
        progress: &mut Progress,
    ) -> Result<(), ProcessError> {
        progress.records += 1;
        self.processed.insert(record.topic.clone(), record.offset + 1);
        if record.timestamp < self.processed_until {
            progress.late += 1;
            tracing::debug!(
                partition = self.partition,
                topic = %record.topic,
                offset = record.offset,
                behind_ms = self.processed_until - record.timestamp,
                "late record: processed after a later-stamped one"
            );
        }
        self.processed_until = self.processed_until.max(record.timestamp);
        let replaying = !self.plan.publishes(&record.topic, record.offset);
        if replaying {
            progress.replayed += 1;
        }
        let rejection = self.rejected.get(&(record.topic.clone(), record.offset)).copied();
        let event = match rejection {
            // Its outputs cannot be published: set it aside as a dead letter, without its state
            // changes, so state never holds what the outputs do not say.
            Some(Rejection { code, .. }) => Err(DecodeError::new(
                ErrorKind::RejectedByBroker,
                format!("the broker refused this record's outputs for good: {code}"),
            )),
            None => record.decode(config),
        };
        let event = match event {
            Ok(event) => event,
            Err(_) if replaying => return Ok(()),
            Err(error) => {
                out.push(self.dead_letter(record, &error, rejection, config, progress));
                return Ok(());
            }
        };
        let partition = self.partition;
        let store_error = |source| ProcessError::Store { partition, source };
        let (decision, explanation) = if config.explain_capacity > 0 {
            let (decision, explanation) = explain(&self.store, &event).map_err(store_error)?;
            (decision, Some(explanation))
        } else {
            (decide(&self.store, &event).map_err(store_error)?, None)
        };
        match self.store.stage(&decision.changes) {
            Ok(()) => {}
            // The changelog could never take the state it asks for: set the event aside (during a
            // replay as when it was first processed), as an admin can act on it.
            Err(StoreError::TooLarge { family, bytes, limit, .. }) => {
                if replaying {
                    return Ok(());
                }
                let error = DecodeError::state_too_large(family, bytes, limit);
                out.push(self.dead_letter(record, &error, None, config, progress));
                return Ok(());
            }
            Err(source) => return Err(store_error(source)),
        }
        // A resend decides nothing: the record's last decision stays the one to explain.
        if let Some(Explanation::CrmRecordChanged(trace)) = &explanation {
            if !trace.duplicate {
                self.store.stage_explanation(trace, config.explain_capacity).map_err(store_error)?;
            }
        }
        if replaying {
            return Ok(());
        }
        progress.tally.add(&decision.tally);
        for output in &decision.outputs {
            progress.samples.note(output);
            out.push(OutputRecord {
                topic: config.topics.output_topic(output).to_owned(),
                key: Some(output.company_id().as_bytes().to_vec()),
                payload: encode_output(output, config.output_encoding(output))?,
                headers: Vec::new(),
                timestamp: Some(record.timestamp),
                origin: Origin { topic: record.topic.clone(), partition, offset: record.offset },
            });
        }
        Ok(())
    }

    /// The dead letter of `record`, which cannot be processed for `error`; counted in `progress`.
    /// `rejection`: the broker's refusal of its outputs (or of this dead letter) that set it aside.
    fn dead_letter(
        &self,
        record: InputRecord,
        error: &DecodeError,
        rejection: Option<Rejection>,
        config: &Config,
        progress: &mut Progress,
    ) -> OutputRecord {
        *progress.dead_letters.entry(error.kind).or_default() += 1;
        let source = Source::Record { topic: record.topic.clone(), partition: self.partition, offset: record.offset };
        tracing::warn!(partition = self.partition, kind = %error.kind, "dead letter: {}", error.message);
        let refused_timestamp = rejection.is_some_and(|r| r.code == RDKafkaErrorCode::InvalidTimestamp);
        let letter = OutputRecord {
            topic: config.topics.dead_letters.clone(),
            key: record.key,
            payload: record.payload.unwrap_or_default(),
            headers: dead_letter_headers(error, &source),
            timestamp: (!refused_timestamp).then_some(record.timestamp),
            origin: Origin { topic: record.topic, partition: self.partition, offset: record.offset },
        };
        // The dead letter itself was refused for its size (the dead-letter topic's
        // `max.message.bytes` is below the record's): sent again, it would be refused
        // for ever. It goes without the value; the source headers say where that is.
        match rejection {
            Some(r) if r.again && too_large(r.code) => {
                letter.without_payload("refused as too large by the broker (the topic's max.message.bytes)")
            }
            _ => letter,
        }
    }

    /// The consumer offsets to commit for the work processed since the last RocksDB batch;
    /// never below the offsets the group already has (see [`ResumePlan::consumer_offset`]).
    /// The store's offsets ahead of the group's count too, until committed once.
    pub fn consumer_offsets(&self) -> Vec<InputPosition> {
        let mut next: BTreeMap<&str, i64> = self.ahead_of_group.iter().map(|(t, o)| (t.as_str(), *o)).collect();
        for (topic, offset) in &self.processed {
            let entry = next.entry(topic.as_str()).or_insert(*offset);
            *entry = (*entry).max(*offset);
        }
        next.into_iter()
            .map(|(topic, next)| InputPosition {
                topic: topic.to_owned(),
                partition: self.partition,
                next_offset: self.plan.consumer_offset(topic, next),
            })
            .collect()
    }

    /// Whether anything was processed since the last RocksDB batch, or the group's offsets are
    /// behind the store's.
    pub fn has_processed(&self) -> bool {
        !self.processed.is_empty() || !self.ahead_of_group.is_empty()
    }

    /// The next offset per input topic that the last RocksDB batch (and so the last commit)
    /// reflects: the group's committed offsets, as far as this task knows.
    pub fn committed_offsets(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        self.stored.iter().map(|(topic, next)| (topic.as_str(), *next))
    }

    /// The partition's store (for queries over its committed state).
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Gives back the store, without what was staged since the last RocksDB batch, and the
    /// records set aside as refused by the broker.
    pub fn into_store(mut self) -> (StateStore, BTreeMap<(String, i64), Rejection>) {
        self.store.discard_staged();
        (self.store, self.rejected)
    }

    /// Sets an input record aside: the broker refused its outputs for good (`code`), so when it
    /// comes again it becomes a dead letter saying so.
    pub fn reject(&mut self, topic: String, offset: i64, code: RDKafkaErrorCode) {
        self.rejected
            .entry((topic, offset))
            .and_modify(|r| *r = Rejection { code, again: true })
            .or_insert(Rejection { code, again: false });
    }

    /// Takes over the records a previous task of this partition set aside ([`PartitionTask::into_store`]).
    pub fn carry_rejections(&mut self, rejected: BTreeMap<(String, i64), Rejection>) {
        self.rejected.extend(rejected);
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The changelog records of the work processed since the last RocksDB batch: its state
    /// writes and the input positions it reaches. Published with the outputs.
    pub fn changelog_records(&self) -> Result<Vec<ChangelogRecord>, ProcessError> {
        if self.processed.is_empty() {
            return Ok(Vec::new());
        }
        self.store
            .changelog_records(&self.processed_positions())
            .map_err(|source| ProcessError::Store { partition: self.partition, source })
    }

    /// Writes the staged state with the processed positions, and the changelog position they
    /// were published up to (`None`: unchanged), as one RocksDB batch, once the outputs are
    /// durable.
    pub fn write_batch(&mut self, changelog: Option<ChangelogPosition>) -> Result<(), ProcessError> {
        // Called once the consumer offsets of this round are committed or about to be (they
        // were read before): the group has caught up with the store.
        self.ahead_of_group.clear();
        if self.processed.is_empty() && changelog.is_none() {
            return Ok(());
        }
        let positions = self.processed_positions();
        self.store
            .commit(&positions, changelog)
            .map_err(|source| ProcessError::Store { partition: self.partition, source })?;
        self.stored.extend(std::mem::take(&mut self.processed));
        // Records set aside and now committed never come again.
        let stored = &self.stored;
        self.rejected.retain(|(topic, offset), _| stored.get(topic).is_none_or(|next| offset >= next));
        Ok(())
    }

    fn processed_positions(&self) -> Vec<InputPosition> {
        self.processed
            .iter()
            .map(|(topic, next)| InputPosition { topic: topic.clone(), partition: self.partition, next_offset: *next })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmflow_store::StoreOptions;

    const TOPICS: [&str; 3] = ["integration.settings", "team.assignments", "crm.changes"];

    fn record(offset: i64) -> InputRecord {
        // Not JSON: a dead letter when processed.
        InputRecord::new(InputStream::CrmChanges, "crm.changes", offset, offset, None, Some(b"not json"))
    }

    fn task(dir: &std::path::Path, stored: Option<i64>, group: &[(&str, i64)]) -> PartitionTask {
        let mut store = StateStore::open(dir, StoreOptions::default()).unwrap();
        if let Some(next_offset) = stored {
            store.commit(&[InputPosition { topic: "crm.changes".into(), partition: 0, next_offset }], None).unwrap();
        }
        let group = group.iter().map(|(t, o)| (t.to_string(), *o)).collect();
        PartitionTask::open(0, store, 0, &TOPICS, &group).unwrap()
    }

    fn process_all(task: &mut PartitionTask) -> (Vec<OutputRecord>, Progress) {
        let (mut out, mut progress) = (Vec::new(), Progress::default());
        task.process_ready(0, |_| true, &Config::default(), &mut out, &mut progress).unwrap();
        (out, progress)
    }

    #[test]
    fn records_the_store_already_reflects_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task(dir.path(), Some(10), &[]);
        assert_eq!(task.admit(InputStream::CrmChanges, record(9), 0), Admission::AlreadyApplied);
        assert_eq!(task.admit(InputStream::CrmChanges, record(10), 0), Admission::Buffered);
        assert_eq!(task.admit(InputStream::CrmChanges, record(12), 0), Admission::Buffered, "gaps are normal");
        assert_eq!(task.consumed_until("crm.changes"), Some(13));
    }

    #[test]
    fn a_store_behind_the_group_replays_its_gap_without_publishing() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task(dir.path(), Some(10), &[("crm.changes", 12)]);
        let start = task.plan().inputs().find(|(t, _)| *t == "crm.changes").unwrap().1.start;
        assert_eq!(start, Some(10), "resumes at the store, not at the group");
        for offset in 10..13 {
            task.admit(InputStream::CrmChanges, record(offset), 0);
        }
        let (out, progress) = process_all(&mut task);
        assert_eq!(progress.replayed, 2);
        assert_eq!(out.len(), 1, "only the record at the group's offset is published: {out:?}");
        assert_eq!(out[0].headers.iter().find(|(k, _)| k.ends_with("offset")).unwrap().1, "12");
    }

    #[test]
    fn a_rebuild_interrupted_midway_keeps_the_groups_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task(dir.path(), None, &[("crm.changes", 5)]);
        for offset in 0..3 {
            task.admit(InputStream::CrmChanges, record(offset), 0);
        }
        let (out, _) = process_all(&mut task);
        assert!(out.is_empty());
        let offsets: Vec<i64> = task.consumer_offsets().iter().map(|p| p.next_offset).collect();
        assert_eq!(
            offsets,
            [5],
            "the group's own offset again: committing 3 would publish 3 and 4 again after a crash"
        );
        task.write_batch(None).unwrap();
        assert_eq!(task.stored.get("crm.changes"), Some(&3));
    }

    #[test]
    fn a_store_ahead_of_the_group_brings_the_group_up_to_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task(dir.path(), Some(10), &[("crm.changes", 7)]);
        assert_eq!(task.admit(InputStream::CrmChanges, record(8), 0), Admission::AlreadyApplied);
        assert!(task.has_processed(), "the group must catch up, though nothing is processed");
        assert_eq!(task.consumer_offsets()[0].next_offset, 10);
        task.write_batch(None).unwrap();
        assert!(!task.has_processed());
        assert!(task.consumer_offsets().is_empty());
    }

    #[test]
    fn records_processed_after_later_stamped_ones_are_counted_late() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task(dir.path(), Some(0), &[]);
        task.admit(InputStream::CrmChanges, InputRecord { timestamp: 50, ..record(0) }, 0);
        let (_, progress) = process_all(&mut task);
        assert_eq!(progress.late, 0);
        task.admit(InputStream::CrmChanges, InputRecord { timestamp: 40, ..record(1) }, 0);
        let (_, progress) = process_all(&mut task);
        assert_eq!(progress.late, 1, "stamped 40 after 50 was processed");
    }

    #[test]
    fn dead_letters_are_produced_with_their_source_and_advance_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task(dir.path(), Some(0), &[]);
        task.admit(InputStream::CrmChanges, record(0), 0);
        let (out, _) = process_all(&mut task);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "crmflow.dlq");
        assert!(out[0].headers.contains(&(crmflow_codec::dead_letter::HEADER_SOURCE_OFFSET, "0".to_string())));
        assert_eq!(task.consumer_offsets()[0].next_offset, 1);
    }
}
