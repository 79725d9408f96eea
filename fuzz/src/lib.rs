//! The invariants the fuzz targets assert, shared between them.
//!
//! Every target feeds arbitrary bytes to a public decoding API of crmflow and checks more than
//! "it does not panic":
//! - an error says something: a non-empty message, of a kind that decoder can produce;
//! - what decodes satisfies the contract it was checked against (its topic, its key, its rules);
//! - what decodes re-encodes, in JSON and in Avro, and decodes back to the same event.
//!
//! A broken invariant is a panic, which libFuzzer reports as a crash with the input that caused it.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crmflow_avro::SchemaRegistry;
use crmflow_codec::{decode_input, decode_output, encode_output, DecodeError, Encoding, ErrorKind};
use crmflow_domain::{Condition, ConditionValue, InputEvent, InputStream, Operator, OutputEvent, Scalar, Workflow};

/// Every input stream, in tie-break order.
pub const STREAMS: [InputStream; 3] = [InputStream::Settings, InputStream::Teams, InputStream::CrmChanges];

/// Every condition operator.
pub const OPERATORS: [Operator; 12] = [
    Operator::Eq,
    Operator::Ne,
    Operator::Gt,
    Operator::Gte,
    Operator::Lt,
    Operator::Lte,
    Operator::In,
    Operator::NotIn,
    Operator::Contains,
    Operator::StartsWith,
    Operator::Exists,
    Operator::NotExists,
];

/// A decoding error says what is wrong, and is of a kind decoding produces (the others belong
/// to the topic router, the broker and the state store).
pub fn check_decode_error(error: &DecodeError) {
    assert!(!error.message.trim().is_empty(), "a {:?} error with an empty message", error.kind);
    let shown = error.to_string();
    assert!(shown.starts_with(error.kind.as_str()), "the error shows its kind first: {shown}");
    assert!(
        matches!(
            error.kind,
            ErrorKind::Undecodable
                | ErrorKind::UnknownType
                | ErrorKind::SchemaViolation
                | ErrorKind::ContractViolation
                | ErrorKind::WrongKey
                | ErrorKind::WrongTopic
        ),
        "decoding produced a {:?} error: {shown}",
        error.kind
    );
}

/// An output decoding error says what is wrong; decode_output never checks contracts or keys.
pub fn check_output_error(error: &DecodeError) {
    check_decode_error(error);
    assert!(
        matches!(error.kind, ErrorKind::Undecodable | ErrorKind::SchemaViolation),
        "decode_output produced a {:?} error: {error}",
        error.kind
    );
}

/// A decoded input event keeps the contract it was checked against, and survives re-encoding in
/// JSON and in Avro: both decode, with the same stream and key, to the same event.
pub fn check_input_event(stream: InputStream, key: Option<&[u8]>, event: &InputEvent) {
    assert_eq!(event.stream(), stream, "{} accepted on the wrong stream", event.type_name());
    if let Err(e) = event.validate() {
        panic!("a decoded {} breaks its contract: {e}", event.type_name());
    }
    assert_eq!(key, Some(event.company_id().as_bytes()), "accepted under a key that is not its company_id");

    let json = serde_json::to_vec(event).unwrap_or_else(|e| panic!("a decoded event does not serialize: {e}"));
    let shown = String::from_utf8_lossy(&json);
    match decode_input(stream, key, &json, Encoding::Json) {
        Ok(back) => assert_eq!(&back, event, "JSON round trip changed the event: {shown}"),
        Err(e) => panic!("a decoded event, re-encoded as JSON, does not decode: {e}\n{shown}"),
    }

    let value = serde_json::to_value(event).unwrap_or_else(|e| panic!("a decoded event has no JSON value: {e}"));
    let avro = SchemaRegistry::bundled()
        .encode(&value)
        .unwrap_or_else(|e| panic!("a decoded event does not fit its Avro schema: {e}\n{shown}"));
    match decode_input(stream, key, &avro, Encoding::Avro) {
        Ok(back) => assert_eq!(&back, event, "Avro round trip changed the event: {shown}"),
        Err(e) => panic!("a decoded event, re-encoded as Avro, does not decode: {e}\n{shown}"),
    }
}

/// A decoded output event re-encodes in both encodings and decodes back to itself.
pub fn check_output_event(event: &OutputEvent) {
    for encoding in [Encoding::Json, Encoding::Avro] {
        let bytes = encode_output(event, encoding)
            .unwrap_or_else(|e| panic!("a decoded output does not encode as {encoding:?}: {e}\n{event:?}"));
        match decode_output(&bytes, encoding) {
            Ok(back) => assert_eq!(&back, event, "{encoding:?} round trip changed the output"),
            Err(e) => panic!("a decoded output, re-encoded as {encoding:?}, does not decode: {e}\n{event:?}"),
        }
    }
}

/// The key a record would carry: the `company_id` the payload names, when it names one.
pub fn company_key(value: Option<&Value>) -> Vec<u8> {
    value.and_then(|v| v.get("company_id")).and_then(Value::as_str).unwrap_or("c1").as_bytes().to_vec()
}

/// Decodes an input payload on every stream with and without its key, and checks each result:
/// errors say something, at most one stream accepts it, a keyless record is never accepted
/// (and one that is accepted with its key is refused without it for its key alone), and what is
/// accepted round-trips. Returns what the payload decoded to with its key, per stream.
pub fn check_input_payload(payload: &[u8], encoding: Encoding, key: &[u8]) -> [Result<InputEvent, DecodeError>; 3] {
    let results = STREAMS.map(|stream| {
        let decoded = decode_input(stream, Some(key), payload, encoding);
        match &decoded {
            Ok(event) => check_input_event(stream, Some(key), event),
            Err(e) => check_decode_error(e),
        }
        match decode_input(stream, None, payload, encoding) {
            Ok(event) => panic!("a record without a key was accepted: {event:?}"),
            Err(e) => {
                check_decode_error(&e);
                if decoded.is_ok() {
                    assert_eq!(e.kind, ErrorKind::WrongKey, "accepted with its key, refused without it for: {e}");
                }
            }
        }
        decoded
    });
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!(accepted <= 1, "one payload accepted on {accepted} streams");
    if accepted == 1 {
        for result in &results {
            if let Err(e) = result {
                assert_eq!(e.kind, ErrorKind::WrongTopic, "accepted on one stream, refused on another for: {e}");
            }
        }
    }
    results
}

/// Whether a JSON text gives some object member twice (a parsed [`Value`] keeps the last one,
/// the typed decoders refuse it). `value` is the text parsed.
pub fn has_duplicate_keys(text: &[u8], value: &Value) -> bool {
    let mut written = 0usize;
    let mut de = serde_json::Deserializer::from_slice(text);
    let counted = Members(&mut written).deserialize(&mut de).and_then(|()| de.end());
    counted.is_err() || written != members(value)
}

/// Counts the object members in a JSON text, as written.
struct Members<'a>(&'a mut usize);

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            *self.0 += 1;
            map.next_value_seed(Members(&mut *self.0))?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Members(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Counts the object members in a parsed value.
fn members(value: &Value) -> usize {
    match value {
        Value::Object(map) => map.len() + map.values().map(members).sum::<usize>(),
        Value::Array(items) => items.iter().map(members).sum(),
        _ => 0,
    }
}

/// The laws of condition evaluation, for one condition and one field value (`None`: absent).
/// They hold for any condition, valid or not: the operators come in complementary pairs, the
/// inclusive comparisons are the strict ones or equality, and an absent or null field satisfies
/// exactly the negative operators.
pub fn check_condition_laws(condition: &Condition, field: Option<&Scalar>) {
    let holds = |op: Operator| Condition { op, ..condition.clone() }.holds(field);
    let present = field.is_some_and(|v| *v != Scalar::Null);
    let shown = || format!("{condition:?} on {field:?}");
    if !present {
        let negative = matches!(condition.op, Operator::Ne | Operator::NotIn | Operator::NotExists);
        assert_eq!(condition.holds(field), negative, "absent or null field: {}", shown());
        assert_eq!(condition.holds(None), condition.holds(Some(&Scalar::Null)), "null is absent: {}", shown());
    }
    assert_eq!(holds(Operator::Eq), !holds(Operator::Ne), "eq/ne: {}", shown());
    assert_eq!(holds(Operator::In), !holds(Operator::NotIn), "in/not_in: {}", shown());
    assert_eq!(holds(Operator::Exists), !holds(Operator::NotExists), "exists/not_exists: {}", shown());
    assert_eq!(holds(Operator::Exists), present, "exists: {}", shown());
    assert_eq!(holds(Operator::Gte), holds(Operator::Gt) || holds(Operator::Eq), "gte: {}", shown());
    assert_eq!(holds(Operator::Lte), holds(Operator::Lt) || holds(Operator::Eq), "lte: {}", shown());
    let exclusive = [holds(Operator::Gt), holds(Operator::Lt), holds(Operator::Eq)].iter().filter(|h| **h).count();
    assert!(exclusive <= 1, "gt, lt and eq exclude each other: {}", shown());
}

/// The laws of comparing two present values: equality is reflexive and symmetric, `gt` is
/// `lt` swapped, `in [b]` is `eq b`, a text contains and starts with itself.
pub fn check_comparison_laws(a: &Scalar, b: &Scalar) {
    if *a == Scalar::Null || *b == Scalar::Null {
        return;
    }
    let test = |op: Operator, field: &Scalar, value: ConditionValue| {
        Condition { field: "f".into(), op, value: Some(value) }.holds(Some(field))
    };
    let one = |op: Operator, field: &Scalar, value: &Scalar| test(op, field, ConditionValue::One(value.clone()));
    assert_eq!(one(Operator::Eq, a, b), one(Operator::Eq, b, a), "eq is symmetric: {a:?} {b:?}");
    assert_eq!(one(Operator::Gt, a, b), one(Operator::Lt, b, a), "gt is lt swapped: {a:?} {b:?}");
    assert_eq!(one(Operator::Gte, a, b), one(Operator::Lte, b, a), "gte is lte swapped: {a:?} {b:?}");
    assert_eq!(
        test(Operator::In, a, ConditionValue::List(vec![b.clone()])),
        one(Operator::Eq, a, b),
        "in [b] is eq b: {a:?} {b:?}"
    );
    for x in [a, b] {
        assert!(one(Operator::Eq, x, x), "eq is reflexive: {x:?}");
        assert!(!one(Operator::Gt, x, x) && !one(Operator::Lt, x, x), "nothing is above itself: {x:?}");
        assert!(one(Operator::Contains, x, x), "a value contains itself: {x:?}");
        assert!(one(Operator::StartsWith, x, x), "a value starts with itself: {x:?}");
    }
}

/// Evaluates a workflow's conditions against a record's fields and checks the laws: matching is
/// every condition holding, and each condition obeys [`check_condition_laws`] for the record's
/// value of its field, for absence, and for every other value in the record.
pub fn check_workflow_on(workflow: &Workflow, fields: &BTreeMap<String, Scalar>) {
    let all = workflow.conditions.iter().all(|c| c.holds(fields.get(&c.field)));
    assert_eq!(workflow.matches(fields), all, "a workflow matches when all its conditions hold");
    // Bounded, so that a large record costs little more than a small one.
    let values: Vec<&Scalar> = fields.values().take(8).collect();
    for condition in workflow.conditions.iter().take(8) {
        check_condition_laws(condition, fields.get(&condition.field));
        check_condition_laws(condition, None);
        let operands: Vec<&Scalar> = match &condition.value {
            Some(ConditionValue::One(v)) => vec![v],
            Some(ConditionValue::List(items)) => items.iter().take(4).collect(),
            None => Vec::new(),
        };
        for value in &values {
            check_condition_laws(condition, Some(value));
            for operand in &operands {
                check_comparison_laws(value, operand);
            }
        }
    }
}
