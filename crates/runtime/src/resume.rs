//! Where a partition's inputs resume when it is assigned, and which replayed records publish
//! nothing. Pure: the positions are parameters, so every recovery case is a unit test.
//!
//! Two positions meet when a partition is assigned, per input topic:
//! - the **state store's**: the next offset its last RocksDB batch reflects;
//! - the **consumer group's**: the next offset whose outputs are published (committed with the
//!   Kafka transaction under `exactly_once`, after the outputs are acknowledged under
//!   `at_least_once`).
//!
//! Consumption resumes at the store's position, or at the start of the topic where the store
//! knows nothing of it (a lost state directory, a partition new to this instance). All three
//! inputs are positioned together in the assignment itself, before any record is fetched, so the
//! replayed records merge exactly as they did the first time. Records below the group's offset
//! were published before: they update state and publish nothing. Consumer offsets are never
//! committed below the group's offset, so an interrupted replay keeps its boundary.

use std::collections::BTreeMap;

/// How one input topic of a partition resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputResume {
    /// The offset to consume from; `None`: the start of the topic.
    pub start: Option<i64>,
    /// Records below this offset were published before (the group's committed offset, or 0).
    pub published_until: i64,
}

/// How every input topic of a partition resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePlan {
    inputs: BTreeMap<String, InputResume>,
}

impl ResumePlan {
    /// The plan for `topics` from the store's positions and the group's committed offsets.
    pub fn new(topics: &[&str], store: &BTreeMap<String, i64>, group: &BTreeMap<String, i64>) -> Self {
        let inputs = topics
            .iter()
            .map(|topic| {
                let resume = InputResume {
                    start: store.get(*topic).copied(),
                    published_until: group.get(*topic).copied().unwrap_or(0).max(0),
                };
                (topic.to_string(), resume)
            })
            .collect();
        ResumePlan { inputs }
    }

    /// Each topic with where it resumes.
    pub fn inputs(&self) -> impl Iterator<Item = (&str, InputResume)> {
        self.inputs.iter().map(|(topic, resume)| (topic.as_str(), *resume))
    }

    /// Whether the record of `topic` at `offset` publishes its outputs (false: replayed only to
    /// bring state up to date, its outputs are out already).
    pub fn publishes(&self, topic: &str, offset: i64) -> bool {
        self.inputs.get(topic).is_none_or(|r| offset >= r.published_until)
    }

    /// The consumer offset to commit for `topic` once everything below `next` is processed:
    /// never below what the group has (committing less would move the replay boundary back, and
    /// the records above it would be published again). A round that only replays commits the
    /// group's own offset again: every transaction carries offsets, so the group coordinator
    /// fences one of a member that is no longer in the group (KIP-447), as Kafka Streams does.
    pub fn consumer_offset(&self, topic: &str, next: i64) -> i64 {
        match self.inputs.get(topic) {
            Some(r) => next.max(r.published_until),
            None => next,
        }
    }

    /// Topics that replay records whose outputs are already published, with where they resume.
    pub fn replays(&self) -> impl Iterator<Item = (&str, InputResume)> {
        self.inputs().filter(|(_, r)| r.start.unwrap_or(0) < r.published_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPICS: [&str; 3] = ["settings", "teams", "crm"];

    fn offsets(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(t, o)| (t.to_string(), *o)).collect()
    }

    #[test]
    fn a_store_in_step_with_the_group_resumes_where_both_are() {
        let plan = ResumePlan::new(&TOPICS, &offsets(&[("crm", 10)]), &offsets(&[("crm", 10)]));
        assert_eq!(plan.inputs().find(|(t, _)| *t == "crm").unwrap().1.start, Some(10));
        assert!(plan.publishes("crm", 10));
        assert_eq!(plan.replays().count(), 0);
    }

    #[test]
    fn a_store_behind_the_group_replays_the_gap_without_publishing() {
        // Crash after the transaction committed, before the RocksDB batch was written.
        let plan = ResumePlan::new(&TOPICS, &offsets(&[("crm", 10), ("settings", 3)]), &offsets(&[("crm", 15)]));
        let crm = plan.inputs().find(|(t, _)| *t == "crm").unwrap().1;
        assert_eq!(crm, InputResume { start: Some(10), published_until: 15 });
        assert!(!plan.publishes("crm", 14));
        assert!(plan.publishes("crm", 15));
        assert!(plan.publishes("settings", 3), "settings has no group offset: nothing of it was published");
        assert_eq!(plan.replays().map(|(t, _)| t).collect::<Vec<_>>(), vec!["crm"]);
    }

    #[test]
    fn a_lost_store_rebuilds_from_the_start_of_every_input() {
        let plan = ResumePlan::new(&TOPICS, &BTreeMap::new(), &offsets(&[("crm", 7), ("teams", 2)]));
        assert!(plan.inputs().all(|(_, r)| r.start.is_none()));
        assert!(!plan.publishes("teams", 1));
        assert!(plan.publishes("settings", 0));
        assert_eq!(plan.replays().map(|(t, _)| t).collect::<Vec<_>>(), vec!["crm", "teams"]);
    }

    #[test]
    fn a_store_ahead_of_the_group_resumes_at_the_store() {
        // at_least_once: the store was written, the consumer offsets not yet.
        let plan = ResumePlan::new(&TOPICS, &offsets(&[("crm", 20)]), &offsets(&[("crm", 15)]));
        assert_eq!(plan.inputs().find(|(t, _)| *t == "crm").unwrap().1.start, Some(20));
        assert!(plan.publishes("crm", 20));
        assert_eq!(plan.consumer_offset("crm", 21), 21);
    }

    #[test]
    fn consumer_offsets_never_move_below_the_replay_boundary() {
        let plan = ResumePlan::new(&TOPICS, &BTreeMap::new(), &offsets(&[("crm", 100)]));
        assert_eq!(plan.consumer_offset("crm", 40), 100, "a commit midway through a rebuild keeps 100");
        assert_eq!(plan.consumer_offset("crm", 100), 100);
        assert_eq!(plan.consumer_offset("crm", 101), 101);
        assert_eq!(plan.consumer_offset("teams", 1), 1);
    }
}
