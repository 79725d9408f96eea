//! Counters of what the core decided, for the shell to export.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::IgnoreReason;

/// Counts of what happened while deciding; add them up across decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// CRM changes seen, duplicates included.
    pub crm_changes: u64,
    /// CRM changes that at least one active workflow matched or retracted.
    pub matched: u64,
    /// CRM changes no workflow reacted to.
    pub unmatched: u64,
    /// CRM changes dropped because their event id was already processed.
    pub duplicates: u64,
    /// Settings and workflow events applied.
    pub settings_changes: u64,
    /// Team placement events applied.
    pub team_changes: u64,
    /// UserProvisioned events.
    pub users_provisioned: u64,
    /// ActivityAccepted events with change `recorded`.
    pub recorded: u64,
    /// ActivityAccepted events with change `revised`.
    pub revised: u64,
    /// ActivityAccepted events with change `retracted`.
    pub retracted: u64,
    /// ActivityIgnored events per reason.
    pub ignored: BTreeMap<IgnoreReason, u64>,
}

impl Tally {
    /// Adds another tally into this one.
    pub fn add(&mut self, other: &Tally) {
        self.crm_changes += other.crm_changes;
        self.matched += other.matched;
        self.unmatched += other.unmatched;
        self.duplicates += other.duplicates;
        self.settings_changes += other.settings_changes;
        self.team_changes += other.team_changes;
        self.users_provisioned += other.users_provisioned;
        self.recorded += other.recorded;
        self.revised += other.revised;
        self.retracted += other.retracted;
        for (reason, n) in &other.ignored {
            *self.ignored.entry(*reason).or_default() += n;
        }
    }

    /// All ActivityIgnored events counted.
    pub fn ignored_total(&self) -> u64 {
        self.ignored.values().sum()
    }
}
