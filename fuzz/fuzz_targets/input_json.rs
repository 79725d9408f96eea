//! JSON input events: `decode_input(stream, key, bytes, Encoding::Json)` and the parsed-value
//! path `decode_input_value`, on arbitrary bytes.
//!
//! Invariants: never panics; errors have a message and a decoding kind; at most one stream
//! accepts a payload (the others say `wrong_topic`) and never without a key; what is accepted
//! keeps its contract and round-trips through JSON and Avro to the same event; for any JSON text
//! without a duplicate member, the bytes path and the value path decide alike, errors included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use crmflow_codec::{decode_input_value, Encoding};
use crmflow_fuzz::{check_input_payload, company_key, has_duplicate_keys, STREAMS};

fuzz_target!(|data: &[u8]| {
    let value: Option<Value> = serde_json::from_slice(data).ok();
    let key = company_key(value.as_ref());
    let from_bytes = check_input_payload(data, Encoding::Json, &key);
    let Some(value) = value else { return };
    // A parsed value keeps the last of two members with one name, where the bytes path refuses
    // the field given twice: only texts without duplicates must decide alike.
    if has_duplicate_keys(data, &value) {
        return;
    }
    for (stream, from_bytes) in STREAMS.into_iter().zip(&from_bytes) {
        let from_value = decode_input_value(stream, Some(&key), value.clone());
        assert_eq!(&from_value, from_bytes, "{stream:?}: the value path and the bytes path disagree");
    }
});
