//! The figures as markdown tables, with the ratios the targets are stated in. Targets are
//! reported next to the figures, never asserted: a benchmark measures, it does not judge.

use std::fmt::Write;
use std::time::Duration;

use crate::core::CoreRow;
use crate::cpu::RunCpu;
use crate::failover::Failover;
use crate::measure::{Latency, Throughput};
use crmflow_runtime::ProcessingGuarantee;

/// Throughput of one system under one guarantee.
#[derive(Debug, Clone)]
pub struct ThroughputRow {
    /// `crmflow`, `pass-through` or `kafka-streams`.
    pub system: &'static str,
    /// The guarantee.
    pub guarantee: ProcessingGuarantee,
    /// The measurement.
    pub throughput: Throughput,
    /// What the run cost in CPU.
    pub cpu: RunCpu,
}

/// Latency of one system under one guarantee at a paced rate.
#[derive(Debug, Clone)]
pub struct LatencyRow {
    /// `crmflow` or `pass-through`.
    pub system: &'static str,
    /// The guarantee.
    pub guarantee: ProcessingGuarantee,
    /// crmflow's `max_wait_ms` (`None`: the pass-through, which has no merge).
    pub max_wait_ms: Option<u64>,
    /// Events per second actually produced over the whole run.
    pub produced_rate: f64,
    /// The percentiles, if any output fell in the window.
    pub latency: Option<Latency>,
}

/// One failover run.
#[derive(Debug, Clone)]
pub struct FailoverRow {
    /// The guarantee.
    pub guarantee: ProcessingGuarantee,
    /// The consumer's session time-out.
    pub session_timeout_ms: u64,
    /// The measurement.
    pub failover: Failover,
}

/// What the page says about how each part is measured; the page is generated whole, so this
/// text lives with the code that measures.
const METHOD: &str = "\
- **Pure core**: decode → decide → encode on one thread, no Kafka, no RocksDB \
(`crates/demo/benches/pipeline.rs`, criterion): 10 companies × 1,000 users × 5 workflows, state \
warmed with 100,000 events, then a batch of 5,000 events timed from a fresh copy of that state.
- **Throughput**: a backlog of demo events (`crmflow generate`'s stream, JSON, keyed by company) \
is produced first; each system then starts in its own consumer group on those same input topics \
(with its own output topics), and the clock runs until the group's committed offsets reach the \
inputs' end offsets. \"From start\" includes process start, group join and (exactly_once) \
`InitProducerId`; \"after first commit\" leaves those out and is what the ratios use. The \
**pass-through** is a plain rdkafka consume → produce loop in the benchmark's process with the \
same guarantee (transactions with `send_offsets_to_transaction`, or flush then a synchronous \
offset commit), loop shape, topics, partitions and commit interval. **kafka-streams** is the \
same rules as a Kafka Streams application (`processing.guarantee` exactly_once_v2 or \
at_least_once, the same commit interval, one stream thread per core), on the same backlog \
produced again into its own input topics; its outputs equal crmflow's.
- **CPU**: from `/proc`, the CPU time (user and system, all threads) of the system measured \
(crmflow's process; the benchmark's own for the in-process pass-through, plain consumer and \
restore) and of the broker's JVM (when the benchmark started it), from the system's start to the \
end offsets, per event; and how many of the machine's cores were busy on average.
- **Latency**: fresh topics per system; input produced at a steady rate, each record stamped \
with the wall clock when it is handed to the producer. crmflow stamps every output with its \
input's timestamp (the pass-through copies it), so an output's age when a read_committed consumer \
gets it is the time from produce to readable output. The first seconds are not measured. Latency \
is per output record (the pass-through copies every record, crmflow publishes outputs of CRM \
changes only).
- **Failover**: two `crmflow run` instances share the partitions under live load; one is \
SIGKILLed. Per partition it owned: until the group's committed offset passes the end offset at \
the kill, and until a read_committed consumer gets an output of a record produced after the kill.
- **Restore**: a changelog partition of state entries in crmflow's changelog format is written, \
then read from the start by a plain read_committed consumer (the ceiling) and restored into an \
empty RocksDB store by crmflow's restore, both with the restore consumer's configuration.

Targets are printed next to the figures; nothing asserts them.";

/// Everything a run measured, and how.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The command that produced the page.
    pub command: String,
    /// Lines describing the machine, date and parameters.
    pub context: Vec<String>,
    /// The pure core's benchmarks, as criterion last measured them.
    pub core: Vec<CoreRow>,
    /// Throughput rows.
    pub throughput: Vec<ThroughputRow>,
    /// Latency rows.
    pub latency: Vec<LatencyRow>,
    /// Failover rows.
    pub failover: Vec<FailoverRow>,
    /// The restore run.
    pub restore: Option<crate::restore::RestoreRate>,
    /// What was left out and why (printed under the throughput table).
    pub notes: Vec<String>,
}

/// CPU time per event (or record), in microseconds; "–" when not measured.
fn per_event(cpu: Option<Duration>, events: u64) -> String {
    cpu.map_or_else(|| "–".into(), |c| format!("{:.1}", c.as_secs_f64() * 1e6 / events.max(1) as f64))
}

/// Cores busy on average; "–" when not measured.
fn cores(busy: Option<f64>) -> String {
    busy.map_or_else(|| "–".into(), |c| format!("{c:.2}"))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "not within 180 s".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

impl Report {
    fn rate(&self, system: &str, guarantee: ProcessingGuarantee) -> Option<f64> {
        self.throughput
            .iter()
            .find(|r| r.system == system && r.guarantee == guarantee)
            .map(|r| r.throughput.steady_rate())
    }

    /// The report as a markdown page (`docs/benchmarks.md`).
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Benchmarks\n\n");
        let _ = writeln!(out, "Generated by `make bench` (`{}`). Do not edit: run it again.\n", self.command);
        for line in &self.context {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "\n## What is measured\n\n{METHOD}");
        if !self.core.is_empty() {
            let _ = writeln!(out, "\n## Pure core (one thread)\n");
            let _ = writeln!(out, "| what | events/s (criterion median) | 95% interval |");
            let _ = writeln!(out, "| --- | ---: | ---: |");
            for r in &self.core {
                let _ = writeln!(out, "| {} | {:.0} | {:.0} – {:.0} |", r.what, r.median, r.interval.0, r.interval.1);
            }
            let _ =
                writeln!(out, "\nTargets: JSON ≥ 300,000 events/s, `decide` ≥ 1,000,000/s, Avro within 1.5× of JSON.");
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(out, "\n## Throughput (pre-produced backlog)\n");
            let _ = writeln!(
                out,
                "| system | guarantee | events | wall time | events/s from start | events/s after first commit | / pass-through (target ≥ 0.5) | CPU µs/event (target ≤ 12) | broker CPU µs/event | cores busy |"
            );
            let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            for r in &self.throughput {
                let t = &r.throughput;
                let ratio = match (r.system, self.rate("pass-through", r.guarantee)) {
                    ("pass-through", _) | (_, None) => String::new(),
                    (_, Some(base)) => format!("{:.2}", t.steady_rate() / base),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} s | {:.0} | {:.0} | {ratio} | {} | {} | {} |",
                    r.system,
                    r.guarantee.as_str(),
                    t.events,
                    t.total.as_secs_f64(),
                    t.rate(),
                    t.steady_rate(),
                    per_event(r.cpu.system, t.events),
                    per_event(r.cpu.broker, t.events),
                    cores(r.cpu.machine_cores),
                );
            }
            if let (Some(eos), Some(alo)) = (
                self.rate("crmflow", ProcessingGuarantee::ExactlyOnce),
                self.rate("crmflow", ProcessingGuarantee::AtLeastOnce),
            ) {
                let _ = writeln!(out, "\ncrmflow exactly_once / at_least_once: **{:.2}** (target ≥ 0.9)", eos / alo);
            }
            if let (Some(eos), Some(alo)) = (
                self.rate("pass-through", ProcessingGuarantee::ExactlyOnce),
                self.rate("pass-through", ProcessingGuarantee::AtLeastOnce),
            ) {
                let _ = writeln!(out, "pass-through exactly_once / at_least_once: {:.2}", eos / alo);
            }
            for guarantee in [ProcessingGuarantee::ExactlyOnce, ProcessingGuarantee::AtLeastOnce] {
                if let (Some(crmflow), Some(peer)) =
                    (self.rate("crmflow", guarantee), self.rate("kafka-streams", guarantee))
                {
                    let _ = writeln!(
                        out,
                        "crmflow / Kafka Streams, {}: **{:.2}** (target ≥ 2)",
                        guarantee.as_str(),
                        crmflow / peer
                    );
                }
                let broker_cpu = |system: &str| {
                    let row = self.throughput.iter().find(|r| r.system == system && r.guarantee == guarantee)?;
                    Some(row.cpu.broker?.as_secs_f64() / row.throughput.events.max(1) as f64)
                };
                if let (Some(crmflow), Some(base)) = (broker_cpu("crmflow"), broker_cpu("pass-through")) {
                    let _ = writeln!(
                        out,
                        "broker CPU per crmflow event / per pass-through event, {}: {:.1} (target ≤ 2)",
                        guarantee.as_str(),
                        crmflow / base
                    );
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        if !self.latency.is_empty() {
            let _ = writeln!(out, "\n## Latency (paced input; produce → output readable under read_committed)\n");
            let _ = writeln!(
                out,
                "| system | guarantee | max_wait_ms | produced/s | outputs | p50 | p99 (target < 250 ms) | max |"
            );
            let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            for r in &self.latency {
                let wait = r.max_wait_ms.map_or_else(|| "–".into(), |w| w.to_string());
                let figures = match &r.latency {
                    Some(l) => format!("{} | {} ms | {} ms | {} ms", l.count, l.p50, l.p99, l.max),
                    None => "0 | – | – | –".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {wait} | {:.0} | {figures} |",
                    r.system,
                    r.guarantee.as_str(),
                    r.produced_rate
                );
            }
        }
        if !self.failover.is_empty() {
            let _ = writeln!(out, "\n## Failover (SIGKILL one of two instances under live load)\n");
            let _ = writeln!(
                out,
                "| guarantee | session.timeout.ms | events before the kill | partitions taken over | committed offset moves on all | first output readable on all (target ≤ 8 s) | fastest partition (output) |"
            );
            let _ = writeln!(out, "| --- | ---: | ---: | --- | ---: | ---: | ---: |");
            for r in &self.failover {
                let f = &r.failover;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:?} | {} | {} | {} |",
                    r.guarantee.as_str(),
                    r.session_timeout_ms,
                    f.events_before_kill,
                    f.partitions,
                    secs(f.committed_all()),
                    secs(f.output_all()),
                    secs(f.output.values().min().copied()),
                );
            }
        }
        if let Some(r) = &self.restore {
            let _ = writeln!(out, "\n## Restore (one changelog partition into an empty store)\n");
            let _ = writeln!(
                out,
                "| entries | plain consumer | crmflow restore | restore / plain (target ≥ 0.8) | CPU µs/record: plain / restore | broker CPU µs/record: plain / restore | cores busy: plain / restore |"
            );
            let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            let (plain, restore) = (&r.plain_cpu, &r.restore_cpu);
            let _ = writeln!(
                out,
                "| {} | {:.0}/s ({:.1} s) | {:.0}/s ({:.1} s) | {:.2} | {} / {} | {} / {} | {} / {} |",
                r.entries,
                r.plain_rate(),
                r.plain.as_secs_f64(),
                r.restore_rate(),
                r.restore.as_secs_f64(),
                r.restore_rate() / r.plain_rate(),
                per_event(plain.system, r.entries),
                per_event(restore.system, r.entries),
                per_event(plain.broker, r.entries),
                per_event(restore.broker, r.entries),
                cores(plain.machine_cores),
                cores(restore.machine_cores),
            );
        }
        out
    }
}
