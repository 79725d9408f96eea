//! The producer's side: delivery tracking, and a send that waits while the local queue is full.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// Counts failed deliveries so a commit never covers an output the broker did not take, and
/// notes how far each changelog partition was written, for the stores' RocksDB batches.
#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    changelog_topic: String,
    // Per changelog partition, the offset after the last record delivered since the last take.
    changelog_next: Mutex<BTreeMap<i32, i64>>,
    // Records the broker refused for good since the last take: their opaque and why.
    rejected: Mutex<Vec<(usize, RDKafkaErrorCode)>>,
}

impl DeliveryTracker {
    /// A tracker that notes the offsets written to `changelog_topic`.
    pub fn new(changelog_topic: String) -> Self {
        DeliveryTracker { changelog_topic, ..DeliveryTracker::default() }
    }

    /// The records (by the opaque they were sent with) the broker refused for good since the
    /// last call, with the reason: sending them again can never succeed.
    pub fn take_rejected(&self) -> Vec<(usize, RDKafkaErrorCode)> {
        std::mem::take(&mut *self.rejected.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the broker refused records for good since the last [`DeliveryTracker::take_rejected`].
    pub fn has_rejected(&self) -> bool {
        !self.rejected.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// Per changelog partition, the offset after the last record delivered since the last call.
    pub fn take_changelog_next(&self) -> BTreeMap<i32, i64> {
        std::mem::take(&mut *self.changelog_next.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Failed deliveries since the last call, with the last error.
    pub fn take_failures(&self) -> (u64, Option<String>) {
        let last = self.last_error.lock().map(|mut e| e.take()).unwrap_or(None);
        (self.failed.swap(0, Ordering::SeqCst), last)
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    /// Where the record came from, for [`DeliveryTracker::take_rejected`] (see the engine).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: usize) {
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let mut next = self.changelog_next.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = next.entry(m.partition()).or_insert(0);
                *entry = (*entry).max(m.offset() + 1);
            }
            Ok(_) => {}
            Err((error, _)) => {
                if let Some(code) = error.rdkafka_error_code().filter(|code| refused_for_good(*code)) {
                    self.rejected.lock().unwrap_or_else(PoisonError::into_inner).push((origin, code));
                }
                self.failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(error.to_string());
                }
            }
        }
    }
}

/// Whether the broker refuses a record for what it is, so that no retry can succeed.
pub fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidTimestamp
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessage
    )
}

/// Hands a record to the producer, waiting while its local queue is full (back-pressure).
pub fn send_waiting<C, K, P, D>(producer: &ThreadedProducer<C>, mut record: BaseRecord<'_, K, P, D>) -> KafkaResult<()>
where
    C: ProducerContext<DeliveryOpaque = D> + 'static,
    D: rdkafka::util::IntoOpaque,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                // Let deliveries drain, then retry the same record.
                std::thread::sleep(std::time::Duration::from_millis(5));
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
