//! Operations, end to end: scraped `/metrics` counts exactly what was sent and answered,
//! a killed worker shows up within its liveness window, the deploy/ alert rules and
//! dashboard use only metric names the binaries really expose, config files and flags
//! set what they claim, bad configs are refused clearly, and `/metrics` keeps answering
//! while the broker is under load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tradeplex_client::{CallOptions, Client, ClientError, ClientOptions, Reply};
use tradeplex_proto::{ErrorCode, WorkerId};
use tradeplex_tests::*;

const ANSWERED: &str = "tradeplex_requests_answered_total";
const RECEIVED: &str = "tradeplex_requests_received_total";
const DURATION_COUNT: &str = "tradeplex_request_duration_seconds_count";
const DURATION_BUCKET: &str = "tradeplex_request_duration_seconds_bucket";

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `key=value` fields of a ready line (`ready frontend=… http=…`, `worker <id> broker=…`).
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint:?}"))
}

fn outcome_name(r: &Result<Reply, ClientError>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => e.name().to_string(),
    }
}

fn broker_with_liveness(liveness: u32) -> Broker {
    Broker::start_with_liveness(liveness, &[])
}

fn worker_with_liveness(broker: &Broker, liveness: u32, extra: &[&str]) -> (Worker, String) {
    broker.worker_with_liveness(liveness, extra)
}

/// Liveness for tests that are not about expiry: a 5 s window.
const PATIENT: u32 = 50;

/// Waits until `name{label}` reads `value` on the page at `http`; on timeout, panics
/// with the whole page.
fn wait_for_value(http: &str, name: &str, label: (&str, &str), value: f64) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(http);
        if page.value(name, &[label]) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {name}{{{}={:?}}} == {value}:\n{}",
            label.0,
            label.1,
            page.text
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- metric names used by deploy/ ------------------------------------------------------

/// Every `tradeplex_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("tradeplex_") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// Splits a rule file into (PromQL of every `expr:`, everything else).
fn split_alert_rules(text: &str) -> (String, String) {
    let (mut exprs, mut prose) = (String::new(), String::new());
    let mut expr_indent: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(i) = expr_indent {
            if trimmed.is_empty() || indent > i {
                exprs.push_str(line);
                exprs.push('\n');
                continue;
            }
            expr_indent = None;
        }
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            exprs.push_str(rest);
            exprs.push('\n');
            expr_indent = Some(indent);
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    (exprs, prose)
}

/// Splits a dashboard into (every query string, every other string).
fn split_dashboard(v: &serde_json::Value, exprs: &mut String, prose: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        exprs.push_str(s);
                        exprs.push('\n');
                    }
                    _ => split_dashboard(v, exprs, prose),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                split_dashboard(v, exprs, prose);
            }
        }
        serde_json::Value::String(s) => {
            prose.push_str(s);
            prose.push('\n');
        }
        _ => {}
    }
}

/// A broker and a worker (with its HTTP endpoint) that have seen enough traffic for
/// every metric family they define to appear on their pages: a labelled family appears
/// only once one of its label values is used.
struct Exercised {
    _broker: Broker,
    _worker: Worker,
    broker_page: Scrape,
    worker_page: Scrape,
}

fn exercised_cluster() -> Exercised {
    let broker = Broker::start(&[]);
    // With a gateway, so the gateway and order series exist (SIM exports them once it
    // reports its connection state).
    let (worker, worker_http) = broker.worker_http(&["--http", "127.0.0.1:0", "--service", "SIM"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    client
        .call("echo", body(json!({"n": 1})), CallOptions::command())
        .expect("echo");
    let err = client
        .call("nosuch", body(json!({})), CallOptions::command())
        .unwrap_err();
    assert_eq!(err.name(), "unknown_service");

    // A frame that is not a Tradeplex request, on the frontend.
    let ctx = zmq::Context::new();
    let raw = ctx.socket(zmq::DEALER).unwrap();
    raw.set_linger(0).unwrap();
    raw.connect(&broker.frontend).unwrap();
    raw.send(&b"garbage"[..], 0).unwrap();
    // A malformed event on the XSUB side; PUB drops messages until the broker's
    // subscription reaches it, so keep sending until one is counted.
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.connect(&broker.xsub).unwrap();
    wait_until(Duration::from_secs(20), "bad frame and event drop", || {
        publisher.send(&b"not an event"[..], 0).unwrap();
        let page = scrape(&broker.http);
        page.sum("tradeplex_bad_frames_total", &[("socket", "frontend")]) >= 1.0
            && page.sum("tradeplex_event_drops_total", &[("reason", "malformed")]) >= 1.0
    });
    wait_until(Duration::from_secs(20), "SIM's gateway series", || {
        scrape(&worker_http).value("tradeplex_gateway_connected", &[("gateway", "SIM")])
            == Some(1.0)
    });
    Exercised {
        broker_page: scrape(&broker.http),
        worker_page: scrape(&worker_http),
        _broker: broker,
        _worker: worker,
    }
}

#[test]
fn alert_rules_and_dashboard_use_only_metric_names_the_binaries_expose() {
    let c = exercised_cluster();
    // A member of a broker pair (its peer never answers) exposes the pair's series too.
    let pair_config = temp_path("ops-pair.toml");
    std::fs::write(
        &pair_config,
        format!(
            "[pair]\nrole = \"backup\"\nbind = \"tcp://127.0.0.1:{}\"\npeer = \"tcp://127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let pair_member = Broker::start(&["--config", pair_config.to_str().unwrap()]);
    let pair_page = scrape(&pair_member.http);
    let mut series = c.broker_page.series_names();
    series.extend(c.worker_page.series_names());
    series.extend(pair_page.series_names());
    let families: BTreeSet<String> = c
        .broker_page
        .types
        .keys()
        .chain(c.worker_page.types.keys())
        .chain(pair_page.types.keys())
        .cloned()
        .collect();
    // The check has teeth: a histogram is queried by its _bucket/_sum/_count series only.
    assert!(series.contains("tradeplex_request_duration_seconds_bucket"));
    assert!(!series.contains("tradeplex_request_duration_seconds"));
    assert!(!series.contains("tradeplex_requests_answered_total_count"));

    let alerts = repo_file("deploy/prometheus/alerts.yml");
    let (alert_exprs, alert_prose) = split_alert_rules(&alerts);
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/tradeplex-dashboard.json"))
            .expect("the dashboard is valid JSON");
    let (mut dash_exprs, mut dash_prose) = (String::new(), String::new());
    split_dashboard(&dashboard, &mut dash_exprs, &mut dash_prose);

    let mut problems = Vec::new();
    for (file, exprs, prose) in [
        ("alerts.yml", &alert_exprs, &alert_prose),
        ("tradeplex-dashboard.json", &dash_exprs, &dash_prose),
    ] {
        let used = metric_names(exprs);
        assert!(
            used.len() >= 8,
            "{file}: too few metric names found: {used:?}"
        );
        for name in used.iter().filter(|n| !series.contains(*n)) {
            problems.push(format!("{file}: a query uses {name}, which is not exposed"));
        }
        // Descriptions may name a family (e.g. a histogram by its base name).
        for name in metric_names(prose) {
            if !series.contains(&name) && !families.contains(&name) {
                problems.push(format!(
                    "{file}: the text names {name}, which is not exposed"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nexposed series: {series:?}",
        problems.join("\n")
    );

    for alert in [
        "TradeplexBrokerDown",
        "TradeplexNoWorkers",
        "TradeplexWorkerFlapping",
        "TradeplexDeadlineExceededRising",
        "TradeplexEventDrops",
    ] {
        assert!(
            alerts.contains(&format!("- alert: {alert}\n")),
            "alerts.yml has no {alert}"
        );
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            "panel {} has no query",
            p["title"]
        );
    }
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to `-`, punctuation other
/// than `-` and `_` dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_runbook_url_points_at_a_heading_of_the_operations_doc() {
    let alerts = repo_file("deploy/prometheus/alerts.yml");
    let doc = repo_file("docs/operations.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| heading_anchor(h.trim_start_matches('#')))
        .collect();
    let urls: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(str::trim)
        .collect();
    for alert in [
        "TradeplexGatewayDisconnected",
        "TradeplexOrderRejectsRising",
        "TradeplexWorkerEventDrops",
        "TradeplexWorkerPoolShrunk",
        "TradeplexInsecureBind",
    ] {
        let url = format!("docs/operations.md#{}", alert.to_lowercase());
        assert!(
            urls.contains(&url.as_str()),
            "{alert} has no runbook_url {url}"
        );
    }
    for url in urls {
        let anchor = url
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("runbook_url {url} is not a docs/operations.md anchor"));
        assert!(
            anchors.contains(anchor),
            "docs/operations.md has no heading for #{anchor}"
        );
    }
}

#[test]
fn broker_and_worker_export_process_metrics_and_their_build() {
    let c = exercised_cluster();
    for (who, page) in [("broker", &c.broker_page), ("worker", &c.worker_page)] {
        // CPU seconds may still read 0 in a process this young; the others cannot.
        assert!(
            page.value("process_cpu_seconds_total", &[]).is_some(),
            "{who}"
        );
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                page.value(name, &[]).is_some_and(|v| v > 0.0),
                "{who}: no {name} in\n{}",
                page.text
            );
        }
        let version = ("version", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            page.sum("tradeplex_build_info", &[version]),
            1.0,
            "{who}:\n{}",
            page.text
        );
    }
}

#[test]
fn operations_doc_describes_every_metric_the_binaries_expose() {
    let c = exercised_cluster();
    let doc = repo_file("docs/operations.md");
    let missing: Vec<&String> = c
        .broker_page
        .types
        .keys()
        .chain(c.worker_page.types.keys())
        .filter(|family| !doc.contains(&format!("`{family}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md does not describe {missing:?}"
    );
    for code in ErrorCode::ALL {
        assert!(
            doc.contains(&format!("`{}`", code.name())),
            "docs/operations.md does not list outcome {}",
            code.name()
        );
    }
}

#[test]
fn every_config_in_deploy_is_accepted_by_the_binaries() {
    // The example files and the ones in the Kubernetes ConfigMap, with the network
    // fields overridden to loopback ports from the OS.
    let configmap = repo_file("deploy/k8s/configmap.yaml");
    let embedded = |key: &str| -> String {
        let start = configmap
            .find(&format!("  {key}: |\n"))
            .unwrap_or_else(|| panic!("no {key} in configmap.yaml"));
        configmap[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.trim_start()))
            .collect()
    };
    let broker_files = [
        ("deploy/broker.toml", repo_file("deploy/broker.toml")),
        ("configmap broker.toml", embedded("broker.toml")),
    ];
    let worker_files = [
        ("deploy/worker.toml", repo_file("deploy/worker.toml")),
        ("configmap worker.toml", embedded("worker.toml")),
    ];
    for (name, text) in broker_files {
        let path = temp_path("deploy-broker.toml");
        std::fs::write(&path, text).unwrap();
        let mut args = vec!["--config".to_string(), path.to_str().unwrap().to_string()];
        args.extend(loopback_broker_flags());
        let (mut broker, line) = Proc::start("tradeplex-broker", &args);
        assert!(line.starts_with("ready "), "{name}: {line}");
        let f = fields(&line);
        // The ready line comes once the sockets are bound; /readyz once the loop runs.
        wait_until(Duration::from_secs(10), "/readyz 200", || {
            http_get(&f["http"], "/readyz").is_ok_and(|r| r.status == 200)
        });

        for (wname, wtext) in &worker_files {
            let wpath = temp_path("deploy-worker.toml");
            std::fs::write(&wpath, wtext).unwrap();
            let wargs: Vec<String> = [
                "--config",
                wpath.to_str().unwrap(),
                "--broker",
                &f["backend"],
                "--events",
                &f["xsub"],
                "--http",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (_worker, wline) = Proc::start("tradeplex-worker", &wargs);
            assert!(wline.starts_with("worker "), "{wname}: {wline}");
            let id: WorkerId = wline
                .split_whitespace()
                .nth(1)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("no worker id in {wline:?}"));
            let client = Client::connect(&f["frontend"], ClientOptions::default()).unwrap();
            wait_until(Duration::from_secs(20), "the worker registered", || {
                client
                    .status()
                    .is_ok_and(|s| s.workers.iter().any(|w| w.worker == id))
            });
            // Pinned to this worker: the previous one may not have expired yet.
            let reply = client
                .call(
                    "echo",
                    body(json!({"from": wname})),
                    CallOptions::query().target(id),
                )
                .unwrap_or_else(|e| panic!("{name} + {wname}: {e}"));
            let echoed: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
            assert_eq!(echoed["from"], *wname);
        }
        assert_eq!(broker.terminate(Duration::from_secs(10)), Some(0), "{name}");
    }
}

// ----- counting --------------------------------------------------------------------------

#[test]
fn metrics_count_1000_requests_exactly_by_outcome() {
    const OK: u64 = 899; // plus the one long request below: 900 answered ok
    const UNKNOWN: u64 = 50;
    const LATE: u64 = 50;
    const SLEEP_MS: u64 = 2500;
    const LATE_TIMEOUT: Duration = Duration::from_millis(250);

    let broker = broker_with_liveness(PATIENT);
    let (_worker, worker_http) = worker_with_liveness(
        &broker,
        PATIENT,
        &["--http", "127.0.0.1:0", "--capacity", "1"],
    );
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    // No status calls from here on: the broker counts those too (under `_unknown`).
    let b0 = scrape(&broker.http);
    let w0 = scrape(&worker_http);

    let mut client_saw: BTreeMap<String, u64> = BTreeMap::new();
    let mut tally = |r: Result<Reply, ClientError>| {
        *client_saw.entry(outcome_name(&r)).or_default() += 1;
    };
    // Non-idempotent calls: the client never re-sends them, so each is counted once.
    let long = CallOptions::command().timeout(Duration::from_secs(30));

    // 899 echo requests, pipelined: ok.
    let pending: Vec<_> = (0..OK)
        .map(|n| {
            client
                .send("echo", body(json!({ "n": n })), long.clone())
                .unwrap()
        })
        .collect();
    for p in pending {
        tally(p.wait());
    }
    // 50 requests for a service nobody offers: unknown_service at once.
    let pending: Vec<_> = (0..UNKNOWN)
        .map(|n| {
            client
                .send("nosuch", body(json!({ "n": n })), long.clone())
                .unwrap()
        })
        .collect();
    for p in pending {
        tally(p.wait());
    }
    // Hold the capacity-1 worker with one long request...
    let holder = client
        .send("echo", body(json!({ "sleep_ms": SLEEP_MS })), long.clone())
        .unwrap();
    wait_for_value(
        &broker.http,
        "tradeplex_requests_in_flight",
        ("service", "echo"),
        1.0,
    );
    // ...so 50 requests with a short deadline wait in the queue and expire undelivered.
    let short = CallOptions::command().timeout(LATE_TIMEOUT);
    let pending: Vec<_> = (0..LATE)
        .map(|n| {
            client
                .send("echo", body(json!({ "late": n })), short.clone())
                .unwrap()
        })
        .collect();
    for p in pending {
        tally(p.wait());
    }
    tally(holder.wait());

    let expected_client: BTreeMap<String, u64> = [
        ("ok".to_string(), OK + 1),
        ("unknown_service".to_string(), UNKNOWN),
        ("deadline_exceeded".to_string(), LATE),
    ]
    .into();
    assert_eq!(client_saw, expected_client, "what the client got back");

    let b1 = scrape(&broker.http);
    let w1 = scrape(&worker_http);
    let delta = |name: &str, labels: &[(&str, &str)]| b1.sum(name, labels) - b0.sum(name, labels);
    let total = (OK + 1 + UNKNOWN + LATE) as f64;
    assert_eq!(total, 1000.0);

    // Received, by service: every request once.
    assert_eq!(delta(RECEIVED, &[]), total);
    assert_eq!(
        delta(RECEIVED, &[("service", "echo")]),
        (OK + 1 + LATE) as f64
    );
    assert_eq!(delta(RECEIVED, &[("service", "_unknown")]), UNKNOWN as f64);

    // Answered, by service and outcome: exactly what the client saw, nothing else.
    let expected = |service: &str, outcome: &str| -> f64 {
        match (service, outcome) {
            ("echo", "ok") => (OK + 1) as f64,
            ("echo", "deadline_exceeded") => LATE as f64,
            ("_unknown", "unknown_service") => UNKNOWN as f64,
            _ => 0.0,
        }
    };
    let mut checked = 0;
    for s in b1.matching(ANSWERED, &[]) {
        let (service, outcome) = (&s.labels["service"], &s.labels["outcome"]);
        if service == "tpx" {
            // The broker's own status calls (the harness's readiness polling).
            continue;
        }
        let before = b0
            .value(ANSWERED, &[("outcome", outcome), ("service", service)])
            .unwrap_or(0.0);
        assert_eq!(
            s.value - before,
            expected(service, outcome),
            "{ANSWERED}{{service={service:?},outcome={outcome:?}}}"
        );
        checked += 1;
    }
    // ok + every error code, for echo and _unknown
    assert_eq!(checked, 2 * (1 + ErrorCode::ALL.len()), "answered series");
    assert_eq!(
        delta(ANSWERED, &[("service", "echo")]) + delta(ANSWERED, &[("service", "_unknown")]),
        total
    );

    // The latency histogram counts every answer once, in the right buckets.
    assert_eq!(
        delta(DURATION_COUNT, &[("service", "echo")]),
        (OK + 1 + LATE) as f64
    );
    assert_eq!(
        delta(DURATION_COUNT, &[("service", "_unknown")]),
        UNKNOWN as f64
    );
    assert_eq!(
        delta(DURATION_BUCKET, &[("service", "echo"), ("le", "+Inf")]),
        (OK + 1 + LATE) as f64
    );
    // The 50 expired requests waited ~250 ms and the long one 2.5 s: none under 100 ms.
    assert!(
        delta(DURATION_BUCKET, &[("service", "echo"), ("le", "0.1")]) <= OK as f64,
        "expired or held requests counted as fast"
    );
    assert!(
        delta(DURATION_BUCKET, &[("service", "echo"), ("le", "1")]) <= (OK + LATE) as f64,
        "the 2.5 s request counted under 1 s"
    );
    let slow_sum = delta(
        "tradeplex_request_duration_seconds_sum",
        &[("service", "echo")],
    );
    assert!(
        slow_sum >= SLEEP_MS as f64 / 1000.0 + LATE as f64 * 0.2,
        "duration sum {slow_sum}"
    );

    // Nothing left queued or in flight.
    assert_eq!(
        b1.value("tradeplex_queue_depth", &[("service", "echo")]),
        Some(0.0)
    );
    assert_eq!(
        b1.value("tradeplex_requests_in_flight", &[("service", "echo")]),
        Some(0.0)
    );

    // The worker executed the 900 delivered requests and never saw the 50 expired ones.
    let wdelta = |name: &str, labels: &[(&str, &str)]| w1.sum(name, labels) - w0.sum(name, labels);
    assert_eq!(
        wdelta(
            "tradeplex_worker_requests_total",
            &[("service", "echo"), ("outcome", "ok")]
        ),
        (OK + 1) as f64
    );
    assert_eq!(
        wdelta("tradeplex_worker_requests_total", &[]),
        (OK + 1) as f64
    );
    assert_eq!(
        wdelta(
            "tradeplex_worker_handler_duration_seconds_count",
            &[("service", "echo")]
        ),
        (OK + 1) as f64
    );
    assert_eq!(w1.value("tradeplex_worker_in_flight", &[]), Some(0.0));
}

// ----- worker death ----------------------------------------------------------------------

#[test]
fn killed_worker_shows_in_expirations_and_workers_gauge_within_liveness_window() {
    // 100 ms heartbeats, liveness 5: a 500 ms window, short enough to measure and long
    // enough that a busy machine's stall does not expire the survivor as well.
    const LIVENESS: u32 = 5;
    let broker = broker_with_liveness(LIVENESS);
    let (_survivor, _) = worker_with_liveness(&broker, LIVENESS, &["--capacity", "2"]);
    let (mut doomed, _) = worker_with_liveness(&broker, LIVENESS, &["--capacity", "1"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 2);

    // An order-like (non-idempotent) request held in flight at the doomed worker.
    let target: WorkerId = doomed.id.parse().expect("worker id");
    let held = client
        .send(
            "echo",
            body(json!({ "sleep_ms": 30_000 })),
            CallOptions::command()
                .target(target)
                .timeout(Duration::from_secs(60)),
        )
        .unwrap();
    wait_for_value(
        &broker.http,
        "tradeplex_requests_in_flight",
        ("service", "echo"),
        1.0,
    );
    let before = scrape(&broker.http);
    assert_eq!(
        before.value("tradeplex_workers", &[("service", "echo")]),
        Some(2.0)
    );
    let expired = |s: &Scrape| s.sum("tradeplex_workers_expired_total", &[]);

    doomed.proc.kill9();
    let killed = Instant::now();
    let mut seen: Option<(Duration, Scrape)> = None;
    wait_until(Duration::from_secs(10), "the expiry in /metrics", || {
        let s = scrape(&broker.http);
        let done = expired(&s) == expired(&before) + 1.0
            && s.value("tradeplex_workers", &[("service", "echo")]) == Some(1.0);
        if done {
            seen = Some((killed.elapsed(), s));
        }
        done
    });
    let (elapsed, after) = seen.expect("seen");
    let heartbeat = Duration::from_millis(TEST_HEARTBEAT_MS);
    let window = heartbeat * LIVENESS;
    eprintln!("expiry visible in /metrics {elapsed:?} after SIGKILL (liveness window {window:?})");
    // The window runs from the worker's last heartbeat (at most one interval before the
    // kill); the broker checks at least every heartbeat; 500 ms covers scraping and a busy
    // machine's scheduling.
    assert!(
        elapsed <= window + heartbeat + Duration::from_millis(500),
        "expiry visible {elapsed:?} after the kill; liveness window {window:?}"
    );
    // Dropped for silence, not at once.
    assert!(
        elapsed >= heartbeat,
        "expired {elapsed:?} after the kill, before any heartbeat could be missed"
    );
    let d = |name: &str| after.sum(name, &[]) - before.sum(name, &[]);
    assert!(d("tradeplex_heartbeats_missed_total") >= 1.0);
    assert_eq!(
        d("tradeplex_worker_disconnects_total"),
        0.0,
        "SIGKILL sends no DISCONNECT"
    );
    assert_eq!(d("tradeplex_worker_registrations_total"), 0.0);

    // Its request is answered worker_lost (outcome unknown), and counted so.
    let err = held.wait().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WorkerLost), "{err}");
    let lost = scrape(&broker.http);
    assert_eq!(
        lost.sum(ANSWERED, &[("service", "echo"), ("outcome", "worker_lost")])
            - before.sum(ANSWERED, &[("service", "echo"), ("outcome", "worker_lost")]),
        1.0
    );
    // The survivor still serves.
    client
        .call("echo", body(json!({"after": true})), CallOptions::command())
        .expect("survivor answers");
}

// ----- config files and flags -------------------------------------------------------------

/// How long the broker takes to publish `n` more event-side heartbeats, counted by
/// `tradeplex_events_relayed_total{kind="hb"}`, from the first scrape.
fn time_heartbeats(http: &str, n: f64) -> Duration {
    let hb = |s: &Scrape| s.sum("tradeplex_events_relayed_total", &[("kind", "hb")]);
    let start = Instant::now();
    let first = hb(&scrape(http));
    wait_until(Duration::from_secs(30), "broker heartbeats", || {
        hb(&scrape(http)) >= first + n
    });
    start.elapsed()
}

/// One attempt of the config test's broker part: `None` if a chosen port was taken.
fn file_ports_then_flag_overrides(_attempt: usize) -> Option<(BTreeMap<String, String>, Proc)> {
    // Five distinct ports: hold them all at once, then release them for the broker.
    let held: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(held);
    let [fe, be, xs, xp, http] = [ports[0], ports[1], ports[2], ports[3], ports[4]];
    let file = temp_path("broker.toml");
    std::fs::write(
        &file,
        format!(
            "frontend = \"tcp://127.0.0.1:{fe}\"\n\
             backend = \"tcp://127.0.0.1:{be}\"\n\
             xsub = \"tcp://127.0.0.1:{xs}\"\n\
             xpub = \"tcp://127.0.0.1:{xp}\"\n\
             http = \"127.0.0.1:{http}\"\n\
             heartbeat_ms = 400\n\
             liveness = 2\n"
        ),
    )
    .unwrap();
    let config = file.display().to_string();

    // The file alone: its ports, its heartbeat.
    {
        let (_broker, line) =
            Proc::try_start("tradeplex-broker", &["--config".into(), config.clone()])?;
        let f = fields(&line);
        assert_eq!(f["frontend"], format!("tcp://127.0.0.1:{fe}"), "{line}");
        assert_eq!(f["backend"], format!("tcp://127.0.0.1:{be}"), "{line}");
        assert_eq!(f["xsub"], format!("tcp://127.0.0.1:{xs}"), "{line}");
        assert_eq!(f["xpub"], format!("tcp://127.0.0.1:{xp}"), "{line}");
        assert_eq!(f["http"], format!("127.0.0.1:{http}"), "{line}");
        // Heartbeats are at least heartbeat_ms apart: 3 more take at least 2 intervals.
        let took = time_heartbeats(&f["http"], 3.0);
        eprintln!("heartbeat_ms = 400 from the file: 3 heartbeats in {took:?}");
        assert!(
            took >= Duration::from_millis(800),
            "3 heartbeats in {took:?} with heartbeat_ms = 400"
        );
    }

    // Flags override the file: another frontend port and http address, a faster
    // heartbeat; the rest still comes from the file.
    let args: Vec<String> = [
        "--config",
        &config,
        "--frontend",
        "tcp://127.0.0.1:*",
        "--http",
        "127.0.0.1:0",
        "--heartbeat-ms",
        "50",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (broker, line) = Proc::try_start("tradeplex-broker", &args)?;
    let f = fields(&line);
    assert_ne!(port_of(&f["frontend"]), fe, "{line}");
    assert_ne!(port_of(&f["http"]), http, "{line}");
    assert_eq!(f["backend"], format!("tcp://127.0.0.1:{be}"), "{line}");
    assert_eq!(f["xsub"], format!("tcp://127.0.0.1:{xs}"), "{line}");
    assert_eq!(f["xpub"], format!("tcp://127.0.0.1:{xp}"), "{line}");
    // At 400 ms, 10 heartbeats would take at least 3.6 s.
    let took = time_heartbeats(&f["http"], 10.0);
    eprintln!("--heartbeat-ms 50 over the file: 10 heartbeats in {took:?}");
    assert!(
        took < Duration::from_millis(3000),
        "10 heartbeats took {took:?} with --heartbeat-ms 50"
    );
    Some((f, broker))
}

#[test]
fn config_file_sets_ports_and_heartbeat_and_flags_override_it() {
    // Ports come from the OS, then are released for the broker to bind: another test may
    // take one in between, so a start that fails to bind is retried with fresh ports.
    let (f, _broker) = (0..5)
        .find_map(file_ports_then_flag_overrides)
        .expect("a broker started from the config file within 5 attempts");

    // A worker config file, once alone and once with a flag overriding its capacity.
    let wfile = temp_path("worker.toml");
    std::fs::write(
        &wfile,
        format!(
            "broker = \"{}\"\nevents = \"{}\"\ncapacity = 3\nhttp = \"127.0.0.1:0\"\n\
             heartbeat_ms = 100\nliveness = 3\n",
            f["backend"], f["xsub"]
        ),
    )
    .unwrap();
    let wconfig = wfile.display().to_string();
    let (_w1, l1) = Proc::start("tradeplex-worker", &["--config".into(), wconfig.clone()]);
    let (_w2, l2) = Proc::start(
        "tradeplex-worker",
        &["--config".into(), wconfig, "--capacity".into(), "5".into()],
    );
    for l in [&l1, &l2] {
        let wf = fields(l);
        assert_eq!(wf["broker"], f["backend"], "{l}");
        assert_ne!(port_of(&wf["http"]), 0, "{l}");
        assert_eq!(http_get(&wf["http"], "/healthz").unwrap().status, 200);
    }
    let client = Client::connect(&f["frontend"], ClientOptions::default()).unwrap();
    let mut capacities = Vec::new();
    wait_until(Duration::from_secs(20), "both workers registered", || {
        capacities = client
            .status()
            .map(|s| s.workers.iter().map(|w| w.capacity).collect())
            .unwrap_or_default();
        capacities.len() == 2
    });
    capacities.sort();
    assert_eq!(
        capacities,
        vec![3, 5],
        "capacity from the file, then from --capacity"
    );
}

/// Runs `bin` expecting it to refuse its config: non-zero exit, no ready line, every one
/// of `words` on stderr, and the file's path when TOML could not parse it.
fn check_refused(bin: &str, what: &str, flags: Vec<String>, words: &[&str], path: &str) {
    let out = run_to_exit(bin, &flags, Duration::from_secs(20));
    let ctx = format!(
        "{bin} with {what:?}: exit {:?}\nstdout: {}\nstderr: {}",
        out.code, out.stdout, out.stderr
    );
    assert!(matches!(out.code, Some(c) if c != 0), "{ctx}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {ctx}");
    for w in words {
        assert!(out.stderr.contains(w), "stderr lacks {w:?}: {ctx}");
    }
    if !path.is_empty() && out.stderr.contains("TOML parse error") {
        assert!(out.stderr.contains(path), "names the file: {ctx}");
    }
}

#[test]
fn bad_config_is_refused_naming_the_field_with_a_non_zero_exit() {
    // broker/tests/cli.rs covers an out-of-range heartbeat_ms, a wrongly typed frontend
    // and a bad --liveness flag; these are the other ways a file goes wrong.
    let broker_cases: &[(&str, &[&str])] = &[
        ("heartbeat = 100\n", &["heartbeat", "unknown field"]),
        (
            "backend = \"udp://127.0.0.1:5556\"\n",
            &["backend", "udp://"],
        ),
        ("max_queue = 0\n", &["max_queue"]),
        ("max_body_bytes = 0\n", &["max_body_bytes"]),
        ("event_hwm = -1\n", &["event_hwm"]),
        ("liveness = 3\nliveness = 4\n", &["liveness", "duplicate"]),
        ("xpub = \"tcp://127.0.0.1:5558\n", &["line 1"]),
    ];
    let worker_cases: &[(&str, &[&str])] = &[
        ("capacity = 0\n", &["capacity"]),
        (
            "brokr = \"tcp://127.0.0.1:5556\"\n",
            &["brokr", "unknown field"],
        ),
        ("heartbeat_ms = 5\n", &["heartbeat_ms"]),
        ("events = \"127.0.0.1:5557\"\n", &["events"]),
        ("services = [\"bad name!\"]\n", &["services"]),
        ("capacity = \"four\"\n", &["capacity"]),
        (
            "journal = \"/tmp/j\"\njournal_fsync = \"sometimes\"\n",
            &["journal_fsync", "sometimes"],
        ),
        ("journal_keep = 0\n", &["journal_keep"]),
    ];
    let any = "tcp://127.0.0.1:*".to_string();
    // Loopback ports from the OS in case a bad file were accepted by mistake.
    let broker_flags = |config: &str| -> Vec<String> {
        let mut v = vec!["--config".to_string(), config.to_string()];
        for flag in ["--frontend", "--backend", "--xsub", "--xpub"] {
            v.push(flag.into());
            v.push(any.clone());
        }
        v.extend(["--http".into(), "127.0.0.1:0".into()]);
        v
    };
    let worker_flags = |config: &str| -> Vec<String> {
        vec![
            "--config".into(),
            config.into(),
            "--http".into(),
            "off".into(),
        ]
    };
    for (text, words) in broker_cases {
        let file = temp_path("bad-broker.toml");
        std::fs::write(&file, text).unwrap();
        let path = file.display().to_string();
        check_refused("tradeplex-broker", text, broker_flags(&path), words, &path);
    }
    for (text, words) in worker_cases {
        let file = temp_path("bad-worker.toml");
        std::fs::write(&file, text).unwrap();
        let path = file.display().to_string();
        check_refused("tradeplex-worker", text, worker_flags(&path), words, &path);
    }

    // A missing file.
    let missing = temp_path("missing.toml").display().to_string();
    check_refused(
        "tradeplex-broker",
        "(missing file)",
        broker_flags(&missing),
        &["cannot read config file", missing.as_str()],
        "",
    );
    // An http address that does not parse (checked when the broker binds it).
    let file = temp_path("bad-http.toml");
    std::fs::write(&file, "http = \"not an address\"\n").unwrap();
    let mut flags = broker_flags(&file.display().to_string());
    flags.truncate(flags.len() - 2); // no --http: the file's value must be used
    check_refused(
        "tradeplex-broker",
        "http = \"not an address\"",
        flags,
        &["http", "not an address"],
        "",
    );
    // A port someone else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let file = temp_path("taken.toml");
    std::fs::write(&file, format!("frontend = \"tcp://127.0.0.1:{port}\"\n")).unwrap();
    let mut flags = broker_flags(&file.display().to_string());
    flags.drain(2..4); // keep the file's frontend
    let endpoint = format!("tcp://127.0.0.1:{port}");
    check_refused(
        "tradeplex-broker",
        "frontend on a taken port",
        flags,
        &[endpoint.as_str(), "in use"],
        "",
    );
    drop(taken);
}

// ----- under load ------------------------------------------------------------------------

#[test]
fn metrics_endpoint_answers_while_the_broker_is_under_load() {
    let broker = broker_with_liveness(PATIENT);
    let _workers: Vec<Worker> = (0..2)
        .map(|_| worker_with_liveness(&broker, PATIENT, &["--capacity", "8"]).0)
        .collect();
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 2);
    let ok_echo = |s: &Scrape| s.sum(ANSWERED, &[("service", "echo"), ("outcome", "ok")]);
    let baseline = ok_echo(&scrape(&broker.http));

    // Pipelined load in another thread, 500 requests at a time, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = {
        let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<_> = (0..500)
                    .map(|n| {
                        client
                            .send(
                                "echo",
                                body(json!({ "n": n })),
                                CallOptions::command().timeout(Duration::from_secs(30)),
                            )
                            .unwrap()
                    })
                    .collect();
                for p in batch {
                    p.wait().expect("echo under load");
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    wait_until(Duration::from_secs(20), "the load to start", || {
        answered.load(Ordering::SeqCst) > 0
    });

    let mut slowest = Duration::ZERO;
    let mut counts = Vec::new();
    let mut busy_scrapes = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let page = scrape(&broker.http);
        assert_eq!(http_get(&broker.http, "/healthz").unwrap().status, 200);
        assert_eq!(http_get(&broker.http, "/readyz").unwrap().status, 200);
        slowest = slowest.max(t.elapsed());
        counts.push(ok_echo(&page));
        if page.sum("tradeplex_requests_in_flight", &[("service", "echo")]) > 0.0
            || page.sum("tradeplex_queue_depth", &[("service", "echo")]) > 0.0
        {
            busy_scrapes += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    load.join().expect("load thread");
    let total = answered.load(Ordering::SeqCst) as f64;
    eprintln!(
        "30 scrapes under load ({total} requests answered meanwhile, {busy_scrapes} scrapes \
         saw requests queued or in flight): slowest round {slowest:?}"
    );

    assert!(
        slowest < Duration::from_secs(2),
        "slowest /metrics + /healthz + /readyz round under load: {slowest:?}"
    );
    assert!(
        busy_scrapes > 0,
        "no scrape saw a request queued or in flight"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]) && counts.last() > counts.first(),
        "the counter should rise between scrapes under load: {counts:?}"
    );
    // Nothing lost in counting under load.
    assert_eq!(ok_echo(&scrape(&broker.http)) - baseline, total);
}

// ----- health and alertable series ------------------------------------------------------

#[test]
fn broker_exports_alertable_series_before_anything_happens() {
    let broker = Broker::start(&[]);
    assert_eq!(http_get(&broker.http, "/healthz").unwrap().status, 200);
    wait_until(Duration::from_secs(10), "/readyz 200", || {
        http_get(&broker.http, "/readyz").is_ok_and(|r| r.status == 200)
    });
    assert_eq!(http_get(&broker.http, "/nothing").unwrap().status, 404);
    let page = scrape(&broker.http);
    // Counters alerts take increase() of must exist at 0, or their first step is missed.
    for reason in ["malformed", "send_failed"] {
        assert_eq!(
            page.value("tradeplex_event_drops_total", &[("reason", reason)]),
            Some(0.0),
            "event drops by {reason}"
        );
    }
    for name in [
        "tradeplex_workers_expired_total",
        "tradeplex_worker_registrations_total",
        "tradeplex_heartbeats_missed_total",
    ] {
        assert_eq!(page.value(name, &[]), Some(0.0), "{name}");
    }
    // `_unknown` is not a service: no "0 workers" series for it to trip an alert.
    assert_eq!(
        page.value("tradeplex_workers", &[("service", "_unknown")]),
        None
    );
    // The relay's own heartbeat is counted from the start (TradeplexRelayStalled).
    wait_until(
        Duration::from_secs(10),
        "a relayed broker heartbeat",
        || scrape(&broker.http).sum("tradeplex_events_relayed_total", &[("kind", "hb")]) >= 1.0,
    );
}

#[test]
fn worker_is_not_ready_until_a_broker_answers() {
    // Nothing listens on this port: the worker cannot be registered.
    let port = free_port();
    let args: Vec<String> = [
        "--broker",
        &format!("tcp://127.0.0.1:{port}"),
        "--events",
        &format!("tcp://127.0.0.1:{port}"),
        "--http",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (_worker, line) = Proc::start("tradeplex-worker", &args);
    let http = fields(&line)["http"].clone();
    assert_eq!(http_get(&http, "/healthz").unwrap().status, 200);
    assert_eq!(http_get(&http, "/readyz").unwrap().status, 503);
    assert_eq!(
        scrape(&http).value("tradeplex_worker_registered", &[]),
        Some(0.0)
    );
}

#[test]
fn worker_is_ready_while_registered_and_its_gateway_connected() {
    let broker = broker_with_liveness(5);
    let (worker, http) =
        worker_with_liveness(&broker, 5, &["--http", "127.0.0.1:0", "--service", "SIM"]);
    let ready = || http_get(&http, "/readyz").map(|r| r.status).unwrap_or(0);
    wait_until(
        Duration::from_secs(10),
        "the worker ready once registered",
        || ready() == 200,
    );
    assert_eq!(
        scrape(&http).value("tradeplex_worker_registered", &[]),
        Some(1.0)
    );

    // A gateway outage makes the worker not ready; it is ready again after reconnecting.
    let client = broker.client();
    let outage =
        tradeplex_tests::body(serde_json::json!({"op": "sim_disconnect", "duration_ms": 1500}));
    let target = worker.id.parse().unwrap();
    client
        .call(
            "SIM",
            outage,
            tradeplex_client::CallOptions::command().target(target),
        )
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "not ready while SIM is down",
        || ready() == 503,
    );
    wait_until(
        Duration::from_secs(10),
        "ready again after SIM reconnects",
        || ready() == 200,
    );
}
