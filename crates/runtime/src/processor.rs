//! One partition's processing: records in, decisions made against its state store, records out.
//! No Kafka here: the service hands records in and sends what comes back.

use std::collections::{BTreeMap, BTreeSet};

use crmflow_codec::{dead_letter_headers, decode_input, encode_output, DecodeError, ErrorKind, Source};
use crmflow_domain::{decide, InputEvent, InputStream, Tally};
use crmflow_store::{InputPosition, StateStore};

use crate::config::Config;
use crate::merge::Merger;
use crate::report::Samples;

/// A consumed input record, decoded on arrival.
#[derive(Debug)]
pub struct InputRecord {
    /// Its topic.
    pub topic: String,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (epoch ms), which orders the merge and stamps the outputs.
    pub timestamp: i64,
    /// The key, kept for the dead-letter record.
    pub key: Option<Vec<u8>>,
    /// The value, kept for the dead-letter record.
    pub payload: Vec<u8>,
    /// The event, or why it is a dead letter.
    pub event: Result<InputEvent, DecodeError>,
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
    /// The timestamp: the input's, so replays reproduce it.
    pub timestamp: i64,
}

/// What processing produced, for the metrics.
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
    /// Recent outputs in words, for operators watching.
    pub samples: Samples,
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
    /// Dropped: the store has not seen the records before it; consume again from this offset.
    RewindTo(i64),
}

/// The merge buffer, state store and positions of one input partition.
pub struct PartitionTask {
    partition: i32,
    store: StateStore,
    merger: Merger<InputRecord>,
    // Next offset per input topic that the store already reflects (records below are skipped).
    committed: BTreeMap<String, i64>,
    // Next offset per input topic after the records processed since the last commit.
    processed: BTreeMap<String, i64>,
    // Topics whose first consumed record was compared with the store's position.
    checked: BTreeSet<String>,
    // Per topic the store knew nothing of: the group's committed offset. Records below it were
    // published before, so replaying them rebuilds state without publishing again.
    replay_until: BTreeMap<String, i64>,
}

impl PartitionTask {
    /// Wraps an opened store of a partition; `group_offsets` are the consumer group's committed
    /// offsets of the partition's input topics.
    pub fn new(
        partition: i32,
        store: StateStore,
        max_wait_ms: i64,
        group_offsets: &BTreeMap<String, i64>,
    ) -> Result<Self, ProcessError> {
        let committed: BTreeMap<String, i64> = store
            .positions()
            .map_err(|source| ProcessError::Store { partition, source })?
            .into_iter()
            .filter(|p| p.partition == partition)
            .map(|p| (p.topic, p.next_offset))
            .collect();
        let replay_until: BTreeMap<String, i64> = group_offsets
            .iter()
            .filter(|(topic, offset)| **offset > 0 && !committed.contains_key(*topic))
            .map(|(topic, offset)| (topic.clone(), *offset))
            .collect();
        let checked = replay_until.keys().cloned().collect();
        Ok(PartitionTask {
            partition,
            store,
            merger: Merger::new(max_wait_ms),
            committed,
            processed: BTreeMap::new(),
            checked,
            replay_until,
        })
    }

    /// Buffers a record, unless the store already reflects it (a redelivery after a crash) or
    /// the store is behind it (the process died after Kafka committed, before the store did).
    pub fn push(&mut self, stream: InputStream, record: InputRecord, now: i64) -> Admission {
        if let Some(next) = self.committed.get(&record.topic).copied() {
            if record.offset < next {
                return Admission::AlreadyApplied;
            }
            // Only the first record of a topic is checked: later offsets may jump over
            // transaction markers or compacted records, and one rewind is enough.
            if self.checked.insert(record.topic.clone()) && record.offset > next {
                return Admission::RewindTo(next);
            }
        }
        self.merger.push(stream, record.timestamp, now, record);
        Admission::Buffered
    }

    /// Input topics the store knows nothing of although the consumer group committed offsets
    /// for them (the state directory was lost, or the partition moved here): consume them again
    /// from the start, and their records below the group's offsets rebuild state without
    /// publishing again.
    pub fn rebuild_topics(&self) -> impl Iterator<Item = &str> {
        self.replay_until.keys().map(String::as_str)
    }

    /// When the next buffered record may go at the latest.
    pub fn next_deadline(&self) -> Option<i64> {
        self.merger.next_deadline()
    }

    /// Processes every record the merge releases at `now`; appends outputs to `out`.
    pub fn process_ready(
        &mut self,
        now: i64,
        config: &Config,
        out: &mut Vec<OutputRecord>,
        progress: &mut Progress,
    ) -> Result<(), ProcessError> {
        while let Some((_, record)) = self.merger.pop_ready(now) {
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
        let replaying = self.replay_until.get(&record.topic).is_some_and(|until| record.offset < *until);
        if replaying {
            progress.replayed += 1;
        }
        let event = match record.event {
            Ok(event) => event,
            Err(_) if replaying => return Ok(()),
            Err(error) => {
                *progress.dead_letters.entry(error.kind).or_default() += 1;
                let source = Source::Record { topic: record.topic, partition: self.partition, offset: record.offset };
                tracing::warn!(partition = self.partition, kind = %error.kind, "dead letter: {}", error.message);
                out.push(OutputRecord {
                    topic: config.topics.dead_letters.clone(),
                    key: record.key,
                    payload: record.payload,
                    headers: dead_letter_headers(&error, &source),
                    timestamp: record.timestamp,
                });
                return Ok(());
            }
        };
        let partition = self.partition;
        let decision = decide(&self.store, &event).map_err(|source| ProcessError::Store { partition, source })?;
        self.store.stage(&decision.changes).map_err(|source| ProcessError::Store { partition, source })?;
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
                timestamp: record.timestamp,
            });
        }
        Ok(())
    }

    /// The positions to commit for the work processed since the last commit.
    pub fn pending_positions(&self) -> Vec<InputPosition> {
        self.processed
            .iter()
            .map(|(topic, next)| InputPosition { topic: topic.clone(), partition: self.partition, next_offset: *next })
            .collect()
    }

    /// Persists staged state with the processed positions, after the outputs are durable.
    pub fn commit(&mut self) -> Result<(), ProcessError> {
        if self.processed.is_empty() {
            return Ok(());
        }
        let positions = self.pending_positions();
        self.store.commit(&positions).map_err(|source| ProcessError::Store { partition: self.partition, source })?;
        self.committed.extend(std::mem::take(&mut self.processed));
        Ok(())
    }
}

/// Decodes a consumed record of an input stream, turning failures into dead-letter reasons.
pub fn decode_record(
    stream: InputStream,
    topic: &str,
    offset: i64,
    timestamp: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    config: &Config,
) -> InputRecord {
    let event = match payload {
        Some(bytes) => decode_input(stream, key, bytes, config.input_encoding(stream)),
        None => Err(DecodeError::new(ErrorKind::Undecodable, "record has no value (a tombstone)")),
    };
    InputRecord {
        topic: topic.to_owned(),
        offset,
        timestamp,
        key: key.map(<[u8]>::to_vec),
        payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmflow_store::StoreOptions;

    fn record(offset: i64) -> InputRecord {
        InputRecord {
            topic: "crm.changes".into(),
            offset,
            timestamp: offset,
            key: None,
            payload: Vec::new(),
            event: Err(DecodeError::new(ErrorKind::Undecodable, "test")),
        }
    }

    fn task_at(dir: &std::path::Path, next_offset: i64) -> PartitionTask {
        let mut store = StateStore::open(dir, StoreOptions::default()).unwrap();
        store.commit(&[InputPosition { topic: "crm.changes".into(), partition: 0, next_offset }]).unwrap();
        PartitionTask::new(0, store, 0, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn records_the_store_already_reflects_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task_at(dir.path(), 10);
        assert_eq!(task.push(InputStream::CrmChanges, record(9), 0), Admission::AlreadyApplied);
        assert_eq!(task.push(InputStream::CrmChanges, record(10), 0), Admission::Buffered);
        assert_eq!(
            task.push(InputStream::CrmChanges, record(12), 0),
            Admission::Buffered,
            "gaps after the first are normal"
        );
    }

    #[test]
    fn a_store_behind_the_consumer_rewinds_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task_at(dir.path(), 10);
        assert_eq!(task.push(InputStream::CrmChanges, record(15), 0), Admission::RewindTo(10));
        assert_eq!(task.push(InputStream::CrmChanges, record(11), 0), Admission::Buffered, "after the rewind, accept");
    }

    #[test]
    fn a_store_that_lost_its_state_rebuilds_without_publishing_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), StoreOptions::default()).unwrap();
        let group = BTreeMap::from([("crm.changes".to_string(), 2)]);
        let mut task = PartitionTask::new(0, store, 0, &group).unwrap();
        assert_eq!(task.rebuild_topics().collect::<Vec<_>>(), vec!["crm.changes"]);
        for offset in 0..3 {
            assert_eq!(task.push(InputStream::CrmChanges, record(offset), 0), Admission::Buffered);
        }
        let (mut out, mut progress) = (Vec::new(), Progress::default());
        task.process_ready(0, &Config::default(), &mut out, &mut progress).unwrap();
        assert_eq!(progress.replayed, 2);
        assert_eq!(out.len(), 1, "only the record at the group's offset is published: {out:?}");
        assert_eq!(out[0].headers.iter().find(|(k, _)| k.ends_with("offset")).unwrap().1, "2");
    }

    #[test]
    fn dead_letters_are_produced_with_their_source_and_advance_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = task_at(dir.path(), 0);
        task.push(InputStream::CrmChanges, record(0), 0);
        let (mut out, mut progress) = (Vec::new(), Progress::default());
        task.process_ready(0, &Config::default(), &mut out, &mut progress).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "crmflow.dlq");
        assert!(out[0].headers.contains(&(crmflow_codec::dead_letter::HEADER_SOURCE_OFFSET, "0".to_string())));
        assert_eq!(task.pending_positions()[0].next_offset, 1);
    }
}
