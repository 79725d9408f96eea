//! The librdkafka clients' contexts: delivery tracking, rebalance hooks and lag statistics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
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
        if let Rebalance::Revoke(_) = rebalance {
            // Commit while the partitions are still ours; the next owner resumes from there.
            if let Ok(mut engine) = self.engine.lock() {
                engine.on_revoke(consumer);
            }
        }
    }
}
