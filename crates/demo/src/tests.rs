//! The stream's promises: reproducible, ordered, valid, and telling the whole story.

use std::collections::{BTreeMap, BTreeSet};

use crmflow_codec::{decode_input, decode_input_value, Encoding, Envelope, TopicNames};
use crmflow_domain::{Change, IgnoreReason, InputEvent, MemoryState, OutputEvent};

use super::*;

fn generate(config: DemoConfig, n: usize) -> Vec<DemoEvent> {
    DemoStream::new(config).take(n).collect()
}

#[test]
fn the_same_seed_gives_the_same_stream() {
    let config = DemoConfig::default();
    assert_eq!(generate(config, 3000), generate(config, 3000));
    let other = DemoConfig { seed: 7, ..config };
    assert_ne!(generate(config, 3000), generate(other, 3000));
}

#[test]
fn timestamps_are_evenly_spaced_and_never_decrease() {
    let config = DemoConfig { events_per_second: 3.0, ..DemoConfig::default() };
    let events = generate(config, 2000);
    assert_eq!(events[0].timestamp_ms, config.start_ms);
    for (i, pair) in events.windows(2).enumerate() {
        assert!(pair[0].timestamp_ms <= pair[1].timestamp_ms, "event {i}");
    }
    // 1999 gaps of 333.3 ms.
    assert_eq!(events[1999].timestamp_ms - config.start_ms, 666_333);
}

#[test]
fn every_event_keeps_the_contract() {
    for event in generate(DemoConfig::default(), 5000) {
        event.event.validate().unwrap_or_else(|e| panic!("{e}: {event:?}"));
    }
}

#[test]
fn event_ids_are_unique_except_for_resends() {
    let mut seen: BTreeMap<String, InputEvent> = BTreeMap::new();
    let mut resends = 0;
    for e in generate(DemoConfig::default(), 5000) {
        if let InputEvent::CrmRecordChanged(change) = &e.event {
            assert!(change.event_id.starts_with(&format!("{}-", change.company_id)));
            match seen.get(&change.event_id) {
                // A resend repeats the original exactly.
                Some(original) => {
                    assert_eq!(original, &e.event);
                    resends += 1;
                }
                None => {
                    seen.insert(change.event_id.clone(), e.event.clone());
                }
            }
        }
    }
    assert!(resends > 10, "{resends} resends");
}

#[test]
fn setup_comes_first_with_sync_off_somewhere_and_an_inactive_workflow() {
    let config = DemoConfig::default();
    let events = generate(config, 200);
    let integrations = config.companies * config.integrations_per_company;
    let setup = integrations * (1 + config.workflows_per_integration);
    let mut sync = Vec::new();
    let mut inactive = 0;
    let mut operators = BTreeSet::new();
    for e in &events[..setup] {
        match &e.event {
            InputEvent::IntegrationSettingsChanged(s) => sync.push((s.crm.clone(), s.auto_sync_users)),
            InputEvent::WorkflowSaved(w) => {
                inactive += usize::from(!w.workflow.active);
                operators.extend(w.workflow.conditions.iter().map(|c| format!("{:?}", c.op)));
            }
            other => panic!("setup holds only settings and workflows, got {other:?}"),
        }
    }
    assert_eq!(sync.len(), integrations);
    assert!(sync.iter().any(|(_, on)| !on) && sync.iter().filter(|(_, on)| *on).count() > integrations / 2);
    assert!(sync.iter().any(|(crm, _)| crm == "salesforce") && sync.iter().any(|(crm, _)| crm == "hubspot"));
    assert!(inactive >= 1);
    for op in ["Eq", "Gte", "In", "StartsWith"] {
        assert!(operators.contains(op), "{op} in {operators:?}");
    }
    assert!(events[setup..].iter().all(|e| e.event.stream() != crmflow_domain::InputStream::Settings));
    let companies: BTreeSet<&str> = events.iter().map(|e| e.event.company_id()).collect();
    assert_eq!(companies, BTreeSet::from(["acme", "globex", "initech"]));
}

/// What a viewer of the demo should see within a few thousand events.
#[test]
fn the_stream_tells_the_whole_story() {
    let mut state = MemoryState::default();
    let mut types = BTreeSet::new();
    let mut reasons = BTreeSet::new();
    let mut changes = BTreeSet::new();
    let mut duplicates = 0;
    // Users ignored as not on a team, and those of them accepted afterwards.
    let mut unplaced = BTreeSet::new();
    let mut placed_later = BTreeSet::new();
    let mut team_events = BTreeSet::new();
    for e in generate(DemoConfig::default(), 5000) {
        if matches!(e.event, InputEvent::UserAssignedToTeam(_) | InputEvent::UserRemovedFromTeam(_)) {
            team_events.insert(e.event.type_name());
        }
        let decision = state.process(&e.event);
        duplicates += decision.tally.duplicates;
        for out in decision.outputs {
            types.insert(out.type_name());
            match out {
                OutputEvent::ActivityIgnored(i) => {
                    reasons.insert(i.reason);
                    if i.reason == IgnoreReason::UserNotOnTeam {
                        unplaced.extend(i.user_id);
                    }
                }
                OutputEvent::ActivityAccepted(a) => {
                    changes.insert(a.change);
                    if unplaced.contains(&a.user_id) {
                        placed_later.insert(a.user_id);
                    }
                }
                OutputEvent::UserProvisioned(_) => {}
            }
        }
    }
    assert_eq!(types, BTreeSet::from(["UserProvisioned", "ActivityAccepted", "ActivityIgnored"]));
    assert_eq!(reasons, BTreeSet::from(IgnoreReason::ALL));
    assert_eq!(changes, BTreeSet::from([Change::Recorded, Change::Revised, Change::Retracted]));
    assert!(duplicates > 0);
    assert!(placed_later.len() >= 10, "{} users first ignored, then accepted", placed_later.len());
    assert_eq!(team_events, BTreeSet::from(["UserAssignedToTeam", "UserRemovedFromTeam"]));
}

#[test]
fn envelope_lines_replay_as_the_same_events() {
    let topics = TopicNames::default();
    for e in generate(DemoConfig::default(), 500) {
        let line = to_envelope_line(&e, &topics).unwrap();
        // Readable like the scenario files: the event's type first.
        assert!(line.contains(r#""value":{"type":""#), "{line}");
        let envelope: Envelope = serde_json::from_str(&line).unwrap();
        assert_eq!(envelope.timestamp, e.timestamp_ms);
        let stream = topics.input_stream(&envelope.topic).unwrap();
        let key = envelope.key.unwrap();
        let decoded = decode_input_value(stream, Some(key.as_bytes()), envelope.value).unwrap();
        assert_eq!(decoded, e.event);
    }
}

/// The benchmark feeds these events as Avro; they must survive the round trip.
#[test]
fn events_round_trip_through_avro() {
    let registry = crmflow_avro::SchemaRegistry::bundled();
    for e in generate(DemoConfig::default(), 1000) {
        let bytes = registry.encode(&serde_json::to_value(&e.event).unwrap()).unwrap();
        let key = e.event.company_id().as_bytes();
        let decoded = decode_input(e.event.stream(), Some(key), &bytes, Encoding::Avro).unwrap();
        assert_eq!(decoded, e.event);
    }
}

#[test]
fn degenerate_configs_do_not_panic() {
    let empty = DemoConfig { companies: 0, ..DemoConfig::default() };
    assert_eq!(DemoStream::new(empty).count(), 0);
    let no_users = DemoConfig { users_per_integration: 0, workflows_per_integration: 0, ..DemoConfig::default() };
    assert_eq!(generate(no_users, 300).len(), 300);
    let frozen = DemoConfig { events_per_second: 0.0, records_per_user: 0, ..DemoConfig::default() };
    assert!(generate(frozen, 300).iter().all(|e| e.timestamp_ms == frozen.start_ms));
    let big = DemoConfig {
        companies: 14,
        integrations_per_company: 5,
        workflows_per_integration: 8,
        ..DemoConfig::default()
    };
    for e in generate(big, 2000) {
        e.event.validate().unwrap();
    }
}
