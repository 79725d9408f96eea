//! What the fuzz targets found, as tests against crmflow's public API, each with the input
//! that found it in `fuzz/regressions/`. The timestamp range bug is fixed in
//! crates/domain/src/time.rs and crates/avro/src/convert.rs (unit tests there too); these keep
//! the end-to-end view: what the codec accepts, it writes back readably.
//!
//! cargo test --manifest-path fuzz/Cargo.toml --test regressions

use crmflow_avro::SchemaRegistry;
use crmflow_codec::{decode_input, decode_output, encode_output, Encoding};
use crmflow_domain::{InputEvent, InputStream, MemoryState, OutputEvent, Timestamp};

/// Instants with an offset that puts them before 0000-01-01 or after 9999-12-31 in UTC.
const BEYOND: [&str; 3] = ["0000-01-01T00:00:00+23:59", "0000-01-01T00:00:00.000+01:00", "9999-12-31T23:59:59-23:59"];

/// Found by `input_json` (fuzz/regressions/input_json/timestamp-year-minus-1.json).
/// Belongs in crates/domain/src/time.rs: an instant crmflow reads, it must write readably.
/// `Timestamp::parse_rfc3339` accepts `0000-01-01T00:00:00+01:00` (year -1 in UTC) and
/// `9999-12-31T23:59:59-01:00` (year 10000); `Display` writes them `-0001-12-31T23:00:00.000Z`
/// and `+10000-01-01T00:59:59.000Z`, which no RFC 3339 parser reads, crmflow's included.
#[test]
fn every_timestamp_read_is_written_readably() {
    for text in BEYOND {
        for t in [Timestamp::parse_rfc3339(text), Timestamp::parse_date_or_datetime(text)].into_iter().flatten() {
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Some(t), "{text} is read, and written as {t}");
        }
    }
}

/// The same, through the codec (belongs in crates/codec/src/input.rs): an event accepted on
/// the input re-encodes, in JSON and in Avro, to the same event.
#[test]
fn accepted_events_round_trip() {
    for text in BEYOND {
        let json = format!(
            r#"{{"type":"UserAssignedToTeam","company_id":"c1","user_id":"u1","team_id":"t1","changed_at":"{text}"}}"#
        );
        let Ok(event) = decode_input(InputStream::Teams, Some(b"c1"), json.as_bytes(), Encoding::Json) else {
            continue; // refused: fine
        };
        let again = serde_json::to_vec(&event).expect("serializes");
        let back = decode_input(InputStream::Teams, Some(b"c1"), &again, Encoding::Json);
        assert_eq!(back, Ok(event), "{}", String::from_utf8_lossy(&again));
    }
}

/// What it does to crmflow (belongs in crates/codec/src/output.rs or a runtime test): a CRM
/// change whose `occurred_at` (or whose `occurred_at_field` value) is such an instant is decided,
/// and its outputs cannot be published: in Avro, `encode_output` fails (ProcessError::Encode in
/// the runtime, on every retry of the record); in JSON, consumers cannot read them back.
#[test]
fn outputs_of_accepted_changes_encode_and_decode() {
    let events = [
        r#"{"type":"IntegrationSettingsChanged","company_id":"acme","integration_id":"sf","crm":"salesforce","auto_sync_users":true,"changed_at":"2024-05-01T10:00:00Z"}"#,
        r#"{"type":"WorkflowSaved","company_id":"acme","integration_id":"sf","changed_at":"2024-05-01T10:00:00Z","workflow":{"workflow_id":"w","name":"w","active":true,"object_type":"Opportunity","triggers":["created"],"conditions":[],"activity_type":"Sale","user_field":"OwnerId"}}"#,
        r#"{"type":"CrmRecordChanged","event_id":"e1","company_id":"acme","integration_id":"sf","object_type":"Opportunity","object_id":"1","operation":"created","occurred_at":"0000-01-01T00:00:00+01:00","fields":{"OwnerId":"005A"}}"#,
    ];
    let mut state = MemoryState::default();
    let mut outputs: Vec<OutputEvent> = Vec::new();
    for json in events {
        let stream = if json.contains("CrmRecordChanged") { InputStream::CrmChanges } else { InputStream::Settings };
        let Ok(event): Result<InputEvent, _> = decode_input(stream, Some(b"acme"), json.as_bytes(), Encoding::Json)
        else {
            return; // the change is refused: fine
        };
        outputs.extend(state.process(&event).outputs);
    }
    assert!(!outputs.is_empty(), "the change provisions its owner");
    for output in &outputs {
        for encoding in [Encoding::Json, Encoding::Avro] {
            let bytes = encode_output(output, encoding);
            assert!(bytes.is_ok(), "{encoding:?}: {bytes:?}\n{output:?}");
            let back = bytes.ok().map(|b| decode_output(&b, encoding));
            assert_eq!(back, Some(Ok(output.clone())), "{encoding:?}");
        }
    }
}

/// Found by `avro_single_object` (fuzz/regressions/avro_single_object/timestamp-year-minus-1.avro).
/// Belongs in crates/avro/src/registry/tests.rs: what `decode` returns, `encode` takes back.
/// `encode` writes `0000-01-01T00:00:00+23:59` as its milliseconds (year -1 in UTC), and any
/// producer can write any long; `decode` renders it `-0001-12-31T00:01:00.000Z`, which `encode`
/// then refuses ("expected an RFC 3339 timestamp"), as serde's `Timestamp` does.
#[test]
fn avro_decodes_only_what_it_encodes_back() {
    let registry = SchemaRegistry::bundled();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions/avro_single_object/timestamp-year-minus-1.avro");
    let found = std::fs::read(path).expect("the regression input");
    let written = serde_json::json!({
        "type": "UserAssignedToTeam", "company_id": "c1", "user_id": "u1", "team_id": "t1",
        "changed_at": "0000-01-01T00:00:00+23:59",
    });
    let encoded = registry.encode(&written);
    for bytes in [Some(found), encoded.ok()].into_iter().flatten() {
        if let Ok(json) = registry.decode(&bytes) {
            let again = registry.encode(&json);
            assert!(again.is_ok(), "decoded {json}, which does not encode: {again:?}");
        }
    }
}
