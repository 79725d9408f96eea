//! Decision traces: `explain` decides exactly as `decide` does, and says why.

use std::collections::BTreeMap;

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

fn saved(workflow: serde_json::Value) -> InputEvent {
    InputEvent::WorkflowSaved(WorkflowSaved {
        company_id: COMPANY.into(),
        integration_id: INTEGRATION.into(),
        changed_at: ts(0),
        workflow: serde_json::from_value(workflow).unwrap(),
    })
}

/// Workflows that between them reach every rule: conditions, inactive, other object
/// type, a trigger subset, and a user field the records lack.
fn workflows() -> Vec<InputEvent> {
    let base = |id: &str| {
        serde_json::json!({
            "workflow_id": id, "name": id, "active": true, "object_type": "Opportunity",
            "triggers": ["created", "updated", "deleted"], "activity_type": "Sale",
            "user_field": "OwnerId", "value_field": "Amount"
        })
    };
    let with = |id: &str, extra: serde_json::Value| {
        let mut w = base(id);
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        saved(w)
    };
    vec![
        with("w1", serde_json::json!({"conditions": [{"field": "Amount", "op": "gte", "value": 1000}]})),
        with("w2", serde_json::json!({"conditions": [{"field": "Stage", "op": "in", "value": ["Won", "Closed"]}]})),
        with("w3", serde_json::json!({"active": false})),
        with("w4", serde_json::json!({"object_type": "Lead"})),
        with("w5", serde_json::json!({"triggers": ["created"]})),
        with("w6", serde_json::json!({"user_field": "Closer"})),
    ]
}

fn change(event_id: &str, object_id: &str, operation: Operation, fields: serde_json::Value) -> InputEvent {
    InputEvent::CrmRecordChanged(CrmRecordChanged {
        event_id: event_id.into(),
        company_id: COMPANY.into(),
        integration_id: INTEGRATION.into(),
        object_type: "Opportunity".into(),
        object_id: object_id.into(),
        operation,
        occurred_at: ts(1),
        fields: serde_json::from_value(fields).unwrap(),
        users: None,
    })
}

fn user(owner: u8) -> String {
    ids::user_id(COMPANY, INTEGRATION, &format!("005{owner}"))
}

/// One generated input.
#[derive(Debug, Clone)]
enum Step {
    Change { event: u8, record: u8, owner: Option<u8>, amount: Option<i64>, stage: u8, op: u8 },
    Place { owner: u8, team: u8 },
    Unplace { owner: u8, team: u8 },
    AutoSync(bool),
    DeleteWorkflow(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..30, 0u8..4, prop::option::weighted(0.9, 0u8..4), prop::option::of(0i64..3000), 0u8..3, 0u8..3)
            .prop_map(|(event, record, owner, amount, stage, op)| Step::Change { event, record, owner, amount, stage, op }),
        2 => (0u8..4, 0u8..2).prop_map(|(owner, team)| Step::Place { owner, team }),
        1 => (0u8..4, 0u8..2).prop_map(|(owner, team)| Step::Unplace { owner, team }),
        1 => any::<bool>().prop_map(Step::AutoSync),
        1 => (0u8..8).prop_map(Step::DeleteWorkflow),
    ]
}

fn to_event(step: &Step, at: i64) -> InputEvent {
    match step {
        Step::Change { event, record, owner, amount, stage, op } => {
            let mut fields = BTreeMap::new();
            if let Some(owner) = owner {
                fields.insert("OwnerId".to_string(), Scalar::Text(format!("005{owner}")));
            }
            if let Some(amount) = amount {
                fields.insert("Amount".to_string(), Scalar::Int(*amount));
            }
            fields.insert("Stage".to_string(), Scalar::Text(["Won", "Lost", "Closed"][*stage as usize].into()));
            let operation = [Operation::Created, Operation::Updated, Operation::Deleted][*op as usize];
            let mut e = change(&format!("e{event}"), &format!("006{record}"), operation, serde_json::json!({}));
            if let InputEvent::CrmRecordChanged(c) = &mut e {
                c.fields = fields;
                c.occurred_at = ts(at);
            }
            e
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
        Step::AutoSync(on) => settings(*on),
        Step::DeleteWorkflow(n) => InputEvent::WorkflowDeleted(WorkflowDeleted {
            company_id: COMPANY.into(),
            integration_id: INTEGRATION.into(),
            workflow_id: format!("w{n}"),
            changed_at: ts(at),
        }),
    }
}

fn explained(state: &MemoryState, event: &InputEvent) -> (Decision, Explanation) {
    match explain(state, event) {
        Ok(explained) => explained,
        Err(never) => match never {},
    }
}

/// Runs the events through `process` and returns each one's explanation.
fn explain_all(events: &[InputEvent]) -> Vec<Explanation> {
    let mut state = MemoryState::default();
    events
        .iter()
        .map(|event| {
            let (_, explanation) = explained(&state, event);
            state.process(event);
            explanation
        })
        .collect()
}

fn crm(explanation: &Explanation) -> &CrmChangeExplanation {
    match explanation {
        Explanation::CrmRecordChanged(x) => x,
        other => panic!("not a CRM change trace: {other:?}"),
    }
}

fn workflow<'a>(explanation: &'a Explanation, id: &str) -> &'a WorkflowExplanation {
    crm(explanation).workflows.iter().find(|w| w.workflow_id == id).unwrap()
}

proptest! {
    #[test]
    fn explain_decides_exactly_as_decide(steps in prop::collection::vec(step(), 0..100)) {
        let mut events = vec![settings(true)];
        events.extend(workflows());
        events.extend(steps.iter().enumerate().map(|(i, s)| to_event(s, i as i64)));
        let mut state = MemoryState::default();
        for event in &events {
            let decided = match decide(&state, event) {
                Ok(decision) => decision,
                Err(never) => match never {},
            };
            let (explained_decision, explanation) = explained(&state, event);
            prop_assert_eq!(&explained_decision, &decided);

            // Every output is linked from exactly one workflow, and nothing else is.
            let mut linked: Vec<String> = match &explanation {
                Explanation::CrmRecordChanged(x) => {
                    x.workflows.iter().flat_map(|w| w.outputs.iter().map(|o| o.event_id.clone())).collect()
                }
                _ => Vec::new(),
            };
            let mut published: Vec<String> = decided.outputs.iter().map(|o| o.event_id().to_owned()).collect();
            linked.sort();
            published.sort();
            prop_assert_eq!(linked, published);

            prop_assert_eq!(explanation.company_id(), event.company_id());
            let json = serde_json::to_string(&explanation).unwrap();
            prop_assert_eq!(serde_json::from_str::<Explanation>(&json).unwrap(), explanation);
            state.apply(decided.changes);
        }
    }
}

#[test]
fn a_failed_condition_is_named_with_field_operator_expected_and_actual() {
    let mut events = vec![settings(true)];
    events.extend(workflows());
    events.push(change("e1", "006A", Operation::Created, serde_json::json!({"OwnerId": "0051", "Amount": 500})));
    let explanations = explain_all(&events);
    let last = explanations.last().unwrap();

    let w1 = workflow(last, "w1");
    assert_eq!(w1.rule, Rule::ConditionFailed);
    assert_eq!(
        w1.conditions,
        vec![ConditionCheck {
            field: "Amount".into(),
            op: Operator::Gte,
            expected: Some(ConditionValue::One(Scalar::Int(1000))),
            actual: Some(Scalar::Int(500)),
            held: false,
        }]
    );
    // An absent field is named as such.
    let w2 = workflow(last, "w2");
    assert_eq!(
        (w2.conditions[0].field.as_str(), &w2.conditions[0].actual, w2.rule),
        ("Stage", &None, Rule::ConditionFailed)
    );
    let json = serde_json::to_value(w1).unwrap();
    assert_eq!(
        json["conditions"][0],
        serde_json::json!({"field": "Amount", "op": "gte", "expected": 1000, "actual": 500, "held": false})
    );
    assert_eq!(json["rule"], "condition_failed");
}

#[test]
fn every_workflow_says_which_rule_decided_it() {
    let mut events = vec![settings(true)];
    events.extend(workflows());
    let fields = serde_json::json!({"OwnerId": "0051", "Amount": 1500, "Stage": "Won"});
    events.push(change("e1", "006A", Operation::Created, fields.clone()));
    events.push(change("e1", "006A", Operation::Created, fields.clone()));
    events.push(InputEvent::UserAssignedToTeam(UserAssignedToTeam {
        company_id: COMPANY.into(),
        user_id: user(1),
        team_id: "east".into(),
        changed_at: ts(2),
    }));
    events.push(change("e2", "006A", Operation::Updated, serde_json::json!({"OwnerId": "0051", "Amount": 1700})));
    events.push(change("e3", "006A", Operation::Deleted, serde_json::json!({})));
    let x = explain_all(&events);
    let rules = |x: &Explanation| {
        crm(x).workflows.iter().map(|w| (w.workflow_id.clone(), w.rule.to_string())).collect::<Vec<_>>()
    };
    let pairs = |p: &[(&str, &str)]| p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();

    // First change: the owner is provisioned by w1 and is on no team.
    let first = &x[7];
    assert_eq!(
        rules(first),
        pairs(&[
            ("w1", "ignored:user_not_on_team"),
            ("w2", "ignored:user_not_on_team"),
            ("w3", "inactive"),
            ("w4", "other_object_type"),
            ("w5", "ignored:user_not_on_team"),
            ("w6", "ignored:missing_user_field"),
        ])
    );
    let w1 = workflow(first, "w1");
    assert!(w1.provisioned && w1.user_id.as_deref() == Some(user(1).as_str()));
    let types: Vec<&str> = w1.outputs.iter().map(|o| o.output_type.as_str()).collect();
    assert_eq!(types, ["UserProvisioned", "ActivityIgnored"]);
    assert!(workflow(first, "w2").outputs.iter().all(|o| o.output_type == "ActivityIgnored"), "provisioned once");

    // The resend is a duplicate and considers no workflow.
    assert!(crm(&x[8]).duplicate && crm(&x[8]).workflows.is_empty());

    // Placed on a team: w1 records; w2's stage condition fails; w5 only reacts to creations.
    let placed = &x[10];
    assert_eq!(rules(placed)[..2], pairs(&[("w1", "recorded"), ("w2", "condition_failed")])[..]);
    assert_eq!(workflow(placed, "w1").team_id.as_deref(), Some("east"));
    assert_eq!(workflow(placed, "w5").rule, Rule::OperationNotATrigger);

    // Deleted: the live activity is retracted, the others had nothing live.
    let deleted = &x[11];
    assert_eq!(workflow(deleted, "w1").rule, Rule::Deleted);
    assert_eq!(workflow(deleted, "w1").outputs.len(), 1);
    assert!(workflow(deleted, "w1").conditions.is_empty(), "conditions are not evaluated on deletion");
}

#[test]
fn configuration_events_say_what_they_changed() {
    let removal = |team: &str| {
        InputEvent::UserRemovedFromTeam(UserRemovedFromTeam {
            company_id: COMPANY.into(),
            user_id: user(1),
            team_id: team.into(),
            changed_at: ts(3),
        })
    };
    let mut events = vec![settings(true)];
    events.extend(workflows().into_iter().take(1));
    events.extend(workflows().into_iter().take(1));
    events.push(InputEvent::WorkflowDeleted(WorkflowDeleted {
        company_id: COMPANY.into(),
        integration_id: INTEGRATION.into(),
        workflow_id: "nope".into(),
        changed_at: ts(2),
    }));
    events.push(InputEvent::UserAssignedToTeam(UserAssignedToTeam {
        company_id: COMPANY.into(),
        user_id: user(1),
        team_id: "east".into(),
        changed_at: ts(2),
    }));
    events.push(removal("west"));
    events.push(removal("east"));
    let effects: Vec<Effect> = explain_all(&events)
        .iter()
        .map(|x| match x {
            Explanation::CrmRecordChanged(_) => panic!("no CRM change here"),
            Explanation::IntegrationSettingsChanged(c)
            | Explanation::WorkflowSaved(c)
            | Explanation::WorkflowDeleted(c)
            | Explanation::UserAssignedToTeam(c)
            | Explanation::UserRemovedFromTeam(c) => c.effect,
        })
        .collect();
    assert_eq!(
        effects,
        [
            Effect::SettingsReplaced,
            Effect::WorkflowAdded,
            Effect::WorkflowReplaced,
            Effect::WorkflowNotFound,
            Effect::PlacedOnTeam,
            Effect::NotOnThatTeam,
            Effect::RemovedFromTeam,
        ]
    );
}
