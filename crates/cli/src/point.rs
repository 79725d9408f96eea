//! Where in the inputs' history an operator command starts: `earliest` or an RFC 3339 instant.

use std::fmt;
use std::str::FromStr;

/// A point in the inputs' history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The first record each input partition still holds.
    Earliest,
    /// The first record of each input partition stamped at or after this instant (epoch ms).
    Time(i64),
}

impl FromStr for Point {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("earliest") {
            return Ok(Point::Earliest);
        }
        chrono::DateTime::parse_from_rfc3339(text).map(|t| Point::Time(t.timestamp_millis())).map_err(|e| {
            format!("`{text}` is neither `earliest` nor an RFC 3339 time such as 2024-05-01T10:00:00Z ({e})")
        })
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Earliest => f.write_str("earliest"),
            Point::Time(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(t) => write!(f, "{}", t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                None => write!(f, "{ms} ms"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_and_print() {
        assert_eq!("earliest".parse::<Point>(), Ok(Point::Earliest));
        let t: Point = "2024-05-01T12:00:00+02:00".parse().unwrap();
        assert_eq!(t, Point::Time(1_714_557_600_000));
        assert_eq!(t.to_string(), "2024-05-01T10:00:00Z");
        assert!("yesterday".parse::<Point>().unwrap_err().contains("RFC 3339"));
    }
}
