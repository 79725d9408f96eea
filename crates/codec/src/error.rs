//! Why a record could not become an input event.

use std::fmt;

/// The class of a decoding failure, written to the dead-letter header `crmflow.error.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The bytes are not JSON / not Avro single-object encoding.
    Undecodable,
    /// The `type` is missing or not one crmflow knows.
    UnknownType,
    /// A field is missing or has the wrong type.
    SchemaViolation,
    /// The event parsed but breaks a contract rule (empty id, invalid workflow).
    ContractViolation,
    /// The record key is missing or differs from the event's `company_id`.
    WrongKey,
    /// The event type does not belong on the topic it arrived on.
    WrongTopic,
    /// The topic is not one of crmflow's inputs.
    UnknownTopic,
    /// The broker refused the record's outputs for good (too large, a timestamp outside the
    /// topic's limits): the record is set aside rather than retried forever.
    RejectedByBroker,
    /// The event would make a state value larger than the changelog can take (an integration
    /// with too many or too large workflows): its decision is not applied.
    StateTooLarge,
}

impl ErrorKind {
    /// The name written in dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Undecodable => "undecodable",
            ErrorKind::UnknownType => "unknown_type",
            ErrorKind::SchemaViolation => "schema_violation",
            ErrorKind::ContractViolation => "contract_violation",
            ErrorKind::WrongKey => "wrong_key",
            ErrorKind::WrongTopic => "wrong_topic",
            ErrorKind::UnknownTopic => "unknown_topic",
            ErrorKind::RejectedByBroker => "rejected_by_broker",
            ErrorKind::StateTooLarge => "state_too_large",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that cannot be processed, with a message that says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct DecodeError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// A sentence for the operator.
    pub message: String,
}

impl DecodeError {
    /// Builds an error of a kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DecodeError { kind, message: message.into() }
    }

    /// An event whose decision would make a changelog record of `bytes` (in column family
    /// `family`), above the `limit` the changelog takes.
    pub fn state_too_large(family: &str, bytes: usize, limit: usize) -> Self {
        DecodeError::new(
            ErrorKind::StateTooLarge,
            format!(
                "applying this event would make a `{family}` changelog record of {bytes} bytes, above the {limit} \
                 bytes the changelog takes (the smaller of the producer's message.max.bytes and the changelog \
                 topic's max.message.bytes, less framing); its decision is not applied. Split the workflows over \
                 integrations, or raise both limits"
            ),
        )
    }
}

/// An output event that could not be encoded (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// JSON serialization failed.
    #[error("encoding JSON failed: {0}")]
    Json(#[from] serde_json::Error),
    /// The event does not fit its Avro schema.
    #[error("encoding Avro failed: {0}")]
    Avro(#[from] crmflow_avro::AvroError),
}
