//! The pure core's figures (`cargo bench -p crmflow-demo --bench pipeline`), read from the
//! results criterion leaves in the target directory, so the benchmark page shows them beside
//! the end-to-end figures of the same run.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// The benchmarks of `crates/demo/benches/pipeline.rs`, in the order the page lists them, with
/// what each measures.
const BENCHMARKS: [(&str, &str); 4] = [
    ("pipeline/json", "JSON: decode → decide → encode"),
    ("pipeline/avro", "Avro: decode → decide → encode"),
    ("core/decide", "`decide` alone (no codec, no I/O)"),
    ("core/explain", "`explain` alone (the same decisions, with their traces)"),
];

/// One criterion benchmark as events per second.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreRow {
    /// What the benchmark measures.
    pub what: &'static str,
    /// Events per second at criterion's median time per iteration.
    pub median: f64,
    /// Events per second at the bounds of the median's 95% confidence interval (slow, fast).
    pub interval: (f64, f64),
}

/// Reads the latest results of the pipeline benchmarks under `criterion` (criterion's output
/// directory, `<target>/criterion`). A benchmark that has no results yet is left out.
pub fn read(criterion: &Path) -> Result<Vec<CoreRow>> {
    let mut rows = Vec::new();
    for (id, what) in BENCHMARKS {
        let dir = criterion.join(id).join("new");
        let (Ok(benchmark), Ok(estimates)) =
            (std::fs::read_to_string(dir.join("benchmark.json")), std::fs::read_to_string(dir.join("estimates.json")))
        else {
            continue;
        };
        let parse = |text: &str, file: &str| -> Result<Value> {
            serde_json::from_str(text).with_context(|| format!("parsing {}", dir.join(file).display()))
        };
        rows.push(
            row(what, &parse(&benchmark, "benchmark.json")?, &parse(&estimates, "estimates.json")?)
                .with_context(|| format!("reading criterion's results in {}", dir.display()))?,
        );
    }
    Ok(rows)
}

/// Events per second from criterion's `benchmark.json` (elements per iteration) and
/// `estimates.json` (nanoseconds per iteration).
fn row(what: &'static str, benchmark: &Value, estimates: &Value) -> Result<CoreRow> {
    let events = benchmark["throughput"]["Elements"].as_f64().context("no throughput in elements")?;
    let median = &estimates["median"];
    let nanos = |value: &Value| value.as_f64().filter(|n| *n > 0.0).context("no median time");
    let per_second = |ns: f64| events / (ns * 1e-9);
    Ok(CoreRow {
        what,
        median: per_second(nanos(&median["point_estimate"])?),
        interval: (
            per_second(nanos(&median["confidence_interval"]["upper_bound"])?),
            per_second(nanos(&median["confidence_interval"]["lower_bound"])?),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_per_second_come_from_the_median_time_per_iteration() {
        let benchmark = json!({"full_id": "pipeline/json", "throughput": {"Elements": 5000}});
        let estimates = json!({"median": {
            "point_estimate": 50_000_000.0,
            "confidence_interval": {"confidence_level": 0.95, "lower_bound": 40_000_000.0, "upper_bound": 100_000_000.0}
        }});
        let row = row("json", &benchmark, &estimates).unwrap();
        assert_eq!(row.median, 100_000.0);
        assert_eq!(row.interval, (50_000.0, 125_000.0));
    }

    #[test]
    fn results_without_a_throughput_are_an_error() {
        let estimates = json!({"median": {"point_estimate": 1.0}});
        assert!(row("json", &json!({}), &estimates).is_err());
    }

    #[test]
    fn benchmarks_not_run_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), []);
    }
}
