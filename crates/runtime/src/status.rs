//! What the running processor shows its operators: whether it is ready, its metrics, and its
//! state stores for queries. The HTTP server (`crmflow-http`) reads a [`Status`]; the loop, the
//! engine and the consumer's callbacks keep it current. Nothing here decides anything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crmflow_store::CommittedView;

use crate::peers::Peers;
use crate::report::Counters;

/// Where the processor is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Connecting to the brokers and checking topics.
    #[default]
    Starting,
    /// In the consumer group, processing what it is assigned.
    Running,
    /// Committing the last round before exiting.
    Stopping,
}

/// Where the processor stands in its consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// Subscribed; the group has not assigned partitions yet.
    Joining,
    /// Its partitions were revoked and the new assignment has not come yet.
    Rebalancing,
    /// It holds an assignment (possibly empty: more instances than partitions).
    Assigned,
}

/// What one assigned partition is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Its store is restoring from the changelog; its inputs wait.
    Restoring,
    /// Its store is current; its inputs are processed.
    Processing,
}

/// How far a partition's restore has come, in changelog offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RestoreProgress {
    /// Where it started.
    pub from: i64,
    /// The next offset to apply.
    pub reached: i64,
    /// Where it ends (the end offset at assignment).
    pub until: i64,
}

/// One assigned partition, as readiness and the metrics report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    /// The input partition (and its store and changelog partition).
    pub partition: i32,
    /// Restoring or processing.
    pub state: PartitionState,
    /// The restore's progress while restoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreProgress>,
    /// Bytes of its RocksDB store on disk and in memory, when processing (filled in by a scrape).
    #[serde(skip)]
    pub store_bytes: Option<u64>,
}

/// Whether the processor can serve its partitions now, and if not, why not.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Ready: in the group, and every assigned partition restored and processing.
    pub ready: bool,
    /// Why it is not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the process is in its life.
    pub phase: Phase,
    /// The assigned partitions.
    pub partitions: Vec<PartitionStatus>,
}

/// Histograms the engine observes as it commits; kept across scrapes.
#[derive(Debug, Clone)]
pub struct Timings {
    /// From an input record's timestamp until its outputs are acknowledged (committed).
    pub latency: Histogram,
    /// Of a whole commit: the Kafka transaction or acknowledgements, RocksDB batches, offsets.
    pub commit: Histogram,
    /// Of a Kafka transaction, from its first output until it is committed (`exactly_once`).
    pub transaction: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        // 1 ms to about 65 s: a commit takes milliseconds, an output behind a backlog minutes.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        Timings { latency: seconds(), commit: seconds(), transaction: seconds() }
    }
}

/// The engine's side of a scrape or readiness probe, as it last published it.
#[derive(Debug, Clone)]
pub struct EngineView {
    /// Committed counts since start.
    pub counters: Counters,
    /// Where it stands in the group.
    pub membership: Membership,
    /// The assigned partitions.
    pub partitions: Vec<PartitionStatus>,
    /// The next offset committed per input topic partition processed here.
    pub committed: BTreeMap<(String, i32), i64>,
}

/// The lag per partition: end offset minus committed offset, for partitions with both known.
pub fn consumer_lag(
    ends: &BTreeMap<(String, i32), i64>,
    committed: &BTreeMap<(String, i32), i64>,
) -> BTreeMap<(String, i32), i64> {
    committed.iter().filter_map(|(key, next)| ends.get(key).map(|end| (key.clone(), (end - next).max(0)))).collect()
}

/// A handle on the running processor's status, shared by the loop and the HTTP server.
#[derive(Clone, Default)]
pub struct Status {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    phase: Mutex<Phase>,
    // The consumer group, for the lag metric's `consumergroup` label.
    group: Mutex<String>,
    // What the engine last published: operators' reads never wait for the engine's lock, which
    // processing, commits and rebalances hold. `None`: not started, or stopped.
    view: Mutex<Option<EngineView>>,
    // The committed state of the partitions being processed, per partition. Dropping a store
    // waits for its views: the engine withdraws them here before it closes stores.
    stores: Mutex<Vec<(i32, CommittedView)>>,
    // The group's other instances, when this one serves HTTP.
    peers: Mutex<Option<Arc<Peers>>>,
    // End offsets (high watermarks) per input topic partition, as the client last reported them.
    end_offsets: Mutex<BTreeMap<(String, i32), i64>>,
    timings: Timings,
}

/// The processor is not running (not started yet, or stopped), so it has no stores to ask.
#[derive(Debug, thiserror::Error)]
#[error("the processor is not running: no partitions are open")]
pub struct NotRunning;

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Status {
    /// A status for a processor that has not started yet.
    pub fn new() -> Self {
        Status::default()
    }

    /// The histograms the engine observes.
    pub fn timings(&self) -> &Timings {
        &self.shared.timings
    }

    /// Where the process is in its life.
    pub fn phase(&self) -> Phase {
        *guard(&self.shared.phase)
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        *guard(&self.shared.phase) = phase;
    }

    /// Names the consumer group the processor runs in.
    pub(crate) fn set_group(&self, group: &str) {
        *guard(&self.shared.group) = group.to_owned();
    }

    /// Publishes the engine's view and the committed state of the partitions it processes.
    pub(crate) fn publish(&self, view: EngineView, stores: Vec<(i32, CommittedView)>) {
        *guard(&self.shared.view) = Some(view);
        *guard(&self.shared.stores) = stores;
    }

    /// Withdraws the stores' views, before the engine closes stores.
    pub(crate) fn withdraw_stores(&self) {
        guard(&self.shared.stores).clear();
    }

    /// Withdraws everything the engine published: it has stopped.
    pub(crate) fn withdraw(&self) {
        *guard(&self.shared.view) = None;
        self.withdraw_stores();
    }

    pub(crate) fn set_peers(&self, peers: Option<Peers>) {
        *guard(&self.shared.peers) = peers.map(Arc::new);
    }

    /// The group's other instances, to forward queries about companies held elsewhere.
    pub fn peers(&self) -> Option<Arc<Peers>> {
        guard(&self.shared.peers).clone()
    }

    /// Records the end offsets of the input partitions (from the client's statistics).
    pub(crate) fn set_end_offsets(&self, ends: BTreeMap<(String, i32), i64>) {
        *guard(&self.shared.end_offsets) = ends;
    }

    /// The lag per input topic partition given the offsets committed for them: records after
    /// the committed offset, up to the end offset last reported (as kafka_exporter counts it).
    pub fn lag(&self, committed: &BTreeMap<(String, i32), i64>) -> BTreeMap<(String, i32), i64> {
        consumer_lag(&guard(&self.shared.end_offsets), committed)
    }

    /// The lag summed over the partitions given (-1 while no end offset is known).
    pub fn total_lag(&self, committed: &BTreeMap<(String, i32), i64>) -> i64 {
        let lag = self.lag(committed);
        if lag.is_empty() {
            -1
        } else {
            lag.values().sum()
        }
    }

    fn engine_view(&self) -> Option<EngineView> {
        guard(&self.shared.view).clone()
    }

    fn store_views(&self) -> Vec<(i32, CommittedView)> {
        guard(&self.shared.stores).clone()
    }

    /// Whether the processor is ready, and why not.
    pub fn readiness(&self) -> Readiness {
        let phase = self.phase();
        let view = self.engine_view();
        let partitions = view.as_ref().map(|v| v.partitions.clone()).unwrap_or_default();
        let restoring: Vec<i32> =
            partitions.iter().filter(|p| p.state == PartitionState::Restoring).map(|p| p.partition).collect();
        let reason = match (phase, &view) {
            (Phase::Starting, _) => Some("starting: connecting to the brokers and checking the topics".to_owned()),
            (Phase::Stopping, _) => Some("stopping".to_owned()),
            (Phase::Running, None) => Some("the processor has stopped".to_owned()),
            (Phase::Running, Some(view)) => match view.membership {
                Membership::Joining => Some("joining the consumer group: no partitions assigned yet".to_owned()),
                Membership::Rebalancing => {
                    Some("rebalancing: partitions revoked, waiting for the new assignment".to_owned())
                }
                Membership::Assigned if !restoring.is_empty() => {
                    Some(format!("restoring the state stores of partitions {restoring:?} from the changelog"))
                }
                Membership::Assigned => None,
            },
        };
        Readiness { ready: reason.is_none(), reason, phase, partitions }
    }

    /// Runs `query` over the committed state of the partitions this instance processes now
    /// (restoring partitions are not asked). It runs beside processing, never waiting for it.
    pub fn query<T>(&self, query: impl FnOnce(&[CommittedView]) -> T) -> Result<T, NotRunning> {
        if self.phase() != Phase::Running {
            return Err(NotRunning);
        }
        let stores: Vec<CommittedView> = self.store_views().into_iter().map(|(_, view)| view).collect();
        Ok(query(&stores))
    }

    /// The metrics in the OpenMetrics text format (which Prometheus scrapes).
    pub fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        let timings = &self.shared.timings;
        let mut registry = Registry::default();
        registry.register(
            "crmflow_processing_latency_seconds",
            "From an input record's timestamp until its outputs are acknowledged",
            timings.latency.clone(),
        );
        registry.register(
            "crmflow_commit_duration_seconds",
            "Duration of a commit: transaction or acknowledgements, RocksDB batches, offsets",
            timings.commit.clone(),
        );
        registry.register(
            "crmflow_transaction_duration_seconds",
            "Duration of a Kafka transaction, from its first record until committed",
            timings.transaction.clone(),
        );
        // One lock at a time: a guard kept in a temporary would still be held below.
        let group = guard(&self.shared.group).clone();
        let mut view = self.engine_view();
        let lag = view.as_ref().map(|v| self.lag(&v.committed)).unwrap_or_default();
        if let Some(view) = &mut view {
            // Sized here, not when published: a size costs RocksDB property reads.
            for (partition, store) in self.store_views() {
                if let Some(p) = view.partitions.iter_mut().find(|p| p.partition == partition) {
                    p.store_bytes = store.size_bytes().ok();
                }
            }
        }
        let snapshot = Snapshot { group, lag, view };
        registry.register_collector(Box::new(snapshot));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// What one scrape reports besides the histograms, taken at once.
#[derive(Debug)]
struct Snapshot {
    group: String,
    lag: BTreeMap<(String, i32), i64>,
    view: Option<EngineView>,
}

type Labels = Vec<(&'static str, String)>;

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, samples: &[(Labels, u64)]) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, samples: &[(Labels, i64)]) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels (written without an empty `{}`).
fn counter1(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// A gauge without labels.
fn gauge1(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // Named as kafka_exporter names it, so existing dashboards and alerts apply.
        let lag: Vec<(Labels, i64)> = self
            .lag
            .iter()
            .map(|((topic, partition), lag)| {
                (
                    vec![
                        ("consumergroup", self.group.clone()),
                        ("topic", topic.clone()),
                        ("partition", partition.to_string()),
                    ],
                    *lag,
                )
            })
            .collect();
        gauge(&mut encoder, "kafka_consumergroup_lag", "Records of the partition not yet consumed by the group", &lag)?;
        let Some(view) = &self.view else { return Ok(()) };
        let c = &view.counters;
        let t = &c.tally;
        let e = &mut encoder;
        counter1(e, "crmflow_input_records", "Input records processed (committed)", c.records)?;
        counter1(e, "crmflow_replayed_records", "Input records replayed only to rebuild state", c.replayed)?;
        counter1(e, "crmflow_late_records", "Input records processed after a later-stamped one", c.late)?;
        let result = |r: &str| vec![("result", r.to_owned())];
        counter(
            e,
            "crmflow_crm_changes",
            "CRM changes by what the workflows made of them",
            &[(result("matched"), t.matched), (result("unmatched"), t.unmatched), (result("duplicate"), t.duplicates)],
        )?;
        counter1(e, "crmflow_duplicates_dropped", "CRM changes dropped as resends of one processed", t.duplicates)?;
        let kind = |k: &str| vec![("type", k.to_owned())];
        counter(
            e,
            "crmflow_outputs",
            "Output events published, per type",
            &[
                (kind("UserProvisioned"), t.users_provisioned),
                (kind("ActivityAccepted"), t.recorded + t.revised + t.retracted),
                (kind("ActivityIgnored"), t.ignored_total()),
            ],
        )?;
        let change = |k: &str| vec![("change", k.to_owned())];
        counter(
            e,
            "crmflow_activities_accepted",
            "ActivityAccepted events, per change",
            &[(change("recorded"), t.recorded), (change("revised"), t.revised), (change("retracted"), t.retracted)],
        )?;
        let ignored: Vec<(Labels, u64)> =
            t.ignored.iter().map(|(reason, n)| (vec![("reason", reason.as_str().to_owned())], *n)).collect();
        counter(e, "crmflow_activities_ignored", "ActivityIgnored events, per reason", &ignored)?;
        let dead: Vec<(Labels, u64)> =
            c.dead_letters.iter().map(|(kind, n)| (vec![("kind", kind.as_str().to_owned())], *n)).collect();
        counter(e, "crmflow_dead_letters", "Input records sent to the dead-letter topic, per error kind", &dead)?;
        counter1(e, "crmflow_commits", "Commits made", c.commits)?;
        counter1(e, "crmflow_aborted_transactions", "Transactions aborted and redone", c.aborts)?;
        counter1(e, "crmflow_producer_fenced", "Times the producer was fenced and replaced", c.fences)?;
        counter1(e, "crmflow_expired_input_records", "Input records deleted by retention unprocessed", c.expired)?;
        counter1(e, "crmflow_restored_records", "Changelog records restored into state stores", c.restored)?;
        let partition = |p: &PartitionStatus| vec![("partition", p.partition.to_string())];
        let restoring: Vec<(Labels, i64)> = view
            .partitions
            .iter()
            .filter_map(|p| p.restore.map(|r| (partition(p), (r.until - r.reached).max(0))))
            .collect();
        gauge1(e, "crmflow_restoring_partitions", "Partitions whose stores are restoring", restoring.len() as i64)?;
        gauge(
            e,
            "crmflow_restore_remaining_records",
            "Changelog offsets a restoring partition has yet to apply",
            &restoring,
        )?;
        let sizes: Vec<(Labels, i64)> = view
            .partitions
            .iter()
            .filter_map(|p| {
                let mut labels = vec![("store", "projections".to_owned())];
                labels.extend(partition(p));
                p.store_bytes.map(|bytes| (labels, i64::try_from(bytes).unwrap_or(i64::MAX)))
            })
            .collect();
        gauge(e, "crmflow_state_store_bytes", "Size of a partition's RocksDB store (files and memtables)", &sizes)?;
        gauge1(
            e,
            "crmflow_assigned_partitions",
            "Input partitions assigned to this instance",
            view.partitions.len() as i64,
        )
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status").field("phase", &self.phase()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(entries: &[(&str, i32, i64)]) -> BTreeMap<(String, i32), i64> {
        entries.iter().map(|(t, p, o)| ((t.to_string(), *p), *o)).collect()
    }

    #[test]
    fn lag_counts_from_the_committed_offset_where_both_are_known() {
        let ends = offsets(&[("crm", 0, 10), ("crm", 1, 5), ("teams", 0, 3)]);
        let committed = offsets(&[("crm", 0, 7), ("crm", 1, 6), ("settings", 0, 2)]);
        // A committed offset past the reported end (reported before the last records) is no lag.
        assert_eq!(consumer_lag(&ends, &committed), offsets(&[("crm", 0, 3), ("crm", 1, 0)]));
    }

    #[test]
    fn readiness_and_metrics_come_from_what_the_engine_published() {
        let status = Status::new();
        status.set_phase(Phase::Running);
        status.set_group("g");
        let partition =
            PartitionStatus { partition: 3, state: PartitionState::Processing, restore: None, store_bytes: None };
        let counters = Counters { commits: 7, ..Counters::default() };
        let view = EngineView {
            counters,
            membership: Membership::Assigned,
            partitions: vec![partition],
            committed: offsets(&[("crm", 3, 5)]),
        };
        status.publish(view, Vec::new());
        assert!(status.readiness().ready);
        let text = status.metrics_text().expect("encodes");
        assert!(text.contains("\ncrmflow_commits_total 7\n"), "{text}");
        assert!(text.contains("crmflow_assigned_partitions 1"), "{text}");
        status.withdraw();
        assert_eq!(status.readiness().reason.as_deref(), Some("the processor has stopped"));
    }

    #[test]
    fn a_starting_processor_is_not_ready_and_says_so() {
        let status = Status::new();
        let readiness = status.readiness();
        assert!(!readiness.ready);
        assert!(readiness.reason.is_some_and(|r| r.starts_with("starting")));
        assert!(status.query(|stores| stores.len()).is_err(), "no stores to ask yet");
        let text = status.metrics_text().expect("encodes");
        assert!(text.contains("# TYPE crmflow_processing_latency_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
