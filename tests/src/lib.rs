//! Test harness: starts real `tradeplex-broker` and `tradeplex-worker` processes on
//! 127.0.0.1 with ports chosen by the OS, waits for them to be ready (by reading what
//! they print, or asking the broker), and kills them when the guard drops. The generic
//! parts (process guards, waits, HTTP, scraping) are `tradeplex-test-support`, shared
//! with the bench and re-exported here.

use std::path::PathBuf;
use std::time::Duration;

use tradeplex_client::{Client, ClientOptions};
use tradeplex_proto::model::{Direction, Offset, OrderRequest, OrderType};
pub use tradeplex_test_support::{
    bin, free_port, http_get, poll_until, ready_field, run_to_exit, run_with_stdin, scrape,
    wait_until, Exited, HttpResponse, Proc, Sample, Scrape,
};

/// The flags that put a broker on OS-chosen loopback ports with its HTTP port on, for
/// tests that start the process themselves (to read its log, or with a config file).
pub fn loopback_broker_flags() -> Vec<String> {
    let any = "tcp://127.0.0.1:*";
    [
        "--frontend",
        any,
        "--backend",
        any,
        "--xsub",
        any,
        "--xpub",
        any,
        "--http",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec()
}

/// A broker process and its endpoints.
pub struct Broker {
    /// The process.
    pub proc: Proc,
    /// Clients' endpoint.
    pub frontend: String,
    /// Workers' endpoint.
    pub backend: String,
    /// Event publishing endpoint.
    pub xsub: String,
    /// Event subscribing endpoint.
    pub xpub: String,
    /// HTTP address.
    pub http: String,
}

/// Fast heartbeats so failure tests finish quickly.
pub const TEST_HEARTBEAT_MS: u64 = 100;
/// Missed heartbeats before a peer is dropped: a 1 s window (0.5 s was stalled through
/// on a loaded 2-core machine: a worker expired mid-request and a drain test failed).
pub const TEST_LIVENESS: u32 = 10;

impl Broker {
    /// A broker on OS-chosen loopback ports.
    pub fn start(extra: &[&str]) -> Broker {
        let any = "tcp://127.0.0.1:*".to_string();
        Broker::start_on(&any, &any, &any, &any, "127.0.0.1:0", extra)
    }

    /// A broker on OS-chosen loopback ports that drops workers after `liveness` missed
    /// heartbeats (tests that measure expiry use a short window, tests that count
    /// exactly a long one, so a stall of a busy machine cannot expire a worker).
    pub fn start_with_liveness(liveness: u32, extra: &[&str]) -> Broker {
        let any = "tcp://127.0.0.1:*";
        Broker::launch([any, any, any, any, "127.0.0.1:0"], liveness, extra)
    }

    /// A broker on the given endpoints (e.g. the same ports again after a restart).
    pub fn start_on(
        frontend: &str,
        backend: &str,
        xsub: &str,
        xpub: &str,
        http: &str,
        extra: &[&str],
    ) -> Broker {
        Broker::launch([frontend, backend, xsub, xpub, http], TEST_LIVENESS, extra)
    }

    fn launch(endpoints: [&str; 5], liveness: u32, extra: &[&str]) -> Broker {
        let [frontend, backend, xsub, xpub, http] = endpoints;
        let mut args: Vec<String> = [
            "--frontend",
            frontend,
            "--backend",
            backend,
            "--xsub",
            xsub,
            "--xpub",
            xpub,
            "--http",
            http,
            "--heartbeat-ms",
            &TEST_HEARTBEAT_MS.to_string(),
            "--liveness",
            &liveness.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (proc, line) = Proc::start("tradeplex-broker", &args);
        let field = |name: &str| {
            ready_field(&line, name)
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .to_string()
        };
        Broker {
            frontend: field("frontend"),
            backend: field("backend"),
            xsub: field("xsub"),
            xpub: field("xpub"),
            http: field("http"),
            proc,
        }
    }

    /// SIGKILLs this broker and starts a new one on the same endpoints (a crash and a
    /// restart by its supervisor).
    pub fn kill9_and_restart(&mut self) -> Broker {
        self.kill9_and_restart_with_liveness(TEST_LIVENESS, &[])
    }

    /// Like [`Broker::kill9_and_restart`], for a broker started with
    /// [`Broker::start_with_liveness`]: the new one gets `liveness` and `extra` again.
    pub fn kill9_and_restart_with_liveness(&mut self, liveness: u32, extra: &[&str]) -> Broker {
        self.proc.kill9();
        let endpoints = [
            self.frontend.as_str(),
            &self.backend,
            &self.xsub,
            &self.xpub,
            &self.http,
        ];
        Broker::launch(endpoints, liveness, extra)
    }

    /// Starts a worker connected to this broker.
    pub fn worker(&self, extra: &[&str]) -> Worker {
        self.worker_with_liveness(TEST_LIVENESS, extra).0
    }

    /// A client of this broker.
    pub fn client(&self) -> Client {
        Client::connect(&self.frontend, ClientOptions::default()).expect("client")
    }

    /// Blocks until `n` workers are registered for `service` (asking `tpx.status`).
    pub fn wait_for_workers(&self, client: &Client, service: &str, n: u32) {
        wait_until(
            Duration::from_secs(20),
            &format!("{n} workers for {service}"),
            || {
                client.status().ok().is_some_and(|s| {
                    s.services
                        .iter()
                        .any(|x| x.service.as_str() == service && x.workers == n)
                })
            },
        );
    }
}

/// A worker process.
pub struct Worker {
    /// The process.
    pub proc: Proc,
    /// Its worker id.
    pub id: String,
}

/// Encodes a JSON value as a MessagePack body.
pub fn body(v: serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(&v).expect("encodable")
}

/// A fresh temporary file path for this test.
pub fn temp_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("tradeplex-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{tag}-{}-{}", std::process::id(), uuid_like()))
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Asks `worker`'s SIM gateway (through the broker, targeted) to publish ticks of
/// `symbol`: once one arrives, that worker's event connection is up.
pub fn subscribe_ticks_at(client: &Client, worker: tradeplex_proto::WorkerId, symbol: &str) {
    use tradeplex_proto::model::{GatewayRequest, SubscribeRequest};
    let req = GatewayRequest::Subscribe(SubscribeRequest {
        symbol: symbol.into(),
        exchange: String::new(),
    });
    let body = rmp_serde::to_vec_named(&req).expect("encodable");
    client
        .call(
            "SIM",
            body,
            tradeplex_client::CallOptions::query().target(worker),
        )
        .expect("SIM subscribe answered");
}

// ----- orders -----------------------------------------------------------------------------

/// The message of a `risk_rejected` refusal; panics (naming what came instead) on anything
/// else, so a test of the risk stage fails clearly when an order got through.
pub fn risk_message<T: std::fmt::Debug>(r: Result<T, tradeplex_client::ClientError>) -> String {
    match r {
        Err(tradeplex_client::ClientError::Remote {
            code: Some(tradeplex_proto::ErrorCode::RiskRejected),
            name,
            message,
            ..
        }) => {
            assert_eq!(name, "risk_rejected");
            message
        }
        other => panic!("expected risk_rejected, got {other:?}"),
    }
}

/// An AAPL order for the SIM gateway, from [`aapl_order`]: one share bid at 100.0 unless a
/// method below says otherwise; [`AaplOrder::build`] gives the request.
pub struct AaplOrder(OrderRequest);

/// One share of AAPL bid at 100.0 for `account`, tagged `reference`: far below the SIM's
/// market, so it rests.
pub fn aapl_order(account: &str, reference: &str) -> AaplOrder {
    AaplOrder(OrderRequest {
        symbol: "AAPL".into(),
        exchange: String::new(),
        direction: Direction::Long,
        order_type: OrderType::Limit,
        volume: 1.0,
        price: 100.0,
        offset: Offset::default(),
        account: account.into(),
        reference: reference.into(),
    })
}

impl AaplOrder {
    /// A market order (price 0) instead of the limit bid.
    pub fn market(self) -> AaplOrder {
        self.with(|o| {
            o.order_type = OrderType::Market;
            o.price = 0.0;
        })
    }

    /// At limit price `price`.
    pub fn price(self, price: f64) -> AaplOrder {
        self.with(|o| o.price = price)
    }

    /// For `volume` shares.
    pub fn volume(self, volume: f64) -> AaplOrder {
        self.with(|o| o.volume = volume)
    }

    /// In `direction`.
    pub fn direction(self, direction: Direction) -> AaplOrder {
        self.with(|o| o.direction = direction)
    }

    /// With `offset`.
    pub fn offset(self, offset: Offset) -> AaplOrder {
        self.with(|o| o.offset = offset)
    }

    /// The request.
    pub fn build(self) -> OrderRequest {
        self.0
    }

    fn with(mut self, change: impl FnOnce(&mut OrderRequest)) -> AaplOrder {
        change(&mut self.0);
        self
    }
}

// ----- CURVE keys -------------------------------------------------------------------------

/// A CURVE key pair made by `tradeplex keygen`, saved to a key file.
pub struct Keys {
    /// The TOML key file (what `--curve-key-file` / `key_file` take).
    pub file: PathBuf,
    /// The z85 public key.
    pub public: String,
    /// The z85 secret key.
    pub secret: String,
}

/// A new key pair from `tradeplex keygen`, saved under a temporary path named by `tag`.
pub fn keygen(tag: &str) -> Keys {
    let out = std::process::Command::new(bin("tradeplex"))
        .arg("keygen")
        .output()
        .expect("tradeplex keygen runs");
    assert!(out.status.success(), "tradeplex keygen: {out:?}");
    let text = String::from_utf8(out.stdout).expect("a UTF-8 key file");
    let value: toml::Value = toml::from_str(&text).expect("a TOML key file");
    let file = temp_path(tag);
    std::fs::write(&file, &text).expect("key file written");
    let key = |k: &str| value[k].as_str().expect("a z85 key").to_string();
    Keys {
        file,
        public: key("public_key"),
        secret: key("secret_key"),
    }
}

impl Keys {
    /// Client CURVE settings with these keys, for a broker whose public key is `server`'s.
    pub fn client_curve(&self, server: &Keys) -> tradeplex_client::curve::ClientCurve {
        tradeplex_client::curve::ClientCurve {
            server_key: server.public.clone(),
            keys: tradeplex_client::curve::KeyPair {
                public_key: self.public.clone(),
                secret_key: self.secret.clone(),
            },
        }
    }
}

// ----- the order journal ------------------------------------------------------------------

/// Every line of the worker journal at `path` and its rotated files (`PATH.N` … `PATH.1`,
/// then `PATH`: oldest first), parsed; a torn last line is skipped.
pub fn journal_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = (1..=1000)
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// The journal's `start` lines: one per request a worker began to execute.
pub fn journal_executions(path: &std::path::Path) -> Vec<serde_json::Value> {
    journal_lines(path)
        .into_iter()
        .filter(|l| l["event"] == "start")
        .collect()
}

/// The journal's `done` line for `job`, if written.
pub fn journal_outcome(path: &std::path::Path, job: u64) -> Option<serde_json::Value> {
    journal_lines(path)
        .into_iter()
        .find(|l| l["event"] == "done" && l["job"] == job)
}

impl Broker {
    /// Starts a worker connected to this broker and returns it with the `http=` address
    /// of its ready line (pass `--http 127.0.0.1:0` in `extra` to get one).
    pub fn worker_http(&self, extra: &[&str]) -> (Worker, String) {
        self.worker_with_liveness(TEST_LIVENESS, extra)
    }

    /// A worker that reconnects after `liveness` missed broker heartbeats, with the
    /// `http=` address of its ready line.
    pub fn worker_with_liveness(&self, liveness: u32, extra: &[&str]) -> (Worker, String) {
        start_worker(&self.backend, &self.xsub, liveness, extra)
    }
}

// ----- a broker pair ----------------------------------------------------------------------

/// The endpoints of a pair's brokers for one socket, primary first, comma-separated (what
/// `--broker` / `--events` and `Client::connect` take), e.g.
/// `pair_endpoints(&[&a, &b], |b| &b.frontend)`.
pub fn pair_endpoints(brokers: &[&Broker], socket: impl Fn(&Broker) -> &String) -> String {
    brokers
        .iter()
        .map(|b| socket(b).as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A pair member's state as its `/metrics` show it (`tradeplex_pair_state{state} = 1`):
/// "primary", "backup", "active", "passive", or "none" when no state is 1.
pub fn pair_state(broker: &Broker) -> String {
    let s = scrape(&broker.http);
    ["primary", "backup", "active", "passive"]
        .into_iter()
        .find(|st| s.value("tradeplex_pair_state", &[("state", st)]) == Some(1.0))
        .unwrap_or("none")
        .to_string()
}

/// The silence window of a test pair's brokers (`peer_timeout_ms`): long enough that a
/// stall of a loaded 2-core machine never looks like a dead peer (heartbeats are 100 ms).
pub const PAIR_WINDOW_MS: u64 = 1500;

/// One broker of a primary/backup pair, started from a config file so that a restart
/// (kill -9, then the same endpoints and config) brings the same member back.
pub struct PairMember {
    /// The broker.
    pub broker: Broker,
    /// Its state endpoint (`[pair] bind`): the one a passive broker's refusal names.
    pub bind: String,
    config: PathBuf,
}

impl PairMember {
    /// A member in `role` ("primary" or "backup") whose state socket binds `bind` and
    /// connects to `peer`, with [`PAIR_WINDOW_MS`]. Its config file is `top` (top-level
    /// settings and tables before `[pair]`), the `[pair]` table, then `rest` (more
    /// `[pair]` keys, then later tables).
    pub fn start(role: &str, bind: &str, peer: &str, top: &str, rest: &str) -> PairMember {
        let config = temp_path(&format!("pair-{role}.toml"));
        let text = format!(
            "{top}[pair]\nrole = \"{role}\"\nbind = \"{bind}\"\npeer = \"{peer}\"\n\
             peer_timeout_ms = {PAIR_WINDOW_MS}\n{rest}"
        );
        std::fs::write(&config, text).expect("pair config written");
        let broker = Broker::start(&["--config", config.to_str().expect("a UTF-8 path")]);
        PairMember {
            broker,
            bind: bind.to_string(),
            config,
        }
    }

    /// SIGKILLs its broker and starts it again on the same endpoints with the same config.
    pub fn restart(&mut self) {
        let cfg = self.config.to_str().expect("a UTF-8 path").to_string();
        self.broker = self
            .broker
            .kill9_and_restart_with_liveness(TEST_LIVENESS, &["--config", &cfg]);
    }

    /// Its pair state: see [`pair_state`].
    pub fn state(&self) -> String {
        pair_state(&self.broker)
    }

    /// The value of a metric of its broker's `/metrics` (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape(&self.broker.http).value(name, labels).unwrap_or(0.0)
    }
}

/// A worker serving a broker pair (`--broker b1,b2 --events x1,x2`), with its `http=`.
pub fn pair_worker(brokers: &[&Broker], extra: &[&str]) -> (Worker, String) {
    start_worker(
        &pair_endpoints(brokers, |b| &b.backend),
        &pair_endpoints(brokers, |b| &b.xsub),
        TEST_LIVENESS,
        extra,
    )
}

/// A client of a broker pair (both frontends, primary first).
pub fn pair_client(brokers: &[&Broker], options: ClientOptions) -> Client {
    Client::connect(&pair_endpoints(brokers, |b| &b.frontend), options).expect("client")
}

/// Starts `tradeplex-worker` on the given backend and XSUB endpoint (lists), with test
/// heartbeats; returns it with the `http=` address of its ready line.
fn start_worker(backend: &str, xsub: &str, liveness: u32, extra: &[&str]) -> (Worker, String) {
    let mut args: Vec<String> = vec![
        "--broker".into(),
        backend.to_string(),
        "--events".into(),
        xsub.to_string(),
        "--heartbeat-ms".into(),
        TEST_HEARTBEAT_MS.to_string(),
        "--liveness".into(),
        liveness.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (proc, line) = Proc::start("tradeplex-worker", &args);
    let field = |name: &str| {
        ready_field(&line, name)
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .to_string()
    };
    let id = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let http = field("http");
    (Worker { proc, id }, http)
}
