//! Schema fingerprints for single-object encoding: CRC-64-AVRO (Rabin) of the schema's
//! Parsing Canonical Form, as specified by Avro.
//!
//! Why not `Schema::fingerprint::<Rabin>()` from apache-avro 0.22? Its Rabin digest is right
//! (same algorithm, little-endian bytes; tested below), but its canonical form renders a
//! logical type such as `{"type":"long","logicalType":"timestamp-millis"}` as
//! `{"type":"long"}` instead of the spec's `"long"` ([PRIMITIVES] after [STRIP]), which is
//! what the Java reference implementation produces. Every crmflow event has a timestamp, so
//! using it would give fingerprints that no other Avro implementation computes. The canonical
//! form here is built from the parsed schema and matches the spec (and apache-avro's output
//! for schemas without logical types; tested below).

use std::collections::HashSet;

use apache_avro::schema::{FixedSchema, Schema, SchemaKind, UuidSchema};

/// `EMPTY` of the Avro spec's CRC-64-AVRO.
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

/// The spec's `FP_TABLE`, computed at compile time.
const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// CRC-64-AVRO (the Avro spec's 64-bit Rabin fingerprint) of `data`.
pub(crate) fn rabin(data: &[u8]) -> u64 {
    data.iter().fold(EMPTY, |fp, &b| (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize])
}

/// The 8 fingerprint bytes of a single-object header for `schema`: CRC-64-AVRO of its
/// Parsing Canonical Form, little-endian.
pub(crate) fn single_object_fingerprint(schema: &Schema) -> Result<[u8; 8], String> {
    Ok(rabin(canonical_form(schema)?.as_bytes()).to_le_bytes())
}

/// The Avro Parsing Canonical Form of `schema`.
///
/// Errors for schema types crmflow does not use and whose canonical form this function does
/// not implement (decimals).
pub(crate) fn canonical_form(schema: &Schema) -> Result<String, String> {
    let mut out = String::new();
    write_pcf(schema, &mut HashSet::new(), &mut out)?;
    Ok(out)
}

// Names and symbols are restricted by the Avro spec to [A-Za-z0-9_.], so they need no
// JSON escaping ([STRINGS] rule is trivially met).
fn write_pcf(schema: &Schema, defined: &mut HashSet<String>, out: &mut String) -> Result<(), String> {
    match schema {
        Schema::Null => out.push_str("\"null\""),
        Schema::Boolean => out.push_str("\"boolean\""),
        Schema::Int | Schema::Date | Schema::TimeMillis => out.push_str("\"int\""),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => out.push_str("\"long\""),
        Schema::Float => out.push_str("\"float\""),
        Schema::Double => out.push_str("\"double\""),
        Schema::Bytes | Schema::Uuid(UuidSchema::Bytes) => out.push_str("\"bytes\""),
        Schema::String | Schema::Uuid(UuidSchema::String) => out.push_str("\"string\""),
        Schema::Uuid(UuidSchema::Fixed(fixed)) | Schema::Duration(fixed) | Schema::Fixed(fixed) => {
            write_fixed(fixed, defined, out)
        }
        Schema::Array(array) => {
            out.push_str("{\"type\":\"array\",\"items\":");
            write_pcf(&array.items, defined, out)?;
            out.push('}');
        }
        Schema::Map(map) => {
            out.push_str("{\"type\":\"map\",\"values\":");
            write_pcf(&map.types, defined, out)?;
            out.push('}');
        }
        Schema::Union(union) => {
            out.push('[');
            for (i, variant) in union.variants().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_pcf(variant, defined, out)?;
            }
            out.push(']');
        }
        Schema::Record(record) => {
            let name = record.name.fullname(None);
            if !defined.insert(name.clone()) {
                // A named type's second occurrence is just its full name.
                out.push_str(&format!("\"{name}\""));
                return Ok(());
            }
            out.push_str(&format!("{{\"name\":\"{name}\",\"type\":\"record\",\"fields\":["));
            for (i, field) in record.fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("{{\"name\":\"{}\",\"type\":", field.name));
                write_pcf(&field.schema, defined, out)?;
                out.push('}');
            }
            out.push_str("]}");
        }
        Schema::Enum(e) => {
            let name = e.name.fullname(None);
            if !defined.insert(name.clone()) {
                out.push_str(&format!("\"{name}\""));
                return Ok(());
            }
            let symbols: Vec<String> = e.symbols.iter().map(|s| format!("\"{s}\"")).collect();
            out.push_str(&format!("{{\"name\":\"{name}\",\"type\":\"enum\",\"symbols\":[{}]}}", symbols.join(",")));
        }
        Schema::Ref { name } => out.push_str(&format!("\"{}\"", name.fullname(None))),
        other => return Err(format!("canonical form of {:?} schemas is not implemented", SchemaKind::from(other))),
    }
    Ok(())
}

fn write_fixed(fixed: &FixedSchema, defined: &mut HashSet<String>, out: &mut String) {
    let name = fixed.name.fullname(None);
    if defined.insert(name.clone()) {
        out.push_str(&format!("{{\"name\":\"{name}\",\"type\":\"fixed\",\"size\":{}}}", fixed.size));
    } else {
        out.push_str(&format!("\"{name}\""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::rabin::Rabin;

    /// Test vectors from the Avro spec's `share/test/data/schema-tests.txt` and apache-avro's
    /// own Rabin doc test.
    #[test]
    fn rabin_matches_known_vectors() {
        assert_eq!(rabin(b"\"int\""), 0x7275_d51a_3f39_5c8f);
        assert_eq!(rabin(b"\"int\"") as i64, 8_247_732_601_305_521_295);
        assert_eq!(rabin(b"hello world").to_le_bytes(), [0x60, 0x33, 0x5b, 0xa6, 0xd0, 0x41, 0x55, 0x28]);
    }

    #[test]
    fn apache_avro_rabin_agrees_and_is_little_endian() -> Result<(), apache_avro::Error> {
        let schema = Schema::parse_str("\"int\"")?;
        assert_eq!(schema.fingerprint::<Rabin>().bytes, rabin(b"\"int\"").to_le_bytes().to_vec());
        assert_eq!(single_object_fingerprint(&schema), Ok(0x7275_d51a_3f39_5c8f_u64.to_le_bytes()));
        Ok(())
    }

    #[test]
    fn canonical_form_agrees_with_apache_avro_without_logical_types() -> Result<(), apache_avro::Error> {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","namespace":"a.b","doc":"d","fields":[
                {"name":"e","type":{"type":"enum","name":"E","symbols":["x","y"]},"doc":"f"},
                {"name":"e2","type":"E"},
                {"name":"m","type":{"type":"map","values":["null","long"]},"default":{}},
                {"name":"a","type":{"type":"array","items":{"type":"fixed","name":"F","size":4}}}
            ]}"#,
        )?;
        let ours = canonical_form(&schema);
        assert_eq!(ours.as_deref(), Ok(schema.canonical_form().as_str()));
        assert_eq!(
            ours.as_deref(),
            Ok(
                r#"{"name":"a.b.R","type":"record","fields":[{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["x","y"]}},{"name":"e2","type":"a.b.E"},{"name":"m","type":{"type":"map","values":["null","long"]}},{"name":"a","type":{"type":"array","items":{"name":"a.b.F","type":"fixed","size":4}}}]}"#
            )
        );
        Ok(())
    }

    /// Documents the apache-avro 0.22 deviation this module exists for.
    #[test]
    fn logical_types_reduce_to_their_primitive() -> Result<(), apache_avro::Error> {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )?;
        let expected = r#"{"name":"R","type":"record","fields":[{"name":"t","type":"long"}]}"#;
        assert_eq!(canonical_form(&schema).as_deref(), Ok(expected));
        assert_eq!(schema.canonical_form().replace(r#"{"type":"long"}"#, r#""long""#), expected);
        Ok(())
    }
}
