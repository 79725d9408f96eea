//! The figures as markdown tables, with the ratios the targets are stated in. Targets are
//! reported next to the figures, never asserted: a benchmark measures, it does not judge.

use std::fmt::Write;
use std::time::Duration;

use crate::cpu::RunCpu;
use crate::failover::Failover;
use crate::measure::{Latency, Throughput};
use crate::Guarantee;

/// Throughput of one system under one guarantee.
#[derive(Debug, Clone)]
pub struct ThroughputRow {
    /// `crmflow` or `pass-through`.
    pub system: &'static str,
    /// The guarantee.
    pub guarantee: Guarantee,
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
    pub guarantee: Guarantee,
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
    pub guarantee: Guarantee,
    /// The consumer's session time-out.
    pub session_timeout_ms: u64,
    /// The measurement.
    pub failover: Failover,
}

/// Everything a run measured, and how.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Lines describing the machine, date and parameters.
    pub context: Vec<String>,
    /// Throughput rows.
    pub throughput: Vec<ThroughputRow>,
    /// Latency rows.
    pub latency: Vec<LatencyRow>,
    /// Failover rows.
    pub failover: Vec<FailoverRow>,
    /// The restore run.
    pub restore: Option<crate::restore::RestoreRate>,
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
    fn rate(&self, system: &str, guarantee: Guarantee) -> Option<f64> {
        self.throughput
            .iter()
            .find(|r| r.system == system && r.guarantee == guarantee)
            .map(|r| r.throughput.steady_rate())
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for line in &self.context {
            let _ = writeln!(out, "{line}");
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(out, "\n### Throughput (pre-produced backlog)\n");
            let _ = writeln!(
                out,
                "| system | guarantee | events | wall time | events/s from start | events/s after first commit | crmflow / pass-through (target ≥ 0.8) | CPU µs/event | broker CPU µs/event | cores busy |"
            );
            let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            for r in &self.throughput {
                let t = &r.throughput;
                let ratio = match (r.system, self.rate("pass-through", r.guarantee)) {
                    ("crmflow", Some(base)) => format!("{:.2}", t.steady_rate() / base),
                    _ => String::new(),
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
            if let (Some(eos), Some(alo)) =
                (self.rate("crmflow", Guarantee::ExactlyOnce), self.rate("crmflow", Guarantee::AtLeastOnce))
            {
                let _ = writeln!(out, "\ncrmflow exactly_once / at_least_once: **{:.2}** (target ≥ 0.85)", eos / alo);
            }
            if let (Some(eos), Some(alo)) =
                (self.rate("pass-through", Guarantee::ExactlyOnce), self.rate("pass-through", Guarantee::AtLeastOnce))
            {
                let _ = writeln!(out, "pass-through exactly_once / at_least_once: {:.2}", eos / alo);
            }
        }
        if !self.latency.is_empty() {
            let _ = writeln!(out, "\n### Latency (paced input; produce → output readable under read_committed)\n");
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
            let _ = writeln!(out, "\n### Failover (SIGKILL one of two instances under live load)\n");
            let _ = writeln!(
                out,
                "| guarantee | session.timeout.ms | events before the kill | partitions taken over | committed offset moves on all | first output readable on all | fastest partition (output) |"
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
            let _ = writeln!(out, "\n### Restore (one changelog partition into an empty store)\n");
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
