//! The consumer's side: its context, with the rebalance callbacks into the [`Engine`] and the
//! end offsets the client reports (for the lag, into the [`Status`]).

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
    /// Where the input partitions' end offsets go, for the lag.
    pub status: Status,
}

impl ClientContext for InputContext {
    fn stats(&self, statistics: Statistics) {
        // The client reports every partition it fetches; below 0 means it does not know yet.
        // Its own `consumer_lag` counts from offsets this consumer committed, which under
        // exactly_once it never does (the producer's transaction does): only the end offsets are
        // taken here, and the lag is counted from the engine's commits.
        let ends: BTreeMap<(String, i32), i64> = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values().map(move |p| (t, p)))
            .filter(|(_, p)| p.partition >= 0 && p.hi_offset >= 0)
            .map(|(t, p)| ((t.topic.clone(), p.partition), p.hi_offset))
            .collect();
        self.status.set_end_offsets(ends);
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
