//! Topic names, and which stream each event belongs to.

use serde::{Deserialize, Serialize};

use crmflow_domain::{InputStream, OutputEvent};

/// The names of every topic crmflow reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicNames {
    /// CRM record changes.
    pub crm_changes: String,
    /// Integration settings and workflows.
    pub integration_settings: String,
    /// Team placements.
    pub team_assignments: String,
    /// UserProvisioned events.
    pub users_provisioned: String,
    /// ActivityAccepted events.
    pub activities_accepted: String,
    /// ActivityIgnored events.
    pub activities_ignored: String,
    /// Records that could not be processed.
    pub dead_letters: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            crm_changes: "crm.changes".into(),
            integration_settings: "integration.settings".into(),
            team_assignments: "team.assignments".into(),
            users_provisioned: "users.provisioned".into(),
            activities_accepted: "activities.accepted".into(),
            activities_ignored: "activities.ignored".into(),
            dead_letters: "crmflow.dlq".into(),
        }
    }
}

impl TopicNames {
    /// The input stream a topic carries, if it is an input topic.
    pub fn input_stream(&self, topic: &str) -> Option<InputStream> {
        self.inputs().into_iter().find(|(_, name)| *name == topic).map(|(s, _)| s)
    }

    /// The input topics with their streams, in tie-break order (settings, teams, CRM changes).
    pub fn inputs(&self) -> [(InputStream, &str); 3] {
        [
            (InputStream::Settings, &self.integration_settings),
            (InputStream::Teams, &self.team_assignments),
            (InputStream::CrmChanges, &self.crm_changes),
        ]
    }

    /// The topic of an input stream.
    pub fn input_topic(&self, stream: InputStream) -> &str {
        match stream {
            InputStream::Settings => &self.integration_settings,
            InputStream::Teams => &self.team_assignments,
            InputStream::CrmChanges => &self.crm_changes,
        }
    }

    /// The output topics, dead letters included.
    pub fn outputs(&self) -> [&str; 4] {
        [&self.users_provisioned, &self.activities_accepted, &self.activities_ignored, &self.dead_letters]
    }

    /// The topic an output event is published on.
    pub fn output_topic(&self, event: &OutputEvent) -> &str {
        match event {
            OutputEvent::UserProvisioned(_) => &self.users_provisioned,
            OutputEvent::ActivityAccepted(_) => &self.activities_accepted,
            OutputEvent::ActivityIgnored(_) => &self.activities_ignored,
        }
    }
}
