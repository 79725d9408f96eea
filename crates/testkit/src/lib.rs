//! The broker harness that crmflow's Kafka tests (`crates/cli/tests`) and `crmflow-bench` share.
//!
//! Both run `crmflow run` as a child process against a real Apache Kafka broker and judge it
//! from outside, through the broker: they need the same few things around it, and they live
//! here once.
//!
//! - [`broker`]: the broker itself (the project's own, started by `deploy/kafka/kafka.sh
//!   start`, or an existing cluster), client configurations for it, admin requests, and topics
//!   created and waited for until the metadata shows them.
//! - [`topics`]: the topics of one test or one benchmark run (crmflow's names behind a prefix)
//!   and the `CRMFLOW_TOPICS__…` variables that point a `crmflow` process at them.
//! - [`offsets`]: end offsets and a group's committed offsets, the two sides of "everything
//!   produced so far is processed".
//! - [`wait`]: polling for a condition with a deadline, instead of fixed sleeps.
//! - [`command`]: a `crmflow` command that does not inherit this process's `CRMFLOW_…`
//!   variables.
//!
//! What only the tests need (one broker per test binary, the processor as a child process,
//! comparing outputs with `crmflow simulate`) stays in `crates/cli/tests/support`; what only the
//! benchmark needs (the broker's JVM flags, measuring) stays in `crates/bench`.
//!
//! Everything blocks: the callers are test threads and a benchmark driver. Errors are
//! [`Error`]s that say what failed; the bench adds its context, the tests unwrap.
#![deny(missing_docs)]

pub mod broker;
pub mod command;
mod error;
pub mod offsets;
pub mod topics;
pub mod wait;

pub use broker::{kafka_script, repo_root, Admin, Broker};
pub use command::crmflow_command;
pub use error::Error;
pub use offsets::{committed, end_offsets, Offsets};
pub use topics::Topics;
pub use wait::wait_for;
