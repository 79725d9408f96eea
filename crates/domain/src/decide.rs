//! The decision function: `(state, event) -> (state changes, outputs, tally)`, and its
//! explained twin, both over one code path.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::events::*;
use crate::explain::{Effect, Explanation, Recorder, Rule, Trace, Untraced};
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
    decide_traced(state, event, &mut Untraced)
}

/// Decides like [`decide()`], and says why: the same code path, recording an [`Explanation`].
pub fn explain<S: StateView>(state: &S, event: &InputEvent) -> Result<(Decision, Explanation), S::Error> {
    let mut recorder = Recorder::new(event);
    let decision = decide_traced(state, event, &mut recorder)?;
    Ok((decision, recorder.finish()))
}

/// The one decision path; `trace` only watches, so it cannot change what is decided.
fn decide_traced<S: StateView, T: Trace>(state: &S, event: &InputEvent, trace: &mut T) -> Result<Decision, S::Error> {
    match event {
        InputEvent::CrmRecordChanged(e) => decide_crm_change(state, e, trace),
        InputEvent::IntegrationSettingsChanged(e) => {
            let mut integration =
                Arc::unwrap_or_clone(state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default());
            integration.crm = e.crm.clone();
            integration.auto_sync_users = e.auto_sync_users;
            trace.effect(Effect::SettingsReplaced);
            Ok(settings_decision(&e.company_id, &e.integration_id, integration))
        }
        InputEvent::WorkflowSaved(e) => {
            let mut integration =
                Arc::unwrap_or_clone(state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default());
            let replaced = integration.workflows.insert(e.workflow.workflow_id.clone(), e.workflow.clone());
            trace.effect(if replaced.is_some() { Effect::WorkflowReplaced } else { Effect::WorkflowAdded });
            Ok(settings_decision(&e.company_id, &e.integration_id, integration))
        }
        InputEvent::WorkflowDeleted(e) => {
            let mut integration =
                Arc::unwrap_or_clone(state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default());
            if integration.workflows.remove(&e.workflow_id).is_none() {
                trace.effect(Effect::WorkflowNotFound);
                return Ok(Decision::default());
            }
            trace.effect(Effect::WorkflowRemoved);
            Ok(settings_decision(&e.company_id, &e.integration_id, integration))
        }
        InputEvent::UserAssignedToTeam(e) => {
            trace.effect(Effect::PlacedOnTeam);
            Ok(team_decision(StateChange::PutTeam {
                company_id: e.company_id.clone(),
                user_id: e.user_id.clone(),
                team_id: e.team_id.clone(),
            }))
        }
        InputEvent::UserRemovedFromTeam(e) => {
            // A removal from a team the user already left (moved away) must not unplace them.
            if state.team_of(&e.company_id, &e.user_id)?.as_deref() != Some(e.team_id.as_str()) {
                trace.effect(Effect::NotOnThatTeam);
                return Ok(Decision::default());
            }
            trace.effect(Effect::RemovedFromTeam);
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

fn decide_crm_change<S: StateView, T: Trace>(
    state: &S,
    e: &CrmRecordChanged,
    trace: &mut T,
) -> Result<Decision, S::Error> {
    let mut decision = CrmDecision::default();
    if state.has_seen(&e.company_id, &e.event_id)? {
        trace.duplicate();
        return Ok(decision.duplicate());
    }
    decision.remember(e);
    let integration = state.integration(&e.company_id, &e.integration_id)?.unwrap_or_default();
    for workflow in integration.workflows.values() {
        let active = workflow.active;
        let object_type_matched = workflow.object_type == e.object_type;
        let operation_is_trigger = workflow.triggers.contains(&e.operation);
        trace.workflow(&workflow.workflow_id, active, object_type_matched, operation_is_trigger);
        let rule = if !active {
            Rule::Inactive
        } else if !object_type_matched {
            Rule::OtherObjectType
        } else if !operation_is_trigger {
            Rule::OperationNotATrigger
        } else {
            let activity = Activity::new(e, workflow);
            let verdict = evaluate(state, &integration, &activity, &decision, trace)?;
            decision.apply(&activity, verdict, trace)
        };
        trace.decided(rule);
    }
    Ok(decision.finish())
}

/// What one workflow makes of one CRM change: read from the state, not yet written.
struct Verdict {
    rule: Rule,
    /// The workflow matched, or retracted what it had accepted.
    reacted: bool,
    /// The live activity, which no longer counts (conditions fail, record deleted, other owner).
    retract: Option<LedgerEntry>,
    /// An account to create before the activity can count.
    provision: Option<Provision>,
    /// The activity's new state or why it does not count, when the workflow matched.
    result: Option<Outcome>,
}

/// An account for a CRM user who has none, auto-sync being on.
struct Provision {
    crm_user_id: String,
    account: Account,
}

/// What becomes of a matched activity.
enum Outcome {
    Accept(Change, LedgerEntry),
    Ignore { reason: IgnoreReason, detail: String, crm_user_id: Option<String>, user_id: Option<String> },
}

impl Verdict {
    /// The workflow did not match; whatever it had accepted for the record is retracted.
    fn unmatched(rule: Rule, live: Option<LedgerEntry>) -> Self {
        Verdict { rule, reacted: live.is_some(), retract: live, provision: None, result: None }
    }

    fn ignored(
        mut self,
        reason: IgnoreReason,
        detail: String,
        crm_user_id: Option<&str>,
        user_id: Option<&str>,
    ) -> Self {
        self.rule = Rule::Ignored(reason);
        self.result = Some(Outcome::Ignore {
            reason,
            detail,
            crm_user_id: crm_user_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
        });
        self
    }
}

/// Evaluates a workflow that watches the change's object type and operation.
fn evaluate<S: StateView, T: Trace>(
    state: &S,
    integration: &Integration,
    activity: &Activity<'_>,
    decision: &CrmDecision,
    trace: &mut T,
) -> Result<Verdict, S::Error> {
    let (e, workflow) = (activity.change, activity.workflow);
    let live = state.ledger_entry(&e.company_id, &activity.activity_id)?;
    if e.operation == Operation::Deleted {
        return Ok(Verdict::unmatched(Rule::Deleted, live));
    }
    if !conditions_hold(workflow, e, trace) {
        let rule = if live.is_some() { Rule::Retracted } else { Rule::ConditionFailed };
        return Ok(Verdict::unmatched(rule, live));
    }
    let crm_user_id = e
        .fields
        .get(&workflow.user_field)
        .and_then(Scalar::as_text)
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty());
    // The live activity survives only if the same CRM user is still responsible.
    let (live, retract) = match live {
        Some(old) if crm_user_id.as_deref() == Some(old.crm_user_id.as_str()) => (Some(old), None),
        other => (None, other),
    };
    let verdict = Verdict { rule: Rule::Unchanged, reacted: true, retract, provision: None, result: None };
    let Some(crm_user_id) = crm_user_id else {
        let detail = format!(
            "field `{}`, which names the responsible CRM user, is missing or empty on {} {}",
            workflow.user_field, e.object_type, e.object_id
        );
        return Ok(verdict.ignored(IgnoreReason::MissingUserField, detail, None, None));
    };
    // `by_this_change`: provisioned here or by an earlier workflow of the same change.
    let (account, provision, by_this_change) = match decision.provisioned(&crm_user_id) {
        Some(account) => (account.clone(), None, true),
        None => match state.account(&e.company_id, &e.integration_id, &crm_user_id)? {
            Some(account) => (account, None, false),
            None if integration.auto_sync_users => {
                let account = Account { user_id: ids::user_id(&e.company_id, &e.integration_id, &crm_user_id) };
                (account.clone(), Some(Provision { crm_user_id: crm_user_id.clone(), account }), true)
            }
            None => {
                trace.responsible(&crm_user_id, None, false);
                let detail = format!(
                    "CRM user {crm_user_id} has no account and \"Automatically sync users\" is off for integration {}",
                    e.integration_id
                );
                return Ok(verdict.ignored(IgnoreReason::UserNotSynced, detail, Some(&crm_user_id), None));
            }
        },
    };
    trace.responsible(&crm_user_id, Some(&account.user_id), by_this_change);
    let verdict = Verdict { provision, ..verdict };
    let Some(team_id) = state.team_of(&e.company_id, &account.user_id)? else {
        let detail = format!("user {} (CRM user {crm_user_id}) is not placed on a team", account.user_id);
        return Ok(verdict.ignored(IgnoreReason::UserNotOnTeam, detail, Some(&crm_user_id), Some(&account.user_id)));
    };
    trace.team(&team_id);
    let entry = LedgerEntry {
        user_id: account.user_id,
        crm_user_id,
        team_id,
        activity_type: workflow.activity_type.clone(),
        value: field_number(e, workflow.value_field.as_deref()),
        occurred_at: field_instant(e, workflow.occurred_at_field.as_deref()).unwrap_or(e.occurred_at),
    };
    let change = match live {
        Some(old) if old.value == entry.value && old.occurred_at == entry.occurred_at => return Ok(verdict),
        Some(_) => Change::Revised,
        None => Change::Recorded,
    };
    let rule = if change == Change::Revised { Rule::Revised } else { Rule::Recorded };
    Ok(Verdict { rule, result: Some(Outcome::Accept(change, entry)), ..verdict })
}

/// Whether every condition holds, in order, stopping at the first that fails.
fn conditions_hold<T: Trace>(workflow: &Workflow, e: &CrmRecordChanged, trace: &mut T) -> bool {
    workflow.conditions.iter().all(|condition| {
        let actual = e.fields.get(&condition.field);
        let held = condition.holds(actual);
        trace.condition(condition, actual, held);
        held
    })
}

fn field_number(e: &CrmRecordChanged, field: Option<&str>) -> Option<f64> {
    e.fields.get(field?)?.as_number()
}

fn field_instant(e: &CrmRecordChanged, field: Option<&str>) -> Option<Timestamp> {
    Timestamp::parse_date_or_datetime(&e.fields.get(field?)?.as_text()?)
}

/// One CRM change's decision as the workflows' verdicts are applied: owns the writes,
/// the tally, and the contract's output order (provisioned users, retractions, results).
struct CrmDecision {
    changes: Vec<StateChange>,
    tally: Tally,
    provisioned: Vec<OutputEvent>,
    retractions: Vec<OutputEvent>,
    results: Vec<OutputEvent>,
    /// Accounts provisioned by this very change, so two workflows provision a user once.
    new_accounts: BTreeMap<String, Account>,
    reacted: bool,
}

impl Default for CrmDecision {
    fn default() -> Self {
        CrmDecision {
            changes: Vec::new(),
            tally: Tally { crm_changes: 1, ..Tally::default() },
            provisioned: Vec::new(),
            retractions: Vec::new(),
            results: Vec::new(),
            new_accounts: BTreeMap::new(),
            reacted: false,
        }
    }
}

impl CrmDecision {
    /// A resend: counted, nothing else.
    fn duplicate(mut self) -> Decision {
        self.tally.duplicates = 1;
        Decision { changes: Vec::new(), outputs: Vec::new(), tally: self.tally }
    }

    fn remember(&mut self, e: &CrmRecordChanged) {
        self.changes
            .push(StateChange::RememberEvent { company_id: e.company_id.clone(), event_id: e.event_id.clone() });
    }

    fn provisioned(&self, crm_user_id: &str) -> Option<&Account> {
        self.new_accounts.get(crm_user_id)
    }

    /// Writes a verdict: retraction, then provisioning, then the result (their writes in that order).
    fn apply<T: Trace>(&mut self, activity: &Activity<'_>, verdict: Verdict, trace: &mut T) -> Rule {
        let Verdict { rule, reacted, retract, provision, result } = verdict;
        self.reacted |= reacted;
        if let Some(old) = retract {
            self.retract(activity, &old, trace);
        }
        if let Some(Provision { crm_user_id, account }) = provision {
            self.provision(activity, crm_user_id, account, trace);
        }
        match result {
            Some(Outcome::Accept(change, entry)) => self.accept(activity, change, entry, trace),
            Some(Outcome::Ignore { reason, detail, crm_user_id, user_id }) => {
                self.ignore(activity, reason, detail, crm_user_id, user_id, trace)
            }
            None => {}
        }
        rule
    }

    fn retract<T: Trace>(&mut self, activity: &Activity<'_>, old: &LedgerEntry, trace: &mut T) {
        let output = activity.accepted(Change::Retracted, old);
        trace.output(&output);
        self.retractions.push(output);
        self.changes.push(StateChange::RemoveLedger {
            company_id: activity.change.company_id.clone(),
            activity_id: activity.activity_id.clone(),
        });
        self.tally.retracted += 1;
    }

    fn accept<T: Trace>(&mut self, activity: &Activity<'_>, change: Change, entry: LedgerEntry, trace: &mut T) {
        let output = activity.accepted(change, &entry);
        trace.output(&output);
        self.results.push(output);
        match change {
            Change::Recorded => self.tally.recorded += 1,
            Change::Revised => self.tally.revised += 1,
            Change::Retracted => self.tally.retracted += 1,
        }
        self.changes.push(StateChange::PutLedger {
            company_id: activity.change.company_id.clone(),
            activity_id: activity.activity_id.clone(),
            entry,
        });
    }

    fn provision<T: Trace>(&mut self, activity: &Activity<'_>, crm_user_id: String, account: Account, trace: &mut T) {
        let e = activity.change;
        let profile = e.users.as_ref().and_then(|users| users.get(&crm_user_id));
        let output = OutputEvent::UserProvisioned(UserProvisioned {
            event_id: activity.event_id("UserProvisioned", &crm_user_id),
            source_event_id: e.event_id.clone(),
            company_id: e.company_id.clone(),
            integration_id: e.integration_id.clone(),
            user_id: account.user_id.clone(),
            crm_user_id: crm_user_id.clone(),
            name: profile.and_then(|p| p.name.clone()),
            email: profile.and_then(|p| p.email.clone()),
            workflow_id: activity.workflow.workflow_id.clone(),
            occurred_at: e.occurred_at,
        });
        trace.output(&output);
        self.provisioned.push(output);
        self.changes.push(StateChange::PutAccount {
            company_id: e.company_id.clone(),
            integration_id: e.integration_id.clone(),
            crm_user_id: crm_user_id.clone(),
            account: account.clone(),
        });
        self.tally.users_provisioned += 1;
        self.new_accounts.insert(crm_user_id, account);
    }

    fn ignore<T: Trace>(
        &mut self,
        activity: &Activity<'_>,
        reason: IgnoreReason,
        detail: String,
        crm_user_id: Option<String>,
        user_id: Option<String>,
        trace: &mut T,
    ) {
        let e = activity.change;
        let output = OutputEvent::ActivityIgnored(ActivityIgnored {
            event_id: activity.event_id("ActivityIgnored", reason.as_str()),
            source_event_id: e.event_id.clone(),
            reason,
            detail,
            company_id: e.company_id.clone(),
            integration_id: e.integration_id.clone(),
            workflow_id: activity.workflow.workflow_id.clone(),
            activity_type: activity.workflow.activity_type.clone(),
            object_type: e.object_type.clone(),
            object_id: e.object_id.clone(),
            crm_user_id,
            user_id,
        });
        trace.output(&output);
        self.results.push(output);
        *self.tally.ignored.entry(reason).or_default() += 1;
    }

    fn finish(self) -> Decision {
        let CrmDecision { changes, mut tally, provisioned, retractions, results, reacted, .. } = self;
        if reacted {
            tally.matched = 1;
        } else {
            tally.unmatched = 1;
        }
        Decision { changes, outputs: provisioned.into_iter().chain(retractions).chain(results).collect(), tally }
    }
}

/// One workflow's view of one CRM change: names its activity and output events.
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
