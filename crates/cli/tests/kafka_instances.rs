//! Exactly-once on the real broker with several instances, zombies and lost state directories:
//! instances of one group killed and restarted in turns, a frozen instance (SIGSTOP) replaced and
//! then woken (SIGCONT), and one instance whose state directory is deleted or rolled back to an
//! old snapshot between SIGKILLs. Live traffic throughout; every output and dead letter is read to
//! the end offsets and compared, record by record, with `crmflow simulate` (a duplicate fails).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crmflow_codec::{Encoding, Envelope};

use support::*;

/// Events generated for the state directory test (malformed records come on top, at 2%).
const EVENTS: usize = 100_000;
/// The instance tests play the first 40% of them (40k events).
const INSTANCE_SHARE: f64 = 0.4;
const PARTITIONS: i32 = 8;

type Generated = (Vec<Vec<u8>>, Vec<Envelope>);

/// The generated records and what simulate makes of them, made once per test binary.
fn generated() -> &'static Generated {
    static GENERATED: OnceLock<Generated> = OnceLock::new();
    GENERATED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("input.jsonl");
        let status = std::process::Command::new(CRMFLOW)
            .args(["generate", "--count", &EVENTS.to_string(), "--companies", "20", "--users", "30"])
            .args(["--bad-ratio", "0.02", "--output"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
        let lines = read_lines(&file);
        let expected = simulate(&lines);
        let dead = expected.iter().filter(|e| e.topic == "crmflow.dlq").count();
        assert!(lines.len() > EVENTS && dead > EVENTS / 100, "{} lines, {dead} dead letters", lines.len());
        (lines, expected)
    })
}

/// The first lines of [`generated`] (about 40k events) and what simulate makes of them.
fn fewer() -> &'static Generated {
    static FEWER: OnceLock<Generated> = OnceLock::new();
    FEWER.get_or_init(|| {
        let (lines, _) = generated();
        let lines = lines[..(lines.len() as f64 * INSTANCE_SHARE) as usize].to_vec();
        let expected = simulate(&lines);
        (lines, expected)
    })
}

/// Produces `lines` over `over` on a thread, as live traffic.
fn publish(
    broker: &Broker,
    topics: &Topics,
    lines: &'static [Vec<u8>],
    over: Duration,
) -> (JoinHandle<()>, Arc<AtomicUsize>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let (address, topics, counter) = (broker.address.clone(), topics.clone(), sent.clone());
    let handle = std::thread::spawn(move || produce_paced(&address, &topics, lines, Encoding::Json, over, &counter));
    (handle, sent)
}

/// The last lines of a log, for failure messages.
fn tail(logs: &str, lines: usize) -> String {
    let all: Vec<&str> = logs.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads every output and compares it with simulate's, duplicates failing; panics with the
/// difference and the log tail.
fn check_outputs(broker: &Broker, topics: &Topics, expected: &[Envelope], what: &str, logs: &str) -> usize {
    let actual = read_outputs(broker, topics);
    if let Err(diff) = compare(expected, &actual, Duplicates::Fail) {
        panic!("{what}: crmflow run differs from crmflow simulate: {diff}\n--- log tail ---\n{}", tail(logs, 80));
    }
    actual.len()
}

/// One member of the group: its own instance id and state directory, restarted at will.
struct Instance {
    id: String,
    dir: PathBuf,
    processor: Option<Processor>,
}

impl Instance {
    fn start(broker: &Broker, topics: &Topics, group: &str, id: &str, root: &Path) -> Instance {
        let mut instance = Instance { id: id.to_owned(), dir: root.join(format!("instance-{id}")), processor: None };
        instance.restart(broker, topics, group);
        instance
    }

    fn restart(&mut self, broker: &Broker, topics: &Topics, group: &str) {
        assert!(self.processor.is_none());
        let env = [("CRMFLOW_INSTANCE_ID", self.id.as_str())];
        self.processor = Some(Processor::start(broker, topics, &self.dir, group, Guarantee::ExactlyOnce, &env));
    }

    fn kill(&mut self) {
        self.processor.take().expect("running").kill();
    }

    /// Every log of every run of this instance so far.
    fn logs(&self) -> String {
        let mut logs = String::new();
        for n in 0.. {
            let Ok(log) = std::fs::read_to_string(self.dir.with_extension(format!("{n}.log"))) else { break };
            logs += &format!("=== instance {} run {n} ===\n{log}", self.id);
        }
        logs
    }
}

/// Two instances, then three, of one group (each its own instance id and state directory),
/// killed with SIGKILL one at a time in turns and restarted a few seconds later, 9 kills in all,
/// while live traffic arrives: every rebalance moves partitions between live members, to
/// members with no or stale state for them, and the killed one's open transaction is left to be
/// aborted by its successor. No output is missing, changed or published twice.
#[test]
fn instances_killed_in_turns() {
    let broker = kafka();
    let name = "instances-in-turns";
    let topics = Topics::create(broker, name, PARTITIONS);
    let (lines, expected) = fewer();
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut instances: Vec<Instance> =
        ["1", "2"].iter().map(|id| Instance::start(broker, &topics, name, id, root.path())).collect();
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(45));
    let mut victims = Vec::new();
    for kill in 0..9usize {
        if kill == 3 {
            instances.push(Instance::start(broker, &topics, name, "3", root.path()));
        }
        std::thread::sleep(Duration::from_millis(2_500 + 500 * (kill as u64 % 3)));
        let victim = kill % instances.len();
        instances[victim].kill();
        victims.push(instances[victim].id.clone());
        std::thread::sleep(Duration::from_secs(2));
        instances[victim].restart(broker, &topics, name);
    }
    publisher.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), lines.len());
    let mut members: Vec<&mut Processor> = instances.iter_mut().map(|i| i.processor.as_mut().unwrap()).collect();
    wait_until_processed_by(broker, &topics, name, &mut members, Duration::from_secs(300));
    let statuses: Vec<_> = members.iter_mut().map(|p| p.stop()).collect();
    let logs: String = instances.iter().map(Instance::logs).collect();
    let outputs = check_outputs(broker, &topics, expected, name, &logs);
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}\n{}", tail(&logs, 80));
    for instance in &instances {
        assert!(instance.logs().contains("opened state store"), "instance {} never owned a partition", instance.id);
    }
    eprintln!(
        "{name}: {} records, {outputs} outputs as simulate; killed {victims:?}; {:?} in all",
        lines.len(),
        started.elapsed()
    );
}

/// Waits until `processor` has opened the state store of every partition (it owns them all).
fn wait_until_owning_all(processor: &mut Processor, since: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let logs = processor.logs();
        let recent = &logs[since.min(logs.len())..];
        if (0..PARTITIONS).all(|p| recent.contains(&format!("opened state store partition={p} "))) {
            return;
        }
        if let Some(status) = processor.exited() {
            panic!("exited with {status} before owning every partition:\n{logs}");
        }
        assert!(Instant::now() < deadline, "not every partition assigned within {timeout:?}:\n{logs}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What became of the zombie once woken.
#[derive(Debug)]
enum Woken {
    /// It stopped by itself, with this status.
    Exited(std::process::ExitStatus),
    /// It was still running (rejoined the group) when the input was processed.
    Running,
}

/// Instance A processes live traffic, then freezes (SIGSTOP) with its transaction open; its
/// session lapses (6 s), B takes every partition and processes for a while; then A wakes
/// (SIGCONT) with its old assignment, a half-done transaction and records in its buffers.
/// Returns what A did, its log and B's.
fn zombie(name: &str, replacement_id: &str) -> (Woken, String, String) {
    let broker = kafka();
    let topics = Topics::create(broker, name, PARTITIONS);
    let (lines, expected) = fewer();
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let env_a = [("CRMFLOW_INSTANCE_ID", "a")];
    let mut a = Processor::start(broker, &topics, &root.path().join("a"), name, Guarantee::ExactlyOnce, &env_a);
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(45));
    std::thread::sleep(Duration::from_secs(8));
    assert!(a.exited().is_none(), "{}", a.logs());
    a.pause();
    let paused = Instant::now();
    let env_b = [("CRMFLOW_INSTANCE_ID", replacement_id)];
    let mut b = Processor::start(broker, &topics, &root.path().join("b"), name, Guarantee::ExactlyOnce, &env_b);
    wait_until_owning_all(&mut b, 0, Duration::from_secs(90));
    let took_over = paused.elapsed();
    // B publishes for a while, past A's transaction time-out (10 s) too.
    std::thread::sleep(Duration::from_secs(8));
    let a_log_len = a.logs().len();
    a.resume();
    let woke = Instant::now();
    // A meets the group's and the transaction coordinator's news; traffic still arrives.
    let exited = a.wait_exit(Duration::from_secs(20));
    publisher.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), lines.len());
    let woken = match exited.or_else(|| a.exited()) {
        Some(status) => {
            wait_until_processed_by(broker, &topics, name, &mut [&mut b], Duration::from_secs(300));
            Woken::Exited(status)
        }
        None => {
            wait_until_processed_by(broker, &topics, name, &mut [&mut a, &mut b], Duration::from_secs(300));
            assert!(a.stop().success(), "{}", a.logs());
            Woken::Running
        }
    };
    assert!(b.stop().success(), "{}", b.logs());
    let (a_logs, b_logs) = (a.logs(), b.logs());
    let logs = format!("=== A ===\n{a_logs}\n=== B ===\n{b_logs}");
    let outputs = check_outputs(broker, &topics, expected, name, &logs);
    eprintln!(
        "{name}: {} records, {outputs} outputs as simulate; B owned every partition {took_over:?} after A froze; \
         A woken: {woken:?} ({:?} after SIGCONT); A after waking:\n{}\n{:?} in all",
        lines.len(),
        woke.elapsed(),
        tail(&a_logs[a_log_len.min(a_logs.len())..], 30),
        started.elapsed()
    );
    (woken, a_logs, b_logs)
}

/// A zombie with its own instance id: B ("b") does not fence A's producer, so only the group
/// (KIP-447: the transaction's offsets carry A's stale generation) and A's transaction time-out
/// stand between A's buffered work and the outputs. Observed: A's frozen transaction outlives
/// its 10 s time-out, so the coordinator aborts it and bumps A's producer epoch; woken, A's next
/// transactional call fails, A stops with an error (exit status 1) and B keeps every partition.
/// Whatever A does, it must not publish or commit anything: the outputs are exactly simulate's.
#[test]
fn a_zombie_instance_publishes_nothing() {
    let (woken, a_logs, _) = zombie("zombie-other-id", "b");
    match woken {
        Woken::Exited(status) => {
            assert!(!status.success(), "a zombie that could not commit stopped with success:\n{a_logs}")
        }
        Woken::Running => {}
    }
}

/// A zombie replaced by an instance with the same instance id (a restart on the same host): B's
/// `init_transactions` fences A's producer and aborts A's open transaction at once. Woken, A
/// finds its transactional id taken: it stops (exit status 1) saying that another instance uses
/// it, and publishes nothing: the outputs are exactly simulate's.
#[test]
fn a_zombie_with_the_replacements_instance_id_is_fenced() {
    let (woken, a_logs, _) = zombie("zombie-same-id", "a");
    let Woken::Exited(status) = woken else { panic!("the fenced zombie kept running:\n{a_logs}") };
    assert!(!status.success(), "{a_logs}");
    assert!(a_logs.contains("fenced"), "{a_logs}");
}

/// What happens to the state directory before a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    /// Nothing: restart on the directory as the kill left it.
    Keep,
    /// The directory is deleted (a new disk, a rescheduled pod without its volume).
    Delete,
    /// The directory is replaced by an older snapshot (a restored backup, a stale volume).
    Restore,
}

/// One instance under live traffic (100k events), killed 12 times; before some restarts its
/// state directory is deleted, before others it is rolled back to a snapshot taken earlier
/// (right after a kill, or while the instance was frozen with SIGSTOP mid-run), so every store
/// is behind the group's offsets by a little or by everything. The stores are rebuilt from the
/// inputs without publishing again: the outputs are exactly simulate's.
#[test]
fn lost_and_stale_state_directories() {
    let broker = kafka();
    let name = "state-dirs";
    let topics = Topics::create(broker, name, PARTITIONS);
    let (lines, expected) = generated();
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    let snapshots = root.path().join("snapshots");
    let started = Instant::now();
    let env = [("CRMFLOW_INSTANCE_ID", "1")];
    let start = || Processor::start(broker, &topics, &state_dir, name, Guarantee::ExactlyOnce, &env);
    let mut processor = start();
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(60));
    let plan = [
        Before::Keep,
        Before::Delete,
        Before::Keep,
        Before::Restore,
        Before::Keep,
        Before::Delete,
        Before::Restore,
        Before::Keep,
        Before::Restore,
        Before::Delete,
        Before::Keep,
        Before::Restore,
    ];
    let mut taken: Vec<PathBuf> = Vec::new();
    let mut restored = Vec::new();
    for (kill, before) in plan.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(2_500 + 700 * (kill as u64 % 4)));
        if kill % 3 == 1 && state_dir.exists() {
            // A snapshot of a live instance: frozen, its files are what a crash would leave.
            processor.pause();
            let snapshot = snapshots.join(format!("{kill}-frozen"));
            copy_dir(&state_dir, &snapshot);
            taken.push(snapshot);
            processor.resume();
            std::thread::sleep(Duration::from_millis(1_500));
        }
        processor.kill();
        match before {
            Before::Keep => {
                if state_dir.exists() {
                    let snapshot = snapshots.join(format!("{kill}-killed"));
                    copy_dir(&state_dir, &snapshot);
                    taken.push(snapshot);
                }
            }
            Before::Delete => std::fs::remove_dir_all(&state_dir).unwrap_or(()),
            Before::Restore => {
                // The oldest snapshot not used yet: as stale as it gets.
                let snapshot = taken.iter().find(|s| !restored.contains(*s)).or(taken.last()).unwrap().clone();
                if state_dir.exists() {
                    std::fs::remove_dir_all(&state_dir).unwrap();
                }
                copy_dir(&snapshot, &state_dir);
                restored.push(snapshot);
            }
        }
        processor = start();
    }
    publisher.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), lines.len());
    let drain = Instant::now();
    wait_until_processed(broker, &topics, name, &mut processor, Duration::from_secs(300));
    let status = processor.stop();
    let mut logs = String::new();
    for n in 0.. {
        let Ok(log) = std::fs::read_to_string(state_dir.with_extension(format!("{n}.log"))) else { break };
        logs += &format!("=== run {n} ===\n{log}");
    }
    let outputs = check_outputs(broker, &topics, expected, name, &logs);
    assert!(status.success(), "exited with {status}\n{}", tail(&logs, 40));
    let rebuilds = logs.matches("replaying to rebuild state without publishing").count();
    assert!(rebuilds >= 8, "{rebuilds} partitions rebuilt:\n{}", tail(&logs, 80));
    eprintln!(
        "{name}: {} records, {outputs} outputs as simulate; {} kills, restored {:?}; {rebuilds} partition \
         replays; drained {:?} after the last kill; {:?} in all",
        lines.len(),
        plan.len(),
        restored.iter().map(|s| s.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        drain.elapsed(),
        started.elapsed()
    );
}
