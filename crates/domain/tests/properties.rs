//! Invariants of the decision core over generated event streams.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use crmflow_domain::*;

const COMPANY: &str = "acme";
const INTEGRATION: &str = "sf";

fn ts(seconds: i64) -> Timestamp {
    Timestamp(1_714_557_600_000 + seconds * 1000)
}

fn settings(auto_sync_users: bool) -> InputEvent {
    InputEvent::IntegrationSettingsChanged(IntegrationSettingsChanged {
        company_id: COMPANY.into(),
        integration_id: INTEGRATION.into(),
        crm: "salesforce".into(),
        auto_sync_users,
        changed_at: ts(0),
    })
}

fn workflow(id: &str, min_amount: i64) -> InputEvent {
    InputEvent::WorkflowSaved(WorkflowSaved {
        company_id: COMPANY.into(),
        integration_id: INTEGRATION.into(),
        changed_at: ts(0),
        workflow: Workflow {
            workflow_id: id.into(),
            name: id.into(),
            active: true,
            object_type: "Opportunity".into(),
            triggers: vec![Operation::Created, Operation::Updated, Operation::Deleted],
            conditions: vec![Condition {
                field: "Amount".into(),
                op: Operator::Gte,
                value: Some(ConditionValue::One(Scalar::Int(min_amount))),
            }],
            activity_type: "Sale".into(),
            user_field: "OwnerId".into(),
            value_field: Some("Amount".into()),
            occurred_at_field: None,
        },
    })
}

/// One generated input: a CRM change, or a team placement of a CRM user's account.
#[derive(Debug, Clone)]
enum Step {
    Change { event: u8, record: u8, owner: u8, amount: i64, op: u8 },
    Place { owner: u8, team: u8 },
    Unplace { owner: u8, team: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..30, 0u8..5, 0u8..4, 0i64..3000, 0u8..3)
            .prop_map(|(event, record, owner, amount, op)| Step::Change { event, record, owner, amount, op }),
        2 => (0u8..4, 0u8..2).prop_map(|(owner, team)| Step::Place { owner, team }),
        1 => (0u8..4, 0u8..2).prop_map(|(owner, team)| Step::Unplace { owner, team }),
    ]
}

fn to_event(step: &Step, at: i64) -> InputEvent {
    let user = |owner: u8| ids::user_id(COMPANY, INTEGRATION, &format!("005{owner}"));
    match step {
        Step::Change { event, record, owner, amount, op } => {
            let mut fields = BTreeMap::new();
            fields.insert("OwnerId".to_string(), Scalar::Text(format!("005{owner}")));
            fields.insert("Amount".to_string(), Scalar::Int(*amount));
            InputEvent::CrmRecordChanged(CrmRecordChanged {
                event_id: format!("e{event}"),
                company_id: COMPANY.into(),
                integration_id: INTEGRATION.into(),
                object_type: "Opportunity".into(),
                object_id: format!("006{record}"),
                operation: [Operation::Created, Operation::Updated, Operation::Deleted][*op as usize],
                occurred_at: ts(at),
                fields,
                users: None,
            })
        }
        Step::Place { owner, team } => InputEvent::UserAssignedToTeam(UserAssignedToTeam {
            company_id: COMPANY.into(),
            user_id: user(*owner),
            team_id: format!("team{team}"),
            changed_at: ts(at),
        }),
        Step::Unplace { owner, team } => InputEvent::UserRemovedFromTeam(UserRemovedFromTeam {
            company_id: COMPANY.into(),
            user_id: user(*owner),
            team_id: format!("team{team}"),
            changed_at: ts(at),
        }),
    }
}

fn stream(steps: &[Step]) -> Vec<InputEvent> {
    let mut events = vec![settings(true), workflow("w1", 1000), workflow("w2", 0)];
    events.extend(steps.iter().enumerate().map(|(i, s)| to_event(s, i as i64)));
    events
}

fn run(state: &mut MemoryState, events: &[InputEvent]) -> Vec<OutputEvent> {
    events.iter().flat_map(|e| state.process(e).outputs).collect()
}

proptest! {
    #[test]
    fn a_crm_user_is_provisioned_at_most_once(steps in prop::collection::vec(step(), 0..120)) {
        let outputs = run(&mut MemoryState::default(), &stream(&steps));
        let mut provisioned: HashMap<(String, String, String), usize> = HashMap::new();
        for out in &outputs {
            if let OutputEvent::UserProvisioned(p) = out {
                *provisioned.entry((p.company_id.clone(), p.integration_id.clone(), p.crm_user_id.clone())).or_default() += 1;
            }
        }
        prop_assert!(provisioned.values().all(|n| *n == 1), "{provisioned:?}");
    }

    #[test]
    fn same_input_same_start_gives_byte_identical_output(steps in prop::collection::vec(step(), 0..120)) {
        let events = stream(&steps);
        let first = serde_json::to_string(&run(&mut MemoryState::default(), &events)).unwrap();
        let second = serde_json::to_string(&run(&mut MemoryState::default(), &events)).unwrap();
        prop_assert_eq!(first, second);
    }

    #[test]
    fn replaying_processed_changes_emits_nothing_new(steps in prop::collection::vec(step(), 0..80)) {
        // Connectors resend: a second pass over the same CRM changes is all duplicates.
        let events = stream(&steps);
        let mut state = MemoryState::default();
        run(&mut state, &events);
        let changes: Vec<InputEvent> = events.into_iter().filter(|e| matches!(e, InputEvent::CrmRecordChanged(_))).collect();
        let again: Vec<OutputEvent> = run(&mut state, &changes);
        prop_assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn each_activity_alternates_recorded_and_retracted(steps in prop::collection::vec(step(), 0..120)) {
        let mut live: HashMap<String, bool> = HashMap::new();
        for out in run(&mut MemoryState::default(), &stream(&steps)) {
            if let OutputEvent::ActivityAccepted(a) = out {
                let is_live = live.entry(a.activity_id.clone()).or_default();
                match a.change {
                    Change::Recorded => { prop_assert!(!*is_live, "recorded twice: {}", a.activity_id); *is_live = true; }
                    Change::Revised => prop_assert!(*is_live, "revised while not live"),
                    Change::Retracted => { prop_assert!(*is_live, "retracted while not live"); *is_live = false; }
                }
            }
        }
    }
}
