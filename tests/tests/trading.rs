//! The trading layer between real processes: SIM workers behind a broker, typed client
//! calls, order/trade events, cancels routed to the placing worker, rejects, last value,
//! sequence numbers, gateway outages and a broker restart mid-stream.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tradeplex_client::events::{EventOptions, Subscriber};
use tradeplex_client::{CallOptions, Client};
use tradeplex_proto::model::{
    Account, Direction, GatewayRequest, Order, OrderRequest, OrderType, Position, Status, Trade,
};
use tradeplex_tests::*;

fn events(broker: &Broker, prefixes: &[&str]) -> Subscriber {
    let opts = EventOptions {
        heartbeat: Duration::from_millis(TEST_HEARTBEAT_MS),
        liveness: 5,
        ..EventOptions::default()
    };
    let sub = Subscriber::connect(&broker.xpub, prefixes, opts).unwrap();
    assert!(
        sub.wait_connected(Duration::from_secs(10)),
        "no broker heartbeat"
    );
    sub
}

fn order(
    symbol: &str,
    direction: Direction,
    order_type: OrderType,
    volume: f64,
    price: f64,
) -> OrderRequest {
    OrderRequest {
        symbol: symbol.into(),
        exchange: String::new(),
        direction,
        order_type,
        volume,
        price,
        offset: Default::default(),
        account: String::new(),
        reference: "test".into(),
    }
}

/// A worker config file for SIM with a given tick interval.
fn sim_config(tick_interval_ms: u64) -> String {
    let path = temp_path("sim-worker.toml");
    std::fs::write(
        &path,
        format!("[sim]\ntick_interval_ms = {tick_interval_ms}\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn sim_cluster(workers: usize, tick_interval_ms: u64) -> (Broker, Vec<Worker>, Client) {
    let broker = Broker::start(&[]);
    let config = sim_config(tick_interval_ms);
    let ws = (0..workers)
        .map(|_| broker.worker(&["--service", "SIM", "--capacity", "4", "--config", &config]))
        .collect();
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", workers as u32);
    (broker, ws, client)
}

#[test]
fn an_order_fills_against_the_book_and_queries_agree_with_the_fills() {
    let (broker, _w, client) = sim_cluster(1, 500);
    let sub = events(&broker, &["order.sim", "trade.sim"]);
    let placed = client
        .send_order(
            "SIM",
            order("IF2412", Direction::Long, OrderType::Market, 3.0, 0.0),
        )
        .unwrap();
    assert_ne!(placed.status, Status::Rejected, "{:?}", placed.reason);

    let (mut final_order, mut trades) = (None::<Order>, Vec::<Trade>::new());
    let until = Instant::now() + Duration::from_secs(10);
    while (final_order.is_none() || trades.iter().map(|t| t.volume).sum::<f64>() < 3.0)
        && Instant::now() < until
    {
        let Some(e) = sub.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match e.kind.as_str() {
            "order" => {
                let o: Order = e.decode().unwrap();
                if o.order_id == placed.order_id && o.status.is_final() {
                    final_order = Some(o);
                }
            }
            "trade" => {
                let t: Trade = e.decode().unwrap();
                if t.order_id == placed.order_id {
                    trades.push(t);
                }
            }
            _ => {}
        }
    }
    let o = final_order.expect("a final order event");
    assert_eq!(o.status, Status::AllTraded);
    let filled: f64 = trades.iter().map(|t| t.volume).sum();
    assert_eq!(filled, 3.0, "trade volumes add up to the order");
    assert_eq!(o.traded, filled);
    let vwap = trades.iter().map(|t| t.price * t.volume).sum::<f64>() / filled;

    let positions: Vec<Position> = client.query_position("SIM", "").unwrap();
    let p = positions
        .iter()
        .find(|p| p.symbol == "IF2412")
        .expect("a position");
    assert_eq!((p.direction, p.volume), (Direction::Long, 3.0));
    assert!(
        (p.price - vwap).abs() < 1e-6,
        "average price {} vs fills {vwap}",
        p.price
    );

    let accounts: Vec<Account> = client.query_account("SIM", "").unwrap();
    let a = &accounts[0];
    let margin = vwap * 3.0 * 300.0 * 0.12;
    assert!(
        (a.frozen - margin).abs() < 1e-3,
        "frozen {} vs margin {margin}",
        a.frozen
    );
    assert!(
        (a.balance - 1_000_000.0).abs() < 1e-6,
        "no realised P&L yet"
    );
    assert!((a.available - (a.balance - a.frozen)).abs() < 1e-6);
}

#[test]
fn a_cancel_reaches_the_worker_that_placed_the_order() {
    let (_broker, workers, client) = sim_cluster(3, 500);
    let contracts = client.query_contracts("SIM").unwrap();
    assert!(contracts.iter().any(|c| c.symbol == "AAPL"));
    // Orders sent without an affinity key spread over the workers (least recently used);
    // a bid far below the market rests.
    let mut placed = Vec::new();
    for _ in 0..6 {
        let req =
            GatewayRequest::SendOrder(order("AAPL", Direction::Long, OrderType::Limit, 1.0, 100.0));
        let o: Order = client
            .call_typed("SIM", &req, CallOptions::command())
            .unwrap();
        assert_eq!(o.status, Status::NotTraded, "{:?}", o.reason);
        placed.push(o);
    }
    let placers: HashSet<String> = placed
        .iter()
        .map(|o| o.order_id.worker().unwrap().to_string())
        .collect();
    assert!(
        placers.len() >= 2,
        "orders should have spread over workers: {placers:?}"
    );
    assert!(placers.iter().all(|p| workers.iter().any(|w| &w.id == p)));
    for o in &placed {
        let cancelled = client.cancel_order(&o.order_id).unwrap();
        assert_eq!(cancelled.status, Status::Cancelled);
        assert_eq!(cancelled.order_id, o.order_id);
    }
}

#[test]
fn rejects_come_back_with_their_reason() {
    let (_broker, _w, client) = sim_cluster(1, 500);
    let cases = [
        (
            order("NOPE", Direction::Long, OrderType::Limit, 1.0, 10.0),
            "unknown symbol",
        ),
        (
            order("IF2412", Direction::Long, OrderType::Limit, 0.0, 3900.0),
            "bad volume",
        ),
        (
            order("IF2412", Direction::Long, OrderType::Market, 10.0, 0.0),
            "insufficient funds",
        ),
    ];
    for (req, reason) in cases {
        let o = client.send_order("SIM", req).unwrap();
        assert_eq!(o.status, Status::Rejected);
        let got = o.reason.unwrap_or_default();
        assert!(got.starts_with(reason), "expected {reason:?}, got {got:?}");
    }
}

#[test]
fn a_late_subscriber_gets_the_last_tick_at_once() {
    // One tick a minute: anything the late subscriber receives within the test is the
    // broker's last value, not a new tick.
    let (broker, _w, client) = sim_cluster(1, 60_000);
    let early = events(&broker, &["tick.SIM.AAPL"]);
    client.subscribe("SIM", "AAPL").unwrap();
    let first = early
        .recv_timeout(Duration::from_secs(5))
        .expect("subscribe publishes the current tick");
    let late = events(&broker, &["tick.SIM.AAPL"]);
    let e = late
        .recv_timeout(Duration::from_secs(3))
        .expect("the last tick at once");
    assert_eq!((e.source, e.seq), (first.source, first.seq));
    let tick: tradeplex_proto::model::Tick = e.decode().unwrap();
    assert_eq!(tick.symbol, "AAPL");
    assert!(tick.bid_price[0] < tick.ask_price[0]);
}

#[test]
fn tick_sequences_are_contiguous_per_worker_and_topic() {
    let (broker, _w, client) = sim_cluster(1, 20);
    let sub = events(&broker, &["tick.SIM."]);
    client.subscribe("SIM", "AAPL").unwrap();
    client.subscribe("SIM", "rb2501").unwrap();
    let mut seen = std::collections::HashMap::<String, Vec<u64>>::new();
    while seen.values().map(Vec::len).min().unwrap_or(0) < 20 || seen.len() < 2 {
        let e = sub.recv_timeout(Duration::from_secs(5)).expect("ticks");
        seen.entry(e.topic.clone()).or_default().push(e.seq);
    }
    for (topic, seqs) in &seen {
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{topic}: {seqs:?}"
        );
    }
    assert_eq!(sub.gaps(), 0);
}

#[test]
fn a_worker_whose_gateway_is_down_gets_no_requests_until_it_reconnects() {
    let (_broker, workers, client) = sim_cluster(2, 500);
    let (a, b) = (&workers[0], &workers[1]);
    let a_id = a.id.parse().unwrap();
    let body = body(serde_json::json!({"op": "sim_disconnect", "duration_ms": 2500}));
    client
        .call("SIM", body, CallOptions::command().target(a_id))
        .unwrap();
    let offers_sim = |id: &str| {
        client.status().ok().is_some_and(|s| {
            s.workers.iter().any(|w| {
                w.worker.to_string() == id && w.services.iter().any(|x| x.as_str() == "SIM")
            })
        })
    };
    wait_until(Duration::from_secs(5), "worker A to withdraw SIM", || {
        !offers_sim(&a.id)
    });
    for _ in 0..10 {
        let r = client
            .call(
                "SIM",
                body_of(&GatewayRequest::QueryContracts),
                CallOptions::query(),
            )
            .unwrap();
        assert_eq!(
            r.worker.to_string(),
            b.id,
            "a request reached the worker whose gateway is down"
        );
    }
    wait_until(
        Duration::from_secs(10),
        "worker A to offer SIM again",
        || offers_sim(&a.id),
    );
    wait_until(
        Duration::from_secs(10),
        "a request served by A again",
        || {
            client
                .call(
                    "SIM",
                    body_of(&GatewayRequest::QueryContracts),
                    CallOptions::query(),
                )
                .is_ok_and(|r| r.worker.to_string() == a.id)
        },
    );
}

fn body_of(req: &GatewayRequest) -> Vec<u8> {
    rmp_serde::to_vec_named(req).unwrap()
}

#[test]
fn sim_events_flow_again_after_a_broker_restart() {
    let (mut broker, _w, client) = sim_cluster(1, 20);
    let sub = events(&broker, &["tick.SIM.BTCUSDT"]);
    client.subscribe("SIM", "BTCUSDT").unwrap();
    assert!(sub.recv_timeout(Duration::from_secs(5)).is_some());
    let restarted = broker.kill9_and_restart();
    restarted.wait_for_workers(&client, "SIM", 1);
    while sub.try_recv().is_some() {}
    // The worker's PUB and the subscriber's SUB reconnect by themselves; the worker still
    // streams the symbol it was asked for before the restart.
    wait_until(Duration::from_secs(10), "ticks after the restart", || {
        sub.recv_timeout(Duration::from_millis(100)).is_some()
    });
    wait_until(Duration::from_secs(5), "the new broker's heartbeat", || {
        sub.stats()
            .broker_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    });
}

/// Issue 10, item 12: an operator matches a CLI order to the worker's journal by its
/// reference: a start line (reference, deadline, body) before execution, a done line with
/// the order id and status after.
#[test]
fn cli_order_reference_matches_its_journal_start_and_outcome_lines() {
    let broker = Broker::start(&[]);
    let journal = temp_path("cli-order-journal");
    let j = journal.to_str().unwrap();
    let _w = broker.worker(&["--service", "SIM", "--journal", j, "--journal-fsync", "5ms"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    let args: Vec<String> = [
        "--broker",
        &broker.frontend,
        "--events",
        &broker.xpub,
        "order",
        "AAPL",
        "buy",
        "1",
        "--price",
        "1",
        "--reference",
        "desk7-42",
        "--timeout-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_to_exit("tradeplex", &args, Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{out:?}");
    let first = out.stdout.lines().next().unwrap_or_default();
    let (order_id, reference) = first.split_once(' ').expect("order id and reference");
    assert_eq!(reference, "reference=desk7-42", "{out:?}");

    let start = journal_executions(&journal)
        .into_iter()
        .find(|l| l["reference"] == "desk7-42")
        .expect("a start line with the order's reference");
    assert_eq!(start["service"], "SIM");
    assert_eq!(start["idempotent"], false);
    assert_eq!(start["body"]["op"], "send_order");
    assert_eq!(start["body"]["symbol"], "AAPL");
    let (ts, deadline) = (start["ts_ms"].as_u64(), start["deadline_ms"].as_u64());
    assert!(deadline > ts, "deadline after the start: {start}");
    let job = start["job"].as_u64().expect("job");
    let done = journal_outcome(&journal, job).expect("a done line for the order's job");
    assert_eq!(done["outcome"], "ok");
    assert_eq!(done["order_id"], order_id);
    assert_eq!(done["status"], "not_traded");
    assert_eq!(done["id"], start["id"]);
}

#[test]
fn a_basket_of_orders_gets_each_its_own_answer_in_order() {
    let (_broker, _w, client) = sim_cluster(1, 500);
    let basket = vec![
        order("NOPE", Direction::Long, OrderType::Limit, 1.0, 10.0),
        order("IF2412", Direction::Long, OrderType::Limit, 1.0, 3900.0),
        order("IF2412", Direction::Long, OrderType::Limit, 0.0, 3900.0),
        order("IF2412", Direction::Long, OrderType::Market, 10.0, 0.0),
    ];
    let answers = client.send_orders("SIM", basket).unwrap();
    assert_eq!(answers.len(), 4);
    let orders: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
    let reason = |o: &tradeplex_proto::model::Order| o.reason.clone().unwrap_or_default();
    assert!(reason(&orders[0]).starts_with("unknown symbol"));
    assert_ne!(orders[1].status, Status::Rejected, "{:?}", orders[1]);
    assert_eq!(orders[1].volume, 1.0);
    assert!(reason(&orders[2]).starts_with("bad volume"));
    assert!(reason(&orders[3]).starts_with("insufficient funds"));
    let ids: HashSet<_> = orders.iter().map(|o| o.order_id.to_string()).collect();
    assert_eq!(ids.len(), 4, "each order its own id");
}
