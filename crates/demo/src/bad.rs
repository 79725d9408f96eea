//! Malformed records, of the kinds connectors and operators send by mistake, mixed into the
//! demo stream so that tests and demos show the dead-letter path next to the good one.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crmflow_codec::{Envelope, TopicNames};

use crate::DemoEvent;

/// One malformed input record: where it is sent, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The input topic it is sent to.
    pub topic: String,
    /// Its key, if it has one.
    pub key: Option<String>,
    /// Its record timestamp (that of the good event it follows, so it merges in place).
    pub timestamp: i64,
    /// Its value, as sent.
    pub value: Vec<u8>,
    /// Whether the value is a JSON document; if not, its line form is the raw bytes.
    json: bool,
}

impl BadRecord {
    /// The record as a line of a `crmflow simulate` file: an envelope when its value is JSON,
    /// else the raw bytes (which simulate, like the Kafka path, cannot decode).
    pub fn to_line(&self) -> Vec<u8> {
        if !self.json {
            return self.value.clone();
        }
        let value = serde_json::from_slice(&self.value).unwrap_or(serde_json::Value::Null);
        let envelope = Envelope {
            topic: self.topic.clone(),
            key: self.key.clone(),
            timestamp: self.timestamp,
            value,
            headers: Default::default(),
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

/// Decides, after each good event, whether a malformed record follows it, and builds it.
/// Deterministic for a seed, like the demo stream.
#[derive(Debug, Clone)]
pub struct BadRecords {
    rng: SmallRng,
    ratio: f64,
    made: u64,
}

/// How many kinds [`BadRecords`] cycles through.
pub const BAD_KINDS: u64 = 5;

impl BadRecords {
    /// About `ratio` of the records (0 to 1) will be malformed.
    pub fn new(seed: u64, ratio: f64) -> Self {
        // A seed of its own, so the good events are the same with and without bad ones.
        BadRecords { rng: SmallRng::seed_from_u64(seed ^ 0xBAD_5EED), ratio: ratio.clamp(0.0, 1.0), made: 0 }
    }

    /// The malformed record to send after `good`, if one goes there.
    pub fn after(&mut self, good: &DemoEvent, topics: &TopicNames) -> Option<BadRecord> {
        if self.ratio <= 0.0 || !self.rng.random_bool(self.ratio) {
            return None;
        }
        let kind = self.made % BAD_KINDS;
        self.made += 1;
        let company = good.event.company_id();
        let crm = topics.crm_changes.clone();
        let json = |topic: String, key: &str, value: serde_json::Value| BadRecord {
            topic,
            key: Some(key.to_owned()),
            timestamp: good.timestamp_ms,
            value: value.to_string().into_bytes(),
            json: true,
        };
        let raw = |value: Vec<u8>| BadRecord {
            topic: crm.clone(),
            key: None,
            timestamp: good.timestamp_ms,
            value,
            json: false,
        };
        Some(match kind {
            0 => raw(format!("{{\"type\": \"CrmRecordChanged\", \"company_id\": \"{company}\", trunc").into_bytes()),
            1 => raw([&b"\xff\xfe"[..], format!("binary from {company} ").as_bytes(), b"\xc3\x28"].concat()),
            2 => json(crm, company, serde_json::json!({"type": "CrmRecordMerged", "company_id": company})),
            // A change without its object id: a schema violation.
            3 => json(
                crm,
                company,
                serde_json::json!({"type": "CrmRecordChanged", "event_id": format!("bad-{}", self.made),
                    "company_id": company, "integration_id": "sf", "object_type": "Opportunity",
                    "operation": "created", "occurred_at": "2024-05-01T10:00:00Z", "fields": {}}),
            ),
            // A good event under another company's key.
            _ => json(
                topics.input_topic(good.event.stream()).to_owned(),
                "no-such-company",
                serde_json::to_value(&good.event).unwrap_or_default(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DemoConfig, DemoStream};

    #[test]
    fn the_ratio_and_every_kind_show_up() {
        let topics = TopicNames::default();
        let mut bad = BadRecords::new(7, 0.1);
        let records: Vec<BadRecord> =
            DemoStream::new(DemoConfig::default()).take(2000).filter_map(|e| bad.after(&e, &topics)).collect();
        assert!((150..250).contains(&records.len()), "{}", records.len());
        assert!(records.iter().any(|r| std::str::from_utf8(&r.to_line()).is_err()), "a line that is not UTF-8");
        assert!(records.iter().any(|r| r.key.as_deref() == Some("no-such-company")));
    }

    #[test]
    fn no_ratio_no_bad_records() {
        let topics = TopicNames::default();
        let mut bad = BadRecords::new(7, 0.0);
        assert!(DemoStream::new(DemoConfig::default()).take(100).all(|e| bad.after(&e, &topics).is_none()));
    }
}
