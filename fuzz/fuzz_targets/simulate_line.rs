//! The `crmflow simulate` line form: one `{"topic", "key", "timestamp", "value", "headers"?}`
//! line, read as the public `crmflow_codec::Envelope` and as simulate reads it (its private
//! `Line`, mirrored here: the value kept as written), routed by topic and decoded as JSON.
//!
//! Invariants: never panics; a line the public Envelope reads, simulate's form reads alike
//! (same topic, key, timestamp, the same value) and it writes back to the same Envelope; a line
//! on an input topic goes through the input-payload checks of `input_json` with its own key;
//! a line that cannot be processed becomes a dead-letter Envelope whose headers carry a
//! non-empty kind and message and the line number, and which writes and reads back unchanged.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crmflow_codec::dead_letter::{HEADER_ERROR_KIND, HEADER_ERROR_MESSAGE, HEADER_SOURCE_LINE};
use crmflow_codec::{
    dead_letter_headers, decode_input, DecodeError, Encoding, Envelope, ErrorKind, Source, TopicNames,
};
use crmflow_fuzz::{check_decode_error, check_input_event};

/// simulate's `Line` (crates/cli/src/simulate.rs), which is private there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    topic: String,
    key: Option<String>,
    timestamp: i64,
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(default, rename = "headers")]
    _headers: BTreeMap<String, String>,
}

fuzz_target!(|data: &[u8]| {
    // simulate reads one line up to '\n'; a line that is not UTF-8 is a dead letter unread.
    let data = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(data) else { return };
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() {
        return;
    }
    let topics = TopicNames::default();

    let parsed: Result<Line<'_>, _> = serde_json::from_str(line);
    if let Ok(envelope) = serde_json::from_str::<Envelope>(line) {
        let Ok(raw) = &parsed else { panic!("Envelope reads a line simulate's form refuses: {line}") };
        assert_eq!((&raw.topic, &raw.key, raw.timestamp), (&envelope.topic, &envelope.key, envelope.timestamp));
        let value: Value = serde_json::from_str(raw.value.get()).expect("a value Envelope reads parses");
        assert_eq!(value, envelope.value, "the two line forms read different values");
        let text = serde_json::to_string(&envelope).expect("an envelope serializes");
        let back: Envelope = serde_json::from_str(&text).expect("a written envelope reads back");
        assert_eq!(back, envelope, "Envelope round trip");
    }

    let result: Result<(), (DecodeError, Option<String>)> = match &parsed {
        Err(e) => Err((DecodeError::new(ErrorKind::Undecodable, format!("not a record line: {e}")), None)),
        Ok(raw) => match topics.input_stream(&raw.topic) {
            None => {
                assert!(!topics.inputs().iter().any(|(_, t)| *t == raw.topic));
                Err((DecodeError::new(ErrorKind::UnknownTopic, format!("`{}` is not an input topic", raw.topic)), None))
            }
            Some(stream) => {
                assert_eq!(topics.input_topic(stream), raw.topic);
                let key = raw.key.as_deref().map(str::as_bytes);
                match decode_input(stream, key, raw.value.get().as_bytes(), Encoding::Json) {
                    Ok(event) => {
                        check_input_event(stream, key, &event);
                        Ok(())
                    }
                    Err(e) => {
                        check_decode_error(&e);
                        Err((e, Some(raw.topic.clone())))
                    }
                }
            }
        },
    };

    if let Err((error, topic)) = result {
        let source = Source::Line { topic: topic.clone(), line: 7 };
        let headers: BTreeMap<String, String> =
            dead_letter_headers(&error, &source).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(headers.get(HEADER_ERROR_KIND).map(String::as_str), Some(error.kind.as_str()));
        assert!(headers.get(HEADER_ERROR_MESSAGE).is_some_and(|m| !m.trim().is_empty() && *m == error.message));
        assert_eq!(headers.get(HEADER_SOURCE_LINE).map(String::as_str), Some("7"));
        let dead = Envelope {
            topic: topics.dead_letters.clone(),
            key: parsed.as_ref().ok().and_then(|l| l.key.clone()),
            timestamp: parsed.as_ref().map_or(0, |l| l.timestamp),
            value: Value::String(line.to_owned()),
            headers,
        };
        let text = serde_json::to_string(&dead).expect("a dead letter serializes");
        assert!(!text.contains('\n'), "a dead letter spans lines");
        let back: Envelope = serde_json::from_str(&text).expect("a dead letter reads back");
        assert_eq!(back, dead, "dead letter round trip");
    }
});
