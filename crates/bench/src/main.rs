//! End-to-end benchmarks of crmflow on the real Apache Kafka broker.
//!
//! `crates/demo/benches/pipeline.rs` measures the pure core (decode → decide → encode) on one
//! thread. What an operator sizes a deployment by is the whole path: broker, consumer, merge,
//! RocksDB batches, transactions, producer. This binary measures that path and, so that the
//! figures say something on any machine, measures next to it a plain rdkafka consume → produce
//! pass-through with the same guarantee, topics, partitions and commit interval, in the same
//! run: crmflow is reported as a ratio of it.
//!
//! - **Throughput**: a backlog of demo events (`crmflow generate`'s stream) is produced first;
//!   each system then starts in its own consumer group, and the clock runs until the group's
//!   committed offsets reach the inputs' end offsets.
//! - **Latency**: fresh topics per system, input produced at a steady rate, each record stamped
//!   with its produce time; crmflow stamps outputs with their input's timestamp (and the
//!   pass-through copies it), so an output's age when a read_committed consumer gets it is the
//!   end-to-end latency. The first seconds (start-up, setup events) are left out.
//! - **Failover**: two instances share the partitions; one is SIGKILLed; the time until the
//!   survivor processes records produced after the kill on each of the dead one's partitions.
//! - **Restore**: a changelog partition of 1M state entries restored into an empty store, next to
//!   a plain consumer reading the same partition to its end.
//!
//! Nothing here asserts a figure: targets are printed next to the measurements.
#![deny(missing_docs)]

mod core;
mod cpu;
mod failover;
mod load;
mod measure;
mod passthrough;
mod peer;
mod processor;
mod report;
mod restore;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crmflow_runtime::ProcessingGuarantee;
use crmflow_testkit::{Broker, Topics};

use crate::load::{demo_config, now_ms, produce, Pace};
use crate::measure::{latency, wait_processed, Reader};
use crate::passthrough::PassThrough;
use crate::peer::Peer;
use crate::processor::{Instance, Settings};
use crate::report::{FailoverRow, LatencyRow, Report, ThroughputRow};

/// The allocator the `crmflow` binary runs with, so the restore measured in this process (and
/// the pass-through beside it) runs as crmflow's would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// JVM flags of the benchmark's broker unless set in the environment: the defaults of Kafka's
/// own scripts (kafka-server-start.sh, kafka-run-class.sh), not kafka.sh's quick-start test
/// flags, whose serial GC pauses and JIT without its optimizing tier would be measured as
/// crmflow's latency.
const BROKER_JVM: [(&str, &str); 2] = [
    ("KAFKA_HEAP_OPTS", "-Xmx1G -Xms1G"),
    (
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
         -XX:+ExplicitGCInvokesConcurrent",
    ),
];

/// A short name of a guarantee for topic and group names.
fn short(guarantee: ProcessingGuarantee) -> &'static str {
    match guarantee {
        ProcessingGuarantee::ExactlyOnce => "eos",
        ProcessingGuarantee::AtLeastOnce => "alo",
    }
}

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Throughput,
    Latency,
    Failover,
    Restore,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "crmflow-bench", about = "End-to-end benchmarks of crmflow on Apache Kafka")]
struct Cli {
    /// Existing Kafka cluster; without it (or empty) a local broker is started with
    /// deploy/kafka/kafka.sh.
    #[arg(long, env = "BROKERS")]
    brokers: Option<String>,
    /// Events in the throughput backlog.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events per second of the latency runs.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Seconds of paced input per latency run (after the warm-up).
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Seconds at the start of each latency run that are not measured (the pass-through takes
    /// up to about 9 s to settle after its start).
    #[arg(long, default_value_t = 10)]
    latency_warmup_seconds: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Measure only this guarantee (default: both).
    #[arg(long, value_enum)]
    guarantee: Option<ProcessingGuarantee>,
    /// Commit interval of crmflow and of the pass-through, in ms (crmflow's default: 100).
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    /// crmflow's max_wait_ms in every run (crmflow's default: 500).
    #[arg(long, default_value_t = 500)]
    max_wait_ms: u64,
    /// Further crmflow settings for every run, as `key=value` (repeatable), e.g.
    /// `--set explain_capacity=0` to measure without decision traces.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Further max_wait_ms values to measure crmflow's latency with (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0])]
    extra_latency_max_wait_ms: Vec<u64>,
    /// session.timeout.ms of crmflow's consumer in the failover runs (Kafka's default: 45000).
    #[arg(long, default_value_t = 6_000)]
    session_timeout_ms: u64,
    /// Events per second of live load during the failover runs.
    #[arg(long, default_value_t = 1_000.0)]
    failover_rate: f64,
    /// Seconds both instances run before the kill.
    #[arg(long, default_value_t = 10)]
    failover_warmup_seconds: u64,
    /// Companies of the demo stream (the record key).
    #[arg(long, default_value_t = 64)]
    companies: usize,
    /// CRM users per company.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Seed of the demo stream.
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// State entries in the restore run's changelog.
    #[arg(long, default_value_t = 1_000_000)]
    restore_entries: u64,
    /// Seconds of paced load through an exactly_once pass-through before anything is measured
    /// (not reported): a fresh broker's JIT is still compiling its hot paths, and the first
    /// system measured would pay for it.
    #[arg(long, default_value_t = 20)]
    broker_warmup_seconds: u64,
    /// Parts to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Throughput, Part::Latency, Part::Failover, Part::Restore])]
    only: Vec<Part>,
    /// The crmflow binary (default: `crmflow` next to this one).
    #[arg(long)]
    crmflow: Option<PathBuf>,
    /// Where broker data, state directories and logs go (default: `tmp/crmflow-bench` in the
    /// target directory); wiped at start.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also write every latency sample of each latency run as CSV files into this directory.
    #[arg(long)]
    latency_samples: Option<PathBuf>,
    /// Also write the markdown report to this file (`make bench`: docs/benchmarks.md).
    #[arg(long)]
    output: Option<PathBuf>,
    /// The Kafka Streams peer's sources (default: `../shared/peers/kstreams` beside the
    /// repository); measured next to crmflow in the throughput runs when Maven can build it.
    #[arg(long, env = "KSTREAMS_PEER")]
    kstreams_peer: Option<PathBuf>,
    /// Leave the Kafka Streams peer out.
    #[arg(long)]
    no_kstreams_peer: bool,
    /// criterion's results of the pure core's benchmarks, shown on the page (default:
    /// `criterion` in the target directory).
    #[arg(long)]
    criterion: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let exe = std::env::current_exe().context("locating this binary")?;
    let exe_dir = exe.parent().context("this binary's directory")?;
    let binary = cli.crmflow.clone().unwrap_or_else(|| exe_dir.join("crmflow"));
    if !binary.exists() {
        bail!("no crmflow binary at {} (build it with `cargo build --release -p crmflow`)", binary.display());
    }
    let work = cli.work_dir.clone().unwrap_or_else(|| exe_dir.join("../tmp/crmflow-bench"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = work.canonicalize()?;
    let repo = crmflow_testkit::repo_root();

    let broker = match cli.brokers.as_deref().filter(|b| !b.trim().is_empty()) {
        Some(address) => Broker::existing(address),
        None => {
            eprintln!("starting Apache Kafka (deploy/kafka/kafka.sh start)…");
            Broker::start(&work.join("kafka"), &BROKER_JVM).context("starting the broker")?
        }
    };
    eprintln!("broker at {}; work directory {}", broker.address, work.display());
    let guarantees = match cli.guarantee {
        Some(only) => vec![only],
        None => vec![ProcessingGuarantee::ExactlyOnce, ProcessingGuarantee::AtLeastOnce],
    };
    let run_id = format!("bench{}", now_ms() / 1000);
    let demo = demo_config(cli.companies, cli.users, cli.seed);
    let mut extra = Vec::new();
    for setting in &cli.settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--set {setting}: expected key=value, e.g. explain_capacity=0");
        };
        extra.push((format!("CRMFLOW_{}", key.trim().to_uppercase().replace('.', "__")), value.trim().to_owned()));
    }
    let settings = |guarantee: ProcessingGuarantee, max_wait_ms: u64| Settings {
        binary: binary.clone(),
        guarantee,
        commit_interval_ms: cli.commit_interval_ms,
        max_wait_ms: Some(max_wait_ms),
        session_timeout_ms: cli.session_timeout_ms,
        extra: extra.clone(),
    };
    let commit_interval = Duration::from_millis(cli.commit_interval_ms);

    let criterion = cli.criterion.clone().unwrap_or_else(|| exe_dir.join("../criterion"));
    let mut report = Report {
        command: std::iter::once("crmflow-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        context: context(&cli, &repo, &broker),
        core: core::read(&criterion)?,
        ..Report::default()
    };

    if cli.broker_warmup_seconds > 0 {
        eprintln!(
            "warming the broker up: a pass-through at {} events/s for {} s…",
            cli.rate, cli.broker_warmup_seconds
        );
        let warm_up = Cli { latency_warmup_seconds: 0, latency_seconds: cli.broker_warmup_seconds, ..cli.clone() };
        let name = format!("{run_id}-warmup");
        latency_run(
            &warm_up,
            &broker,
            &name,
            ProcessingGuarantee::ExactlyOnce,
            "pass-through",
            None,
            &settings,
            &work,
        )?;
    }

    if cli.only.contains(&Part::Throughput) {
        let inputs = format!("{run_id}-tp");
        Topics::prefixed(&inputs, cli.partitions).create(&broker).context("creating the backlog's topics")?;
        eprintln!("producing a backlog of {} events…", cli.events);
        let started = Instant::now();
        let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
        let pace = Pace { rate: None, count: Some(cli.events), stop: &stop, sent: &sent };
        let produced = produce(&broker.address, &Topics::prefixed(&inputs, 1).names, demo, &pace)?;
        eprintln!("  {produced} events in {:.1} s", started.elapsed().as_secs_f64());
        let peer = if cli.no_kstreams_peer {
            None
        } else {
            let source = cli.kstreams_peer.clone().unwrap_or_else(|| repo.join("../shared/peers/kstreams"));
            eprintln!("building the Kafka Streams peer from {}…", source.display());
            match Peer::build(&source, &work) {
                Ok(peer) => Some(peer),
                Err(e) => {
                    eprintln!("  not measured: {e:#}");
                    report.notes.push(format!("The Kafka Streams peer was not measured: {e:#}."));
                    None
                }
            }
        };
        let mut systems = vec!["pass-through", "crmflow"];
        systems.extend(peer.as_ref().map(|_| "kafka-streams"));
        for &guarantee in &guarantees {
            for &system in &systems {
                let tag = match system {
                    "crmflow" => "cf",
                    "kafka-streams" => "ks",
                    _ => "pt",
                };
                let name = format!("{inputs}-{tag}-{}", short(guarantee));
                // The peer reads inputs under its own prefix: it gets the same backlog again.
                let own_inputs = system == "kafka-streams";
                let topics = Topics::new(if own_inputs { &name } else { &inputs }, &name, cli.partitions);
                let created = if own_inputs { topics.create(&broker) } else { topics.create_outputs(&broker) };
                created.with_context(|| format!("creating the topics of {name}"))?;
                if own_inputs {
                    let sent = AtomicU64::new(0);
                    let pace = Pace { rate: None, count: Some(cli.events), stop: &stop, sent: &sent };
                    produce(&broker.address, &topics.names, demo, &pace)?;
                }
                eprintln!("throughput: {system} {}…", guarantee.as_str());
                let started = Instant::now();
                let timeout = Duration::from_secs(600);
                let (throughput, cpu) = if let (Some(peer), true) = (&peer, own_inputs) {
                    let cpu_start = cpu::RunStart::now(None, broker.pid);
                    let mut run = peer.start(&broker, &name, guarantee, cli.commit_interval_ms, &work)?;
                    let t = wait_processed(&broker, &topics, &name, started, timeout, || run.check_running())?;
                    let cpu = cpu_start.until_now(run.pid(), broker.pid);
                    run.stop()?;
                    (t, cpu)
                } else if system == "crmflow" {
                    let cpu_start = cpu::RunStart::now(None, broker.pid);
                    let mut instance =
                        Instance::start(&settings(guarantee, cli.max_wait_ms), &broker, &topics, &name, "0", &work)?;
                    let t = wait_processed(&broker, &topics, &name, started, timeout, || instance.check_running())?;
                    let cpu = cpu_start.until_now(instance.pid(), broker.pid);
                    instance.stop()?;
                    (t, cpu)
                } else {
                    let own = std::process::id();
                    let cpu_start = cpu::RunStart::now(Some(own), broker.pid);
                    let pt = PassThrough::start(&broker, &topics, &name, guarantee, commit_interval)?;
                    let t = wait_processed(&broker, &topics, &name, started, timeout, || Ok(()))?;
                    let cpu = cpu_start.until_now(own, broker.pid);
                    pt.stop()?;
                    (t, cpu)
                };
                eprintln!(
                    "  {:.0} events/s ({:.0} after the first commit); CPU {:?} (broker {:?}), machine {:.2} cores busy",
                    throughput.rate(),
                    throughput.steady_rate(),
                    cpu.system,
                    cpu.broker,
                    cpu.machine_cores.unwrap_or_default()
                );
                report.throughput.push(ThroughputRow { system, guarantee, throughput, cpu });
            }
        }
    }

    if cli.only.contains(&Part::Latency) {
        for &guarantee in &guarantees {
            let mut runs: Vec<(&'static str, Option<u64>)> =
                vec![("pass-through", None), ("crmflow", Some(cli.max_wait_ms))];
            runs.extend(cli.extra_latency_max_wait_ms.iter().map(|w| ("crmflow", Some(*w))));
            for (system, max_wait_ms) in runs {
                eprintln!(
                    "latency: {system} {} {}at {} events/s…",
                    guarantee.as_str(),
                    max_wait_ms.map_or_else(String::new, |w| format!("max_wait_ms={w} ")),
                    cli.rate
                );
                let name = format!(
                    "{run_id}-lat-{}-{}{}",
                    if system == "crmflow" { "cf" } else { "pt" },
                    short(guarantee),
                    max_wait_ms.map_or_else(String::new, |w| format!("-w{w}"))
                );
                let row = latency_run(&cli, &broker, &name, guarantee, system, max_wait_ms, &settings, &work)?;
                if let Some(l) = &row.latency {
                    eprintln!("  p50 {} ms, p99 {} ms, max {} ms over {} outputs", l.p50, l.p99, l.max, l.count);
                }
                report.latency.push(row);
            }
        }
    }

    if cli.only.contains(&Part::Failover) {
        for &guarantee in &guarantees {
            eprintln!("failover: {}…", guarantee.as_str());
            let name = format!("{run_id}-fo-{}", short(guarantee));
            let failover = failover::run(
                &broker,
                &settings(guarantee, cli.max_wait_ms),
                &work,
                &name,
                cli.partitions,
                demo,
                cli.failover_rate,
                Duration::from_secs(cli.failover_warmup_seconds),
            )?;
            eprintln!("  {failover:?}");
            report.failover.push(FailoverRow { guarantee, session_timeout_ms: cli.session_timeout_ms, failover });
        }
    }

    if cli.only.contains(&Part::Restore) {
        eprintln!("restore: writing a changelog of {} entries…", cli.restore_entries);
        let rate = restore::run(&broker, &format!("{run_id}-restore-changelog"), cli.restore_entries, &work)?;
        eprintln!("  plain {:.0}/s, restore {:.0}/s", rate.plain_rate(), rate.restore_rate());
        report.restore = Some(rate);
    }

    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &cli.output {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One latency run: fresh topics, the system started and assigned, then paced input; outputs
/// of inputs produced after the warm-up are measured.
#[allow(clippy::too_many_arguments)]
fn latency_run(
    cli: &Cli,
    broker: &Broker,
    name: &str,
    guarantee: ProcessingGuarantee,
    system: &'static str,
    max_wait_ms: Option<u64>,
    settings: &dyn Fn(ProcessingGuarantee, u64) -> Settings,
    work: &Path,
) -> Result<LatencyRow> {
    let topics = Topics::prefixed(name, cli.partitions);
    topics.create(broker).with_context(|| format!("creating the topics of {name}"))?;
    let reader = Reader::start(broker, &topics)?;
    let mut instance = None;
    let mut pass_through = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    match max_wait_ms {
        Some(wait) => {
            let mut started = Instance::start(&settings(guarantee, wait), broker, &topics, name, "0", work)?;
            while started.assigned().len() < cli.partitions as usize {
                started.check_running()?;
                if Instant::now() > deadline {
                    bail!("crmflow was not assigned every partition within 90 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            instance = Some(started);
        }
        None => {
            let started =
                PassThrough::start(broker, &topics, name, guarantee, Duration::from_millis(cli.commit_interval_ms))?;
            while !started.is_ready() {
                if Instant::now() > deadline {
                    bail!("the pass-through was not assigned partitions within 90 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            pass_through = Some(started);
        }
    }
    // Let the first fetches settle before the clock starts.
    std::thread::sleep(Duration::from_secs(1));
    let total = cli.latency_warmup_seconds + cli.latency_seconds;
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let pace = Pace { rate: Some(cli.rate), count: Some((cli.rate * total as f64) as u64), stop: &stop, sent: &sent };
    let start_ms = now_ms();
    let started = Instant::now();
    let produced = produce(&broker.address, &topics.names, demo_config(cli.companies, cli.users, cli.seed), &pace)?;
    let produced_rate = produced as f64 / started.elapsed().as_secs_f64();
    let end_ms = now_ms();
    wait_processed(broker, &topics, name, Instant::now(), Duration::from_secs(300), || match instance.as_mut() {
        Some(i) => i.check_running(),
        None => Ok(()),
    })?;
    let observed = reader.finish(broker, &topics)?;
    if let Some(mut i) = instance {
        i.stop()?;
    }
    if let Some(p) = pass_through {
        p.stop()?;
    }
    if let Some(dir) = &cli.latency_samples {
        write_samples(&dir.join(format!("{name}.csv")), &observed, start_ms)?;
    }
    let from_ms = start_ms + 1000 * cli.latency_warmup_seconds as i64;
    Ok(LatencyRow { system, guarantee, max_wait_ms, produced_rate, latency: latency(&observed, from_ms, end_ms) })
}

/// Every output a latency run read, as CSV: when its input was produced (ms after the load
/// started), its age when read (ms), its partition. Shows when and where a tail came from.
fn write_samples(path: &Path, observed: &[measure::Observed], start_ms: i64) -> Result<()> {
    let mut csv = String::from("produced_ms,age_ms,partition\n");
    for o in observed {
        csv.push_str(&format!("{},{},{}\n", o.timestamp - start_ms, o.read_ms - o.timestamp, o.partition));
    }
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// The machine, date and parameters the figures were measured with.
fn context(cli: &Cli, repo: &Path, broker: &Broker) -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kafka = std::fs::read_to_string(repo.join("deploy/kafka/pom.xml"))
        .ok()
        .and_then(|pom| {
            let start = pom.find("<kafka.version>")? + "<kafka.version>".len();
            let end = pom[start..].find('<')? + start;
            Some(pom[start..end].to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let broker_kind = if cli.brokers.as_deref().is_some_and(|b| !b.trim().is_empty()) {
        format!("the cluster at {}", broker.address)
    } else {
        let jvm = BROKER_JVM.map(|(name, default)| {
            std::env::var(name).unwrap_or_else(|_| default.split_whitespace().collect::<Vec<_>>().join(" "))
        });
        format!(
            "one local Apache Kafka {kafka} broker (deploy/kafka/kafka.sh, KRaft, 1 replica; JVM `{}`)",
            jvm.join(" ")
        )
    };
    let warm_up = match cli.broker_warmup_seconds {
        0 => "no broker warm-up".to_owned(),
        s => format!("broker warmed up with {s} s of paced load first"),
    };
    vec![
        format!("Measured {date} on {cores} cores ({cpu}), broker: {broker_kind}, on the same machine; {warm_up}."),
        format!(
            "{} partitions per topic; commit interval {} ms for every system; crmflow max_wait_ms {}; demo stream \
             of {} companies × {} users × 5 workflows (seed {}), JSON values.",
            cli.partitions, cli.commit_interval_ms, cli.max_wait_ms, cli.companies, cli.users, cli.seed
        ),
    ]
}
