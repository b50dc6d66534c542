//! The `tradeplex` command line as a script sees it, against real broker and worker
//! processes: exit codes per outcome, `--json` shapes, request bodies from stdin and
//! files, an unreachable broker, usage errors and one-line config errors.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tradeplex_tests::*;

const LIMIT: Duration = Duration::from_secs(30);

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs `tradeplex` against `broker` with `args` after the global endpoint flags.
fn tpx(broker: &Broker, args: &[&str]) -> Exited {
    tpx_stdin(broker, args, None)
}

fn tpx_stdin(broker: &Broker, args: &[&str], stdin: Option<Vec<u8>>) -> Exited {
    let mut all = strings(&["--broker", &broker.frontend, "--events", &broker.xpub]);
    all.extend(strings(args));
    run_with_stdin("tradeplex", &all, stdin, LIMIT)
}

/// The one JSON document on stdout.
fn json_out(out: &Exited) -> Value {
    let mut lines = out.stdout.lines();
    let first = lines.next().unwrap_or_default();
    assert!(lines.next().is_none(), "one line on stdout: {out:?}");
    serde_json::from_str(first).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"))
}

fn sim_cluster(extra_broker: &[&str]) -> (Broker, Worker) {
    let broker = Broker::start(extra_broker);
    let worker = broker.worker(&["--service", "SIM"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    (broker, worker)
}

#[test]
fn call_exits_0_on_a_reply_and_1_on_a_wire_error_with_json_shapes() {
    let (broker, _w) = sim_cluster(&[]);

    let out = tpx(&broker, &["call", "echo", r#"{"a":1}"#]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(json_out(&out), json!({"a": 1}));

    let out = tpx(&broker, &["call", "echo", r#"{"a":1}"#, "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let j = json_out(&out);
    assert_eq!(j["reply"], json!({"a": 1}));
    assert!(j["worker"].as_str().is_some_and(|w| w.len() == 36), "{j}");

    let out = tpx(&broker, &["call", "nope", "{}", "--timeout-ms", "500"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(out.stderr.starts_with("unknown_service: "), "{out:?}");

    let out = tpx(
        &broker,
        &["call", "nope", "{}", "--timeout-ms", "500", "--json"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let e = &json_out(&out)["error"];
    assert_eq!(e["name"], "unknown_service", "{out:?}");
    assert_eq!(e["code"], 2, "the wire number: {out:?}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");

    let out = tpx(
        &broker,
        &[
            "call", "echo", "{}", "--count", "7", "--window", "3", "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let j = json_out(&out);
    assert_eq!(j["count"], 7);
    assert_eq!(j["ok"], 7);
    assert_eq!(j["errors"], json!({}));
    for k in ["calls_per_s", "p50_us", "p99_us"] {
        assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {j}");
    }

    let out = tpx(
        &broker,
        &[
            "call",
            "nope",
            "{}",
            "--count",
            "4",
            "--timeout-ms",
            "500",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(1), "any failed copy exits 1: {out:?}");
    let j = json_out(&out);
    assert_eq!(j["ok"], 0);
    assert_eq!(j["errors"], json!({"unknown_service": 4}));
}

#[test]
fn order_exits_0_when_working_3_when_rejected_and_cancel_prints_json() {
    let (broker, _w) = sim_cluster(&[]);
    let resting = [
        "order",
        "AAPL",
        "buy",
        "1",
        "--price",
        "1",
        "--timeout-ms",
        "300",
        "--json",
        "--reference",
        "g-1",
    ];
    let out = tpx(&broker, &resting);
    assert_eq!(out.code, Some(0), "{out:?}");
    let j = json_out(&out);
    assert_eq!(j["reference"], "g-1");
    assert_eq!(
        j["final"], false,
        "a limit buy far below the market rests: {j}"
    );
    assert_eq!(j["order"]["status"], "not_traded", "{j}");
    let order_id = j["order_id"].as_str().expect("order_id").to_string();
    assert_eq!(j["order"]["order_id"], order_id.as_str());

    let out = tpx(&broker, &["cancel", &order_id, "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let c = json_out(&out);
    assert_eq!(c["order_id"], order_id.as_str());
    assert_eq!(c["status"], "cancelled", "{c}");

    // An unknown symbol: the gateway answers the order with status `rejected`.
    let out = tpx(&broker, &["order", "NOPE", "buy", "1", "--price", "1"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.stdout.lines().any(|l| l.contains(" rejected ")),
        "{out:?}"
    );
    let out = tpx(
        &broker,
        &["order", "NOPE", "buy", "1", "--price", "1", "--json"],
    );
    assert_eq!(out.code, Some(3), "{out:?}");
    let j = json_out(&out);
    assert_eq!(j["final"], true);
    assert_eq!(j["order"]["status"], "rejected");
    assert!(
        j["order"]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{j}"
    );

    // Cancelling an order of a worker that does not exist is a wire error.
    let ghost = "SIM.00000000-0000-0000-0000-000000000000.1";
    let out = tpx(
        &broker,
        &["cancel", ghost, "--timeout-ms", "1000", "--json"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(json_out(&out)["error"]["name"].is_string(), "{out:?}");
}

#[test]
fn tail_prints_one_json_event_per_line_and_exits_after_count_or_idle() {
    let broker = Broker::start(&[]);
    // The broker's own heartbeat events (every 100 ms in tests).
    let out = tpx(&broker, &["tail", "hb.", "--count", "2", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    for ev in &lines {
        assert_eq!(ev["topic"], "hb.broker", "{ev}");
        assert_eq!(ev["kind"], "hb", "{ev}");
        for k in ["worker", "seq", "time", "ts_ns", "event"] {
            assert!(ev.get(k).is_some(), "no {k} in {ev}");
        }
    }
    // Nothing under the prefix: it ends after the idle time, exit 0, nothing printed.
    let out = tpx(&broker, &["tail", "nothing.", "--idle-timeout-ms", "300"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn a_risk_rejected_order_exits_3() {
    let path = temp_path("cli-risk-broker.toml");
    std::fs::write(
        &path,
        "[risk]\n[[risk.account]]\nname = \"sim\"\norder_size_limit = 10\n",
    )
    .unwrap();
    let (broker, _w) = sim_cluster(&["--config", path.to_str().unwrap()]);
    let args = [
        "order",
        "AAPL",
        "buy",
        "12",
        "--type",
        "market",
        "--account",
        "sim",
        "--json",
    ];
    let out = tpx(&broker, &args);
    assert_eq!(out.code, Some(3), "{out:?}");
    let e = &json_out(&out)["error"];
    assert_eq!(e["name"], "risk_rejected", "{out:?}");
    assert_eq!(e["code"], 11);
    assert!(out.stderr.starts_with("risk_rejected: "), "{out:?}");
}

#[test]
fn call_takes_a_512_kib_body_from_stdin_and_from_a_file() {
    let (broker, _w) = sim_cluster(&[]);
    let big = json!({"blob": "x".repeat(512 * 1024)});
    let text = big.to_string();
    assert!(text.len() > 512 * 1024, "over the ~128 KiB argv limit");

    let out = tpx_stdin(
        &broker,
        &["call", "echo", "-"],
        Some(text.clone().into_bytes()),
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(json_out(&out), big);

    let file = temp_path("cli-body.json");
    std::fs::write(&file, &text).unwrap();
    let arg = format!("@{}", file.display());
    let out = tpx(&broker, &["call", "echo", &arg, "--json"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(json_out(&out)["reply"], big);

    // Over the broker's 1 MiB: refused before sending with the wire's name for it (the
    // Python client's too), certainly not executed.
    let over = json!({"blob": "x".repeat(1024 * 1024)}).to_string();
    let out = tpx_stdin(
        &broker,
        &["call", "echo", "-", "--json"],
        Some(over.into_bytes()),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let e = &json_out(&out)["error"];
    assert_eq!(e["name"], "too_large", "{out:?}");
    assert!(e["code"].is_null(), "refused client-side: {out:?}");
    assert!(out.stderr.starts_with("too_large: "), "{out:?}");

    // Not JSON on stdin, or a file that is not there: usage errors, nothing sent.
    let out = tpx_stdin(&broker, &["call", "echo", "-"], Some(b"{nope".to_vec()));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("JSON body does not parse"), "{out:?}");
    let missing = format!("@{}", temp_path("cli-missing.json").display());
    let out = tpx(&broker, &["call", "echo", &missing]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
}

#[test]
fn an_unreachable_broker_is_unavailable_at_once_not_a_timeout() {
    // A port nothing listens on: each connection attempt is refused.
    let port = free_port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let cases: &[&[&str]] = &[
        &["call", "echo", "{}", "--timeout-ms", "10000"],
        &["call", "echo", "{}", "--timeout-ms", "10000", "--json"],
        &["status", "--json"],
        &["order", "AAPL", "buy", "1", "--price", "1", "--json"],
        &["positions", "--json"],
        &[
            "cancel",
            "SIM.00000000-0000-0000-0000-000000000000.1",
            "--timeout-ms",
            "10000",
        ],
        // A subscriber alone would wait for the broker forever.
        &["tail", "order.", "--count", "1", "--json"],
        &["tail", "order.", "--idle-timeout-ms", "10000"],
    ];
    for case in cases {
        let mut args = strings(&["--broker", &ep, "--events", &ep]);
        args.extend(strings(case));
        let t0 = Instant::now();
        let out = run_to_exit("tradeplex", &args, LIMIT);
        let took = t0.elapsed();
        assert_eq!(out.code, Some(1), "{case:?}: {out:?}");
        assert!(out.stderr.starts_with("unavailable: "), "{case:?}: {out:?}");
        if case.contains(&"--json") {
            let e = &json_out(&out)["error"];
            assert_eq!(e["name"], "unavailable", "{case:?}: {out:?}");
            assert_eq!(e["code"], Value::Null, "client-side: no wire number");
        } else {
            assert!(out.stdout.is_empty(), "{case:?}: {out:?}");
        }
        // The refused connection ends the call, not its 10 s (or default 5 s) timeout.
        assert!(took < Duration::from_secs(3), "{case:?} took {took:?}");
    }
}

#[test]
fn usage_errors_exit_2_with_nothing_on_stdout() {
    let ep = format!("tcp://127.0.0.1:{}", free_port());
    let cases: &[&[&str]] = &[
        &["--log-level", "a=b=c", "status"],
        &["status", "--no-such-flag"],
        &["call", "echo", "{nope"],
        &["order", "AAPL", "hold", "1"],
        &["--curve-server-key", "x", "status"],
        &[
            "--curve-server-key",
            "x",
            "--curve-key-file",
            "/nonexistent/key.toml",
            "status",
        ],
    ];
    // A server key that is not a key (with a good key file) is a usage error too.
    let keys = keygen("cli-usage-key");
    let bad_server_key: &[&str] = &[
        "--curve-server-key",
        "notakey",
        "--curve-key-file",
        keys.file.to_str().unwrap(),
        "status",
    ];
    let cases: Vec<&[&str]> = cases.iter().copied().chain([bad_server_key]).collect();
    for case in &cases {
        let mut args = strings(&["--broker", &ep]);
        args.extend(strings(case));
        let out = run_to_exit("tradeplex", &args, LIMIT);
        assert_eq!(out.code, Some(2), "{case:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{case:?}: {out:?}");
        assert!(out.stderr.starts_with("error: "), "{case:?}: {out:?}");
    }
    // Our own usage errors are one line with each cause once.
    let mut args = strings(&["--broker", &ep]);
    args.extend(strings(cases[5]));
    let out = run_to_exit("tradeplex", &args, LIMIT);
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert_eq!(out.stderr.matches("No such file").count(), 1, "{out:?}");
    // --log-json is accepted and a valid filter runs the command.
    let mut args = strings(&["--broker", &ep, "--log-json", "--log-level", "debug"]);
    args.extend(strings(&["keygen", "--json"]));
    let out = run_to_exit("tradeplex", &args, LIMIT);
    assert_eq!(out.code, Some(0), "{out:?}");
    let j = json_out(&out);
    assert_eq!(j["public_key"].as_str().map(str::len), Some(40), "{j}");
    assert_eq!(j["secret_key"].as_str().map(str::len), Some(40), "{j}");
}

#[test]
fn config_errors_are_one_line_without_repeated_causes() {
    let missing = temp_path("cli-no-such-config.toml");
    let bad = temp_path("cli-bad-config.toml");
    std::fs::write(&bad, "heartbeat_ms = \"x\"\n").unwrap();
    for bin in ["tradeplex-broker", "tradeplex-worker"] {
        for (file, word) in [(&missing, "No such file"), (&bad, "invalid type")] {
            let args = strings(&["--config", file.to_str().unwrap()]);
            let out = run_to_exit(bin, &args, LIMIT);
            let ctx = format!("{bin} {}: {out:?}", file.display());
            assert_eq!(out.code, Some(1), "{ctx}");
            assert!(out.stdout.is_empty(), "{ctx}");
            assert_eq!(out.stderr.lines().count(), 1, "{ctx}");
            assert!(out.stderr.starts_with("error: "), "{ctx}");
            assert!(out.stderr.contains(file.to_str().unwrap()), "{ctx}");
            assert_eq!(out.stderr.matches(word).count(), 1, "{ctx}");
        }
        // A log filter that does not parse is refused before anything starts, as in
        // `tradeplex` (it used to fall back to `info` silently).
        let args = strings(&["--log-level", "a=b=c", "--http", "off"]);
        let out = run_to_exit(bin, &args, LIMIT);
        assert_eq!(out.code, Some(2), "{bin}: {out:?}");
        assert!(out.stdout.is_empty(), "{bin}: {out:?}");
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains("not a log filter"),
            "{bin}: {out:?}"
        );
    }
}
