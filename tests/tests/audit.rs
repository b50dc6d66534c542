//! The broker's audit journal between real processes: a daily cap and a halt survive a
//! broker crash and restart (same config, same journal, replayed), and `tradeplex audit`
//! shows an order's request, decision and outcome.

use std::time::Duration;

use tradeplex_tests::*;

#[test]
fn a_daily_cap_and_a_halt_survive_a_broker_restart_and_audit_shows_the_order() {
    let journal = temp_path("audit.jsonl");
    let cfg = temp_path("audit-broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[risk]\njournal = {:?}\njournal_fsync = \"always\"\n\
             [[risk.account]]\nname = \"sim\"\ncontract_order_limit = 2\n",
            journal.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let mut broker = Broker::start(&["--config", cfg_arg]);
    let _w = broker.worker(&["--service", "SIM"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    let first = client
        .send_order("SIM", aapl_order("sim", "audit-1").market().build())
        .unwrap();
    client
        .send_order("SIM", aapl_order("sim", "audit-2").market().build())
        .unwrap();
    client.halt(Some("desk2"), "stop desk2").unwrap();
    drop(client);

    let broker2 = broker.kill9_and_restart_with_liveness(TEST_LIVENESS, &["--config", cfg_arg]);
    let client = broker2.client();
    broker2.wait_for_workers(&client, "SIM", 1);
    // At the cap: the restarted broker counted today's two orders from its journal.
    let m = risk_message(client.send_order("SIM", aapl_order("sim", "audit-3").market().build()));
    assert_eq!(m, "contract_order_limit: limit 2, value 3");
    // The halt is still in force.
    let halts = client.status().unwrap().halts;
    assert_eq!(halts.len(), 1, "{halts:?}");
    assert_eq!(
        (halts[0].account.as_str(), halts[0].reason.as_str()),
        ("desk2", "stop desk2")
    );
    let m = risk_message(client.send_order("SIM", aapl_order("desk2", "audit-4").market().build()));
    assert_eq!(m, "halted: stop desk2");

    // tradeplex audit --reference: request, decision, outcome of the first order.
    let out = run_to_exit(
        "tradeplex",
        &[
            "audit".to_string(),
            "--reference".into(),
            "audit-1".into(),
            "--journal".into(),
            journal.to_str().unwrap().into(),
            "--json".into(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["request", "decision", "outcome"], "{lines:?}");
    assert_eq!(lines[0]["order"]["reference"], "audit-1");
    assert_eq!(lines[0]["order"]["account"], "sim");
    assert_eq!(lines[1]["decision"], "pass");
    assert_eq!(lines[2]["outcome"], "ok");
    assert_eq!(lines[2]["order_id"], first.order_id.0.as_str());

    // By order id, in words; the rejected third order shows its rule.
    let out = run_to_exit(
        "tradeplex",
        &[
            "audit".to_string(),
            first.order_id.0.clone(),
            "--journal".into(),
            journal.to_str().unwrap().into(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    assert!(out.stdout.contains("decision pass"), "{}", out.stdout);
    let out = run_to_exit(
        "tradeplex",
        &[
            "audit".to_string(),
            "--reference".into(),
            "audit-3".into(),
            "--journal".into(),
            journal.to_str().unwrap().into(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("decision reject risk_rejected: contract_order_limit: limit 2, value 3"),
        "{}",
        out.stdout
    );
    // An order id the journal never saw: exit 1, named on stderr.
    let out = run_to_exit(
        "tradeplex",
        &[
            "audit".to_string(),
            "SIM.nobody.1".into(),
            "--journal".into(),
            journal.to_str().unwrap().into(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("SIM.nobody.1"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // With --json the failure is the `{"error": …}` object every command prints.
    let out = run_to_exit(
        "tradeplex",
        &[
            "audit".to_string(),
            "SIM.nobody.1".into(),
            "--journal".into(),
            journal.to_str().unwrap().into(),
            "--json".into(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let err: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(err["error"]["name"], "not_found", "{out:?}");
    assert!(err["error"]["code"].is_null(), "{out:?}");
}
