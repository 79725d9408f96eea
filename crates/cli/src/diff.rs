//! `crmflow diff`: what a replay's shadow outputs add, remove and revise against the live ones.
//!
//! Both sides are read with read_committed, every partition, to the end offsets taken at start.
//! Output events are matched by their deterministic `event_id`: an id only in the shadow is
//! added, only live is removed, on both sides with different content is revised. Dead letters
//! have no id; they are matched by their source record (input topic, partition, error kind, key
//! and value) as a multiset, since a replay with `--settings` reads the settings from a copy
//! where the same record has another offset.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

use crmflow_codec::dead_letter::{HEADER_ERROR_KIND, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC};
use crmflow_codec::{decode_output, Encoding};
use crmflow_runtime::operations::{OperationError, Operations};
use crmflow_runtime::Config;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct DiffRequest {
    /// The replay's suffix (`crmflow replay --into`).
    pub shadow: String,
    /// Samples shown of each of added, removed and revised.
    pub samples: usize,
    /// Only outputs stamped at or after this instant (epoch ms) on both sides: for a replay
    /// `--from` a time, whose shadow holds outputs from that time on only.
    pub since: Option<i64>,
}

/// Why a diff could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The shadow's topics are not there.
    #[error("shadow `{shadow}` has no topic `{topic}`; run `crmflow replay --into {shadow}` first")]
    NoShadow {
        /// The suffix.
        shadow: String,
        /// The missing topic.
        topic: String,
    },
    /// The shadow's name cannot be used.
    #[error("--shadow: {0}")]
    Suffix(crmflow_runtime::config::ConfigError),
    /// An output that does not decode.
    #[error("`{topic}` [{partition}] at {offset}: {message}")]
    Undecodable {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset.
        offset: i64,
        /// Why.
        message: String,
    },
    /// Kafka refused a request.
    #[error(transparent)]
    Operation(#[from] OperationError),
}

/// One side's outputs: events by id, dead letters by their source record.
#[derive(Debug, Default)]
struct Side {
    events: BTreeMap<String, Value>,
    dead_letters: BTreeMap<DeadLetterKey, Vec<Value>>,
}

/// What identifies a dead letter across a replay: its source record, not its offsets.
type DeadLetterKey = (String, String, String, Option<String>, Vec<u8>);

/// Outputs in one direction (added or removed), or revised.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// Counts per category: the output type (`ActivityIgnored` with its reason), or
    /// `dead letter` with its error kind.
    pub by_category: BTreeMap<String, u64>,
    /// Up to the requested number of samples: the output (added, removed), or
    /// `{"event_id","live","shadow"}` (revised).
    pub samples: Vec<Value>,
}

impl Changes {
    /// The number of outputs.
    pub fn total(&self) -> u64 {
        self.by_category.values().sum()
    }

    fn add(&mut self, category: String, sample: Value, limit: usize) {
        *self.by_category.entry(category).or_default() += 1;
        if self.samples.len() < limit {
            self.samples.push(sample);
        }
    }

    fn to_json(&self) -> Value {
        json!({"total": self.total(), "by_category": self.by_category, "samples": self.samples})
    }
}

/// The difference between live and shadow outputs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// The shadow's suffix.
    pub shadow: String,
    /// Live outputs compared (events, dead letters).
    pub live: (u64, u64),
    /// Shadow outputs compared (events, dead letters).
    pub shadowed: (u64, u64),
    /// Only in the shadow.
    pub added: Changes,
    /// Only live.
    pub removed: Changes,
    /// Same id, different content (categories: the shadow's).
    pub revised: Changes,
    /// The same on both sides.
    pub unchanged: u64,
}

impl Diff {
    /// Whether the shadow equals the live outputs.
    pub fn is_empty(&self) -> bool {
        self.added.total() + self.removed.total() + self.revised.total() == 0
    }

    /// The diff as one JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "shadow": self.shadow,
            "live": {"outputs": self.live.0, "dead_letters": self.live.1},
            "shadow_outputs": {"outputs": self.shadowed.0, "dead_letters": self.shadowed.1},
            "unchanged": self.unchanged,
            "added": self.added.to_json(),
            "removed": self.removed.to_json(),
            "revised": self.revised.to_json(),
        })
    }
}

/// Reads the live and the shadow outputs to their end offsets and compares them.
pub fn diff(config: &Config, request: &DiffRequest) -> Result<Diff, DiffError> {
    // The settings copy's name only matters for naming dead letters' sources.
    let shadow_config = config.replay_config(&request.shadow, true).map_err(DiffError::Suffix)?;
    let ops = Operations::connect(config)?;
    let live_topics = config.topics.outputs();
    let shadow_topics = shadow_config.topics.outputs();
    if let Some(missing) = shadow_topics.iter().find(|t| ops.partitions(t).is_none()) {
        return Err(DiffError::NoShadow { shadow: request.shadow.clone(), topic: missing.to_string() });
    }
    let existing_live: Vec<&str> = live_topics.iter().copied().filter(|t| ops.partitions(t).is_some()).collect();
    let live_ends = ops.end_offsets(&existing_live)?;
    let shadow_ends = ops.end_offsets(&shadow_topics)?;
    let encodings: BTreeMap<&str, Encoding> = [
        (config.encoding.users_provisioned, 0),
        (config.encoding.activities_accepted, 1),
        (config.encoding.activities_ignored, 2),
    ]
    .into_iter()
    .flat_map(|(encoding, i)| [(live_topics[i], encoding), (shadow_topics[i], encoding)])
    .collect();
    let dead_letter_topics = [live_topics[3], shadow_topics[3]];
    let copy = &shadow_config.topics.integration_settings;
    let live_settings = &config.topics.integration_settings;
    let mut sides = [Side::default(), Side::default()];
    for (side, ends) in sides.iter_mut().zip([&live_ends, &shadow_ends]) {
        ops.read_to(ends, |m| {
            if request.since.is_some_and(|since| m.timestamp().to_millis().is_some_and(|t| t < since)) {
                return Ok(());
            }
            if dead_letter_topics.contains(&m.topic()) {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let mut source = header(HEADER_SOURCE_TOPIC);
                if &source == copy {
                    source = live_settings.clone();
                }
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let value = m.payload().unwrap_or_default().to_vec();
                let sample = json!({
                    "dead_letter": header(HEADER_ERROR_KIND),
                    "source_topic": source,
                    "source_partition": header(HEADER_SOURCE_PARTITION),
                    "key": key,
                    "value": String::from_utf8_lossy(&value),
                });
                let entry = (source, header(HEADER_SOURCE_PARTITION), header(HEADER_ERROR_KIND), key, value);
                side.dead_letters.entry(entry).or_default().push(sample);
                return Ok(());
            }
            let encoding = encodings.get(m.topic()).copied().unwrap_or(Encoding::Json);
            let undecodable = |message: String| DiffError::Undecodable {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                message,
            };
            let event = decode_output(m.payload().unwrap_or_default(), encoding)
                .map_err(|e| undecodable(e.to_string()))
                .and_then(|e| serde_json::to_value(e).map_err(|e| undecodable(e.to_string())));
            match event {
                Ok(value) => {
                    let id = value["event_id"].as_str().unwrap_or_default().to_owned();
                    // A repeat of an id (at_least_once after a crash) is the same output again.
                    side.events.entry(id).or_insert(value);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!("skipping an output: {e}");
                    Ok(())
                }
            }
        })?;
    }
    let [live, shadow] = sides;
    Ok(compare(&request.shadow, live, shadow, request.samples))
}

/// The output's category for the counts: its type, with the reason of an ignored activity.
fn category(value: &Value) -> String {
    let kind = value["type"].as_str().unwrap_or("unknown");
    match value["reason"].as_str() {
        Some(reason) if kind == "ActivityIgnored" => format!("{kind} ({reason})"),
        _ => kind.to_owned(),
    }
}

fn compare(suffix: &str, live: Side, mut shadow: Side, limit: usize) -> Diff {
    let count = |side: &Side| (side.events.len() as u64, side.dead_letters.values().map(|v| v.len() as u64).sum());
    let mut diff = Diff { shadow: suffix.to_owned(), live: count(&live), shadowed: count(&shadow), ..Diff::default() };
    for (id, value) in live.events {
        match shadow.events.remove(&id) {
            None => diff.removed.add(category(&value), value, limit),
            Some(other) if other == value => diff.unchanged += 1,
            Some(other) => {
                let sample = json!({"event_id": id, "live": value, "shadow": other});
                diff.revised.add(category(&other), sample, limit);
            }
        }
    }
    for (_, value) in shadow.events {
        diff.added.add(category(&value), value, limit);
    }
    for (key, ours) in live.dead_letters {
        let theirs = shadow.dead_letters.remove(&key).unwrap_or_default();
        let category = format!("dead letter ({})", key.2);
        let common = theirs.len().min(ours.len());
        diff.unchanged += common as u64;
        for sample in ours.into_iter().skip(common) {
            diff.removed.add(category.clone(), sample, limit);
        }
        for sample in theirs.into_iter().skip(common) {
            diff.added.add(category.clone(), sample, limit);
        }
    }
    for (key, samples) in shadow.dead_letters {
        for sample in samples {
            diff.added.add(format!("dead letter ({})", key.2), sample, limit);
        }
    }
    diff
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "shadow `{}` against the live outputs (read_committed, to the end offsets at start)", self.shadow)?;
        writeln!(f, "  live:   {} outputs, {} dead letters", self.live.0, self.live.1)?;
        writeln!(f, "  shadow: {} outputs, {} dead letters", self.shadowed.0, self.shadowed.1)?;
        writeln!(
            f,
            "  added {}, removed {}, revised {}, unchanged {}",
            self.added.total(),
            self.removed.total(),
            self.revised.total(),
            self.unchanged
        )?;
        if self.is_empty() {
            return writeln!(f, "no difference");
        }
        for (name, changes) in [("added", &self.added), ("removed", &self.removed), ("revised", &self.revised)] {
            if changes.total() == 0 {
                continue;
            }
            writeln!(f, "{name}:")?;
            for (category, n) in &changes.by_category {
                writeln!(f, "  {category:<40} {n}")?;
            }
            writeln!(f, "  samples ({} of {}):", changes.samples.len(), changes.total())?;
            for sample in &changes.samples {
                match (sample.get("live"), sample.get("shadow")) {
                    (Some(live), Some(shadow)) => {
                        writeln!(f, "    {}", sample["event_id"].as_str().unwrap_or_default())?;
                        writeln!(f, "      live:   {live}")?;
                        writeln!(f, "      shadow: {shadow}")?;
                    }
                    _ => writeln!(f, "    {sample}")?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(events: &[Value]) -> Side {
        Side {
            events: events.iter().map(|v| (v["event_id"].as_str().unwrap().to_owned(), v.clone())).collect(),
            dead_letters: BTreeMap::new(),
        }
    }

    #[test]
    fn ids_tell_added_removed_and_revised() {
        let ignored = json!({"event_id": "a", "type": "ActivityIgnored", "reason": "user_not_on_team"});
        let accepted = json!({"event_id": "b", "type": "ActivityAccepted", "value": 1});
        let revised = json!({"event_id": "b", "type": "ActivityAccepted", "value": 2});
        let same = json!({"event_id": "c", "type": "UserProvisioned"});
        let new = json!({"event_id": "d", "type": "ActivityAccepted"});
        let live = side(&[ignored.clone(), accepted.clone(), same.clone()]);
        let shadow = side(&[revised.clone(), same, new.clone()]);
        let diff = compare("s", live, shadow, 10);
        assert_eq!(diff.removed.by_category, BTreeMap::from([("ActivityIgnored (user_not_on_team)".into(), 1)]));
        assert_eq!(diff.added.samples, vec![new]);
        assert_eq!(diff.revised.samples, vec![json!({"event_id": "b", "live": accepted, "shadow": revised})]);
        assert_eq!(diff.unchanged, 1);
        assert!(!diff.is_empty());
    }

    #[test]
    fn dead_letters_match_as_a_multiset_of_source_records() {
        let key: DeadLetterKey = ("crm".into(), "0".into(), "undecodable".into(), Some("k".into()), b"x".to_vec());
        let mut live = Side::default();
        live.dead_letters.insert(key.clone(), vec![json!(1), json!(2)]);
        let mut shadow = Side::default();
        shadow.dead_letters.insert(key, vec![json!(1)]);
        let diff = compare("s", live, shadow, 10);
        assert_eq!(diff.unchanged, 1);
        assert_eq!(diff.removed.by_category, BTreeMap::from([("dead letter (undecodable)".into(), 1)]));
        assert_eq!(diff.added.total(), 0);
    }
}
