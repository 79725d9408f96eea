//! What can go wrong in the harness.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A failure of the harness; each message says what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, directory or process of the harness could not be made.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `kafka.sh start` printed no address: it exited before the broker answered.
    #[error("deploy/kafka/kafka.sh did not start the broker:\n{log}")]
    NotStarted {
        /// The script's log (its stderr), which says why.
        log: String,
    },
    /// A Kafka client could not be created, or one of its requests failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What the harness was doing.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The broker refused a topic for another reason than that it exists already.
    #[error("creating topic {topic}: {code}")]
    TopicNotCreated {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// A condition polled for did not come true in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    TimedOut {
        /// The condition.
        what: String,
        /// How long it was given.
        timeout: Duration,
    },
}

impl Error {
    /// A Kafka client error, with what the harness was doing.
    pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let context = context.into();
        move |source| Error::Kafka { context, source }
    }

    /// An I/O error, with what the harness was doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
