//! The Kafka runtime of crmflow: the imperative shell around the pure decision core.
//!
//! Data flow, one module each:
//! - [`config`]: the TOML/env configuration and the only place that builds librdkafka configs.
//! - [`setup`]: start-up checks (brokers reachable, inputs co-partitioned, outputs exist).
//! - [`merge`]: the pure timestamp-ordered merge of a partition's three input streams.
//! - [`processor`]: one partition's record → decision → output mapping over its RocksDB store.
//! - [`restore`]: whether an assigned partition's store is current, and restoring it from its
//!   changelog (the tail only where it can) on a thread of its own.
//! - [`resume`]: where an assigned partition's inputs resume, and which replayed records publish nothing.
//! - [`engine`]: the partition tasks, the producer and the three commits (Kafka transaction,
//!   RocksDB batch, consumer offsets); generic over the consumer's context.
//! - [`consumer`]: the consumer's context (rebalance callbacks into the engine, lag);
//!   [`producer`]: delivery tracking and a back-pressured send.
//! - [`service`]: the wiring and the consume → process → produce → commit loop.
//! - [`operations`]: offsets, group members, topic deletion and reading to end offsets, for
//!   the operator commands (`crmflow replay`, `diff`, `reset`).
//! - [`dev_broker`]: librdkafka's mock cluster as a standalone broker for development and tests.
//! - [`status`]: readiness, metrics and the stores for queries, read by the HTTP server;
//!   [`peers`]: the other instances' HTTP addresses, from the consumer group;
//!   [`report`]: counters and sample events for the log; [`shutdown`]: the stop signal.
#![deny(missing_docs)]

pub mod changelog_topic;
pub mod config;
pub mod consumer;
pub mod dev_broker;
pub mod engine;
pub mod error;
pub mod merge;
pub mod operations;
pub mod peers;
pub mod processor;
pub mod producer;
pub mod report;
pub mod restore;
pub mod resume;
pub mod service;
pub mod setup;
pub mod shutdown;
pub mod status;

pub use config::{Config, ProcessingGuarantee};
pub use error::RunError;
pub use service::{run, Observer, Watch};
pub use shutdown::Shutdown;
pub use status::Status;
