//! Output event → record value, and back (for consumers and tests).

use crmflow_avro::SchemaRegistry;
use crmflow_domain::OutputEvent;

use crate::encoding::Encoding;
use crate::error::{DecodeError, EncodeError, ErrorKind};

/// Encodes an output event in a topic's encoding.
pub fn encode_output(event: &OutputEvent, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    Ok(match encoding {
        Encoding::Json => serde_json::to_vec(event)?,
        Encoding::Avro => SchemaRegistry::bundled().encode(&serde_json::to_value(event)?)?,
    })
}

/// Decodes an output event, as a downstream consumer would.
pub fn decode_output(payload: &[u8], encoding: Encoding) -> Result<OutputEvent, DecodeError> {
    let value = match encoding {
        Encoding::Json => serde_json::from_slice(payload)
            .map_err(|e| DecodeError::new(ErrorKind::Undecodable, format!("value is not valid JSON: {e}")))?,
        Encoding::Avro => SchemaRegistry::bundled()
            .decode(payload)
            .map_err(|e| DecodeError::new(ErrorKind::Undecodable, e.to_string()))?,
    };
    serde_json::from_value(value).map_err(|e| DecodeError::new(ErrorKind::SchemaViolation, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_round_trip_in_both_encodings() {
        let event: OutputEvent = serde_json::from_str(
            r#"{"type":"ActivityIgnored","event_id":"e","source_event_id":"s","reason":"user_not_synced","detail":"d",
                "company_id":"c","integration_id":"i","workflow_id":"w","activity_type":"Sale","object_type":"O","object_id":"1"}"#,
        )
        .unwrap();
        for encoding in [Encoding::Json, Encoding::Avro] {
            let bytes = encode_output(&event, encoding).unwrap();
            assert_eq!(decode_output(&bytes, encoding).unwrap(), event, "{encoding:?}");
        }
    }
}
