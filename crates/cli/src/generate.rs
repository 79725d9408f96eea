//! `crmflow generate`: publishes the demo stream to Kafka at a steady rate, or writes it as JSON Lines.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crmflow_codec::{Encoding, TopicNames};
use crmflow_demo::{to_envelope_line, BadRecords, DemoConfig, DemoStream};
use crmflow_runtime::producer::send_waiting;
use crmflow_runtime::Shutdown;

/// How much to generate, and how fast.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Events per second (Kafka only; files are written at once).
    pub rate: f64,
    /// Stop after this many events, if set.
    pub count: Option<usize>,
    /// Stop after this long, if set.
    pub duration: Option<Duration>,
    /// About this share of the records (0 to 1) are malformed, on top of the events.
    pub bad_ratio: f64,
}

/// How many records were generated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generated {
    /// Events of the demo stream.
    pub events: usize,
    /// Malformed records mixed in.
    pub bad: usize,
}

/// Writes `count` events of the demo stream as simulate/scenario JSON Lines, with about
/// `bad_ratio` malformed records mixed in.
pub fn write_lines(
    config: DemoConfig,
    count: usize,
    bad_ratio: f64,
    topics: &TopicNames,
    mut out: impl Write,
) -> Result<Generated> {
    let mut generated = Generated::default();
    let mut bad = BadRecords::new(config.seed, bad_ratio);
    for event in DemoStream::new(config).take(count) {
        let line = to_envelope_line(&event, topics).context("encoding a generated event")?;
        writeln!(out, "{line}").context("writing generated events")?;
        generated.events += 1;
        if let Some(record) = bad.after(&event, topics) {
            out.write_all(&record.to_line()).and_then(|()| out.write_all(b"\n")).context("writing generated events")?;
            generated.bad += 1;
        }
    }
    out.flush().context("writing generated events")?;
    Ok(generated)
}

/// Publishes the demo stream to Kafka, stamped with the wall clock, until the pace or shutdown stops it.
pub fn publish(
    config: DemoConfig,
    pace: &Pace,
    brokers: &str,
    topics: &TopicNames,
    encoding: Encoding,
    shutdown: &Shutdown,
) -> Result<usize> {
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .with_context(|| format!("cannot create a producer for brokers {brokers}"))?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / pace.rate.max(0.001));
    let mut sent = 0usize;
    let mut bad = BadRecords::new(config.seed, pace.bad_ratio);
    for event in DemoStream::new(config) {
        let done = shutdown.is_requested()
            || pace.count.is_some_and(|n| sent >= n)
            || pace.duration.is_some_and(|d| started.elapsed() >= d);
        if done {
            break;
        }
        let due = started + interval.mul_f64(sent as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Stamped with the wall clock like a live connector; a bad record follows its event, as
        // in the file form.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let bad_record = bad.after(&event, topics);
        let event = event.event;
        let topic = topics.input_topic(event.stream());
        let payload = match encoding {
            Encoding::Json => serde_json::to_vec(&event).context("encoding a demo event")?,
            Encoding::Avro => crmflow_avro::SchemaRegistry::bundled()
                .encode(&serde_json::to_value(&event).context("encoding a demo event")?)
                .context("encoding a demo event as Avro")?,
        };
        let record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topic).key(event.company_id()).payload(&payload[..]).timestamp(now);
        send_waiting(&producer, record).with_context(|| format!("producing to {topic} at {brokers}"))?;
        if let Some(malformed) = &bad_record {
            let mut base: BaseRecord<'_, str, [u8]> =
                BaseRecord::to(&malformed.topic).payload(&malformed.value[..]).timestamp(now);
            if let Some(key) = &malformed.key {
                base = base.key(key.as_str());
            }
            send_waiting(&producer, base).with_context(|| format!("producing to {} at {brokers}", malformed.topic))?;
        }
        sent += 1;
    }
    producer.flush(Duration::from_secs(30)).context("flushing generated events")?;
    Ok(sent)
}
