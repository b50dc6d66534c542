//! Risk limits at runtime between real processes: per-client limits (a name declared from
//! loopback, CURVE key names), `tradeplex risk` for admins only, a SIGHUP reload on the
//! same connections (and a bad file refused), and every change in the audit journal.

use std::time::Duration;

use tradeplex_client::{Client, ClientError, ClientOptions};
use tradeplex_proto::model::{Order, OrderRequest};
use tradeplex_proto::ErrorCode;
use tradeplex_tests::*;

fn order(volume: f64) -> OrderRequest {
    aapl_order("sim", "runtime-test")
        .market()
        .volume(volume)
        .build()
}

fn remote_error(r: Result<Order, ClientError>, code: ErrorCode) -> String {
    match r {
        Err(ClientError::Remote {
            code: Some(c),
            message,
            ..
        }) if c == code => message,
        other => panic!("expected {code}, got {other:?}"),
    }
}

fn named(broker: &Broker, name: &str) -> Client {
    Client::connect(&broker.frontend, ClientOptions::default().name(name)).expect("client")
}

fn write_config(tag: &str, text: &str) -> std::path::PathBuf {
    let path = temp_path(tag);
    std::fs::write(&path, text).unwrap();
    path
}

/// `tradeplex --broker FRONTEND ARGS...`, to its exit.
fn cli(broker: &Broker, args: &[&str]) -> Exited {
    let mut all = vec!["--broker".to_string(), broker.frontend.clone()];
    all.extend(args.iter().map(|s| s.to_string()));
    run_to_exit("tradeplex", &all, Duration::from_secs(20))
}

fn reloads(broker: &Broker, result: &str) -> f64 {
    scrape(&broker.http)
        .value("tradeplex_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0)
}

/// The journal's request lines' `name` fields (None for an unnamed client), in order.
fn request_names(journal: &std::path::Path) -> Vec<Option<String>> {
    journal_lines(journal)
        .iter()
        .filter(|l| l["event"] == "request")
        .map(|l| l["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_clients_limit_rejects_at_its_limit_and_passes_under_it_and_its_name_is_journaled() {
    let journal = temp_path("runtime-client.jsonl");
    let config = write_config(
        "runtime-client.toml",
        &format!(
            "[risk]\njournal = {:?}\n[risk.clients.alpha]\norder_size_limit = 5\n",
            journal.to_str().unwrap()
        ),
    );
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let _w = broker.worker(&["--service", "SIM"]);
    let (alpha, beta) = (named(&broker, "alpha"), named(&broker, "beta"));
    broker.wait_for_workers(&alpha, "SIM", 1);
    assert_eq!(alpha.send_order("SIM", order(4.0)).unwrap().volume, 4.0);
    assert_eq!(alpha.send_order("SIM", order(5.0)).unwrap().volume, 5.0);
    let m = remote_error(alpha.send_order("SIM", order(6.0)), ErrorCode::RiskRejected);
    assert_eq!(m, "order_size_limit: limit 5, value 6 (client alpha)");
    // Another client (and the same account) is not bound by alpha's limit.
    assert_eq!(beta.send_order("SIM", order(6.0)).unwrap().volume, 6.0);
    let s = scrape(&broker.http);
    assert_eq!(
        s.value(
            "tradeplex_risk_rejected_total",
            &[("rule", "order_size_limit")]
        ),
        Some(1.0)
    );
    // The declared names, honoured from loopback, are what the journal records.
    let names = request_names(&journal);
    let want: Vec<Option<String>> = ["alpha", "alpha", "alpha", "beta"]
        .iter()
        .map(|n| Some(n.to_string()))
        .collect();
    assert_eq!(names, want);
}

#[test]
fn an_admin_changes_a_limit_at_runtime_the_next_order_sees_it_and_a_non_admin_is_refused() {
    let journal = temp_path("runtime-admin.jsonl");
    let config = write_config(
        "runtime-admin.toml",
        &format!(
            "[risk]\njournal = {:?}\nadmins = [\"ops\"]\n[[risk.account]]\nname = \"sim\"\n\
             order_size_limit = 10\n",
            journal.to_str().unwrap()
        ),
    );
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let _w = broker.worker(&["--service", "SIM"]);
    let trader = named(&broker, "alpha");
    broker.wait_for_workers(&trader, "SIM", 1);
    assert_eq!(trader.send_order("SIM", order(8.0)).unwrap().volume, 8.0);

    // A non-admin (named or not) is refused `forbidden` and changes nothing.
    for who in [&["--client-name", "alpha"][..], &[]] {
        let mut args = who.to_vec();
        args.extend(["risk", "set", "--account", "sim", "order_size_limit=1"]);
        let out = cli(&broker, &args);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.starts_with("forbidden: "), "{}", out.stderr);
    }
    let out = cli(
        &broker,
        &["--client-name", "alpha", "risk", "show", "--json"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let e: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(e["error"]["name"], "forbidden");
    assert_eq!(e["error"]["code"], 12);

    let out = cli(
        &broker,
        &[
            "--client-name",
            "ops",
            "risk",
            "set",
            "--account",
            "sim",
            "order_size_limit=5",
            "contract_order_limit=100",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let shown: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(shown["account"][0]["order_size_limit"], 5.0);
    assert_eq!(shown["changed_by"], "ops");
    // The trader's next order, on its open connection, meets the new limit.
    let m = remote_error(
        trader.send_order("SIM", order(8.0)),
        ErrorCode::RiskRejected,
    );
    assert_eq!(m, "order_size_limit: limit 5, value 8");
    assert_eq!(trader.send_order("SIM", order(5.0)).unwrap().volume, 5.0);

    // The same validation as at load: the field is named, nothing changes.
    let out = cli(
        &broker,
        &[
            "--client-name",
            "ops",
            "risk",
            "set",
            "--account",
            "sim",
            "order_size_limit=-3",
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("bad_request: ") && out.stderr.contains("order_size_limit"),
        "{}",
        out.stderr
    );
    let out = cli(&broker, &["--client-name", "ops", "risk", "show"]);
    assert!(
        out.stdout
            .contains("account sim: contract_order_limit=100 order_size_limit=5.0"),
        "{}",
        out.stdout
    );

    // One change line, with who, before and after; `tradeplex risk log` prints it.
    let changes: Vec<serde_json::Value> = journal_lines(&journal)
        .into_iter()
        .filter(|l| l["event"] == "change")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!(
        (&c["by"], &c["via"], &c["what"]),
        (&"ops".into(), &"tpx.risk".into(), &"account:sim".into())
    );
    assert_eq!(c["before"]["order_size_limit"], 10.0);
    assert_eq!(c["after"]["order_size_limit"], 5.0);
    let out = run_to_exit(
        "tradeplex",
        &[
            "risk".into(),
            "log".into(),
            "--journal".into(),
            journal.to_str().unwrap().into(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("change account:sim by=ops via=tpx.risk"),
        "{}",
        out.stdout
    );
}

#[test]
fn sighup_puts_a_changed_limit_in_force_on_open_connections_and_a_bad_file_keeps_the_old() {
    let journal = temp_path("runtime-hup.jsonl");
    let risk = |limit: &str| {
        format!(
            "[risk]\njournal = {:?}\n[[risk.account]]\nname = \"sim\"\norder_size_limit = {limit}\n",
            journal.to_str().unwrap()
        )
    };
    let config = write_config("runtime-hup.toml", &risk("10"));
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let _w = broker.worker(&["--service", "SIM"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    assert_eq!(client.send_order("SIM", order(8.0)).unwrap().volume, 8.0);

    std::fs::write(&config, risk("5")).unwrap();
    assert!(broker.proc.signal("HUP"));
    wait_until(Duration::from_secs(10), "the reload", || {
        reloads(&broker, "ok") == 1.0
    });
    // The same client, on the same connection: its next call is answered, by the new limit.
    let m = remote_error(
        client.send_order("SIM", order(8.0)),
        ErrorCode::RiskRejected,
    );
    assert_eq!(m, "order_size_limit: limit 5, value 8");
    assert_eq!(client.send_order("SIM", order(5.0)).unwrap().volume, 5.0);

    // A bad file is refused: counted, and the limit in force stays 5.
    std::fs::write(&config, risk("-1")).unwrap();
    assert!(broker.proc.signal("HUP"));
    wait_until(Duration::from_secs(10), "the refused reload", || {
        reloads(&broker, "error") == 1.0
    });
    assert_eq!(client.send_order("SIM", order(5.0)).unwrap().volume, 5.0);
    let m = remote_error(
        client.send_order("SIM", order(6.0)),
        ErrorCode::RiskRejected,
    );
    assert_eq!(m, "order_size_limit: limit 5, value 6");
    assert_eq!(reloads(&broker, "ok"), 1.0);
    let changes: Vec<serde_json::Value> = journal_lines(&journal)
        .into_iter()
        .filter(|l| l["event"] == "change")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["by"], "sighup");
    assert_eq!(changes[0]["after"]["order_size_limit"], 5.0);
}

#[test]
fn sighup_names_each_changed_setting_it_cannot_apply_without_a_restart() {
    let config = write_config("runtime-hup-restart.toml", "max_queue = 100\n");
    let log = temp_path("runtime-hup-restart.log");
    let mut args = vec!["--config".to_string(), config.to_str().unwrap().to_string()];
    args.extend(loopback_broker_flags());
    let (proc, line) = Proc::spawn(
        &bin("tradeplex-broker"),
        &args,
        tradeplex_test_support::Stderr::File(log.clone()),
    )
    .unwrap();
    let http = ready_field(&line, "http").unwrap().to_string();
    let reloads = |result: &str| {
        scrape(&http)
            .value("tradeplex_config_reloads_total", &[("result", result)])
            .unwrap_or(0.0)
    };
    // Unchanged: nothing to warn about.
    assert!(proc.signal("HUP"));
    wait_until(Duration::from_secs(10), "the first reload", || {
        reloads("ok") == 1.0
    });
    assert!(
        !proc.log_tail(50).contains("needs a restart"),
        "{}",
        proc.log_tail(50)
    );
    std::fs::write(&config, "max_queue = 7\ntick_cache_bytes = 1000\n").unwrap();
    assert!(proc.signal("HUP"));
    wait_until(Duration::from_secs(10), "the second reload", || {
        reloads("ok") == 2.0
    });
    let logged = proc.log_tail(50);
    let warned: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("needs a restart"))
        .collect();
    assert_eq!(warned.len(), 2, "{logged}");
    assert!(warned[0].contains("setting=max_queue"), "{logged}");
    assert!(warned[1].contains("setting=tick_cache_bytes"), "{logged}");
}

fn curve_client(broker: &Broker, server: &Keys, own: &Keys) -> Client {
    let opts = ClientOptions::default().curve(own.client_curve(server));
    Client::connect(&broker.frontend, opts).unwrap()
}

#[test]
fn with_curve_each_key_names_its_client_in_the_journal_and_a_key_removed_by_sighup_is_refused() {
    let (server, alpha, beta, worker) = (
        keygen("rt-broker.key"),
        keygen("rt-alpha.key"),
        keygen("rt-beta.key"),
        keygen("rt-worker.key"),
    );
    let journal = temp_path("runtime-curve.jsonl");
    let curve = |with_beta: bool| {
        let beta_entry = if with_beta {
            format!(
                "[[curve.clients]]\nname = \"beta\"\nkey = {:?}\n",
                beta.public
            )
        } else {
            String::new()
        };
        format!(
            "[curve]\nkey_file = {:?}\nallow_workers = [{:?}]\n\
             [[curve.clients]]\nname = \"alpha\"\nkey = {:?}\n{beta_entry}\
             [risk]\njournal = {:?}\n",
            server.file.to_str().unwrap(),
            worker.public,
            alpha.public,
            journal.to_str().unwrap()
        )
    };
    let config = write_config("runtime-curve.toml", &curve(true));
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let _w = broker.worker(&[
        "--service",
        "SIM",
        "--curve-server-key",
        &server.public,
        "--curve-key-file",
        worker.file.to_str().unwrap(),
    ]);
    let (a, b) = (
        curve_client(&broker, &server, &alpha),
        curve_client(&broker, &server, &beta),
    );
    broker.wait_for_workers(&a, "SIM", 1);
    a.send_order("SIM", order(1.0)).unwrap();
    b.send_order("SIM", order(2.0)).unwrap();
    assert_eq!(
        request_names(&journal),
        vec![Some("alpha".to_string()), Some("beta".to_string())]
    );

    // Beta's key leaves the allow-list: its open connection stays, its requests are
    // refused `forbidden` from the reload on; alpha goes on as before.
    std::fs::write(&config, curve(false)).unwrap();
    assert!(broker.proc.signal("HUP"));
    wait_until(Duration::from_secs(10), "the reload", || {
        reloads(&broker, "ok") == 1.0
    });
    let m = remote_error(b.send_order("SIM", order(2.0)), ErrorCode::Forbidden);
    assert!(m.contains("no longer allow-listed"), "{m}");
    a.send_order("SIM", order(1.0)).unwrap();
    let removed: Vec<serde_json::Value> = journal_lines(&journal)
        .into_iter()
        .filter(|l| l["event"] == "change" && l["what"] == "curve.client:beta")
        .collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["before"]["key"], beta.public.as_str());
    assert!(removed[0].get("after").is_none());
    let s = scrape(&broker.http);
    assert_eq!(
        s.value("tradeplex_forbidden_total", &[("reason", "key_removed")]),
        Some(1.0)
    );
}

#[test]
fn a_clients_daily_count_survives_a_broker_restart_through_the_journal() {
    let journal = temp_path("runtime-replay.jsonl");
    let config = write_config(
        "runtime-replay.toml",
        &format!(
            "[risk]\njournal = {:?}\n[risk.clients.alpha]\ncontract_order_limit = 1\n",
            journal.to_str().unwrap()
        ),
    );
    let args = ["--config", config.to_str().unwrap()];
    let mut broker = Broker::start(&args);
    let _w = broker.worker(&["--service", "SIM"]);
    let alpha = named(&broker, "alpha");
    broker.wait_for_workers(&alpha, "SIM", 1);
    alpha.send_order("SIM", order(1.0)).unwrap();
    let broker = broker.kill9_and_restart_with_liveness(TEST_LIVENESS, &args);
    broker.wait_for_workers(&alpha, "SIM", 1);
    // The restarted broker counted alpha's order of today from the journal's `name`.
    let m = remote_error(alpha.send_order("SIM", order(1.0)), ErrorCode::RiskRejected);
    assert_eq!(m, "contract_order_limit: limit 1, value 2 (client alpha)");
    // Another client of the same account is not limited.
    named(&broker, "beta")
        .send_order("SIM", order(1.0))
        .unwrap();
}
