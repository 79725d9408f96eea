//! The `crmflow` command's library side: the subcommands' logic, callable from tests.
//!
//! - [`simulate`]: the decision core over a JSON Lines file, no Kafka.
//! - [`generate`]: the demo stream, to Kafka or to a file.
//! - [`replay`], [`diff`], [`reset`]: the operator commands: reprocess the history into shadow
//!   topics, compare them with the live outputs, start an application over ([`point`]: where).
#![deny(missing_docs)]

pub mod diff;
pub mod generate;
pub mod point;
pub mod replay;
pub mod reset;
pub mod simulate;
