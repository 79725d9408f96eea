//! librdkafka's mock cluster as a standalone development broker.
//!
//! It speaks the Kafka protocol on a real TCP port and supports transactions, so tests and
//! `make run` need no Kafka installation. Its admin API cannot create topics, so every topic
//! crmflow uses is created here up front. It keeps data in memory only.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crmflow_codec::TopicNames;

use crate::error::RunError;

/// A running mock cluster with crmflow's topics.
pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl DevBroker {
    /// Starts a one-broker cluster and creates every topic (with the default application's
    /// changelog) with `partitions` partitions, plus extra topics given as `name` or
    /// `name:partitions`.
    pub fn start(partitions: i32, topics: &TopicNames, extra_topics: &[String]) -> Result<Self, RunError> {
        let cluster = MockCluster::new(1).map_err(|e| RunError::kafka("starting the mock cluster", e))?;
        let mut names: Vec<(String, i32)> = topics.inputs().iter().map(|(_, t)| (t.to_string(), partitions)).collect();
        names.extend(topics.outputs().iter().map(|t| (t.to_string(), partitions)));
        // The changelog of the default application_id.
        names.push((crate::Config::default().changelog_topic(), partitions));
        for extra in extra_topics {
            let (name, count) = match extra.rsplit_once(':') {
                Some((name, count)) => {
                    let count = count.parse().map_err(|_| {
                        RunError::Topics(format!("`{extra}`: expected a topic name or name:partitions"))
                    })?;
                    (name.to_owned(), count)
                }
                None => (extra.clone(), partitions),
            };
            names.push((name, count));
        }
        for (topic, partitions) in names {
            cluster
                .create_topic(&topic, partitions, 1)
                .map_err(|e| RunError::kafka(format!("creating topic {topic} on the mock cluster"), e))?;
        }
        Ok(DevBroker { cluster })
    }

    /// The address clients connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
