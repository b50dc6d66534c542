//! The kill switch between real processes: a broker without `[risk]`, two SIM workers
//! with two accounts; `tradeplex halt --account A` refuses A's new orders, cancels A's
//! resting orders on both workers, leaves B alone; `tradeplex resume` lets A trade again;
//! status and metrics show the halt.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tradeplex_client::events::{EventOptions, Subscriber};
use tradeplex_client::{CallOptions, Client, ClientError};
use tradeplex_proto::model::{GatewayRequest, Order, OrderId, Status};
use tradeplex_proto::{ErrorCode, WorkerId};
use tradeplex_tests::*;

fn sim_two_accounts() -> String {
    let path = temp_path("halt-sim.toml");
    std::fs::write(
        &path,
        "[sim]\ntick_interval_ms = 100\n\
         [[sim.accounts]]\naccount = \"A\"\ncash = 1000000.0\n\
         [[sim.accounts]]\naccount = \"B\"\ncash = 1000000.0\n",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn cli(broker: &Broker, args: &[&str]) -> Exited {
    let mut all: Vec<String> = ["--broker", &broker.frontend, "--events", &broker.xpub]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    run_to_exit("tradeplex", &all, Duration::from_secs(20))
}

fn place_on(client: &Client, worker: WorkerId, account: &str) -> Result<Order, ClientError> {
    let req =
        GatewayRequest::SendOrder(aapl_order(account, &format!("halt-test-{account}")).build());
    client.call_typed("SIM", &req, CallOptions::command().target(worker))
}

fn is_halted(r: &Result<Order, ClientError>, reason: &str) -> bool {
    matches!(r, Err(ClientError::Remote { code: Some(ErrorCode::RiskRejected), message, .. })
        if message == &format!("halted: {reason}"))
}

/// Waits until `sub` has shown an event of every order in `ids` (the broker relays an
/// event only after its book has taken it in).
fn wait_for_order_events(sub: &Subscriber, ids: &[OrderId]) {
    let mut left: HashSet<&str> = ids.iter().map(|i| i.0.as_str()).collect();
    let until = Instant::now() + Duration::from_secs(10);
    while !left.is_empty() {
        assert!(Instant::now() < until, "no order events for {left:?}");
        let Some(e) = sub.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if e.kind == "order" {
            if let Ok(o) = e.decode::<Order>() {
                left.remove(o.order_id.0.as_str());
            }
        }
    }
}

#[test]
fn halt_cancels_the_accounts_orders_on_both_workers_and_refuses_new_ones_until_resume() {
    let broker = Broker::start(&[]);
    let config = sim_two_accounts();
    let w1 = broker.worker(&["--service", "SIM", "--config", &config]);
    let w2 = broker.worker(&["--service", "SIM", "--config", &config]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 2);
    let (id1, id2): (WorkerId, WorkerId) = (w1.id.parse().unwrap(), w2.id.parse().unwrap());

    let opts = EventOptions {
        heartbeat: Duration::from_millis(TEST_HEARTBEAT_MS),
        liveness: 5,
        ..EventOptions::default()
    };
    let sub = Subscriber::connect(&broker.xpub, &["order.", "tick.SIM.AAPL"], opts).unwrap();
    assert!(
        sub.wait_connected(Duration::from_secs(10)),
        "no broker heartbeat"
    );
    // Ticks from both workers: their event connections to the broker are up, so their
    // order events reach the broker's book.
    for w in [id1, id2] {
        subscribe_ticks_at(&client, w, "AAPL");
    }
    let mut ticking = HashSet::new();
    let until = Instant::now() + Duration::from_secs(10);
    while ticking.len() < 2 {
        assert!(Instant::now() < until, "ticks from both workers");
        if let Some(e) = sub.recv_timeout(Duration::from_millis(200)) {
            if e.kind == "tick" {
                ticking.insert(e.source);
            }
        }
    }

    // Resting orders: A on both workers, B on the first.
    let a1 = place_on(&client, id1, "A").unwrap();
    let a2 = place_on(&client, id2, "A").unwrap();
    let b1 = place_on(&client, id1, "B").unwrap();
    for o in [&a1, &a2, &b1] {
        assert_eq!(o.status, Status::NotTraded, "{:?}", o.reason);
    }
    assert_eq!(a1.order_id.worker(), Some(id1));
    assert_eq!(a2.order_id.worker(), Some(id2));
    wait_for_order_events(
        &sub,
        &[
            a1.order_id.clone(),
            a2.order_id.clone(),
            b1.order_id.clone(),
        ],
    );

    let out = cli(
        &broker,
        &["halt", "--account", "A", "--reason", "desk closed"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "halted A (desk closed): 2 cancels sent, 0 skipped"
    );

    // New orders of A are refused on any worker; B trades on.
    assert!(is_halted(&place_on(&client, id1, "A"), "desk closed"));
    let r = client.send_order("SIM", aapl_order("A", "halt-test-A").build());
    assert!(is_halted(&r, "desk closed"), "{r:?}");
    let b2 = place_on(&client, id2, "B").unwrap();
    assert_eq!(b2.status, Status::NotTraded, "{:?}", b2.reason);

    // A's working orders end cancelled on both workers; B's stays.
    wait_until(Duration::from_secs(10), "A's orders cancelled", || {
        [&a1, &a2].iter().all(|o| {
            client
                .query_order(&o.order_id)
                .is_ok_and(|q| q.status == Status::Cancelled)
        })
    });
    assert_eq!(
        client.query_order(&b1.order_id).unwrap().status,
        Status::NotTraded
    );
    // Cancelling stays allowed while halted.
    let c = client.cancel_order(&b2.order_id).unwrap();
    assert_eq!(c.order_id, b2.order_id);

    let status = cli(&broker, &["status"]);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let halt_line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("A ") && l.ends_with("desk closed"));
    assert!(halt_line.is_some(), "{}", status.stdout);
    let s = client.status().unwrap();
    assert_eq!(s.halts.len(), 1);
    assert_eq!(
        (s.halts[0].account.as_str(), s.halts[0].reason.as_str()),
        ("A", "desk closed")
    );

    wait_until(Duration::from_secs(5), "both cancels answered ok", || {
        scrape(&broker.http).value("tradeplex_halt_cancels_total", &[("result", "ok")]) == Some(2.0)
    });
    let m = scrape(&broker.http);
    assert_eq!(m.value("tradeplex_halted", &[("account", "A")]), Some(1.0));
    assert_eq!(m.value("tradeplex_halted", &[("account", "*")]), Some(0.0));
    assert_eq!(
        m.value("tradeplex_halt_cancels_total", &[("result", "sent")]),
        Some(2.0)
    );
    assert_eq!(
        m.value("tradeplex_risk_rejected_total", &[("rule", "halted")]),
        Some(2.0)
    );

    let out = cli(&broker, &["resume"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "resumed A");
    let a3 = place_on(&client, id2, "A").unwrap();
    assert_eq!(a3.status, Status::NotTraded, "{:?}", a3.reason);
    let m = scrape(&broker.http);
    assert_eq!(m.value("tradeplex_halted", &[("account", "A")]), Some(0.0));
    let status = cli(&broker, &["status"]);
    assert!(status.stdout.contains("HALTS: none"), "{}", status.stdout);

    // The same through --json, as scripts use it: the broker's reply as one document.
    let out = cli(
        &broker,
        &["halt", "--account", "B", "--reason", "eod", "--json"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let j: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        (j["account"].as_str(), j["reason"].as_str()),
        (Some("B"), Some("eod"))
    );
    assert_eq!(j["cancels_sent"].as_u64(), Some(1), "{j}"); // B's resting order
    let out = cli(&broker, &["resume", "--account", "B", "--json"]);
    let j: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(j["resumed"], serde_json::json!(["B"]), "{j}");
    // A usage error is exit 2 and sends nothing.
    assert_eq!(cli(&broker, &["halt", "--account", ""]).code, Some(2));
}

/// Once an admin is configured, halting and resuming are for admins: another client is
/// refused `forbidden` (counted), the admin's halt names it in status, the CLI's table and
/// the audit journal's halt and resume lines.
#[test]
fn with_admins_configured_only_an_admin_may_halt_and_who_did_is_recorded() {
    let journal = temp_path("halt-admins.jsonl");
    let cfg = temp_path("halt-admins.toml");
    std::fs::write(
        &cfg,
        format!(
            "[risk]\nadmins = [\"ops\"]\njournal = {:?}\n",
            journal.to_str().unwrap()
        ),
    )
    .unwrap();
    let broker = Broker::start(&["--config", cfg.to_str().unwrap()]);
    let named = |name: &str| {
        Client::connect(
            &broker.frontend,
            tradeplex_client::ClientOptions::default().name(name),
        )
        .unwrap()
    };
    let alpha = named("alpha");
    for r in [
        alpha.halt(Some("A"), "not mine").map(|_| ()),
        alpha.resume(None).map(|_| ()),
        broker.client().halt(None, "anonymous").map(|_| ()),
    ] {
        assert!(
            matches!(&r, Err(ClientError::Remote { code: Some(ErrorCode::Forbidden), message, .. })
                if message.contains("admin")),
            "{r:?}"
        );
    }
    let out = cli(&broker, &["halt", "--account", "A"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    assert!(alpha.status().unwrap().halts.is_empty());
    assert_eq!(
        scrape(&broker.http).value("tradeplex_forbidden_total", &[("reason", "not_admin")]),
        Some(4.0)
    );

    let out = cli(
        &broker,
        &[
            "--client-name",
            "ops",
            "halt",
            "--account",
            "A",
            "--reason",
            "desk closed",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let s = alpha.status().unwrap();
    assert_eq!(
        s.halts
            .iter()
            .map(|h| (h.account.as_str(), h.by.as_str()))
            .collect::<Vec<_>>(),
        [("A", "ops")]
    );
    let table = cli(&broker, &["status"]).stdout;
    assert!(
        table.lines().any(|l| l.starts_with("A ")
            && l.split_whitespace().nth(2) == Some("ops")
            && l.ends_with("desk closed")),
        "{table}"
    );
    named("ops").resume(Some("A")).unwrap();
    let lines = journal_lines(&journal);
    let of = |event: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event)
            .unwrap_or_else(|| panic!("no {event} line in {lines:?}"))
    };
    assert_eq!(
        (of("halt")["by"].as_str(), of("halt")["account"].as_str()),
        (Some("ops"), Some("A"))
    );
    assert_eq!(of("resume")["by"].as_str(), Some("ops"));
    assert!(of("resume")["client"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    // Refused attempts changed nothing and wrote no halt line.
    assert_eq!(lines.iter().filter(|l| l["event"] == "halt").count(), 1);
}
