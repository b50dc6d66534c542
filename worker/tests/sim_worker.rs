//! Smoke test of a real `tradeplex-worker --service SIM` process behind an in-process
//! broker: orders fill against the book, queries agree with the fills, rejects carry their
//! reason, and events arrive on a raw SUB socket, framed, with contiguous sequence numbers.
//! (The cluster-wide trading tests live in tests/tests/trading.rs.)

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tradeplex_broker::{Broker, Config, Shutdown};
use tradeplex_client::{CallOptions, Client, ClientOptions};
use tradeplex_proto::event;
use tradeplex_proto::model::{
    Account, Contract, Direction, GatewayRequest, Offset, Order, OrderRequest, OrderType, Position,
    Status, SubscribeRequest, Tick, Trade,
};
use tradeplex_proto::WorkerId;

/// An in-process broker on OS-chosen loopback ports, stopped when dropped.
struct TestBroker {
    frontend: String,
    backend: String,
    xsub: String,
    xpub: String,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl TestBroker {
    fn start() -> TestBroker {
        let any = "tcp://127.0.0.1:*".to_string();
        let config = Config {
            frontend: any.clone(),
            backend: any.clone(),
            xsub: any.clone(),
            xpub: any,
            http: String::new(),
            heartbeat_ms: 100,
            liveness: 3,
            ..Config::default()
        };
        let broker = Broker::bind(config).expect("broker binds");
        let ep = broker.endpoints().clone();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            broker.run(stop).expect("broker runs");
        });
        TestBroker {
            frontend: ep.frontend,
            backend: ep.backend,
            xsub: ep.xsub,
            xpub: ep.xpub,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A worker process, killed when dropped.
struct WorkerProc {
    child: Child,
    id: WorkerId,
}

impl WorkerProc {
    fn start(broker: &TestBroker, config: &str) -> WorkerProc {
        let path = std::env::temp_dir().join(format!(
            "tpx-sim-worker-{}-{}.toml",
            std::process::id(),
            tradeplex_proto::now_unix_ns()
        ));
        std::fs::write(&path, config).expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tradeplex-worker"))
            .args(["--config", path.to_str().expect("utf-8 path")])
            .args(["--broker", &broker.backend, "--events", &broker.xsub])
            .args([
                "--service",
                "SIM",
                "--heartbeat-ms",
                "100",
                "--liveness",
                "3",
            ])
            .env(
                "TRADEPLEX_LOG",
                std::env::var("TRADEPLEX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("worker starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("worker prints its id");
        let _ = std::fs::remove_file(&path);
        let id = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no worker id in {line:?}"));
        WorkerProc { child, id }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

fn call<T: serde::de::DeserializeOwned>(client: &Client, req: &GatewayRequest) -> T {
    let opts = if req.idempotent() {
        CallOptions::query()
    } else {
        CallOptions::command()
    };
    client
        .call_typed("SIM", req, opts.affinity("acct.sim"))
        .unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

fn order(symbol: &str, t: OrderType, volume: f64, price: f64) -> GatewayRequest {
    GatewayRequest::SendOrder(OrderRequest {
        symbol: symbol.into(),
        exchange: String::new(),
        direction: Direction::Long,
        order_type: t,
        volume,
        price,
        offset: Offset::Open,
        account: "sim".into(),
        reference: "smoke".into(),
    })
}

/// Events seen on the SUB socket, checked as they arrive.
#[derive(Default)]
struct Seen {
    last_seq: HashMap<(WorkerId, String), u64>,
    ticks: Vec<Tick>,
    orders: Vec<Order>,
    trades: Vec<Trade>,
    positions: Vec<Position>,
    accounts: Vec<Account>,
}

impl Seen {
    fn read(&mut self, sub: &zmq::Socket, worker: WorkerId, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let Ok(frames) = sub.recv_multipart(zmq::DONTWAIT) else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let e = event::decode(&frames).expect("a well-framed event");
            if e.header.source != worker {
                continue; // the broker's heartbeat
            }
            assert_eq!(
                Some(e.header.kind.as_str()),
                event::kind_of(e.topic.as_bytes())
            );
            let key = (e.header.source, e.topic.clone());
            if let Some(&last) = self.last_seq.get(&key) {
                if e.header.seq <= last {
                    continue; // a repeat (the broker's last value for a new subscription)
                }
                assert_eq!(e.header.seq, last + 1, "sequence gap on {}", e.topic);
            }
            self.last_seq.insert(key, e.header.seq);
            let body = &frames[3];
            match e.header.kind.as_str() {
                "tick" => self.ticks.push(rmp_serde::from_slice(body).unwrap()),
                "order" => self.orders.push(rmp_serde::from_slice(body).unwrap()),
                "trade" => self.trades.push(rmp_serde::from_slice(body).unwrap()),
                "position" => self.positions.push(rmp_serde::from_slice(body).unwrap()),
                "account" => self.accounts.push(rmp_serde::from_slice(body).unwrap()),
                _ => {}
            }
        }
    }
}

#[test]
fn a_sim_worker_trades_against_its_book_and_publishes_what_happened() {
    let broker = TestBroker::start();
    let worker = WorkerProc::start(&broker, "[sim]\ntick_interval_ms = 50\n");
    let client = Client::connect(&broker.frontend, ClientOptions::default()).expect("client");
    wait_until("the SIM worker to register", || {
        client.status().is_ok_and(|s| {
            s.services
                .iter()
                .any(|x| x.service.as_str() == "SIM" && x.workers == 1)
        })
    });

    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    for prefix in [
        "tick.SIM.rb2501",
        "order.sim",
        "trade.sim",
        "position.sim",
        "account.sim",
    ] {
        sub.set_subscribe(prefix.as_bytes()).unwrap();
    }
    sub.connect(&broker.xpub).unwrap();
    let mut seen = Seen::default();
    // Subscribing starts ticks; seeing them proves the event path is up end to end.
    let contract: Contract = call(
        &client,
        &GatewayRequest::Subscribe(SubscribeRequest {
            symbol: "rb2501".into(),
            exchange: String::new(),
        }),
    );
    assert_eq!((contract.pricetick, contract.size), (1.0, 10.0));
    let until = Instant::now() + Duration::from_secs(10);
    while seen.ticks.len() < 3 && Instant::now() < until {
        seen.read(&sub, worker.id, Duration::from_millis(50));
    }
    assert!(seen.ticks.len() >= 3, "ticks arrive after subscribe");
    assert!(seen
        .ticks
        .iter()
        .all(|t| t.symbol == "rb2501" && t.bid_price[0] < t.ask_price[0]));

    // A market order fills against the book.
    let filled: Order = call(&client, &order("rb2501", OrderType::Market, 3.0, 0.0));
    assert_eq!(filled.status, Status::AllTraded, "{filled:?}");
    assert_eq!(filled.traded, 3.0);
    assert_eq!(filled.order_id.worker(), Some(worker.id));

    // Rejects come back with their reason.
    for (req, why) in [
        (
            order("NOPE", OrderType::Limit, 1.0, 100.0),
            "unknown symbol",
        ),
        (order("rb2501", OrderType::Limit, 0.0, 3500.0), "bad volume"),
        (order("rb2501", OrderType::Limit, 1.0, 3500.5), "bad price"),
        (
            order("IF2412", OrderType::Market, 100.0, 0.0),
            "insufficient funds",
        ),
    ] {
        let o: Order = call(&client, &req);
        assert_eq!(o.status, Status::Rejected);
        let reason = o.reason.unwrap_or_default();
        assert!(reason.contains(why), "{reason:?} should say {why:?}");
    }

    // Queries agree with the fill.
    let positions: Vec<Position> = call(
        &client,
        &GatewayRequest::QueryPosition {
            account: "sim".into(),
        },
    );
    assert_eq!(positions.len(), 1);
    let p = &positions[0];
    assert_eq!(
        (p.symbol.as_str(), p.direction, p.volume),
        ("rb2501", Direction::Long, 3.0)
    );
    let accounts: Vec<Account> = call(
        &client,
        &GatewayRequest::QueryAccount {
            account: "sim".into(),
        },
    );
    let a = &accounts[0];
    assert_eq!(a.balance, 1_000_000.0);
    let margin = p.price * p.volume * 10.0 * 0.1;
    assert!((a.frozen - margin).abs() < 1e-6, "{} vs {margin}", a.frozen);
    assert!((a.available - (a.balance - a.frozen)).abs() < 1e-6);

    // The events say the same thing.
    let until = Instant::now() + Duration::from_secs(10);
    let done = |s: &Seen| {
        s.orders
            .iter()
            .any(|o| o.order_id == filled.order_id && o.status == Status::AllTraded)
            && s.orders
                .iter()
                .filter(|o| o.status == Status::Rejected)
                .count()
                == 4
    };
    while !done(&seen) && Instant::now() < until {
        seen.read(&sub, worker.id, Duration::from_millis(50));
    }
    assert!(done(&seen), "order events arrive: {:?}", seen.orders);
    let fills: Vec<&Trade> = seen
        .trades
        .iter()
        .filter(|t| t.order_id == filled.order_id)
        .collect();
    assert_eq!(fills.iter().map(|t| t.volume).sum::<f64>(), 3.0);
    let avg = fills.iter().map(|t| t.price * t.volume).sum::<f64>() / 3.0;
    assert!((avg - p.price).abs() < 1e-9);
    let statuses: Vec<Status> = seen
        .orders
        .iter()
        .filter(|o| o.order_id == filled.order_id)
        .map(|o| o.status)
        .collect();
    assert_eq!(statuses[..2], [Status::Submitting, Status::NotTraded]);
    assert_eq!(seen.positions.last().map(|p| p.volume), Some(3.0));
    assert_eq!(seen.accounts.last(), Some(a));
}
