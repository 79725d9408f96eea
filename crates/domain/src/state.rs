//! The projections the core decides on, and the changes it asks the shell to persist.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;
use crate::workflow::Workflow;

/// An integration's settings and workflows, as last saved.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Integration {
    /// Which CRM; empty until settings arrive.
    #[serde(default)]
    pub crm: String,
    /// "Automatically sync users"; off until settings say otherwise.
    #[serde(default)]
    pub auto_sync_users: bool,
    /// Workflows by id (ordered, so evaluation order is the id order).
    #[serde(default)]
    pub workflows: BTreeMap<String, Workflow>,
}

/// A crmflow account that corresponds to a CRM user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account's id.
    pub user_id: String,
}

/// An activity currently accepted, kept so later changes can revise or retract it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The account it counts for.
    pub user_id: String,
    /// The responsible CRM user.
    pub crm_user_id: String,
    /// The team it counted for.
    pub team_id: String,
    /// The activity type reported.
    pub activity_type: String,
    /// The value reported.
    pub value: Option<f64>,
    /// The date reported.
    pub occurred_at: Timestamp,
}

/// Read access to the projections; the RocksDB store and [`MemoryState`] implement it.
pub trait StateView {
    /// What a read can fail with (nothing, in memory; I/O, on disk).
    type Error;
    /// Settings and workflows of an integration, if any ever arrived. Shared, not copied: every
    /// CRM change reads its integration, and copying every workflow each time showed in profiles.
    fn integration(&self, company_id: &str, integration_id: &str) -> Result<Option<Arc<Integration>>, Self::Error>;
    /// The account of a CRM user, if provisioned.
    fn account(
        &self,
        company_id: &str,
        integration_id: &str,
        crm_user_id: &str,
    ) -> Result<Option<Account>, Self::Error>;
    /// The team a user is on, if any.
    fn team_of(&self, company_id: &str, user_id: &str) -> Result<Option<String>, Self::Error>;
    /// The accepted activity with this id, if any.
    fn ledger_entry(&self, company_id: &str, activity_id: &str) -> Result<Option<LedgerEntry>, Self::Error>;
    /// Whether a CRM change with this event id was already processed.
    fn has_seen(&self, company_id: &str, event_id: &str) -> Result<bool, Self::Error>;
}

/// One write the shell must persist for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateChange {
    /// Replace an integration's settings and workflows.
    PutIntegration {
        /// The company.
        company_id: String,
        /// The integration.
        integration_id: String,
        /// The new record.
        integration: Integration,
    },
    /// Record a provisioned account.
    PutAccount {
        /// The company.
        company_id: String,
        /// The integration.
        integration_id: String,
        /// The CRM user.
        crm_user_id: String,
        /// The account.
        account: Account,
    },
    /// Place a user on a team.
    PutTeam {
        /// The company.
        company_id: String,
        /// The user.
        user_id: String,
        /// The team.
        team_id: String,
    },
    /// Take a user off their team.
    RemoveTeam {
        /// The company.
        company_id: String,
        /// The user.
        user_id: String,
    },
    /// Record or update an accepted activity.
    PutLedger {
        /// The company.
        company_id: String,
        /// The activity.
        activity_id: String,
        /// Its current state.
        entry: LedgerEntry,
    },
    /// Forget a retracted activity.
    RemoveLedger {
        /// The company.
        company_id: String,
        /// The activity.
        activity_id: String,
    },
    /// Remember a processed CRM change, to drop resends.
    RememberEvent {
        /// The company.
        company_id: String,
        /// The change's event id.
        event_id: String,
    },
}

/// How many processed event ids of each company are remembered by default: a resend of one of a
/// company's last 10,000 CRM changes is dropped, an older one is decided again.
pub const DEFAULT_SEEN_CAPACITY: usize = 10_000;

/// All projections in memory: used by `crmflow simulate` and the tests.
///
/// Kept per company, each map keyed by one id, so a read borrows the ids it is given instead of
/// building an owned key (every CRM change makes several reads).
#[derive(Debug, Clone)]
pub struct MemoryState {
    companies: HashMap<String, CompanyState>,
    seen_capacity: usize,
}

/// One company's projections.
#[derive(Debug, Clone, Default)]
struct CompanyState {
    /// By integration id.
    integrations: HashMap<String, Arc<Integration>>,
    /// By integration id, then CRM user id.
    accounts: HashMap<String, HashMap<String, Account>>,
    /// Team by user id.
    teams: HashMap<String, String>,
    /// By activity id.
    ledger: HashMap<String, LedgerEntry>,
    /// The remembered event ids, and the same oldest first: each company's memory is bounded
    /// on its own, so one company's traffic never makes another's resends count as new.
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

impl Default for MemoryState {
    fn default() -> Self {
        Self::with_seen_capacity(DEFAULT_SEEN_CAPACITY)
    }
}

impl MemoryState {
    /// An empty state that remembers at most `capacity` processed event ids of each company.
    pub fn with_seen_capacity(capacity: usize) -> Self {
        MemoryState { companies: HashMap::new(), seen_capacity: capacity.max(1) }
    }

    fn company(&mut self, company_id: String) -> &mut CompanyState {
        self.companies.entry(company_id).or_default()
    }

    /// Persists the changes of a decision.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = StateChange>) {
        let capacity = self.seen_capacity;
        for change in changes {
            match change {
                StateChange::PutIntegration { company_id, integration_id, integration } => {
                    self.company(company_id).integrations.insert(integration_id, Arc::new(integration));
                }
                StateChange::PutAccount { company_id, integration_id, crm_user_id, account } => {
                    self.company(company_id).accounts.entry(integration_id).or_default().insert(crm_user_id, account);
                }
                StateChange::PutTeam { company_id, user_id, team_id } => {
                    self.company(company_id).teams.insert(user_id, team_id);
                }
                StateChange::RemoveTeam { company_id, user_id } => {
                    if let Some(company) = self.companies.get_mut(&company_id) {
                        company.teams.remove(&user_id);
                    }
                }
                StateChange::PutLedger { company_id, activity_id, entry } => {
                    self.company(company_id).ledger.insert(activity_id, entry);
                }
                StateChange::RemoveLedger { company_id, activity_id } => {
                    if let Some(company) = self.companies.get_mut(&company_id) {
                        company.ledger.remove(&activity_id);
                    }
                }
                StateChange::RememberEvent { company_id, event_id } => {
                    let company = self.company(company_id);
                    if company.seen.insert(event_id.clone()) {
                        company.seen_order.push_back(event_id);
                        while company.seen_order.len() > capacity {
                            if let Some(old) = company.seen_order.pop_front() {
                                company.seen.remove(&old);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Number of accepted activities currently in the ledger.
    pub fn ledger_len(&self) -> usize {
        self.companies.values().map(|c| c.ledger.len()).sum()
    }
}

impl StateView for MemoryState {
    type Error = Infallible;

    fn integration(&self, company_id: &str, integration_id: &str) -> Result<Option<Arc<Integration>>, Infallible> {
        Ok(self.companies.get(company_id).and_then(|c| c.integrations.get(integration_id)).cloned())
    }

    fn account(
        &self,
        company_id: &str,
        integration_id: &str,
        crm_user_id: &str,
    ) -> Result<Option<Account>, Infallible> {
        let accounts = self.companies.get(company_id).and_then(|c| c.accounts.get(integration_id));
        Ok(accounts.and_then(|a| a.get(crm_user_id)).cloned())
    }

    fn team_of(&self, company_id: &str, user_id: &str) -> Result<Option<String>, Infallible> {
        Ok(self.companies.get(company_id).and_then(|c| c.teams.get(user_id)).cloned())
    }

    fn ledger_entry(&self, company_id: &str, activity_id: &str) -> Result<Option<LedgerEntry>, Infallible> {
        Ok(self.companies.get(company_id).and_then(|c| c.ledger.get(activity_id)).cloned())
    }

    fn has_seen(&self, company_id: &str, event_id: &str) -> Result<bool, Infallible> {
        Ok(self.companies.get(company_id).is_some_and(|c| c.seen.contains(event_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_are_bounded_oldest_first() {
        let mut state = MemoryState::with_seen_capacity(2);
        for id in ["a", "b", "c"] {
            state.apply([StateChange::RememberEvent { company_id: "c1".into(), event_id: id.into() }]);
        }
        assert!(!state.has_seen("c1", "a").unwrap());
        assert!(state.has_seen("c1", "b").unwrap());
        assert!(state.has_seen("c1", "c").unwrap());
        assert!(!state.has_seen("c2", "c").unwrap(), "companies never share state");
    }

    #[test]
    fn each_company_remembers_its_own_last_ids() {
        let mut state = MemoryState::with_seen_capacity(2);
        let remember =
            |company: &str, id: &str| StateChange::RememberEvent { company_id: company.into(), event_id: id.into() };
        state.apply([remember("quiet", "q1"), remember("busy", "b1"), remember("busy", "b2"), remember("busy", "b3")]);
        assert!(state.has_seen("quiet", "q1").unwrap(), "another company's traffic forgets nothing of it");
        assert!(!state.has_seen("busy", "b1").unwrap());
        assert!(state.has_seen("busy", "b3").unwrap());
    }
}
