//! What the brokers say of the changelog topic that decides how a store is restored (see
//! [`crate::restore`]): the topic's id, which a topic deleted and created again under the same
//! name (a reset) does not keep, and how long its compaction keeps a deletion. Also the largest
//! record each topic crmflow writes takes, which bounds state values and producer batches.

use std::collections::BTreeMap;

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::bindings as ffi;
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::error::RunError;

/// Kafka's default `delete.retention.ms` (one day), for a topic that does not report its own.
const DEFAULT_DELETE_RETENTION_MS: i64 = 86_400_000;

/// Kafka's default `max.message.bytes`, for a topic that does not report its own.
pub const DEFAULT_MAX_MESSAGE_BYTES: i64 = 1_048_588;

/// The changelog topic as the brokers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogTopic {
    /// Its id (`None`: brokers too old to have topic ids, or librdkafka's mock cluster).
    pub id: Option<String>,
    /// How long it keeps a deletion: `delete.retention.ms`.
    pub deletions_kept_ms: i64,
    /// The largest record batch it takes: `max.message.bytes`.
    pub max_message_bytes: i64,
}

/// Describes `topic` (the changelog): its id, `delete.retention.ms` and `max.message.bytes`.
pub fn describe(config: &Config, topic: &str, timeout: Duration) -> Result<ChangelogTopic, RunError> {
    let admin = admin_client(config)?;
    if is_mock(&admin, timeout) {
        // librdkafka's mock cluster (`crmflow dev-broker`) answers neither request.
        return Ok(ChangelogTopic {
            id: None,
            deletions_kept_ms: DEFAULT_DELETE_RETENTION_MS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        });
    }
    let id = topic_id(admin.inner(), topic, timeout)?;
    let configs = topic_configs(&admin, &[topic], timeout)?;
    let setting = |key: &str| configs.get(topic).and_then(|c| c.get(key)).and_then(|v| v.parse().ok());
    Ok(ChangelogTopic {
        id,
        deletions_kept_ms: setting("delete.retention.ms").unwrap_or(DEFAULT_DELETE_RETENTION_MS),
        max_message_bytes: setting("max.message.bytes").unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
    })
}

/// The smallest `max.message.bytes` of `topics`: the largest batch the producer may send to all.
/// A topic that does not exist yet counts with Kafka's default, which it is created with.
pub fn smallest_max_message_bytes(config: &Config, topics: &[&str], timeout: Duration) -> Result<i64, RunError> {
    let admin = admin_client(config)?;
    if is_mock(&admin, timeout) {
        return Ok(DEFAULT_MAX_MESSAGE_BYTES);
    }
    let configs = topic_configs(&admin, topics, timeout)?;
    Ok(topics
        .iter()
        .map(|topic| {
            configs
                .get(*topic)
                .and_then(|c| c.get("max.message.bytes")?.parse().ok())
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
        })
        .min()
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES))
}

fn admin_client(config: &Config) -> Result<AdminClient<DefaultClientContext>, RunError> {
    config.client_config().create().map_err(|e| RunError::kafka("creating the admin client", e))
}

fn is_mock(admin: &AdminClient<DefaultClientContext>, timeout: Duration) -> bool {
    cluster_id(admin.inner(), timeout).is_some_and(|id| id.starts_with(MOCK_CLUSTER_ID))
}

/// The configuration of each of `topics`, as the brokers report it (name → value).
fn topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Topics(format!("cannot start a runtime for the admin client: {e}")))?;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let resources: Vec<ResourceSpecifier<'_>> = topics.iter().map(|topic| ResourceSpecifier::Topic(topic)).collect();
    let results = runtime
        .block_on(admin.describe_configs(&resources, &options))
        .map_err(|e| RunError::kafka(format!("describing the configuration of {topics:?}"), e))?;
    let mut configs = BTreeMap::new();
    for (topic, result) in topics.iter().zip(results) {
        let resource = match result {
            Ok(resource) => resource,
            Err(RDKafkaErrorCode::UnknownTopicOrPartition) => continue,
            Err(code) => {
                return Err(RunError::Topics(format!("describing the configuration of `{topic}` failed: {code}")))
            }
        };
        let entries = resource.entries.into_iter().filter_map(|entry| Some((entry.name, entry.value?))).collect();
        configs.insert((*topic).to_owned(), entries);
    }
    Ok(configs)
}

/// The cluster id librdkafka's mock cluster gives itself begins so.
const MOCK_CLUSTER_ID: &str = "mockCluster";

/// The id of `topic` in base64, as Kafka's tools print it; `None` where the brokers have none
/// to give (the all-zero id, or a cluster that does not describe topics).
pub fn topic_id<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, RunError> {
    let failed = |why: String| RunError::Topics(format!("describing topic `{topic}` failed: {why}"));
    let name = CString::new(topic).map_err(|_| failed("the name holds a NUL byte".into()))?;
    let mut names = [name.as_ptr()];
    // SAFETY: every handle created here is destroyed here, after its last use; the strings read
    // from the result are copied before the event that owns them is destroyed. librdkafka's
    // admin calls accept any client handle.
    unsafe {
        let rk = client.native_ptr();
        let collection = ffi::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), names.len());
        let queue = ffi::rd_kafka_queue_new(rk);
        ffi::rd_kafka_DescribeTopics(rk, collection, std::ptr::null(), queue);
        let event = ffi::rd_kafka_queue_poll(queue, millis(timeout));
        let outcome = if event.is_null() {
            Err(failed(format!("no answer within {timeout:?}")))
        } else {
            let outcome = described_id(event);
            ffi::rd_kafka_event_destroy(event);
            outcome.map_err(failed)
        };
        ffi::rd_kafka_queue_destroy(queue);
        ffi::rd_kafka_TopicCollection_destroy(collection);
        outcome
    }
}

/// The id of the cluster `client` is connected to (`None`: not known within `timeout`).
fn cluster_id<C: ClientContext>(client: &Client<C>, timeout: Duration) -> Option<String> {
    // SAFETY: librdkafka returns a string the caller owns (or null), freed here after the copy.
    unsafe {
        let id = ffi::rd_kafka_clusterid(client.native_ptr(), millis(timeout));
        let copied = text(id);
        if !id.is_null() {
            ffi::rd_kafka_mem_free(client.native_ptr(), id.cast());
        }
        copied
    }
}

/// The topic id in a DescribeTopics result event.
///
/// # Safety
/// `event` must be a live DescribeTopics result event.
unsafe fn described_id(event: *mut ffi::rd_kafka_event_t) -> Result<Option<String>, String> {
    let code = RDKafkaErrorCode::from(ffi::rd_kafka_event_error(event));
    if code == RDKafkaErrorCode::UnsupportedVersion || code == RDKafkaErrorCode::InvalidRequest {
        return Ok(None);
    }
    if code != RDKafkaErrorCode::NoError {
        return Err(text(ffi::rd_kafka_event_error_string(event)).unwrap_or_else(|| code.to_string()));
    }
    let result = ffi::rd_kafka_event_DescribeTopics_result(event);
    let mut count = 0;
    let topics = ffi::rd_kafka_DescribeTopics_result_topics(result, &mut count);
    if topics.is_null() || count == 0 {
        return Err("the answer describes no topic".into());
    }
    let description = *topics;
    let error = ffi::rd_kafka_TopicDescription_error(description);
    if !error.is_null() {
        let code = RDKafkaErrorCode::from(ffi::rd_kafka_error_code(error));
        if code != RDKafkaErrorCode::NoError {
            return Err(text(ffi::rd_kafka_error_string(error)).unwrap_or_else(|| code.to_string()));
        }
    }
    let id = ffi::rd_kafka_TopicDescription_topic_id(description);
    if id.is_null()
        || (ffi::rd_kafka_Uuid_most_significant_bits(id) == 0 && ffi::rd_kafka_Uuid_least_significant_bits(id) == 0)
    {
        return Ok(None);
    }
    Ok(text(ffi::rd_kafka_Uuid_base64str(id)))
}

/// `timeout` as librdkafka's `int` milliseconds.
fn millis(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)
}

/// A C string librdkafka owns, copied.
///
/// # Safety
/// `s` is null or a valid NUL-terminated string.
unsafe fn text(s: *const std::os::raw::c_char) -> Option<String> {
    (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[test]
    fn the_mock_cluster_is_not_asked() {
        let mock = MockCluster::new(1).expect("a mock cluster");
        mock.create_topic("changelog", 2, 1).expect("a topic");
        let config = Config { brokers: mock.bootstrap_servers(), ..Config::default() };
        let started = std::time::Instant::now();
        let described = describe(&config, "changelog", Duration::from_secs(10)).expect("described");
        assert_eq!(described.id, None);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
