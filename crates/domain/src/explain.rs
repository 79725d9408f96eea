//! Decision traces: why an input event decided what it did.
//!
//! [`explain()`](crate::explain()) runs the very code path [`decide()`](crate::decide()) runs,
//! with a [`Trace`] that records instead of one that does nothing, so an [`Explanation`] can
//! never tell a different story from the decision it comes with.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::events::{IgnoreReason, InputEvent, OutputEvent};
use crate::scalar::Scalar;
use crate::workflow::{Condition, ConditionValue, Operation, Operator};

/// Why one input event decided what it did, tagged by the input's `type` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Explanation {
    /// Which workflows a CRM change met, and what each made of it.
    CrmRecordChanged(CrmChangeExplanation),
    /// What new settings replaced.
    IntegrationSettingsChanged(ConfigurationExplanation),
    /// Whether a saved workflow is new or replaces one.
    WorkflowSaved(ConfigurationExplanation),
    /// Whether a deleted workflow existed.
    WorkflowDeleted(ConfigurationExplanation),
    /// The team a user was placed on.
    UserAssignedToTeam(ConfigurationExplanation),
    /// Whether a removal from a team took the user off it.
    UserRemovedFromTeam(ConfigurationExplanation),
}

/// The trace of one CRM change: its identity and every workflow of its integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmChangeExplanation {
    /// The change's id, which the outputs name as their `source_event_id`.
    pub event_id: String,
    /// The company.
    pub company_id: String,
    /// The integration whose workflows were considered.
    pub integration_id: String,
    /// The CRM object type, which workflows must watch.
    pub object_type: String,
    /// The CRM record's id.
    pub object_id: String,
    /// What happened to the record, which workflows must list as a trigger.
    pub operation: Operation,
    /// The change was dropped because its event id was already processed; nothing else ran.
    pub duplicate: bool,
    /// Every workflow of the integration, in evaluation (id) order.
    pub workflows: Vec<WorkflowExplanation>,
}

/// How one workflow judged one CRM change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowExplanation {
    /// The workflow.
    pub workflow_id: String,
    /// Only active workflows are evaluated.
    pub active: bool,
    /// The workflow watches the change's object type.
    pub object_type_matched: bool,
    /// The change's operation is among the workflow's triggers.
    pub operation_is_trigger: bool,
    /// Conditions in order, up to the first that failed (later ones are not evaluated);
    /// empty when the workflow was not evaluated or the record was deleted.
    pub conditions: Vec<ConditionCheck>,
    /// The responsible CRM user, once the conditions held and the user field named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_user_id: Option<String>,
    /// Their account, once known or provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The account was provisioned by this change (here or by an earlier workflow of it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisioned: bool,
    /// The user's team, once found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// The rule that decided this workflow's result.
    pub rule: Rule,
    /// The outputs this workflow produced, so the trace links to them.
    pub outputs: Vec<OutputLink>,
}

/// One condition as evaluated against the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionCheck {
    /// The record field read.
    pub field: String,
    /// The comparison.
    pub op: Operator,
    /// What the workflow compares with (absent for `exists` / `not_exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<ConditionValue>,
    /// The record's value; absent when the field is missing or null (null counts as absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Scalar>,
    /// Whether the condition held.
    pub held: bool,
}

/// The rule that decided a workflow's result, written as one machine-readable word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Rule {
    /// `inactive`: the workflow is switched off.
    Inactive,
    /// `other_object_type`: the workflow watches another object type.
    OtherObjectType,
    /// `operation_not_a_trigger`: the workflow does not react to this operation.
    OperationNotATrigger,
    /// `condition_failed`: a condition did not hold and no activity of the record was live.
    ConditionFailed,
    /// `retracted`: a condition no longer holds, so the live activity was retracted.
    Retracted,
    /// `deleted`: the record was deleted; its live activity, if any, was retracted.
    Deleted,
    /// `ignored:<reason>`: the workflow matched but the activity does not count.
    Ignored(IgnoreReason),
    /// `recorded`: a new activity counts.
    Recorded,
    /// `revised`: the live activity's value or date changed.
    Revised,
    /// `unchanged`: the live activity already has this value and date; nothing to publish.
    Unchanged,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self {
            Rule::Inactive => "inactive",
            Rule::OtherObjectType => "other_object_type",
            Rule::OperationNotATrigger => "operation_not_a_trigger",
            Rule::ConditionFailed => "condition_failed",
            Rule::Retracted => "retracted",
            Rule::Deleted => "deleted",
            Rule::Ignored(reason) => return write!(f, "ignored:{}", reason.as_str()),
            Rule::Recorded => "recorded",
            Rule::Revised => "revised",
            Rule::Unchanged => "unchanged",
        };
        f.write_str(word)
    }
}

/// A word that names no [`Rule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a decision rule")]
pub struct UnknownRule(pub String);

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(word: &str) -> Result<Self, UnknownRule> {
        let simple = [
            Rule::Inactive,
            Rule::OtherObjectType,
            Rule::OperationNotATrigger,
            Rule::ConditionFailed,
            Rule::Retracted,
            Rule::Deleted,
            Rule::Recorded,
            Rule::Revised,
            Rule::Unchanged,
        ];
        let ignored = IgnoreReason::ALL.map(Rule::Ignored);
        simple.into_iter().chain(ignored).find(|rule| rule.to_string() == word).ok_or_else(|| UnknownRule(word.into()))
    }
}

impl From<Rule> for String {
    fn from(rule: Rule) -> String {
        rule.to_string()
    }
}

impl TryFrom<String> for Rule {
    type Error = UnknownRule;

    fn try_from(word: String) -> Result<Self, UnknownRule> {
        word.parse()
    }
}

/// Names one output event, so a trace can be joined with what was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLink {
    /// The output's `type`, e.g. `ActivityAccepted`.
    #[serde(rename = "type")]
    pub output_type: String,
    /// The output's `event_id`.
    pub event_id: String,
}

/// The trace of a settings, workflow or team event: what it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationExplanation {
    /// The company.
    pub company_id: String,
    /// The integration, for settings and workflow events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_id: Option<String>,
    /// The workflow, for workflow events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The user, for team events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The team named by a team event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// What the event changed, or that it changed nothing.
    pub effect: Effect,
}

/// What a settings, workflow or team event did to the projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The integration's CRM and auto-sync setting were replaced.
    SettingsReplaced,
    /// A workflow with a new id was added.
    WorkflowAdded,
    /// A workflow replaced the one with the same id.
    WorkflowReplaced,
    /// A workflow was removed.
    WorkflowRemoved,
    /// The workflow to delete did not exist: nothing changed.
    WorkflowNotFound,
    /// The user was placed on the team, leaving any previous one.
    PlacedOnTeam,
    /// The user was taken off the team.
    RemovedFromTeam,
    /// The user was not on that team (already moved away): nothing changed.
    NotOnThatTeam,
}

impl Explanation {
    /// The company the traced input belongs to, which traces are stored and served under.
    pub fn company_id(&self) -> &str {
        match self {
            Explanation::CrmRecordChanged(x) => &x.company_id,
            Explanation::IntegrationSettingsChanged(x)
            | Explanation::WorkflowSaved(x)
            | Explanation::WorkflowDeleted(x)
            | Explanation::UserAssignedToTeam(x)
            | Explanation::UserRemovedFromTeam(x) => &x.company_id,
        }
    }

    /// The trace before deciding: the input's identity, with the effect it has when applied.
    fn of(event: &InputEvent) -> Self {
        let configuration = |company_id: &str, effect| ConfigurationExplanation {
            company_id: company_id.to_owned(),
            integration_id: None,
            workflow_id: None,
            user_id: None,
            team_id: None,
            effect,
        };
        match event {
            InputEvent::CrmRecordChanged(e) => Explanation::CrmRecordChanged(CrmChangeExplanation {
                event_id: e.event_id.clone(),
                company_id: e.company_id.clone(),
                integration_id: e.integration_id.clone(),
                object_type: e.object_type.clone(),
                object_id: e.object_id.clone(),
                operation: e.operation,
                duplicate: false,
                workflows: Vec::new(),
            }),
            InputEvent::IntegrationSettingsChanged(e) => {
                Explanation::IntegrationSettingsChanged(ConfigurationExplanation {
                    integration_id: Some(e.integration_id.clone()),
                    ..configuration(&e.company_id, Effect::SettingsReplaced)
                })
            }
            InputEvent::WorkflowSaved(e) => Explanation::WorkflowSaved(ConfigurationExplanation {
                integration_id: Some(e.integration_id.clone()),
                workflow_id: Some(e.workflow.workflow_id.clone()),
                ..configuration(&e.company_id, Effect::WorkflowAdded)
            }),
            InputEvent::WorkflowDeleted(e) => Explanation::WorkflowDeleted(ConfigurationExplanation {
                integration_id: Some(e.integration_id.clone()),
                workflow_id: Some(e.workflow_id.clone()),
                ..configuration(&e.company_id, Effect::WorkflowRemoved)
            }),
            InputEvent::UserAssignedToTeam(e) => Explanation::UserAssignedToTeam(ConfigurationExplanation {
                user_id: Some(e.user_id.clone()),
                team_id: Some(e.team_id.clone()),
                ..configuration(&e.company_id, Effect::PlacedOnTeam)
            }),
            InputEvent::UserRemovedFromTeam(e) => Explanation::UserRemovedFromTeam(ConfigurationExplanation {
                user_id: Some(e.user_id.clone()),
                team_id: Some(e.team_id.clone()),
                ..configuration(&e.company_id, Effect::RemovedFromTeam)
            }),
        }
    }
}

/// Where the decision path reports what it looks at. [`decide()`](crate::decide()) passes
/// [`Untraced`], whose empty inlined methods the compiler removes; `explain` passes a [`Recorder`].
pub(crate) trait Trace {
    /// A settings, workflow or team event had this effect.
    fn effect(&mut self, effect: Effect);
    /// The CRM change was a resend, dropped.
    fn duplicate(&mut self);
    /// A workflow is considered next; the following calls are about it.
    fn workflow(&mut self, workflow_id: &str, active: bool, object_type_matched: bool, operation_is_trigger: bool);
    /// A condition of the current workflow was evaluated.
    fn condition(&mut self, condition: &Condition, actual: Option<&Scalar>, held: bool);
    /// The current workflow found the responsible user (`user_id` once they have an account).
    fn responsible(&mut self, crm_user_id: &str, user_id: Option<&str>, provisioned: bool);
    /// The current workflow found the user's team.
    fn team(&mut self, team_id: &str);
    /// The current workflow produced an output.
    fn output(&mut self, output: &OutputEvent);
    /// The rule that decided the current workflow's result.
    fn decided(&mut self, rule: Rule);
}

/// The trace `decide` runs with: records nothing and costs nothing.
pub(crate) struct Untraced;

impl Trace for Untraced {
    #[inline(always)]
    fn effect(&mut self, _: Effect) {}
    #[inline(always)]
    fn duplicate(&mut self) {}
    #[inline(always)]
    fn workflow(&mut self, _: &str, _: bool, _: bool, _: bool) {}
    #[inline(always)]
    fn condition(&mut self, _: &Condition, _: Option<&Scalar>, _: bool) {}
    #[inline(always)]
    fn responsible(&mut self, _: &str, _: Option<&str>, _: bool) {}
    #[inline(always)]
    fn team(&mut self, _: &str) {}
    #[inline(always)]
    fn output(&mut self, _: &OutputEvent) {}
    #[inline(always)]
    fn decided(&mut self, _: Rule) {}
}

/// The trace `explain` runs with: builds the [`Explanation`].
pub(crate) struct Recorder {
    explanation: Explanation,
}

impl Recorder {
    /// Starts the trace of one input event.
    pub(crate) fn new(event: &InputEvent) -> Self {
        Recorder { explanation: Explanation::of(event) }
    }

    /// The finished trace.
    pub(crate) fn finish(self) -> Explanation {
        self.explanation
    }

    fn crm_change(&mut self) -> Option<&mut CrmChangeExplanation> {
        match &mut self.explanation {
            Explanation::CrmRecordChanged(x) => Some(x),
            _ => None,
        }
    }

    fn current_workflow(&mut self) -> Option<&mut WorkflowExplanation> {
        self.crm_change()?.workflows.last_mut()
    }
}

impl Trace for Recorder {
    fn effect(&mut self, effect: Effect) {
        match &mut self.explanation {
            Explanation::CrmRecordChanged(_) => {}
            Explanation::IntegrationSettingsChanged(x)
            | Explanation::WorkflowSaved(x)
            | Explanation::WorkflowDeleted(x)
            | Explanation::UserAssignedToTeam(x)
            | Explanation::UserRemovedFromTeam(x) => x.effect = effect,
        }
    }

    fn duplicate(&mut self) {
        if let Some(x) = self.crm_change() {
            x.duplicate = true;
        }
    }

    fn workflow(&mut self, workflow_id: &str, active: bool, object_type_matched: bool, operation_is_trigger: bool) {
        if let Some(x) = self.crm_change() {
            x.workflows.push(WorkflowExplanation {
                workflow_id: workflow_id.to_owned(),
                active,
                object_type_matched,
                operation_is_trigger,
                conditions: Vec::new(),
                crm_user_id: None,
                user_id: None,
                provisioned: false,
                team_id: None,
                // Overwritten by `decided`; a workflow is never left without a rule.
                rule: Rule::Inactive,
                outputs: Vec::new(),
            });
        }
    }

    fn condition(&mut self, condition: &Condition, actual: Option<&Scalar>, held: bool) {
        if let Some(w) = self.current_workflow() {
            w.conditions.push(ConditionCheck {
                field: condition.field.clone(),
                op: condition.op,
                expected: condition.value.clone(),
                actual: actual.filter(|v| **v != Scalar::Null).cloned(),
                held,
            });
        }
    }

    fn responsible(&mut self, crm_user_id: &str, user_id: Option<&str>, provisioned: bool) {
        if let Some(w) = self.current_workflow() {
            w.crm_user_id = Some(crm_user_id.to_owned());
            w.user_id = user_id.map(str::to_owned);
            w.provisioned = provisioned;
        }
    }

    fn team(&mut self, team_id: &str) {
        if let Some(w) = self.current_workflow() {
            w.team_id = Some(team_id.to_owned());
        }
    }

    fn output(&mut self, output: &OutputEvent) {
        if let Some(w) = self.current_workflow() {
            w.outputs.push(OutputLink {
                output_type: output.type_name().to_owned(),
                event_id: output.event_id().to_owned(),
            });
        }
    }

    fn decided(&mut self, rule: Rule) {
        if let Some(w) = self.current_workflow() {
            w.rule = rule;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_single_words_both_ways() {
        for (rule, word) in [
            (Rule::OperationNotATrigger, "operation_not_a_trigger"),
            (Rule::Ignored(IgnoreReason::UserNotOnTeam), "ignored:user_not_on_team"),
            (Rule::Unchanged, "unchanged"),
        ] {
            assert_eq!(serde_json::to_value(rule).unwrap(), serde_json::json!(word));
            assert_eq!(serde_json::from_value::<Rule>(serde_json::json!(word)).unwrap(), rule);
        }
        assert!(serde_json::from_value::<Rule>(serde_json::json!("ignored:tuesday")).is_err());
    }
}
