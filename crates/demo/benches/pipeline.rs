//! Events per second through crmflow's hot path, single thread:
//! record bytes → `decode_input` → `MemoryState::process` → `encode_output` per output.
//!
//! The load is the demo stream at benchmark scale: 10 companies × 1 integration ×
//! 1000 CRM users × 5 workflows (10k users, 50 workflows). A long prefix of the stream
//! warms the state up (settings, workflows, team placements, provisioned accounts,
//! accepted activities), so the measured batch meets a steady state rather than an
//! empty one. Each iteration processes the same batch from a fresh clone of the
//! warmed state (cloned outside the timing): processing it twice on one state would
//! only measure the duplicate-event shortcut.
//!
//! The `core` group measures the decision core alone on the same batch: `decide` (what the
//! processor runs) against `explain` (the same decisions with their traces recorded).
//!
//! Run: `cargo bench -p crmflow-demo --bench pipeline`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use crmflow_codec::{decode_input, encode_output, Encoding};
use crmflow_demo::{DemoConfig, DemoStream};
use crmflow_domain::{explain, Explanation, InputEvent, InputStream, MemoryState};

/// Events of the stream processed before measuring; by then nearly every user has
/// appeared and been placed on a team.
const WARM_UP_EVENTS: usize = 100_000;
/// Events in the measured batch: small enough for a quick run, large enough that
/// per-iteration overhead vanishes.
const BATCH_EVENTS: usize = 5_000;

fn config() -> DemoConfig {
    DemoConfig {
        seed: 2024,
        companies: 10,
        integrations_per_company: 1,
        users_per_integration: 1_000,
        workflows_per_integration: 5,
        records_per_user: 3,
        ..DemoConfig::default()
    }
}

/// One pre-encoded Kafka record.
struct Record {
    stream: InputStream,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// The warmed-up state and the batch to measure.
fn workload() -> (MemoryState, Vec<InputEvent>) {
    let mut stream = DemoStream::new(config());
    let mut state = MemoryState::default();
    for e in stream.by_ref().take(WARM_UP_EVENTS) {
        state.process(&e.event);
    }
    let batch: Vec<InputEvent> = stream.take(BATCH_EVENTS).map(|e| e.event).collect();
    describe(&state, &batch);
    (state, batch)
}

/// Prints what the measured batch contains, so the figures can be read in context.
fn describe(state: &MemoryState, batch: &[InputEvent]) {
    let mut state = state.clone();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for event in batch {
        *counts.entry(event.type_name()).or_default() += 1;
        for out in state.process(event).outputs {
            *counts.entry(out.type_name()).or_default() += 1;
        }
    }
    eprintln!(
        "pipeline workload: {BATCH_EVENTS} input events after {WARM_UP_EVENTS} of warm-up \
         (ledger holds {} activities); counts: {counts:?}",
        state.ledger_len()
    );
}

fn encode(events: &[InputEvent], encoding: Encoding) -> Vec<Record> {
    let registry = crmflow_avro::SchemaRegistry::bundled();
    events
        .iter()
        .map(|event| {
            let payload = match encoding {
                Encoding::Json => serde_json::to_vec(event).expect("input events serialize to JSON"),
                Encoding::Avro => {
                    let value = serde_json::to_value(event).expect("input events serialize to JSON");
                    registry.encode(&value).expect("demo events fit their Avro schemas")
                }
            };
            Record { stream: event.stream(), key: event.company_id().as_bytes().to_vec(), payload }
        })
        .collect()
}

/// The measured loop: returns the bytes produced so nothing is optimised away.
fn run(state: &mut MemoryState, records: &[Record], encoding: Encoding) -> usize {
    let mut produced = 0;
    for record in records {
        let event =
            decode_input(record.stream, Some(&record.key), &record.payload, encoding).expect("demo events decode");
        let decision = state.process(&event);
        for out in &decision.outputs {
            produced += encode_output(out, encoding).expect("outputs encode").len();
        }
    }
    produced
}

fn pipeline(c: &mut Criterion) {
    let (state, events) = workload();
    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH_EVENTS as u64));
    for (name, encoding) in [("json", Encoding::Json), ("avro", Encoding::Avro)] {
        let records = encode(&events, encoding);
        group.bench_function(name, |b| {
            b.iter_batched(
                || state.clone(),
                // The state is handed back so criterion drops it after timing: freeing
                // a warmed-up state is not part of processing.
                |mut state| {
                    let produced = run(&mut state, &records, encoding);
                    (state, black_box(produced))
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// The decision core alone (no codec), so a change in `decide` shows undiluted.
fn core(c: &mut Criterion) {
    let (state, events) = workload();
    let mut group = c.benchmark_group("core");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH_EVENTS as u64));
    group.bench_function("decide", |b| {
        b.iter_batched(
            || state.clone(),
            |mut state| {
                let outputs: usize = events.iter().map(|event| state.process(event).outputs.len()).sum();
                (state, black_box(outputs))
            },
            BatchSize::PerIteration,
        )
    });
    // The same decisions with their traces recorded: what `--explain` costs.
    group.bench_function("explain", |b| {
        b.iter_batched(
            || state.clone(),
            |mut state| {
                let mut workflows = 0;
                for event in &events {
                    let (decision, explanation) = match explain(&state, event) {
                        Ok(explained) => explained,
                        Err(never) => match never {},
                    };
                    if let Explanation::CrmRecordChanged(x) = &explanation {
                        workflows += x.workflows.len();
                    }
                    state.apply(decision.changes);
                    black_box(explanation);
                }
                (state, black_box(workflows))
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, pipeline, core);
criterion_main!(benches);
