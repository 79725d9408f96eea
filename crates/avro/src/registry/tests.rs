use serde_json::json;

use super::*;
use crate::confluent;
use crate::fingerprint::{canonical_form, rabin};

fn registry() -> &'static SchemaRegistry {
    SchemaRegistry::bundled()
}

/// One fully specified example per event type (optional fields given, either a value or null,
/// timestamps already in the normalized output form), so that a round trip must be the identity.
fn examples() -> Vec<JsonValue> {
    vec![
        json!({
            "type": "CrmRecordChanged",
            "event_id": "e-1", "company_id": "c-1", "integration_id": "i-1",
            "object_type": "deal", "object_id": "d-1", "operation": "updated",
            "occurred_at": "2024-05-01T10:00:00.000Z",
            "fields": {"amount": 1200.5, "count": 3, "big": -9_007_199_254_740_993_i64, "owner": "u-9",
                       "won": true, "empty": null, "stage": "closedwon"},
            "users": {"u-9": {"name": "Ada", "email": "ada@example.com"}, "u-10": {"name": null, "email": null}}
        }),
        json!({
            "type": "CrmRecordChanged",
            "event_id": "e-2", "company_id": "c-1", "integration_id": "i-1",
            "object_type": "deal", "object_id": "d-2", "operation": "deleted",
            "occurred_at": "1969-12-31T23:59:59.999Z", "fields": {}, "users": null
        }),
        json!({
            "type": "IntegrationSettingsChanged", "company_id": "c-1", "integration_id": "i-1",
            "crm": "hubspot", "auto_sync_users": true, "changed_at": "2024-05-01T10:00:00.123Z"
        }),
        json!({
            "type": "WorkflowSaved", "company_id": "c-1", "integration_id": "i-1",
            "changed_at": "2024-05-01T10:00:00.000Z",
            "workflow": {
                "workflow_id": "w-1", "name": "Won deals", "active": true, "object_type": "deal",
                "triggers": ["created", "updated"],
                "conditions": [
                    {"field": "stage", "op": "eq", "value": "closedwon"},
                    {"field": "amount", "op": "gte", "value": 1000},
                    {"field": "ratio", "op": "lt", "value": 0.5},
                    {"field": "vip", "op": "ne", "value": false},
                    {"field": "region", "op": "in", "value": ["emea", 7, 1.5, true, null]},
                    {"field": "owner", "op": "exists", "value": null}
                ],
                "activity_type": "deal_won", "user_field": "owner",
                "value_field": "amount", "occurred_at_field": null
            }
        }),
        json!({
            "type": "WorkflowDeleted", "company_id": "c-1", "integration_id": "i-1",
            "workflow_id": "w-1", "changed_at": "2024-05-01T10:00:00.000Z"
        }),
        json!({
            "type": "UserAssignedToTeam", "company_id": "c-1", "user_id": "u-1", "team_id": "t-1",
            "changed_at": "2024-05-01T10:00:00.000Z"
        }),
        json!({
            "type": "UserRemovedFromTeam", "company_id": "c-1", "user_id": "u-1", "team_id": "t-1",
            "changed_at": "2024-05-01T10:00:00.000Z"
        }),
        json!({
            "type": "UserProvisioned", "event_id": "e-3", "source_event_id": "e-1", "company_id": "c-1",
            "integration_id": "i-1", "user_id": "u-1", "crm_user_id": "u-9", "name": "Ada", "email": null,
            "workflow_id": "w-1", "occurred_at": "2024-05-01T10:00:00.000Z"
        }),
        json!({
            "type": "ActivityAccepted", "event_id": "e-4", "source_event_id": "e-1", "change": "revised",
            "activity_id": "a-1", "company_id": "c-1", "integration_id": "i-1", "workflow_id": "w-1",
            "activity_type": "deal_won", "object_type": "deal", "object_id": "d-1", "user_id": "u-1",
            "crm_user_id": "u-9", "team_id": "t-1", "value": 1200.5, "occurred_at": "2024-05-01T10:00:00.000Z"
        }),
        json!({
            "type": "ActivityIgnored", "event_id": "e-5", "source_event_id": "e-1", "reason": "user_not_on_team",
            "detail": "u-1 is on no team", "company_id": "c-1", "integration_id": "i-1", "workflow_id": "w-1",
            "activity_type": "deal_won", "object_type": "deal", "object_id": "d-1",
            "crm_user_id": "u-9", "user_id": null
        }),
    ]
}

fn encode(event: &JsonValue) -> Vec<u8> {
    match registry().encode(event) {
        Ok(bytes) => bytes,
        Err(e) => panic!("encoding {event} failed: {e}"),
    }
}

fn decode(bytes: &[u8]) -> JsonValue {
    match registry().decode(bytes) {
        Ok(json) => json,
        Err(e) => panic!("decoding failed: {e}"),
    }
}

fn violation(event: &JsonValue) -> (String, String) {
    match registry().encode(event) {
        Err(AvroError::SchemaViolation { path, message, .. }) => (path, message),
        other => panic!("expected a SchemaViolation for {event}, got {other:?}"),
    }
}

fn changed() -> JsonValue {
    examples().swap_remove(0)
}

#[test]
fn bundled_schemas_cover_every_event_type() {
    let types: Vec<&str> = registry().event_types().collect();
    assert_eq!(
        types,
        [
            "ActivityAccepted",
            "ActivityIgnored",
            "CrmRecordChanged",
            "IntegrationSettingsChanged",
            "UserAssignedToTeam",
            "UserProvisioned",
            "UserRemovedFromTeam",
            "WorkflowDeleted",
            "WorkflowSaved",
        ]
    );
    let mut covered: Vec<String> = examples().iter().filter_map(|e| e["type"].as_str().map(str::to_owned)).collect();
    covered.dedup();
    covered.sort();
    assert_eq!(covered, types);
}

#[test]
fn every_event_type_round_trips() {
    for event in examples() {
        assert_eq!(decode(&encode(&event)), event);
    }
}

#[test]
fn integers_and_floats_keep_their_kind() {
    let back = decode(&encode(&changed()));
    assert!(back["fields"]["count"].is_i64());
    assert!(back["fields"]["big"].is_i64());
    assert!(back["fields"]["amount"].is_f64());
    // A double field given an integer comes back as a float number.
    let mut accepted = examples().swap_remove(8);
    accepted["value"] = json!(7);
    let back = decode(&encode(&accepted));
    assert!(back["value"].is_f64());
    assert_eq!(back["value"].as_f64(), Some(7.0));
}

#[test]
fn bytes_start_with_marker_and_spec_fingerprint() {
    for event in examples() {
        let bytes = encode(&event);
        assert_eq!(bytes[..2], [0xC3, 0x01]);
        let Some(event_type) = event["type"].as_str() else { panic!("example without type") };
        let Some(entry) = registry().current.get(event_type) else { panic!("no schema for {event_type}") };
        // Independently of our canonical form: apache-avro's, corrected for the one place it
        // deviates from the spec (logical types), hashed with apache-avro's own Rabin digest.
        let apache_pcf = entry.schema.canonical_form().replace(r#"{"type":"long"}"#, r#""long""#);
        assert_eq!(canonical_form(&entry.schema).as_deref(), Ok(apache_pcf.as_str()));
        assert_eq!(bytes[2..10], rabin(apache_pcf.as_bytes()).to_le_bytes());
    }
}

#[test]
fn fingerprints_of_current_and_history_are_distinct_and_pinned() {
    // Pinning guards against an accidental schema edit: a changed fingerprint means a new
    // schema version, which needs its predecessor copied to schemas/history/ first.
    let fingerprints: BTreeMap<&str, String> =
        registry().current.values().map(|e| (e.event_type.as_str(), hex(&e.fingerprint))).collect();
    let pinned = [
        ("ActivityAccepted", "4a1b46f201d8699c"),
        ("ActivityIgnored", "efa6e97c943b77ff"),
        ("CrmRecordChanged", "06e981b1bf4032db"),
        ("IntegrationSettingsChanged", "05d605160c2252ca"),
        ("UserAssignedToTeam", "6e0cb6c21290ddec"),
        ("UserProvisioned", "c8886f336d61312b"),
        ("UserRemovedFromTeam", "d60cdf712c16f70b"),
        ("WorkflowDeleted", "7f146e41e7c0c5e1"),
        ("WorkflowSaved", "b6145c7e61404f57"),
    ];
    let pinned: BTreeMap<&str, String> = pinned.iter().map(|(t, f)| (*t, (*f).to_owned())).collect();
    assert_eq!(fingerprints, pinned);
    let Some(v1) = registry().history.first() else { panic!("no history schema") };
    assert_eq!(v1.event_type, "CrmRecordChanged");
    assert_ne!(Some(&hex(&v1.fingerprint)), fingerprints.get("CrmRecordChanged"));
    assert_eq!(registry().by_fingerprint.len(), 10);
}

#[test]
fn timestamps_accept_any_offset_and_come_back_as_utc_millis() {
    let mut event = changed();
    event["occurred_at"] = json!("2024-05-01T12:00:00.123456+02:00");
    assert_eq!(decode(&encode(&event))["occurred_at"], json!("2024-05-01T10:00:00.123Z"));
    event["occurred_at"] = json!("2024-05-01T10:00:00Z");
    assert_eq!(decode(&encode(&event))["occurred_at"], json!("2024-05-01T10:00:00.000Z"));
}

/// Found by the `avro_single_object` fuzz target: an offset carried these past year 0000 or
/// 9999 in UTC; they were encoded, then decoded to text no RFC 3339 reader takes back.
#[test]
fn timestamps_beyond_years_0000_to_9999_in_utc_are_violations() {
    for text in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"] {
        let mut event = changed();
        event["occurred_at"] = json!(text);
        let (path, message) = violation(&event);
        assert_eq!(path, "occurred_at", "{message}");
        assert!(message.contains("outside years 0000 to 9999"), "{message}");
    }
    let mut event = changed();
    event["occurred_at"] = json!("0000-01-01T00:00:00Z");
    assert_eq!(decode(&encode(&event))["occurred_at"], json!("0000-01-01T00:00:00.000Z"));
}

#[test]
fn optional_fields_may_be_missing_and_extra_fields_are_ignored() {
    let mut event = changed();
    let Some(object) = event.as_object_mut() else { panic!("not an object") };
    object.remove("users");
    object.insert("unknown_extra".into(), json!({"anything": [1, 2]}));
    let back = decode(&encode(&event));
    assert_eq!(back["users"], JsonValue::Null);
    assert!(back.get("unknown_extra").is_none());
}

/// The v1 schema of CrmRecordChanged, an event v1 can hold (no `users`), and its v1 datum.
fn v1_datum() -> (&'static Entry, JsonValue, Vec<u8>) {
    let Some(v1) = registry().history.first() else { panic!("no history schema") };
    let mut event = changed();
    let Some(object) = event.as_object_mut() else { panic!("not an object") };
    object.remove("users");
    let value = json_to_avro(&v1.schema, &event, &v1.names, &Path::Root).unwrap_or_else(|e| panic!("{e}"));
    let mut datum = Vec::new();
    let written = GenericDatumWriter::builder(&v1.schema).build().and_then(|w| w.write_value_ref(&mut datum, &value));
    assert!(written.is_ok(), "{written:?}");
    (v1, event, datum)
}

#[test]
fn history_v1_message_decodes_with_current_reader() {
    let (v1, mut event, datum) = v1_datum();
    // The message exactly as a v1 producer would have written it: v1 fingerprint, v1 datum.
    let mut bytes = MARKER.to_vec();
    bytes.extend_from_slice(&v1.fingerprint);
    bytes.extend_from_slice(&datum);

    let back = decode(&bytes);
    assert_eq!(back["users"], JsonValue::Null);
    event["users"] = JsonValue::Null;
    assert_eq!(back, event);
}

#[test]
fn wrong_marker_and_short_input_are_not_single_object() {
    let bytes = encode(&changed());
    for short in [&[][..], &bytes[..1], &bytes[..2], &bytes[..9]] {
        let err = registry().decode(short);
        assert!(matches!(err, Err(AvroError::NotSingleObject(_))), "{err:?}");
    }
    let mut wrong = bytes.clone();
    wrong[0] = 0x4F;
    let err = registry().decode(&wrong);
    assert!(matches!(&err, Err(AvroError::NotSingleObject(m)) if m.contains("4F 01")), "{err:?}");
}

#[test]
fn truncated_or_padded_datum_is_undecodable() {
    let bytes = encode(&changed());
    for len in HEADER_LEN..bytes.len() {
        let err = registry().decode(&bytes[..len]);
        assert!(matches!(err, Err(AvroError::Undecodable(_))), "at {len}: {err:?}");
    }
    let mut padded = bytes.clone();
    padded.push(0);
    let err = registry().decode(&padded);
    assert!(matches!(&err, Err(AvroError::Undecodable(m)) if m.contains("1 trailing bytes")), "{err:?}");
}

#[test]
fn truncation_before_a_trailing_optional_field_is_detected() {
    // ActivityIgnored ends with two optional unions; cutting them off must not decode as nulls.
    let mut event = examples().swap_remove(9);
    event["user_id"] = json!("u-1");
    let bytes = encode(&event);
    for cut in 1..=4 {
        let err = registry().decode(&bytes[..bytes.len() - cut]);
        assert!(matches!(&err, Err(AvroError::Undecodable(m)) if m.contains("truncated")), "cut {cut}: {err:?}");
    }
}

#[test]
fn unknown_fingerprint() {
    let mut bytes = encode(&changed());
    bytes[2] ^= 0xFF;
    let err = registry().decode(&bytes);
    assert!(matches!(&err, Err(AvroError::UnknownFingerprint(h)) if h.len() == 16), "{err:?}");
}

#[test]
fn corrupted_bytes_never_panic() {
    // Every single-byte corruption of every position: the decoder must return, never panic.
    let bytes = encode(&examples().swap_remove(3));
    for i in 0..bytes.len() {
        for x in [0x01, 0x80, 0xFF] {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= x;
            let _ = registry().decode(&corrupt);
        }
    }
}

#[test]
fn not_an_event_and_unknown_type() {
    for event in [json!([1]), json!({"event_id": "x"}), json!({"type": 3})] {
        let err = registry().encode(&event);
        assert!(matches!(err, Err(AvroError::NotAnEvent(_))), "{err:?}");
    }
    let err = registry().encode(&json!({"type": "NoSuchEvent"}));
    assert!(matches!(&err, Err(AvroError::UnknownType(t)) if t == "NoSuchEvent"), "{err:?}");
}

#[test]
fn wrong_json_type_names_the_field_path() {
    let mut event = changed();
    event["fields"]["amount"] = json!({"nested": 1});
    let (path, message) = violation(&event);
    assert_eq!(path, "fields.amount");
    assert!(
        message.contains("expected null or a boolean or an integer (long) or a number or a string, got an object"),
        "{message}"
    );

    let mut event = changed();
    event["object_id"] = json!(42);
    assert_eq!(violation(&event), ("object_id".into(), "expected a string, got 42".into()));

    let mut event = changed();
    event["users"]["u-9"]["email"] = json!(false);
    assert_eq!(violation(&event).0, "users.u-9.email");

    let mut workflow = examples().swap_remove(3);
    workflow["workflow"]["conditions"][1]["op"] = json!("greater");
    let (path, message) = violation(&workflow);
    assert_eq!(path, "workflow.conditions[1].op");
    assert!(message.starts_with("expected one of \"eq\", \"ne\""), "{message}");
    assert!(message.ends_with("got \"greater\""), "{message}");

    let mut workflow = examples().swap_remove(3);
    workflow["workflow"]["triggers"] = json!(["created", "renamed"]);
    assert_eq!(violation(&workflow).0, "workflow.triggers[1]");
}

#[test]
fn bad_timestamp_and_out_of_range_numbers() {
    let mut event = changed();
    event["occurred_at"] = json!("2024-05-01 10:00");
    let (path, message) = violation(&event);
    assert_eq!(path, "occurred_at");
    assert!(message.contains("RFC 3339"), "{message}");

    event["occurred_at"] = json!(1_714_557_600_000_i64);
    assert_eq!(violation(&event).0, "occurred_at");

    // Larger than i64: not a long, so the double branch takes it.
    let mut event = changed();
    event["fields"]["huge"] = json!(u64::MAX);
    assert!(decode(&encode(&event))["fields"]["huge"].is_f64());
}

#[test]
fn missing_or_null_required_field() {
    let mut event = changed();
    let Some(object) = event.as_object_mut() else { panic!("not an object") };
    object.remove("company_id");
    let (path, message) = violation(&event);
    assert_eq!(path, "company_id");
    assert!(message.starts_with("missing required field"), "{message}");

    let mut workflow = examples().swap_remove(3);
    workflow["workflow"]["active"] = JsonValue::Null;
    assert_eq!(violation(&workflow), ("workflow.active".into(), "expected a boolean, got null".into()));

    let err = registry().encode(&json!({"type": "WorkflowDeleted"}));
    assert!(
        matches!(&err, Err(AvroError::SchemaViolation { event_type, path, .. })
            if event_type == "WorkflowDeleted" && path == "company_id"),
        "{err:?}"
    );
}

#[test]
fn error_messages_read_well() {
    let mut event = changed();
    event["fields"]["amount"] = json!([1]);
    let Err(err) = registry().encode(&event) else { panic!("expected an error") };
    assert_eq!(
        err.to_string(),
        "CrmRecordChanged does not fit its Avro schema at fields.amount: expected null or a boolean \
         or an integer (long) or a number or a string, got an array"
    );
}

#[test]
fn incompatible_history_is_rejected_at_construction() {
    let incompatible = r#"{"type":"record","name":"WorkflowDeleted","namespace":"crmflow.events",
        "fields":[{"name":"company_id","type":"long"}]}"#;
    let built = SchemaRegistry::from_sources(CURRENT, &[("bad.avsc", incompatible)]);
    assert!(matches!(&built, Err(m) if m.starts_with("bad.avsc")), "{built:?}");
}

/// The writer schema a registry would hold for an event type's current schema.
fn registered(id: u32, event_type: &str) -> WriterSchema {
    let text = registry().schema_text(event_type).unwrap_or_else(|| panic!("no schema for {event_type}"));
    WriterSchema::parse(id, text).unwrap_or_else(|e| panic!("{e}"))
}

/// Confluent-framed bytes of `event` under schema id `id`, split again into id and datum.
fn confluent_datum(event: &JsonValue, id: u32) -> Vec<u8> {
    let bytes = registry().encode_confluent(event, id).unwrap_or_else(|e| panic!("{e}"));
    let (read_id, datum) = confluent::split(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_id, id);
    datum.to_vec()
}

#[test]
fn every_event_type_round_trips_in_the_confluent_format() {
    for (i, event) in examples().into_iter().enumerate() {
        let id = 100 + i as u32;
        let writer = registered(id, event["type"].as_str().unwrap_or_default());
        let back = registry().decode_confluent(&writer, &confluent_datum(&event, id));
        assert_eq!(back.unwrap_or_else(|e| panic!("{e}")), event);
    }
}

#[test]
fn a_confluent_v1_writer_resolves_against_the_current_reader() {
    let (v1, mut event, datum) = v1_datum();
    let writer = WriterSchema::parse(7, &v1.text).unwrap_or_else(|e| panic!("{e}"));
    let back = registry().decode_confluent(&writer, &datum).unwrap_or_else(|e| panic!("{e}"));
    event["users"] = JsonValue::Null;
    assert_eq!(back, event);
}

/// A topic of several event types under TopicNameStrategy: its subject holds a union of their
/// records, and the datum's branch says which event it is.
#[test]
fn a_union_writer_schema_decodes_each_branch_as_its_event() {
    let assigned = registry().schema_text("UserAssignedToTeam").unwrap_or_default();
    let removed = registry().schema_text("UserRemovedFromTeam").unwrap_or_default();
    let writer = WriterSchema::parse(9, &format!("[{assigned},{removed}]")).unwrap_or_else(|e| panic!("{e}"));
    let team_events: Vec<JsonValue> =
        examples().into_iter().filter(|e| e["type"].as_str().unwrap_or_default().contains("Team")).collect();
    assert_eq!(team_events.len(), 2);
    for event in team_events {
        let branch = if event["type"] == "UserAssignedToTeam" { 0u8 } else { 2u8 };
        let mut datum = vec![branch];
        datum.extend(confluent_datum(&event, 9));
        let back = registry().decode_confluent(&writer, &datum).unwrap_or_else(|e| panic!("{branch}: {e}"));
        assert_eq!(back, event);
    }
}

#[test]
fn confluent_datums_that_do_not_fit_are_undecodable() {
    let event = changed();
    let datum = confluent_datum(&event, 1);
    let writer = registered(1, "CrmRecordChanged");
    for len in 0..datum.len() {
        let err = registry().decode_confluent(&writer, &datum[..len]);
        assert!(matches!(err, Err(AvroError::Undecodable(_))), "at {len}: {err:?}");
    }
    // A schema whose record crmflow does not know, and one it cannot read as its own.
    let foreign =
        WriterSchema::parse(2, r#"{"type":"record","name":"Invoice","fields":[]}"#).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(registry().decode_confluent(&foreign, &[]), Err(AvroError::UnknownType(t)) if t == "Invoice"));
    let incompatible = WriterSchema::parse(
        3,
        r#"{"type":"record","name":"UserAssignedToTeam","fields":[{"name":"company_id","type":"long"}]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let err = registry().decode_confluent(&incompatible, &[0x02]);
    assert!(matches!(&err, Err(AvroError::Undecodable(m)) if m.contains("registry schema 3")), "{err:?}");
}
