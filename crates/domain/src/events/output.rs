//! What crmflow publishes on the output topics.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// How an accepted activity changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new activity.
    Recorded,
    /// The activity's value or date changed.
    Revised,
    /// The activity no longer counts.
    Retracted,
}

impl Change {
    /// The name as written in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Recorded => "recorded",
            Change::Revised => "revised",
            Change::Retracted => "retracted",
        }
    }
}

/// Why an activity was ignored, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreReason {
    /// The workflow's user field is missing or empty on the record.
    MissingUserField,
    /// The CRM user has no account and auto-sync is off.
    UserNotSynced,
    /// The user is on no team.
    UserNotOnTeam,
}

impl IgnoreReason {
    /// Every reason, in a stable order.
    pub const ALL: [IgnoreReason; 3] =
        [IgnoreReason::MissingUserField, IgnoreReason::UserNotSynced, IgnoreReason::UserNotOnTeam];

    /// The name as written in events.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::MissingUserField => "missing_user_field",
            IgnoreReason::UserNotSynced => "user_not_synced",
            IgnoreReason::UserNotOnTeam => "user_not_on_team",
        }
    }
}

/// A user account was created for a CRM user (topic `users.provisioned`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserProvisioned {
    /// Deterministic id of this event.
    pub event_id: String,
    /// The CRM change that caused it.
    pub source_event_id: String,
    /// The company.
    pub company_id: String,
    /// The integration.
    pub integration_id: String,
    /// The new account's id.
    pub user_id: String,
    /// The CRM user it corresponds to.
    pub crm_user_id: String,
    /// Display name, when the connector sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail, when the connector sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The workflow whose activity triggered it.
    pub workflow_id: String,
    /// When the triggering change happened.
    pub occurred_at: Timestamp,
}

/// An activity counts for a user on a team, or no longer does (topic `activities.accepted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityAccepted {
    /// Deterministic id of this event.
    pub event_id: String,
    /// The CRM change that caused it.
    pub source_event_id: String,
    /// Recorded, revised or retracted.
    pub change: Change,
    /// Stable id of the activity across its revisions.
    pub activity_id: String,
    /// The company.
    pub company_id: String,
    /// The integration.
    pub integration_id: String,
    /// The workflow that reported it.
    pub workflow_id: String,
    /// e.g. `Sale`.
    pub activity_type: String,
    /// The CRM object type.
    pub object_type: String,
    /// The CRM record's id.
    pub object_id: String,
    /// The account it counts for.
    pub user_id: String,
    /// The responsible CRM user.
    pub crm_user_id: String,
    /// The user's team.
    pub team_id: String,
    /// The activity's value, when the workflow names a numeric field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// When the activity happened.
    pub occurred_at: Timestamp,
}

/// A change matched a workflow but does not count, and why (topic `activities.ignored`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityIgnored {
    /// Deterministic id of this event.
    pub event_id: String,
    /// The CRM change that caused it.
    pub source_event_id: String,
    /// Machine-readable reason.
    pub reason: IgnoreReason,
    /// A sentence for humans.
    pub detail: String,
    /// The company.
    pub company_id: String,
    /// The integration.
    pub integration_id: String,
    /// The workflow that matched.
    pub workflow_id: String,
    /// e.g. `Sale`.
    pub activity_type: String,
    /// The CRM object type.
    pub object_type: String,
    /// The CRM record's id.
    pub object_id: String,
    /// The responsible CRM user, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_user_id: Option<String>,
    /// Their account, when they have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Any output event, tagged by `type` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OutputEvent {
    /// See [`UserProvisioned`].
    UserProvisioned(UserProvisioned),
    /// See [`ActivityAccepted`].
    ActivityAccepted(ActivityAccepted),
    /// See [`ActivityIgnored`].
    ActivityIgnored(ActivityIgnored),
}

impl OutputEvent {
    /// The `type` name of the event.
    pub fn type_name(&self) -> &'static str {
        match self {
            OutputEvent::UserProvisioned(_) => "UserProvisioned",
            OutputEvent::ActivityAccepted(_) => "ActivityAccepted",
            OutputEvent::ActivityIgnored(_) => "ActivityIgnored",
        }
    }

    /// The company (the record key).
    pub fn company_id(&self) -> &str {
        match self {
            OutputEvent::UserProvisioned(e) => &e.company_id,
            OutputEvent::ActivityAccepted(e) => &e.company_id,
            OutputEvent::ActivityIgnored(e) => &e.company_id,
        }
    }

    /// The event's own id.
    pub fn event_id(&self) -> &str {
        match self {
            OutputEvent::UserProvisioned(e) => &e.event_id,
            OutputEvent::ActivityAccepted(e) => &e.event_id,
            OutputEvent::ActivityIgnored(e) => &e.event_id,
        }
    }
}
