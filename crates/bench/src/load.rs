//! The input load: the demo stream (`crmflow generate`'s events), each record stamped with the
//! wall clock when it is handed to the producer. crmflow's outputs carry their input's
//! timestamp, and the pass-through copies it, so an output's timestamp is the moment its input
//! was produced: the latency reader needs no side table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crmflow_codec::TopicNames;
use crmflow_demo::{DemoConfig, DemoStream};

/// Milliseconds since the epoch, the unit of Kafka record timestamps.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The demo stream at benchmark scale: many companies (the record key, so the partitions get
/// an even share), each with one integration of `users` CRM users and 5 workflows.
pub fn demo_config(companies: usize, users: usize, seed: u64) -> DemoConfig {
    DemoConfig {
        seed,
        companies,
        integrations_per_company: 1,
        users_per_integration: users,
        workflows_per_integration: 5,
        records_per_user: 3,
        ..DemoConfig::default()
    }
}

/// How fast to produce, and when to stop.
pub struct Pace<'a> {
    /// Events per second; `None` for as fast as the broker takes them (a backlog).
    pub rate: Option<f64>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop once this is set.
    pub stop: &'a AtomicBool,
    /// Events handed to the producer so far.
    pub sent: &'a AtomicU64,
}

/// Produces the demo stream to the input topics of `topics` at `pace`, then flushes; returns how
/// many events were produced.
pub fn produce(brokers: &str, topics: &TopicNames, demo: DemoConfig, pace: &Pace<'_>) -> Result<u64> {
    // Idempotent: a retried batch never lands behind later ones (the stream's order is kept).
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the load producer")?;
    let started = Instant::now();
    let mut sent = 0u64;
    for event in DemoStream::new(demo) {
        if pace.stop.load(Ordering::Relaxed) || pace.count.is_some_and(|n| sent >= n) {
            break;
        }
        if let Some(rate) = pace.rate {
            // Whole milliseconds of sleep; the events due meanwhile go out together.
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait.max(Duration::from_millis(1)));
            }
        }
        let event = event.event;
        let payload = serde_json::to_vec(&event).context("encoding a demo event")?;
        let topic = topics.input_topic(event.stream());
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topic).key(event.company_id()).payload(&payload[..]).timestamp(now_ms());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    std::thread::sleep(Duration::from_millis(2));
                    record = back;
                }
                Err((e, _)) => return Err(e).with_context(|| format!("producing to {topic}")),
            }
        }
        sent += 1;
        pace.sent.store(sent, Ordering::Relaxed);
    }
    producer.flush(Duration::from_secs(60)).context("flushing the load")?;
    Ok(sent)
}
