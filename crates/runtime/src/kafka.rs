//! The librdkafka clients' contexts: delivery tracking, rebalance hooks and lag statistics.

use std::ffi::CString;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::service::Engine;

/// Counts failed deliveries so a commit never covers an output the broker did not take.
#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl DeliveryTracker {
    /// Failed deliveries so far, with the last error.
    pub fn failures(&self) -> (u64, Option<String>) {
        let last = self.last_error.lock().map(|e| e.clone()).unwrap_or(None);
        (self.failed.load(Ordering::SeqCst), last)
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
        }
    }
}

/// Hands a record to the producer, waiting while its local queue is full (back-pressure).
pub fn send_waiting<C, K, P>(producer: &ThreadedProducer<C>, mut record: BaseRecord<'_, K, P, ()>) -> KafkaResult<()>
where
    C: ProducerContext<DeliveryOpaque = ()> + 'static,
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

/// The consumer's context: commits and drops partition work on revocation, records lag.
#[derive(Clone)]
pub struct InputContext {
    /// The processing state, shared with the loop (which never holds it while polling).
    pub engine: Arc<Mutex<Engine>>,
    /// Input records not yet consumed, summed over assigned partitions (-1 until known).
    pub lag: Arc<AtomicI64>,
}

impl ClientContext for InputContext {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.store(lag, Ordering::Relaxed);
    }
}

impl ConsumerContext for InputContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut engine = self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match rebalance {
            // Commit while the partitions are still ours; the next owner resumes from there.
            Rebalance::Revoke(_) => engine.on_revoke(consumer),
            // Open the stores and set where each input resumes before the assignment takes effect.
            Rebalance::Assign(assignment) => engine.on_assign(consumer, assignment),
            Rebalance::Error(e) => tracing::warn!("rebalance: {e}"),
        }
    }
}
