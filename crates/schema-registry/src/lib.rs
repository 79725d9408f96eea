//! crmflow's client of a Confluent Schema Registry, for topics whose encoding is
//! `confluent-avro`: the writer schema of an id, fetched once and cached (a registry never
//! changes the schema of an id), and crmflow's own output schemas registered under their
//! subjects at start.
//!
//! HTTP, authentication and the registry's error answers are `schema_registry_converter`'s; the
//! Avro side (framing, resolution against crmflow's schemas) is `crmflow-avro`'s. What this crate
//! adds is the line between a record's fault (an id the registry does not have, a schema that is
//! no event: the record is a dead letter) and the registry's (it does not answer: processing
//! waits, then stops, and the record is decided after a restart).
#![deny(missing_docs)]

mod client;
mod settings;

pub use client::{LookupError, RegistryClient, RegistryError};
pub use settings::{RegistrySettings, SubjectNameStrategy};
