use super::*;

use crmflow_domain::{decide, InputEvent, MemoryState, Timestamp};
use proptest::prelude::*;
use serde_json::json;
use tempfile::TempDir;

fn open(dir: &TempDir) -> StateStore {
    open_with(dir, StoreOptions::default())
}

fn open_with(dir: &TempDir, options: StoreOptions) -> StateStore {
    // A partition subdirectory that does not exist yet, as the runtime uses it.
    StateStore::open(&dir.path().join("0"), options).expect("store opens")
}

fn put_team(company: &str, user: &str, team: &str) -> StateChange {
    StateChange::PutTeam { company_id: company.into(), user_id: user.into(), team_id: team.into() }
}

fn remember(company: &str, event: &str) -> StateChange {
    StateChange::RememberEvent { company_id: company.into(), event_id: event.into() }
}

fn put_integration(company: &str, integration: &str, crm: &str) -> StateChange {
    StateChange::PutIntegration {
        company_id: company.into(),
        integration_id: integration.into(),
        integration: Integration { crm: crm.into(), ..Integration::default() },
    }
}

/// An accepted activity of `user` on a date (`millis` since the epoch).
fn ledger_entry(user_id: String, millis: i64) -> LedgerEntry {
    LedgerEntry {
        user_id,
        crm_user_id: "crm".into(),
        team_id: "t".into(),
        activity_type: "Sale".into(),
        value: None,
        occurred_at: Timestamp(millis),
    }
}

fn position(topic: &str, partition: i32, next_offset: i64) -> InputPosition {
    InputPosition { topic: topic.into(), partition, next_offset }
}

#[test]
fn staged_writes_are_visible_before_commit_and_lost_on_reopen_without_it() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    store.stage(&[put_team("acme", "u1", "ny"), remember("acme", "e1")]).expect("stages");
    assert_eq!(store.team_of("acme", "u1").expect("reads").as_deref(), Some("ny"));
    assert!(store.has_seen("acme", "e1").expect("reads"));
    assert!(!store.has_seen("other", "e1").expect("reads"), "companies never share state");
    drop(store);

    let store = open(&dir);
    assert_eq!(store.team_of("acme", "u1").expect("reads"), None);
    assert!(!store.has_seen("acme", "e1").expect("reads"));
    assert!(store.positions().expect("reads").is_empty());
}

#[test]
fn committed_writes_and_positions_survive_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    let entry = LedgerEntry {
        user_id: "u1".into(),
        crm_user_id: "005A".into(),
        team_id: "ny".into(),
        activity_type: "Sale".into(),
        value: Some(1200.5),
        occurred_at: Timestamp(1_714_557_600_000),
    };
    store
        .stage(&[
            put_integration("acme", "sf", "salesforce"),
            StateChange::PutAccount {
                company_id: "acme".into(),
                integration_id: "sf".into(),
                crm_user_id: "005A".into(),
                account: Account { user_id: "u1".into() },
            },
            put_team("acme", "u1", "ny"),
            StateChange::PutLedger { company_id: "acme".into(), activity_id: "a1".into(), entry: entry.clone() },
            remember("acme", "e1"),
        ])
        .expect("stages");
    store.commit(&[position("crm.changes", 3, 42), position("team.assignments", 3, 7)], None).expect("commits");
    assert_eq!(store.changelog_records(&[]).expect("lists").len(), 0, "commit clears the stage");
    drop(store);

    let mut store = open(&dir);
    let integration = store.integration("acme", "sf").expect("reads").expect("present");
    assert_eq!(integration.crm, "salesforce");
    assert_eq!(store.account("acme", "sf", "005A").expect("reads"), Some(Account { user_id: "u1".into() }));
    assert_eq!(store.team_of("acme", "u1").expect("reads").as_deref(), Some("ny"));
    assert_eq!(store.ledger_entry("acme", "a1").expect("reads"), Some(entry));
    assert!(store.has_seen("acme", "e1").expect("reads"));
    assert_eq!(
        store.positions().expect("reads"),
        vec![position("crm.changes", 3, 42), position("team.assignments", 3, 7)]
    );

    // Positions are per topic partition: a later commit moves only the ones it names.
    store.stage(&[StateChange::RemoveLedger { company_id: "acme".into(), activity_id: "a1".into() }]).expect("stages");
    store.commit(&[position("crm.changes", 3, 50)], None).expect("commits");
    drop(store);
    let store = open(&dir);
    assert_eq!(store.ledger_entry("acme", "a1").expect("reads"), None);
    assert_eq!(
        store.positions().expect("reads"),
        vec![position("crm.changes", 3, 50), position("team.assignments", 3, 7)]
    );
}

#[test]
fn discard_staged_keeps_only_committed_writes() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    store.stage(&[put_integration("acme", "sf", "salesforce"), remember("acme", "e1")]).expect("stages");
    store.commit(&[position("crm.changes", 0, 1)], None).expect("commits");
    // Prime the integration cache, so discarding must not leave a staged value in it.
    assert!(store.integration("acme", "sf").expect("reads").is_some());

    store
        .stage(&[put_integration("acme", "sf", "hubspot"), remember("acme", "e2"), put_team("acme", "u1", "ny")])
        .expect("stages");
    assert_eq!(store.integration("acme", "sf").expect("reads").map(|i| i.crm.clone()).as_deref(), Some("hubspot"));
    store.discard_staged();

    assert_eq!(store.changelog_records(&[]).expect("lists").len(), 0);
    assert_eq!(store.integration("acme", "sf").expect("reads").map(|i| i.crm.clone()).as_deref(), Some("salesforce"));
    assert!(store.has_seen("acme", "e1").expect("reads"));
    assert!(!store.has_seen("acme", "e2").expect("reads"));
    assert_eq!(store.team_of("acme", "u1").expect("reads"), None);

    // The seen counters were discarded too: the next remembered id reuses the sequence.
    store.stage(&[remember("acme", "e3")]).expect("stages");
    store.commit(&[], None).expect("commits");
    assert!(store.has_seen("acme", "e3").expect("reads"));
    assert_eq!(store.counter(&encoding::seen_counter_key(encoding::SEEN_NEXT, "acme")).expect("reads"), 2);
}

#[test]
fn seen_ids_are_bounded_oldest_first_across_commits_and_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let options = StoreOptions { seen_capacity: 2, ..StoreOptions::default() };
    let mut store = open_with(&dir, options.clone());
    store.stage(&[remember("c1", "a"), remember("c1", "b")]).expect("stages");
    store.commit(&[], None).expect("commits");
    // Remembering "a" again keeps its place (it stays the oldest), as in MemoryState.
    store.stage(&[remember("c1", "a"), remember("c1", "c")]).expect("stages");
    assert!(!store.has_seen("c1", "a").expect("reads"));
    assert!(store.has_seen("c1", "b").expect("reads"));
    assert!(store.has_seen("c1", "c").expect("reads"));
    store.commit(&[], None).expect("commits");
    drop(store);

    let mut store = open_with(&dir, options);
    store.stage(&[remember("c1", "d")]).expect("stages");
    store.commit(&[], None).expect("commits");
    let seen: Vec<bool> = ["a", "b", "c", "d"].iter().map(|id| store.has_seen("c1", id).expect("reads")).collect();
    assert_eq!(seen, [false, false, true, true]);
    let order = store.view.cf(Family::SeenOrder).expect("family");
    let remaining = store.view.db.iterator_cf(order, IteratorMode::Start).count();
    assert_eq!(remaining, 2, "evicted ids leave no sequence entries behind");
    drop(store);

    // A smaller capacity on reopen trims to it at the next remembered id.
    let mut store = open_with(&dir, StoreOptions { seen_capacity: 1, ..StoreOptions::default() });
    store.stage(&[remember("c1", "e")]).expect("stages");
    let seen: Vec<bool> = ["c", "d", "e"].iter().map(|id| store.has_seen("c1", id).expect("reads")).collect();
    assert_eq!(seen, [false, false, true]);
}

#[test]
fn each_company_remembers_its_own_last_ids_through_a_restore() {
    let options = StoreOptions { seen_capacity: 2, ..StoreOptions::default() };
    let source_dir = TempDir::new().expect("temp dir");
    let mut source = open_with(&source_dir, options.clone());
    let target_dir = TempDir::new().expect("temp dir");
    let mut target = open_with(&target_dir, options);
    let batches = [
        vec![remember("quiet", "q1"), remember("busy", "b1")],
        vec![remember("busy", "b2"), remember("busy", "b3")],
        vec![remember("busy", "b4"), remember("quiet", "q2")],
    ];
    for batch in &batches {
        source.stage(batch).expect("stages");
        let records = source.changelog_records(&[]).expect("lists");
        source.commit(&[], None).expect("commits");
        target.restore_all(records.iter().map(|r| (&r.key[..], r.value.as_deref()))).expect("restores");
    }
    // Both go on alike: the restored order forgets each company's oldest.
    for store in [&mut source, &mut target] {
        store.stage(&[remember("quiet", "q3"), remember("busy", "b5")]).expect("stages");
        store.commit(&[], None).expect("commits");
        let remembered = |company: &str, ids: &[&str]| -> Vec<bool> {
            ids.iter().map(|id| store.has_seen(company, id).expect("reads")).collect()
        };
        assert_eq!(remembered("quiet", &["q1", "q2", "q3"]), [false, true, true]);
        assert_eq!(remembered("busy", &["b1", "b2", "b3", "b4", "b5"]), [false, false, false, true, true]);
    }
}

#[test]
fn changelog_records_list_staged_writes_then_positions() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    store
        .stage(&[
            put_team("acme", "u1", "ny"),
            StateChange::RemoveTeam { company_id: "acme".into(), user_id: "u2".into() },
        ])
        .expect("stages");
    let records = store.changelog_records(&[position("crm.changes", 3, 42)]).expect("lists");
    let keys: Vec<&[u8]> = records.iter().map(|r| r.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"teams\0acme\0u1"[..], b"teams\0acme\0u2", b"meta\0position\0crm.changes\x003"]);
    assert_eq!(records[0].value.as_deref(), Some(&b"\"ny\""[..]));
    assert_eq!(records[1].value, None, "a delete is a tombstone");
}

#[test]
fn restoring_the_changelog_rebuilds_state_and_positions() {
    let source_dir = TempDir::new().expect("temp dir");
    let mut source = open(&source_dir);
    let target_dir = TempDir::new().expect("temp dir");
    let target = open(&target_dir);

    let batches = [
        vec![put_integration("acme", "sf", "salesforce"), put_team("acme", "u1", "ny"), remember("acme", "e1")],
        vec![
            put_integration("acme", "sf", "hubspot"),
            StateChange::RemoveTeam { company_id: "acme".into(), user_id: "u1".into() },
            remember("acme", "e2"),
        ],
    ];
    let mut next = 0;
    for (i, batch) in batches.iter().enumerate() {
        source.stage(batch).expect("stages");
        // Prime the target's cache, so the restore must invalidate it.
        target.integration("acme", "sf").expect("reads");
        let positions = [position("crm.changes", 0, i as i64 + 1)];
        let records = source.changelog_records(&positions).expect("lists");
        next += records.len() as i64 + 1;
        source.commit(&positions, Some(at(next))).expect("commits");
        let prepared =
            target.prepare_restore(records.iter().map(|r| (&r.key[..], r.value.as_deref()))).expect("checks");
        target.apply_restore(prepared, Some(at(next))).expect("restores");
        assert_eq!(target.changelog_next().expect("reads"), Some(next), "each batch carries its position");
    }
    target.finish_restore(Some(at(next))).expect("finishes");
    drop(target);

    let target = open(&target_dir);
    assert_eq!(target.integration("acme", "sf").expect("reads"), source.integration("acme", "sf").expect("reads"));
    assert_eq!(target.integration("acme", "sf").expect("reads").map(|i| i.crm.clone()).as_deref(), Some("hubspot"));
    assert_eq!(target.team_of("acme", "u1").expect("reads"), None);
    assert!(target.has_seen("acme", "e1").expect("reads"));
    assert!(target.has_seen("acme", "e2").expect("reads"));
    assert_eq!(target.counter(&encoding::seen_counter_key(encoding::SEEN_NEXT, "acme")).expect("reads"), 2);
    assert_eq!(target.positions().expect("reads"), vec![position("crm.changes", 0, 2)]);
    assert_eq!(target.changelog_position().expect("reads"), Some(at(next)));
    assert_eq!(source.changelog_position().expect("reads"), Some(at(next)));
}

#[test]
fn restore_rejects_foreign_records_and_corrupted_values() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(&dir);
    let error = store.restore(b"nope\0k", Some(b"{}")).expect_err("unknown family");
    assert!(matches!(error, StoreError::UnknownFamily { .. }), "{error}");
    let error = store.restore(b"no separator", Some(b"{}")).expect_err("not a store write");
    assert!(matches!(error, StoreError::UnknownFamily { .. }), "{error}");
    for local in ["changelog_next", "changelog_written_at", "changelog_id"] {
        let error = store.restore(format!("meta\0{local}").as_bytes(), Some(b"5")).expect_err("local bookkeeping");
        assert!(matches!(error, StoreError::UnknownFamily { .. }), "{local}: {error}");
    }
    let error = store.restore(b"ledger\0acme\0a1", Some(b"not json")).expect_err("corrupted");
    assert!(matches!(error, StoreError::Decode { family: "ledger", .. }), "{error}");
    assert!(error.to_string().contains("acme\\x00a1"), "names the key: {error}");
    assert_eq!(store.ledger_entry("acme", "a1").expect("nothing was written"), None);
    assert_eq!(store.changelog_next().expect("reads"), None);
}

#[test]
fn a_destroyed_store_opens_empty() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("0");
    let mut store = StateStore::open(&path, StoreOptions::default()).expect("opens");
    store.stage(&[put_team("acme", "u1", "ny")]).expect("stages");
    store.commit(&[position("crm.changes", 0, 1)], Some(at(3))).expect("commits");
    assert_eq!(store.destroy().expect("destroys"), path);
    let store = StateStore::open(&path, StoreOptions::default()).expect("opens");
    assert_eq!(store.team_of("acme", "u1").expect("reads"), None);
    assert_eq!(store.changelog_next().expect("reads"), None);
    assert!(store.positions().expect("reads").is_empty());
}

/// The changelog position written at a commit or restore `next`: stamped `next` seconds.
fn at(next: i64) -> ChangelogPosition {
    ChangelogPosition { next, written_at: next * 1_000 }
}

#[test]
fn the_changelog_a_store_comes_from_is_kept_until_it_is_destroyed() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("0");
    let mut store = StateStore::open(&path, StoreOptions::default()).expect("opens");
    assert_eq!(store.changelog_id().expect("reads"), None);
    assert_eq!(store.changelog_position().expect("reads"), None);
    store.set_changelog_id("topic-id-1").expect("records");
    assert!(store.is_empty().expect("reads"), "its own bookkeeping is no data");
    store.commit(&[position("crm.changes", 0, 1)], Some(at(4))).expect("commits");
    drop(store);
    let store = StateStore::open(&path, StoreOptions::default()).expect("opens");
    assert_eq!(store.changelog_id().expect("reads").as_deref(), Some("topic-id-1"));
    assert_eq!(store.changelog_position().expect("reads"), Some(at(4)));
    store.destroy().expect("destroys");
    let store = StateStore::open(&path, StoreOptions::default()).expect("opens");
    assert_eq!(store.changelog_id().expect("reads"), None);
}

#[test]
fn a_position_without_its_time_counts_as_written_long_ago() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(&dir);
    let meta = store.view.cf(Family::Meta).expect("family");
    store.view.db.put_cf(meta, encoding::CHANGELOG_NEXT, encoding::encode(&7i64).expect("encodes")).expect("writes");
    assert_eq!(store.changelog_position().expect("reads"), Some(ChangelogPosition { next: 7, written_at: 0 }));
}

#[test]
fn corrupted_values_on_disk_are_errors() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(&dir);
    let cf = store.view.cf(Family::Integrations).expect("family");
    store.view.db.put_cf(cf, encoding::key(&["acme", "sf"]), b"{\"crm\": 5}").expect("raw write");
    let error = store.integration("acme", "sf").expect_err("corrupted");
    let message = error.to_string();
    assert!(message.contains("integrations") && message.contains("acme\\x00sf"), "{message}");
    assert!(message.contains(&dir.path().join("0").display().to_string()), "{message}");

    let cf = store.view.cf(Family::Meta).expect("family");
    store.view.db.put_cf(cf, encoding::seen_counter_key(encoding::SEEN_NEXT, "acme"), b"-1").expect("raw write");
    let mut store = store;
    assert!(matches!(store.stage(&[remember("acme", "e1")]), Err(StoreError::Decode { family: "meta", .. })));
}

#[test]
fn failed_stage_takes_back_its_earlier_changes() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    store.stage(&[put_team("acme", "u0", "la")]).expect("stages");
    let cf = store.view.cf(Family::Meta).expect("family");
    let counter = encoding::seen_counter_key(encoding::SEEN_NEXT, "acme");
    store.view.db.put_cf(cf, counter, b"garbage").expect("raw write");
    let result = store.stage(&[put_team("acme", "u0", "ny"), put_team("acme", "u1", "ny"), remember("acme", "e1")]);
    assert!(result.is_err());
    assert_eq!(store.team_of("acme", "u0").expect("reads").as_deref(), Some("la"), "earlier stage kept");
    assert_eq!(store.team_of("acme", "u1").expect("reads"), None, "this stage taken back");
    assert_eq!(store.changelog_records(&[]).expect("lists").len(), 1);
}

#[test]
fn committed_integration_changes_reach_cached_readers() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open_with(&dir, StoreOptions { cache_capacity: 1, ..StoreOptions::default() });
    assert_eq!(store.integration("acme", "sf").expect("reads"), None, "absence gets cached");
    store.stage(&[put_integration("acme", "sf", "salesforce")]).expect("stages");
    store.commit(&[], None).expect("commits");
    assert_eq!(store.integration("acme", "sf").expect("reads").map(|i| i.crm.clone()).as_deref(), Some("salesforce"));
    // Capacity 1: reading another integration evicts the first; both still read right.
    assert_eq!(store.integration("acme", "hs").expect("reads"), None);
    assert_eq!(store.integration("acme", "sf").expect("reads").map(|i| i.crm.clone()).as_deref(), Some("salesforce"));
}

/// A small stream in the shapes of `tests/scenarios/seed-walkthrough`, plus resends,
/// removals and deletions, so every projection is read and written.
fn stream() -> Vec<InputEvent> {
    let crm = |event_id: &str, object_id: &str, operation: &str, fields: serde_json::Value| {
        json!({"type": "CrmRecordChanged", "event_id": event_id, "company_id": "acme", "integration_id": "sf",
               "object_type": "Opportunity", "object_id": object_id, "operation": operation,
               "occurred_at": "2024-05-01T10:00:03Z", "fields": fields,
               "users": {"005A": {"name": "Ada Lovelace", "email": "ada@acme.test"}}})
    };
    let won = |owner: &str, amount: serde_json::Value| json!({"OwnerId": owner, "StageName": "Closed Won", "Amount": amount, "CloseDate": "2024-05-01"});
    let ada = "12cc98fe-192c-5d19-bdcb-ccdcd1d153d8";
    let events = vec![
        json!({"type": "IntegrationSettingsChanged", "company_id": "acme", "integration_id": "sf",
               "crm": "salesforce", "auto_sync_users": true, "changed_at": "2024-05-01T10:00:01Z"}),
        json!({"type": "WorkflowSaved", "company_id": "acme", "integration_id": "sf", "changed_at": "2024-05-01T10:00:02Z",
               "workflow": {"workflow_id": "w-sales", "name": "Won opportunities", "active": true,
                            "object_type": "Opportunity", "triggers": ["created", "updated", "deleted"],
                            "conditions": [{"field": "StageName", "op": "eq", "value": "Closed Won"}],
                            "activity_type": "Sale", "user_field": "OwnerId", "value_field": "Amount",
                            "occurred_at_field": "CloseDate"}}),
        crm("e1", "006A", "created", won("005A", json!(1000))),
        json!({"type": "UserAssignedToTeam", "company_id": "acme", "user_id": ada, "team_id": "new-york",
               "changed_at": "2024-05-01T10:00:04Z"}),
        crm("e2", "006A", "updated", won("005A", json!(1200))),
        crm("e2", "006A", "updated", won("005A", json!(1200))),
        crm("e3", "006A", "updated", won("005A", json!(1200.1))),
        crm("e4", "006B", "created", won("005A", json!("2500.50"))),
        crm("e5", "006B", "updated", won("005B", json!(2500.5))),
        crm("e6", "006A", "updated", json!({"OwnerId": "005A", "StageName": "Closed Lost"})),
        json!({"type": "UserRemovedFromTeam", "company_id": "acme", "user_id": ada, "team_id": "boston",
               "changed_at": "2024-05-01T10:00:08Z"}),
        json!({"type": "UserRemovedFromTeam", "company_id": "acme", "user_id": ada, "team_id": "new-york",
               "changed_at": "2024-05-01T10:00:09Z"}),
        crm("e7", "006A", "updated", won("005A", json!(1))),
        json!({"type": "UserAssignedToTeam", "company_id": "acme", "user_id": ada, "team_id": "boston",
               "changed_at": "2024-05-01T10:00:10Z"}),
        crm("e8", "006A", "updated", won("005A", json!(2))),
        crm("e9", "006A", "deleted", json!({})),
        json!({"type": "WorkflowDeleted", "company_id": "acme", "integration_id": "sf", "workflow_id": "w-sales",
               "changed_at": "2024-05-01T10:00:11Z"}),
        crm("e10", "006B", "updated", won("005A", json!(3))),
        crm("e1", "006A", "created", won("005A", json!(1000))),
    ];
    events.into_iter().map(|event| serde_json::from_value(event).expect("valid input event")).collect()
}

#[test]
fn deciding_through_the_store_matches_memory_state() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    let mut memory = MemoryState::default();
    let mut outputs = 0;
    for (offset, event) in stream().iter().enumerate() {
        let expected = memory.process(event);
        let decision = decide(&store, event).expect("decides");
        assert_eq!(decision, expected, "event {offset}: {event:?}");
        outputs += decision.outputs.len();
        store.stage(&decision.changes).expect("stages");
        // Commit every third event and reopen once, so batches span commits and restarts.
        if offset % 3 == 2 {
            let next_offset = i64::try_from(offset).expect("small") + 1;
            store.commit(&[position("input", 0, next_offset)], None).expect("commits");
        }
        if offset == 8 {
            drop(store);
            store = open(&dir);
        }
    }
    assert!(outputs >= 10, "the stream exercises the core ({outputs} outputs)");
    assert!(!store.has_seen("acme", "e0").expect("reads"));
    assert!(store.has_seen("acme", "e10").expect("reads"));
}

/// What the property test does to the store and to its in-memory model.
#[derive(Debug, Clone)]
enum Op {
    Stage(Vec<StateChange>),
    Commit,
    Discard,
    Reopen,
}

const IDS: [&str; 3] = ["a", "b", "c"];
const COMPANIES: [&str; 2] = ["c1", "c2"];

fn id() -> impl Strategy<Value = String> {
    prop::sample::select(&IDS[..]).prop_map(str::to_owned)
}

fn company() -> impl Strategy<Value = String> {
    prop::sample::select(&COMPANIES[..]).prop_map(str::to_owned)
}

fn change() -> impl Strategy<Value = StateChange> {
    let entry = (id(), id(), prop::option::of(-1e9f64..1e9), 0i64..4_102_444_800_000).prop_map(
        |(user_id, team_id, value, millis)| LedgerEntry {
            user_id,
            crm_user_id: "crm".into(),
            team_id,
            activity_type: "Sale".into(),
            value,
            occurred_at: Timestamp(millis),
        },
    );
    prop_oneof![
        1 => (company(), id(), id(), any::<bool>()).prop_map(|(company_id, integration_id, crm, auto_sync_users)| {
            StateChange::PutIntegration {
                company_id,
                integration_id,
                integration: Integration { crm, auto_sync_users, ..Integration::default() },
            }
        }),
        1 => (company(), id(), id(), id()).prop_map(|(company_id, integration_id, crm_user_id, user_id)| {
            StateChange::PutAccount { company_id, integration_id, crm_user_id, account: Account { user_id } }
        }),
        1 => (company(), id(), id()).prop_map(|(company_id, user_id, team_id)| StateChange::PutTeam {
            company_id,
            user_id,
            team_id
        }),
        1 => (company(), id()).prop_map(|(company_id, user_id)| StateChange::RemoveTeam { company_id, user_id }),
        1 => (company(), id(), entry).prop_map(|(company_id, activity_id, entry)| StateChange::PutLedger {
            company_id,
            activity_id,
            entry
        }),
        1 => (company(), id()).prop_map(|(company_id, activity_id)| StateChange::RemoveLedger { company_id, activity_id }),
        // Remembering is weighted up, so the bound is hit and evictions happen often.
        3 => (company(), prop::sample::select(&["e1", "e2", "e3", "e4", "e5", "e6"][..]))
            .prop_map(|(company_id, event_id)| StateChange::RememberEvent { company_id, event_id: event_id.into() }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(change(), 1..4).prop_map(Op::Stage),
        3 => Just(Op::Commit),
        1 => Just(Op::Discard),
        1 => Just(Op::Reopen),
    ]
}

/// Asserts every read of the (small) id space agrees between the store and the model.
fn assert_same_reads(store: &StateStore, model: &MemoryState) -> Result<(), TestCaseError> {
    let events = ["e1", "e2", "e3", "e4", "e5", "e6"];
    for company in COMPANIES {
        for a in IDS {
            prop_assert_eq!(
                store.integration(company, a).expect("reads"),
                model.integration(company, a).expect("reads")
            );
            prop_assert_eq!(store.team_of(company, a).expect("reads"), model.team_of(company, a).expect("reads"));
            prop_assert_eq!(
                store.ledger_entry(company, a).expect("reads"),
                model.ledger_entry(company, a).expect("reads")
            );
            for b in IDS {
                prop_assert_eq!(
                    store.account(company, a, b).expect("reads"),
                    model.account(company, a, b).expect("reads")
                );
            }
        }
        for event in events {
            prop_assert_eq!(
                store.has_seen(company, event).expect("reads"),
                model.has_seen(company, event).expect("reads"),
                "has_seen({}, {})",
                company,
                event
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The store behaves exactly like `MemoryState` for the same changes, including the
    /// seen bound, across commits, discards and restarts (the model tracks what was committed).
    #[test]
    fn behaves_like_memory_state(capacity in 1usize..5, ops in prop::collection::vec(op(), 1..40)) {
        let dir = TempDir::new().expect("temp dir");
        let options = StoreOptions { seen_capacity: capacity, cache_capacity: 2, ..StoreOptions::default() };
        let mut store = open_with(&dir, options.clone());
        let mut committed = MemoryState::with_seen_capacity(capacity);
        let mut working = committed.clone();
        for op in ops {
            match op {
                Op::Stage(changes) => {
                    store.stage(&changes).expect("stages");
                    working.apply(changes);
                }
                Op::Commit => {
                    store.commit(&[], None).expect("commits");
                    committed = working.clone();
                }
                Op::Discard => {
                    store.discard_staged();
                    working = committed.clone();
                }
                Op::Reopen => {
                    drop(store);
                    store = open_with(&dir, options.clone());
                    working = committed.clone();
                }
            }
            assert_same_reads(&store, &working)?;
        }
    }
}

#[test]
fn a_restore_batch_is_written_whole_or_not_at_all() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(&dir);
    let good: (&[u8], Option<&[u8]>) = (b"teams\0acme\0u1", Some(b"\"ny\""));
    let bad: (&[u8], Option<&[u8]>) = (b"ledger\0acme\0a1", Some(b"not json"));
    let error = store.restore_all([good, bad]).expect_err("a corrupted record");
    assert!(matches!(error, StoreError::Decode { family: "ledger", .. }), "{error}");
    assert_eq!(store.team_of("acme", "u1").expect("reads"), None, "nothing of the batch was written");
    store.restore_all([good, (b"teams\0acme\0u2", None)]).expect("restores");
    assert_eq!(store.team_of("acme", "u1").expect("reads").as_deref(), Some("ny"));
}

/// Set in the child process of [`a_crash_during_a_restore_leaves_a_prefix_with_its_position`]:
/// the store directory it restores into before it aborts.
const CRASH_CHILD_DIR: &str = "CRMFLOW_STORE_TEST_CRASH_DIR";

/// One restore batch of a team placement: `teams / acme / u<i>` → `"t<i>"`.
fn team_batch(store: &StateStore, i: i64) -> RestoreBatch {
    let key = format!("teams\0acme\0u{i}");
    let value = format!("\"t{i}\"");
    store.prepare_restore([(key.as_bytes(), Some(value.as_bytes()))]).expect("checks")
}

/// Restored batches skip RocksDB's log. A process that dies in the middle of a restore must
/// leave a store that says how far it got: batches up to the last flush, with their position,
/// and nothing that position does not cover. The child process restores, finishes (flushes) at
/// 3, restores on to 6 and aborts without a flush.
#[test]
fn a_crash_during_a_restore_leaves_a_prefix_with_its_position() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        let store = StateStore::open(std::path::Path::new(&dir), StoreOptions::default()).expect("store opens");
        for i in 1..=6 {
            store.apply_restore(team_batch(&store, i), Some(at(i))).expect("restores");
            if i == 3 {
                store.finish_restore(Some(at(3))).expect("flushes");
            }
        }
        std::process::abort();
    }
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("0");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "store::tests::a_crash_during_a_restore_leaves_a_prefix_with_its_position", "--nocapture"])
        .env(CRASH_CHILD_DIR, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runs the child");
    assert!(!status.success(), "the child aborts");
    let store = StateStore::open(&path, StoreOptions::default()).expect("store opens");
    assert_eq!(store.changelog_next().expect("reads"), Some(3), "the position of the last flushed batch");
    for i in 1..=6 {
        let team = store.team_of("acme", &format!("u{i}")).expect("reads");
        assert_eq!(team.is_some(), i <= 3, "u{i}: only what the position covers survives");
    }
}

/// Companies whose ids are prefixes of one another, with and without a NUL after the prefix.
const TENANTS: [&str; 4] = ["c", "c\0", "c\0x", "cx"];

fn tenant_change() -> impl Strategy<Value = StateChange> {
    let tenant = || prop::sample::select(&TENANTS[..]).prop_map(str::to_owned);
    let entry = (id(), 0i64..1_000).prop_map(|(user_id, millis)| ledger_entry(user_id, millis));
    prop_oneof![
        (tenant(), id(), id(), id()).prop_map(|(company_id, integration_id, crm_user_id, user_id)| {
            StateChange::PutAccount { company_id, integration_id, crm_user_id, account: Account { user_id } }
        }),
        (tenant(), id(), id()).prop_map(|(company_id, user_id, team_id)| put_team(&company_id, &user_id, &team_id)),
        (tenant(), id(), entry).prop_map(|(company_id, activity_id, entry)| StateChange::PutLedger {
            company_id,
            activity_id,
            entry
        }),
    ]
}

proptest! {
    /// Tenant isolation: whatever companies hold, a query for one company answers from its own
    /// writes only, even when another company's id starts with this one's followed by a NUL.
    #[test]
    fn queries_answer_from_one_company_only(changes in prop::collection::vec(tenant_change(), 1..30)) {
        let dir = TempDir::new().expect("temp dir");
        let mut store = open(&dir);
        store.stage(&changes).expect("stages");
        store.commit(&[], None).expect("commits");
        let mut accounts = BTreeMap::new();
        let mut teams = BTreeMap::new();
        let mut ledger = BTreeMap::new();
        for change in &changes {
            match change.clone() {
                StateChange::PutAccount { company_id, integration_id, crm_user_id, account } => {
                    accounts.insert((company_id, integration_id, crm_user_id), account.user_id);
                }
                StateChange::PutTeam { company_id, user_id, team_id } => {
                    teams.insert((company_id, user_id), team_id);
                }
                StateChange::PutLedger { company_id, activity_id, entry } => {
                    ledger.insert((company_id, activity_id), entry);
                }
                other => unreachable!("not generated: {other:?}"),
            }
        }
        for company in TENANTS {
            let holds = accounts.keys().any(|(c, _, _)| c == company)
                || teams.keys().any(|(c, _)| c == company)
                || ledger.keys().any(|(c, _)| c == company);
            prop_assert_eq!(store.committed_view().snapshot().holds_company(company).expect("reads"), holds, "holds_company({:?})", company);
            for integration in IDS {
                let expected: Vec<ProvisionedUser> = accounts
                    .iter()
                    .filter(|((c, i, _), _)| c == company && i == integration)
                    .map(|((c, _, crm_user_id), user_id)| ProvisionedUser {
                        crm_user_id: crm_user_id.clone(),
                        user_id: user_id.clone(),
                        team_id: teams.get(&(c.clone(), user_id.clone())).cloned(),
                    })
                    .collect();
                prop_assert_eq!(store.committed_view().snapshot().provisioned_users(company, integration).expect("reads"), expected);
            }
            for user in IDS {
                let mut expected: Vec<(String, LedgerEntry)> = ledger
                    .iter()
                    .filter(|((c, _), entry)| c == company && entry.user_id == user)
                    .map(|((_, activity_id), entry)| (activity_id.clone(), entry.clone()))
                    .collect();
                expected.sort_by(|(a_id, a), (b_id, b)| b.occurred_at.cmp(&a.occurred_at).then_with(|| a_id.cmp(b_id)));
                prop_assert_eq!(store.committed_view().snapshot().activities_of(company, user, usize::MAX).expect("reads"), expected);
            }
        }
    }
}

#[test]
fn activities_of_a_user_come_latest_first_and_bounded() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    let entry = |user: &str, millis| LedgerEntry {
        user_id: user.into(),
        crm_user_id: "crm".into(),
        team_id: "t".into(),
        activity_type: "Sale".into(),
        value: Some(1.0),
        occurred_at: Timestamp(millis),
    };
    let changes: Vec<StateChange> = [("a1", "u1", 10), ("a2", "u1", 30), ("a3", "u2", 40), ("a4", "u1", 20)]
        .into_iter()
        .map(|(activity_id, user, millis)| StateChange::PutLedger {
            company_id: "acme".into(),
            activity_id: activity_id.into(),
            entry: entry(user, millis),
        })
        .collect();
    store.stage(&changes).expect("stages");
    assert!(
        store.committed_view().snapshot().activities_of("acme", "u1", 10).expect("reads").is_empty(),
        "staged writes are not answered"
    );
    store.commit(&[], None).expect("commits");
    let ids: Vec<String> = store
        .committed_view()
        .snapshot()
        .activities_of("acme", "u1", 2)
        .expect("reads")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["a2", "a4"]);
}

fn trace(object_id: &str, event_id: &str) -> crmflow_domain::CrmChangeExplanation {
    crmflow_domain::CrmChangeExplanation {
        event_id: event_id.into(),
        company_id: "acme".into(),
        integration_id: "sf".into(),
        object_type: "Opportunity".into(),
        object_id: object_id.into(),
        operation: crmflow_domain::Operation::Updated,
        duplicate: false,
        workflows: Vec::new(),
    }
}

fn kept(store: &StateStore, object_id: &str) -> Option<String> {
    store
        .committed_view()
        .snapshot()
        .explanation("acme", "sf", "Opportunity", object_id)
        .expect("reads")
        .map(|k| k.explanation.event_id)
}

#[test]
fn the_last_trace_per_record_is_kept_bounded_and_never_changelogged() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    store.stage_explanation(&trace("o1", "e1"), 2).expect("stages");
    assert_eq!(kept(&store, "o1"), None, "staged traces are not answered");
    assert!(store.changelog_records(&[]).expect("lists").is_empty(), "traces stay local");
    store.commit(&[], None).expect("commits");
    assert_eq!(kept(&store, "o1").as_deref(), Some("e1"));

    // o1 traced again: its newer trace survives when its first sequence number is forgotten.
    store.stage_explanation(&trace("o2", "e2"), 2).expect("stages");
    store.stage_explanation(&trace("o1", "e3"), 2).expect("stages");
    store.commit(&[], None).expect("commits");
    assert_eq!(kept(&store, "o1").as_deref(), Some("e3"));
    assert_eq!(kept(&store, "o2").as_deref(), Some("e2"));

    // A discarded trace takes no sequence number; a reopened store goes on where it was.
    store.stage_explanation(&trace("o9", "e9"), 2).expect("stages");
    store.discard_staged();
    drop(store);
    let mut store = open(&dir);
    store.stage_explanation(&trace("o3", "e4"), 2).expect("stages");
    store.commit(&[], None).expect("commits");
    assert_eq!(kept(&store, "o9"), None);
    assert_eq!(kept(&store, "o2"), None, "the oldest is forgotten beyond the capacity");
    assert_eq!(kept(&store, "o1").as_deref(), Some("e3"));
    assert_eq!(kept(&store, "o3").as_deref(), Some("e4"));
    assert_eq!(
        store
            .committed_view()
            .snapshot()
            .explanation("acme", "sf", "Opportunity", "o3")
            .expect("reads")
            .map(|k| k.sequence),
        Some(3)
    );
}

/// The changelog carries no `seen_order`: a restore rebuilds it from the seen ids' sequence
/// numbers, and the restored store forgets the same ids in the same order as the original.
#[test]
fn a_restored_store_forgets_seen_ids_in_the_same_order() {
    let options = StoreOptions { seen_capacity: 3, ..StoreOptions::default() };
    let source_dir = TempDir::new().expect("temp dir");
    let mut source = open_with(&source_dir, options.clone());
    let target_dir = TempDir::new().expect("temp dir");
    let mut target = open_with(&target_dir, options);
    let events = ["e1", "e2", "e3", "e4", "e5", "e6", "e7"];
    for batch in [&events[..2], &events[2..3], &events[3..5]] {
        let changes: Vec<StateChange> = batch.iter().map(|e| remember("acme", e)).collect();
        source.stage(&changes).expect("stages");
        let records = source.changelog_records(&[]).expect("lists");
        assert!(records.iter().all(|r| !r.key.starts_with(b"seen_order")), "the order stays local");
        source.commit(&[], None).expect("commits");
        target.restore_all(records.iter().map(|r| (&r.key[..], r.value.as_deref()))).expect("restores");
    }
    for store in [&mut source, &mut target] {
        store.stage(&[remember("acme", "e6"), remember("acme", "e7")]).expect("stages");
        store.commit(&[], None).expect("commits");
    }
    for event in events {
        assert_eq!(
            target.has_seen("acme", event).expect("reads"),
            source.has_seen("acme", event).expect("reads"),
            "{event}"
        );
    }
    assert!(target.has_seen("acme", "e5").expect("reads") && !target.has_seen("acme", "e4").expect("reads"));
}

/// Changelogs written before the lean format hold `seen_order` records and empty `seen` values:
/// they still restore.
#[test]
fn changelogs_with_seen_order_records_still_restore() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(&dir);
    let records: [(&[u8], Option<&[u8]>); 2] =
        [(b"seen\0acme\0e1", Some(b"")), (b"seen_order\0\0\0\0\0\0\0\0\0", Some(b"acme\0e1"))];
    store.restore_all(records).expect("restores");
    assert!(store.has_seen("acme", "e1").expect("reads"));
}

/// A store of an earlier version, with the `explanation_order` family, opens; the family is
/// dropped and the traces it ordered are still forgotten oldest first.
#[test]
fn a_store_with_the_obsolete_trace_order_family_opens_without_it() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    store.stage_explanation(&trace("o1", "e1"), 2).expect("stages");
    store.stage_explanation(&trace("o2", "e2"), 2).expect("stages");
    store.commit(&[], None).expect("commits");
    drop(store);
    let path = dir.path().join("0");
    {
        let mut options = Options::default();
        options.create_missing_column_families(true);
        let mut names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        names.push("explanation_order");
        DB::open_cf(&options, &path, names).expect("opens with the old family");
    }
    assert!(DB::list_cf(&Options::default(), &path).expect("lists").iter().any(|n| n == "explanation_order"));
    let mut store = open(&dir);
    assert!(!DB::list_cf(&Options::default(), &path).expect("lists").iter().any(|n| n == "explanation_order"));
    store.stage_explanation(&trace("o3", "e3"), 2).expect("stages");
    store.commit(&[], None).expect("commits");
    assert_eq!(kept(&store, "o1"), None, "the oldest is forgotten");
    assert_eq!(kept(&store, "o2").as_deref(), Some("e2"));
    assert_eq!(kept(&store, "o3").as_deref(), Some("e3"));
}

/// A ledger write: an activity accepted for a user at a date, or retracted.
fn ledger_write() -> impl Strategy<Value = StateChange> {
    let entry = (id(), 0i64..3).prop_map(|(user_id, millis)| ledger_entry(user_id, millis));
    prop_oneof![
        (id(), entry).prop_map(|(activity_id, entry)| StateChange::PutLedger {
            company_id: "acme".into(),
            activity_id,
            entry
        }),
        id().prop_map(|activity_id| StateChange::RemoveLedger { company_id: "acme".into(), activity_id }),
    ]
}

/// A user's activities as the ledger holds them, latest first, then by activity id.
fn expected_activities(ledger: &BTreeMap<String, LedgerEntry>, user: &str) -> Vec<(String, LedgerEntry)> {
    let mut expected: Vec<(String, LedgerEntry)> =
        ledger.iter().filter(|(_, entry)| entry.user_id == user).map(|(id, e)| (id.clone(), e.clone())).collect();
    expected.sort_by(|(a_id, a), (b_id, b)| b.occurred_at.cmp(&a.occurred_at).then_with(|| a_id.cmp(b_id)));
    expected
}

proptest! {
    /// The by-user index follows the ledger through revisions that move an activity to another
    /// user or date, retractions, several batches, and a restore from the changelog, which
    /// carries no index records.
    #[test]
    fn a_users_activities_follow_the_ledger_through_writes_and_restores(
        batches in prop::collection::vec(prop::collection::vec(ledger_write(), 1..6), 1..5),
    ) {
        let source_dir = TempDir::new().expect("temp dir");
        let mut source = open(&source_dir);
        let target_dir = TempDir::new().expect("temp dir");
        let target = open(&target_dir);
        let mut ledger = BTreeMap::new();
        for batch in &batches {
            source.stage(batch).expect("stages");
            let records = source.changelog_records(&[]).expect("lists");
            prop_assert!(records.iter().all(|r| !r.key.starts_with(b"user_activities")), "the index stays local");
            source.commit(&[], None).expect("commits");
            target.restore_all(records.iter().map(|r| (&r.key[..], r.value.as_deref()))).expect("restores");
            for change in batch {
                match change.clone() {
                    StateChange::PutLedger { activity_id, entry, .. } => ledger.insert(activity_id, entry),
                    StateChange::RemoveLedger { activity_id, .. } => ledger.remove(&activity_id),
                    other => unreachable!("not generated: {other:?}"),
                };
            }
        }
        for user in IDS {
            let expected = expected_activities(&ledger, user);
            for store in [&source, &target] {
                let view = store.committed_view();
                prop_assert_eq!(&view.snapshot().activities_of("acme", user, usize::MAX).expect("reads"), &expected);
                let latest = view.snapshot().activities_of("acme", user, 1).expect("reads");
                prop_assert_eq!(&latest[..], &expected[..expected.len().min(1)]);
            }
        }
    }
}

#[test]
fn a_store_from_before_the_by_user_index_is_indexed_when_opened() {
    let dir = TempDir::new().expect("temp dir");
    let entry = |user: &str, millis| ledger_entry(user.into(), millis);
    let mut store = open(&dir);
    let put = |activity: &str, user: &str, millis| StateChange::PutLedger {
        company_id: "acme".into(),
        activity_id: activity.into(),
        entry: entry(user, millis),
    };
    store.stage(&[put("a1", "u1", 10), put("a2", "u1", 20), put("a3", "u2", 5)]).expect("stages");
    store.commit(&[], None).expect("commits");
    drop(store);
    // Take the index away, as a store written before it has none.
    let path = dir.path().join("0");
    let names = DB::list_cf(&Options::default(), &path).expect("lists families");
    let mut db = DB::open_cf(&Options::default(), &path, &names).expect("opens");
    db.drop_cf(Family::UserActivities.name()).expect("drops the index");
    drop(db);

    let store = open(&dir);
    let view = store.committed_view();
    let ids: Vec<String> =
        view.snapshot().activities_of("acme", "u1", 10).expect("reads").into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["a2", "a1"]);
}

#[test]
fn a_query_reads_one_committed_batch_and_never_the_stage() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = open(&dir);
    let account = StateChange::PutAccount {
        company_id: "acme".into(),
        integration_id: "sf".into(),
        crm_user_id: "crm1".into(),
        account: Account { user_id: "u1".into() },
    };
    store.stage(&[account]).expect("stages");
    store.commit(&[], None).expect("commits");
    let view = store.committed_view();
    let before = view.snapshot();
    store.stage(&[put_team("acme", "u1", "t1")]).expect("stages");
    let team = |snapshot: &CommittedSnapshot<'_>| {
        snapshot.provisioned_user("acme", "sf", "crm1").expect("reads").and_then(|user| user.team_id)
    };
    assert_eq!(team(&view.snapshot()), None, "staged writes are not answered");
    store.commit(&[], None).expect("commits");
    assert_eq!(team(&view.snapshot()), Some("t1".to_owned()));
    assert_eq!(team(&before), None, "a snapshot keeps the batch it was taken at");
}

#[test]
fn a_decision_whose_changelog_record_would_be_too_large_is_staged_not_at_all() {
    let dir = TempDir::new().expect("temp dir");
    let options = StoreOptions { max_changelog_record_bytes: 1_000, ..StoreOptions::default() };
    let mut store = open_with(&dir, options);
    let large = StateChange::PutIntegration {
        company_id: "acme".into(),
        integration_id: "sf".into(),
        integration: Integration { crm: "x".repeat(1_000), ..Integration::default() },
    };
    let error = store.stage(&[put_team("acme", "u1", "t1"), large]).expect_err("too large");
    assert!(
        matches!(&error, StoreError::TooLarge { family: "integrations", limit: 1_000, bytes, .. } if *bytes > 1_000),
        "{error}"
    );
    assert!(error.to_string().contains("max.message.bytes"), "the message names the limits: {error}");
    let long_id = "e".repeat(1_000);
    assert!(matches!(store.stage(&[remember("acme", &long_id)]), Err(StoreError::TooLarge { family: "seen", .. })));
    assert_eq!(store.team_of("acme", "u1").expect("reads"), None, "nothing of the refused decisions is staged");
    assert!(store.changelog_records(&[]).expect("lists").is_empty());
    store.stage(&[put_team("acme", "u1", "t1")]).expect("a small write still stages");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// `check_changelog_record_sizes` (what `crmflow simulate` applies) refuses exactly the
    /// decisions the store refuses to stage.
    #[test]
    fn the_size_rule_without_a_store_is_the_stores(
        changes in prop::collection::vec(prop_oneof![
            (0usize..120).prop_map(|n| put_integration("acme", "sf", &"x".repeat(n))),
            (0usize..120).prop_map(|n| put_team("acme", "u1", &"t".repeat(n))),
            (0usize..120).prop_map(|n| remember("acme", &"e".repeat(n))),
            (0usize..120).prop_map(|n| StateChange::RemoveTeam { company_id: "acme".into(), user_id: "u".repeat(n) }),
        ], 1..4),
    ) {
        let dir = TempDir::new().expect("temp dir");
        let limit = 100;
        let mut store = open_with(&dir, StoreOptions { max_changelog_record_bytes: limit, ..StoreOptions::default() });
        let staged = store.stage(&changes);
        let checked = check_changelog_record_sizes(&changes, limit);
        prop_assert_eq!(staged.is_err(), checked.is_err(), "{:?} / {:?}", staged, checked);
    }
}
