//! Schema-directed conversion between the JSON form of an event and apache-avro's generic
//! [`Value`](AvroValue).
//!
//! The converter walks the Avro schema and the JSON value together, so no serde mapping of
//! the event types is needed and every error can name the field path it happened at.
//!
//! JSON conventions (see the crate docs): `timestamp-millis` longs are RFC 3339 strings,
//! enums are strings, maps and records are objects, a union is its inner value (the branch
//! is picked by the JSON value's kind).

use std::collections::HashMap;
use std::fmt;

use apache_avro::schema::{Name, Names, RecordSchema, Schema, SchemaKind, UnionSchema};
use apache_avro::types::Value as AvroValue;
use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Number, Value as JsonValue};

/// The `timestamp-millis` values RFC 3339 can write in UTC (0000-01-01 to 9999-12-31): only
/// these are read or written, so every timestamp crmflow takes it can also give back.
const WRITABLE_MILLIS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;

/// Where in an event a value sits. A borrowed linked list, so that descending into a field
/// allocates nothing; it is rendered only when an error needs it.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    /// The event itself.
    Root,
    /// A record field or map key below a parent.
    Key(&'a Path<'a>, &'a str),
    /// An array element below a parent.
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("(event)"),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(Path::Root, index) => write!(f, "[{index}]"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// A conversion failure at a path. The registry turns it into a public error variant.
#[derive(Debug)]
pub(crate) struct Violation {
    /// Rendered [`Path`].
    pub(crate) path: String,
    /// What is wrong there.
    pub(crate) message: String,
}

impl Violation {
    fn new(path: &Path<'_>, message: impl Into<String>) -> Self {
        Self { path: path.to_string(), message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects the named types (records, enums, fixed) defined anywhere in `schema`, so that
/// `Schema::Ref`s (a named type used a second time) can be followed.
pub(crate) fn collect_names(schema: &Schema, names: &mut Names) {
    match schema {
        Schema::Record(record) => {
            names.insert(record.name.clone(), schema.clone());
            for field in &record.fields {
                collect_names(&field.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(fixed) => {
            names.insert(fixed.name.clone(), schema.clone());
        }
        Schema::Array(array) => collect_names(&array.items, names),
        Schema::Map(map) => collect_names(&map.types, names),
        Schema::Union(union) => {
            for variant in union.variants() {
                collect_names(variant, names);
            }
        }
        _ => {}
    }
}

/// Follows a `Schema::Ref` to the named type it stands for; other schemas are returned as is.
fn deref<'s>(schema: &'s Schema, names: &'s Names, path: &Path<'_>) -> Result<&'s Schema, Violation> {
    match schema {
        Schema::Ref { name } => names
            .get(name)
            .ok_or_else(|| Violation::new(path, format!("schema refers to undefined type {}", fullname(name)))),
        other => Ok(other),
    }
}

fn fullname(name: &Name) -> String {
    name.fullname(None)
}

// ---------------------------------------------------------------------------------------------
// JSON -> Avro
// ---------------------------------------------------------------------------------------------

/// Converts `json` to an Avro value of `schema`.
pub(crate) fn json_to_avro(
    schema: &Schema,
    json: &JsonValue,
    names: &Names,
    path: &Path<'_>,
) -> Result<AvroValue, Violation> {
    let mismatch = || Violation::new(path, format!("expected {}, got {}", expected(schema, names), describe(json)));
    match schema {
        Schema::Null => json.is_null().then_some(AvroValue::Null).ok_or_else(mismatch),
        Schema::Boolean => json.as_bool().map(AvroValue::Boolean).ok_or_else(mismatch),
        Schema::Int => {
            let n = json.as_i64().ok_or_else(mismatch)?;
            i32::try_from(n)
                .map(AvroValue::Int)
                .map_err(|_| Violation::new(path, format!("{n} is out of range for an Avro int")))
        }
        Schema::Long => match json {
            JsonValue::Number(n) if n.is_u64() && !n.is_i64() => {
                Err(Violation::new(path, format!("{n} is out of range for an Avro long")))
            }
            _ => json.as_i64().map(AvroValue::Long).ok_or_else(mismatch),
        },
        // f64 -> f32 narrowing is what a float field means; no crmflow schema uses float.
        Schema::Float => json.as_f64().map(|f| AvroValue::Float(f as f32)).ok_or_else(mismatch),
        Schema::Double => json.as_f64().map(AvroValue::Double).ok_or_else(mismatch),
        Schema::String => json.as_str().map(|s| AvroValue::String(s.to_owned())).ok_or_else(mismatch),
        Schema::Enum(e) => {
            let symbol = json.as_str().ok_or_else(mismatch)?;
            let index = e.symbols.iter().position(|s| s == symbol).ok_or_else(mismatch)?;
            // Symbol lists are tiny; an index beyond u32 cannot come from a parsed schema.
            let index = u32::try_from(index).map_err(|_| mismatch())?;
            Ok(AvroValue::Enum(index, symbol.to_owned()))
        }
        Schema::TimestampMillis => {
            let text = json.as_str().ok_or_else(mismatch)?;
            let instant = DateTime::parse_from_rfc3339(text).map_err(|e| {
                Violation::new(path, format!("expected an RFC 3339 timestamp, got {}: {e}", describe(json)))
            })?;
            // Sub-millisecond digits are truncated: the Avro field holds milliseconds.
            let ms = instant.timestamp_millis();
            if !WRITABLE_MILLIS.contains(&ms) {
                return Err(Violation::new(path, format!("timestamp {text} is outside years 0000 to 9999 in UTC")));
            }
            Ok(AvroValue::TimestampMillis(ms))
        }
        Schema::Array(array) => {
            let items = json.as_array().ok_or_else(mismatch)?;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| json_to_avro(&array.items, item, names, &Path::Index(path, i)))
                .collect::<Result<Vec<_>, _>>()
                .map(AvroValue::Array)
        }
        Schema::Map(map) => {
            let entries = json.as_object().ok_or_else(mismatch)?;
            entries
                .iter()
                .map(|(key, value)| {
                    json_to_avro(&map.types, value, names, &Path::Key(path, key)).map(|v| (key.clone(), v))
                })
                .collect::<Result<HashMap<_, _>, _>>()
                .map(AvroValue::Map)
        }
        Schema::Record(record) => {
            let object = json.as_object().ok_or_else(mismatch)?;
            record_to_avro(record, object, names, path)
        }
        Schema::Union(union) => union_to_avro(union, json, names, path),
        Schema::Ref { .. } => json_to_avro(deref(schema, names, path)?, json, names, path),
        other => Err(Violation::new(
            path,
            format!("schema type {:?} is not supported by crmflow-avro", SchemaKind::from(other)),
        )),
    }
}

fn record_to_avro(
    record: &RecordSchema,
    object: &Map<String, JsonValue>,
    names: &Names,
    path: &Path<'_>,
) -> Result<AvroValue, Violation> {
    let mut fields = Vec::with_capacity(record.fields.len());
    // JSON members that are not schema fields (notably the "type" discriminator) are ignored.
    for field in &record.fields {
        let field_path = Path::Key(path, &field.name);
        let value = match (object.get(&field.name), &field.default) {
            (Some(value), _) if !value.is_null() => json_to_avro(&field.schema, value, names, &field_path)?,
            // Missing and the schema has a default: use it. Defaults are in Avro's JSON encoding
            // (e.g. a number for a timestamp), so apache-avro resolves them, not our converter.
            (None, Some(default)) => AvroValue::try_from(default.clone())
                .and_then(|v| v.resolve_with_names(&field.schema, names))
                .map_err(|e| Violation::new(&field_path, format!("schema default does not resolve: {e}")))?,
            // Missing or null: fine exactly when the field is nullable.
            (value, _) => {
                if is_nullable(&field.schema, names) {
                    json_to_avro(&field.schema, &JsonValue::Null, names, &field_path)?
                } else if value.is_some() {
                    return Err(Violation::new(
                        &field_path,
                        format!("expected {}, got null", expected(&field.schema, names)),
                    ));
                } else {
                    return Err(Violation::new(
                        &field_path,
                        format!("missing required field (expected {})", expected(&field.schema, names)),
                    ));
                }
            }
        };
        fields.push((field.name.clone(), value));
    }
    Ok(AvroValue::Record(fields))
}

fn is_nullable(schema: &Schema, names: &Names) -> bool {
    match schema {
        Schema::Null => true,
        Schema::Union(union) => union.variants().iter().any(|v| matches!(v, Schema::Null)),
        Schema::Ref { name } => names.get(name).is_some_and(|s| is_nullable(s, names)),
        _ => false,
    }
}

/// Picks the union branch that fits the JSON value: candidates are the branches of the JSON
/// value's kind, in preference order; the first that converts wins.
fn union_to_avro(
    union: &UnionSchema,
    json: &JsonValue,
    names: &Names,
    path: &Path<'_>,
) -> Result<AvroValue, Violation> {
    // Preference order per JSON kind: integers go to long before double, strings to string
    // before enum/timestamp, objects to records before maps.
    let preference: &[SchemaKind] = match json {
        JsonValue::Null => &[SchemaKind::Null],
        JsonValue::Bool(_) => &[SchemaKind::Boolean],
        JsonValue::Number(n) if n.is_i64() => {
            &[SchemaKind::Long, SchemaKind::Int, SchemaKind::Double, SchemaKind::Float]
        }
        JsonValue::Number(_) => &[SchemaKind::Double, SchemaKind::Float],
        JsonValue::String(_) => &[SchemaKind::String, SchemaKind::Enum, SchemaKind::TimestampMillis],
        JsonValue::Array(_) => &[SchemaKind::Array],
        JsonValue::Object(_) => &[SchemaKind::Record, SchemaKind::Map],
    };
    let mut first_error = None;
    for kind in preference {
        for (index, variant) in union.variants().iter().enumerate() {
            let resolved = deref(variant, names, path)?;
            if SchemaKind::from(resolved) != *kind {
                continue;
            }
            match json_to_avro(resolved, json, names, path) {
                Ok(value) => {
                    // A parsed union has far fewer than u32::MAX branches.
                    let index =
                        u32::try_from(index).map_err(|_| Violation::new(path, "union has too many branches"))?;
                    return Ok(AvroValue::Union(index, Box::new(value)));
                }
                // Keep the first branch's error: with one candidate (the usual case) it is the
                // precise one from deep inside the value.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        Violation::new(path, format!("expected {}, got {}", expected_union(union, names), describe(json)))
    }))
}

/// Describes what JSON a schema accepts, for error messages.
fn expected(schema: &Schema, names: &Names) -> String {
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "a boolean".into(),
        Schema::Int => "an integer (int)".into(),
        Schema::Long => "an integer (long)".into(),
        Schema::Float | Schema::Double => "a number".into(),
        Schema::String => "a string".into(),
        Schema::Enum(e) => format!("one of \"{}\"", e.symbols.join("\", \"")),
        Schema::TimestampMillis => "an RFC 3339 timestamp string".into(),
        Schema::Array(_) => "an array".into(),
        Schema::Map(_) => "an object (map)".into(),
        Schema::Record(r) => format!("an object ({})", r.name.name()),
        Schema::Union(u) => expected_union(u, names),
        Schema::Ref { name } => match names.get(name) {
            Some(s) => expected(s, names),
            None => fullname(name),
        },
        other => format!("{:?}", SchemaKind::from(other)),
    }
}

fn expected_union(union: &UnionSchema, names: &Names) -> String {
    union.variants().iter().map(|v| expected(v, names)).collect::<Vec<_>>().join(" or ")
}

/// Describes a JSON value briefly for error messages (short strings verbatim, nothing large).
fn describe(json: &JsonValue) -> String {
    const MAX_SHOWN: usize = 40;
    match json {
        JsonValue::Null => "null".into(),
        JsonValue::Bool(b) => b.to_string(),
        JsonValue::Number(n) => n.to_string(),
        JsonValue::String(s) if s.chars().count() <= MAX_SHOWN => format!("{s:?}"),
        JsonValue::String(s) => format!("a string of {} characters", s.chars().count()),
        JsonValue::Array(_) => "an array".into(),
        JsonValue::Object(_) => "an object".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Avro -> JSON
// ---------------------------------------------------------------------------------------------

/// Converts a decoded (and resolved) Avro value of `schema` back to its JSON form.
/// Errors are messages naming the path; they mean the bytes decoded to something JSON cannot
/// hold (e.g. a NaN double or an out-of-range timestamp).
pub(crate) fn avro_to_json(
    schema: &Schema,
    value: &AvroValue,
    names: &Names,
    path: &Path<'_>,
) -> Result<JsonValue, Violation> {
    let schema = deref(schema, names, path)?;
    let mismatch = || {
        Violation::new(
            path,
            format!("decoded value {:?} does not fit schema type {:?}", kind_of(value), SchemaKind::from(schema)),
        )
    };
    Ok(match (schema, value) {
        (Schema::Null, AvroValue::Null) => JsonValue::Null,
        (Schema::Boolean, AvroValue::Boolean(b)) => JsonValue::Bool(*b),
        (Schema::Int, AvroValue::Int(i)) => JsonValue::from(*i),
        (Schema::Long, AvroValue::Long(l)) => JsonValue::from(*l),
        (Schema::Long, AvroValue::Int(i)) => JsonValue::from(*i),
        (Schema::Float | Schema::Double, AvroValue::Float(f)) => float(f64::from(*f), path)?,
        (Schema::Float | Schema::Double, AvroValue::Double(d)) => float(*d, path)?,
        (Schema::String, AvroValue::String(s)) => JsonValue::String(s.clone()),
        (Schema::Enum(_), AvroValue::Enum(_, symbol)) => JsonValue::String(symbol.clone()),
        (Schema::TimestampMillis, AvroValue::TimestampMillis(ms) | AvroValue::Long(ms)) => {
            let instant = DateTime::from_timestamp_millis(*ms)
                .filter(|_| WRITABLE_MILLIS.contains(ms))
                .ok_or_else(|| Violation::new(path, format!("timestamp {ms} ms since the epoch is out of range")))?;
            JsonValue::String(instant.to_rfc3339_opts(SecondsFormat::Millis, true))
        }
        (Schema::Array(array), AvroValue::Array(items)) => JsonValue::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| avro_to_json(&array.items, item, names, &Path::Index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        (Schema::Map(map), AvroValue::Map(entries)) => JsonValue::Object(
            entries
                .iter()
                .map(|(key, v)| avro_to_json(&map.types, v, names, &Path::Key(path, key)).map(|j| (key.clone(), j)))
                .collect::<Result<_, _>>()?,
        ),
        (Schema::Record(record), AvroValue::Record(values)) => {
            let mut object = Map::new();
            for (name, v) in values {
                // Resolution against the reader schema yields exactly its fields, in order;
                // look each up by name anyway rather than trusting positions.
                let field = record
                    .lookup
                    .get(name)
                    .and_then(|&i| record.fields.get(i))
                    .ok_or_else(|| Violation::new(path, format!("decoded field {name:?} is not in the schema")))?;
                object.insert(name.clone(), avro_to_json(&field.schema, v, names, &Path::Key(path, name))?);
            }
            JsonValue::Object(object)
        }
        (Schema::Union(union), AvroValue::Union(index, inner)) => {
            let variant = usize::try_from(*index)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or_else(|| Violation::new(path, format!("union branch {index} does not exist")))?;
            avro_to_json(variant, inner, names, path)?
        }
        _ => return Err(mismatch()),
    })
}

/// A double as a JSON number; JSON has no NaN or infinities.
fn float(f: f64, path: &Path<'_>) -> Result<JsonValue, Violation> {
    Number::from_f64(f)
        .map(JsonValue::Number)
        .ok_or_else(|| Violation::new(path, format!("{f} cannot be represented in JSON")))
}

fn kind_of(value: &AvroValue) -> &'static str {
    match value {
        AvroValue::Null => "null",
        AvroValue::Boolean(_) => "boolean",
        AvroValue::Int(_) => "int",
        AvroValue::Long(_) => "long",
        AvroValue::Float(_) => "float",
        AvroValue::Double(_) => "double",
        AvroValue::String(_) => "string",
        AvroValue::Enum(..) => "enum",
        AvroValue::Union(..) => "union",
        AvroValue::Array(_) => "array",
        AvroValue::Map(_) => "map",
        AvroValue::Record(_) => "record",
        AvroValue::TimestampMillis(_) => "timestamp-millis",
        _ => "other",
    }
}
