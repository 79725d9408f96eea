//! The Confluent Schema Registry wire format: magic byte 0, the writer schema's registry id as
//! 4 bytes big-endian, then the Avro binary datum. Only the framing and the writer schema live
//! here; fetching a schema by id and registering one is the caller's (it needs the network).

use apache_avro::schema::Schema;

use crate::AvroError;

/// The byte every Confluent-framed message starts with.
pub const MAGIC: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

/// Splits a Confluent-framed message into its schema id and its Avro datum.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), AvroError> {
    let Some(([magic, id @ ..], datum)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(AvroError::NotConfluentFramed(format!(
            "{} bytes is too short for the {HEADER_LEN}-byte header (magic byte 0 + 4-byte schema id)",
            bytes.len()
        )));
    };
    if *magic != MAGIC {
        return Err(AvroError::NotConfluentFramed(format!("expected magic byte 00, found {magic:02X}")));
    }
    Ok((u32::from_be_bytes(*id), datum))
}

/// Appends the 5-byte header naming `schema_id`.
pub fn write_header(schema_id: u32, bytes: &mut Vec<u8>) {
    bytes.push(MAGIC);
    bytes.extend_from_slice(&schema_id.to_be_bytes());
}

/// A writer schema a registry returned for an id, parsed once (callers cache it by id: a
/// registry never changes the schema of an id).
///
/// An event's writer schema is one record (the subject holds one event type, as under
/// RecordNameStrategy, or TopicNameStrategy on a topic of one type), or a union of records (a
/// topic of several event types under TopicNameStrategy): the datum's branch names the event.
#[derive(Debug)]
pub struct WriterSchema {
    /// The registry's id of the schema, for messages.
    pub(crate) id: u32,
    pub(crate) schema: Schema,
    /// The event type (record name) of each union branch, or of the record itself: `None` for a
    /// branch that is no record (e.g. `"null"`).
    events: Vec<Option<String>>,
    is_union: bool,
}

impl WriterSchema {
    /// Parses the schema text a registry holds under `id`.
    pub fn parse(id: u32, text: &str) -> Result<WriterSchema, AvroError> {
        let invalid = |message: String| AvroError::WriterSchema { id, message };
        let schema = Schema::parse_str(text).map_err(|e| invalid(e.to_string()))?;
        let record_name = |schema: &Schema| match schema {
            Schema::Record(record) => Some(record.name.name().to_owned()),
            Schema::Ref { name } => Some(name.name().to_owned()),
            _ => None,
        };
        let (events, is_union) = match &schema {
            Schema::Record(_) => (vec![record_name(&schema)], false),
            Schema::Union(union) if union.variants().iter().any(|v| record_name(v).is_some()) => {
                (union.variants().iter().map(record_name).collect(), true)
            }
            other => {
                return Err(invalid(format!(
                    "an event's writer schema must be a record or a union of records, not {:?}",
                    apache_avro::schema::SchemaKind::from(other)
                )))
            }
        };
        Ok(WriterSchema { id, schema, events, is_union })
    }

    /// The registry's id of this schema.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The event type `datum` holds: the record's name, or that of the union branch it starts
    /// with.
    pub(crate) fn event_type(&self, datum: &[u8]) -> Result<&str, AvroError> {
        let branch = if self.is_union { union_branch(datum, self.id)? } else { 0 };
        match self.events.get(branch) {
            Some(Some(name)) => Ok(name),
            _ => Err(AvroError::Undecodable(format!(
                "branch {branch} of registry schema {}'s union is not an event record",
                self.id
            ))),
        }
    }
}

/// The union branch index a datum starts with: a zig-zag varint (Avro `long`).
fn union_branch(datum: &[u8], id: u32) -> Result<usize, AvroError> {
    let mut raw: u64 = 0;
    for (i, byte) in datum.iter().take(10).enumerate() {
        raw |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let index = (raw >> 1) as i64 ^ -((raw & 1) as i64);
            return usize::try_from(index)
                .map_err(|_| AvroError::Undecodable(format!("negative union branch {index} (registry schema {id})")));
        }
    }
    Err(AvroError::Undecodable(format!("datum ends inside its union branch index (registry schema {id})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_id_and_datum() {
        let mut bytes = Vec::new();
        write_header(0x0102_0304, &mut bytes);
        bytes.extend_from_slice(b"datum");
        assert_eq!(split(&bytes).unwrap(), (0x0102_0304, &b"datum"[..]));
        assert!(matches!(split(&[0, 0, 0]), Err(AvroError::NotConfluentFramed(_))));
        assert!(matches!(split(&[0xC3, 1, 0, 0, 0, 0]), Err(AvroError::NotConfluentFramed(m)) if m.contains("C3")));
    }

    #[test]
    fn union_branches_are_zig_zag_varints() {
        assert_eq!(union_branch(&[0x00], 1).unwrap(), 0);
        assert_eq!(union_branch(&[0x02, 0xFF], 1).unwrap(), 1);
        assert_eq!(union_branch(&[0x80, 0x01], 1).unwrap(), 64);
        assert!(union_branch(&[0x01], 1).is_err(), "-1");
        assert!(union_branch(&[0x80], 1).is_err(), "cut off");
        assert!(union_branch(&[], 1).is_err());
    }

    #[test]
    fn writer_schemas_must_name_events() {
        let record = r#"{"type":"record","name":"A","fields":[]}"#;
        assert!(WriterSchema::parse(1, record).is_ok());
        let union = format!(r#"["null",{record},{{"type":"record","name":"B","fields":[]}}]"#);
        let union = WriterSchema::parse(2, &union).unwrap();
        assert_eq!(union.event_type(&[0x04]).unwrap(), "B");
        assert!(union.event_type(&[0x00]).is_err(), "the null branch is no event");
        assert!(matches!(WriterSchema::parse(3, r#""string""#), Err(AvroError::WriterSchema { id: 3, .. })));
        assert!(matches!(WriterSchema::parse(4, "{nope"), Err(AvroError::WriterSchema { id: 4, .. })));
    }
}
