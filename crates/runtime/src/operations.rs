//! Kafka administration for the operator commands (`crmflow replay`, `diff`, `reset`): offsets
//! of topics and groups, a group's live members, deleting topics, reading topics to offsets
//! taken beforehand. No decisions here: the commands decide what to do with what it reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::error::RunError;
use crate::setup;

/// How long one admin or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long reading topics to their end offsets may go without progress.
const READ_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// An offset per topic partition (a position, an end, a start).
pub type Offsets = BTreeMap<(String, i32), i64>;

/// What [`Operations::read_until`] does after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Go on reading.
    Continue,
    /// Read no more of this record's partition.
    DonePartition,
    /// Read no more at all.
    Stop,
}

/// A member of a consumer group, as the group coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// The client's `client.id`.
    pub client_id: String,
    /// The host it connects from.
    pub host: String,
}

/// Why an operator command could not talk to Kafka as it needed.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// Creating a client, or the brokers, failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A Kafka request failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What crmflow was doing.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
    /// A topic that must exist does not.
    #[error("topic `{0}` does not exist")]
    MissingTopic(String),
    /// Deleting a topic failed.
    #[error("deleting topic `{topic}` failed: {reason}")]
    DeleteTopic {
        /// The topic.
        topic: String,
        /// The broker's reason.
        reason: String,
    },
    /// Reading a topic to its end offsets stalled.
    #[error("reading stalled for {seconds} s short of the end offsets taken at start: {behind}")]
    ReadStalled {
        /// How long nothing came.
        seconds: u64,
        /// The partitions still behind, with where they are.
        behind: String,
    },
}

/// Whether a group request failed only because its coordinator is not ready yet.
fn coordinator_not_ready(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
        )
    )
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> OperationError {
    let context = context.into();
    move |source| OperationError::Kafka { context, source }
}

/// A connection for the operator commands: metadata, watermarks and admin requests.
pub struct Operations {
    config: Config,
    client: BaseConsumer,
    metadata: Metadata,
}

impl Operations {
    /// Connects with `config`'s client settings, waiting for the brokers up to `startup_timeout_ms`.
    pub fn connect(config: &Config) -> Result<Operations, OperationError> {
        // read_uncommitted, so watermarks are high watermarks: librdkafka answers a read_committed
        // client (its default) with the last stable offset, which can stand before a round
        // committed a moment ago (the broker writes transaction markers after the commit returns).
        let client: BaseConsumer = config
            .client_config()
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(|e| RunError::kafka("creating a metadata client", e))?;
        let metadata = setup::wait_for_brokers(&client, config)?;
        Ok(Operations { config: config.clone(), client, metadata })
    }

    /// The partition count of `topic`, if it exists (as of the last metadata fetch).
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32)
    }

    /// Fetches the metadata again (after creating or deleting topics).
    pub fn refresh(&mut self) -> Result<(), OperationError> {
        self.metadata =
            self.client.fetch_metadata(None, REQUEST_TIMEOUT).map_err(kafka("reading the cluster metadata"))?;
        Ok(())
    }

    fn existing_partitions(&self, topic: &str) -> Result<i32, OperationError> {
        self.partitions(topic).ok_or_else(|| OperationError::MissingTopic(topic.to_owned()))
    }

    /// The low and high watermarks (first offset there is, next offset to be written) of every
    /// partition of `topics`.
    pub fn watermarks(&self, topics: &[&str]) -> Result<(Offsets, Offsets), OperationError> {
        let mut low = Offsets::new();
        let mut high = Offsets::new();
        for topic in topics {
            for partition in 0..self.existing_partitions(topic)? {
                let (l, h) = self
                    .client
                    .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                    .map_err(kafka(format!("reading the offsets of `{topic}` [{partition}]")))?;
                low.insert((topic.to_string(), partition), l);
                high.insert((topic.to_string(), partition), h);
            }
        }
        Ok((low, high))
    }

    /// The end offsets (high watermarks) of every partition of `topics`.
    pub fn end_offsets(&self, topics: &[&str]) -> Result<Offsets, OperationError> {
        Ok(self.watermarks(topics)?.1)
    }

    /// Per partition of `topics`, the first offset whose record is stamped at or after
    /// `timestamp_ms`; the end offset where no record is.
    pub fn offsets_for_time(&self, topics: &[&str], timestamp_ms: i64) -> Result<Offsets, OperationError> {
        let (_, ends) = self.watermarks(topics)?;
        let mut query = TopicPartitionList::new();
        for (topic, partition) in ends.keys() {
            query
                .add_partition_offset(topic, *partition, Offset::Offset(timestamp_ms))
                .map_err(kafka("building an offsets-for-times request"))?;
        }
        let found = self
            .client
            .offsets_for_times(query, REQUEST_TIMEOUT)
            .map_err(kafka(format!("looking up the offsets for timestamp {timestamp_ms}")))?;
        let mut offsets = Offsets::new();
        for element in found.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let offset = match element.offset() {
                Offset::Offset(o) => o,
                _ => ends[&key],
            };
            offsets.insert(key, offset);
        }
        Ok(offsets)
    }

    /// The live members of consumer group `group` (empty when none is connected).
    pub fn group_members(&self, group: &str) -> Result<Vec<Member>, OperationError> {
        // A group's coordinator may still be loading its offsets partition (a broker that just
        // started, a coordinator that moved): that answer is retriable, not a failure.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let list = loop {
            match self.client.fetch_group_list(Some(group), REQUEST_TIMEOUT) {
                Err(e) if coordinator_not_ready(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                other => break other.map_err(kafka(format!("describing consumer group `{group}`")))?,
            }
        };
        Ok(list
            .groups()
            .iter()
            .filter(|g| g.name() == group)
            .flat_map(|g| g.members())
            .map(|m| Member {
                member_id: m.id().to_owned(),
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
            })
            .collect())
    }

    /// The offsets group `group` has committed on the partitions of `offsets`' keys (`None`:
    /// nothing committed there).
    pub fn committed_offsets(
        &self,
        group: &str,
        partitions: impl IntoIterator<Item = (String, i32)>,
    ) -> Result<BTreeMap<(String, i32), Option<i64>>, OperationError> {
        let consumer = self.group_client(group)?;
        let mut wanted = TopicPartitionList::new();
        for (topic, partition) in partitions {
            wanted.add_partition(&topic, partition);
        }
        let committed = consumer
            .committed_offsets(wanted, REQUEST_TIMEOUT)
            .map_err(kafka(format!("reading the committed offsets of group `{group}`")))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                ((e.topic().to_owned(), e.partition()), offset)
            })
            .collect())
    }

    /// Commits `offsets` for group `group`, which must have no live members (the coordinator
    /// refuses a commit from outside a group with members).
    pub fn commit_group_offsets(&self, group: &str, offsets: &Offsets) -> Result<(), OperationError> {
        let consumer = self.group_client(group)?;
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(kafka("building an offset commit"))?;
        }
        consumer
            .commit(&list, CommitMode::Sync)
            .map_err(kafka(format!("committing offsets for group `{group}` (are members connected?)")))
    }

    /// A client in `group` that never joins it: it reads and commits offsets only.
    fn group_client(&self, group: &str) -> Result<BaseConsumer, OperationError> {
        let mut config = self.config.client_config();
        config.set("group.id", group).set("enable.auto.commit", "false");
        Ok(config.create().map_err(|e| RunError::kafka("creating a consumer group client", e))?)
    }

    /// Deletes `topics` (those that exist) and waits until the metadata no longer shows them, so
    /// that they can be created again at once. Returns those deleted.
    pub fn delete_topics(&mut self, topics: &[&str]) -> Result<Vec<String>, OperationError> {
        let existing: Vec<&str> = topics.iter().copied().filter(|t| self.partitions(t).is_some()).collect();
        if existing.is_empty() {
            return Ok(Vec::new());
        }
        let (admin, options, runtime) = self.admin()?;
        let results = runtime
            .block_on(admin.delete_topics(&existing, &options))
            .map_err(kafka(format!("deleting topics {existing:?}")))?;
        for result in results {
            if let Err((topic, code)) = result {
                if code != rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Err(OperationError::DeleteTopic { topic, reason: code.to_string() });
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.refresh()?;
            let left: Vec<&str> = existing.iter().copied().filter(|t| self.partitions(t).is_some()).collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(OperationError::DeleteTopic {
                    topic: left.join(", "),
                    reason: "still listed in the metadata 30 s after its deletion".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(existing.into_iter().map(str::to_owned).collect())
    }

    /// An admin client, its request options, and a runtime to wait for its futures on.
    fn admin(
        &self,
    ) -> Result<(AdminClient<DefaultClientContext>, AdminOptions, tokio::runtime::Runtime), OperationError> {
        let admin: AdminClient<DefaultClientContext> =
            self.config.client_config().create().map_err(|e| RunError::kafka("creating the admin client", e))?;
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RunError::Topics(format!("cannot start a runtime for the admin client: {e}")))?;
        Ok((admin, options, runtime))
    }

    /// Creates `topic` with `partitions` partitions and topic `settings`; it must not exist.
    pub fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        settings: &[(&str, &str)],
    ) -> Result<(), OperationError> {
        use rdkafka::admin::{NewTopic, TopicReplication};
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.config.replication_factor));
        for (key, value) in settings {
            new = new.set(key, value);
        }
        let (admin, options, runtime) = self.admin()?;
        let results = runtime
            .block_on(admin.create_topics(&[new], &options))
            .map_err(kafka(format!("creating topic `{topic}`")))?;
        if let Some(Err((_, code))) = results.into_iter().next() {
            return Err(RunError::Topics(format!("creating topic `{topic}` failed: {code}")).into());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.refresh()?;
            if self.partitions(topic) == Some(partitions) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RunError::Topics(format!("`{topic}` not in the metadata 30 s after its creation")).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads every committed record (read_committed) of the partitions of `ends` from the start
    /// up to their offset in `ends`, handing each to `each`. Records at or past the end are not
    /// handed on, so what is read is what was there when `ends` was taken.
    pub fn read_to(
        &self,
        ends: &Offsets,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), OperationError>,
    ) -> Result<(), OperationError> {
        self.read_until(ends, |m| each(m).map(|()| Read::Continue))
    }

    /// Like [`Operations::read_to`], where `each` may end the reading of a partition, or of all,
    /// early.
    pub fn read_until(
        &self,
        ends: &Offsets,
        each: impl FnMut(&BorrowedMessage<'_>) -> Result<Read, OperationError>,
    ) -> Result<(), OperationError> {
        self.read_between(&Offsets::new(), ends, each)
    }

    /// Like [`Operations::read_until`], from the offsets in `starts` (the start of the
    /// partition where it has none).
    pub fn read_between(
        &self,
        starts: &Offsets,
        ends: &Offsets,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<Read, OperationError>,
    ) -> Result<(), OperationError> {
        let mut config = self.config.client_config();
        config
            .set("group.id", format!("{}.operations-reader", self.config.application_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = config.create().map_err(|e| RunError::kafka("creating a reader", e))?;
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), end) in ends {
            if *end > 0 {
                let start = match starts.get(&(topic.clone(), *partition)) {
                    Some(offset) => Offset::Offset(*offset),
                    None => Offset::Beginning,
                };
                assignment
                    .add_partition_offset(topic, *partition, start)
                    .map_err(kafka("building the reader's assignment"))?;
            }
        }
        if assignment.count() == 0 {
            return Ok(());
        }
        consumer.assign(&assignment).map_err(kafka("assigning the reader"))?;
        let mut last_progress = Instant::now();
        let mut done = std::collections::BTreeSet::new();
        loop {
            let positions = consumer.position().map_err(kafka("reading the reader's positions"))?;
            let behind: Vec<String> = ends
                .iter()
                .filter(|(key, end)| **end > 0 && !done.contains(*key))
                .filter_map(|((topic, partition), end)| {
                    let at = match positions.find_partition(topic, *partition).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    };
                    (at < *end).then(|| format!("{topic} [{partition}] at {at} of {end}"))
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if last_progress.elapsed() > READ_STALL_TIMEOUT {
                return Err(OperationError::ReadStalled {
                    seconds: READ_STALL_TIMEOUT.as_secs(),
                    behind: format!("{} (an open transaction holds read_committed readers back)", behind.join(", ")),
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    let end = ends.get(&(message.topic().to_owned(), message.partition())).copied().unwrap_or(0);
                    let key = (message.topic().to_owned(), message.partition());
                    if message.offset() < end && !done.contains(&key) {
                        match each(&message)? {
                            Read::Continue => {}
                            Read::DonePartition => {
                                let mut partition = TopicPartitionList::new();
                                partition.add_partition(&key.0, key.1);
                                consumer.pause(&partition).map_err(kafka("pausing a partition of the reader"))?;
                                done.insert(key);
                            }
                            Read::Stop => return Ok(()),
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!("reader: {e}"),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `replay` once failed at once on CoordinatorLoadInProgress for its fresh group.
    #[test]
    fn only_a_coordinator_not_ready_is_asked_again() {
        for code in [
            RDKafkaErrorCode::CoordinatorLoadInProgress,
            RDKafkaErrorCode::CoordinatorNotAvailable,
            RDKafkaErrorCode::NotCoordinator,
        ] {
            assert!(coordinator_not_ready(&KafkaError::GroupListFetch(code)), "{code:?}");
        }
        assert!(!coordinator_not_ready(&KafkaError::GroupListFetch(RDKafkaErrorCode::GroupAuthorizationFailed)));
    }
}
