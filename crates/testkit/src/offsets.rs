//! The two sides of "everything produced so far is processed": the end offsets of the inputs
//! and a group's committed offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
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
            let (_, high) = client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(Error::kafka(format!("reading the end offset of {topic} [{p}]")))?;
            ends.insert((topic.to_owned(), p), high);
        }
    }
    Ok(ends)
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
