//! SIM follows vn.py's model, between real processes: vn.py exchanges on every object,
//! `exchange: ""` resolution (ambiguous → `bad_request`), price limits (a buy at
//! `limit_up` fills, one at `limit_down` rests, outside the band is rejected), and the
//! queries `query_trades`, `query_contract`, `query_tick` — through the typed client and
//! the `tradeplex trades` / `order --exchange` commands.

use std::time::Duration;

use tradeplex_client::{Client, ClientError};
use tradeplex_proto::model::{Direction, OrderRequest, OrderType, Status};
use tradeplex_proto::ErrorCode;
use tradeplex_tests::*;

fn order(
    symbol: &str,
    exchange: &str,
    direction: Direction,
    t: OrderType,
    price: f64,
) -> OrderRequest {
    OrderRequest {
        symbol: symbol.into(),
        exchange: exchange.into(),
        direction,
        order_type: t,
        volume: 1.0,
        price,
        offset: Default::default(),
        account: String::new(),
        reference: "vnpy-model".into(),
    }
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote { code, .. } => *code,
        _ => None,
    }
}

/// One SIM worker; `config` is the worker's TOML (empty: the defaults).
fn cluster(config: &str) -> (Broker, Worker, Client) {
    let broker = Broker::start(&[]);
    let path = temp_path("vnpy-model-worker.toml");
    std::fs::write(&path, config).unwrap();
    let w = broker.worker(&["--service", "SIM", "--config", path.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "SIM", 1);
    (broker, w, client)
}

fn cli(broker: &Broker, args: &[&str]) -> Exited {
    let mut all: Vec<String> = ["--broker", &broker.frontend, "--events", &broker.xpub]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    run_to_exit("tradeplex", &all, Duration::from_secs(20))
}

#[test]
fn sim_speaks_vnpy_exchanges_limits_and_the_new_queries() {
    let (broker, _w, client) = cluster("");
    // query_contract: "" resolves to the only listing; the vn.py fields are filled.
    let c = client.query_contract("SIM", "IF2412", "").unwrap();
    assert_eq!((c.exchange.as_str(), c.gateway.as_str()), ("CFFEX", "SIM"));
    assert!(c.history_data && !c.stop_supported && !c.net_position);
    assert_eq!(
        client
            .query_contract("SIM", "rb2501", "SHFE")
            .unwrap()
            .exchange,
        "SHFE"
    );
    let e = client.query_contract("SIM", "IF2412", "SIM").unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::WorkerError), "{e}");
    assert!(e.to_string().contains("unknown exchange"), "{e}");

    // query_tick: none before subscribe, then the tick with its name and limits.
    let e = client.query_tick("SIM", "IF2412", "").unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::WorkerError), "{e}");
    assert!(e.to_string().contains("no tick for IF2412"), "{e}");
    client.subscribe("SIM", "IF2412").unwrap();
    let t = client.query_tick("SIM", "IF2412", "CFFEX").unwrap();
    assert_eq!(
        (t.exchange.as_str(), t.name.as_str()),
        ("CFFEX", "CSI 300 index future")
    );
    assert!(t.limit_down > 0.0 && t.limit_down < t.bid_price[4], "{t:?}");
    assert!(t.ask_price[4] < t.limit_up, "{t:?}");
    // 10 % around the previous close, rounded inwards to the 0.2 tick.
    let (up, down) = (t.pre_close * 1.1, t.pre_close * 0.9);
    assert!(t.limit_up <= up + 1e-6 && t.limit_up > up - 0.2, "{t:?}");
    assert!(
        t.limit_down >= down - 1e-6 && t.limit_down < down + 0.2,
        "{t:?}"
    );

    // A buy at limit_up fills; one at limit_down rests; one tick outside is rejected.
    let up = client
        .send_order(
            "SIM",
            order("IF2412", "", Direction::Long, OrderType::Limit, t.limit_up),
        )
        .unwrap();
    assert_eq!(
        (up.status, up.exchange.as_str()),
        (Status::AllTraded, "CFFEX"),
        "{:?}",
        up.reason
    );
    let down = client
        .send_order(
            "SIM",
            order(
                "IF2412",
                "CFFEX",
                Direction::Long,
                OrderType::Limit,
                t.limit_down,
            ),
        )
        .unwrap();
    assert_eq!(down.status, Status::NotTraded, "{:?}", down.reason);
    let out = client
        .send_order(
            "SIM",
            order(
                "IF2412",
                "",
                Direction::Short,
                OrderType::Limit,
                t.limit_down - 0.2,
            ),
        )
        .unwrap();
    assert_eq!(out.status, Status::Rejected);
    let why = out.reason.clone().unwrap_or_default();
    assert!(why.starts_with("price outside the limits"), "{why}");
    // No price limits on NASDAQ (equities get 0 limits).
    let aapl = client
        .send_order(
            "SIM",
            order("AAPL", "NASDAQ", Direction::Long, OrderType::Market, 0.0),
        )
        .unwrap();
    assert_eq!(aapl.status, Status::AllTraded, "{:?}", aapl.reason);
    let sim = client
        .send_order(
            "SIM",
            order("AAPL", "SIM", Direction::Long, OrderType::Market, 0.0),
        )
        .unwrap();
    assert_eq!(sim.status, Status::Rejected);
    assert!(sim
        .reason
        .unwrap_or_default()
        .starts_with("unknown exchange"));

    // query_trades: today's fills, oldest first, carrying the exchange.
    let trades = client.query_trades("SIM", "").unwrap();
    let orders: Vec<_> = trades.iter().map(|t| t.order_id.clone()).collect();
    let first_aapl = orders
        .iter()
        .position(|o| *o == aapl.order_id)
        .expect("AAPL fill");
    assert!(
        orders[..first_aapl].iter().all(|o| *o == up.order_id),
        "{orders:?}"
    );
    assert!(orders.contains(&up.order_id));
    assert!(
        !orders.contains(&down.order_id),
        "the resting order has not traded"
    );
    for tr in &trades {
        let ex = if tr.symbol == "AAPL" {
            "NASDAQ"
        } else {
            "CFFEX"
        };
        assert_eq!((tr.exchange.as_str(), tr.account.as_str()), (ex, "sim"));
    }
    assert!(trades
        .windows(2)
        .all(|w| w[0].datetime_ns <= w[1].datetime_ns));
    let positions = client.query_position("SIM", "").unwrap();
    assert!(positions
        .iter()
        .any(|p| p.symbol == "IF2412" && p.exchange == "CFFEX"));

    // The same through the command line.
    let out = cli(&broker, &["trades"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("EXCHANGE"),
        "{out:?}"
    );
    assert_eq!(lines.len(), trades.len() + 1, "{out:?}");
    assert!(
        lines[1].contains("IF2412") && lines[1].contains("CFFEX"),
        "{out:?}"
    );
    let out = cli(&broker, &["trades", "--json"]);
    let json: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json.len(), trades.len());
    let out = cli(
        &broker,
        &[
            "order",
            "rb2501",
            "buy",
            "1",
            "--type",
            "market",
            "--exchange",
            "SHFE",
            "--timeout-ms",
            "2000",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("all_traded"), "{out:?}");
    let out = cli(
        &broker,
        &[
            "order",
            "rb2501",
            "buy",
            "1",
            "--price",
            "1",
            "--exchange",
            "DCE",
        ],
    );
    assert!(
        out.stdout
            .contains(" rejected 0/1 reason: unknown exchange \"DCE\""),
        "{out:?}"
    );
    assert!(client
        .query_trades("SIM", "sim")
        .unwrap()
        .iter()
        .any(|t| t.symbol == "rb2501" && t.exchange == "SHFE"));
}

#[test]
fn an_empty_exchange_is_refused_when_the_symbol_is_listed_twice() {
    let config = r#"
[sim]
[[sim.symbols]]
symbol = "BTCUSDT"
exchange = "GLOBAL"
product = "spot"
price = 60000.0
pricetick = 0.1

[[sim.symbols]]
symbol = "BTCUSDT"
exchange = "BINANCE"
product = "spot"
price = 60000.0
pricetick = 0.1

[[sim.symbols]]
symbol = "AAPL"
exchange = "NASDAQ"
product = "equity"
price = 190.0
pricetick = 0.01
"#;
    let (broker, _w, client) = cluster(config);
    let e = client
        .send_order(
            "SIM",
            order("BTCUSDT", "", Direction::Long, OrderType::Market, 0.0),
        )
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    assert!(
        e.to_string()
            .contains("BTCUSDT is listed on BINANCE, GLOBAL: name the exchange"),
        "{e}"
    );
    let e = client.query_contract("SIM", "BTCUSDT", "").unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    let e = client.query_tick("SIM", "BTCUSDT", "").unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    // Nothing was placed by the refused order.
    assert!(client.query_trades("SIM", "").unwrap().is_empty());
    assert!(client.query_orders("SIM", "").unwrap().is_empty());
    // Named, each listing is its own contract; AAPL alone still resolves from "".
    let o = client
        .send_order(
            "SIM",
            order(
                "BTCUSDT",
                "BINANCE",
                Direction::Long,
                OrderType::Market,
                0.0,
            ),
        )
        .unwrap();
    assert_eq!(
        (o.status, o.exchange.as_str()),
        (Status::AllTraded, "BINANCE")
    );
    assert_eq!(
        client.query_contract("SIM", "AAPL", "").unwrap().exchange,
        "NASDAQ"
    );
    let trades = client.query_trades("SIM", "").unwrap();
    assert!(!trades.is_empty() && trades.iter().all(|t| t.exchange == "BINANCE"));
    let out = cli(
        &broker,
        &["order", "BTCUSDT", "buy", "1", "--type", "market"],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("bad_request"), "{out:?}");
}
