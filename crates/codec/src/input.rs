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
    let value = match encoding {
        Encoding::Json => serde_json::from_slice::<Value>(payload)
            .map_err(|e| DecodeError::new(ErrorKind::Undecodable, format!("value is not valid JSON: {e}")))?,
        Encoding::Avro => SchemaRegistry::bundled().decode(payload).map_err(avro_error)?,
    };
    decode_input_value(stream, key, value)
}

/// Checks an already-parsed JSON value against the contract (used by `simulate`).
pub fn decode_input_value(stream: InputStream, key: Option<&[u8]>, value: Value) -> Result<InputEvent, DecodeError> {
    let event = parse_event(value)?;
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
    let type_name = match object.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(other) => {
            return Err(DecodeError::new(ErrorKind::UnknownType, format!("`type` must be a string, got {other}")))
        }
        None => return Err(DecodeError::new(ErrorKind::UnknownType, "the event has no `type` field")),
    };
    // Deserializing the variant's struct directly keeps field paths in error messages.
    match type_name.as_str() {
        "CrmRecordChanged" => typed(&type_name, value).map(InputEvent::CrmRecordChanged),
        "IntegrationSettingsChanged" => typed(&type_name, value).map(InputEvent::IntegrationSettingsChanged),
        "WorkflowSaved" => typed(&type_name, value).map(InputEvent::WorkflowSaved),
        "WorkflowDeleted" => typed(&type_name, value).map(InputEvent::WorkflowDeleted),
        "UserAssignedToTeam" => typed(&type_name, value).map(InputEvent::UserAssignedToTeam),
        "UserRemovedFromTeam" => typed(&type_name, value).map(InputEvent::UserRemovedFromTeam),
        other => Err(DecodeError::new(
            ErrorKind::UnknownType,
            format!("unknown event type `{other}` (expected one of {})", InputEvent::TYPES.join(", ")),
        )),
    }
}

fn typed<T: DeserializeOwned>(type_name: &str, value: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { String::new() } else { format!(" at `{path}`") };
        DecodeError::new(ErrorKind::SchemaViolation, format!("{type_name}{at}: {}", e.inner()))
    })
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

    #[test]
    fn schema_errors_name_the_field() {
        let bad = r#"{"type":"CrmRecordChanged","event_id":"e","company_id":"c1","integration_id":"i","object_type":"O","object_id":"1","operation":"created","occurred_at":"2024-05-01T10:00:00Z","fields":{"Amount":{"nested":1}}}"#;
        let err = decode(InputStream::CrmChanges, "c1", bad).unwrap_err();
        assert!(err.message.contains("fields.Amount"), "{}", err.message);
    }
}
