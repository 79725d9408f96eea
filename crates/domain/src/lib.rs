//! The pure decision core of crmflow.
//!
//! crmflow turns CRM change events into account provisioning and sales activities.
//! This crate holds the whole of that logic and nothing else: no Kafka, no RocksDB,
//! no clock, no randomness. The shape follows a decider:
//!
//! - [`events`]: the contract, inputs ([`InputEvent`]) and outputs ([`OutputEvent`]).
//! - [`workflow`]: workflow definitions and condition evaluation.
//! - [`state`]: the projections decisions read ([`StateView`]) and the writes they
//!   ask for ([`StateChange`]); [`MemoryState`] keeps them in memory.
//! - [`decide()`]: `(state, event) -> Decision { changes, outputs, tally }`.
//! - [`explain()`]: the same decision and an [`Explanation`] of it (see [`mod@explain`]).
//! - [`ids`]: name-based UUIDs, so replays reproduce every identifier.
//!
//! The runtime shell feeds events in order, persists `changes` atomically with the
//! published `outputs`, and exports the [`Tally`].
#![deny(missing_docs)]

pub mod decide;
pub mod events;
pub mod explain;
pub mod ids;
pub mod scalar;
pub mod state;
pub mod tally;
pub mod time;
pub mod workflow;

pub use decide::{decide, explain, Decision};
pub use events::*;
pub use explain::{
    ConditionCheck, ConfigurationExplanation, CrmChangeExplanation, Effect, Explanation, OutputLink, Rule, UnknownRule,
    WorkflowExplanation,
};
pub use scalar::Scalar;
pub use state::{Account, Integration, LedgerEntry, MemoryState, StateChange, StateView};
pub use tally::Tally;
pub use time::Timestamp;
pub use workflow::{Condition, ConditionValue, Operation, Operator, Workflow};
