//! Instants as milliseconds since the Unix epoch, written as RFC 3339 in JSON.

use std::fmt;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond precision (the precision of Avro's `timestamp-millis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// The first instant RFC 3339 can write in UTC: 0000-01-01T00:00:00.000Z.
pub const MIN_MILLIS: i64 = -62_167_219_200_000;
/// The last instant RFC 3339 can write in UTC: 9999-12-31T23:59:59.999Z.
pub const MAX_MILLIS: i64 = 253_402_300_799_999;

impl Timestamp {
    /// Whether RFC 3339 can write it in UTC (years 0000 to 9999). Only such instants are read:
    /// an offset can carry a datetime past either end (`0000-01-01T00:00:00+01:00`), and what
    /// crmflow reads it must be able to write for others to read.
    pub fn is_writable(self) -> bool {
        (MIN_MILLIS..=MAX_MILLIS).contains(&self.0)
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 datetime (any offset) whose instant is writable in UTC.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let parsed = DateTime::parse_from_rfc3339(text.trim()).ok()?;
        Some(Timestamp(parsed.timestamp_millis())).filter(|t| t.is_writable())
    }

    /// Parses an RFC 3339 datetime or an ISO date; a date alone means midnight UTC.
    pub fn parse_date_or_datetime(text: &str) -> Option<Self> {
        let text = text.trim();
        // Both forms start with the year; words (most compared text) are turned away before
        // chrono tries its formats.
        if !text.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-') {
            return None;
        }
        Self::parse_rfc3339(text).or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| Timestamp(t.and_utc().timestamp_millis()))
                .filter(|t| t.is_writable())
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).ok_or_else(|| {
            de::Error::custom(format!("`{text}` is not an RFC 3339 datetime (e.g. 2024-05-01T10:00:00Z)"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_millis() {
        let t = Timestamp::parse_rfc3339("2024-05-01T12:00:00+02:00").unwrap();
        assert_eq!(t.to_string(), "2024-05-01T10:00:00.000Z");
    }

    /// Found by the `input_json` fuzz target: an offset carried these past year 0000 or 9999
    /// in UTC, and they were written `-0001-12-31T23:00:00.000Z` and `+10000-…`, which no RFC
    /// 3339 reader takes back.
    #[test]
    fn only_instants_writable_in_utc_are_read() {
        for text in ["0000-01-01T00:00:00+23:59", "0000-01-01T00:00:00.000+01:00", "9999-12-31T23:59:59-23:59"] {
            assert_eq!(Timestamp::parse_rfc3339(text), None, "{text}");
            assert_eq!(Timestamp::parse_date_or_datetime(text), None, "{text}");
        }
        for text in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "0000-01-01T00:00:00-01:00"] {
            let t = Timestamp::parse_rfc3339(text).unwrap();
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Some(t), "{text} written as {t}");
        }
    }

    #[test]
    fn date_alone_is_midnight_utc() {
        let d = Timestamp::parse_date_or_datetime("2024-05-01").unwrap();
        assert_eq!(Some(d), Timestamp::parse_rfc3339("2024-05-01T00:00:00Z"));
        assert_eq!(Timestamp::parse_date_or_datetime("May 1st"), None);
    }
}
