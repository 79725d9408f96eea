//! Record → input event: decode, check the type belongs on the topic, validate, check the key.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crmflow_avro::SchemaRegistry;
use crmflow_domain::{InputEvent, InputStream};

use crate::encoding::Encoding;
use crate::error::{DecodeError, ErrorKind};

/// Decodes a record value of an input topic and checks it against the contract.
pub fn decode_input(
    stream: InputStream,
    key: Option<&[u8]>,
    payload: &[u8],
    encoding: Encoding,
) -> Result<InputEvent, DecodeError> {
    let event = match encoding {
        Encoding::Json => parse_json(payload)?,
        Encoding::Avro => parse_event(SchemaRegistry::bundled().decode(payload).map_err(avro_error)?)?,
    };
    check_event(stream, key, event)
}

/// Decodes JSON bytes straight into the event's struct: the `type` is read first without
/// building a document tree, then the bytes are read once more as that type. Building a
/// `serde_json::Value` first cost as much again as the typed read.
fn parse_json(payload: &[u8]) -> Result<InputEvent, DecodeError> {
    /// The `type` field alone; serde skips the other fields without keeping them.
    #[derive(serde::Deserialize)]
    struct TypeField {
        #[serde(rename = "type", default)]
        type_name: Option<Value>,
    }
    let not_json =
        |e: serde_json::Error| DecodeError::new(ErrorKind::Undecodable, format!("value is not valid JSON: {e}"));
    // Serde would read a struct from an array too: anything but an object is refused first.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(not_json)?;
        return Err(DecodeError::new(ErrorKind::SchemaViolation, "value must be a JSON object with a `type` field"));
    }
    let probe = serde_json::from_slice::<TypeField>(payload).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            DecodeError::new(ErrorKind::SchemaViolation, "value must be a JSON object with a `type` field")
        }
        _ => not_json(e),
    })?;
    let type_name = type_of(probe.type_name.as_ref())?;
    match type_name.as_str() {
        "CrmRecordChanged" => read_typed(payload, &type_name).map(InputEvent::CrmRecordChanged),
        "IntegrationSettingsChanged" => read_typed(payload, &type_name).map(InputEvent::IntegrationSettingsChanged),
        "WorkflowSaved" => read_typed(payload, &type_name).map(InputEvent::WorkflowSaved),
        "WorkflowDeleted" => read_typed(payload, &type_name).map(InputEvent::WorkflowDeleted),
        "UserAssignedToTeam" => read_typed(payload, &type_name).map(InputEvent::UserAssignedToTeam),
        "UserRemovedFromTeam" => read_typed(payload, &type_name).map(InputEvent::UserRemovedFromTeam),
        other => Err(unknown_type(other)),
    }
}

/// Reads JSON bytes as event type `T`. Tracking the path of each field costs about a third of
/// the read, so it is done only to word an error: the bytes are then read once more.
fn read_typed<T: DeserializeOwned>(payload: &[u8], type_name: &str) -> Result<T, DecodeError> {
    if let Ok(event) = T::deserialize(&mut serde_json::Deserializer::from_slice(payload)) {
        return Ok(event);
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(payload)).map_err(
        |e: serde_path_to_error::Error<serde_json::Error>| {
            // Said without the byte position, as the parsed-value path (`simulate`) says it.
            let inner = e.inner();
            let message = inner.to_string();
            let position = format!(" at line {} column {}", inner.line(), inner.column());
            let message = message.strip_suffix(&position).unwrap_or(&message).to_owned();
            schema_error(type_name, &e.path().to_string(), message)
        },
    )
}

/// The event type named by a `type` field.
fn type_of(field: Option<&Value>) -> Result<String, DecodeError> {
    match field {
        Some(Value::String(t)) => Ok(t.clone()),
        Some(other) => Err(DecodeError::new(ErrorKind::UnknownType, format!("`type` must be a string, got {other}"))),
        None => Err(DecodeError::new(ErrorKind::UnknownType, "the event has no `type` field")),
    }
}

fn unknown_type(name: &str) -> DecodeError {
    DecodeError::new(
        ErrorKind::UnknownType,
        format!("unknown event type `{name}` (expected one of {})", InputEvent::TYPES.join(", ")),
    )
}

fn schema_error(type_name: &str, path: &str, message: String) -> DecodeError {
    let at = if path == "." { String::new() } else { format!(" at `{path}`") };
    DecodeError::new(ErrorKind::SchemaViolation, format!("{type_name}{at}: {message}"))
}

/// Checks an already-parsed JSON value against the contract (used by `simulate`).
pub fn decode_input_value(stream: InputStream, key: Option<&[u8]>, value: Value) -> Result<InputEvent, DecodeError> {
    check_event(stream, key, parse_event(value)?)
}

/// Checks a decoded event against the contract: its topic, its own rules, its key.
fn check_event(stream: InputStream, key: Option<&[u8]>, event: InputEvent) -> Result<InputEvent, DecodeError> {
    if event.stream() != stream {
        return Err(DecodeError::new(
            ErrorKind::WrongTopic,
            format!(
                "{} does not belong on the {} input (it goes on the {} input)",
                event.type_name(),
                stream_name(stream),
                stream_name(event.stream())
            ),
        ));
    }
    event
        .validate()
        .map_err(|e| DecodeError::new(ErrorKind::ContractViolation, format!("{}: {e}", event.type_name())))?;
    check_key(key, event.company_id())?;
    Ok(event)
}

fn stream_name(stream: InputStream) -> &'static str {
    match stream {
        InputStream::Settings => "integration settings",
        InputStream::Teams => "team assignments",
        InputStream::CrmChanges => "CRM changes",
    }
}

fn parse_event(value: Value) -> Result<InputEvent, DecodeError> {
    let Value::Object(object) = &value else {
        return Err(DecodeError::new(ErrorKind::SchemaViolation, "value must be a JSON object with a `type` field"));
    };
    let type_name = type_of(object.get("type"))?;
    // Deserializing the variant's struct directly keeps field paths in error messages.
    match type_name.as_str() {
        "CrmRecordChanged" => typed(&type_name, value).map(InputEvent::CrmRecordChanged),
        "IntegrationSettingsChanged" => typed(&type_name, value).map(InputEvent::IntegrationSettingsChanged),
        "WorkflowSaved" => typed(&type_name, value).map(InputEvent::WorkflowSaved),
        "WorkflowDeleted" => typed(&type_name, value).map(InputEvent::WorkflowDeleted),
        "UserAssignedToTeam" => typed(&type_name, value).map(InputEvent::UserAssignedToTeam),
        "UserRemovedFromTeam" => typed(&type_name, value).map(InputEvent::UserRemovedFromTeam),
        other => Err(unknown_type(other)),
    }
}

fn typed<T: DeserializeOwned>(type_name: &str, value: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| schema_error(type_name, &e.path().to_string(), e.inner().to_string()))
}

fn check_key(key: Option<&[u8]>, company_id: &str) -> Result<(), DecodeError> {
    let Some(key) = key else {
        return Err(DecodeError::new(
            ErrorKind::WrongKey,
            format!("record has no key; it must be keyed by company_id `{company_id}`"),
        ));
    };
    match std::str::from_utf8(key) {
        Ok(k) if k == company_id => Ok(()),
        Ok(k) => Err(DecodeError::new(
            ErrorKind::WrongKey,
            format!("record key `{k}` differs from company_id `{company_id}`"),
        )),
        Err(_) => Err(DecodeError::new(ErrorKind::WrongKey, "record key is not UTF-8")),
    }
}

fn avro_error(e: crmflow_avro::AvroError) -> DecodeError {
    use crmflow_avro::AvroError as A;
    let kind = match &e {
        A::UnknownType(_) => ErrorKind::UnknownType,
        A::SchemaViolation { .. } => ErrorKind::SchemaViolation,
        _ => ErrorKind::Undecodable,
    };
    DecodeError::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(stream: InputStream, key: &str, json: &str) -> Result<InputEvent, DecodeError> {
        decode_input(stream, Some(key.as_bytes()), json.as_bytes(), Encoding::Json)
    }

    const TEAM: &str = r#"{"type":"UserAssignedToTeam","company_id":"c1","user_id":"u1","team_id":"t1","changed_at":"2024-05-01T10:00:00Z"}"#;

    #[test]
    fn good_record_decodes() {
        assert!(decode(InputStream::Teams, "c1", TEAM).is_ok());
    }

    #[test]
    fn each_failure_has_its_kind() {
        let kind = |r: Result<InputEvent, DecodeError>| r.unwrap_err().kind;
        assert_eq!(kind(decode(InputStream::Teams, "c1", "{nope")), ErrorKind::Undecodable);
        assert_eq!(kind(decode(InputStream::Teams, "c1", r#"{"type":"Nope"}"#)), ErrorKind::UnknownType);
        assert_eq!(kind(decode(InputStream::Teams, "c2", TEAM)), ErrorKind::WrongKey);
        assert_eq!(kind(decode(InputStream::Settings, "c1", TEAM)), ErrorKind::WrongTopic);
        let missing = decode(InputStream::Teams, "c1", r#"{"type":"UserAssignedToTeam","company_id":"c1"}"#);
        assert_eq!(missing.clone().unwrap_err().kind, ErrorKind::SchemaViolation);
        assert!(missing.unwrap_err().message.contains("missing field"));
        let empty = TEAM.replace(r#""team_id":"t1""#, r#""team_id":"""#);
        assert_eq!(kind(decode(InputStream::Teams, "c1", &empty)), ErrorKind::ContractViolation);
    }

    #[test]
    fn avro_records_decode_to_the_same_event() {
        let json: serde_json::Value = serde_json::from_str(TEAM).unwrap();
        let avro = SchemaRegistry::bundled().encode(&json).unwrap();
        let from_avro = decode_input(InputStream::Teams, Some(b"c1"), &avro, Encoding::Avro).unwrap();
        assert_eq!(from_avro, decode(InputStream::Teams, "c1", TEAM).unwrap());
        let not_avro = decode_input(InputStream::Teams, Some(b"c1"), TEAM.as_bytes(), Encoding::Avro);
        assert_eq!(not_avro.unwrap_err().kind, ErrorKind::Undecodable);
    }

    /// The bytes path and the parsed-value path (`simulate`'s) decide alike, errors included.
    #[test]
    fn bytes_and_values_decode_alike() {
        let samples = [
            TEAM.to_owned(),
            TEAM.replace("UserAssignedToTeam", "Nope"),
            TEAM.replace(r#""type":"UserAssignedToTeam""#, r#""type":7"#),
            TEAM.replace(r#""type":"UserAssignedToTeam","#, ""),
            r#"{"type":"UserAssignedToTeam","company_id":"c1"}"#.to_owned(),
            r#"{"type":"CrmRecordChanged","event_id":"e","company_id":"c1","integration_id":"i","object_type":"O","object_id":"1","operation":"created","occurred_at":"2024-05-01T10:00:00Z","fields":{"Amount":2500.50,"Big":12345678901234,"S":"x","N":null,"B":true}}"#.to_owned(),
            "[1, 2]".to_owned(),
            r#""text""#.to_owned(),
        ];
        for sample in samples {
            let value: Value = serde_json::from_str(&sample).unwrap();
            let stream = if sample.contains("CrmRecordChanged") { InputStream::CrmChanges } else { InputStream::Teams };
            let from_bytes = decode_input(stream, Some(b"c1"), sample.as_bytes(), Encoding::Json);
            let from_value = decode_input_value(stream, Some(b"c1"), value);
            assert_eq!(from_bytes, from_value, "{sample}");
        }
    }

    #[test]
    fn schema_errors_name_the_field() {
        let bad = r#"{"type":"CrmRecordChanged","event_id":"e","company_id":"c1","integration_id":"i","object_type":"O","object_id":"1","operation":"created","occurred_at":"2024-05-01T10:00:00Z","fields":{"Amount":{"nested":1}}}"#;
        let err = decode(InputStream::CrmChanges, "c1", bad).unwrap_err();
        assert!(err.message.contains("fields.Amount"), "{}", err.message);
    }
}
