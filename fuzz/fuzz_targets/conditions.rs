//! Condition evaluation: a workflow's conditions against an arbitrary record, on arbitrary
//! bytes read as `{"conditions": [...], "fields": {...}}` (a workflow's `conditions` and a
//! CrmRecordChanged's `fields`, parsed as the decoders parse them).
//!
//! Invariants: never panics, for valid and invalid conditions alike; a workflow matches exactly
//! when all its conditions hold; the operators obey their laws for the record's value, for an
//! absent field and for every other value of the record (eq/ne, in/not_in and exists/not_exists
//! are complements, gte = gt or eq, lte = lt or eq, an absent or null field satisfies exactly
//! ne, not_in and not_exists); comparing two values is reflexive and symmetric (gt is lt swapped,
//! in [b] is eq b, a value contains and starts with itself).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

use crmflow_domain::{Condition, Operation, Scalar, Workflow};
use crmflow_fuzz::check_workflow_on;

#[derive(Deserialize)]
struct Case {
    conditions: Vec<Condition>,
    #[serde(default)]
    fields: BTreeMap<String, Scalar>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(case) = serde_json::from_slice::<Case>(data) else { return };
    let workflow = Workflow {
        workflow_id: "w".into(),
        name: "w".into(),
        active: true,
        object_type: "O".into(),
        triggers: vec![Operation::Created],
        conditions: case.conditions,
        activity_type: "A".into(),
        user_field: "OwnerId".into(),
        value_field: None,
        occurred_at_field: None,
    };
    check_workflow_on(&workflow, &case.fields);
});
