//! `crmflow run` (the release binary) as a child process, configured through `CRMFLOW_…`
//! variables as the Kafka tests do, with its JSON log in a file.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crmflow_runtime::ProcessingGuarantee;
use crmflow_testkit::{crmflow_command, Broker, Topics};

/// How one crmflow instance is configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `crmflow` binary.
    pub binary: PathBuf,
    /// `processing_guarantee`.
    pub guarantee: ProcessingGuarantee,
    /// `commit_interval_ms`.
    pub commit_interval_ms: u64,
    /// `max_wait_ms`, if not crmflow's default.
    pub max_wait_ms: Option<u64>,
    /// The consumer's `session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// Further `CRMFLOW_…` settings (`--set`).
    pub extra: Vec<(String, String)>,
}

/// A running `crmflow run`, killed on drop.
pub struct Instance {
    child: Child,
    /// Its stderr (JSON log lines).
    pub log: PathBuf,
}

impl Instance {
    /// Starts an instance of application `group` with its own `instance_id` and state directory
    /// under `work`.
    pub fn start(
        settings: &Settings,
        broker: &Broker,
        topics: &Topics,
        group: &str,
        instance_id: &str,
        work: &Path,
    ) -> Result<Instance> {
        let state = work.join(format!("{group}.{instance_id}.state"));
        let log = work.join(format!("{group}.{instance_id}.log"));
        let mut command = crmflow_command(&settings.binary);
        command
            .args(["--log-format", "json", "run", "--report-seconds", "5"])
            .env("CRMFLOW_BROKERS", &broker.address)
            .env("CRMFLOW_STATE_DIR", &state)
            .env("CRMFLOW_APPLICATION_ID", group)
            .env("CRMFLOW_INSTANCE_ID", instance_id)
            .env("CRMFLOW_PROCESSING_GUARANTEE", settings.guarantee.as_str())
            .env("CRMFLOW_COMMIT_INTERVAL_MS", settings.commit_interval_ms.to_string())
            .env("CRMFLOW_STARTUP_TIMEOUT_MS", "30000")
            .env("CRMFLOW_KAFKA_CONSUMER__SESSION_TIMEOUT_MS", settings.session_timeout_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        if let Some(ms) = settings.max_wait_ms {
            command.env("CRMFLOW_MAX_WAIT_MS", ms.to_string());
        }
        for (k, v) in topics.env().into_iter().chain(settings.extra.iter().cloned()) {
            command.env(k, v);
        }
        let child = command.spawn().with_context(|| format!("starting {}", settings.binary.display()))?;
        Ok(Instance { child, log })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("crmflow run exited with {status}; its log ({}):\n{}", self.log.display(), self.log_tail());
        }
        Ok(())
    }

    /// SIGKILL: no chance to commit or leave the group.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to a minute for the graceful exit.
    pub fn stop(&mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().context("sending SIGTERM")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("crmflow run exited with {status}:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("crmflow run did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The partitions whose state stores it has open now, from its log (`opened state store`
    /// since the last `partitions revoked`).
    pub fn assigned(&self) -> BTreeSet<i32> {
        let mut assigned = BTreeSet::new();
        for line in fs::read_to_string(&self.log).unwrap_or_default().lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let fields = &entry["fields"];
            let message = fields["message"].as_str().unwrap_or_default();
            if message.starts_with("partitions revoked") {
                assigned.clear();
            } else if message == "opened state store" {
                if let Some(p) = fields["partition"].as_i64() {
                    assigned.insert(p as i32);
                }
            }
        }
        assigned
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}
