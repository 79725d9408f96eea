//! crmflow against librdkafka's mock cluster (`crmflow dev-broker`), exactly-once.

#[macro_use]
mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

scenario_tests!(BrokerKind::Mock);

fn line(topic: &str, timestamp: i64, value: serde_json::Value) -> String {
    serde_json::json!({"topic": topic, "key": "acme", "timestamp": timestamp, "value": value}).to_string()
}

/// A team placement that arrives after a CRM change but carries an earlier timestamp is applied first.
#[test]
fn inputs_are_merged_by_timestamp_not_arrival() {
    let broker = Broker::mock(1, &[]);
    let state = tempfile::tempdir().unwrap();
    let (setup, _) = scenario("seed-walkthrough");
    // Settings and workflow of acme/sf, then a first change that provisions 005A (not on a team yet).
    produce_lines(&broker, &setup[..3]);
    let mut processor = Processor::start(&broker, &state.path().join("state"), "ordering", &[]);
    let outputs = consume_outputs(&broker, 2, Duration::from_secs(30));
    assert_eq!(outputs.len(), 2, "provisioned and ignored:\n{}", processor.logs());

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let user = crmflow_domain::ids::user_id("acme", "sf", "005A");
    let change = line(
        "crm.changes",
        now,
        serde_json::json!({"type": "CrmRecordChanged", "event_id": "late-1", "company_id": "acme", "integration_id": "sf",
            "object_type": "Opportunity", "object_id": "006Z", "operation": "created", "occurred_at": "2024-05-02T10:00:00Z",
            "fields": {"OwnerId": "005A", "StageName": "Closed Won", "Amount": 10, "CloseDate": "2024-05-02"}}),
    );
    let placement = line(
        "team.assignments",
        now - 5_000,
        serde_json::json!({"type": "UserAssignedToTeam", "company_id": "acme", "user_id": user, "team_id": "oslo",
            "changed_at": "2024-05-02T09:59:55Z"}),
    );
    produce_lines(&broker, &[change]);
    std::thread::sleep(Duration::from_millis(300));
    produce_lines(&broker, &[placement]);

    let outputs = consume_outputs(&broker, 3, Duration::from_secs(30));
    processor.stop();
    assert_eq!(outputs.len(), 3, "{}", processor.logs());
    let late: Vec<serde_json::Value> = outputs
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).unwrap())
        .filter(|v| v["source_event_id"] == "late-1")
        .collect();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["type"], "ActivityAccepted", "decided after the earlier-stamped placement: {}", late[0]);
    assert_eq!(late[0]["team_id"], "oslo");
}

/// Runs the seed walk-through in two parts, with `between` done while the processor is stopped,
/// and checks the outputs of both runs together.
fn two_runs(application_id: &str, env: &[(&str, &str)], between: impl FnOnce(&Path)) -> String {
    let broker = Broker::mock(2, &[]);
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let (input, expected) = scenario("seed-walkthrough");
    let (first, rest) = input.split_at(4);
    produce_lines(&broker, first);
    let mut processor = Processor::start(&broker, &state_dir, application_id, env);
    assert_eq!(consume_outputs(&broker, 2, Duration::from_secs(30)).len(), 2);
    assert!(processor.stop().success(), "{}", processor.logs());
    between(&state_dir);

    produce_lines(&broker, rest);
    let mut processor = Processor::start(&broker, &state_dir, application_id, env);
    let actual = consume_outputs(&broker, expected.len(), Duration::from_secs(30));
    assert!(processor.stop().success(), "{}", processor.logs());
    compare(&expected, &actual).unwrap_or_else(|diff| panic!("{diff}\n{}", processor.logs()));
    processor.logs()
}

/// A restart reuses the state directory: nothing is re-emitted, and state carries over.
#[test]
fn restart_resumes_from_the_state_directory() {
    two_runs("restart", &[], |state_dir| {
        assert!(state_dir.read_dir().unwrap().next().is_some(), "state directory was written");
    });
}

/// Every topic in Avro single-object encoding: the same decisions as in JSON.
#[test]
fn avro_topics_give_the_same_decisions() {
    let broker = Broker::mock(4, &[]);
    let (input, expected) = scenario("owner-change");
    produce_lines_as(&broker, &input, crmflow_codec::Encoding::Avro);
    let state = tempfile::tempdir().unwrap();
    let topics = [
        "CRM_CHANGES",
        "INTEGRATION_SETTINGS",
        "TEAM_ASSIGNMENTS",
        "USERS_PROVISIONED",
        "ACTIVITIES_ACCEPTED",
        "ACTIVITIES_IGNORED",
    ];
    let names: Vec<String> = topics.iter().map(|t| format!("CRMFLOW_ENCODING__{t}")).collect();
    let env: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "avro")).collect();
    let mut processor = Processor::start(&broker, &state.path().join("state"), "avro", &env);
    let actual = consume_outputs(&broker, expected.len(), Duration::from_secs(60));
    assert!(processor.stop().success(), "{}", processor.logs());
    assert!(actual.iter().all(|r| r.value.starts_with(&[0xC3, 0x01])), "outputs are Avro single-object encoded");
    compare(&expected, &actual).unwrap_or_else(|diff| panic!("{diff}\n{}", processor.logs()));
}

/// A lost state directory is rebuilt from the input topics, without publishing anything twice.
/// At-least-once: the mock cluster does not keep offsets committed inside transactions.
#[test]
fn a_lost_state_directory_is_rebuilt_from_the_inputs() {
    let logs = two_runs("rebuild", &[("CRMFLOW_PROCESSING_GUARANTEE", "at_least_once")], |state_dir| {
        std::fs::remove_dir_all(state_dir).unwrap();
    });
    assert!(logs.contains("rebuilding"), "{logs}");
}
