//! Why `crmflow run` stopped.

use rdkafka::error::KafkaError;

use crate::processor::ProcessError;

/// A failure of the runtime; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The brokers cannot be reached.
    #[error("{0}")]
    Brokers(String),
    /// The topics are missing or not co-partitioned.
    #[error("{0}")]
    Topics(String),
    /// A Kafka client call failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What crmflow was doing.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
    /// Another producer took over this instance's transactional id.
    #[error(
        "fenced: a newer producer took over the transactional id `{0}` (application_id.instance_id): another \
         crmflow instance with the same instance_id (give every replica its own), or this instance was stalled \
         past transaction.timeout.ms"
    )]
    Fenced(String),
    /// The transaction failed and must be aborted; the producer stays usable, so processing goes
    /// on from the last commit (see `Engine::abort_and_rewind`).
    #[error("{context}: {source}; the transaction is aborted")]
    TransactionAborted {
        /// What crmflow was doing.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The broker refused outputs for good (`at_least_once`); their records are set aside as dead
    /// letters and the round is redone.
    #[error("the broker refused outputs for good ({0}); setting their records aside")]
    OutputsRefused(String),
    /// The broker rejected outputs; offsets were not committed.
    #[error("{0}")]
    Delivery(String),
    /// Processing a partition failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The state directory cannot be created.
    #[error("cannot create the state directory {path}: {source}; set `state_dir` to a writable path")]
    StateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A state store cannot be used.
    #[error(transparent)]
    Store(#[from] crmflow_store::StoreError),
    /// The threads that process partitions cannot be started.
    #[error("cannot start {threads} processing threads: {source}; lower `processing_threads`")]
    Threads {
        /// How many were asked for.
        threads: usize,
        /// Why not.
        source: rayon::ThreadPoolBuildError,
    },
    /// A state store could not be restored from its changelog.
    #[error(transparent)]
    Restore(#[from] Box<crate::restore::RestoreError>),
}

impl From<crate::restore::RestoreError> for RunError {
    fn from(error: crate::restore::RestoreError) -> Self {
        RunError::Restore(Box::new(error))
    }
}

impl RunError {
    /// A Kafka client failure with what crmflow was doing.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        RunError::Kafka { context: context.into(), source }
    }
}
