//! Workflow definitions: a WorkflowSaved event's `workflow` object, parsed (serde, as the
//! decoders do) and validated (`Workflow::validate`), on arbitrary bytes.
//!
//! Invariants: never panics; a parse error has a message; an invalid workflow names itself and
//! the problem; a workflow round-trips through JSON, and inside a WorkflowSaved event through
//! Avro, unchanged and equally valid; the codec accepts the event exactly when the workflow is
//! valid (otherwise `contract_violation`, with the problem in the message), in JSON and in Avro;
//! its conditions obey the evaluation laws on an empty record.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

use crmflow_avro::SchemaRegistry;
use crmflow_codec::{decode_input, Encoding, ErrorKind};
use crmflow_domain::{InputEvent, InputStream, Workflow};
use crmflow_fuzz::{check_decode_error, check_input_event, check_workflow_on};

fuzz_target!(|data: &[u8]| {
    let workflow: Workflow = match serde_json::from_slice(data) {
        Ok(w) => w,
        Err(e) => {
            assert!(!e.to_string().trim().is_empty());
            return;
        }
    };
    let valid = workflow.validate();
    if let Err(invalid) = &valid {
        assert!(!invalid.problem.trim().is_empty(), "an invalid workflow without a problem");
        assert_eq!(invalid.workflow_id, workflow.workflow_id);
        assert!(invalid.to_string().contains(&invalid.problem));
    }

    let text = serde_json::to_vec(&workflow).expect("a workflow serializes");
    let back: Workflow = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("a workflow does not read back: {e}\n{}", String::from_utf8_lossy(&text)));
    assert_eq!(back, workflow, "JSON round trip changed the workflow");
    assert_eq!(back.validate(), valid);

    let event = json!({
        "type": "WorkflowSaved", "company_id": "c1", "integration_id": "i1",
        "changed_at": "2024-05-01T10:00:00Z", "workflow": workflow,
    });
    let avro = SchemaRegistry::bundled()
        .encode(&event)
        .unwrap_or_else(|e| panic!("a workflow does not fit the WorkflowSaved schema: {e}\n{event}"));
    let from_avro = SchemaRegistry::bundled().decode(&avro).expect("an encoded WorkflowSaved decodes");
    let back: Workflow = serde_json::from_value(from_avro.get("workflow").cloned().unwrap_or(Value::Null))
        .unwrap_or_else(|e| panic!("a workflow does not read back from Avro: {e}\n{from_avro}"));
    assert_eq!(back, workflow, "Avro round trip changed the workflow");

    let json = serde_json::to_vec(&event).expect("an event serializes");
    for (payload, encoding) in [(json.as_slice(), Encoding::Json), (avro.as_slice(), Encoding::Avro)] {
        match (decode_input(InputStream::Settings, Some(b"c1"), payload, encoding), &valid) {
            (Ok(InputEvent::WorkflowSaved(saved)), Ok(())) => {
                assert_eq!(saved.workflow, workflow, "{encoding:?}: the codec changed the workflow");
                check_input_event(InputStream::Settings, Some(b"c1"), &InputEvent::WorkflowSaved(saved));
            }
            (Err(e), Err(invalid)) => {
                check_decode_error(&e);
                assert_eq!(e.kind, ErrorKind::ContractViolation, "{encoding:?}: {e}");
                assert!(e.message.contains(&invalid.problem), "{encoding:?}: {e} does not say {invalid}");
            }
            (decoded, valid) => panic!("{encoding:?}: validate says {valid:?}, the codec {decoded:?}"),
        }
    }

    check_workflow_on(&workflow, &BTreeMap::new());
});
