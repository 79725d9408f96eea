//! `crmflow`: simulate workflows on sample data, run the stream processor, replay its history
//! into shadow topics, diff and reset, run a development broker, and generate demo load.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crmflow::diff::DiffRequest;
use crmflow::generate::{self, Pace};
use crmflow::point::Point;
use crmflow::replay::ReplayRequest;
use crmflow::reset::ResetRequest;
use crmflow::simulate::{simulate, simulate_explained};
use crmflow_codec::{Encoding, TopicNames};
use crmflow_demo::DemoConfig;
use crmflow_http::HttpServer;
use crmflow_runtime::report::Counters;
use crmflow_runtime::{Config, Observer, ProcessingGuarantee, Shutdown, Status, Watch};

/// mimalloc instead of the system allocator: decoding, deciding and encoding allocate many small
/// values per record, and glibc's malloc and free took about a fifth of the processing thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "crmflow", version, about = "Turns CRM change events into user provisioning and sales activities")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "CRMFLOW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the decision core over a JSON Lines file of records, without Kafka.
    Simulate {
        /// Input file of `{"topic","key","timestamp","value"}` lines, or `-` for stdin.
        #[arg(long, short)]
        input: String,
        /// Where to write output records (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also say why: one JSON trace line per input line on stderr (before the summary),
        /// naming each workflow considered, each condition with its expected and actual value,
        /// the rule that decided it and the outputs it produced. Output records are unchanged.
        #[arg(long)]
        explain: bool,
        /// Write the --explain trace lines to this file instead of stderr (implies --explain).
        #[arg(long, value_name = "FILE")]
        explain_output: Option<PathBuf>,
    },
    /// Run the stream processor against Kafka.
    Run {
        /// TOML configuration file (see deploy/crmflow.example.toml); CRMFLOW_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `brokers`.
        #[arg(long)]
        brokers: Option<String>,
        /// Overrides `state_dir`.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Overrides `processing_guarantee`.
        #[arg(long, value_enum)]
        processing_guarantee: Option<ProcessingGuarantee>,
        /// Print sample output events with each report.
        #[arg(long)]
        watch: bool,
        /// Seconds between progress reports.
        #[arg(long, default_value_t = 5)]
        report_seconds: u64,
        /// Overrides `http_listen`: where the HTTP server (health, readiness, metrics, queries) listens.
        #[arg(long)]
        http_listen: Option<String>,
    },
    /// Reprocess the inputs from a point, with fresh state, into shadow topics `<topic>.<SUFFIX>`;
    /// stops once caught up with the inputs' end offsets at start. The live application is untouched.
    Replay {
        /// TOML configuration file of the live application; CRMFLOW_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `brokers`.
        #[arg(long)]
        brokers: Option<String>,
        /// `earliest`, or an RFC 3339 time: outputs are published from each input partition's
        /// first record stamped at or after it (state is built from everything before it).
        #[arg(long)]
        from: Point,
        /// The shadow's suffix: outputs go to `<topic>.<SUFFIX>`, the group is `<application_id>.replay.<SUFFIX>`.
        #[arg(long)]
        into: String,
        /// JSON Lines of settings/workflow events (simulate's input lines) applied first; the
        /// history's settings events of the integrations they name are skipped.
        #[arg(long)]
        settings: Option<PathBuf>,
        /// Seconds between progress reports.
        #[arg(long, default_value_t = 5)]
        report_seconds: u64,
    },
    /// Compare a replay's shadow outputs with the live ones by their deterministic ids.
    Diff {
        /// TOML configuration file of the live application; CRMFLOW_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `brokers`.
        #[arg(long)]
        brokers: Option<String>,
        /// The shadow's suffix (`crmflow replay --into`).
        #[arg(long)]
        shadow: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Samples shown of each of added, removed and revised.
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Compare only outputs stamped at or after this RFC 3339 time (for a replay `--from` it).
        #[arg(long)]
        from: Option<Point>,
    },
    /// Start the application over: move its group's input offsets, delete its changelog and state
    /// directory. Refuses while the group has live members.
    Reset {
        /// TOML configuration file; CRMFLOW_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `brokers`.
        #[arg(long)]
        brokers: Option<String>,
        /// To the earliest offsets (the default).
        #[arg(long, conflicts_with = "to_datetime")]
        to_earliest: bool,
        /// To each input partition's first offset stamped at or after this RFC 3339 time.
        #[arg(long)]
        to_datetime: Option<Point>,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the output and dead-letter topics.
        #[arg(long)]
        delete_outputs: bool,
        /// Reset the shadow of `crmflow replay --into SUFFIX` instead of the application.
        #[arg(long)]
        shadow: Option<String>,
    },
    /// Create crmflow's topics that are missing (inputs, outputs, dead letters), co-partitioned.
    CreateTopics {
        /// TOML configuration file (for topic names and client settings); CRMFLOW_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `brokers`.
        #[arg(long)]
        brokers: Option<String>,
        /// Partitions of every topic: the most instances that can share the work.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Run librdkafka's mock cluster as a local broker with crmflow's topics, until Ctrl-C.
    DevBroker {
        /// Partitions per topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Also write the bootstrap address to this file.
        #[arg(long)]
        address_file: Option<PathBuf>,
        /// Further topics to create, as NAME or NAME:PARTITIONS.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Publish a realistic demo stream (companies, workflows, users, teams, CRM changes).
    Generate {
        /// Kafka bootstrap servers; without it, write JSON Lines (see --output).
        #[arg(long)]
        brokers: Option<String>,
        /// JSON Lines output file when no brokers are given (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Events per second published to Kafka.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Stop after this many events (default: unbounded for Kafka, 1000 for files).
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
        /// Companies in the stream.
        #[arg(long, default_value_t = 3)]
        companies: usize,
        /// CRM users per integration.
        #[arg(long, default_value_t = 20)]
        users: usize,
        /// Seed: the same seed gives the same stream.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Encoding of the published values.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        encoding: Format,
        /// Mix in malformed records (undecodable, unknown type, schema violation, wrong key)
        /// at about this rate, e.g. 0.02 for 2%; they go to the dead-letter topic.
        #[arg(long, default_value_t = 0.0)]
        bad_ratio: f64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Avro,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Simulate { input, output, explain, explain_output } => {
            let explain = match explain_output {
                Some(path) => Some(Explanations::File(path)),
                None if explain => Some(Explanations::Stderr),
                None => None,
            };
            run_simulate(&input, output, explain)
        }
        Command::Run { config, brokers, state_dir, processing_guarantee, watch, report_seconds, http_listen } => {
            let mut config = load_config(config.as_deref(), brokers)?;
            if let Some(dir) = state_dir {
                config.state_dir = dir;
            }
            if let Some(address) = http_listen {
                config.http_listen = address;
            }
            if let Some(guarantee) = processing_guarantee {
                config.processing_guarantee = guarantee;
            }
            config.validate().context("invalid configuration")?;
            let status = Status::new();
            // Started first, so probes get an answer (not ready) while the processor starts.
            let _http = match config.http_listen.as_str() {
                "" => None,
                address => Some(HttpServer::start(address, status.clone()).context("cannot start the HTTP server")?),
            };
            let watch = Watch {
                report_every: Duration::from_secs(report_seconds.max(1)),
                samples: if watch { 6 } else { 0 },
                status,
            };
            let mut observer = LogObserver;
            with_shutdown(|shutdown| {
                crmflow_runtime::run(config, shutdown, &watch, &mut observer).context("crmflow run stopped")
            })
            // Also as a log line, so a log pipeline (`--log-format json`) sees why it stopped.
            .inspect_err(|e| tracing::error!("{e:#}"))?;
            Ok(())
        }
        Command::Replay { config, brokers, from, into, settings, report_seconds } => {
            let config = load_config(config.as_deref(), brokers)?;
            let request = ReplayRequest { suffix: into, from, settings };
            let watch =
                Watch { report_every: Duration::from_secs(report_seconds.max(1)), samples: 0, status: Status::new() };
            let mut observer = LogObserver;
            let report = with_shutdown(|shutdown| {
                crmflow::replay::replay(&config, &request, shutdown, &watch, &mut observer).context("replay failed")
            })?;
            print!("{report}");
            anyhow::ensure!(report.caught_up, "the replay stopped before catching up");
            Ok(())
        }
        Command::Diff { config, brokers, shadow, json, samples, from } => {
            let config = load_config(config.as_deref(), brokers)?;
            let since = match from {
                None | Some(Point::Earliest) => None,
                Some(Point::Time(ms)) => Some(ms),
            };
            let diff = crmflow::diff::diff(&config, &DiffRequest { shadow, samples, since }).context("diff failed")?;
            if json {
                println!("{}", diff.to_json());
            } else {
                print!("{diff}");
            }
            Ok(())
        }
        Command::Reset { config, brokers, to_earliest: _, to_datetime, dry_run, delete_outputs, shadow } => {
            let config = load_config(config.as_deref(), brokers)?;
            let request = ResetRequest { to: to_datetime.unwrap_or(Point::Earliest), dry_run, delete_outputs, shadow };
            let plan = crmflow::reset::reset(&config, &request).context("reset refused")?;
            print!("{plan}");
            Ok(())
        }
        Command::CreateTopics { config, brokers, partitions } => {
            anyhow::ensure!(partitions > 0, "--partitions must be at least 1");
            let config = load_config(config.as_deref(), brokers)?;
            let created = crmflow_runtime::setup::create_topics(&config, partitions).context("cannot create topics")?;
            eprintln!("created {} topics: {}", created.len(), created.join(", "));
            Ok(())
        }
        Command::DevBroker { partitions, address_file, topics } => {
            let broker = crmflow_runtime::dev_broker::DevBroker::start(partitions, &TopicNames::default(), &topics)
                .context("cannot start the development broker")?;
            let address = broker.bootstrap_servers();
            println!("{address}");
            io::stdout().flush().ok();
            if let Some(path) = address_file {
                std::fs::write(&path, &address).with_context(|| format!("cannot write {}", path.display()))?;
            }
            tracing::info!(%address, partitions, "development broker is up (in memory); Ctrl-C stops it");
            with_shutdown(|shutdown| {
                while !shutdown.is_requested() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            })?;
            drop(broker);
            Ok(())
        }
        Command::Generate { brokers, output, rate, count, duration, companies, users, seed, encoding, bad_ratio } => {
            anyhow::ensure!((0.0..=1.0).contains(&bad_ratio), "--bad-ratio {bad_ratio} is not between 0 and 1");
            let demo = DemoConfig { seed, companies, users_per_integration: users, ..DemoConfig::default() };
            let topics = TopicNames::default();
            match brokers {
                None => {
                    let count = count.unwrap_or(1000);
                    let written = match output {
                        Some(path) => generate::write_lines(
                            demo,
                            count,
                            bad_ratio,
                            &topics,
                            BufWriter::new(
                                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
                            ),
                        )?,
                        None => {
                            generate::write_lines(demo, count, bad_ratio, &topics, BufWriter::new(io::stdout().lock()))?
                        }
                    };
                    eprintln!("generated {} events and {} malformed records", written.events, written.bad);
                }
                Some(brokers) => {
                    let pace = Pace { rate, count, duration: duration.map(Duration::from_secs), bad_ratio };
                    let encoding = match encoding {
                        Format::Json => Encoding::Json,
                        Format::Avro => Encoding::Avro,
                    };
                    let sent = with_shutdown(|shutdown| {
                        generate::publish(demo, &pace, &brokers, &topics, encoding, shutdown)
                    })?;
                    tracing::info!(sent, "generator finished");
                }
            }
            Ok(())
        }
    }
}

/// Loads and validates the configuration, with `--brokers` applied.
fn load_config(file: Option<&std::path::Path>, brokers: Option<String>) -> Result<Config> {
    let mut config = Config::load(file, std::env::vars()).context("invalid configuration")?;
    if let Some(brokers) = brokers {
        config.brokers = brokers;
    }
    config.validate().context("invalid configuration")?;
    Ok(config)
}

/// Runs blocking work while a tokio runtime turns SIGINT/SIGTERM into a shutdown request.
fn with_shutdown<T>(work: impl FnOnce(&Shutdown) -> Result<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    let shutdown = Shutdown::new();
    {
        let _guard = runtime.enter();
        shutdown.on_signals();
    }
    work(&shutdown)
}

struct LogObserver;

impl Observer for LogObserver {
    fn report(&mut self, counters: &Counters, samples: Vec<String>) {
        tracing::info!("{}", counters.summary());
        for line in samples {
            tracing::info!("  {line}");
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRMFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Where `simulate --explain` writes its trace lines.
enum Explanations {
    Stderr,
    File(PathBuf),
}

fn run_simulate(input: &str, output: Option<PathBuf>, explain: Option<Explanations>) -> Result<()> {
    let reader: Box<dyn io::BufRead> = if input == "-" {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(input).with_context(|| format!("cannot open input file {input}"))?;
        Box::new(BufReader::new(file))
    };
    let writer: Box<dyn Write> = match &output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create output file {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let topics = TopicNames::default();
    let summary = match explain {
        None => simulate(reader, writer, &topics),
        Some(Explanations::Stderr) => simulate_explained(reader, writer, BufWriter::new(io::stderr().lock()), &topics),
        Some(Explanations::File(path)) => {
            let file =
                File::create(&path).with_context(|| format!("cannot create explain output file {}", path.display()))?;
            simulate_explained(reader, writer, BufWriter::new(file), &topics)
        }
    }
    .context("simulation failed")?;
    eprint!("{}", summary.report());
    Ok(())
}
