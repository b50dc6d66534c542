//! The SIM gateway served through [`GatewayService`], as the executor calls it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tradeplex_proto::model::{Account, Contract, Order, Position, Status, Tick, Trade};
use tradeplex_proto::{ErrorCode, JobId, RequestId, ServiceName, WorkerId};

use super::config::SimConfig;
use super::*;
use crate::gateway::{GatewayService, OutEvent};
use crate::handler::{Handler, HandlerError, Request};
use crate::metrics::WorkerMetrics;

struct Fixture {
    service: GatewayService,
    events: crossbeam_channel::Receiver<OutEvent>,
    metrics: Arc<WorkerMetrics>,
    worker: WorkerId,
}

fn fixture(config: SimConfig) -> Fixture {
    let gateway = Arc::new(SimGateway::new(config).unwrap());
    let (sink, events) = EventSink::channel(100_000);
    let metrics = Arc::new(WorkerMetrics::new());
    let sink = sink.with_metrics(metrics.clone());
    let worker = WorkerId::random();
    gateway
        .connect(GatewayContext {
            worker,
            sink: sink.clone(),
        })
        .unwrap();
    Fixture {
        service: GatewayService::new(gateway, Some(metrics.clone())),
        events,
        metrics,
        worker,
    }
}

impl Fixture {
    fn call(&self, body: serde_json::Value) -> Result<Vec<u8>, HandlerError> {
        self.raw(rmp_serde::to_vec_named(&body).unwrap())
    }

    fn raw(&self, body: Vec<u8>) -> Result<Vec<u8>, HandlerError> {
        self.service.handle(&Request {
            job: JobId(1),
            id: RequestId(1),
            service: ServiceName::new("SIM").unwrap(),
            deadline_ms: tradeplex_proto::now_unix_ms() + 5000,
            idempotent: false,
            body,
        })
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, body: serde_json::Value) -> T {
        rmp_serde::from_slice(&self.call(body).unwrap()).unwrap()
    }

    fn drain(&self) -> Vec<OutEvent> {
        self.events.try_iter().collect()
    }
}

#[test]
fn requests_are_decoded_and_replies_are_named_maps() {
    let f = fixture(SimConfig::default());
    let contracts: Vec<Contract> = f.typed(json!({"op": "query_contracts"}));
    assert_eq!(contracts.len(), 4);
    let accounts = f.call(json!({"op": "query_account"})).unwrap();
    let v = rmpv::decode::read_value(&mut &accounts[..]).unwrap();
    let first = &v.as_array().unwrap()[0];
    let keys: Vec<&str> = first
        .as_map()
        .unwrap()
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        keys,
        ["account", "gateway", "balance", "frozen", "available"]
    );
    let e = f.raw(b"\xc1garbage".to_vec()).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = f.call(json!({"op": "fly"})).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("not a SIM request"), "{}", e.message);
    let e = f
        .call(json!({"op": "send_order", "symbol": "IF2412"}))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}

#[test]
fn orders_fill_publish_their_events_and_are_counted() {
    let f = fixture(SimConfig::default());
    f.drain();
    let order: Order = f.typed(json!({
        "op": "send_order", "symbol": "rb2501", "direction": "long",
        "order_type": "market", "volume": 2.0, "reference": "t1"
    }));
    assert_eq!(order.status, Status::AllTraded);
    assert_eq!(order.order_id.worker(), Some(f.worker));
    let events = f.drain();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert!(topics.contains(&"order.sim"));
    assert!(topics.contains(&"trade.sim"));
    assert!(topics.contains(&"position.sim"));
    assert!(topics.contains(&"account.sim"));
    let positions: Vec<Position> = f.typed(json!({"op": "query_position", "account": "sim"}));
    assert_eq!(positions[0].volume, 2.0);
    let same: Order = f.typed(json!({"op": "query_order", "order_id": order.order_id}));
    assert_eq!(same, order);
    let rejected: Order = f.typed(json!({
        "op": "send_order", "symbol": "NOPE", "direction": "long", "volume": 1.0, "price": 1.0
    }));
    assert_eq!(rejected.status, Status::Rejected);
    let m = &f.metrics.orders;
    assert_eq!(m.with_label_values(&["SIM", "sent"]).get(), 1);
    assert_eq!(m.with_label_values(&["SIM", "filled"]).get(), 1);
    assert_eq!(m.with_label_values(&["SIM", "rejected"]).get(), 1);
    let e = f
        .call(json!({"op": "cancel_order", "order_id": order.order_id}))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::WorkerError);
    assert!(e.message.contains("already all_traded"), "{}", e.message);
    let e = f
        .call(json!({"op": "query_account", "account": "nobody"}))
        .unwrap_err();
    assert!(e.message.contains("unknown account"), "{}", e.message);
}

#[test]
fn subscribing_starts_the_tick_stream_of_that_symbol_only() {
    let f = fixture(SimConfig {
        tick_interval_ms: 20,
        ..SimConfig::default()
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        f.drain().iter().all(|e| e.kind != "tick"),
        "no ticks before subscribe"
    );
    let c: Contract = f.typed(json!({"op": "subscribe", "symbol": "AAPL"}));
    assert_eq!(c.pricetick, 0.01);
    let e = f
        .call(json!({"op": "subscribe", "symbol": "NOPE"}))
        .unwrap_err();
    assert!(e.message.contains("unknown symbol"));
    let until = Instant::now() + Duration::from_secs(5);
    let mut ticks = Vec::new();
    while ticks.len() < 4 && Instant::now() < until {
        if let Ok(ev) = f.events.recv_timeout(Duration::from_millis(100)) {
            if ev.kind == "tick" {
                assert_eq!(ev.topic, "tick.SIM.AAPL");
                ticks.push(rmp_serde::from_slice::<Tick>(&ev.body).unwrap());
            }
        }
    }
    assert_eq!(ticks.len(), 4);
    for w in ticks.windows(2) {
        assert!(w[1].datetime_ns > w[0].datetime_ns);
        assert_eq!(w[1].datetime_ns % 20_000_000, 0);
    }
}

#[test]
fn a_simulated_disconnect_refuses_orders_until_reconnected() {
    let f = fixture(SimConfig::default());
    assert!(f.service.available());
    let reply: DisconnectReply = f.typed(json!({"op": "sim_disconnect", "duration_ms": 400}));
    assert_eq!(reply.state, "disconnected");
    assert!(!f.service.available());
    assert_eq!(f.metrics.gateway_state.with_label_values(&["SIM"]).get(), 0);
    let e = f
        .call(json!({"op": "send_order", "symbol": "rb2501", "direction": "long", "order_type": "market", "volume": 1.0}))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    let mut seen = vec![ConnectionState::Disconnected];
    let until = Instant::now() + Duration::from_secs(5);
    while f.service.gateway().state() != ConnectionState::Connected && Instant::now() < until {
        let s = f.service.gateway().state();
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen.push(f.service.gateway().state());
    assert_eq!(
        seen,
        [
            ConnectionState::Disconnected,
            ConnectionState::Reconnecting,
            ConnectionState::Connected
        ]
    );
    assert!(f.service.available());
    let logs: Vec<String> = f
        .drain()
        .into_iter()
        .filter(|e| e.topic == "log.SIM")
        .map(|e| {
            rmp_serde::from_slice::<tradeplex_proto::model::Log>(&e.body)
                .unwrap()
                .msg
        })
        .collect();
    assert!(
        logs.iter().any(|m| m == "connection reconnecting"),
        "{logs:?}"
    );
    let order: Order = f.typed(json!({
        "op": "send_order", "symbol": "rb2501", "direction": "long", "order_type": "market", "volume": 1.0
    }));
    assert_eq!(order.status, Status::AllTraded);
    let e = f
        .call(json!({"op": "sim_disconnect", "duration_ms": 0}))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}

#[test]
fn fault_injection_can_be_disabled() {
    let f = fixture(SimConfig {
        allow_fault_injection: false,
        ..SimConfig::default()
    });
    let e = f
        .call(json!({"op": "sim_disconnect", "duration_ms": 100}))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("disabled"));
    assert!(f.service.available());
}

#[test]
fn history_bars_come_back_for_known_symbols() {
    let f = fixture(SimConfig::default());
    let now = tradeplex_proto::now_unix_ns();
    let bars: Vec<tradeplex_proto::model::Bar> = f.typed(json!({
        "op": "query_history", "symbol": "IF2412", "interval": "minute",
        "start_ns": now - 10 * 60_000_000_000u64
    }));
    assert!((9..=10).contains(&bars.len()), "{}", bars.len());
    assert!(bars
        .iter()
        .all(|b| b.exchange == "CFFEX" && b.gateway == "SIM"));
    assert!(bars
        .iter()
        .all(|b| b.low_price <= b.open_price && b.open_price <= b.high_price));
    let e = f
        .call(
            json!({"op": "query_history", "symbol": "IF2412", "interval": "minute", "start_ns": 0}),
        )
        .unwrap_err();
    assert!(e.message.contains("too long"), "{}", e.message);
    let accounts: Vec<Account> = f.typed(json!({"op": "query_account", "account": "sim"}));
    assert_eq!(accounts[0].balance, 1_000_000.0);
}

#[test]
fn contracts_ticks_and_orders_carry_vnpy_exchanges_and_fields() {
    let f = fixture(SimConfig::default());
    let contracts: Vec<Contract> = f.typed(json!({"op": "query_contracts"}));
    let listed: Vec<(&str, &str)> = contracts
        .iter()
        .map(|c| (c.symbol.as_str(), c.exchange.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("IF2412", "CFFEX"),
            ("rb2501", "SHFE"),
            ("AAPL", "NASDAQ"),
            ("BTCUSDT", "GLOBAL")
        ]
    );
    assert!(contracts
        .iter()
        .all(|c| c.history_data && !c.stop_supported && !c.net_position));
    assert!(contracts.iter().all(|c| c.gateway == "SIM"));
    // Option fields are left out, not sent as nil.
    let raw = f
        .call(json!({"op": "query_contract", "symbol": "IF2412"}))
        .unwrap();
    let v = rmpv::decode::read_value(&mut &raw[..]).unwrap();
    let keys: Vec<&str> = v
        .as_map()
        .unwrap()
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    assert!(keys.contains(&"history_data") && !keys.iter().any(|k| k.starts_with("option_")));
    let one: Contract = rmp_serde::from_slice(&raw).unwrap();
    assert_eq!(one, contracts[0]);
    let by_exchange: Contract =
        f.typed(json!({"op": "query_contract", "symbol": "IF2412", "exchange": "CFFEX"}));
    assert_eq!(by_exchange, one);
    for (body, why) in [
        (
            json!({"op": "query_contract", "symbol": "IF2412", "exchange": "SIM"}),
            "unknown exchange",
        ),
        (
            json!({"op": "query_contract", "symbol": "NOPE"}),
            "unknown symbol",
        ),
        (
            json!({"op": "query_tick", "symbol": "AAPL"}),
            "no tick for AAPL",
        ),
    ] {
        let e = f.call(body).unwrap_err();
        assert_eq!(e.code, ErrorCode::WorkerError);
        assert!(e.message.starts_with(why), "{}", e.message);
    }
    f.drain();
    let _: Contract = f.typed(json!({"op": "subscribe", "symbol": "IF2412", "exchange": "CFFEX"}));
    let tick: Tick = f.typed(json!({"op": "query_tick", "symbol": "IF2412"}));
    assert_eq!(
        (tick.exchange.as_str(), tick.name.as_str()),
        ("CFFEX", "CSI 300 index future")
    );
    assert!(
        tick.limit_down > 0.0
            && tick.limit_down < tick.last_price
            && tick.last_price < tick.limit_up
    );
    let published: Vec<Tick> = f
        .drain()
        .into_iter()
        .filter(|e| e.topic == "tick.SIM.IF2412")
        .map(|e| rmp_serde::from_slice(&e.body).unwrap())
        .collect();
    assert!(
        !published.is_empty(),
        "subscribe publishes the current tick"
    );
    assert!(published
        .iter()
        .all(|t| t.limit_up == tick.limit_up && t.exchange == "CFFEX"));

    let order: Order = f.typed(json!({
        "op": "send_order", "symbol": "rb2501", "exchange": "", "direction": "long",
        "order_type": "market", "volume": 2.0
    }));
    assert_eq!(
        (order.status, order.exchange.as_str()),
        (Status::AllTraded, "SHFE")
    );
    let trades: Vec<Trade> = f.typed(json!({"op": "query_trades", "account": ""}));
    assert_eq!(trades.iter().map(|t| t.volume).sum::<f64>(), 2.0);
    assert!(trades
        .iter()
        .all(|t| t.order_id == order.order_id && t.exchange == "SHFE"));
    let positions: Vec<Position> = f.typed(json!({"op": "query_position"}));
    assert_eq!(positions[0].exchange, "SHFE");
    let e = f
        .call(json!({"op": "query_trades", "account": "nobody"}))
        .unwrap_err();
    assert!(e.message.contains("unknown account"), "{}", e.message);
}

#[test]
fn an_ambiguous_empty_exchange_is_a_bad_request() {
    let mut config = SimConfig::default();
    let mut twin = config.symbols[3].clone();
    twin.exchange = "BINANCE".into();
    config.symbols.push(twin);
    let f = fixture(config);
    for body in [
        json!({"op": "subscribe", "symbol": "BTCUSDT"}),
        json!({"op": "query_contract", "symbol": "BTCUSDT", "exchange": ""}),
        json!({"op": "query_tick", "symbol": "BTCUSDT"}),
        json!({"op": "query_history", "symbol": "BTCUSDT", "interval": "minute", "start_ns": 0}),
        json!({"op": "send_order", "symbol": "BTCUSDT", "direction": "long", "order_type": "market", "volume": 1.0}),
    ] {
        let e = f.call(body.clone()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{body}");
        assert_eq!(
            e.message, "BTCUSDT is listed on BINANCE, GLOBAL: name the exchange",
            "{body}"
        );
    }
    let c: Contract =
        f.typed(json!({"op": "subscribe", "symbol": "BTCUSDT", "exchange": "BINANCE"}));
    assert_eq!(c.exchange, "BINANCE");
    let o: Order = f.typed(json!({
        "op": "send_order", "symbol": "BTCUSDT", "exchange": "GLOBAL", "direction": "long",
        "order_type": "market", "volume": 1.0
    }));
    assert_eq!(
        (o.status, o.exchange.as_str()),
        (Status::AllTraded, "GLOBAL")
    );
}

#[test]
fn orders_and_queries_run_inline_history_and_fault_injection_do_not() {
    let f = fixture(SimConfig::default());
    let inline = |op: &str| {
        f.service.runs_inline(&Request {
            job: JobId(1),
            id: RequestId(1),
            service: ServiceName::new("SIM").unwrap(),
            deadline_ms: tradeplex_proto::now_unix_ms() + 5000,
            idempotent: false,
            body: rmp_serde::to_vec_named(&json!({"op": op, "symbol": "IF2412"})).unwrap(),
        })
    };
    for op in [
        "send_order",
        "cancel_order",
        "query_account",
        "query_tick",
        "subscribe",
    ] {
        assert!(inline(op), "{op}");
    }
    for op in ["query_history", DISCONNECT_OP] {
        assert!(!inline(op), "{op}");
    }
}
