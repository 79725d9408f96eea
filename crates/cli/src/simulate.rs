//! `crmflow simulate`: the decision core over a JSON Lines file of records, no Kafka.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crmflow_codec::{
    dead_letter_headers, decode_input, DecodeError, Encoding, Envelope, ErrorKind, Source, TopicNames,
};
use crmflow_domain::{decide, explain, Explanation, MemoryState, OutputEvent, Tally};
use crmflow_store::{check_changelog_record_sizes, StoreError, DEFAULT_MAX_CHANGELOG_RECORD_BYTES};

/// What a simulation did, for the summary on stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Input lines processed (blank lines excluded).
    pub lines: u64,
    /// What the core decided.
    pub tally: Tally,
    /// Output records per topic.
    pub outputs: BTreeMap<String, u64>,
    /// Dead letters per error kind.
    pub dead_letters: BTreeMap<ErrorKind, u64>,
}

impl Summary {
    /// A short human report: counts per output type and ignore reason.
    pub fn report(&self) -> String {
        let t = &self.tally;
        let mut out = format!(
            "{} lines: {} CRM changes ({} matched, {} unmatched, {} duplicates), {} settings, {} team changes\n",
            self.lines, t.crm_changes, t.matched, t.unmatched, t.duplicates, t.settings_changes, t.team_changes
        );
        out += &format!("  UserProvisioned   {}\n", t.users_provisioned);
        out += &format!(
            "  ActivityAccepted  {} (recorded {}, revised {}, retracted {})\n",
            t.recorded + t.revised + t.retracted,
            t.recorded,
            t.revised,
            t.retracted
        );
        out += &format!("  ActivityIgnored   {}\n", t.ignored_total());
        for (reason, n) in &t.ignored {
            out += &format!("    {:<20} {n}\n", reason.as_str());
        }
        let dead: u64 = self.dead_letters.values().sum();
        out += &format!("  dead letters      {dead}\n");
        for (kind, n) in &self.dead_letters {
            out += &format!("    {:<20} {n}\n", kind.as_str());
        }
        out
    }
}

/// Runs every line of `input` through the core in file order and writes the output records.
///
/// Lines that cannot be processed become dead-letter records; only I/O failures are errors.
pub fn simulate(input: impl BufRead, output: impl Write, topics: &TopicNames) -> std::io::Result<Summary> {
    run(input, output, None::<std::io::Sink>, topics)
}

/// Like [`simulate`], and writes one [`TraceLine`] per input line to `explanations`, saying why
/// the core decided what it did. The output records are the same.
pub fn simulate_explained(
    input: impl BufRead,
    output: impl Write,
    explanations: impl Write,
    topics: &TopicNames,
) -> std::io::Result<Summary> {
    run(input, output, Some(explanations), topics)
}

/// One line of `--explain` output: the input line it is about, and its decision trace or
/// why it became a dead letter.
#[derive(Debug, Serialize)]
pub struct TraceLine<'a> {
    /// The input line's number (1-based, blank lines counted), to find the record again.
    pub line: usize,
    /// The trace, flattened, so `type` is the input's type (or `DeadLetter`).
    #[serde(flatten)]
    pub trace: LineTrace<'a>,
}

/// What became of one input line.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum LineTrace<'a> {
    /// The core decided it; here is why.
    Decided(&'a Explanation),
    /// It never reached the core.
    DeadLetter(DeadLetterTrace<'a>),
}

/// Why a line became a dead letter, in the shape of a trace.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "DeadLetter")]
pub struct DeadLetterTrace<'a> {
    /// The dead letter's error kind, as in its headers.
    pub kind: &'a str,
    /// What is wrong with the line.
    pub message: &'a str,
}

fn run<E: Write>(
    mut input: impl BufRead,
    mut output: impl Write,
    mut explanations: Option<E>,
    topics: &TopicNames,
) -> std::io::Result<Summary> {
    let mut state = MemoryState::default();
    let mut summary = Summary::default();
    let mut bytes = Vec::new();
    let mut index = 0;
    loop {
        bytes.clear();
        if input.read_until(b'\n', &mut bytes)? == 0 {
            break;
        }
        index += 1;
        // A line that is not UTF-8 is a bad record like any other: a dead letter, and on.
        let (line, not_utf8) = match std::str::from_utf8(&bytes) {
            Ok(line) => (line.to_owned(), None),
            Err(e) => (String::from_utf8_lossy(&bytes).into_owned(), Some(e)),
        };
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let processed = match not_utf8 {
            Some(e) => Err((
                DecodeError::new(ErrorKind::Undecodable, format!("line is not valid UTF-8: {e}")),
                Origin::default(),
            )),
            None => process_line(&mut state, line, topics, explanations.is_some(), &mut summary.tally),
        };
        if let Some(explanations) = explanations.as_mut() {
            let trace = match &processed {
                Ok(decided) => decided.explanation.as_ref().map(LineTrace::Decided),
                Err((error, _)) => {
                    Some(LineTrace::DeadLetter(DeadLetterTrace { kind: error.kind.as_str(), message: &error.message }))
                }
            };
            if let Some(trace) = trace {
                serde_json::to_writer(&mut *explanations, &TraceLine { line: index, trace })?;
                explanations.write_all(b"\n")?;
            }
        }
        let records = match processed {
            Ok(decided) => decided
                .outputs
                .iter()
                .map(|out| output_record(out, decided.timestamp, topics))
                .collect::<Result<Vec<_>, _>>()?,
            Err((error, origin)) => {
                *summary.dead_letters.entry(error.kind).or_default() += 1;
                vec![dead_letter(line, index, &error, origin, topics)]
            }
        };
        for record in records {
            *summary.outputs.entry(record.topic.clone()).or_default() += 1;
            serde_json::to_writer(&mut output, &record)?;
            output.write_all(b"\n")?;
        }
    }
    output.flush()?;
    if let Some(explanations) = explanations.as_mut() {
        explanations.flush()?;
    }
    Ok(summary)
}

/// Where a bad line claimed to come from, for its dead-letter record.
#[derive(Default)]
struct Origin {
    topic: Option<String>,
    key: Option<String>,
    timestamp: i64,
}

type LineError = (DecodeError, Origin);

/// A line as [`Envelope`] reads it, but with the value's text as written: `run` decodes a
/// record's bytes, and a value it refuses (a field given twice, say) must be refused here too,
/// not merged into a document first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    topic: String,
    key: Option<String>,
    timestamp: i64,
    #[serde(borrow)]
    value: &'a RawValue,
    // Accepted as in an envelope; an input record's headers do not change what it means.
    #[serde(default, rename = "headers")]
    _headers: BTreeMap<String, String>,
}

/// What the core made of one line.
struct Decided {
    /// The input record's timestamp, which its outputs keep.
    timestamp: i64,
    outputs: Vec<OutputEvent>,
    /// Why, when asked for.
    explanation: Option<Explanation>,
}

/// Decodes and decides one line (explaining the decision if asked), or says why it is a dead letter.
fn process_line(
    state: &mut MemoryState,
    line: &str,
    topics: &TopicNames,
    explaining: bool,
    tally: &mut Tally,
) -> Result<Decided, LineError> {
    let envelope: Line<'_> = serde_json::from_str(line).map_err(|e| {
        let message = format!("not a record line {{\"topic\", \"key\", \"timestamp\", \"value\"}}: {e}");
        (DecodeError::new(ErrorKind::Undecodable, message), Origin::default())
    })?;
    let origin =
        || Origin { topic: Some(envelope.topic.clone()), key: envelope.key.clone(), timestamp: envelope.timestamp };
    let Some(stream) = topics.input_stream(&envelope.topic) else {
        let message = format!(
            "`{}` is not an input topic (expected {}, {} or {})",
            envelope.topic, topics.crm_changes, topics.integration_settings, topics.team_assignments
        );
        return Err((DecodeError::new(ErrorKind::UnknownTopic, message), origin()));
    };
    let key = envelope.key.as_deref().map(str::as_bytes);
    let event = match decode_input(stream, key, envelope.value.get().as_bytes(), Encoding::Json) {
        Ok(event) => event,
        Err(error) => return Err((error, origin())),
    };
    let (mut decision, explanation) = if explaining {
        match explain(&*state, &event) {
            Ok((decision, explanation)) => (decision, Some(explanation)),
            Err(never) => match never {},
        }
    } else {
        match decide(&*state, &event) {
            Ok(decision) => (decision, None),
            Err(never) => match never {},
        }
    };
    // What `run` sets aside because its changelog could never take it (see crmflow_store).
    if let Err(StoreError::TooLarge { family, bytes, limit, .. }) =
        check_changelog_record_sizes(&decision.changes, DEFAULT_MAX_CHANGELOG_RECORD_BYTES)
    {
        return Err((DecodeError::state_too_large(family, bytes, limit), origin()));
    }
    state.apply(std::mem::take(&mut decision.changes));
    tally.add(&decision.tally);
    Ok(Decided { timestamp: envelope.timestamp, outputs: decision.outputs, explanation })
}

/// An output record keeps the input's timestamp, so a replay reproduces it.
fn output_record(out: &OutputEvent, timestamp: i64, topics: &TopicNames) -> std::io::Result<Envelope> {
    Ok(Envelope {
        topic: topics.output_topic(out).to_owned(),
        key: Some(out.company_id().to_owned()),
        timestamp,
        value: serde_json::to_value(out)?,
        headers: BTreeMap::new(),
    })
}

fn dead_letter(line: &str, line_number: usize, error: &DecodeError, origin: Origin, topics: &TopicNames) -> Envelope {
    let source = Source::Line { topic: origin.topic, line: line_number };
    Envelope {
        topic: topics.dead_letters.clone(),
        key: origin.key,
        timestamp: origin.timestamp,
        value: Value::String(line.to_owned()),
        headers: dead_letter_headers(error, &source).into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use crmflow_domain::InputStream;

    use super::*;

    /// A team placement, without its closing brace.
    const PLACEMENT: &str = r#"{"type":"UserAssignedToTeam","company_id":"acme","user_id":"u1","team_id":"t1","changed_at":"2024-05-01T10:00:07Z""#;

    fn simulate_line(line: &str) -> (Summary, Vec<Envelope>) {
        let mut output = Vec::new();
        let summary = simulate(line.as_bytes(), &mut output, &TopicNames::default()).expect("in memory");
        let records = output
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("simulate writes envelopes"))
            .collect();
        (summary, records)
    }

    #[test]
    fn a_value_run_refuses_is_refused_here_alike() {
        // `company_id` twice: serde refuses a struct field given twice, as `run` does with the bytes.
        let value =
            r#"{"type":"UserAssignedToTeam","company_id":"acme","company_id":"other","user_id":"u1","team_id":"t1"}"#;
        let topics = TopicNames::default();
        let refused = decode_input(InputStream::Teams, Some(b"acme"), value.as_bytes(), Encoding::Json)
            .expect_err("run refuses a field given twice");
        let line = format!(r#"{{"topic":"{}","key":"acme","timestamp":1,"value":{value}}}"#, topics.team_assignments);
        let (summary, records) = simulate_line(&line);
        assert_eq!(summary.dead_letters, BTreeMap::from([(refused.kind, 1)]));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].topic, topics.dead_letters);
        assert!(records[0].headers.values().any(|v| v == &refused.message), "{:?}", records[0].headers);
    }

    #[test]
    fn a_line_may_carry_headers_and_its_value_decodes_as_run_decodes_it() {
        let topics = TopicNames::default();
        let value = format!("{PLACEMENT}}}");
        let line = format!(
            r#"{{"topic":"{}","key":"acme","timestamp":1,"value":{value},"headers":{{"trace":"x"}}}}"#,
            topics.team_assignments
        );
        let (summary, records) = simulate_line(&line);
        assert!(summary.dead_letters.is_empty(), "{summary:?}");
        assert_eq!(summary.tally.team_changes, 1);
        assert!(records.is_empty(), "a team placement publishes nothing: {records:?}");
    }
}
