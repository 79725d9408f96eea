//! Stores that must not be trusted, on the real broker (issue 18): a store whose changelog tail
//! lost deletions to compaction, stores of partitions owned elsewhere, a store from the history
//! before a reset, and an at_least_once round whose outputs failed after its changelog records
//! were sent. Every output is read to the end offsets and compared with `crmflow simulate`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

use support::*;

/// Events of a few companies, one line at a time, a second apart.
struct History {
    lines: Vec<Vec<u8>>,
    clock: i64,
    events: usize,
    // Begins every event and CRM record id, so two histories never share one.
    prefix: &'static str,
}

/// Enough companies that both partitions of a two-partition topic surely hold some.
const COMPANIES: [&str; 8] = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"];

/// The CRM user whose team placement the tests move.
const OWNER: &str = "005A";

impl History {
    fn new(prefix: &'static str) -> History {
        History { lines: Vec::new(), clock: 1_714_557_600_000, events: 0, prefix }
    }

    fn push(&mut self, topic: &str, company: &str, value: Value) {
        self.clock += 1_000;
        let line = json!({"topic": topic, "key": company, "timestamp": self.clock, "value": value});
        self.lines.push(serde_json::to_vec(&line).unwrap());
    }

    /// The next line's time, as the events' own time.
    fn changed_at(&self) -> String {
        let at = chrono::DateTime::from_timestamp_millis(self.clock + 1_000).expect("a time in range");
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// Auto-sync on, and one workflow that makes every new Opportunity a Sale of its owner.
    fn integration(&mut self, company: &str) {
        let at = self.changed_at();
        let settings = json!({"type": "IntegrationSettingsChanged", "company_id": company, "integration_id": "sf",
            "crm": "salesforce", "auto_sync_users": true, "changed_at": at});
        self.push("integration.settings", company, settings);
        let at = self.changed_at();
        let workflow = json!({"type": "WorkflowSaved", "company_id": company, "integration_id": "sf", "changed_at": at,
            "workflow": {"workflow_id": "w-sales", "name": "Sales", "active": true, "object_type": "Opportunity",
                "triggers": ["created"], "conditions": [], "activity_type": "Sale", "user_field": "OwnerId",
                "value_field": "Amount"}});
        self.push("integration.settings", company, workflow);
    }

    /// A new Opportunity of `owner`.
    fn sale(&mut self, company: &str, owner: &str) {
        self.events += 1;
        let (n, prefix) = (self.events, self.prefix);
        let at = self.changed_at();
        let change = json!({"type": "CrmRecordChanged", "event_id": format!("{prefix}-e{n}"), "company_id": company,
            "integration_id": "sf", "object_type": "Opportunity", "object_id": format!("{prefix}-006-{n}"),
            "operation": "created", "occurred_at": at, "fields": {"OwnerId": owner, "Amount": n}});
        self.push("crm.changes", company, change);
    }

    fn team(&mut self, company: &str, placed: bool) {
        let user_id = crmflow_domain::ids::user_id(company, "sf", OWNER);
        let kind = if placed { "UserAssignedToTeam" } else { "UserRemovedFromTeam" };
        let at = self.changed_at();
        let value =
            json!({"type": kind, "company_id": company, "user_id": user_id, "team_id": "oslo", "changed_at": at});
        self.push("team.assignments", company, value);
    }

    /// The lines from `from` on.
    fn since(&self, from: usize) -> &[Vec<u8>] {
        &self.lines[from..]
    }
}

/// Waits until `processor` has opened a state store since `since` bytes of its log.
fn wait_until_owning(processor: &mut Processor, since: usize, timeout: Duration) {
    wait_for("a state store opened", timeout, || {
        assert!(processor.exited().is_none(), "exited:\n{}", processor.logs());
        processor.logs().get(since..).is_some_and(|log| log.contains("opened state store")).then_some(())
    });
}

/// `crmflow run` (exactly_once) as instance `id` of application `name`, its state directory
/// `root/id`, with `env` on top.
fn instance(broker: &Broker, topics: &Topics, root: &Path, name: &str, id: &str, env: &[(&str, &str)]) -> Processor {
    let mut env = env.to_vec();
    env.push(("CRMFLOW_INSTANCE_ID", id));
    Processor::start(broker, topics, &root.join(id), name, ProcessingGuarantee::ExactlyOnce, &env)
}

/// Fails with the difference unless the output topics hold exactly what simulate makes of `lines`.
fn check_outputs(broker: &Broker, topics: &Topics, lines: &[Vec<u8>], duplicates: Duplicates, logs: &str) {
    let actual = read_outputs(broker, topics);
    if let Err(diff) = compare(&simulate(lines), &actual, duplicates) {
        panic!("crmflow run differs from crmflow simulate: {diff}\n--- logs ---\n{logs}");
    }
}

/// The keys of every committed record of `topic` now (a compacted topic: what the cleaner left).
fn keys_in(broker: &Broker, topic: &str, partitions: i32) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", "crmflow-test-keys")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let ends = end_offsets(broker, &[topic], partitions).unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let position = consumer.position().unwrap();
        let done = (0..partitions).all(|p| {
            let end = ends[&(topic.to_owned(), p)];
            match position.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at >= end,
                _ => end == 0,
            }
        });
        if done {
            return keys;
        }
        assert!(Instant::now() < deadline, "reading {topic} to its end took over 60 s");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            keys.push(m.key().unwrap_or_default().to_vec());
        }
    }
}

/// Issue 18, item 1. A owns both partitions and places each company's user on a team; B joins
/// and takes one partition, where the user is removed from the team (a tombstone in the
/// changelog); the changelog's cleaner (tiny `segment.ms`, `delete.retention.ms` and dirty
/// ratio) then drops that key entirely. B stops, the partition comes back to A, whose store still
/// has the placement, and the user's next sale must be ignored (`user_not_on_team`), as simulate
/// says. Failed before: A restored only the changelog's tail, which no longer held the removal,
/// and accepted the sale.
#[test]
fn a_partition_back_from_an_owner_whose_deletions_were_compacted_restores_in_full() {
    let broker = kafka();
    let name = "compacted-deletions";
    let topics = own_topics(broker, name, 2);
    let changelog = format!("{name}-projections-changelog");
    broker.create_topics(std::slice::from_ref(&changelog), 2).unwrap();
    broker.set_topic_configs(
        &changelog,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("delete.retention.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("min.compaction.lag.ms", "0"),
        ],
    );
    let root = tempfile::tempdir().unwrap();
    let start = |id: &str| instance(broker, &topics, root.path(), name, id, &[]);
    let mut history = History::new("h");
    for company in COMPANIES {
        history.integration(company);
        history.team(company, true);
        history.sale(company, OWNER);
    }
    let mut a = start("a");
    produce_lines(broker, &topics, &history.lines);
    wait_until_processed(broker, &topics, name, &mut a, Duration::from_secs(120));

    let mut b = start("b");
    wait_until_owning(&mut b, 0, Duration::from_secs(90));
    let removals = history.lines.len();
    for company in COMPANIES {
        history.team(company, false);
    }
    produce_lines(broker, &topics, history.since(removals));
    wait_until_processed_by(broker, &topics, name, &mut [&mut a, &mut b], Duration::from_secs(120));
    // New records roll the changelog's segments, and the cleaner drops the placements, then
    // their tombstones: until no key of the teams family is left.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut round = 0;
    while keys_in(broker, &changelog, 2).iter().any(|key| key.starts_with(b"teams\0")) {
        assert!(Instant::now() < deadline, "the cleaner kept team keys in {changelog} for 180 s");
        let from = history.lines.len();
        for company in COMPANIES {
            history.sale(company, &format!("filler-{round}"));
        }
        produce_lines(broker, &topics, history.since(from));
        wait_until_processed_by(broker, &topics, name, &mut [&mut a, &mut b], Duration::from_secs(120));
        round += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let a_log = a.logs().len();
    assert!(b.stop().success(), "{}", b.logs());
    let last = history.lines.len();
    for company in COMPANIES {
        history.sale(company, OWNER);
    }
    wait_until_owning(&mut a, a_log, Duration::from_secs(90));
    produce_lines(broker, &topics, history.since(last));
    wait_until_processed(broker, &topics, name, &mut a, Duration::from_secs(120));
    assert!(a.stop().success(), "{}", a.logs());
    let logs = format!("=== A ===\n{}\n=== B ===\n{}", a.logs(), b.logs());
    check_outputs(broker, &topics, &history.lines, Duplicates::Fail, &logs);
    assert!(a.logs().contains("older than the changelog keeps deletions"), "no full restore:\n{logs}");
}

/// The partition directories under a state directory.
fn stores_in(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with("partition-"));
    names.sort();
    names
}

/// Issue 18, item 1: the store of a partition that moved to another instance is deleted once
/// `state_cleanup_delay_ms` has passed, and the store of the partition still owned stays.
/// Before, stores of partitions that left were kept for ever.
#[test]
fn stores_of_partitions_owned_elsewhere_are_deleted_after_the_cleanup_delay() {
    let broker = kafka();
    let name = "state-cleanup";
    let topics = own_topics(broker, name, 2);
    let root = tempfile::tempdir().unwrap();
    let start =
        |id: &str| instance(broker, &topics, root.path(), name, id, &[("CRMFLOW_STATE_CLEANUP_DELAY_MS", "2000")]);
    let mut history = History::new("h");
    for company in COMPANIES {
        history.integration(company);
        history.sale(company, OWNER);
    }
    produce_lines(broker, &topics, &history.lines);
    let mut a = start("a");
    wait_until_processed(broker, &topics, name, &mut a, Duration::from_secs(120));
    assert_eq!(stores_in(&root.path().join("a")), ["partition-0", "partition-1"]);
    let mut b = start("b");
    wait_until_owning(&mut b, 0, Duration::from_secs(90));
    let kept = wait_for("A's unowned store deleted", Duration::from_secs(60), || {
        let stores = stores_in(&root.path().join("a"));
        (stores.len() == 1).then_some(stores)
    });
    let owned_by_b = stores_in(&root.path().join("b"));
    assert_eq!(owned_by_b.len(), 1, "{owned_by_b:?}");
    assert_ne!(kept, owned_by_b, "A keeps the store it owns, and only that one");
    assert!(a.stop().success(), "{}", a.logs());
    assert!(b.stop().success(), "{}", b.logs());
    assert!(a.logs().contains("deleted the state store of a partition not owned here"), "{}", a.logs());
}

/// Issue 18, item 2. Two instances process a history; it is then deleted from the inputs
/// (retention) and the application reset (`--to-earliest --delete-outputs`) on A's host, which
/// deletes A's state directory and the changelog but cannot reach B's. A alone processes a new,
/// longer history, so the new changelog grows past B's old store. Then B joins, and the first
/// history's records come again. B's store belongs to the old history: it remembers those event
/// ids. It must be restored in full from the new changelog, and the outputs be exactly what
/// simulate makes of the new history. Failed before: B restored the new changelog's tail onto
/// its old store and dropped the records as resends.
#[test]
fn a_store_from_before_a_reset_is_restored_in_full_on_any_host() {
    let broker = kafka();
    let name = "reset-elsewhere";
    let topics = own_topics(broker, name, 2);
    let root = tempfile::tempdir().unwrap();
    let start = |id: &str| instance(broker, &topics, root.path(), name, id, &[]);
    let mut old = History::new("old");
    for company in COMPANIES {
        old.integration(company);
        old.sale(company, OWNER);
        old.sale(company, "005B");
    }
    produce_lines(broker, &topics, &old.lines);
    let mut a = start("a");
    wait_until_processed(broker, &topics, name, &mut a, Duration::from_secs(120));
    let mut b = start("b");
    wait_until_owning(&mut b, 0, Duration::from_secs(90));
    // B commits at least once on its partition: its store then records a changelog position.
    let more = old.lines.len();
    for company in COMPANIES {
        old.sale(company, "005C");
    }
    produce_lines(broker, &topics, old.since(more));
    wait_until_processed_by(broker, &topics, name, &mut [&mut a, &mut b], Duration::from_secs(120));
    assert!(b.stop().success(), "{}", b.logs());
    assert!(a.stop().success(), "{}", a.logs());
    assert_eq!(stores_in(&root.path().join("b")).len(), 1, "B owned one partition");

    for (_, input) in topics.names.inputs() {
        broker.delete_all_records(input);
    }
    let reset = operate(broker, &topics, &root.path().join("a"), name, &["reset", "--to-earliest", "--delete-outputs"]);
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));

    let mut new = History::new("new");
    for company in COMPANIES {
        new.integration(company);
        // Many more records than the old history: the new changelog grows past B's old store.
        for n in 0..20 {
            new.sale(company, &format!("new-{n}"));
        }
    }
    produce_lines(broker, &topics, &new.lines);
    let mut a = start("a");
    wait_until_processed(broker, &topics, name, &mut a, Duration::from_secs(120));
    let a_log = a.logs().len();
    let mut b = start("b");
    wait_until_owning(&mut b, 0, Duration::from_secs(90));
    // A gave a partition up: it is processing again once it reopened the other.
    wait_until_owning(&mut a, a_log, Duration::from_secs(90));
    let again = new.lines.len();
    new.lines.extend(old.lines.iter().cloned());
    produce_lines(broker, &topics, new.since(again));
    wait_until_processed_by(broker, &topics, name, &mut [&mut a, &mut b], Duration::from_secs(120));
    assert!(b.stop().success(), "{}", b.logs());
    assert!(a.stop().success(), "{}", a.logs());
    let logs = format!("=== A ===\n{}\n=== B ===\n{}", a.logs(), b.logs());
    check_outputs(broker, &topics, &new.lines, Duplicates::Fail, &logs);
    assert!(b.logs().contains("restoring the store in full"), "B restored nothing in full:\n{logs}");
}

/// Issue 18, item 3. Under at_least_once, the outputs of a round fail (the activities topic
/// was deleted, and the brokers do not create topics) and crmflow stops; the topic is created
/// again and crmflow restarts on its state directory. Every output simulate expects must be
/// there (duplicates allowed). Failed before: the round's changelog records, input positions
/// included, were acknowledged before its outputs failed, so the restart restored them and
/// skipped the round's records: their activities were never published.
#[test]
fn at_least_once_republishes_a_round_whose_outputs_failed() {
    let broker = kafka();
    let name = "alo-failed-outputs";
    let topics = own_topics(broker, name, 2);
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    let env = [("CRMFLOW_KAFKA_PRODUCER__MESSAGE_TIMEOUT_MS", "5000")];
    let start = || Processor::start(broker, &topics, &state_dir, name, ProcessingGuarantee::AtLeastOnce, &env);
    // Nobody is on a team yet: no activity is accepted, the accepted topic stays empty.
    let mut history = History::new("h");
    for company in COMPANIES {
        history.integration(company);
        history.sale(company, OWNER);
    }
    produce_lines(broker, &topics, &history.lines);
    let mut processor = start();
    wait_until_processed(broker, &topics, name, &mut processor, Duration::from_secs(120));

    let accepted = &topics.names.activities_accepted;
    broker.delete_topic(accepted);
    let from = history.lines.len();
    for company in COMPANIES {
        history.team(company, true);
        history.sale(company, OWNER);
    }
    produce_lines(broker, &topics, history.since(from));
    let status = processor
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("crmflow goes on without its outputs:\n{}", processor.logs()));
    assert!(!status.success(), "{}", processor.logs());
    let failed = processor.logs();
    assert!(failed.contains("were not delivered"), "{failed}");

    broker.create_topics(std::slice::from_ref(accepted), 2).unwrap();
    let mut processor = start();
    wait_until_processed(broker, &topics, name, &mut processor, Duration::from_secs(120));
    assert!(processor.stop().success(), "{}", processor.logs());
    let logs = format!("=== failed run ===\n{failed}\n=== restart ===\n{}", processor.logs());
    check_outputs(broker, &topics, &history.lines, Duplicates::Drop, &logs);
}

/// Issue 18, item 6. A zombie (another transactional id) opens a transaction on the changelog
/// and leaves it open; crmflow then commits more to the changelog and stops cleanly. Restarted
/// while that transaction is still open, its stores are current: the changelog's high watermark
/// is where they are, only the last stable offset lags behind them. Failed before: the stores,
/// ahead of the last stable offset, counted as belonging to another history and were deleted
/// and restored in full (and their inputs replayed).
#[test]
fn a_store_past_a_zombies_open_transaction_is_current() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = kafka();
    let name = "zombie-changelog";
    let topics = own_topics(broker, name, 2);
    let changelog = format!("{name}-projections-changelog");
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    let start = || Processor::start(broker, &topics, &state_dir, name, ProcessingGuarantee::ExactlyOnce, &[]);
    let mut history = History::new("h");
    for company in COMPANIES {
        history.integration(company);
        history.sale(company, OWNER);
    }
    produce_lines(broker, &topics, &history.lines);
    let mut processor = start();
    wait_until_processed(broker, &topics, name, &mut processor, Duration::from_secs(120));

    let zombie: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("transactional.id", format!("{name}.zombie"))
        .set("transaction.timeout.ms", "120000")
        .create()
        .unwrap();
    zombie.init_transactions(Duration::from_secs(30)).unwrap();
    zombie.begin_transaction().unwrap();
    for partition in 0..2 {
        let record =
            BaseRecord::<[u8], [u8]>::to(&changelog).partition(partition).key(b"teams\0zombie\0z").payload(b"\"t\"");
        zombie.send(record).map_err(|(e, _)| e).unwrap();
    }
    zombie.flush(Duration::from_secs(30)).unwrap();
    let more = history.lines.len();
    for company in COMPANIES {
        history.sale(company, "005B");
    }
    produce_lines(broker, &topics, history.since(more));
    wait_until_processed(broker, &topics, name, &mut processor, Duration::from_secs(120));
    assert!(processor.stop().success(), "{}", processor.logs());

    let mut processor = start();
    let last = history.lines.len();
    for company in COMPANIES {
        history.sale(company, "005C");
    }
    produce_lines(broker, &topics, history.since(last));
    wait_until_processed(broker, &topics, name, &mut processor, Duration::from_secs(120));
    assert!(processor.stop().success(), "{}", processor.logs());
    let restart = processor.logs();
    assert!(!restart.contains("restoring the store in full"), "current stores were restored:\n{restart}");
    assert!(!restart.contains("replaying to rebuild state"), "inputs were replayed:\n{restart}");
    check_outputs(broker, &topics, &history.lines, Duplicates::Fail, &restart);
    zombie.abort_transaction(Duration::from_secs(30)).unwrap();
}
