//! The consumer's side: its context, with the rebalance callbacks into the [`Engine`] and the
//! lag statistics (per partition, into the [`Status`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::engine::{lock, Engine};
use crate::status::Status;

/// The consumer's context: commits and drops partition work on revocation, records lag.
#[derive(Clone)]
pub struct InputContext {
    /// The processing state, shared with the loop (which never holds it while polling).
    pub engine: Arc<Mutex<Engine>>,
    /// Where the lag per partition goes, for the metrics.
    pub status: Status,
}

impl ClientContext for InputContext {
    fn stats(&self, statistics: Statistics) {
        // The client reports every partition it fetches; -1 means it does not know yet.
        let lag: BTreeMap<(String, i32), i64> = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values().map(move |p| (t, p)))
            .filter(|(_, p)| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|(t, p)| ((t.topic.clone(), p.partition), p.consumer_lag))
            .collect();
        self.status.set_lag(lag);
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
