//! The consumer's side: its context, with the rebalance callbacks into the [`Engine`] and the
//! lag statistics.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::engine::{lock, Engine};

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
        let mut engine = lock(&self.engine);
        match rebalance {
            // Commit while the partitions are still ours; the next owner resumes from there.
            Rebalance::Revoke(_) => engine.on_revoke(consumer),
            // Open the stores and set where each input resumes before the assignment takes effect.
            Rebalance::Assign(assignment) => engine.on_assign(consumer, assignment),
            Rebalance::Error(e) => tracing::warn!("rebalance: {e}"),
        }
    }
}
