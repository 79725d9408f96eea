//! The baseline: a plain rdkafka consume → produce pass-through with the same guarantee, loop
//! shape and commit interval as crmflow's (`crates/runtime/src/service.rs`, `engine.rs`), and
//! none of its work (no decoding, no merge, no decisions, no RocksDB).
//!
//! - `exactly_once`: a read_committed consumer, a transactional idempotent producer; every
//!   commit interval the consumed offsets go into the transaction
//!   (`send_offsets_to_transaction`), which is then committed.
//! - `at_least_once`: an idempotent producer; every commit interval it is flushed, then the
//!   consumed offsets are committed synchronously.
//!
//! Every input record is copied (key, value, timestamp) to the same partition of one output
//! topic per input stream: settings to `users.provisioned`, teams to `activities.ignored`, CRM
//! changes to `activities.accepted` (of the run's own topics).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crmflow_runtime::producer::{flush_delivered, send_waiting};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crmflow_runtime::ProcessingGuarantee;
use crmflow_testkit::{Broker, Topics};

/// Records admitted per poll round, as in crmflow's loop.
const POLL_BATCH: usize = 500;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A pass-through running on its own thread until stopped.
pub struct PassThrough {
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl PassThrough {
    /// Starts copying `topics`' inputs to its outputs in consumer group `group`.
    pub fn start(
        broker: &Broker,
        topics: &Topics,
        group: &str,
        guarantee: ProcessingGuarantee,
        commit_interval: Duration,
    ) -> Result<PassThrough> {
        let mut consumer_config = broker.client();
        consumer_config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range");
        let mut producer_config = broker.client();
        producer_config.set("enable.idempotence", "true").set("linger.ms", "5");
        if guarantee == ProcessingGuarantee::ExactlyOnce {
            consumer_config.set("isolation.level", "read_committed");
            producer_config
                .set("transactional.id", format!("{group}.passthrough"))
                .set("transaction.timeout.ms", "10000");
        }
        let consumer: BaseConsumer = consumer_config.create().context("creating the pass-through consumer")?;
        let producer: ThreadedProducer<DefaultProducerContext> =
            producer_config.create().context("creating the pass-through producer")?;
        if guarantee == ProcessingGuarantee::ExactlyOnce {
            producer.init_transactions(CLIENT_TIMEOUT).context("initialising transactions")?;
        }
        let inputs = topics.inputs();
        let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&input_refs).context("subscribing the pass-through")?;
        let n = &topics.names;
        let routes: BTreeMap<String, String> = [
            (n.integration_settings.clone(), n.users_provisioned.clone()),
            (n.team_assignments.clone(), n.activities_ignored.clone()),
            (n.crm_changes.clone(), n.activities_accepted.clone()),
        ]
        .into_iter()
        .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let (flag, assigned) = (stop.clone(), ready.clone());
        let thread = std::thread::Builder::new()
            .name("passthrough".into())
            .spawn(move || {
                let mut copier = Copier { consumer, producer, routes, guarantee, in_transaction: false };
                copier.run(&flag, &assigned, commit_interval)
            })
            .context("starting the pass-through thread")?;
        Ok(PassThrough { stop, ready, thread: Some(thread) })
    }

    /// Whether its consumer has been assigned partitions.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Stops after a last commit; returns how many records it copied.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the pass-through thread panicked"),
            None => Ok(0),
        }
    }
}

impl Drop for PassThrough {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Copier {
    consumer: BaseConsumer,
    producer: ThreadedProducer<DefaultProducerContext>,
    routes: BTreeMap<String, String>,
    guarantee: ProcessingGuarantee,
    in_transaction: bool,
}

impl Copier {
    fn run(&mut self, stop: &AtomicBool, ready: &AtomicBool, commit_interval: Duration) -> Result<u64> {
        let mut copied = 0u64;
        // Next offset to commit per input partition, for what was copied since the last commit.
        let mut pending: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let mut timeout = Duration::from_millis(50);
            for _ in 0..POLL_BATCH {
                let Some(message) = self.consumer.poll(timeout) else { break };
                timeout = Duration::ZERO;
                let m = match message {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("pass-through consumer: {e}");
                        continue;
                    }
                };
                let Some(output) = self.routes.get(m.topic()) else { continue };
                if self.guarantee == ProcessingGuarantee::ExactlyOnce && !self.in_transaction {
                    self.producer.begin_transaction().context("beginning a transaction")?;
                    self.in_transaction = true;
                }
                let mut record: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(output).partition(m.partition()).payload(m.payload().unwrap_or_default());
                if let Some(key) = m.key() {
                    record = record.key(key);
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    record = record.timestamp(ts);
                }
                send_waiting(&self.producer, record).with_context(|| format!("producing to {output}"))?;
                pending.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                copied += 1;
            }
            if !ready.load(Ordering::Relaxed) && self.consumer.assignment().is_ok_and(|a| a.count() > 0) {
                ready.store(true, Ordering::SeqCst);
            }
            if last_commit.elapsed() >= commit_interval {
                self.commit(&mut pending)?;
                last_commit = Instant::now();
            }
        }
        self.commit(&mut pending)?;
        Ok(copied)
    }

    fn commit(&mut self, pending: &mut BTreeMap<(String, i32), i64>) -> Result<()> {
        if pending.is_empty() && !self.in_transaction {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in std::mem::take(pending) {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(next))?;
        }
        match self.guarantee {
            ProcessingGuarantee::AtLeastOnce => {
                flush_delivered(&self.producer, CLIENT_TIMEOUT).context("flushing")?;
                if offsets.count() > 0 {
                    self.consumer.commit(&offsets, CommitMode::Sync).context("committing offsets")?;
                }
            }
            ProcessingGuarantee::ExactlyOnce => {
                let group = self.consumer.group_metadata().context("the consumer has no group metadata")?;
                if offsets.count() > 0 {
                    self.producer
                        .send_offsets_to_transaction(&offsets, &group, CLIENT_TIMEOUT)
                        .context("adding offsets to the transaction")?;
                }
                flush_delivered(&self.producer, CLIENT_TIMEOUT).context("flushing")?;
                self.producer.commit_transaction(CLIENT_TIMEOUT).context("committing the transaction")?;
                self.in_transaction = false;
            }
        }
        Ok(())
    }
}
