//! Maps Kafka records to crmflow events and back.
//!
//! Everything here is pure data mapping, shared by `crmflow simulate` and the Kafka runtime:
//! - [`decode_input`]: record value + key of an input topic → a checked [`InputEvent`], or a
//!   [`DecodeError`] whose [`ErrorKind`] and message go to the dead-letter topic.
//! - [`encode_output`]: an [`OutputEvent`] → record value, in JSON or Avro ([`Encoding`]).
//! - [`TopicNames`]: which topic carries which stream.
//! - [`dead_letter_headers`]: the headers that explain a dead letter.
//! - [`Envelope`]: the JSON Lines record form of simulate and the scenario files.
//!
//! [`InputEvent`]: crmflow_domain::InputEvent
//! [`OutputEvent`]: crmflow_domain::OutputEvent
#![deny(missing_docs)]

pub mod dead_letter;
pub mod encoding;
pub mod envelope;
pub mod error;
pub mod input;
pub mod output;
pub mod topics;

pub use dead_letter::{dead_letter_headers, Source};
pub use encoding::Encoding;
pub use envelope::Envelope;
pub use error::{DecodeError, EncodeError, ErrorKind};
pub use input::{decode_input, decode_input_value};
pub use output::{decode_output, encode_output};
pub use topics::TopicNames;
