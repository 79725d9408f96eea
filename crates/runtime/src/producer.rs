//! The producer's side: delivery tracking, and a send that waits while the local queue is full.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
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

    /// Notes a record (by its opaque) that can never be sent, though no delivery report says so:
    /// the producer refused it before sending (larger than its `message.max.bytes`).
    pub fn reject(&self, origin: usize, code: RDKafkaErrorCode) {
        self.rejected.lock().unwrap_or_else(PoisonError::into_inner).push((origin, code));
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

/// Waits until every record handed to `producer` is delivered or failed, and its delivery
/// callback has run.
///
/// rust-rdkafka's own `flush` (which `commit_transaction` calls first) polls the producer's
/// queue in steps of 100 ms while records are outstanding. A `ThreadedProducer`'s own thread
/// serves that queue, so each step runs its full 100 ms, and every commit would take up to
/// 100 ms longer than the broker needs. Waiting here first leaves it nothing to wait for.
pub fn flush_delivered<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
) -> KafkaResult<()> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(DELIVERY_POLL);
    }
    Ok(())
}

/// How often [`flush_delivered`] looks at the count of outstanding records.
const DELIVERY_POLL: Duration = Duration::from_micros(500);

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
                std::thread::sleep(Duration::from_millis(5));
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::ClientConfig;

    use super::*;

    fn producer(brokers: &str, topic: &str) -> ThreadedProducer<DeliveryTracker> {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "50")
            .set("message.timeout.ms", "30000")
            .create_with_context(DeliveryTracker::new(topic.to_owned()))
            .expect("a producer")
    }

    #[test]
    fn flush_delivered_returns_once_every_delivery_callback_ran() {
        let mock = MockCluster::new(1).expect("a mock cluster");
        mock.create_topic("out", 1, 1).expect("a topic");
        let producer = producer(&mock.bootstrap_servers(), "out");
        for i in 0..500usize {
            let payload = i.to_string();
            send_waiting(
                &producer,
                BaseRecord::<[u8], _, usize>::with_opaque_to("out", i).partition(0).payload(&payload),
            )
            .expect("queued");
        }
        flush_delivered(&producer, Duration::from_secs(30)).expect("delivered");
        assert_eq!(producer.in_flight_count(), 0);
        // Every callback ran: the last one noted the offset after the 500th record.
        assert_eq!(producer.context().take_changelog_next().get(&0), Some(&500));
        assert_eq!(producer.context().take_failures().0, 0);
    }

    #[test]
    fn flush_delivered_gives_up_at_its_timeout() {
        let mock = MockCluster::new(1).expect("a mock cluster");
        mock.create_topic("out", 1, 1).expect("a topic");
        let producer = producer(&mock.bootstrap_servers(), "out");
        mock.broker_down(1).expect("broker down");
        send_waiting(&producer, BaseRecord::<[u8], _, usize>::with_opaque_to("out", 0).partition(0).payload("x"))
            .expect("queued");
        let started = Instant::now();
        let outcome = flush_delivered(&producer, Duration::from_millis(300));
        assert!(matches!(outcome, Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(producer.in_flight_count(), 1);
    }
}
