//! The `crmflow` command's library side: the subcommands' logic, callable from tests.
//!
//! - [`simulate`]: the decision core over a JSON Lines file, no Kafka.
#![deny(missing_docs)]

pub mod simulate;
