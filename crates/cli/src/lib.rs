//! The `crmflow` command's library side: the subcommands' logic, callable from tests.
//!
//! - [`simulate`]: the decision core over a JSON Lines file, no Kafka.
//! - [`generate`]: the demo stream, to Kafka or to a file.
#![deny(missing_docs)]

pub mod generate;
pub mod simulate;
