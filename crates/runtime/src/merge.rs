//! Merges one partition's three input streams in timestamp order. Pure: time is a parameter.
//!
//! Records of one stream keep their offset order. Among the streams' heads the one with the
//! smallest timestamp goes first (ties: settings, then teams, then CRM changes), so live
//! processing and a replay decide the same way. While some stream has nothing buffered, a
//! record might still arrive there with an earlier timestamp, so the head waits:
//! - for as long as that stream is not caught up (the broker holds records of it that are not
//!   fetched yet: catch-up and replay), since those records are known to exist;
//! - once every empty stream is caught up, until the longest-waiting record has waited
//!   `max_wait`, for records that are still being produced (KIP-695's idle rule).
//!
//! Only the second wait depends on timing: a record that reaches its caught-up stream more than
//! `max_wait` after a later-stamped record of another stream was released is decided after it.

use std::collections::VecDeque;

use crmflow_domain::InputStream;

/// A buffered record with what the merge needs to know about it.
#[derive(Debug, Clone, PartialEq)]
struct Buffered<T> {
    timestamp: i64,
    arrived_at: i64,
    item: T,
}

/// The timestamp-ordered merge of one partition's settings, teams and CRM change streams.
#[derive(Debug)]
pub struct Merger<T> {
    // Indexed by tie-break rank: settings, teams, CRM changes.
    queues: [VecDeque<Buffered<T>>; 3],
    max_wait_ms: i64,
}

fn rank(stream: InputStream) -> usize {
    match stream {
        InputStream::Settings => 0,
        InputStream::Teams => 1,
        InputStream::CrmChanges => 2,
    }
}

const STREAMS: [InputStream; 3] = [InputStream::Settings, InputStream::Teams, InputStream::CrmChanges];

impl<T> Merger<T> {
    /// An empty merge that lets a head wait at most `max_wait_ms` for lagging streams.
    pub fn new(max_wait_ms: i64) -> Self {
        Merger { queues: Default::default(), max_wait_ms: max_wait_ms.max(0) }
    }

    /// Buffers a record of a stream (records of one stream must come in offset order).
    pub fn push(&mut self, stream: InputStream, timestamp: i64, arrived_at: i64, item: T) {
        self.queues[rank(stream)].push_back(Buffered { timestamp, arrived_at, item });
    }

    /// The next record to process at time `now`, if one may go. `caught_up` tells whether a
    /// stream's consumer has read everything the broker holds of it; it is asked only about
    /// streams with nothing buffered.
    pub fn pop_ready(&mut self, now: i64, mut caught_up: impl FnMut(InputStream) -> bool) -> Option<(InputStream, T)> {
        let head = self.head()?;
        let mut empty = (0..3).filter(|&i| self.queues[i].is_empty()).peekable();
        if empty.peek().is_some() {
            if !empty.all(|i| caught_up(STREAMS[i])) {
                return None;
            }
            if self.next_deadline().is_none_or(|deadline| now < deadline) {
                return None;
            }
        }
        self.queues[head].pop_front().map(|b| (STREAMS[head], b.item))
    }

    /// When the head may go at the latest (for poll time-outs): once the longest-waiting
    /// buffered record has waited `max_wait`, if anything is buffered.
    pub fn next_deadline(&self) -> Option<i64> {
        self.queues.iter().filter_map(|q| q.front()).map(|b| b.arrived_at + self.max_wait_ms).min()
    }

    /// Number of buffered records.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn head(&self) -> Option<usize> {
        (0..3).filter_map(|i| self.queues[i].front().map(|b| (b.timestamp, i))).min().map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InputStream::*;

    fn all_caught_up(_: InputStream) -> bool {
        true
    }

    #[test]
    fn a_head_waits_for_empty_streams_then_goes() {
        let mut m = Merger::new(100);
        m.push(CrmChanges, 50, 1_000, "crm");
        assert_eq!(m.pop_ready(1_050, all_caught_up), None);
        assert_eq!(m.next_deadline(), Some(1_100));
        assert_eq!(m.pop_ready(1_100, all_caught_up), Some((CrmChanges, "crm")));
        assert!(m.is_empty());
    }

    #[test]
    fn a_later_arrival_with_an_earlier_timestamp_goes_first() {
        let mut m = Merger::new(100);
        m.push(CrmChanges, 50, 1_000, "crm");
        m.push(Teams, 40, 1_030, "team");
        assert_eq!(m.pop_ready(1_100, all_caught_up), Some((Teams, "team")));
        assert_eq!(m.pop_ready(1_100, all_caught_up), Some((CrmChanges, "crm")));
    }

    #[test]
    fn when_every_stream_has_data_the_smallest_timestamp_goes_at_once() {
        let mut m = Merger::new(1_000_000);
        m.push(CrmChanges, 10, 0, "crm");
        m.push(Teams, 10, 0, "team");
        m.push(Settings, 10, 0, "settings");
        m.push(Settings, 30, 0, "settings2");
        assert_eq!(m.pop_ready(0, all_caught_up), Some((Settings, "settings")));
        assert_eq!(
            m.pop_ready(0, all_caught_up),
            Some((Teams, "team")),
            "ties: settings, then teams, then CRM changes"
        );
        assert_eq!(m.pop_ready(0, all_caught_up), None, "teams is empty now, so the CRM head waits");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn one_stream_keeps_offset_order_even_with_unordered_timestamps() {
        let mut m = Merger::new(0);
        m.push(CrmChanges, 20, 0, 1);
        m.push(CrmChanges, 10, 0, 2);
        assert_eq!(m.pop_ready(0, all_caught_up), Some((CrmChanges, 1)));
        assert_eq!(m.pop_ready(0, all_caught_up), Some((CrmChanges, 2)));
    }

    #[test]
    fn a_head_waits_without_limit_while_an_empty_stream_has_unread_records() {
        let mut m = Merger::new(100);
        m.push(CrmChanges, 50, 1_000, "crm");
        let teams_behind = |s: InputStream| s != Teams;
        assert_eq!(m.pop_ready(1_000_000, teams_behind), None, "teams has records on the broker: they may be earlier");
        assert_eq!(m.pop_ready(1_050, all_caught_up), None, "caught up, but the deadline has not passed");
        assert_eq!(m.pop_ready(1_100, all_caught_up), Some((CrmChanges, "crm")));
    }

    #[test]
    fn only_empty_streams_are_asked_about() {
        let mut m = Merger::new(0);
        m.push(CrmChanges, 1, 0, "crm");
        m.push(Teams, 2, 0, "team");
        m.push(Settings, 3, 0, "settings");
        let never_asked = |s: InputStream| panic!("asked about {s:?} although it has records buffered");
        assert_eq!(m.pop_ready(0, never_asked), Some((CrmChanges, "crm")));
    }
}
