//! Field values of CRM records and condition operands.

use std::borrow::Cow;
use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// One value of a CRM record field: what a connector can put in `fields`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// JSON `null`: the field is present but empty, which counts as absent.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Text(String),
}

impl Scalar {
    /// The value as a number, when it is one or is a numeric string.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Float(f) => Some(*f),
            Scalar::Text(s) => parse_number(s),
            Scalar::Null | Scalar::Bool(_) => None,
        }
    }

    /// The value as text, the way conditions compare strings; `None` for null. Text is
    /// borrowed: conditions read it for every evaluated workflow.
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Scalar::Null => None,
            Scalar::Text(s) => Some(Cow::Borrowed(s)),
            other => Some(Cow::Owned(other.to_string())),
        }
    }
}

/// Parses a numeric string; words such as `inf` or `NaN` are not numbers here.
fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    if !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Null => f.write_str("null"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Null => serializer.serialize_none(),
            Scalar::Bool(b) => serializer.serialize_bool(*b),
            Scalar::Int(i) => serializer.serialize_i64(*i),
            Scalar::Float(x) => serializer.serialize_f64(*x),
            Scalar::Text(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> de::Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number, boolean or null")
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        Scalar::deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(u).map_or(Scalar::Float(u as f64), Scalar::Int))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(x))
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_strings_are_numbers_but_words_are_not() {
        assert_eq!(Scalar::Text(" 12.5 ".into()).as_number(), Some(12.5));
        assert_eq!(Scalar::Text("inf".into()).as_number(), None);
        assert_eq!(Scalar::Text("NaN".into()).as_number(), None);
        assert_eq!(Scalar::Bool(true).as_number(), None);
    }

    #[test]
    fn json_round_trip() {
        let v: Vec<Scalar> = serde_json::from_str(r#"[null, true, 3, 2.5, "x"]"#).unwrap();
        assert_eq!(
            v,
            vec![Scalar::Null, Scalar::Bool(true), Scalar::Int(3), Scalar::Float(2.5), Scalar::Text("x".into())]
        );
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"[null,true,3,2.5,"x"]"#);
        assert!(serde_json::from_str::<Scalar>("{}").is_err());
    }
}
