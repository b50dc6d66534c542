//! Each pre-trade rule between real processes (the ones tests/risk.rs does not already
//! drive): one broker, one SIM worker with an account per rule, each account limited by
//! one rule; every rule passes an order at (or just under) its limit and refuses the next
//! with `risk_rejected` naming the rule. Rules fed by events (cancel, trade and position
//! caps) wait for the event that feeds them, as the broker sees it relayed.

use std::time::{Duration, Instant};

use tradeplex_client::events::{EventOptions, Subscriber};
use tradeplex_client::{Client, ClientError};
use tradeplex_proto::model::{Direction, Offset, Order, OrderRequest, Position, Status, Trade};
use tradeplex_proto::ErrorCode;
use tradeplex_tests::*;

const ACCOUNTS: [&str; 7] = ["value", "flow", "dup", "valid", "cancel", "trade", "pos"];

fn configs() -> (String, String) {
    let sim = temp_path("risk-rules-sim.toml");
    let accounts: String = ACCOUNTS
        .iter()
        .map(|a| format!("[[sim.accounts]]\naccount = \"{a}\"\ncash = 10000000.0\n"))
        .collect();
    std::fs::write(&sim, format!("[sim]\ntick_interval_ms = 100\n{accounts}")).unwrap();
    let broker = temp_path("risk-rules-broker.toml");
    std::fs::write(
        &broker,
        "[risk]\n\
         [[risk.account]]\nname = \"value\"\norder_value_limit = 1000\n\
         [[risk.account]]\nname = \"flow\"\norder_flow_limit_per_min = 2\n\
         [[risk.account]]\nname = \"dup\"\nduplicate_order_window_ms = 600000\nduplicate_order_limit = 1\n\
         [[risk.account]]\nname = \"valid\"\norder_validity = true\n\
         [[risk.account]]\nname = \"cancel\"\ncontract_cancel_limit = 1\n\
         [[risk.account]]\nname = \"trade\"\ncontract_trade_limit = 1\n\
         [[risk.account]]\nname = \"pos\"\nposition_limit = 2\n\
         [risk.contract.\"AAPL\"]\nsize = 1\npricetick = 0.01\nmin_volume = 1\n",
    )
    .unwrap();
    (
        sim.to_str().unwrap().to_string(),
        broker.to_str().unwrap().to_string(),
    )
}

/// A limit bid on AAPL far below its market (it rests).
fn bid(account: &str, price: f64, volume: f64) -> OrderRequest {
    rules_order(account).price(price).volume(volume).build()
}

fn market(account: &str, direction: Direction, volume: f64, offset: Offset) -> OrderRequest {
    rules_order(account)
        .market()
        .direction(direction)
        .volume(volume)
        .offset(offset)
        .build()
}

/// This file's AAPL orders are tagged `rules-ACCOUNT`.
fn rules_order(account: &str) -> AaplOrder {
    aapl_order(account, &format!("rules-{account}"))
}

fn passes(client: &Client, o: OrderRequest) -> Order {
    match client.send_order("SIM", o) {
        Ok(order) => order,
        Err(e) => panic!("expected the order to pass the stage, got {e}"),
    }
}

fn refused(client: &Client, o: OrderRequest) -> String {
    match client.send_order("SIM", o) {
        Err(ClientError::Remote {
            code: Some(ErrorCode::RiskRejected),
            message,
            ..
        }) => message,
        other => panic!("expected risk_rejected, got {other:?}"),
    }
}

/// Waits for the first event of `kind` for which `hit` holds.
fn wait_event(sub: &Subscriber, kind: &str, what: &str, mut hit: impl FnMut(&[u8]) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < until, "no {what}");
        if let Some(e) = sub.recv_timeout(Duration::from_millis(200)) {
            if e.kind == kind && hit(&e.body) {
                return;
            }
        }
    }
}

#[test]
fn each_rule_passes_at_its_limit_and_refuses_past_it() {
    let (sim, cfg) = configs();
    let broker = Broker::start(&["--config", &cfg]);
    let w = broker.worker(&["--service", "SIM", "--config", &sim]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    let opts = EventOptions {
        heartbeat: Duration::from_millis(TEST_HEARTBEAT_MS),
        liveness: 5,
        ..EventOptions::default()
    };
    let sub = Subscriber::connect(
        &broker.xpub,
        &["order.", "trade.", "position.", "tick.SIM.AAPL"],
        opts,
    )
    .unwrap();
    assert!(
        sub.wait_connected(Duration::from_secs(10)),
        "no broker heartbeat"
    );
    // A tick from the worker: its event connection is up, so the events the rules read
    // reach the broker.
    subscribe_ticks_at(&client, w.id.parse().unwrap(), "AAPL");
    wait_event(&sub, "tick", "tick from the worker", |_| true);

    // order_value_limit: price × volume × size.
    passes(&client, bid("value", 100.0, 10.0));
    let m = refused(&client, bid("value", 100.0, 11.0));
    assert_eq!(m, "order_value_limit: limit 1000, value 1100");

    // order_flow_limit per minute.
    passes(&client, bid("flow", 100.0, 1.0));
    passes(&client, bid("flow", 101.0, 1.0));
    let m = refused(&client, bid("flow", 102.0, 1.0));
    assert!(m.starts_with("order_flow_limit: limit 2/min"), "{m}");

    // duplicate_order: the same symbol, side, price and volume within the window.
    passes(&client, bid("dup", 100.0, 1.0));
    let m = refused(&client, bid("dup", 100.0, 1.0));
    assert!(m.starts_with("duplicate_order: limit 1"), "{m}");
    passes(&client, bid("dup", 100.5, 1.0));

    // order_validity: on the tick, a whole lot, a known contract.
    passes(&client, bid("valid", 100.25, 1.0));
    let m = refused(&client, bid("valid", 100.255, 1.0));
    assert!(m.starts_with("order_validity:"), "{m}");
    let m = refused(&client, bid("valid", 100.0, 1.5));
    assert!(m.starts_with("order_validity:"), "{m}");
    let m = refused(
        &client,
        OrderRequest {
            symbol: "NOSUCH".into(),
            ..bid("valid", 100.0, 1.0)
        },
    );
    assert!(m.starts_with("order_validity:"), "{m}");

    // contract_cancel_limit: a resting order passes; once its cancel is counted (the
    // broker knows the order from its event), new orders in the symbol are refused.
    let o = passes(&client, bid("cancel", 100.0, 1.0));
    assert_eq!(o.status, Status::NotTraded, "{:?}", o.reason);
    wait_event(&sub, "order", "the resting order's event", |b| {
        rmp_serde::from_slice::<Order>(b).is_ok_and(|e| e.order_id == o.order_id)
    });
    client.cancel_order(&o.order_id).unwrap();
    let m = refused(&client, bid("cancel", 100.0, 1.0));
    assert_eq!(m, "contract_cancel_limit: limit 1, value 1");

    // contract_trade_limit: a market order fills; its trade event closes the symbol.
    passes(&client, market("trade", Direction::Long, 1.0, Offset::None));
    wait_event(&sub, "trade", "the trade event", |b| {
        rmp_serde::from_slice::<Trade>(b).is_ok_and(|t| t.account == "trade")
    });
    let m = refused(&client, bid("trade", 100.0, 1.0));
    assert_eq!(m, "contract_trade_limit: limit 1, value 1");

    // position_limit: holding 2 (at the limit) passes; one more to open is refused, a
    // closing order is not limited.
    passes(&client, market("pos", Direction::Long, 2.0, Offset::None));
    wait_event(&sub, "position", "the position event", |b| {
        rmp_serde::from_slice::<Position>(b)
            .is_ok_and(|p| p.account == "pos" && p.direction == Direction::Long && p.volume == 2.0)
    });
    let m = refused(&client, bid("pos", 100.0, 1.0));
    assert_eq!(m, "position_limit: limit 2, value 3");
    passes(&client, market("pos", Direction::Short, 1.0, Offset::Close));

    let m = scrape(&broker.http);
    for rule in [
        "order_value_limit",
        "order_flow_limit",
        "duplicate_order",
        "contract_cancel_limit",
        "contract_trade_limit",
        "position_limit",
    ] {
        assert_eq!(
            m.value("tradeplex_risk_rejected_total", &[("rule", rule)]),
            Some(1.0),
            "{rule}"
        );
    }
    assert_eq!(
        m.value(
            "tradeplex_risk_rejected_total",
            &[("rule", "order_validity")]
        ),
        Some(3.0)
    );
}

/// daily_loss_limit from the account's events: a SIM market with no volatility (the book
/// stands still), so a market buy and a market sell of one lot lose exactly the spread.
/// Orders pass while the loss is under the limit (none yet, then the round trip itself);
/// once the account event with the lower balance is relayed, the next order is refused
/// with the loss the trades imply.
#[test]
fn daily_loss_limit_refuses_once_the_account_events_show_the_loss() {
    let sim = temp_path("risk-loss-sim.toml");
    std::fs::write(
        &sim,
        "[sim]\ntick_interval_ms = 100\nvolatility = 0.0\n\
         [[sim.accounts]]\naccount = \"loss\"\ncash = 10000000.0\n",
    )
    .unwrap();
    let cfg = temp_path("risk-loss-broker.toml");
    std::fs::write(
        &cfg,
        "[risk]\n[[risk.account]]\nname = \"loss\"\ndaily_loss_limit = 0.001\n",
    )
    .unwrap();
    let broker = Broker::start(&["--config", cfg.to_str().unwrap()]);
    let _w = broker.worker(&["--service", "SIM", "--config", sim.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    let opts = EventOptions {
        heartbeat: Duration::from_millis(TEST_HEARTBEAT_MS),
        liveness: 5,
        ..EventOptions::default()
    };
    let sub = Subscriber::connect(&broker.xpub, &["trade.", "account."], opts).unwrap();
    assert!(
        sub.wait_connected(Duration::from_secs(10)),
        "no broker heartbeat"
    );
    let account = |b: &[u8]| rmp_serde::from_slice::<tradeplex_proto::model::Account>(b).ok();
    let trade = |b: &[u8]| rmp_serde::from_slice::<Trade>(b).ok();

    // No loss yet: the opening buy passes, and its account event (the balance the day
    // starts from, for the broker) is relayed.
    passes(&client, market("loss", Direction::Long, 1.0, Offset::None));
    let mut first = None;
    let mut bought = None;
    let until = Instant::now() + Duration::from_secs(10);
    while first.is_none() || bought.is_none() {
        assert!(Instant::now() < until, "no trade/account event for the buy");
        if let Some(e) = sub.recv_timeout(Duration::from_millis(200)) {
            match e.kind.as_str() {
                "account" => first = first.or(account(&e.body).map(|a| a.balance)),
                "trade" => bought = bought.or(trade(&e.body).map(|t| t.price)),
                _ => {}
            }
        }
    }
    let (first, bought) = (first.unwrap(), bought.unwrap());

    // The closing sell passes too (the loss is realised by it, not before it).
    passes(
        &client,
        market("loss", Direction::Short, 1.0, Offset::Close),
    );
    let mut sold = None;
    let mut after = None;
    let until = Instant::now() + Duration::from_secs(10);
    while sold.is_none() || after.is_none() {
        assert!(
            Instant::now() < until,
            "no trade/account event for the sell"
        );
        if let Some(e) = sub.recv_timeout(Duration::from_millis(200)) {
            match e.kind.as_str() {
                "account" => {
                    after = account(&e.body)
                        .map(|a| a.balance)
                        .filter(|b| *b < first)
                        .or(after)
                }
                "trade" => sold = sold.or(trade(&e.body).map(|t| t.price)),
                _ => {}
            }
        }
    }
    let (sold, after) = (sold.unwrap(), after.unwrap());
    let loss = bought - sold;
    assert!(
        loss > 0.001,
        "the round trip lost {loss} (bought {bought}, sold {sold})"
    );
    assert!(
        (first - after - loss).abs() < 1e-6,
        "{first} - {after} vs {loss}"
    );

    let m = refused(&client, bid("loss", 100.0, 1.0));
    assert_eq!(
        m,
        format!("daily_loss_limit: limit 0.001, value {}", first - after)
    );
}
