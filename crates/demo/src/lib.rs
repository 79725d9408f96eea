//! A demo stream of crmflow input events: what `crmflow generate` publishes, and the
//! load the benchmarks run.
//!
//! [`DemoStream`] simulates a few companies whose sales reps work in their CRMs. It is
//! deterministic: a [`DemoConfig`] (seed included) always yields the same events with
//! the same timestamps, so a demo, a test and a benchmark can be reproduced exactly.
//!
//! The stream is shaped to tell crmflow's story to someone watching its output:
//!
//! 1. **Setup.** Each integration (Salesforce, HubSpot, ...) gets its settings and
//!    workflows: "Won opportunities", "Booked meetings" and, in rotation, workflows with
//!    `gte`, `in` and `starts_with` conditions and one inactive workflow. One integration
//!    in six has "Automatically sync users" off.
//! 2. **Flow.** Then, endlessly, CRM changes: deals advance, close, get their amounts
//!    corrected, reopen, change hands or are deleted; meetings are booked, rescheduled,
//!    turned into calls or cancelled. Reps appear one by one and are placed on a team
//!    a while later, so their first activities are ignored (`user_not_on_team`) and
//!    later ones accepted. Now and then a record has no owner (`missing_user_field`),
//!    a connector resends a change with the same `event_id`, or a rep moves team or is
//!    taken off one.
//!
//! [`to_envelope_line`] writes an event as the JSON Lines record `crmflow simulate`
//! reads, so a generated file can be replayed without Kafka.
#![deny(missing_docs)]

mod bad;
mod catalog;
mod stream;

use crmflow_codec::{Envelope, TopicNames};
use crmflow_domain::InputEvent;

pub use bad::{BadRecord, BadRecords};
pub use stream::DemoStream;

/// Knobs of the demo stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoConfig {
    /// Seed of the random choices; the same config always yields the same stream.
    pub seed: u64,
    /// Number of companies (tenants): `acme`, `globex`, `initech`, ... then `company-N`.
    pub companies: usize,
    /// CRM integrations of each company.
    pub integrations_per_company: usize,
    /// CRM users (sales reps) of each integration.
    pub users_per_integration: usize,
    /// Workflows saved for each integration.
    pub workflows_per_integration: usize,
    /// How many live CRM records each user owns at once, on average: the working set
    /// that updates revisit. Records leave it when deleted or closed for good, and new
    /// ones take their place.
    pub records_per_user: usize,
    /// Timestamp of the first event, epoch milliseconds.
    pub start_ms: i64,
    /// Spacing of the timestamps: consecutive events are `1000 / events_per_second` ms
    /// apart. A rate that is not positive gives every event `start_ms`.
    pub events_per_second: f64,
}

impl Default for DemoConfig {
    /// A demo that fits a screen: 3 companies × 2 integrations × 20 users, 3 workflows
    /// each, 10 events per second from 2024-05-01T10:00:00Z.
    fn default() -> Self {
        DemoConfig {
            seed: 42,
            companies: 3,
            integrations_per_company: 2,
            users_per_integration: 20,
            workflows_per_integration: 3,
            records_per_user: 5,
            start_ms: 1_714_557_600_000,
            events_per_second: 10.0,
        }
    }
}

/// One generated input event and the record timestamp it is published with.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoEvent {
    /// The Kafka record timestamp, epoch milliseconds (also the event's own instant).
    pub timestamp_ms: i64,
    /// The event.
    pub event: InputEvent,
}

/// The event as a JSON Lines record `{"topic","key","timestamp","value"}` (the
/// [`crmflow_codec::Envelope`] form) on its input topic, keyed by its company, as `crmflow simulate`
/// reads it.
pub fn to_envelope_line(e: &DemoEvent, topics: &TopicNames) -> Result<String, serde_json::Error> {
    let envelope = Envelope {
        topic: topics.input_topic(e.event.stream()).to_owned(),
        key: Some(e.event.company_id().to_owned()),
        timestamp: e.timestamp_ms,
        value: serde_json::to_value(&e.event)?,
        headers: Default::default(),
    };
    serde_json::to_string(&envelope)
}

#[cfg(test)]
mod tests;
