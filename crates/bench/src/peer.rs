//! The Kafka Streams peer: crmflow's rules as a Kafka Streams application
//! (`../shared/peers/kstreams` beside the repository, or `--kstreams-peer`), built with Maven
//! into the work directory and run as a child process, so every throughput run shows crmflow
//! next to the engine most teams would pick instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crmflow_runtime::ProcessingGuarantee;
use crmflow_testkit::Broker;

/// The peer, built.
pub struct Peer {
    /// The built copy (the source may be read-only): `run.sh`, `target/`.
    dir: PathBuf,
}

impl Peer {
    /// Copies the peer's sources from `source` into `work` and builds them there with its
    /// `build.sh`; the error says why it could not, for the page to note.
    pub fn build(source: &Path, work: &Path) -> Result<Peer> {
        if !source.join("build.sh").exists() {
            bail!("no Kafka Streams peer at {} (give --kstreams-peer DIR)", source.display());
        }
        let dir = work.join("kstreams-peer");
        let _ = fs::remove_dir_all(&dir);
        let copied =
            Command::new("cp").arg("-R").arg(source).arg(&dir).status().context("copying the Kafka Streams peer")?;
        if !copied.success() {
            bail!("copying {} to {} failed", source.display(), dir.display());
        }
        // The copy keeps the source's read-only modes; Maven writes `target/` beside the sources.
        Command::new("chmod").args(["-R", "u+w"]).arg(&dir).status().context("making the copy writable")?;
        let log = work.join("kstreams-peer-build.log");
        let built = Command::new(dir.join("build.sh"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .stderr(Stdio::inherit())
            .status()
            .context("running the Kafka Streams peer's build.sh (Maven)")?;
        if !built.success() || !dir.join("target/peer-kstreams.jar").exists() {
            bail!("Maven could not build the Kafka Streams peer ({built}; see {})", log.display());
        }
        Ok(Peer { dir })
    }

    /// Starts the peer as application `app` on the topics `<app>.<default name>` (inputs and
    /// outputs), with its state under `work`.
    pub fn start(
        &self,
        broker: &Broker,
        app: &str,
        guarantee: ProcessingGuarantee,
        commit_interval_ms: u64,
        work: &Path,
    ) -> Result<PeerRun> {
        let log = work.join(format!("{app}.log"));
        let child = Command::new(self.dir.join("run.sh"))
            .env("BOOTSTRAP", &broker.address)
            .env("PREFIX", format!("{app}."))
            .env("APP", app)
            .env("GUARANTEE", guarantee.as_str())
            .env("COMMIT_MS", commit_interval_ms.to_string())
            .env("CF_STATE", work.join(format!("{app}.state")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .context("starting the Kafka Streams peer")?;
        Ok(PeerRun { child, log })
    }
}

/// A running peer (`run.sh` execs the JVM, so its pid is the JVM's), killed on drop.
pub struct PeerRun {
    child: Child,
    log: PathBuf,
}

impl PeerRun {
    /// The JVM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with its log if the peer has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            bail!("the Kafka Streams peer exited with {status}; its log ({}):\n{log}", self.log.display());
        }
        Ok(())
    }

    /// SIGTERM (Kafka Streams closes cleanly), then waits up to a minute.
    pub fn stop(mut self) -> Result<()> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().context("sending SIGTERM")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the Kafka Streams peer did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for PeerRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
