//! The error type of this crate.

use thiserror::Error;

/// Why an event could not be encoded to, or decoded from, Avro single-object encoding.
///
/// Every message names what is wrong and, where it applies, the event type and the
/// field path (e.g. `workflow.conditions[0].op`, `fields.amount`).
#[derive(Debug, Error)]
pub enum AvroError {
    /// The bytes are not Avro single-object encoding: too short, or the `C3 01` marker is missing.
    #[error("not an Avro single-object encoded message: {0}")]
    NotSingleObject(String),

    /// The bytes are not in the Confluent wire format: too short, or the magic byte is not 0.
    #[error("not a Confluent Schema Registry framed message: {0}")]
    NotConfluentFramed(String),

    /// The schema a registry holds under an id is no Avro schema of an event.
    #[error("registry schema {id} cannot be read: {message}")]
    WriterSchema {
        /// The registry's schema id.
        id: u32,
        /// What is wrong with it.
        message: String,
    },

    /// The writer-schema fingerprint in the message is not one of the bundled schemas.
    /// Holds the 8 fingerprint bytes as hex, in the order they appear in the message
    /// (little-endian CRC-64-AVRO).
    #[error(
        "unknown writer schema fingerprint {0} (CRC-64-AVRO, little-endian as in the message): \
         the message was written with a schema this build does not know"
    )]
    UnknownFingerprint(String),

    /// The JSON event is not an object, or has no string `"type"` discriminator.
    #[error("not a crmflow event: {0}")]
    NotAnEvent(String),

    /// The event's `"type"` is not a known event type.
    #[error("unknown event type {0:?}")]
    UnknownType(String),

    /// The JSON event does not fit the Avro schema of its type.
    #[error("{event_type} does not fit its Avro schema at {path}: {message}")]
    SchemaViolation {
        /// The event type (the JSON `"type"`).
        event_type: String,
        /// Where in the event, e.g. `fields.amount` or `workflow.conditions[0].op`;
        /// `(event)` for the event itself.
        path: String,
        /// What is wrong, e.g. `expected a string, got 42`.
        message: String,
    },

    /// The datum after the single-object header could not be decoded or resolved against the
    /// current schema (corrupt or truncated bytes, trailing bytes, incompatible writer schema).
    #[error("undecodable Avro datum: {0}")]
    Undecodable(String),

    /// apache-avro refused to write a value this crate produced from the schema. Indicates a bug
    /// in this crate's converter rather than bad input.
    #[error("internal error encoding {event_type}: {message}")]
    Encode {
        /// The event type being encoded.
        event_type: String,
        /// apache-avro's error.
        message: String,
    },
}
