//! The broker: the project's own Apache Kafka (`deploy/kafka/kafka.sh start`), or an existing
//! cluster; client configurations for it, admin requests, and topics created and waited for.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::{wait_for, Error};

/// The repository's root, where `deploy/` and `tests/scenarios/` are.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's broker script: `start DIR` runs a single-node broker, `tool CLASS` one of
/// Kafka's command-line tools (`deploy/kafka/kafka.sh`).
pub fn kafka_script() -> PathBuf {
    repo_root().join("deploy/kafka/kafka.sh")
}

/// How long a broker may take over creating topics unless told otherwise.
const TOPIC_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A Kafka cluster to run crmflow on; a broker this process started is stopped on drop.
pub struct Broker {
    /// Bootstrap address.
    pub address: String,
    /// The broker's JVM, when this process started it with [`Broker::start`] (for its CPU time).
    pub pid: Option<u32>,
    /// How long the broker may take over creating topics before it answers with a timeout.
    topic_creation_timeout: Duration,
    /// The process to stop on drop: `kafka.sh`, or whatever [`Broker::adopt`] was given.
    child: Option<Child>,
}

impl Broker {
    /// Starts a fresh single-node broker in `dir` with the project's script, its log next to it
    /// (`dir` with the extension `log`). The broker also stops when this process is gone
    /// (`KAFKA_PARENT_PID`), so one that is never dropped (a `static`) does not outlive it.
    /// `env_defaults` are set for the script unless this process has them set already.
    pub fn start(dir: &Path, env_defaults: &[(&str, &str)]) -> Result<Broker, Error> {
        fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let log = dir.with_extension("log");
        let script = kafka_script();
        let mut command = Command::new(&script);
        for (name, value) in env_defaults {
            if std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        let mut child = command
            .arg("start")
            .arg(dir)
            .env("KAFKA_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).map_err(Error::io(format!("creating {}", log.display())))?)
            .spawn()
            .map_err(Error::io(format!("starting {}", script.display())))?;
        let mut address = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout).read_line(&mut address).map_err(Error::io("reading the broker's address"))?;
        }
        let address = address.trim().to_owned();
        if address.is_empty() {
            let _ = child.wait();
            return Err(Error::NotStarted { log: fs::read_to_string(&log).unwrap_or_default() });
        }
        // The script writes the JVM's pid before it prints the address.
        let pid = fs::read_to_string(dir.join("broker.pid")).ok().and_then(|p| p.trim().parse().ok());
        Ok(Broker { address, pid, topic_creation_timeout: TOPIC_CREATION_TIMEOUT, child: Some(child) })
    }

    /// An existing cluster, left running on drop.
    pub fn existing(address: &str) -> Broker {
        Broker { address: address.to_owned(), pid: None, topic_creation_timeout: TOPIC_CREATION_TIMEOUT, child: None }
    }

    /// A broker process started some other way (`crmflow dev-broker`, say), stopped on drop.
    pub fn adopt(child: Child, address: String) -> Broker {
        Broker { address, pid: None, topic_creation_timeout: TOPIC_CREATION_TIMEOUT, child: Some(child) }
    }

    /// Gives the broker `timeout` to create topics (30 s unless set) before it answers that it
    /// timed out.
    pub fn with_topic_creation_timeout(mut self, timeout: Duration) -> Broker {
        self.topic_creation_timeout = timeout;
        self
    }

    /// A client configuration for this cluster.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.address);
        config
    }

    /// The configuration of a consumer in `group` that reads committed data only and commits
    /// nothing itself: for reading outputs as a downstream reader would, and for asking the
    /// group's committed offsets.
    pub fn reader_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client();
        config.set("group.id", group).set("enable.auto.commit", "false").set("isolation.level", "read_committed");
        config
    }

    /// A consumer of [`Broker::reader_config`].
    pub fn reader(&self, group: &str) -> Result<BaseConsumer, Error> {
        self.reader_config(group).create().map_err(Error::kafka("creating a read_committed consumer"))
    }

    /// An admin client for this cluster.
    pub fn admin(&self) -> Result<Admin, Error> {
        let client = self.client().create().map_err(Error::kafka("creating an admin client"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("starting the admin client's runtime"))?;
        Ok(Admin { client, runtime })
    }

    /// The partition count of each topic that exists, by name.
    pub fn partition_counts(&self) -> Result<BTreeMap<String, usize>, Error> {
        let client: BaseConsumer = self.client().create().map_err(Error::kafka("creating a metadata client"))?;
        partition_counts(&client, Counted::All)
    }

    /// Creates topics with `partitions` partitions each (one that exists already is left as it
    /// is), and waits up to 30 s until the metadata shows every one of them with its partitions,
    /// each with a leader: a client that asks sooner may be told the topic does not exist, or
    /// that the broker does not lead the partition yet.
    pub fn create_topics(&self, names: &[String], partitions: i32) -> Result<(), Error> {
        let admin = self.admin()?;
        let topics: Vec<NewTopic> =
            names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(self.topic_creation_timeout));
        let results = admin.run(|a| a.create_topics(&topics, &options)).map_err(Error::kafka("creating topics"))?;
        for result in results {
            if let Err((topic, code)) = result {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(Error::TopicNotCreated { topic, code });
                }
            }
        }
        let probe: BaseConsumer = self.client().create().map_err(Error::kafka("creating a metadata client"))?;
        wait_for(
            &format!("topics {names:?} in the metadata"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let led = partition_counts(&probe, Counted::Led)?;
                Ok::<_, Error>(names.iter().all(|n| led.get(n) == Some(&(partitions as usize))).then_some(()))
            },
        )
    }
}

/// Which partitions a count takes in.
#[derive(Clone, Copy)]
enum Counted {
    /// Every partition the metadata lists.
    All,
    /// Only those with a leader, which a client can read and write.
    Led,
}

/// Per topic that exists, how many of its partitions the metadata shows (`counted`).
fn partition_counts(client: &BaseConsumer, counted: Counted) -> Result<BTreeMap<String, usize>, Error> {
    let metadata = client.fetch_metadata(None, Duration::from_secs(10)).map_err(Error::kafka("fetching metadata"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let partitions = t.partitions().iter();
            let count = match counted {
                Counted::All => partitions.count(),
                Counted::Led => partitions.filter(|p| p.error().is_none() && p.leader() >= 0).count(),
            };
            (t.name().to_owned(), count)
        })
        .collect())
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

/// An admin client with a runtime to wait on its requests: the harness blocks.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    /// Makes one request (`|a| a.delete_topics(…)`) and waits for its answer.
    pub fn run<'a, F: Future + 'a>(
        &'a self,
        request: impl FnOnce(&'a AdminClient<DefaultClientContext>) -> F,
    ) -> F::Output {
        self.runtime.block_on(request(&self.client))
    }
}
