//! The two sides of "everything produced so far is processed": the end offsets of the inputs
//! and a group's committed offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::{Broker, Error};

/// An offset per (topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

/// The end offset (high watermark) of every partition of `topics`: the offset after the last
/// record written, whether or not its transaction is decided yet.
///
/// Not what a read_committed client reports: librdkafka answers such a client with the last
/// stable offset. The broker writes a transaction's markers after the commit returns, one
/// partition at a time, so for a moment the group's offsets are committed while an output
/// partition's stable offset still stands before the round's records: a reader that stops there
/// misses them. A read_committed reader that reads on to the high watermark has read every
/// record of decided transactions.
pub fn end_offsets(broker: &Broker, topics: &[impl AsRef<str>], partitions: i32) -> Result<Offsets, Error> {
    let client: BaseConsumer = broker
        .client()
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(Error::kafka("creating a watermark client"))?;
    let mut ends = BTreeMap::new();
    for topic in topics {
        let topic = topic.as_ref();
        for p in 0..partitions {
            let high = high_watermark(&client, topic, p)
                .map_err(Error::kafka(format!("reading the end offset of {topic} [{p}]")))?;
            ends.insert((topic.to_owned(), p), high);
        }
    }
    Ok(ends)
}

/// A partition's high watermark, asked again for up to 30 s while the broker says it does not
/// lead the partition yet: right after a topic is created, its leadership reaches the broker's
/// metadata a moment after the topic shows in a client's.
fn high_watermark(client: &BaseConsumer, topic: &str, partition: i32) -> Result<i64, KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok((_, high)) => return Ok(high),
            Err(e) if not_led_yet(&e) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e),
        }
    }
}

/// Whether a request failed because the partition's leadership is not settled yet.
fn not_led_yet(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

/// The committed offsets of `consumer`'s group on `partitions`, `None` where the group has
/// committed none yet. Fails while the coordinator cannot answer within `timeout` (it moves,
/// loads, or a transaction holds the offsets): pollers ask again.
pub fn committed<'a>(
    consumer: &BaseConsumer,
    partitions: impl IntoIterator<Item = &'a (String, i32)>,
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), Option<i64>>, Error> {
    let mut wanted = TopicPartitionList::new();
    for (topic, partition) in partitions {
        wanted.add_partition(topic, *partition);
    }
    let committed =
        consumer.committed_offsets(wanted, timeout).map_err(Error::kafka("reading the group's committed offsets"))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let at = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            ((e.topic().to_owned(), e.partition()), at)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsettled_leadership_is_asked_again() {
        assert!(not_led_yet(&KafkaError::MetadataFetch(RDKafkaErrorCode::NotLeaderForPartition)));
        assert!(not_led_yet(&KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable)));
        assert!(!not_led_yet(&KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(!not_led_yet(&KafkaError::MetadataFetch(RDKafkaErrorCode::TopicAuthorizationFailed)));
    }
}
