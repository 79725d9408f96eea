//! How a topic's record values are written.

use serde::{Deserialize, Serialize};

/// The wire format of a topic's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// UTF-8 JSON objects with a `type` field.
    #[default]
    Json,
    /// Avro single-object encoding (`C3 01`, CRC-64-AVRO fingerprint, datum), schemas from `schemas/`.
    Avro,
}
