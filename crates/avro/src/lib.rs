//! crmflow's Avro contract.
//!
//! The schemas of every event crmflow reads or writes live in `schemas/*.avsc` at the
//! repository root (namespace `crmflow.events`, one record per event type, record name = event
//! type); superseded writer schemas live in `schemas/history/`. They are embedded at compile
//! time and served by [`SchemaRegistry::bundled`].
//!
//! The rest of crmflow works with the JSON form of events (a [`serde_json::Value`] object whose
//! `"type"` member names the event type). This crate converts that form to and from Avro
//! The [`confluent`] module reads and writes the Confluent Schema Registry wire format instead
//! (a registry's schema id in place of the fingerprint); its writer schemas come from the
//! registry, resolved against the same current schemas.
//!
//! [single-object encoding]: `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the
//! writer schema's Parsing Canonical Form, then the Avro binary datum.
//!
//! The conversion is directed by the schema, not by serde:
//!
//! | Avro                          | JSON                                                     |
//! |-------------------------------|----------------------------------------------------------|
//! | record                        | object; members matched by field name, others ignored    |
//! | `["null", T]` with default    | `null` or missing on input; `null` on output             |
//! | `long` + `timestamp-millis`   | RFC 3339 string; any offset on input, output UTC millis (`2024-05-01T10:00:00.000Z`) |
//! | enum                          | string (a symbol)                                        |
//! | map / array                   | object / array                                           |
//! | union                         | the inner value; the branch is picked by the JSON kind   |
//! | `long` / `double`             | integer / number (a double always comes back as a float) |
//!
//! Decoding resolves the writer schema named by the fingerprint against the *current* schema of
//! the same event type, so messages written with a historical schema come back in today's shape
//! (fields added since then take their defaults).
//!
//! Fingerprints follow the Avro spec (and the Java implementation) rather than apache-avro's
//! `Schema::fingerprint`, which differs for logical types; see the `fingerprint` module.
//!
//! The [`confluent`] module reads and writes the Confluent Schema Registry wire format instead
//! (a registry's schema id in place of the fingerprint); its writer schemas come from the
//! registry, resolved against the same current schemas.
//!
//! [single-object encoding]: https://avro.apache.org/docs/current/specification/#single-object-encoding
#![deny(missing_docs)]

pub mod confluent;
mod convert;
mod error;
mod fingerprint;
mod registry;

pub use confluent::WriterSchema;
pub use error::AvroError;
pub use registry::SchemaRegistry;
