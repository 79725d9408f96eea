//! What is measured and how: throughput as the time until a group's committed offsets reach
//! the inputs' end offsets, latency as the age of each output record (its timestamp is its
//! input's produce time) when a read_committed consumer gets it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crmflow_testkit::{committed, end_offsets, Broker, Offsets, Topics};

use crate::load::now_ms;

/// How long the group coordinator may take to answer for a group's committed offsets; a poll
/// that gets no answer asks again.
pub const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// How fast a backlog was processed.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Input records processed.
    pub events: u64,
    /// From the start of the processor until the group's offsets reached the end offsets.
    pub total: Duration,
    /// From the first commit seen until the end.
    pub steady: Duration,
    /// Records committed when the first commit was seen (not part of the steady rate).
    pub before_steady: u64,
}

impl Throughput {
    /// Events per second from the processor's start (start-up and group join included).
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.total.as_secs_f64().max(1e-9)
    }

    /// Events per second from the first commit seen on (start-up excluded).
    pub fn steady_rate(&self) -> f64 {
        (self.events - self.before_steady) as f64 / self.steady.as_secs_f64().max(1e-9)
    }
}

/// Waits until `group` has committed the end offset of every input partition of `topics`, as
/// the broker has them now; `alive` is called every round and stops the wait with its error.
pub fn wait_processed(
    broker: &Broker,
    topics: &Topics,
    group: &str,
    started: Instant,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Throughput> {
    let inspector = broker.reader(group)?;
    let ends = end_offsets(broker, &topics.inputs(), topics.partitions)?;
    let events: i64 = ends.values().sum();
    let partitions: Vec<(String, i32)> = ends.keys().cloned().collect();
    let mut first: Option<(Instant, i64)> = None;
    loop {
        alive()?;
        if let Ok(at) = committed(&inspector, &partitions, COMMITTED_TIMEOUT) {
            // A partition the group has committed nothing of yet is at its start.
            let at: Offsets = at.into_iter().map(|(tp, o)| (tp, o.unwrap_or(0))).collect();
            let now = Instant::now();
            let done: i64 = at.values().sum();
            if first.is_none() && done > 0 {
                first = Some((now, done));
            }
            if ends.iter().all(|(tp, end)| at.get(tp).is_some_and(|o| o >= end)) {
                let (first_at, before) = first.unwrap_or((now, 0));
                return Ok(Throughput {
                    events: events as u64,
                    total: now - started,
                    steady: now - first_at,
                    before_steady: before as u64,
                });
            }
        }
        if started.elapsed() > timeout {
            bail!("group {group} did not reach the end offsets within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One output record as the reader got it.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// Its partition.
    pub partition: i32,
    /// Its timestamp: the produce time of its input, epoch ms.
    pub timestamp: i64,
    /// When the reader got it, epoch ms.
    pub read_ms: i64,
}

/// A read_committed consumer of a run's output topics, from their start, on its own thread.
pub struct Reader {
    /// Everything read so far.
    pub observed: Arc<Mutex<Vec<Observed>>>,
    finish: Arc<Mutex<Option<Offsets>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Reader {
    /// Starts reading every output partition of `topics` from the beginning.
    pub fn start(broker: &Broker, topics: &Topics) -> Result<Reader> {
        let consumer: BaseConsumer = broker
            .reader_config("crmflow-bench-reader")
            // The broker answers a fetch at once when data is there; this only bounds how long
            // it may hold an empty one (and so how late a just-committed record can be seen).
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating the output reader")?;
        let mut assignment = TopicPartitionList::new();
        for topic in topics.outputs() {
            for p in 0..topics.partitions {
                assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
        }
        consumer.assign(&assignment).context("assigning the output reader")?;
        let observed = Arc::new(Mutex::new(Vec::new()));
        let finish: Arc<Mutex<Option<Offsets>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, until, halt) = (observed.clone(), finish.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || read(&consumer, &seen, &until, &halt))
            .context("starting the reader thread")?;
        Ok(Reader { observed, finish, stop, thread: Some(thread) })
    }

    /// Reads on to the output topics' end offsets as they are now, then returns what was read.
    pub fn finish(mut self, broker: &Broker, topics: &Topics) -> Result<Vec<Observed>> {
        let ends = end_offsets(broker, &topics.outputs(), topics.partitions)?;
        *self.finish.lock().map_err(|_| anyhow::anyhow!("reader lock poisoned"))? = Some(ends);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result?,
            Some(Err(_)) => bail!("the reader thread panicked"),
            None => {}
        }
        let observed = std::mem::take(&mut *self.observed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        Ok(observed)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read(
    consumer: &BaseConsumer,
    observed: &Mutex<Vec<Observed>>,
    finish: &Mutex<Option<Offsets>>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut deadline: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                let read_ms = now_ms();
                if let Some(timestamp) = m.timestamp().to_millis() {
                    if let Ok(mut seen) = observed.lock() {
                        seen.push(Observed { partition: m.partition(), timestamp, read_ms });
                    }
                }
                continue;
            }
            Some(Err(e)) => eprintln!("output reader: {e}"),
            None => {}
        }
        let ends = finish.lock().ok().and_then(|f| f.clone());
        if let Some(ends) = ends {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(120));
            let positions = consumer.position().context("reading the reader's positions")?;
            let done = ends.iter().all(|((topic, partition), end)| {
                *end == 0
                    || positions.find_partition(topic, *partition).is_some_and(|e| match e.offset() {
                        Offset::Offset(o) => o >= *end,
                        _ => false,
                    })
            });
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the outputs were not readable to their end offsets within 120 s");
            }
        }
    }
    Ok(())
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Output records measured.
    pub count: usize,
    /// Median.
    pub p50: i64,
    /// 99th percentile.
    pub p99: i64,
    /// Largest.
    pub max: i64,
}

/// The latency of the outputs whose inputs were produced within `[from_ms, until_ms)`.
pub fn latency(observed: &[Observed], from_ms: i64, until_ms: i64) -> Option<Latency> {
    let mut ages: Vec<i64> = observed
        .iter()
        .filter(|o| o.timestamp >= from_ms && o.timestamp < until_ms)
        .map(|o| (o.read_ms - o.timestamp).max(0))
        .collect();
    if ages.is_empty() {
        return None;
    }
    ages.sort_unstable();
    let at = |q: f64| ages[((ages.len() - 1) as f64 * q).round() as usize];
    Some(Latency { count: ages.len(), p50: at(0.50), p99: at(0.99), max: ages[ages.len() - 1] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(timestamp: i64, age: i64) -> Observed {
        Observed { partition: 0, timestamp, read_ms: timestamp + age }
    }

    #[test]
    fn latency_counts_only_inputs_produced_in_the_window() {
        let mut observed: Vec<Observed> = (0..100).map(|i| seen(1_000 + i, i + 1)).collect();
        observed.push(seen(10, 5_000)); // produced before the window: start-up, left out
        observed.push(seen(5_000, 5_000)); // produced after it
        let l = latency(&observed, 1_000, 2_000).unwrap();
        assert_eq!((l.count, l.p50, l.p99, l.max), (100, 51, 99, 100));
        assert!(latency(&observed, 3_000, 4_000).is_none());
    }
}
