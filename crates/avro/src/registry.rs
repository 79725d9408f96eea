//! The registry of event schemas: lookup by event type (for writing) and by fingerprint (for
//! reading), plus the single-object framing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Names, Schema};
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::Value as JsonValue;

use crate::confluent::{self, WriterSchema};
use crate::convert::{avro_to_json, collect_names, json_to_avro, Path};
use crate::fingerprint::single_object_fingerprint;
use crate::AvroError;

/// The two marker bytes that start every single-object encoded message.
const MARKER: [u8; 2] = [0xC3, 0x01];
/// Marker plus the 8-byte fingerprint.
const HEADER_LEN: usize = 10;

/// The current schema of every event type: read and written. `(file, JSON)`.
const CURRENT: &[(&str, &str)] = &[
    ("CrmRecordChanged.avsc", include_str!("../../../schemas/CrmRecordChanged.avsc")),
    ("IntegrationSettingsChanged.avsc", include_str!("../../../schemas/IntegrationSettingsChanged.avsc")),
    ("WorkflowSaved.avsc", include_str!("../../../schemas/WorkflowSaved.avsc")),
    ("WorkflowDeleted.avsc", include_str!("../../../schemas/WorkflowDeleted.avsc")),
    ("UserAssignedToTeam.avsc", include_str!("../../../schemas/UserAssignedToTeam.avsc")),
    ("UserRemovedFromTeam.avsc", include_str!("../../../schemas/UserRemovedFromTeam.avsc")),
    ("UserProvisioned.avsc", include_str!("../../../schemas/UserProvisioned.avsc")),
    ("ActivityAccepted.avsc", include_str!("../../../schemas/ActivityAccepted.avsc")),
    ("ActivityIgnored.avsc", include_str!("../../../schemas/ActivityIgnored.avsc")),
];

/// Historical writer schemas: only read (resolved against the current schema of the same name).
const HISTORY: &[(&str, &str)] =
    &[("history/CrmRecordChanged.v1.avsc", include_str!("../../../schemas/history/CrmRecordChanged.v1.avsc"))];

/// One parsed schema.
#[derive(Debug)]
struct Entry {
    /// The record's short name, which is the event type.
    event_type: String,
    /// Where it came from, for messages.
    source: String,
    /// The schema's JSON as written.
    text: String,
    schema: Schema,
    /// The named types inside `schema`, for following references.
    names: Names,
    fingerprint: [u8; 8],
}

/// Every event schema crmflow knows, current and historical writer schemas, indexed by
/// fingerprint.
#[derive(Debug)]
pub struct SchemaRegistry {
    /// The current schema per event type; reader and writer.
    current: BTreeMap<String, Entry>,
    /// Historical writer schemas.
    history: Vec<Entry>,
    /// Fingerprint -> where its writer schema is.
    by_fingerprint: HashMap<[u8; 8], Writer>,
}

/// Where to find the writer schema of a fingerprint.
#[derive(Debug, Clone)]
enum Writer {
    Current(String),
    History(usize),
}

impl SchemaRegistry {
    /// The schemas bundled from `schemas/` (embedded at compile time), current + history.
    ///
    /// # Panics
    /// If a bundled schema is invalid, which is a build defect caught by this crate's tests,
    /// never a consequence of input data.
    pub fn bundled() -> &'static SchemaRegistry {
        static BUNDLED: OnceLock<SchemaRegistry> = OnceLock::new();
        BUNDLED.get_or_init(|| {
            SchemaRegistry::from_sources(CURRENT, HISTORY)
                .unwrap_or_else(|e| panic!("the Avro schemas bundled from schemas/ are invalid: {e}"))
        })
    }

    /// Builds a registry from `(source name, schema JSON)` pairs.
    fn from_sources(current: &[(&str, &str)], history: &[(&str, &str)]) -> Result<Self, String> {
        let mut registry =
            SchemaRegistry { current: BTreeMap::new(), history: Vec::new(), by_fingerprint: HashMap::new() };
        for (source, json) in current {
            let entry = parse_entry(source, json)?;
            registry.index(&entry, Writer::Current(entry.event_type.clone()))?;
            if let Some(previous) = registry.current.insert(entry.event_type.clone(), entry) {
                return Err(format!(
                    "{source}: event type {} is also defined by {}",
                    previous.event_type, previous.source
                ));
            }
        }
        for (source, json) in history {
            let entry = parse_entry(source, json)?;
            let reader = registry
                .current
                .get(&entry.event_type)
                .ok_or_else(|| format!("{source}: historical schema of {} has no current schema", entry.event_type))?;
            // Fail at startup, not on the first old message, if evolution broke compatibility.
            SchemaCompatibility::can_read(&entry.schema, &reader.schema)
                .map_err(|e| format!("{source}: current {} cannot read data written with it: {e}", reader.source))?;
            registry.index(&entry, Writer::History(registry.history.len()))?;
            registry.history.push(entry);
        }
        Ok(registry)
    }

    fn index(&mut self, entry: &Entry, writer: Writer) -> Result<(), String> {
        if self.by_fingerprint.insert(entry.fingerprint, writer).is_some() {
            return Err(format!(
                "{}: has the same fingerprint {} as another schema (identical canonical form)",
                entry.source,
                hex(&entry.fingerprint)
            ));
        }
        Ok(())
    }

    /// Encodes the JSON form of an event as Avro single-object encoding with the current schema
    /// of its type. The event type is the JSON object's `"type"` field (e.g.
    /// `"CrmRecordChanged"`).
    pub fn encode(&self, event: &JsonValue) -> Result<Vec<u8>, AvroError> {
        self.write(event, |entry, bytes| {
            bytes.extend_from_slice(&MARKER);
            bytes.extend_from_slice(&entry.fingerprint);
        })
    }

    /// Encodes the JSON form of an event in the Confluent wire format: magic byte 0, `schema_id`
    /// (big-endian), then the Avro datum written with the current schema of its type, which the
    /// caller registered under that id (see [`SchemaRegistry::schema_text`]).
    pub fn encode_confluent(&self, event: &JsonValue, schema_id: u32) -> Result<Vec<u8>, AvroError> {
        self.write(event, |_, bytes| confluent::write_header(schema_id, bytes))
    }

    /// Writes `event` with the current schema of its type, after the header `header` writes.
    fn write(&self, event: &JsonValue, header: impl FnOnce(&Entry, &mut Vec<u8>)) -> Result<Vec<u8>, AvroError> {
        let event_type = event_type_of(event)?;
        let entry = self.current.get(event_type).ok_or_else(|| AvroError::UnknownType(event_type.to_owned()))?;

        let value = json_to_avro(&entry.schema, event, &entry.names, &Path::Root).map_err(|v| {
            AvroError::SchemaViolation { event_type: event_type.to_owned(), path: v.path, message: v.message }
        })?;

        let internal =
            |e: apache_avro::Error| AvroError::Encode { event_type: event_type.to_owned(), message: e.to_string() };
        let writer = GenericDatumWriter::builder(&entry.schema).build().map_err(internal)?;
        let mut bytes = Vec::with_capacity(128);
        header(entry, &mut bytes);
        writer.write_value_ref(&mut bytes, &value).map_err(internal)?;
        Ok(bytes)
    }

    /// Decodes single-object bytes: checks the `C3 01` marker, looks up the writer schema by its
    /// CRC-64-AVRO (Rabin) fingerprint (8 bytes little-endian), resolves it against the current
    /// reader schema of the same record name (schema evolution), and returns the JSON form,
    /// including `"type"`.
    pub fn decode(&self, bytes: &[u8]) -> Result<JsonValue, AvroError> {
        // Slice patterns check length and split in one step, without indexing that could panic.
        let [m0, m1, rest @ ..] = bytes else {
            return Err(AvroError::NotSingleObject(format!(
                "{} bytes is too short for the {HEADER_LEN}-byte header (C3 01 marker + 8-byte fingerprint)",
                bytes.len()
            )));
        };
        if [*m0, *m1] != MARKER {
            return Err(AvroError::NotSingleObject(format!("expected marker C3 01, found {m0:02X} {m1:02X}")));
        }
        let Some((fingerprint, datum)) = rest.split_first_chunk::<8>() else {
            return Err(AvroError::NotSingleObject(format!(
                "{} bytes is too short for the {HEADER_LEN}-byte header (C3 01 marker + 8-byte fingerprint)",
                bytes.len()
            )));
        };

        let writer = match self.by_fingerprint.get(fingerprint) {
            Some(Writer::Current(event_type)) => self.current.get(event_type),
            Some(Writer::History(i)) => self.history.get(*i),
            None => None,
        }
        .ok_or_else(|| AvroError::UnknownFingerprint(hex(fingerprint)))?;
        // Every writer's event type has a current schema (checked in from_sources).
        let reader =
            self.current.get(&writer.event_type).ok_or_else(|| AvroError::UnknownType(writer.event_type.clone()))?;
        let context = |what: &str| format!("{} (written with {}): {what}", writer.event_type, writer.source);
        // A datum written with the current schema needs no resolution (nearly every record):
        // resolving it against itself would rebuild and walk the schema once more.
        let resolve_against = (!std::ptr::eq(writer, reader)).then_some(reader);
        let value = read_datum(&writer.schema, resolve_against.map(|r| &r.schema), datum, &context)?;
        self.to_event(reader, &value, &context)
    }

    /// Decodes an Avro datum written with `writer`, a schema a Confluent Schema Registry holds
    /// (the bytes after the 5-byte header [`confluent::split`] removes), into the JSON form of
    /// the event it names: the writer's record (or, for a union, the branch the datum picks) is
    /// resolved against the current schema of the event type with the same name.
    pub fn decode_confluent(&self, writer: &WriterSchema, datum: &[u8]) -> Result<JsonValue, AvroError> {
        let event_type = writer.event_type(datum)?;
        let reader = self.current.get(event_type).ok_or_else(|| AvroError::UnknownType(event_type.to_owned()))?;
        let context = |what: &str| format!("{event_type} (written with registry schema {}): {what}", writer.id);
        let value = read_datum(&writer.schema, Some(&reader.schema), datum, &context)?;
        self.to_event(reader, &value, &context)
    }

    /// The JSON form of a datum already in `reader`'s shape, with its `"type"`.
    fn to_event(
        &self,
        reader: &Entry,
        value: &Value,
        context: &dyn Fn(&str) -> String,
    ) -> Result<JsonValue, AvroError> {
        let mut json = avro_to_json(&reader.schema, value, &reader.names, &Path::Root)
            .map_err(|v| AvroError::Undecodable(context(&v.to_string())))?;
        match &mut json {
            JsonValue::Object(object) => {
                object.insert("type".into(), JsonValue::String(reader.event_type.clone()));
            }
            // A record schema always converts to an object.
            _ => return Err(AvroError::Undecodable(context("datum is not a record"))),
        }
        Ok(json)
    }

    /// The current schema of an event type as written in `schemas/` (what crmflow registers in
    /// a Confluent Schema Registry for the topics it writes).
    pub fn schema_text(&self, event_type: &str) -> Option<&str> {
        self.current.get(event_type).map(|entry| entry.text.as_str())
    }

    /// The type names known (current schemas), in alphabetical order.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.current.keys().map(String::as_str)
    }
}

/// A byte-slice reader that remembers whether the decoder asked for more bytes than there are.
/// Decoding a complete datum never reads past its end (lengths are known, varints end with a
/// byte whose high bit is clear), so such a request means the datum was truncated.
struct EofTracking<'a> {
    rest: &'a [u8],
    read_past_end: bool,
}

impl Read for EofTracking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.read_past_end = true;
        }
        self.rest.read(buf)
    }
}

/// Reads one datum written with `writer`, resolved against `reader` when given: the whole of
/// `datum`, no byte more or less.
fn read_datum(
    writer: &Schema,
    reader: Option<&Schema>,
    datum: &[u8],
    context: &dyn Fn(&str) -> String,
) -> Result<Value, AvroError> {
    let builder = GenericDatumReader::builder(writer);
    let datum_reader = match reader {
        Some(reader) => builder.reader_schema(reader).build(),
        None => builder.build(),
    }
    .map_err(|e| AvroError::Undecodable(context(&e.to_string())))?;
    let mut input = EofTracking { rest: datum, read_past_end: false };
    let decoded = datum_reader.read_value(&mut input);
    // Checked before the decode result: apache-avro 0.22 decodes a union whose index byte is
    // missing (EOF) as `Union(0, Null)` instead of failing, so a message cut off before a
    // trailing optional field would otherwise "succeed" with the field silently null.
    if input.read_past_end {
        return Err(AvroError::Undecodable(context("datum is truncated (the bytes end before the record does)")));
    }
    let value = decoded.map_err(|e| AvroError::Undecodable(context(&e.to_string())))?;
    if !input.rest.is_empty() {
        return Err(AvroError::Undecodable(context(&format!("{} trailing bytes after the datum", input.rest.len()))));
    }
    Ok(value)
}

/// The event type an event's JSON form names in its `"type"` member.
fn event_type_of(event: &JsonValue) -> Result<&str, AvroError> {
    let object = event
        .as_object()
        .ok_or_else(|| AvroError::NotAnEvent(format!("expected a JSON object, got {}", json_kind(event))))?;
    match object.get("type") {
        Some(JsonValue::String(t)) => Ok(t),
        Some(other) => Err(AvroError::NotAnEvent(format!(
            "\"type\" must be a string naming the event type, got {}",
            json_kind(other)
        ))),
        None => Err(AvroError::NotAnEvent("missing \"type\" field naming the event type".into())),
    }
}

fn parse_entry(source: &str, json: &str) -> Result<Entry, String> {
    let schema = Schema::parse_str(json).map_err(|e| format!("{source}: {e}"))?;
    let Schema::Record(record) = &schema else {
        return Err(format!("{source}: an event schema must be a record"));
    };
    let event_type = record.name.name().to_owned();
    let fingerprint = single_object_fingerprint(&schema).map_err(|e| format!("{source}: {e}"))?;
    let mut names = Names::new();
    collect_names(&schema, &mut names);
    Ok(Entry { event_type, source: source.to_owned(), text: json.to_owned(), schema, names, fingerprint })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn json_kind(json: &JsonValue) -> &'static str {
    match json {
        JsonValue::Null => "null",
        JsonValue::Bool(_) => "a boolean",
        JsonValue::Number(_) => "a number",
        JsonValue::String(_) => "a string",
        JsonValue::Array(_) => "an array",
        JsonValue::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
