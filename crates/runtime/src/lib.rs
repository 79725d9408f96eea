//! The Kafka runtime of crmflow: the imperative shell around the pure decision core.
//!
//! Data flow, one module each:
//! - [`config`]: the TOML/env configuration and the only place that builds librdkafka configs.
//! - [`setup`]: start-up checks (brokers reachable, inputs co-partitioned, outputs exist).
//! - [`merge`]: the pure timestamp-ordered merge of a partition's three input streams.
//! - [`processor`]: one partition's record → decision → output mapping over its RocksDB store.
//! - [`service`]: the consume → process → produce → commit loop, the only code that talks to Kafka.
//! - [`dev_broker`]: librdkafka's mock cluster as a standalone broker for development and tests.
//! - [`report`]: counters and sample events for operators; [`shutdown`]: the stop signal.
#![deny(missing_docs)]

pub mod config;
pub mod dev_broker;
pub mod error;
pub mod kafka;
pub mod merge;
pub mod processor;
pub mod report;
pub mod resume;
pub mod service;
pub mod setup;
pub mod shutdown;

pub use config::{Config, ProcessingGuarantee};
pub use error::RunError;
pub use service::{run, Observer, Watch};
pub use shutdown::Shutdown;
