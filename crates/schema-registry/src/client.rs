//! Asking the registry: writer schemas by id, registration of crmflow's own schemas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};
use crmflow_avro::WriterSchema;
use schema_registry_converter::blocking::schema_registry::{get_schema_by_id, post_schema, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::RegistrySettings;

/// The registry's error code for an id or a subject it does not have.
const SCHEMA_NOT_FOUND: &str = "error_code: 40403";

/// The registry failed crmflow, not the record: it cannot be reached, refuses the credentials,
/// or answers what it should not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The `[schema_registry]` settings cannot be used.
    #[error("{0}")]
    Settings(String),
    /// The registry did not answer in time, however often it was asked.
    #[error("the schema registry at {url} did not answer {what} within {waited_ms} ms: {message}")]
    Unavailable {
        /// The registry's URL(s).
        url: String,
        /// What was asked.
        what: String,
        /// How long it was asked again.
        waited_ms: u64,
        /// The last failure.
        message: String,
    },
    /// The registry refused a request that does not depend on any record (e.g. registering
    /// crmflow's schema: an incompatible subject, wrong credentials).
    #[error("the schema registry at {url} refused {what}: {message}")]
    Refused {
        /// The registry's URL(s).
        url: String,
        /// What was asked.
        what: String,
        /// Its answer.
        message: String,
    },
}

/// Why a record's writer schema is not to be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The record names a schema the registry does not have, or one that is no Avro event
    /// schema: the record is a dead letter.
    #[error("{0}")]
    Record(String),
    /// The registry failed: processing cannot go on without it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A client of one registry, shared by the processing threads.
pub struct RegistryClient {
    settings: SrSettings,
    url: String,
    unavailable_timeout: Duration,
    /// Writer schemas by id: a registry never changes the schema of an id. What the registry
    /// does not have is not remembered: it may be registered later.
    writers: Mutex<HashMap<u32, Arc<WriterSchema>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("url", &self.url).finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `settings` (checked here; nothing is asked yet).
    pub fn new(settings: &RegistrySettings) -> Result<RegistryClient, RegistryError> {
        if let Some(problem) = settings.problem() {
            return Err(RegistryError::Settings(problem));
        }
        let mut urls = settings.url.split(',').map(|url| url.trim().trim_end_matches('/').to_owned());
        let mut builder = SrSettings::new_builder(urls.next().unwrap_or_default());
        for url in urls {
            builder.add_url(url);
        }
        if let Some((user, password)) = settings.basic_auth.split_once(':') {
            builder.set_basic_authorization(user, Some(password));
        }
        if !settings.bearer_token.is_empty() {
            builder.set_token_authorization(&settings.bearer_token);
        }
        builder.set_timeout(Duration::from_millis(settings.request_timeout_ms));
        let built =
            builder.build().map_err(|e| RegistryError::Settings(format!("schema_registry: {}", describe(&e))))?;
        Ok(RegistryClient {
            settings: built,
            url: settings.url.clone(),
            unavailable_timeout: Duration::from_millis(settings.unavailable_timeout_ms),
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// The writer schema registered under `id`.
    pub fn writer_schema(&self, id: u32) -> Result<Arc<WriterSchema>, LookupError> {
        if let Some(writer) = self.writers.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(Arc::clone(writer));
        }
        let what = format!("schema id {id}");
        let registered = match self.ask(&what, || get_schema_by_id(id, &self.settings)) {
            Ok(registered) => registered,
            Err(e) if not_found(&e) => {
                return Err(LookupError::Record(format!(
                    "schema id {id} is not in the schema registry at {}",
                    self.url
                )))
            }
            Err(e) => return Err(self.failure(&what, &e).into()),
        };
        if registered.schema_type != SchemaType::Avro {
            return Err(LookupError::Record(format!(
                "schema id {id} is a {:?} schema; crmflow reads Avro",
                registered.schema_type
            )));
        }
        let writer =
            Arc::new(WriterSchema::parse(id, &registered.schema).map_err(|e| LookupError::Record(e.to_string()))?);
        self.writers.lock().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::clone(&writer));
        Ok(writer)
    }

    /// Registers `schema` (Avro schema JSON) under `subject`, or finds it there, and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let what = format!("registering the schema of subject {subject}");
        let supplied = || SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        self.ask(&what, || post_schema(&self.settings, subject.to_owned(), supplied()))
            .map(|registered| registered.id)
            .map_err(|e| self.failure(&what, &e))
    }

    /// Calls `request`, again while the registry fails in a way that may pass (no answer, 502,
    /// 503), for up to the unavailable timeout.
    fn ask<T>(&self, what: &str, request: impl FnMut() -> Result<T, SRCError>) -> Result<T, SRCError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times()
            .with_total_delay(Some(self.unavailable_timeout));
        request
            .retry(backoff)
            .sleep(std::thread::sleep)
            .when(|e| e.retriable)
            .notify(|e, after| {
                tracing::warn!(url = %self.url, "the schema registry failed {what}; asking again in {after:?}: {}", describe(e));
            })
            .call()
    }

    fn failure(&self, what: &str, e: &SRCError) -> RegistryError {
        let (url, what, message) = (self.url.clone(), what.to_owned(), describe(e));
        if e.retriable {
            RegistryError::Unavailable { url, what, waited_ms: self.unavailable_timeout.as_millis() as u64, message }
        } else {
            RegistryError::Refused { url, what, message }
        }
    }
}

/// Whether the registry answered that it has no such schema.
fn not_found(e: &SRCError) -> bool {
    !e.retriable && e.cause.as_deref().is_some_and(|cause| cause.contains(SCHEMA_NOT_FOUND))
}

/// The error and its cause in one sentence.
fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registrys_not_found_answer_blames_the_record() {
        let missing =
            SRCError::new("HTTP request failed with status 404", Some("error_code: 40403, message: x".into()), false);
        assert!(not_found(&missing));
        // A 404 without the registry's code is a wrong URL, not an unknown id.
        assert!(!not_found(&SRCError::new("HTTP request failed with status 404", None, false)));
        assert!(!not_found(&SRCError::new("connection refused", Some("error_code: 40403".into()), true)));
    }

    #[test]
    fn a_registry_that_does_not_answer_is_unavailable_after_the_timeout() {
        // Nothing listens on port 9 of loopback (discard): every request fails at once.
        let settings = RegistrySettings {
            url: "http://127.0.0.1:9".into(),
            unavailable_timeout_ms: 300,
            ..RegistrySettings::default()
        };
        let client = RegistryClient::new(&settings).unwrap();
        match client.writer_schema(1) {
            Err(LookupError::Registry(e @ RegistryError::Unavailable { .. })) => {
                assert!(e.to_string().contains("did not answer schema id 1 within 300 ms"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unusable_settings_fail_before_any_request() {
        let err = RegistryClient::new(&RegistrySettings::default()).unwrap_err();
        assert!(matches!(err, RegistryError::Settings(m) if m.contains("schema_registry.url")));
    }
}
