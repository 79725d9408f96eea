//! The `[schema_registry]` section of crmflow's configuration.

use std::fmt;

use serde::Deserialize;

/// Where the registry is and how to ask it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL, or several separated by commas (tried in order); empty: no registry.
    pub url: String,
    /// HTTP basic authentication as `user:password` (Confluent Cloud: API key and secret).
    pub basic_auth: String,
    /// A bearer token, instead of basic authentication.
    pub bearer_token: String,
    /// The subject crmflow registers an output topic's schema under.
    pub subject_name_strategy: SubjectNameStrategy,
    /// How long one HTTP request may take, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long a lookup asks a registry that does not answer again before processing stops
    /// with an error, in milliseconds.
    pub unavailable_timeout_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            url: String::new(),
            basic_auth: String::new(),
            bearer_token: String::new(),
            subject_name_strategy: SubjectNameStrategy::TopicName,
            request_timeout_ms: 10_000,
            unavailable_timeout_ms: 60_000,
        }
    }
}

// Written by hand so that a logged configuration never shows the credentials.
impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |secret: &str| if secret.is_empty() { "" } else { "<hidden>" };
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("basic_auth", &hidden(&self.basic_auth))
            .field("bearer_token", &hidden(&self.bearer_token))
            .field("subject_name_strategy", &self.subject_name_strategy)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("unavailable_timeout_ms", &self.unavailable_timeout_ms)
            .finish()
    }
}

impl RegistrySettings {
    /// What is wrong with the settings, if anything, said as what to fix.
    pub fn problem(&self) -> Option<String> {
        if self.url.split(',').any(|url| !(url.trim().starts_with("http://") || url.trim().starts_with("https://"))) {
            return Some(format!(
                "schema_registry.url `{}` must be one or more http:// or https:// URLs, separated by commas",
                self.url
            ));
        }
        if !self.basic_auth.is_empty() && !self.basic_auth.contains(':') {
            return Some("schema_registry.basic_auth must be `user:password`".into());
        }
        if !self.basic_auth.is_empty() && !self.bearer_token.is_empty() {
            return Some("set one of schema_registry.basic_auth and schema_registry.bearer_token, not both".into());
        }
        if self.request_timeout_ms == 0 {
            return Some("schema_registry.request_timeout_ms must be above 0".into());
        }
        None
    }

    /// The subject the schema of the records of `topic` whose record is `record_name` (full
    /// name, e.g. `crmflow.events.UserProvisioned`) is registered under.
    pub fn subject(&self, topic: &str, record_name: &str) -> String {
        match self.subject_name_strategy {
            SubjectNameStrategy::TopicName => format!("{topic}-value"),
            SubjectNameStrategy::RecordName => record_name.to_owned(),
            SubjectNameStrategy::TopicRecordName => format!("{topic}-{record_name}"),
        }
    }
}

/// How a subject is named, as in Confluent's serializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNameStrategy {
    /// `<topic>-value` (Confluent's default).
    TopicName,
    /// The record's full name.
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RegistrySettings {
        RegistrySettings { url: url.into(), ..RegistrySettings::default() }
    }

    #[test]
    fn subjects_follow_the_strategy() {
        let mut s = settings("http://r:8081");
        assert_eq!(s.subject("users.provisioned", "crmflow.events.UserProvisioned"), "users.provisioned-value");
        s.subject_name_strategy = SubjectNameStrategy::RecordName;
        assert_eq!(s.subject("t", "crmflow.events.UserProvisioned"), "crmflow.events.UserProvisioned");
        s.subject_name_strategy = SubjectNameStrategy::TopicRecordName;
        assert_eq!(s.subject("t", "crmflow.events.UserProvisioned"), "t-crmflow.events.UserProvisioned");
    }

    #[test]
    fn problems_say_what_to_fix() {
        assert_eq!(settings("http://a:1, https://b:2").problem(), None);
        assert!(settings("").problem().unwrap().contains("schema_registry.url"));
        assert!(settings("localhost:8081").problem().unwrap().contains("http://"));
        let both = RegistrySettings { basic_auth: "u:p".into(), bearer_token: "t".into(), ..settings("http://a:1") };
        assert!(both.problem().unwrap().contains("not both"));
        let no_colon = RegistrySettings { basic_auth: "key".into(), ..settings("http://a:1") };
        assert!(no_colon.problem().unwrap().contains("user:password"));
    }

    #[test]
    fn credentials_never_show() {
        let s = RegistrySettings { basic_auth: "key:secret".into(), ..settings("http://a:1") };
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret") && shown.contains("<hidden>"), "{shown}");
    }
}
