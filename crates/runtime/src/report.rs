//! What the running processor tells its operator in the log: counters and sample events
//! (the metrics are in [`crate::status`]).

use std::collections::{BTreeMap, VecDeque};

use crmflow_codec::ErrorKind;
use crmflow_domain::{OutputEvent, Tally};

/// Counters since start, ready for export.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Input records processed.
    pub records: u64,
    /// Of those, records replayed only to rebuild lost state.
    pub replayed: u64,
    /// Of those, records processed after a later-stamped record of their partition.
    pub late: u64,
    /// What the core decided.
    pub tally: Tally,
    /// Dead letters per kind.
    pub dead_letters: BTreeMap<ErrorKind, u64>,
    /// Input records not yet consumed (-1 until the client reports it).
    pub lag: i64,
    /// Commits made.
    pub commits: u64,
    /// Transactions aborted after an abortable error (their work was redone).
    pub aborts: u64,
    /// Input records deleted by retention before they were processed.
    pub expired: u64,
    /// Times the producer was fenced and replaced.
    pub fences: u64,
    /// Partitions whose stores are restoring from their changelog now.
    pub restoring: usize,
    /// Changelog records restored since start.
    pub restored: u64,
}

impl Counters {
    /// One line for the log: outputs per type and ignore reason, dead letters, lag.
    pub fn summary(&self) -> String {
        let t = &self.tally;
        let ignored: Vec<String> = t.ignored.iter().map(|(r, n)| format!("{} {n}", r.as_str())).collect();
        let dead: u64 = self.dead_letters.values().sum();
        format!(
            "{} records{} | provisioned {} | accepted {} (recorded {}, revised {}, retracted {}) | ignored {}{} | unmatched {} | duplicates {} | dead letters {} | lag {}",
            self.records,
            match (self.replayed, self.late) {
                (0, 0) => String::new(),
                (replayed, 0) => format!(" ({replayed} replayed to rebuild state)"),
                (0, late) => format!(" ({late} late)"),
                (replayed, late) => format!(" ({replayed} replayed to rebuild state, {late} late)"),
            },
            t.users_provisioned,
            t.recorded + t.revised + t.retracted,
            t.recorded,
            t.revised,
            t.retracted,
            t.ignored_total(),
            if ignored.is_empty() { String::new() } else { format!(" ({})", ignored.join(", ")) },
            t.unmatched,
            t.duplicates,
            dead,
            self.lag
        )
    }
}

/// The last few outputs in words, for `--watch`.
#[derive(Debug, Default)]
pub struct Samples {
    lines: VecDeque<String>,
    capacity: usize,
}

impl Samples {
    /// Keeps up to `capacity` recent lines (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        Samples { lines: VecDeque::new(), capacity }
    }

    /// How many lines it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Notes an output.
    pub fn note(&mut self, event: &OutputEvent) {
        if self.capacity == 0 {
            return;
        }
        self.extend([describe(event)]);
    }

    /// Keeps `lines`, newest last, forgetting the oldest beyond the capacity.
    pub fn extend(&mut self, lines: impl IntoIterator<Item = String>) {
        self.lines.extend(lines);
        while self.lines.len() > self.capacity {
            self.lines.pop_front();
        }
    }

    /// Takes the lines noted since the last call.
    pub fn take(&mut self) -> Vec<String> {
        self.lines.drain(..).collect()
    }
}

/// One output in words.
pub fn describe(event: &OutputEvent) -> String {
    match event {
        OutputEvent::UserProvisioned(p) => format!(
            "UserProvisioned   {}/{}: CRM user {} ({}) now has account {}",
            p.company_id,
            p.integration_id,
            p.crm_user_id,
            p.name.as_deref().unwrap_or("no name"),
            p.user_id
        ),
        OutputEvent::ActivityAccepted(a) => format!(
            "ActivityAccepted  {}/{}: {} {} {} {}{} by CRM user {} on team {}",
            a.company_id,
            a.integration_id,
            a.change.as_str(),
            a.activity_type,
            a.object_type,
            a.object_id,
            a.value.map(|v| format!(" worth {v}")).unwrap_or_default(),
            a.crm_user_id,
            a.team_id
        ),
        OutputEvent::ActivityIgnored(i) => format!(
            "ActivityIgnored   {}/{}: {} {} {} — {}: {}",
            i.company_id,
            i.integration_id,
            i.activity_type,
            i.object_type,
            i.object_id,
            i.reason.as_str(),
            i.detail
        ),
    }
}
