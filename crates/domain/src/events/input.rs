//! What arrives on the input topics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scalar::Scalar;
use crate::time::Timestamp;
use crate::workflow::{InvalidWorkflow, Operation, Workflow};

/// Profile of a CRM user that a record refers to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CrmUserProfile {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A CRM record was created, updated or deleted (topic `crm.changes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmRecordChanged {
    /// Unique per change; connectors may resend it.
    pub event_id: String,
    /// The company the integration belongs to.
    pub company_id: String,
    /// The integration that saw the change.
    pub integration_id: String,
    /// The CRM object type, e.g. `Opportunity`.
    pub object_type: String,
    /// The record's id in the CRM.
    pub object_id: String,
    /// What happened.
    pub operation: Operation,
    /// When it happened in the CRM.
    pub occurred_at: Timestamp,
    /// The record's fields after the change.
    #[serde(default)]
    pub fields: BTreeMap<String, Scalar>,
    /// Profiles of CRM users the record refers to, by CRM user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<BTreeMap<String, CrmUserProfile>>,
}

/// An integration's settings changed (topic `integration.settings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationSettingsChanged {
    /// The company.
    pub company_id: String,
    /// The integration.
    pub integration_id: String,
    /// Which CRM, e.g. `salesforce`.
    pub crm: String,
    /// The admin's "Automatically sync users" setting.
    pub auto_sync_users: bool,
    /// When the admin changed it.
    pub changed_at: Timestamp,
}

/// A workflow was created or edited; it replaces the one with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSaved {
    /// The company.
    pub company_id: String,
    /// The integration.
    pub integration_id: String,
    /// When the admin saved it.
    pub changed_at: Timestamp,
    /// The full definition.
    pub workflow: Workflow,
}

/// A workflow was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDeleted {
    /// The company.
    pub company_id: String,
    /// The integration.
    pub integration_id: String,
    /// The workflow removed.
    pub workflow_id: String,
    /// When the admin deleted it.
    pub changed_at: Timestamp,
}

/// A user was placed on a team, leaving any previous one (topic `team.assignments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserAssignedToTeam {
    /// The company.
    pub company_id: String,
    /// The crmflow user id.
    pub user_id: String,
    /// The team.
    pub team_id: String,
    /// When the placement was made.
    pub changed_at: Timestamp,
}

/// A user was taken off a team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRemovedFromTeam {
    /// The company.
    pub company_id: String,
    /// The crmflow user id.
    pub user_id: String,
    /// The team they leave.
    pub team_id: String,
    /// When the removal was made.
    pub changed_at: Timestamp,
}

/// Any input event, tagged by `type` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum InputEvent {
    /// See [`CrmRecordChanged`].
    CrmRecordChanged(CrmRecordChanged),
    /// See [`IntegrationSettingsChanged`].
    IntegrationSettingsChanged(IntegrationSettingsChanged),
    /// See [`WorkflowSaved`].
    WorkflowSaved(WorkflowSaved),
    /// See [`WorkflowDeleted`].
    WorkflowDeleted(WorkflowDeleted),
    /// See [`UserAssignedToTeam`].
    UserAssignedToTeam(UserAssignedToTeam),
    /// See [`UserRemovedFromTeam`].
    UserRemovedFromTeam(UserRemovedFromTeam),
}

/// The input topic an event type belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputStream {
    /// Integration settings and workflows.
    Settings,
    /// Team placements.
    Teams,
    /// CRM record changes.
    CrmChanges,
}

/// A contract rule the event breaks even though it parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractViolation {
    /// A required identifier is empty.
    #[error("`{0}` must not be empty")]
    EmptyField(&'static str),
    /// The workflow cannot be evaluated.
    #[error(transparent)]
    InvalidWorkflow(#[from] InvalidWorkflow),
}

impl InputEvent {
    /// Every event type name, as written in `type`.
    pub const TYPES: [&'static str; 6] = [
        "CrmRecordChanged",
        "IntegrationSettingsChanged",
        "WorkflowSaved",
        "WorkflowDeleted",
        "UserAssignedToTeam",
        "UserRemovedFromTeam",
    ];

    /// The company the event belongs to (and must be keyed by).
    pub fn company_id(&self) -> &str {
        match self {
            InputEvent::CrmRecordChanged(e) => &e.company_id,
            InputEvent::IntegrationSettingsChanged(e) => &e.company_id,
            InputEvent::WorkflowSaved(e) => &e.company_id,
            InputEvent::WorkflowDeleted(e) => &e.company_id,
            InputEvent::UserAssignedToTeam(e) => &e.company_id,
            InputEvent::UserRemovedFromTeam(e) => &e.company_id,
        }
    }

    /// The `type` name of the event.
    pub fn type_name(&self) -> &'static str {
        match self {
            InputEvent::CrmRecordChanged(_) => "CrmRecordChanged",
            InputEvent::IntegrationSettingsChanged(_) => "IntegrationSettingsChanged",
            InputEvent::WorkflowSaved(_) => "WorkflowSaved",
            InputEvent::WorkflowDeleted(_) => "WorkflowDeleted",
            InputEvent::UserAssignedToTeam(_) => "UserAssignedToTeam",
            InputEvent::UserRemovedFromTeam(_) => "UserRemovedFromTeam",
        }
    }

    /// The input stream this event type is published on.
    pub fn stream(&self) -> InputStream {
        match self {
            InputEvent::CrmRecordChanged(_) => InputStream::CrmChanges,
            InputEvent::IntegrationSettingsChanged(_)
            | InputEvent::WorkflowSaved(_)
            | InputEvent::WorkflowDeleted(_) => InputStream::Settings,
            InputEvent::UserAssignedToTeam(_) | InputEvent::UserRemovedFromTeam(_) => InputStream::Teams,
        }
    }

    /// Checks the rules serde cannot: non-empty identifiers and valid workflows.
    pub fn validate(&self) -> Result<(), ContractViolation> {
        let required: Vec<(&'static str, &str)> = match self {
            InputEvent::CrmRecordChanged(e) => vec![
                ("event_id", &e.event_id),
                ("company_id", &e.company_id),
                ("integration_id", &e.integration_id),
                ("object_type", &e.object_type),
                ("object_id", &e.object_id),
            ],
            InputEvent::IntegrationSettingsChanged(e) => {
                vec![("company_id", &e.company_id), ("integration_id", &e.integration_id)]
            }
            InputEvent::WorkflowSaved(e) => {
                e.workflow.validate()?;
                vec![("company_id", &e.company_id), ("integration_id", &e.integration_id)]
            }
            InputEvent::WorkflowDeleted(e) => vec![
                ("company_id", &e.company_id),
                ("integration_id", &e.integration_id),
                ("workflow_id", &e.workflow_id),
            ],
            InputEvent::UserAssignedToTeam(e) => {
                vec![("company_id", &e.company_id), ("user_id", &e.user_id), ("team_id", &e.team_id)]
            }
            InputEvent::UserRemovedFromTeam(e) => {
                vec![("company_id", &e.company_id), ("user_id", &e.user_id), ("team_id", &e.team_id)]
            }
        };
        match required.into_iter().find(|(_, v)| v.trim().is_empty()) {
            Some((name, _)) => Err(ContractViolation::EmptyField(name)),
            None => Ok(()),
        }
    }
}
