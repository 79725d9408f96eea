//! Avro single-object decoding (`crmflow_avro::SchemaRegistry::decode`) and the input contract
//! over it (`decode_input(stream, key, bytes, Encoding::Avro)`), on arbitrary bytes.
//!
//! Invariants: never panics; an error is of a decoding kind (not single-object, unknown
//! fingerprint, undecodable) with a message, and the framing errors are the ones the header
//! explains; what decodes is an object whose `type` is a bundled event type, re-encodes with the
//! current schema and decodes to the same JSON; no strict prefix and no extension of a message
//! that decodes decodes (truncation and trailing bytes are caught); through the codec, the
//! input-payload checks of `input_json` (contract, keys, streams, JSON and Avro round trips).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use crmflow_avro::{AvroError, SchemaRegistry};
use crmflow_codec::Encoding;
use crmflow_fuzz::{check_input_payload, company_key};

fuzz_target!(|data: &[u8]| {
    let registry = SchemaRegistry::bundled();
    let decoded = registry.decode(data);
    match &decoded {
        Ok(json) => {
            let Some(Value::String(event_type)) = json.get("type") else {
                panic!("decoded JSON without a string `type`: {json}");
            };
            assert!(registry.event_types().any(|t| t == event_type), "decoded an unknown type {event_type}");
            let bytes =
                registry.encode(json).unwrap_or_else(|e| panic!("what decodes does not re-encode: {e}\n{json}"));
            match registry.decode(&bytes) {
                Ok(back) => assert_eq!(&back, json, "Avro round trip changed the event"),
                Err(e) => panic!("what decodes, re-encoded, does not decode: {e}\n{json}"),
            }
            let mut longer = data.to_vec();
            longer.push(0);
            assert!(registry.decode(&longer).is_err(), "a trailing byte went unnoticed");
            for cut in [data.len() - 1, data.len().saturating_sub(2).max(10), 10] {
                if cut < data.len() {
                    assert!(registry.decode(&data[..cut]).is_err(), "a message cut to {cut} bytes decodes");
                }
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.trim().is_empty());
            match e {
                AvroError::NotSingleObject(m) | AvroError::UnknownFingerprint(m) | AvroError::Undecodable(m) => {
                    assert!(!m.trim().is_empty(), "an error without detail: {shown}");
                }
                other => panic!("decoding produced an encoding error: {other:?}"),
            }
            let framed = data.len() >= 10 && data[..2] == [0xC3, 0x01];
            assert_eq!(matches!(e, AvroError::NotSingleObject(_)), !framed, "framing error for framed bytes: {shown}");
        }
    }
    let key = company_key(decoded.as_ref().ok());
    let _per_stream = check_input_payload(data, Encoding::Avro, &key);
});
