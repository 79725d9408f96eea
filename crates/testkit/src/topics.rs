//! The topics of one test or one benchmark run: crmflow's names behind a prefix, so that runs
//! on one broker never share a topic, and the variables that point crmflow at them.

use crmflow_codec::TopicNames;

use crate::{Broker, Error};

/// One run's topics, all with the same partition count.
#[derive(Debug, Clone)]
pub struct Topics {
    /// The names, in crmflow's configuration form.
    pub names: TopicNames,
    /// Partitions of every topic.
    pub partitions: i32,
}

impl Topics {
    /// crmflow's input topics behind `inputs.` and its outputs behind `outputs.`: runs that read
    /// the same inputs (a backlog produced once) write outputs of their own.
    pub fn new(inputs: &str, outputs: &str, partitions: i32) -> Topics {
        let d = TopicNames::default();
        let input = |name: &str| format!("{inputs}.{name}");
        let output = |name: &str| format!("{outputs}.{name}");
        let names = TopicNames {
            crm_changes: input(&d.crm_changes),
            integration_settings: input(&d.integration_settings),
            team_assignments: input(&d.team_assignments),
            users_provisioned: output(&d.users_provisioned),
            activities_accepted: output(&d.activities_accepted),
            activities_ignored: output(&d.activities_ignored),
            dead_letters: output(&d.dead_letters),
        };
        Topics { names, partitions }
    }

    /// Every topic behind `prefix.`.
    pub fn prefixed(prefix: &str, partitions: i32) -> Topics {
        Topics::new(prefix, prefix, partitions)
    }

    /// crmflow's default names (topics created elsewhere, e.g. by a mock cluster).
    pub fn defaults(partitions: i32) -> Topics {
        Topics { names: TopicNames::default(), partitions }
    }

    /// The input topics, in crmflow's tie-break order.
    pub fn inputs(&self) -> Vec<String> {
        self.names.inputs().iter().map(|(_, t)| t.to_string()).collect()
    }

    /// The output topics, dead letters included.
    pub fn outputs(&self) -> Vec<String> {
        self.names.outputs().iter().map(|t| t.to_string()).collect()
    }

    /// Creates every topic on `broker`.
    pub fn create(&self, broker: &Broker) -> Result<(), Error> {
        broker.create_topics(&[self.inputs(), self.outputs()].concat(), self.partitions)
    }

    /// Creates the input topics only (crmflow creates its outputs).
    pub fn create_inputs(&self, broker: &Broker) -> Result<(), Error> {
        broker.create_topics(&self.inputs(), self.partitions)
    }

    /// Creates the output topics only (the inputs are another run's).
    pub fn create_outputs(&self, broker: &Broker) -> Result<(), Error> {
        broker.create_topics(&self.outputs(), self.partitions)
    }

    /// The `CRMFLOW_TOPICS__…` variables that point crmflow at these topics.
    pub fn env(&self) -> Vec<(String, String)> {
        keyed(&self.names).into_iter().map(|(key, name)| (format!("CRMFLOW_TOPICS__{key}"), name.to_owned())).collect()
    }

    /// crmflow's default name of one of these topics (`None` if it is not one of them):
    /// scenario files and `crmflow simulate` speak of the defaults.
    pub fn default_name(&self, topic: &str) -> Option<String> {
        let defaults = TopicNames::default();
        let found = keyed(&self.names).into_iter().zip(keyed(&defaults)).find(|((_, own), _)| *own == topic);
        found.map(|(_, (_, default))| default.to_owned())
    }
}

/// Every topic name with the key of its `topics.` setting, as environment variables spell it.
fn keyed(names: &TopicNames) -> [(&'static str, &str); 7] {
    [
        ("CRM_CHANGES", &names.crm_changes),
        ("INTEGRATION_SETTINGS", &names.integration_settings),
        ("TEAM_ASSIGNMENTS", &names.team_assignments),
        ("USERS_PROVISIONED", &names.users_provisioned),
        ("ACTIVITIES_ACCEPTED", &names.activities_accepted),
        ("ACTIVITIES_IGNORED", &names.activities_ignored),
        ("DEAD_LETTERS", &names.dead_letters),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_outputs_take_their_own_prefixes() {
        let topics = Topics::new("backlog", "run-1", 3);
        assert_eq!(
            topics.inputs(),
            ["backlog.integration.settings", "backlog.team.assignments", "backlog.crm.changes"]
        );
        assert_eq!(
            topics.outputs(),
            ["run-1.users.provisioned", "run-1.activities.accepted", "run-1.activities.ignored", "run-1.crmflow.dlq"]
        );
        assert_eq!(topics.partitions, 3);
    }

    #[test]
    fn env_names_every_topic_as_crmflow_reads_it() {
        let env = Topics::prefixed("t", 1).env();
        assert_eq!(env.len(), 7);
        assert!(env.contains(&("CRMFLOW_TOPICS__CRM_CHANGES".into(), "t.crm.changes".into())));
        assert!(env.contains(&("CRMFLOW_TOPICS__DEAD_LETTERS".into(), "t.crmflow.dlq".into())));
        assert_eq!(
            Topics::defaults(1).env().iter().find(|(k, _)| k.ends_with("TEAM_ASSIGNMENTS")).unwrap().1,
            "team.assignments"
        );
    }

    #[test]
    fn default_names_map_back() {
        let topics = Topics::prefixed("scenario-delete", 4);
        assert_eq!(topics.default_name("scenario-delete.activities.accepted").as_deref(), Some("activities.accepted"));
        assert_eq!(topics.default_name("scenario-delete.crm.changes").as_deref(), Some("crm.changes"));
        assert_eq!(topics.default_name("elsewhere.crm.changes"), None);
        assert_eq!(Topics::defaults(1).default_name("crmflow.dlq").as_deref(), Some("crmflow.dlq"));
    }
}
