//! Restore rate: how fast a lost state store comes back from its changelog, next to a plain
//! consumer reading the same changelog partition to its end (the ceiling a restore can reach).
//! The changelog is written here: `entries` ledger entries of one partition, in the record format
//! crmflow's stores publish (`crmflow_store::ChangelogRecord`), then both read it from the start.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crmflow_domain::{LedgerEntry, Timestamp};
use crmflow_runtime::restore::{RestoreRange, Restoring};
use crmflow_runtime::Config;
use crmflow_store::{StateStore, StoreOptions};
use crmflow_testkit::Broker;

use crate::cpu::{RunCpu, RunStart};

/// One restore measurement.
#[derive(Debug, Clone)]
pub struct RestoreRate {
    /// Changelog records read by each.
    pub entries: u64,
    /// The plain consumer's time to read them all.
    pub plain: Duration,
    /// crmflow's time to restore them into an empty RocksDB store.
    pub restore: Duration,
    /// What the plain read cost in CPU (this process, the broker, the machine).
    pub plain_cpu: RunCpu,
    /// What the restore cost in CPU (this process, RocksDB's threads included).
    pub restore_cpu: RunCpu,
}

impl RestoreRate {
    /// Records per second of the plain consumer.
    pub fn plain_rate(&self) -> f64 {
        self.entries as f64 / self.plain.as_secs_f64()
    }

    /// Records per second of crmflow's restore.
    pub fn restore_rate(&self) -> f64 {
        self.entries as f64 / self.restore.as_secs_f64()
    }
}

/// Writes a changelog of `entries` ledger entries to `topic` (one partition), then times a plain
/// read of it and a restore of it into a fresh store under `work`.
pub fn run(broker: &Broker, topic: &str, entries: u64, work: &std::path::Path) -> Result<RestoreRate> {
    broker.create_topics(&[topic.to_owned()], 1)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()
        .context("creating the changelog writer")?;
    for i in 0..entries {
        let key = format!("ledger\0company-{}\0activity-{i}", i % 64);
        let entry = LedgerEntry {
            user_id: format!("user-{}", i % 6400),
            crm_user_id: format!("005{:012}", i % 6400),
            team_id: format!("team-{}", i % 40),
            activity_type: "Sale".into(),
            value: Some((i % 10_000) as f64),
            occurred_at: Timestamp(1_714_557_600_000 + i as i64),
        };
        let value = serde_json::to_vec(&entry)?;
        let mut record = BaseRecord::to(topic).partition(0).key(key.as_bytes()).payload(&value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e).context("writing the changelog"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).context("flushing the changelog")?;

    let mut config = Config { brokers: broker.address.clone(), ..Config::default() };
    config.application_id = "crmflow-bench-restore".into();
    let client: BaseConsumer = config.restore_consumer_config().create()?;
    let (low, high) = client.fetch_watermarks(topic, 0, Duration::from_secs(30))?;
    if high - low < entries as i64 {
        bail!("the changelog holds {} records, not {entries}", high - low);
    }

    let own = std::process::id();
    let cpu = RunStart::now(Some(own), broker.pid);
    let started = Instant::now();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(low))?;
    client.assign(&assignment)?;
    let mut read = 0u64;
    while read < entries {
        match client.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => bail!("plain read: {e}"),
            None => {}
        }
    }
    let plain = started.elapsed();
    let plain_cpu = cpu.until_now(own, broker.pid);

    let store = StateStore::open(&work.join("restore-bench-store"), StoreOptions::default())?;
    let range = RestoreRange { topic: topic.to_owned(), partition: 0, from: low, until: high, written_at: 0 };
    let cpu = RunStart::now(Some(own), broker.pid);
    let started = Instant::now();
    let restored = Restoring::start(&config, store, range, Arc::new(AtomicU64::new(0)))?.join()?;
    let restore = started.elapsed();
    let restore_cpu = cpu.until_now(own, broker.pid);
    if !restored.complete {
        bail!("the restore stopped early at {}", restored.next);
    }
    Ok(RestoreRate { entries, plain, restore, plain_cpu, restore_cpu })
}
