//! Start-up checks: brokers reachable, inputs co-partitioned, outputs present.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::metadata::Metadata;

use crate::config::Config;
use crate::error::RunError;

/// Fetches cluster metadata, retrying until the start-up time-out.
pub fn wait_for_brokers<C: ConsumerContext>(consumer: &BaseConsumer<C>, config: &Config) -> Result<Metadata, RunError> {
    let deadline = Instant::now() + Duration::from_millis(config.startup_timeout_ms);
    loop {
        match consumer.fetch_metadata(None, Duration::from_secs(2)) {
            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(metadata),
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(_) => return Err(unreachable(config, "no broker in metadata".into())),
            Err(e) => return Err(unreachable(config, e.to_string())),
        }
    }
}

fn unreachable(config: &Config, why: String) -> RunError {
    RunError::Brokers(format!(
        "cannot reach Kafka at `{}` within {} ms ({why}); check `brokers` and that the cluster is up",
        config.brokers, config.startup_timeout_ms
    ))
}

/// The partition count shared by all input topics, or why the inputs cannot be processed.
pub fn input_partitions(metadata: &Metadata, config: &Config) -> Result<i32, RunError> {
    let mut counts = Vec::new();
    for (_, topic) in config.topics.inputs() {
        let count = partition_count(metadata, topic).ok_or_else(|| {
            RunError::Topics(format!(
                "input topic `{topic}` does not exist; create it (all three inputs with the same partition count)"
            ))
        })?;
        counts.push((topic.to_owned(), count));
    }
    let first = counts[0].1;
    if counts.iter().any(|(_, n)| *n != first) {
        let listing: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        return Err(RunError::Topics(format!(
            "input topics are not co-partitioned ({}); they must have the same number of partitions \
             and be keyed by company_id so one company's events meet in one partition",
            listing.join(", ")
        )));
    }
    Ok(first)
}

fn partition_count(metadata: &Metadata, topic: &str) -> Option<i32> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
}

/// Creates missing output and dead-letter topics with the inputs' partition count.
pub fn ensure_output_topics(metadata: &Metadata, config: &Config, partitions: i32) -> Result<(), RunError> {
    create_missing(metadata, config, &config.topics.outputs(), partitions).map(|_| ())
}

/// Creates every topic of crmflow (inputs, outputs, dead letters) that does not exist yet, with
/// `partitions` partitions: for a new cluster, such as `make run`'s. Returns those it created.
pub fn create_topics(config: &Config, partitions: i32) -> Result<Vec<String>, RunError> {
    let consumer: BaseConsumer =
        config.client_config().create().map_err(|e| RunError::kafka("creating a metadata client", e))?;
    let metadata = wait_for_brokers(&consumer, config)?;
    let mut names: Vec<&str> = config.topics.inputs().iter().map(|(_, t)| *t).collect();
    names.extend(config.topics.outputs());
    create_missing(&metadata, config, &names, partitions)
}

fn create_missing(
    metadata: &Metadata,
    config: &Config,
    names: &[&str],
    partitions: i32,
) -> Result<Vec<String>, RunError> {
    let missing: Vec<&str> = names.iter().copied().filter(|t| partition_count(metadata, t).is_none()).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    tracing::info!(?missing, partitions, "creating topics");
    let admin: AdminClient<DefaultClientContext> =
        config.client_config().create().map_err(|e| RunError::kafka("creating the admin client", e))?;
    let topics: Vec<NewTopic> = missing
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(config.replication_factor)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Topics(format!("cannot start a runtime for topic creation: {e}")))?;
    let results = runtime
        .block_on(admin.create_topics(&topics, &options))
        .map_err(|e| RunError::Topics(format!("creating topics {missing:?} failed: {e}; create them by hand")))?;
    for result in results {
        if let Err((topic, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(RunError::Topics(format!(
                    "creating topic `{topic}` failed: {code}; create it by hand with {partitions} partitions"
                )));
            }
        }
    }
    Ok(missing.into_iter().map(str::to_owned).collect())
}
