//! Output decoding, as a downstream consumer does it: `decode_output(bytes, encoding)` in JSON
//! and in Avro, on arbitrary bytes.
//!
//! Invariants: never panics; errors are `undecodable` or `schema_violation` with a message;
//! an output that decodes re-encodes (`encode_output`) in both encodings and decodes back to
//! the same event (an `EncodeError` here would be a record crmflow could decide but not publish).
#![no_main]

use libfuzzer_sys::fuzz_target;

use crmflow_codec::{decode_output, Encoding};
use crmflow_fuzz::{check_output_error, check_output_event};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Json, Encoding::Avro] {
        match decode_output(data, encoding) {
            Ok(event) => check_output_event(&event),
            Err(e) => check_output_error(&e),
        }
    }
});
