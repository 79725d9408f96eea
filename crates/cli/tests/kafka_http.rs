//! The operators' HTTP server of a running `crmflow run`, on the real Apache Kafka broker, through
//! a real HTTP client: readiness, the metrics against the outputs actually produced, the
//! unassigned-users list before and after a team placement, users, activities and explain.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// An address with a port free now (the processor binds it a moment later).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A GET: its status and body (None while nothing listens yet).
fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let url = format!("http://{address}{path}");
    match ureq::get(&url).timeout(Duration::from_secs(10)).call() {
        Ok(response) => Some((response.status(), response.into_string().unwrap())),
        Err(ureq::Error::Status(code, response)) => Some((code, response.into_string().unwrap())),
        Err(ureq::Error::Transport(_)) => None,
    }
}

/// A GET whose answer must be JSON with this status.
fn get_json(address: &str, path: &str, status: u16) -> Value {
    let (code, body) = get(address, path).unwrap_or_else(|| panic!("nothing listens at {address}"));
    assert_eq!(code, status, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// The samples of one metric family: label set (as written) → value.
fn samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labels = match series.strip_prefix(name)? {
                "" => "",
                labels if labels.starts_with('{') => labels,
                _ => return None,
            };
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn crm_change(event_id: &str, object_id: &str, stage: &str, timestamp: i64) -> Vec<u8> {
    json!({"topic": "crm.changes", "key": "acme", "timestamp": timestamp, "value": {
        "type": "CrmRecordChanged", "event_id": event_id, "company_id": "acme", "integration_id": "sf",
        "object_type": "Opportunity", "object_id": object_id, "operation": "created",
        "occurred_at": "2024-05-01T10:00:09Z",
        "fields": {"OwnerId": "005A", "StageName": stage, "Amount": 10, "CloseDate": "2024-05-01"}}})
    .to_string()
    .into_bytes()
}

/// Readiness goes from 503 (with a reason) to 200; the unassigned list shows a provisioned user
/// until a team placement; users, activities and explain answer from committed state; unknown
/// companies are 404 and bad parameters 400, as JSON.
#[test]
fn operators_query_a_running_processor() {
    let broker = kafka();
    let topics = own_topics(broker, "http", 2);
    let state = tempfile::tempdir().unwrap();
    let address = free_address();
    let (seed, _) = scenario("seed-walkthrough");
    let mut processor = Processor::start(
        broker,
        &topics,
        &state.path().join("state"),
        "http",
        ProcessingGuarantee::ExactlyOnce,
        &[("CRMFLOW_HTTP_LISTEN", &address)],
    );

    // The server answers before the processor has joined its group: not ready, and why.
    let (code, body) = wait_for("the HTTP server answers", Duration::from_secs(30), || get(&address, "/readyz"));
    assert_eq!(code, 503, "ready before joining the group: {body}\n{}", processor.logs());
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["ready"], false);
    assert!(first["reason"].as_str().is_some_and(|r| !r.is_empty()), "{first}");
    assert_eq!(get_json(&address, "/healthz", 200)["status"], "ok");
    let ready = wait_for("ready", Duration::from_secs(60), || {
        let (code, body) = get(&address, "/readyz")?;
        (code == 200).then_some(body)
    });
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["partitions"].as_array().map(Vec::len), Some(2), "{ready}");

    // Settings, the workflow, and a won opportunity of 005A: provisioned, not on a team yet.
    produce_lines(broker, &topics, &seed[..3]);
    wait_until_processed(broker, &topics, "http", &mut processor, Duration::from_secs(60));
    let base = "/v1/companies/acme/integrations/sf";
    let waiting = get_json(&address, &format!("{base}/users?unassigned=true"), 200);
    let user_id = crmflow_domain::ids::user_id("acme", "sf", "005A");
    assert_eq!(waiting["users"], json!([{"crm_user_id": "005A", "user_id": user_id, "team_id": null}]), "{waiting}");
    let explained = get_json(&address, &format!("{base}/records/Opportunity/006A/explain"), 200);
    assert_eq!(explained["explanation"]["workflows"][0]["rule"], "ignored:user_not_on_team", "{explained}");

    // The placement, the opportunity updated, and another that fails the workflow's condition.
    let last = seed[4..5].to_vec();
    produce_lines(broker, &topics, &seed[3..4]);
    produce_lines(broker, &topics, &last);
    produce_lines(broker, &topics, &[crm_change("e-neg", "006X", "Negotiation", 1_714_557_609_000)]);
    wait_until_processed(broker, &topics, "http", &mut processor, Duration::from_secs(60));
    let waiting = get_json(&address, &format!("{base}/users?unassigned=true"), 200);
    assert_eq!(waiting["users"], json!([]), "placed on a team: {waiting}");
    let all = get_json(&address, &format!("{base}/users"), 200);
    assert_eq!(all["users"][0]["team_id"], "new-york", "{all}");

    let outputs = read_outputs(broker, &topics);
    let accepted: Vec<Value> = outputs
        .iter()
        .filter(|r| r.topic == "activities.accepted")
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let activity_id = accepted[0]["activity_id"].as_str().unwrap();
    let user = get_json(&address, &format!("{base}/users/005A"), 200);
    assert_eq!(user["team_id"], "new-york", "{user}");
    assert_eq!(user["activities"][0]["activity_id"], activity_id, "{user}");
    let activity = get_json(&address, &format!("{base}/activities/{activity_id}"), 200);
    assert_eq!(activity["activity"]["team_id"], "new-york", "{activity}");
    assert_eq!(activity["activity"]["value"], accepted[0]["value"], "{activity}");

    let explained = get_json(&address, &format!("{base}/records/Opportunity/006X/explain"), 200);
    let workflow = &explained["explanation"]["workflows"][0];
    assert_eq!(workflow["rule"], "condition_failed", "{explained}");
    assert_eq!(
        workflow["conditions"][0],
        json!({"field": "StageName", "op": "eq", "expected": "Closed Won", "actual": "Negotiation", "held": false}),
        "{explained}"
    );

    // Other companies, unknown names and bad parameters.
    let unknown = get_json(&address, "/v1/companies/acme2/integrations/sf/users", 404);
    assert_eq!(unknown["error"]["code"], "unknown_company", "{unknown}");
    get_json(&address, "/v1/companies/acme/integrations/hubspot/users", 404);
    get_json(&address, &format!("{base}/users/nobody"), 404);
    get_json(&address, &format!("{base}/activities/nothing"), 404);
    get_json(&address, &format!("{base}/records/Opportunity/006Q/explain"), 404);
    let bad = get_json(&address, &format!("{base}/users?unassigned=perhaps"), 400);
    assert_eq!(bad["error"]["code"], "bad_request", "{bad}");
    get_json(&address, &format!("{base}/users?unasigned=true"), 400);
    get_json(&address, "/v1/nothing", 404);

    assert!(processor.stop().success(), "{}", processor.logs());
}

/// At scale, with malformed records: the metrics count exactly the outputs and dead letters
/// published, per type, change, ignore reason and error kind, and the lag comes down to 0 on
/// every input partition.
#[test]
fn metrics_equal_the_outputs_produced() {
    let broker = kafka();
    let topics = own_topics(broker, "metrics", 4);
    let state = tempfile::tempdir().unwrap();
    let address = free_address();
    let (lines, expected) = generate(20_000);
    produce_lines(broker, &topics, &lines);
    let mut processor = Processor::start(
        broker,
        &topics,
        &state.path().join("state"),
        "metrics",
        ProcessingGuarantee::ExactlyOnce,
        &[("CRMFLOW_HTTP_LISTEN", &address)],
    );
    wait_until_processed(broker, &topics, "metrics", &mut processor, Duration::from_secs(180));
    let outputs = read_outputs(broker, &topics);
    compare(&expected, &outputs, Duplicates::Fail).unwrap_or_else(|diff| panic!("{diff}\n{}", processor.logs()));

    let mut published: BTreeMap<(String, String), f64> = BTreeMap::new();
    for record in &outputs {
        let key = if record.topic == "crmflow.dlq" {
            ("crmflow_dead_letters_total".to_owned(), format!("{{kind=\"{}\"}}", record.headers["crmflow.error.kind"]))
        } else {
            let value: Value = serde_json::from_slice(&record.value).unwrap();
            *published
                .entry((
                    "crmflow_outputs_total".to_owned(),
                    format!("{{type=\"{}\"}}", value["type"].as_str().unwrap()),
                ))
                .or_default() += 1.0;
            match value["type"].as_str().unwrap() {
                "ActivityAccepted" => (
                    "crmflow_activities_accepted_total".to_owned(),
                    format!("{{change=\"{}\"}}", value["change"].as_str().unwrap()),
                ),
                "ActivityIgnored" => (
                    "crmflow_activities_ignored_total".to_owned(),
                    format!("{{reason=\"{}\"}}", value["reason"].as_str().unwrap()),
                ),
                _ => continue,
            }
        };
        *published.entry(key).or_default() += 1.0;
    }
    let (_, metrics) = get(&address, "/metrics").expect("the HTTP server answers");
    for family in [
        "crmflow_outputs_total",
        "crmflow_activities_accepted_total",
        "crmflow_activities_ignored_total",
        "crmflow_dead_letters_total",
    ] {
        let reported: BTreeMap<String, f64> = samples(&metrics, family).into_iter().filter(|(_, n)| *n > 0.0).collect();
        let counted: BTreeMap<String, f64> =
            published.iter().filter(|((f, _), _)| f == family).map(|((_, labels), n)| (labels.clone(), *n)).collect();
        assert_eq!(reported, counted, "{family}:\n{metrics}");
    }
    assert_eq!(samples(&metrics, "crmflow_input_records_total")[""], lines.len() as f64, "{metrics}");
    let latency = samples(&metrics, "crmflow_processing_latency_seconds_count")[""];
    let published_outputs = outputs.len() as f64;
    assert_eq!(latency, published_outputs, "one latency per published output and dead letter:\n{metrics}");

    // The client reports end offsets every 5 s: the lag of each input partition comes to 0.
    let lag = wait_for("the lag of every input partition is reported as 0", Duration::from_secs(30), || {
        let (_, metrics) = get(&address, "/metrics")?;
        let lag = samples(&metrics, "kafka_consumergroup_lag");
        (lag.len() == 3 * 4 && lag.values().all(|n| *n == 0.0)).then_some(lag)
    });
    assert!(lag.keys().all(|labels| labels.contains("consumergroup=\"metrics\"")), "{lag:?}");
    assert!(samples(&metrics, "crmflow_state_store_bytes").len() == 4, "{metrics}");
    assert!(processor.stop().success(), "{}", processor.logs());
}

/// Two instances split the partitions, and either answers for every company: a company held by
/// the other instance is forwarded to it. Each answer holds that company's users and no others.
#[test]
fn either_instance_answers_for_every_company() {
    let broker = kafka();
    let topics = own_topics(broker, "http-pair", 4);
    let state = tempfile::tempdir().unwrap();
    let (lines, expected) = generate(4_000);
    produce_lines(broker, &topics, &lines);
    let addresses = [free_address(), free_address()];
    let mut instances: Vec<Processor> = ["a", "b"]
        .iter()
        .zip(&addresses)
        .map(|(id, address)| {
            Processor::start(
                broker,
                &topics,
                &state.path().join(id),
                "http-pair",
                ProcessingGuarantee::ExactlyOnce,
                &[("CRMFLOW_HTTP_LISTEN", address), ("CRMFLOW_INSTANCE_ID", id)],
            )
        })
        .collect();
    let [a, b] = &mut instances[..] else { unreachable!() };
    wait_until_processed_by(broker, &topics, "http-pair", &mut [a, b], Duration::from_secs(120));
    for address in &addresses {
        let ready = wait_for("both instances hold two partitions", Duration::from_secs(60), || {
            let (code, body) = get(address, "/readyz")?;
            let ready: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && ready["partitions"].as_array()?.len() == 2).then_some(ready)
        });
        assert_eq!(ready["ready"], true);
    }

    let mut provisioned: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for envelope in expected.iter().filter(|e| e.topic == "users.provisioned") {
        let v = &envelope.value;
        let key = (v["company_id"].as_str().unwrap().to_owned(), v["integration_id"].as_str().unwrap().to_owned());
        provisioned.entry(key).or_default().push(v["crm_user_id"].as_str().unwrap().to_owned());
    }
    assert!(provisioned.len() > 4, "companies on every partition: {:?}", provisioned.keys());
    let mut forwarded = 0;
    for ((company, integration), mut crm_users) in provisioned {
        crm_users.sort();
        let path = format!("/v1/companies/{company}/integrations/{integration}/users");
        for address in &addresses {
            let answer = get_json(address, &path, 200);
            let mut listed: Vec<String> = answer["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["crm_user_id"].as_str().unwrap().to_owned())
                .collect();
            listed.sort();
            assert_eq!(listed, crm_users, "GET {path} at {address}: {answer}");
            assert_eq!(answer["company_id"], company.as_str());
            // Asked as a forwarded query, only the instance holding the company answers it.
            let (code, _) = ureq::get(&format!("http://{address}{path}"))
                .set("x-crmflow-forwarded", "1")
                .call()
                .map(|r| (r.status(), ()))
                .unwrap_or_else(|e| match e {
                    ureq::Error::Status(code, _) => (code, ()),
                    other => panic!("{other}"),
                });
            if code == 404 {
                forwarded += 1;
            }
        }
    }
    assert!(forwarded > 0, "some companies are held by the other instance");
    let unknown = get_json(&addresses[0], "/v1/companies/nobody/integrations/sf/users", 404);
    assert_eq!(unknown["error"]["code"], "unknown_company", "{unknown}");
    for instance in &mut instances {
        assert!(instance.stop().success(), "{}", instance.logs());
    }
}

/// A won opportunity `n` of 005A, closed on one of 672 days: one ledger entry each.
fn won_opportunity(n: usize) -> Vec<u8> {
    let day = format!("{}-{:02}-{:02}", 2023 + (n / 336) % 2, (n / 28) % 12 + 1, n % 28 + 1);
    opportunity_line("acme", &format!("won-{n}"), "005A", "Closed Won", &day, 1_714_557_610_000 + n as i64)
}

/// Issue 18, item 5. One company with 200,000 accepted activities, all of one user; 32 clients
/// ask for that user's latest 20, ten times a second each, while 20,000 more CRM changes arrive.
/// Reads never wait for processing, nor processing for them: the changes are all processed, no
/// transaction is fenced or aborted, every readiness probe answers promptly, every answer is 20
/// activities latest first, and the outputs equal `crmflow simulate`'s. (Issue 18 asks for a
/// million; this debug build processes about 3,000 events a second, so the test holds what
/// already took each query, under the processing lock, the whole ledger's decoding.)
#[test]
fn queries_over_a_large_ledger_run_beside_processing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    const LEDGER: usize = 200_000;
    const DURING: usize = 20_000;
    const CLIENTS: usize = 32;
    let broker = kafka();
    let topics = own_topics(broker, "queries", 2);
    let state = tempfile::tempdir().unwrap();
    let address = free_address();
    let (seed, _) = scenario("seed-walkthrough");
    let mut lines: Vec<Vec<u8>> = seed[..4].to_vec();
    lines.extend((0..LEDGER + DURING).map(won_opportunity));
    let (before, during) = lines.split_at(4 + LEDGER);
    produce_lines(broker, &topics, before);
    let mut processor = Processor::start(
        broker,
        &topics,
        &state.path().join("state"),
        "queries",
        ProcessingGuarantee::ExactlyOnce,
        &[("CRMFLOW_HTTP_LISTEN", &address)],
    );
    wait_until_processed(broker, &topics, "queries", &mut processor, Duration::from_secs(300));

    let metric = |name: &str| {
        let (_, metrics) = get(&address, "/metrics").expect("the HTTP server answers");
        samples(&metrics, name).get("").copied().unwrap_or(0.0)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let path = "/v1/companies/acme/integrations/sf/users/005A?activities=20";
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, address) = (stop.clone(), address.clone());
            std::thread::spawn(move || {
                let mut answers = 0;
                while !stop.load(Ordering::Relaxed) {
                    let user = get_json(&address, path, 200);
                    let activities = user["activities"].as_array().expect("activities").clone();
                    assert_eq!(activities.len(), 20, "{user}");
                    let dates: Vec<&str> = activities.iter().map(|a| a["occurred_at"].as_str().unwrap()).collect();
                    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "latest first: {dates:?}");
                    answers += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                answers
            })
        })
        .collect();
    let probe = {
        let (stop, address) = (stop.clone(), address.clone());
        std::thread::spawn(move || {
            let mut took = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                get(&address, "/readyz").expect("the HTTP server answers");
                took.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            took
        })
    };
    let started = Instant::now();
    produce_lines(broker, &topics, during);
    wait_until_processed(broker, &topics, "queries", &mut processor, Duration::from_secs(300));
    let processing = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let answers: usize = clients.into_iter().map(|c| c.join().expect("a client failed")).sum();
    let mut took = probe.join().expect("the probe failed");
    took.sort();
    let slowest = took.last().copied().unwrap_or_default();
    let p99 = took[took.len() * 99 / 100];
    eprintln!(
        "{DURING} changes in {processing:?} beside {answers} queries; /readyz: {} probes, p99 {p99:?}, slowest \
         {slowest:?}",
        took.len()
    );
    // Generous bounds (the figures belong to benchmarks): a probe behind the processing lock
    // waited for whole rounds of queries, seconds each.
    assert!(slowest < Duration::from_secs(1), "a readiness probe took {slowest:?}");
    assert!(answers >= CLIENTS, "every client was answered at least once");
    assert_eq!(metric("crmflow_producer_fenced_total"), 0.0, "{}", processor.logs());
    assert_eq!(metric("crmflow_aborted_transactions_total"), 0.0, "{}", processor.logs());

    let outputs = read_outputs(broker, &topics);
    compare(&simulate(&lines), &outputs, Duplicates::Fail)
        .unwrap_or_else(|diff| panic!("{diff}\n{}", processor.logs()));
    assert!(processor.stop().success(), "{}", processor.logs());
}
