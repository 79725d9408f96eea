//! The wiring and the loop: builds the clients and the [`Engine`], runs the start-up checks, then
//! polls the consumer, lets the engine route and process records, and commits every
//! `commit_interval_ms`. The recovery protocol lives in [`crate::resume`], the commits in
//! [`crate::engine`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, ThreadedProducer};

use crate::changelog_topic;
use crate::config::{Config, ProcessingGuarantee};
use crate::consumer::InputContext;
use crate::engine::{ask_again, describe_changelog, lock, now_ms, Changelog, Engine, DESCRIBE_TIMEOUT};
use crate::error::RunError;
use crate::peers::Peers;
use crate::producer::DeliveryTracker;
use crate::report::Counters;
use crate::setup;
use crate::shutdown::Shutdown;
use crate::status::{Phase, Status};

/// Records admitted per poll round before the merges release what they can.
const POLL_BATCH: usize = 500;

/// A second fence within this long means another live instance shares the transactional id.
const FENCED_AGAIN_WITHIN: Duration = Duration::from_secs(60);

/// What the loop reports to its caller every `report_every`.
pub trait Observer {
    /// Called with the counters since start and the sample lines since the last call.
    fn report(&mut self, counters: &Counters, samples: Vec<String>);
}

/// How the caller wants to watch the loop.
#[derive(Debug, Clone)]
pub struct Watch {
    /// How often to report.
    pub report_every: Duration,
    /// How many sample events to keep between reports (0: none).
    pub samples: usize,
    /// What the loop shows operators (readiness, metrics, queries), e.g. over HTTP.
    pub status: Status,
}

/// Runs the processor until shutdown is requested or a failure stops it.
pub fn run(
    config: Config,
    shutdown: &Shutdown,
    watch: &Watch,
    observer: &mut dyn Observer,
) -> Result<Counters, RunError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| RunError::StateDir { path: config.state_dir.display().to_string(), source })?;
    let changelog_client: BaseConsumer =
        config.changelog_client_config().create().map_err(|e| RunError::kafka("creating the changelog client", e))?;
    let metadata = setup::wait_for_brokers(&changelog_client, &config)?;
    let partitions = setup::input_partitions(&metadata, &config)?;
    setup::ensure_output_topics(&metadata, &config, partitions)?;
    let mut config = config;
    let mut written: Vec<String> = config.topics.outputs().iter().map(|t| (*t).to_owned()).collect();
    written.push(config.changelog_topic());
    let written: Vec<&str> = written.iter().map(String::as_str).collect();
    let smallest = ask_again(|| changelog_topic::smallest_max_message_bytes(&config, &written, DESCRIBE_TIMEOUT))?;
    config.fit_batches_within(smallest);
    let producer: ThreadedProducer<DeliveryTracker> = config
        .producer_config()
        .create_with_context(DeliveryTracker::new(config.changelog_topic()))
        .map_err(|e| RunError::kafka("creating the producer", e))?;
    if config.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
        let timeout = Duration::from_millis(config.startup_timeout_ms);
        producer.init_transactions(timeout).map_err(|e| {
            RunError::kafka(
                format!(
                    "the brokers at `{}` did not start a transaction within {} ms; processing_guarantee = \
                     \"exactly_once\" needs Kafka transactions: set processing_guarantee = \"at_least_once\" \
                     for brokers without them",
                    config.brokers, config.startup_timeout_ms
                ),
                e,
            )
        })?;
    }
    setup::ensure_changelog(&changelog_client, &config, partitions, true)?;
    let topic = config.changelog_topic();
    let described = describe_changelog(&config, &topic)?;
    let changelog = Changelog { topic, client: changelog_client, partitions, described };
    let status = &watch.status;
    let engine = Arc::new(Mutex::new(Engine::new(config.clone(), producer, changelog, watch.samples, status.clone())?));
    status.set_group(&config.application_id);
    status.set_peers(Peers::new(&config)?);
    let context = InputContext { engine: engine.clone(), status: status.clone() };
    let consumer: BaseConsumer<InputContext> = config
        .consumer_config()
        .create_with_context(context)
        .map_err(|e| RunError::kafka("creating the consumer", e))?;
    let inputs: Vec<&str> = config.topics.inputs().iter().map(|(_, t)| *t).collect();
    consumer.subscribe(&inputs).map_err(|e| RunError::kafka("subscribing to the input topics", e))?;
    tracing::info!(brokers = %config.brokers, partitions, guarantee = ?config.processing_guarantee, "crmflow is running");
    status.set_phase(Phase::Running);

    let result = process_until_stopped(&engine, &consumer, shutdown, watch, observer);
    status.set_phase(Phase::Stopping);
    // Before the stores close: closing one waits for the queries that read it.
    status.withdraw();
    let mut engine = lock(&engine);
    if let Err(e) = &result {
        tracing::error!("stopping without committing the round in progress: {e}");
        engine.abandon();
    }
    result?;
    let counters = engine.counters(status.total_lag(&engine.committed_offsets()));
    tracing::info!("stopped after committing: {}", counters.summary());
    Ok(counters)
}

/// The consume → decide → produce → commit loop; returns once shutdown is requested and the
/// last round is committed, or with the error that stopped it (the round is then not committed).
fn process_until_stopped(
    engine: &Mutex<Engine>,
    consumer: &BaseConsumer<InputContext>,
    shutdown: &Shutdown,
    watch: &Watch,
    observer: &mut dyn Observer,
) -> Result<(), RunError> {
    let commit_every = Duration::from_millis(lock(engine).config().commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    let mut last_fence: Option<Instant> = None;
    while !shutdown.is_requested() {
        let wait = lock(engine).next_deadline().map_or(50, |d| (d - now_ms()).clamp(0, 50));
        let mut timeout = Duration::from_millis(wait as u64);
        // Poll without holding the engine: rebalance callbacks run inside poll and lock it.
        // Records polled without waiting arrived together: one reading of the clock is theirs.
        let mut arrived = None;
        for _ in 0..POLL_BATCH {
            let Some(message) = consumer.poll(timeout) else { break };
            timeout = Duration::ZERO;
            let now = *arrived.get_or_insert_with(now_ms);
            match message {
                Ok(m) => lock(engine).admit(&m, now),
                Err(e) => consumer_error(e)?,
            }
        }
        let mut engine = lock(engine);
        // A failure in a rebalance callback (a commit before revocation that met a fence, say)
        // is recovered from exactly as one in the loop: the callback already dropped its round.
        let mut round = match engine.take_failure() {
            Some(failure) => Err(failure),
            None => engine
                .pause_restoring(consumer)
                .and_then(|()| engine.finish_restores(consumer))
                .and_then(|()| engine.process_ready(consumer, now_ms())),
        };
        if round.is_ok() && last_commit.elapsed() >= commit_every {
            round = engine.commit(consumer);
            last_commit = Instant::now();
            engine.delete_released_stores();
        }
        if let Err(e) = round {
            recover(&mut engine, consumer, e, &mut last_fence)?;
        }
        engine.publish();
        if last_report.elapsed() >= watch.report_every {
            let counters = engine.counters(watch.status.total_lag(&engine.committed_offsets()));
            let samples = engine.take_samples();
            drop(engine);
            observer.report(&counters, samples);
            last_report = Instant::now();
        }
    }
    lock(engine).commit(consumer)
}

/// Goes on after a failed round where that is safe, or returns the error that stops the loop.
/// `last_fence` is when this instance was last fenced.
fn recover(
    engine: &mut Engine,
    consumer: &BaseConsumer<InputContext>,
    error: RunError,
    last_fence: &mut Option<Instant>,
) -> Result<(), RunError> {
    match error {
        e @ (RunError::TransactionAborted { .. } | RunError::OutputsRefused(_)) => {
            tracing::warn!("{e}; rewinding to the last commit and going on");
            match engine.abort_and_rewind(consumer) {
                // Fenced meanwhile: the abort itself is refused.
                Err(fenced @ RunError::Fenced(_)) => recover(engine, consumer, fenced, last_fence),
                other => other,
            }
        }
        // Fenced once: a stalled instance whose transaction timed out, or a newer instance with
        // the same id that is gone again. Fenced again soon: two live instances share the id,
        // and taking it back would fence the other in turn; stop and say so.
        RunError::Fenced(id) if last_fence.is_none_or(|at| at.elapsed() > FENCED_AGAIN_WITHIN) => {
            tracing::warn!("fenced: a newer producer took over `{id}`; closing the partitions and starting again");
            *last_fence = Some(Instant::now());
            engine.rejoin_after_fence(consumer)
        }
        e => Err(e),
    }
}

/// Logs a consumer error that the client recovers from by itself; stops on one it cannot.
fn consumer_error(error: KafkaError) -> Result<(), RunError> {
    use rdkafka::types::RDKafkaErrorCode::*;
    match &error {
        KafkaError::MessageConsumptionFatal(_) => Err(RunError::kafka("consuming (fatal)", error)),
        KafkaError::MessageConsumption(
            TopicAuthorizationFailed | GroupAuthorizationFailed | ClusterAuthorizationFailed,
        ) => Err(RunError::kafka("consuming: check the ACLs of the application's principal", error)),
        _ => {
            tracing::warn!("consumer: {error}");
            Ok(())
        }
    }
}
