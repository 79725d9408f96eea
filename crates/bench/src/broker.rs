//! The broker the benchmarks run on: the project's own Apache Kafka (`deploy/kafka/kafka.sh
//! start`), or an existing cluster given as `BROKERS`; topics, watermarks and committed offsets.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crmflow_codec::TopicNames;

/// A Kafka cluster to benchmark on; a broker this process started is stopped on drop.
pub struct Broker {
    /// Bootstrap address.
    pub address: String,
    /// The broker's JVM, when this process started it (for its CPU time).
    pub pid: Option<u32>,
    child: Option<Child>,
}

/// JVM flags of the benchmark's broker unless set in the environment: the defaults of Kafka's
/// own scripts.
pub const BROKER_JVM: [(&str, &str); 2] = [
    ("KAFKA_HEAP_OPTS", "-Xmx1G -Xms1G"),
    (
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
         -XX:+ExplicitGCInvokesConcurrent",
    ),
];

impl Broker {
    /// Uses an existing cluster.
    pub fn existing(address: &str) -> Broker {
        Broker { address: address.to_owned(), pid: None, child: None }
    }

    /// Starts a fresh single-node broker in `dir` with the project's script; it also stops when
    /// this process is gone (`KAFKA_PARENT_PID`).
    pub fn start(repo: &Path, dir: &Path) -> Result<Broker> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.with_extension("log");
        let script = repo.join("deploy/kafka/kafka.sh");
        let mut command = Command::new(&script);
        // The broker as Kafka's own start script runs it (kafka-server-start.sh,
        // kafka-run-class.sh), not kafka.sh's quick-start test flags: serial GC pauses and a
        // JIT without its optimizing tier would be measured as crmflow's latency.
        for (name, value) in BROKER_JVM {
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
            .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdout = child.stdout.take().context("the broker script's stdout")?;
        let mut address = String::new();
        BufReader::new(stdout).read_line(&mut address).context("reading the broker's address")?;
        let address = address.trim().to_owned();
        if address.is_empty() {
            let _ = child.wait();
            bail!("deploy/kafka/kafka.sh did not start the broker:\n{}", fs::read_to_string(&log).unwrap_or_default());
        }
        // The script writes the JVM's pid before it prints the address.
        let pid = fs::read_to_string(dir.join("broker.pid")).ok().and_then(|p| p.trim().parse().ok());
        Ok(Broker { address, pid, child: Some(child) })
    }

    /// A client configuration for this cluster.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.address);
        config
    }

    /// A consumer that only asks questions (watermarks, a group's committed offsets); it reads
    /// committed data only, so committed offsets are the stable ones.
    pub fn inspector(&self, group: &str) -> Result<BaseConsumer> {
        self.client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .context("creating an inspecting consumer")
    }

    /// Creates topics with `partitions` partitions each and waits until their metadata shows.
    pub fn create_topics(&self, names: &[String], partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client().create().context("creating an admin client")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let topics: Vec<NewTopic> =
            names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = runtime.block_on(admin.create_topics(&topics, &options)).context("creating topics")?;
        for result in results {
            if let Err((topic, code)) = result {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    bail!("creating topic {topic}: {code}");
                }
            }
        }
        let probe = self.inspector("crmflow-bench-metadata")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metadata = probe.fetch_metadata(None, Duration::from_secs(10)).context("fetching metadata")?;
            let ready = names.iter().all(|name| {
                metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && t.partitions().len() == partitions as usize)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("topics {names:?} did not show in the metadata within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

/// One run's topics: crmflow's names behind a prefix, all with the same partition count.
#[derive(Debug, Clone)]
pub struct RunTopics {
    /// The names, in crmflow's configuration form.
    pub names: TopicNames,
    /// Partitions of every topic.
    pub partitions: i32,
}

impl RunTopics {
    /// The names of `inputs`' input topics and of outputs under `output_prefix`.
    pub fn new(inputs: &str, output_prefix: &str, partitions: i32) -> RunTopics {
        let d = TopicNames::default();
        let input = |name: &str| format!("{inputs}.{name}");
        let output = |name: &str| format!("{output_prefix}.{name}");
        RunTopics {
            names: TopicNames {
                crm_changes: input(&d.crm_changes),
                integration_settings: input(&d.integration_settings),
                team_assignments: input(&d.team_assignments),
                users_provisioned: output(&d.users_provisioned),
                activities_accepted: output(&d.activities_accepted),
                activities_ignored: output(&d.activities_ignored),
                dead_letters: output(&d.dead_letters),
            },
            partitions,
        }
    }

    /// The input topics.
    pub fn inputs(&self) -> Vec<String> {
        self.names.inputs().iter().map(|(_, t)| t.to_string()).collect()
    }

    /// The output topics, dead letters included.
    pub fn outputs(&self) -> Vec<String> {
        self.names.outputs().iter().map(|t| t.to_string()).collect()
    }

    /// Creates the input topics (`inputs` true) and the output topics.
    pub fn create(&self, broker: &Broker, inputs: bool) -> Result<()> {
        let mut names = self.outputs();
        if inputs {
            names.extend(self.inputs());
        }
        broker.create_topics(&names, self.partitions)
    }

    /// The `CRMFLOW_TOPICS__…` overrides that point crmflow at these topics.
    pub fn env(&self) -> Vec<(String, String)> {
        let n = &self.names;
        [
            ("CRM_CHANGES", &n.crm_changes),
            ("INTEGRATION_SETTINGS", &n.integration_settings),
            ("TEAM_ASSIGNMENTS", &n.team_assignments),
            ("USERS_PROVISIONED", &n.users_provisioned),
            ("ACTIVITIES_ACCEPTED", &n.activities_accepted),
            ("ACTIVITIES_IGNORED", &n.activities_ignored),
            ("DEAD_LETTERS", &n.dead_letters),
        ]
        .into_iter()
        .map(|(k, v)| (format!("CRMFLOW_TOPICS__{k}"), v.clone()))
        .collect()
    }
}

/// The high watermark (end offset) of every partition of `topics`, records of undecided
/// transactions included. A read_committed client would be told the last stable offset, which
/// can stand before a just-committed round's records for a moment (the broker writes the
/// transaction's markers after the commit returns): a reader stopping there would miss them.
pub fn end_offsets(broker: &Broker, topics: &[String], partitions: i32) -> Result<BTreeMap<(String, i32), i64>> {
    let client: BaseConsumer =
        broker.client().set("isolation.level", "read_uncommitted").create().context("creating a watermark client")?;
    let mut ends = BTreeMap::new();
    for topic in topics {
        for p in 0..partitions {
            let (_, high) = client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .with_context(|| format!("reading the end offset of {topic} [{p}]"))?;
            ends.insert((topic.clone(), p), high);
        }
    }
    Ok(ends)
}

/// The group's committed offsets of the given partitions (0 where it has none yet), or `None`
/// while the coordinator cannot answer (it moves, loads, or a transaction holds them).
pub fn committed(consumer: &BaseConsumer, partitions: &[(String, i32)]) -> Option<BTreeMap<(String, i32), i64>> {
    let mut wanted = TopicPartitionList::new();
    for (topic, partition) in partitions {
        wanted.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(wanted, Duration::from_secs(5)).ok()?;
    Some(
        committed
            .elements()
            .iter()
            .map(|e| {
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                ((e.topic().to_owned(), e.partition()), at)
            })
            .collect(),
    )
}
