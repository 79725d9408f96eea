//! Start-up checks: brokers reachable, inputs co-partitioned, outputs present.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::metadata::Metadata;

use crate::config::Config;
use crate::error::RunError;

/// Fetches cluster metadata, retrying until the start-up time-out.
pub fn wait_for_brokers<C: ConsumerContext>(consumer: &BaseConsumer<C>, config: &Config) -> Result<Metadata, RunError> {
    let deadline = Instant::now() + Duration::from_millis(config.startup_timeout_ms);
    tracing::info!(brokers = %config.brokers, timeout_ms = config.startup_timeout_ms, "connecting to Kafka");
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

/// Makes sure the changelog topic exists, compacted, with at least `partitions` partitions (one
/// per input partition): creates it, or adds partitions when the inputs grew. At start
/// (`at_start`), a changelog with more partitions than the inputs is refused: it belongs to
/// another deployment of the same `application_id`.
pub fn ensure_changelog<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    config: &Config,
    partitions: i32,
    at_start: bool,
) -> Result<(), RunError> {
    let topic = config.changelog_topic();
    let metadata = client
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .map_err(|e| RunError::kafka(format!("reading the metadata of `{topic}`"), e))?;
    let admin: AdminClient<DefaultClientContext> =
        config.client_config().create().map_err(|e| RunError::kafka("creating the admin client", e))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match partition_count(&metadata, &topic) {
        None => {
            tracing::info!(topic, partitions, "creating the changelog topic");
            let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(config.replication_factor))
                .set("cleanup.policy", "compact");
            let results = block_on(admin.create_topics(&[new], &options))?
                .map_err(|e| RunError::Topics(format!("creating `{topic}` failed: {e}; create it by hand")))?;
            admin_results(results, &topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)?;
            wait_for_partitions(client, &topic, partitions)
        }
        Some(count) if count < partitions => {
            tracing::info!(topic, from = count, to = partitions, "the inputs grew: adding changelog partitions");
            let new = NewPartitions::new(&topic, partitions as usize);
            let results = block_on(admin.create_partitions(&[new], &options))?
                .map_err(|e| RunError::Topics(format!("adding partitions to `{topic}` failed: {e}")))?;
            admin_results(results, &topic, rdkafka::types::RDKafkaErrorCode::InvalidPartitions)?;
            wait_for_partitions(client, &topic, partitions)
        }
        Some(count) if at_start && count > partitions => Err(RunError::Topics(format!(
            "the changelog topic `{topic}` has {count} partitions but the inputs have {partitions}: it belongs to \
             another deployment with application_id `{}`; give this one its own application_id, or delete the \
             changelog (with its consumer group) to start over",
            config.application_id
        ))),
        Some(_) => Ok(()),
    }
}

/// Waits until the cluster's metadata shows `topic` with `partitions` partitions: a topic just
/// created or grown is not known to every broker at once.
fn wait_for_partitions<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
) -> Result<(), RunError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = client
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|metadata| partition_count(&metadata, topic))
            .unwrap_or(0);
        if count >= partitions {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RunError::Topics(format!(
                "`{topic}` shows {count} of {partitions} partitions 30 s after it was changed; check the brokers"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Topics(format!("cannot start a runtime for the admin client: {e}")))?;
    Ok(runtime.block_on(future))
}

fn admin_results(
    results: Vec<rdkafka::admin::TopicResult>,
    topic: &str,
    harmless: rdkafka::types::RDKafkaErrorCode,
) -> Result<(), RunError> {
    for result in results {
        if let Err((_, code)) = result {
            // Another instance got there first.
            if code != harmless {
                return Err(RunError::Topics(format!("changing `{topic}` failed: {code}")));
            }
        }
    }
    Ok(())
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
