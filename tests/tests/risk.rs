//! The broker's pre-trade risk stage between real processes: a rule rejecting at its
//! limit through the Rust client, one account's cap shared by 3 clients through 2 SIM
//! workers, and an order body the stage cannot decode.

use std::collections::HashSet;
use std::time::Duration;

use tradeplex_client::{CallOptions, Client, ClientError};
use tradeplex_proto::model::{Direction, GatewayRequest, Order, OrderRequest, OrderType};
use tradeplex_proto::ErrorCode;
use tradeplex_tests::*;

/// A broker with `risk` (TOML lines of the `[risk]` section and its tables).
fn broker_with_risk(risk: &str) -> Broker {
    let path = temp_path("risk-broker.toml");
    std::fs::write(&path, risk).unwrap();
    Broker::start(&["--config", path.to_str().unwrap()])
}

fn market_order(symbol: &str, volume: f64) -> OrderRequest {
    OrderRequest {
        symbol: symbol.into(),
        exchange: String::new(),
        direction: Direction::Long,
        order_type: OrderType::Market,
        volume,
        price: 0.0,
        offset: Default::default(),
        account: "sim".into(),
        reference: "risk-test".into(),
    }
}

#[test]
fn order_size_limit_rejects_above_its_limit_with_risk_rejected_and_counts_it() {
    let broker =
        broker_with_risk("[risk]\n[[risk.account]]\nname = \"sim\"\norder_size_limit = 10\n");
    let _w = broker.worker(&["--service", "SIM"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    let at_limit = client
        .send_order("SIM", market_order("AAPL", 10.0))
        .unwrap();
    assert_eq!(at_limit.volume, 10.0);
    let m = risk_message(client.send_order("SIM", market_order("AAPL", 12.0)));
    assert_eq!(m, "order_size_limit: limit 10, value 12");
    // Another account has no limits.
    let mut other = market_order("AAPL", 12.0);
    other.account = "nobody".into();
    let r = client.send_order("SIM", other);
    assert!(
        !matches!(
            &r,
            Err(ClientError::Remote {
                code: Some(ErrorCode::RiskRejected),
                ..
            })
        ),
        "{r:?}"
    );
    let s = scrape(&broker.http);
    assert_eq!(
        s.value(
            "tradeplex_risk_rejected_total",
            &[("rule", "order_size_limit")]
        ),
        Some(1.0)
    );
    assert_eq!(s.value("tradeplex_risk_checked_total", &[]), Some(3.0));
}

#[test]
fn three_clients_through_two_workers_share_one_accounts_daily_order_cap() {
    let broker =
        broker_with_risk("[risk]\n[[risk.account]]\nname = \"sim\"\ncontract_order_limit = 9\n");
    let _w1 = broker.worker(&["--service", "SIM", "--capacity", "4"]);
    let _w2 = broker.worker(&["--service", "SIM", "--capacity", "4"]);
    let first = broker.client();
    broker.wait_for_workers(&first, "SIM", 2);
    let clients: Vec<Client> = (0..3).map(|_| broker.client()).collect();
    let results: Vec<(usize, usize, HashSet<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let (mut ok, mut rejected, mut workers) = (0, 0, HashSet::new());
                    for _ in 0..5 {
                        // No affinity: the broker spreads the orders over both workers.
                        let body = rmp_serde::to_vec_named(&GatewayRequest::SendOrder(
                            market_order("AAPL", 1.0),
                        ))
                        .unwrap();
                        match c.call("SIM", body, CallOptions::default()) {
                            Ok(reply) => {
                                ok += 1;
                                workers.insert(format!("{:?}", reply.worker));
                            }
                            Err(ClientError::Remote {
                                code: Some(ErrorCode::RiskRejected),
                                message,
                                ..
                            }) => {
                                assert_eq!(message, "contract_order_limit: limit 9, value 10");
                                rejected += 1;
                            }
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                    (ok, rejected, workers)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: usize = results.iter().map(|r| r.0).sum();
    let rejected: usize = results.iter().map(|r| r.1).sum();
    let workers: HashSet<&String> = results.iter().flat_map(|r| &r.2).collect();
    assert_eq!((ok, rejected), (9, 6), "{results:?}");
    assert_eq!(workers.len(), 2, "both workers served orders: {workers:?}");
    // Another symbol has its own count.
    first
        .send_order("SIM", market_order("IF2412", 1.0))
        .unwrap();
}

#[test]
fn an_undecodable_send_order_is_bad_request_and_the_broker_keeps_running() {
    let mut broker = broker_with_risk("[risk]\n[risk.default]\norder_size_limit = 100\n");
    let _w = broker.worker(&["--service", "SIM"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    for bad in [
        serde_json::json!({"op": "send_order", "symbol": 5}),
        serde_json::json!({"op": "send_order", "symbol": "AAPL", "direction": "up", "volume": 1.0}),
        serde_json::json!({"op": "send_order", "symbol": "AAPL", "direction": "long", "volume": -1.0}),
    ] {
        match client.call(
            "SIM",
            body(bad.clone()),
            CallOptions::default().timeout(Duration::from_secs(5)),
        ) {
            Err(ClientError::Remote {
                code: Some(ErrorCode::BadRequest),
                message,
                ..
            }) => {
                assert!(message.starts_with("send_order: "), "{bad}: {message}");
            }
            other => panic!("{bad}: expected bad_request, got {other:?}"),
        }
    }
    assert!(
        broker.proc.child.try_wait().unwrap().is_none(),
        "broker exited"
    );
    let placed = client.send_order("SIM", market_order("AAPL", 1.0)).unwrap();
    assert_eq!(placed.symbol, "AAPL");
}

/// Waits until the subscriber has seen `id` in `status` (the relay feeds the stage before
/// it forwards, so from then on the stage knows it too).
fn wait_order_event(
    sub: &tradeplex_client::events::Subscriber,
    id: &tradeplex_proto::model::OrderId,
    status: tradeplex_proto::model::Status,
) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        if let Some(e) = sub.recv_timeout(Duration::from_millis(100)) {
            if let Ok(o) = e.decode::<Order>() {
                if &o.order_id == id && o.status == status {
                    return;
                }
            }
        }
    }
    panic!("no {status:?} event for {id}");
}

#[test]
fn active_order_limit_follows_the_workers_order_events() {
    use tradeplex_client::events::{EventOptions, Subscriber};
    use tradeplex_proto::model::Status;
    let broker =
        broker_with_risk("[risk]\n[[risk.account]]\nname = \"sim\"\nactive_order_limit = 2\n");
    let _w = broker.worker(&["--service", "SIM"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    let opts = EventOptions {
        heartbeat: Duration::from_millis(TEST_HEARTBEAT_MS),
        liveness: 5,
        ..EventOptions::default()
    };
    let sub = Subscriber::connect(&broker.xpub, &["order.sim"], opts).unwrap();
    assert!(
        sub.wait_connected(Duration::from_secs(10)),
        "no broker heartbeat"
    );
    // At the day's lower price limit: the orders rest (SIM's walk stays inside the band).
    client.subscribe("SIM", "IF2412").unwrap();
    let floor = client.query_tick("SIM", "IF2412", "").unwrap().limit_down;
    let resting = || OrderRequest {
        order_type: OrderType::Limit,
        price: floor,
        ..market_order("IF2412", 1.0)
    };
    let a = client.send_order("SIM", resting()).unwrap();
    let b = client.send_order("SIM", resting()).unwrap();
    wait_order_event(&sub, &a.order_id, Status::NotTraded);
    wait_order_event(&sub, &b.order_id, Status::NotTraded);
    let m = risk_message(client.send_order("SIM", resting()));
    assert_eq!(m, "active_order_limit: limit 2, value 3");
    client.cancel_order(&a.order_id).unwrap();
    wait_order_event(&sub, &a.order_id, Status::Cancelled);
    client.send_order("SIM", resting()).unwrap();
}
