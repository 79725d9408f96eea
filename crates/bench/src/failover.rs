//! Failover: two instances of one application (same group, different `instance_id`) share the
//! partitions under live traffic; one is SIGKILLed, and the clock runs until the survivor has
//! taken over each of its partitions, seen two ways:
//! - the group's committed offset of the partition's CRM changes passes the end offset it had
//!   at the kill (the survivor processed a record produced after it);
//! - a read_committed consumer gets an output of such a record on that partition.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crmflow_demo::DemoConfig;
use crmflow_testkit::{committed, end_offsets, wait_for, Broker, Topics};

use crate::load::{now_ms, produce, Pace};
use crate::measure::{Reader, COMMITTED_TIMEOUT};
use crate::processor::{Instance, Settings};

/// How often the instances' assignments are looked at while waiting for them.
const POLL: Duration = Duration::from_millis(100);

/// What a failover took.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The partitions the killed instance had.
    pub partitions: Vec<i32>,
    /// Input events produced before the kill (the history a new owner may have to replay).
    pub events_before_kill: u64,
    /// Per partition: kill → committed offset past the end offset at the kill.
    pub committed: BTreeMap<i32, Duration>,
    /// Per partition: kill → first readable output of a record produced after the kill.
    pub output: BTreeMap<i32, Duration>,
}

impl Failover {
    /// The slowest partition by committed offsets (all of them taken over), if all were.
    pub fn committed_all(&self) -> Option<Duration> {
        (self.committed.len() == self.partitions.len()).then(|| self.committed.values().max().copied()).flatten()
    }

    /// The slowest partition by readable outputs, if all were.
    pub fn output_all(&self) -> Option<Duration> {
        (self.output.len() == self.partitions.len()).then(|| self.output.values().max().copied()).flatten()
    }
}

/// Runs one failover on fresh topics named after `prefix`: live load at `rate` events/s, two
/// instances, `warm_up` of steady traffic, then the kill.
#[allow(clippy::too_many_arguments)]
pub fn run(
    broker: &Broker,
    settings: &Settings,
    work: &Path,
    prefix: &str,
    partitions: i32,
    demo: DemoConfig,
    rate: f64,
    warm_up: Duration,
) -> Result<Failover> {
    let topics = Topics::prefixed(prefix, partitions);
    topics.create(broker).context("creating the failover's topics")?;
    let reader = Reader::start(broker, &topics)?;
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let pace = Pace { rate: Some(rate), count: None, stop: &stop, sent: &sent };
            produce(&broker.address, &topics.names, demo, &pace)
        });
        let result = take_over(broker, settings, work, prefix, &topics, &reader, &sent, warm_up);
        stop.store(true, Ordering::SeqCst);
        match load.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.context("producing the failover load")),
            Err(_) => bail!("the load thread panicked"),
        }
        result
    })
}

#[allow(clippy::too_many_arguments)]
fn take_over(
    broker: &Broker,
    settings: &Settings,
    work: &Path,
    group: &str,
    topics: &Topics,
    reader: &Reader,
    sent: &AtomicU64,
    warm_up: Duration,
) -> Result<Failover> {
    let mut victim = Instance::start(settings, broker, topics, group, "a", work)?;
    wait_for("the first instance's assignment", Duration::from_secs(60), POLL, || {
        victim.check_running()?;
        anyhow::Ok((!victim.assigned().is_empty()).then_some(()))
    })?;
    let mut survivor = Instance::start(settings, broker, topics, group, "b", work)?;
    let all: BTreeSet<i32> = (0..topics.partitions).collect();
    wait_for("both instances' assignments", Duration::from_secs(90), POLL, || {
        victim.check_running()?;
        survivor.check_running()?;
        let (a, b) = (victim.assigned(), survivor.assigned());
        let split = !a.is_empty() && !b.is_empty() && a.is_disjoint(&b);
        anyhow::Ok((split && a.union(&b).copied().collect::<BTreeSet<_>>() == all).then_some(()))
    })?;
    std::thread::sleep(warm_up);
    let dead: Vec<i32> = victim.assigned().into_iter().collect();
    let crm = topics.names.crm_changes.clone();
    let inspector = broker.reader(group)?;
    let ends = end_offsets(broker, std::slice::from_ref(&crm), topics.partitions)?;
    let kill_ms = now_ms();
    let killed = Instant::now();
    victim.kill();
    let events_before_kill = sent.load(Ordering::Relaxed);

    let watched: Vec<(String, i32)> = dead.iter().map(|p| (crm.clone(), *p)).collect();
    let (mut by_offsets, mut by_output) = (BTreeMap::new(), BTreeMap::new());
    let mut scanned = 0;
    let deadline = killed + Duration::from_secs(180);
    while (by_offsets.len() < dead.len() || by_output.len() < dead.len()) && Instant::now() < deadline {
        survivor.check_running()?;
        if let Ok(at) = committed(&inspector, &watched, COMMITTED_TIMEOUT) {
            let now = killed.elapsed();
            for ((topic, p), offset) in at {
                if offset.unwrap_or(0) > ends.get(&(topic, p)).copied().unwrap_or(i64::MAX) {
                    by_offsets.entry(p).or_insert(now);
                }
            }
        }
        if let Ok(observed) = reader.observed.lock() {
            for o in &observed[scanned..] {
                if o.timestamp > kill_ms && dead.contains(&o.partition) {
                    by_output
                        .entry(o.partition)
                        .or_insert(Duration::from_millis(u64::try_from(o.read_ms - kill_ms).unwrap_or(0)));
                }
            }
            scanned = observed.len();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    survivor.stop().context("stopping the surviving instance")?;
    Ok(Failover { partitions: dead, events_before_kill, committed: by_offsets, output: by_output })
}
