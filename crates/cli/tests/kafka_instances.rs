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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use support::*;

/// Events generated for the state directory test (malformed records come on top, at 2%).
const EVENTS: usize = 100_000;
/// The instance tests play the first 30% of them (30k events).
const INSTANCE_SHARE: f64 = 0.3;
const PARTITIONS: i32 = 8;

type Generated = (Vec<Vec<u8>>, Vec<Envelope>);

/// The generated records and what simulate makes of them, made once per test binary.
fn generated() -> &'static Generated {
    static GENERATED: OnceLock<Generated> = OnceLock::new();
    GENERATED.get_or_init(|| {
        let (lines, expected) = generate(EVENTS);
        let dead = expected.iter().filter(|e| e.topic == "crmflow.dlq").count();
        assert!(lines.len() > EVENTS && dead > EVENTS / 100, "{} lines, {dead} dead letters", lines.len());
        (lines, expected)
    })
}

/// The first lines of [`generated`] (about 30k events) and what simulate makes of them.
fn fewer() -> &'static Generated {
    static FEWER: OnceLock<Generated> = OnceLock::new();
    FEWER.get_or_init(|| {
        let (lines, _) = generated();
        let lines = lines[..(lines.len() as f64 * INSTANCE_SHARE) as usize].to_vec();
        let expected = simulate(&lines);
        (lines, expected)
    })
}

/// The test's directory (state directories, logs, snapshots); kept after the test when
/// `TEST_KEEP_DIRS` is set, for reading the logs of every run.
fn work_dir(name: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir().unwrap();
    if std::env::var_os("TEST_KEEP_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("{name}: keeping {}", dir.path().display());
    }
    dir
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

/// One line per run log: stores opened, restored and replayed, and its last progress report.
fn digest(logs: &str) -> String {
    let mut lines = Vec::new();
    for run in logs.split("=== ").filter(|r| !r.is_empty()) {
        let (title, log) = run.split_once(" ===\n").unwrap_or(("?", run));
        let last = log.lines().rev().find(|l| l.contains(" records") && l.contains("provisioned"));
        let last = last.map_or("no report", |l| l.split_once("INFO").map_or(l, |(_, r)| r).trim());
        lines.push(format!(
            "  {title}: opened {} stores, {} restores, {} replays, {} dead letters; last report: {}{}",
            log.matches("opened state store").count(),
            log.matches("restoring the store in full").count() + log.matches("restoring the tail").count(),
            log.matches("replaying to rebuild state").count(),
            log.matches("dead letter: ").count(),
            last,
            if log.contains("ERROR") { " (logged an ERROR)" } else { "" }
        ));
    }
    lines.join("\n")
}

/// Waits until `processor` owns partitions: it opened state stores since its last revocation.
fn wait_until_owning(processor: &mut Processor, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let logs = processor.logs();
        let opened = logs.rfind("opened state store");
        if opened.is_some() && opened > logs.rfind("partitions revoked") {
            return;
        }
        if let Some(status) = processor.exited() {
            panic!("exited with {status} before owning a partition:\n{logs}");
        }
        assert!(Instant::now() < deadline, "no partition assigned within {timeout:?}:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
        self.processor =
            Some(Processor::start(broker, topics, &self.dir, group, ProcessingGuarantee::ExactlyOnce, &env));
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
/// killed with SIGKILL one at a time in turns, each once it owns partitions, and restarted two
/// seconds later (once 22 s later), 7 kills in all, while live traffic arrives: every rebalance
/// moves partitions between live members, to members with no or stale state for them, and the
/// killed one's open transaction is left to its successor or the coordinator to abort. No output
/// is missing, changed or published twice, and no member gives up.
#[test]
fn instances_killed_in_turns() {
    let broker = kafka();
    let name = "instances-in-turns";
    let topics = own_topics(broker, name, PARTITIONS);
    let (lines, expected) = fewer();
    let root = work_dir(name);
    let started = Instant::now();
    let mut instances: Vec<Instance> =
        ["1", "2"].iter().map(|id| Instance::start(broker, &topics, name, id, root.path())).collect();
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(50));
    let mut victims = Vec::new();
    for kill in 0..7usize {
        if kill == 3 {
            instances.push(Instance::start(broker, &topics, name, "3", root.path()));
        }
        // Each kill interrupts a member at work: once it owns partitions (the group settled).
        let victim = kill % instances.len();
        wait_until_owning(instances[victim].processor.as_mut().unwrap(), Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(1_000 + 500 * (kill as u64 % 4)));
        instances[victim].kill();
        victims.push(instances[victim].id.clone());
        // Mostly a quick restart, whose `init_transactions` aborts the killed run's transaction;
        // once a long absence, so the survivors wait until the coordinator aborts it (10 s
        // time-out, then up to 10 s until its next check) before they read the group's offsets.
        std::thread::sleep(Duration::from_secs(if kill == 4 { 22 } else { 2 }));
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
        "{name}: {} records, {outputs} outputs as simulate; killed {victims:?}; {:?} in all\n{}",
        lines.len(),
        started.elapsed(),
        digest(&logs)
    );
}

/// The partitions `processor` owns now: those it opened since it last let go of its partitions.
fn owned_partitions(processor: &Processor) -> Vec<i32> {
    let logs = processor.logs();
    let since = logs.rfind("partitions revoked").unwrap_or(0);
    logs[since..]
        .split("opened state store partition=")
        .skip(1)
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// Leaves what a member that dies in the middle of its commit leaves: a transaction (of its own
/// transactional id) holding the group's offsets of `partitions` of every input, sent but
/// never committed, open until the coordinator aborts it `timeout` later. The offsets are those
/// the group has now. Returns the producer, to keep (no abort at drop).
fn leave_pending_offsets(
    broker: &Broker,
    topics: &Topics,
    group: &str,
    partitions: &[i32],
    timeout: Duration,
) -> BaseProducer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for (_, topic) in topics.names.inputs() {
        for partition in partitions {
            wanted.add_partition(topic, *partition);
        }
    }
    let committed = consumer.committed_offsets(wanted, Duration::from_secs(30)).unwrap();
    let mut offsets = TopicPartitionList::new();
    for element in committed.elements() {
        if let Offset::Offset(offset) = element.offset() {
            offsets.add_partition_offset(element.topic(), element.partition(), Offset::Offset(offset)).unwrap();
        }
    }
    assert!(offsets.count() > 0, "no offsets committed yet for {partitions:?}");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("transactional.id", format!("{group}.dead"))
        .set("transaction.timeout.ms", timeout.as_millis().to_string())
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    let metadata = consumer.group_metadata().unwrap();
    producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30)).unwrap();
    producer
}

/// Two instances; one dies between sending its offsets to its transaction and committing it (a
/// window of milliseconds that a SIGKILL rarely hits, so the test kills it, then leaves such a
/// transaction with its partitions' offsets the way it would have), and its
/// `transaction.timeout.ms` was 40 s (valid: crmflow only asks for five commit intervals;
/// librdkafka's own default is 60 s). Until the coordinator aborts that transaction (40 s, plus
/// up to 10 s until its next check), the group's offsets of those partitions are unstable, and
/// the survivor, assigned them, reads them as stable only. It must wait and carry on, not give
/// up: it keeps running and the outputs are exactly simulate's.
///
/// Failed before the survivor waited that long: it gave up after 30 s and stopped with "reading
/// the group's committed offsets of partition N: Meta data fetch error: OperationTimedOut".
#[test]
fn a_survivor_waits_out_a_dead_members_pending_offsets() {
    let broker = kafka();
    let name = "pending-offsets";
    let topics = own_topics(broker, name, PARTITIONS);
    let (lines, expected) = fewer();
    let root = work_dir(name);
    let started = Instant::now();
    let start = |id: &str| {
        let env = [("CRMFLOW_INSTANCE_ID", id)];
        Processor::start(broker, &topics, &root.path().join(id), name, ProcessingGuarantee::ExactlyOnce, &env)
    };
    let mut survivor = start("1");
    let mut dying = start("2");
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(30));
    wait_until_owning(&mut survivor, Duration::from_secs(60));
    wait_until_owning(&mut dying, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let partitions = owned_partitions(&dying);
    dying.kill();
    // Before its session (6 s) lapses and the survivor is assigned its partitions.
    let _dead = leave_pending_offsets(broker, &topics, name, &partitions, Duration::from_secs(40));
    let killed = Instant::now();
    publisher.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), lines.len());
    wait_until_processed_by(broker, &topics, name, &mut [&mut survivor], Duration::from_secs(300));
    let took = killed.elapsed();
    let status = survivor.stop();
    let logs = format!("=== survivor ===\n{}\n=== dying ===\n{}", survivor.logs(), dying.logs());
    let outputs = check_outputs(broker, &topics, expected, name, &logs);
    assert!(status.success(), "{status}\n{}", digest(&logs));
    eprintln!(
        "{name}: {} records, {outputs} outputs as simulate; the dead member owned {partitions:?}; processed {took:?} \
         after its death; {:?} in all\n{}",
        lines.len(),
        started.elapsed(),
        digest(&logs)
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
    /// It stopped by itself, with this status, this long after SIGCONT.
    Exited(std::process::ExitStatus, Duration),
    /// It was still running (rejoined the group) when the input was processed.
    Running,
}

/// When the frozen instance wakes.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// Once its replacement owns every partition and has processed for 6 s: past A's session
    /// and past its transaction's time-out (10 s).
    AfterTakeover,
    /// 8 s after it froze: its session (6 s) has lapsed, its transaction (10 s) has not; the
    /// replacement waits for that transaction to end before it reads the group's offsets.
    WithItsTransactionOpen,
}

/// A log without the backtrace of its final error (the tests inherit `RUST_BACKTRACE`).
fn without_backtraces(log: &str) -> String {
    log.split("Stack backtrace:").next().unwrap_or_default().to_owned()
}

/// Instance A processes live traffic, then freezes (SIGSTOP) with its transaction open; its
/// session lapses (6 s) and B, started meanwhile, takes every partition; then A wakes (SIGCONT)
/// with its old assignment, its transaction and records in its buffers, while traffic goes on.
/// Returns what A did and A's log.
fn zombie(name: &str, replacement_id: &str, wake: Wake) -> (Woken, String) {
    let broker = kafka();
    let topics = own_topics(broker, name, PARTITIONS);
    let (lines, expected) = fewer();
    let root = work_dir(name);
    let started = Instant::now();
    let env_a = [("CRMFLOW_INSTANCE_ID", "a")];
    let mut a =
        Processor::start(broker, &topics, &root.path().join("a"), name, ProcessingGuarantee::ExactlyOnce, &env_a);
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(30));
    wait_until_owning_all(&mut a, 0, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(4));
    assert!(a.exited().is_none(), "{}", a.logs());
    a.pause();
    let paused = Instant::now();
    let env_b = [("CRMFLOW_INSTANCE_ID", replacement_id)];
    let mut b =
        Processor::start(broker, &topics, &root.path().join("b"), name, ProcessingGuarantee::ExactlyOnce, &env_b);
    match wake {
        Wake::AfterTakeover => {
            wait_until_owning_all(&mut b, 0, Duration::from_secs(90));
            std::thread::sleep(Duration::from_secs(6));
        }
        Wake::WithItsTransactionOpen => std::thread::sleep(Duration::from_secs(8).saturating_sub(paused.elapsed())),
    }
    let frozen_for = paused.elapsed();
    let a_log_len = a.logs().len();
    a.resume();
    let woke = Instant::now();
    let exited = a.wait_exit(Duration::from_secs(20)).map(|status| Woken::Exited(status, woke.elapsed()));
    publisher.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), lines.len());
    let woken = match exited.or_else(|| a.exited().map(|status| Woken::Exited(status, woke.elapsed()))) {
        Some(exited) => {
            wait_until_processed_by(broker, &topics, name, &mut [&mut b], Duration::from_secs(300));
            exited
        }
        None => {
            wait_until_processed_by(broker, &topics, name, &mut [&mut a, &mut b], Duration::from_secs(300));
            assert!(a.stop().success(), "{}", a.logs());
            Woken::Running
        }
    };
    assert!(b.stop().success(), "{}", b.logs());
    let (a_logs, b_logs) = (without_backtraces(&a.logs()), b.logs());
    let logs = format!("=== A ===\n{a_logs}\n=== B ===\n{b_logs}");
    let outputs = check_outputs(broker, &topics, expected, name, &logs);
    eprintln!(
        "{name}: {} records, {outputs} outputs as simulate; A frozen for {frozen_for:?}; woken: {woken:?}; \
         {:?} in all\n{}\n--- A after waking ---\n{}",
        lines.len(),
        started.elapsed(),
        digest(&logs),
        tail(&without_backtraces(&a.logs()[a_log_len..]), 20),
    );
    (woken, a_logs)
}

/// A zombie with its own instance id, woken long after B took over: B ("b") does not fence A's
/// producer; what keeps A's buffered work out is the group (KIP-447: the offsets of A's
/// transaction carry its stale member id and generation) and, if A froze inside a transaction,
/// that transaction's time-out (10 s; the coordinator aborts it). Observed: woken, A processes
/// what it had buffered into a transaction, the group coordinator refuses its offsets
/// (`UNKNOWN_MEMBER_ID`), A aborts and stops with an error (exit status 1) within a second or
/// two instead of rejoining; B keeps every partition. Whatever A does, it must not publish or
/// commit anything: the outputs are exactly simulate's.
#[test]
fn a_zombie_instance_publishes_nothing() {
    let (woken, a_logs) = zombie("zombie-other-id", "b", Wake::AfterTakeover);
    if let Woken::Exited(status, after) = woken {
        assert!(
            !status.success(),
            "a zombie that could not commit stopped with success {after:?} after waking:\n{a_logs}"
        );
    }
}

/// A zombie with its own instance id woken while its transaction is still open: its session
/// lapsed and the group moved on without it, but its producer is not fenced and its transaction
/// has not timed out. B's assignment waits for that transaction to end (it reads the group's
/// offsets as stable only). Only the member id and generation that A's transaction offsets carry
/// (KIP-447) keep A's work out. Observed: as above, the group coordinator refuses A's offsets
/// (`UNKNOWN_MEMBER_ID`), A aborts and stops (exit status 1), and B then reads the offsets A
/// committed before it froze. The outputs are exactly simulate's.
#[test]
fn a_zombie_woken_with_its_transaction_open_publishes_nothing() {
    let (woken, a_logs) = zombie("zombie-open-transaction", "b", Wake::WithItsTransactionOpen);
    if let Woken::Exited(status, after) = woken {
        assert!(
            !status.success(),
            "a zombie that could not commit stopped with success {after:?} after waking:\n{a_logs}"
        );
    }
}

/// A zombie replaced by an instance with the same instance id (a restart on the same host, on
/// another state directory): B's `init_transactions` fences A's producer and aborts A's open
/// transaction at once. Observed: woken, A stops within a second (exit status 1) and publishes
/// nothing. Its last words are librdkafka's "fenced by a newer instance" and either crmflow's
/// "fenced: another crmflow instance uses the transactional id" or, when the outputs it queued
/// before freezing time out first (past the 10 s transaction time-out), a plain transaction
/// error. The outputs are exactly simulate's.
#[test]
fn a_zombie_with_the_replacements_instance_id_is_fenced() {
    let (woken, a_logs) = zombie("zombie-same-id", "a", Wake::AfterTakeover);
    let Woken::Exited(status, after) = woken else { panic!("the fenced zombie kept running:\n{a_logs}") };
    assert!(!status.success(), "stopped with success {after:?} after waking:\n{a_logs}");
    assert!(a_logs.contains("fenced"), "{a_logs}");
}

/// A zombie replaced on the same host: the same instance id and the same state directory,
/// whose RocksDB stores the frozen A still holds open (and locked). B fences A's producer, joins,
/// takes every partition and cannot open their stores (`LOCK: Resource temporarily unavailable`):
/// B stops with an error (exit status 1). Woken, A finds its producer fenced, closes its
/// partitions, starts transactions again and goes on (nobody else holds the id any more): it
/// processes everything, and the outputs are exactly simulate's.
#[test]
fn a_zombie_holding_the_state_directory_stops_its_replacement_then_goes_on() {
    let broker = kafka();
    let name = "zombie-same-dir";
    let topics = own_topics(broker, name, PARTITIONS);
    let (lines, expected) = fewer();
    let root = work_dir(name);
    let dir = root.path().join("state");
    let started = Instant::now();
    let env = [("CRMFLOW_INSTANCE_ID", "a")];
    let start = || Processor::start(broker, &topics, &dir, name, ProcessingGuarantee::ExactlyOnce, &env);
    let mut a = start();
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(30));
    wait_until_owning_all(&mut a, 0, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(5));
    a.pause();
    let mut b = start();
    // B either takes over (owns every partition) or gives up.
    let deadline = Instant::now() + Duration::from_secs(90);
    let b_exited = loop {
        if let Some(status) = b.exited() {
            break Some(status);
        }
        let logs = b.logs();
        if (0..PARTITIONS).all(|p| logs.contains(&format!("opened state store partition={p} "))) {
            break None;
        }
        assert!(Instant::now() < deadline, "B neither took over nor stopped:\n{logs}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let b_logs = without_backtraces(&b.logs());
    assert!(b_exited.is_some_and(|s| !s.success()), "B took over the stores A holds open:\n{b_logs}");
    std::thread::sleep(Duration::from_secs(3));
    a.resume();
    publisher.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), lines.len());
    wait_until_processed(broker, &topics, name, &mut a, Duration::from_secs(300));
    assert!(a.stop().success(), "{}", a.logs());
    let a_logs = without_backtraces(&a.logs());
    assert!(a_logs.contains("closing the partitions and starting again"), "A was not fenced:\n{a_logs}");
    let logs = format!("=== A ===\n{a_logs}\n=== B ===\n{b_logs}");
    let outputs = check_outputs(broker, &topics, expected, name, &logs);
    eprintln!(
        "{name}: {} records, {outputs} outputs as simulate; B: {b_exited:?}; {:?} in all\n{}\n--- B ---\n{}\n--- A ---\n{}",
        lines.len(),
        started.elapsed(),
        digest(&logs),
        tail(&b_logs, 12),
        tail(&a_logs, 8),
    );
}

/// What happens to the state directory before a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    /// Nothing: restart on the directory as the kill left it (a snapshot of it is taken).
    Keep,
    /// The directory is deleted (a new disk, a rescheduled pod without its volume).
    Delete,
    /// The directory is replaced by the snapshot of this name, taken earlier (a restored
    /// backup, a stale volume): `<kill>-killed` right after that kill, `<kill>-frozen` while the
    /// instance was frozen with SIGSTOP shortly before it.
    Restore(&'static str),
}

/// One instance under live traffic (100k events over 70 s), killed 10 times, each once it owns
/// its partitions; before two restarts its state directory is deleted, before three others it is
/// rolled back to a snapshot taken earlier (right after a kill, or while the instance was frozen
/// with SIGSTOP mid-run), so the stores are behind the group's offsets by a little or by
/// everything. They are restored from the changelog (in full, or only its tail), never from the
/// inputs: the outputs are exactly simulate's.
#[test]
fn a_lost_or_stale_state_directory_is_restored_from_the_changelog() {
    let broker = kafka();
    let name = "state-dirs";
    let topics = own_topics(broker, name, PARTITIONS);
    let (lines, expected) = generated();
    let root = work_dir(name);
    let state_dir = root.path().join("state");
    let snapshots = root.path().join("snapshots");
    let started = Instant::now();
    let env = [("CRMFLOW_INSTANCE_ID", "1")];
    let start = || Processor::start(broker, &topics, &state_dir, name, ProcessingGuarantee::ExactlyOnce, &env);
    let mut processor = start();
    let (publisher, sent) = publish(broker, &topics, lines, Duration::from_secs(70));
    let plan = [
        Before::Keep,
        Before::Delete,
        Before::Keep,
        Before::Restore("0-killed"),
        Before::Delete,
        Before::Keep,
        Before::Restore("4-frozen"),
        Before::Keep,
        Before::Restore("7-killed"),
        Before::Keep,
    ];
    for (kill, before) in plan.iter().enumerate() {
        // Each kill interrupts the instance at work: once it owns its partitions.
        wait_until_owning_all(&mut processor, 0, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2_000 + 700 * (kill as u64 % 4)));
        if kill % 3 == 1 {
            // A snapshot of a live instance: frozen, its files are what a crash would leave.
            processor.pause();
            copy_dir(&state_dir, &snapshots.join(format!("{kill}-frozen")));
            processor.resume();
            std::thread::sleep(Duration::from_millis(1_500));
        }
        processor.kill();
        match before {
            Before::Keep => copy_dir(&state_dir, &snapshots.join(format!("{kill}-killed"))),
            Before::Delete => std::fs::remove_dir_all(&state_dir).unwrap(),
            Before::Restore(snapshot) => {
                std::fs::remove_dir_all(&state_dir).unwrap();
                copy_dir(&snapshots.join(snapshot), &state_dir);
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
    // Stores restore from their changelog after each deletion (in full) and each roll-back to
    // a snapshot (the tail), and none replays its inputs. (A partition whose changelog has not
    // moved since the snapshot, or is still empty, is current and restores nothing.)
    let restores = logs.matches("restoring the store in full").count() + logs.matches("restoring the tail").count();
    let wanted = plan.iter().filter(|b| **b != Before::Keep).count();
    assert!(restores >= wanted, "{restores} partition restores, {wanted} wanted:\n{}", digest(&logs));
    assert!(!logs.contains("replaying to rebuild state"), "the changelog covers everything:\n{}", digest(&logs));
    eprintln!(
        "{name}: {} records, {outputs} outputs as simulate; {} kills, before the restarts {plan:?}; {restores} \
         partition restores; drained {:?} after the last kill; {:?} in all\n{}",
        lines.len(),
        plan.len(),
        drain.elapsed(),
        started.elapsed(),
        digest(&logs)
    );
}

/// Waits until the processor has sent `expected` outputs, committed or not (under a long
/// commit interval, before its first commit: into its open transaction, which holds no
/// transaction marker yet), as a read_uncommitted reader counts them.
fn wait_until_outputs_sent(broker: &Broker, topics: &Topics, processor: &mut Processor, expected: usize) {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", "crmflow-test-uncommitted")
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    wait_for(&format!("{expected} outputs sent into the open transaction"), Duration::from_secs(120), || {
        assert!(processor.exited().is_none(), "{}", processor.logs());
        let sent: i64 = topics
            .names
            .outputs()
            .iter()
            .flat_map(|topic| (0..topics.partitions).map(move |p| (topic, p)))
            .filter_map(|(topic, p)| reader.fetch_watermarks(topic, p, Duration::from_secs(10)).ok())
            .map(|(_, high)| high)
            .sum();
        (sent >= expected as i64).then_some(())
    });
}

/// Joins `group` as a plain member until it is assigned partitions, then leaves: every member
/// goes through a revocation and a new assignment, twice.
fn visit_group(broker: &Broker, topics: &Topics, group: &str) {
    let visitor: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let inputs: Vec<&str> = topics.names.inputs().iter().map(|(_, t)| *t).collect();
    visitor.subscribe(&inputs).unwrap();
    wait_for("the visitor's assignment", Duration::from_secs(120), || {
        let _ = visitor.poll(Duration::from_millis(100));
        visitor.assignment().ok().filter(|a| a.count() > 0)
    });
    visitor.unsubscribe();
}

/// The fence of issue 18 (item 7), met where it hurt: in the commit before a revocation. An
/// instance has outputs in its open transaction (a 60 s commit interval keeps it open) when
/// another producer takes over its transactional id, as a woken zombie restarting its producer
/// does; then a member joins the group, so the instance commits before its partitions are
/// revoked, and that commit is fenced. It must drop the round, start transactions again and go
/// on, as it does when the loop meets a fence. Failed before: the failure of the revocation's
/// commit stopped the instance ("stopping without committing the round in progress: fenced").
#[test]
fn a_fence_met_by_the_commit_before_a_revocation_is_survived() {
    let broker = kafka();
    let name = "fenced-at-revocation";
    let topics = own_topics(broker, name, PARTITIONS);
    let (lines, expected) = fewer();
    let root = work_dir(name);
    let env = [
        ("CRMFLOW_INSTANCE_ID", "a"),
        ("CRMFLOW_COMMIT_INTERVAL_MS", "60000"),
        ("CRMFLOW_KAFKA_PRODUCER__TRANSACTION_TIMEOUT_MS", "300000"),
    ];
    let mut a = Processor::start(broker, &topics, &root.path().join("a"), name, ProcessingGuarantee::ExactlyOnce, &env);
    wait_until_owning_all(&mut a, 0, Duration::from_secs(60));
    // Few enough to be processed well within the first commit interval, even on a busy machine.
    let first = 5_000;
    produce_lines(broker, &topics, &lines[..first]);
    // Every output of the first records sent, and nothing more to send: the next transactional
    // request is the revocation's commit.
    wait_until_outputs_sent(broker, &topics, &mut a, simulate(&lines[..first]).len());
    let usurper: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("transactional.id", format!("{name}.a"))
        .create()
        .unwrap();
    usurper.init_transactions(Duration::from_secs(30)).unwrap();
    visit_group(broker, &topics, name);
    produce_lines(broker, &topics, &lines[first..]);
    wait_until_processed(broker, &topics, name, &mut a, Duration::from_secs(300));
    assert!(a.stop().success(), "{}", a.logs());
    let logs = without_backtraces(&a.logs());
    assert!(logs.contains("commit before revocation failed"), "the revocation's commit did not fail:\n{logs}");
    let outputs = check_outputs(broker, &topics, expected, name, &logs);
    eprintln!("{name}: {} records, {outputs} outputs as simulate\n{}", lines.len(), digest(&logs));
}
