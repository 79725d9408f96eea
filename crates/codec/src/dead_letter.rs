//! What a dead-letter record says about the record it replaces.

use crate::error::DecodeError;

/// Header naming the failure class (see [`crate::ErrorKind`]).
pub const HEADER_ERROR_KIND: &str = "crmflow.error.kind";
/// Header with the human-readable failure.
pub const HEADER_ERROR_MESSAGE: &str = "crmflow.error.message";
/// Header naming the topic the record came from.
pub const HEADER_SOURCE_TOPIC: &str = "crmflow.source.topic";
/// Header with the source partition.
pub const HEADER_SOURCE_PARTITION: &str = "crmflow.source.partition";
/// Header with the source offset.
pub const HEADER_SOURCE_OFFSET: &str = "crmflow.source.offset";
/// Header with the source line (simulate input files).
pub const HEADER_SOURCE_LINE: &str = "crmflow.source.line";

/// Where a bad record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Kafka record.
    Record {
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
    },
    /// A line of a simulate input file.
    Line {
        /// Its topic, if the line said.
        topic: Option<String>,
        /// Its 1-based line number.
        line: usize,
    },
}

/// The headers of a dead-letter record: why, and where the original came from.
pub fn dead_letter_headers(error: &DecodeError, source: &Source) -> Vec<(&'static str, String)> {
    let mut headers =
        vec![(HEADER_ERROR_KIND, error.kind.as_str().to_owned()), (HEADER_ERROR_MESSAGE, error.message.clone())];
    match source {
        Source::Record { topic, partition, offset } => {
            headers.push((HEADER_SOURCE_TOPIC, topic.clone()));
            headers.push((HEADER_SOURCE_PARTITION, partition.to_string()));
            headers.push((HEADER_SOURCE_OFFSET, offset.to_string()));
        }
        Source::Line { topic, line } => {
            if let Some(topic) = topic {
                headers.push((HEADER_SOURCE_TOPIC, topic.clone()));
            }
            headers.push((HEADER_SOURCE_LINE, line.to_string()));
        }
    }
    headers
}
