//! The JSON Lines form of a Kafka record used by `crmflow simulate` and the scenario files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One record as a JSON line: `{"topic", "key", "timestamp", "value", "headers"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The topic.
    pub topic: String,
    /// The record key (the company id), if any.
    pub key: Option<String>,
    /// The record timestamp, epoch milliseconds.
    pub timestamp: i64,
    /// The value: an event object, or for dead letters the original text.
    pub value: Value,
    /// Record headers, if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}
