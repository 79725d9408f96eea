//! The decision function: `(state, event) -> (state changes, outputs, tally)`.

use std::collections::BTreeMap;

use crate::events::*;
use crate::ids;
use crate::scalar::Scalar;
use crate::state::{Account, Integration, LedgerEntry, MemoryState, StateChange, StateView};
use crate::tally::Tally;
use crate::time::Timestamp;
use crate::workflow::{Operation, Workflow};

/// What one input event means: writes to persist, events to publish, and counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Writes the shell persists, in order, atomically with the outputs.
    pub changes: Vec<StateChange>,
    /// Events to publish, in order.
    pub outputs: Vec<OutputEvent>,
    /// What happened, for metrics.
    pub tally: Tally,
}

/// Decides what an input event means given the current projections. Pure: reads `state` only.
pub fn decide<S: StateView>(state: &S, event: &InputEvent) -> Result<Decision, S::Error> {
    match event {
        InputEvent::CrmRecordChanged(e) => decide_crm_change(state, e),
        InputEvent::IntegrationSettingsChanged(e) => {
            let mut integration = state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default();
            integration.crm = e.crm.clone();
            integration.auto_sync_users = e.auto_sync_users;
            Ok(settings_decision(&e.company_id, &e.integration_id, integration))
        }
        InputEvent::WorkflowSaved(e) => {
            let mut integration = state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default();
            integration.workflows.insert(e.workflow.workflow_id.clone(), e.workflow.clone());
            Ok(settings_decision(&e.company_id, &e.integration_id, integration))
        }
        InputEvent::WorkflowDeleted(e) => {
            let mut integration = state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default();
            if integration.workflows.remove(&e.workflow_id).is_none() {
                return Ok(Decision::default());
            }
            Ok(settings_decision(&e.company_id, &e.integration_id, integration))
        }
        InputEvent::UserAssignedToTeam(e) => Ok(team_decision(StateChange::PutTeam {
            company_id: e.company_id.clone(),
            user_id: e.user_id.clone(),
            team_id: e.team_id.clone(),
        })),
        InputEvent::UserRemovedFromTeam(e) => {
            // A removal from a team the user already left (moved away) must not unplace them.
            if state.team_of(&e.company_id, &e.user_id)?.as_deref() != Some(e.team_id.as_str()) {
                return Ok(Decision::default());
            }
            Ok(team_decision(StateChange::RemoveTeam { company_id: e.company_id.clone(), user_id: e.user_id.clone() }))
        }
    }
}

fn settings_decision(company_id: &str, integration_id: &str, integration: Integration) -> Decision {
    Decision {
        changes: vec![StateChange::PutIntegration {
            company_id: company_id.to_owned(),
            integration_id: integration_id.to_owned(),
            integration,
        }],
        tally: Tally { settings_changes: 1, ..Tally::default() },
        ..Decision::default()
    }
}

fn team_decision(change: StateChange) -> Decision {
    Decision { changes: vec![change], tally: Tally { team_changes: 1, ..Tally::default() }, ..Decision::default() }
}

/// Outputs of one CRM change, kept apart so they come out in the contract's order.
#[derive(Default)]
struct Outcomes {
    provisioned: Vec<OutputEvent>,
    retractions: Vec<OutputEvent>,
    results: Vec<OutputEvent>,
}

fn decide_crm_change<S: StateView>(state: &S, e: &CrmRecordChanged) -> Result<Decision, S::Error> {
    let mut decision = Decision { tally: Tally { crm_changes: 1, ..Tally::default() }, ..Decision::default() };
    if state.has_seen(&e.company_id, &e.event_id)? {
        decision.tally.duplicates = 1;
        return Ok(decision);
    }
    decision
        .changes
        .push(StateChange::RememberEvent { company_id: e.company_id.clone(), event_id: e.event_id.clone() });
    let integration = state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default();
    let mut outcomes = Outcomes::default();
    // Accounts provisioned by this very change, so two workflows provision a user once.
    let mut new_accounts: BTreeMap<String, Account> = BTreeMap::new();
    let mut reacted = false;

    let candidates = integration
        .workflows
        .values()
        .filter(|w| w.active && w.object_type == e.object_type && w.triggers.contains(&e.operation));
    for workflow in candidates {
        let activity = Activity::new(e, workflow);
        let entry = state.ledger_entry(&e.company_id, &activity.activity_id)?;
        let matched = e.operation != Operation::Deleted && workflow.matches(&e.fields);
        if !matched {
            if let Some(old) = entry {
                reacted = true;
                activity.retract(&old, &mut decision, &mut outcomes);
            }
            continue;
        }
        reacted = true;
        let crm_user_id = e
            .fields
            .get(&workflow.user_field)
            .and_then(Scalar::as_text)
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty());
        // The ledger entry survives only if the same CRM user is still responsible.
        let entry = match entry {
            Some(old) if crm_user_id.as_deref() == Some(old.crm_user_id.as_str()) => Some(old),
            Some(old) => {
                activity.retract(&old, &mut decision, &mut outcomes);
                None
            }
            None => None,
        };
        let Some(crm_user_id) = crm_user_id else {
            let detail = format!(
                "field `{}`, which names the responsible CRM user, is missing or empty on {} {}",
                workflow.user_field, e.object_type, e.object_id
            );
            activity.ignore(IgnoreReason::MissingUserField, detail, None, None, &mut decision, &mut outcomes);
            continue;
        };
        let known = match new_accounts.get(&crm_user_id) {
            Some(account) => Some(account.clone()),
            None => state.account(&e.company_id, &e.integration_id, &crm_user_id)?,
        };
        let account = match known {
            Some(account) => account,
            None if integration.auto_sync_users => {
                let account = activity.provision(&crm_user_id, &mut decision, &mut outcomes);
                new_accounts.insert(crm_user_id.clone(), account.clone());
                account
            }
            None => {
                let detail = format!(
                    "CRM user {crm_user_id} has no account and \"Automatically sync users\" is off for integration {}",
                    e.integration_id
                );
                activity.ignore(
                    IgnoreReason::UserNotSynced,
                    detail,
                    Some(&crm_user_id),
                    None,
                    &mut decision,
                    &mut outcomes,
                );
                continue;
            }
        };
        let Some(team_id) = state.team_of(&e.company_id, &account.user_id)? else {
            let detail = format!("user {} (CRM user {crm_user_id}) is not placed on a team", account.user_id);
            activity.ignore(
                IgnoreReason::UserNotOnTeam,
                detail,
                Some(&crm_user_id),
                Some(&account.user_id),
                &mut decision,
                &mut outcomes,
            );
            continue;
        };
        let new_entry = LedgerEntry {
            user_id: account.user_id,
            crm_user_id,
            team_id,
            activity_type: workflow.activity_type.clone(),
            value: field_number(e, workflow.value_field.as_deref()),
            occurred_at: field_instant(e, workflow.occurred_at_field.as_deref()).unwrap_or(e.occurred_at),
        };
        let change = match entry {
            Some(old) if old.value == new_entry.value && old.occurred_at == new_entry.occurred_at => continue,
            Some(_) => Change::Revised,
            None => Change::Recorded,
        };
        activity.accept(change, new_entry, &mut decision, &mut outcomes);
    }

    if reacted {
        decision.tally.matched = 1;
    } else {
        decision.tally.unmatched = 1;
    }
    let Outcomes { provisioned, retractions, results } = outcomes;
    decision.outputs = provisioned.into_iter().chain(retractions).chain(results).collect();
    Ok(decision)
}

fn field_number(e: &CrmRecordChanged, field: Option<&str>) -> Option<f64> {
    e.fields.get(field?)?.as_number()
}

fn field_instant(e: &CrmRecordChanged, field: Option<&str>) -> Option<Timestamp> {
    Timestamp::parse_date_or_datetime(&e.fields.get(field?)?.as_text()?)
}

/// One workflow's view of one CRM change: builds that workflow's outputs.
struct Activity<'a> {
    change: &'a CrmRecordChanged,
    workflow: &'a Workflow,
    activity_id: String,
}

impl<'a> Activity<'a> {
    fn new(change: &'a CrmRecordChanged, workflow: &'a Workflow) -> Self {
        let activity_id = ids::activity_id(
            &change.company_id,
            &change.integration_id,
            &workflow.workflow_id,
            &change.object_type,
            &change.object_id,
        );
        Activity { change, workflow, activity_id }
    }

    fn event_id(&self, event_type: &str, detail: &str) -> String {
        ids::event_id(&self.change.event_id, event_type, &self.workflow.workflow_id, detail)
    }

    fn accepted(&self, change: Change, entry: &LedgerEntry) -> OutputEvent {
        let e = self.change;
        OutputEvent::ActivityAccepted(ActivityAccepted {
            event_id: self.event_id("ActivityAccepted", change.as_str()),
            source_event_id: e.event_id.clone(),
            change,
            activity_id: self.activity_id.clone(),
            company_id: e.company_id.clone(),
            integration_id: e.integration_id.clone(),
            workflow_id: self.workflow.workflow_id.clone(),
            activity_type: entry.activity_type.clone(),
            object_type: e.object_type.clone(),
            object_id: e.object_id.clone(),
            user_id: entry.user_id.clone(),
            crm_user_id: entry.crm_user_id.clone(),
            team_id: entry.team_id.clone(),
            value: entry.value,
            occurred_at: entry.occurred_at,
        })
    }

    fn retract(&self, old: &LedgerEntry, decision: &mut Decision, outcomes: &mut Outcomes) {
        outcomes.retractions.push(self.accepted(Change::Retracted, old));
        decision.changes.push(StateChange::RemoveLedger {
            company_id: self.change.company_id.clone(),
            activity_id: self.activity_id.clone(),
        });
        decision.tally.retracted += 1;
    }

    fn accept(&self, change: Change, entry: LedgerEntry, decision: &mut Decision, outcomes: &mut Outcomes) {
        outcomes.results.push(self.accepted(change, &entry));
        match change {
            Change::Recorded => decision.tally.recorded += 1,
            Change::Revised => decision.tally.revised += 1,
            Change::Retracted => decision.tally.retracted += 1,
        }
        decision.changes.push(StateChange::PutLedger {
            company_id: self.change.company_id.clone(),
            activity_id: self.activity_id.clone(),
            entry,
        });
    }

    fn provision(&self, crm_user_id: &str, decision: &mut Decision, outcomes: &mut Outcomes) -> Account {
        let e = self.change;
        let account = Account { user_id: ids::user_id(&e.company_id, &e.integration_id, crm_user_id) };
        let profile = e.users.as_ref().and_then(|users| users.get(crm_user_id));
        outcomes.provisioned.push(OutputEvent::UserProvisioned(UserProvisioned {
            event_id: self.event_id("UserProvisioned", crm_user_id),
            source_event_id: e.event_id.clone(),
            company_id: e.company_id.clone(),
            integration_id: e.integration_id.clone(),
            user_id: account.user_id.clone(),
            crm_user_id: crm_user_id.to_owned(),
            name: profile.and_then(|p| p.name.clone()),
            email: profile.and_then(|p| p.email.clone()),
            workflow_id: self.workflow.workflow_id.clone(),
            occurred_at: e.occurred_at,
        }));
        decision.changes.push(StateChange::PutAccount {
            company_id: e.company_id.clone(),
            integration_id: e.integration_id.clone(),
            crm_user_id: crm_user_id.to_owned(),
            account: account.clone(),
        });
        decision.tally.users_provisioned += 1;
        account
    }

    fn ignore(
        &self,
        reason: IgnoreReason,
        detail: String,
        crm_user_id: Option<&str>,
        user_id: Option<&str>,
        decision: &mut Decision,
        outcomes: &mut Outcomes,
    ) {
        let e = self.change;
        outcomes.results.push(OutputEvent::ActivityIgnored(ActivityIgnored {
            event_id: self.event_id("ActivityIgnored", reason.as_str()),
            source_event_id: e.event_id.clone(),
            reason,
            detail,
            company_id: e.company_id.clone(),
            integration_id: e.integration_id.clone(),
            workflow_id: self.workflow.workflow_id.clone(),
            activity_type: self.workflow.activity_type.clone(),
            object_type: e.object_type.clone(),
            object_id: e.object_id.clone(),
            crm_user_id: crm_user_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
        }));
        *decision.tally.ignored.entry(reason).or_default() += 1;
    }
}

impl MemoryState {
    /// Decides an event and applies its changes: the whole core step for in-memory use.
    pub fn process(&mut self, event: &InputEvent) -> Decision {
        let decision = match decide(self, event) {
            Ok(decision) => decision,
            Err(never) => match never {},
        };
        self.apply(decision.changes.iter().cloned());
        decision
    }
}
