//! A primary/backup broker pair (Binary Star) between real processes: exactly one is
//! active, the passive refuses clients and workers naming the active while it lives,
//! and takes over after a kill -9 of the active once the silence window has passed and
//! a client or worker turns to it; the restarted primary comes back passive. Both
//! brokers' `tradeplex_pair_state` is sampled throughout: never two active.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tradeplex_client::{CallOptions, Client, ClientError};
use tradeplex_proto::ErrorCode;
use tradeplex_tests::*;

/// The silence window: long enough that a stall of a loaded 2-core machine never looks
/// like a dead peer (heartbeats are 100 ms).
const WINDOW_MS: u64 = 1500;

struct Member {
    broker: Broker,
    config: PathBuf,
    /// Its state endpoint.
    state: String,
}

impl Member {
    fn start(role: &str, bind: &str, peer: &str) -> Member {
        let config = temp_path(&format!("pair-{role}.toml"));
        let text = format!(
            "[pair]\nrole = \"{role}\"\nbind = \"{bind}\"\npeer = \"{peer}\"\npeer_timeout_ms = {WINDOW_MS}\n"
        );
        std::fs::write(&config, text).unwrap();
        let broker = Broker::start(&["--config", config.to_str().unwrap()]);
        Member {
            broker,
            config,
            state: bind.to_string(),
        }
    }

    fn restart(&mut self) {
        let cfg = self.config.to_str().unwrap().to_string();
        self.broker = self
            .broker
            .kill9_and_restart_with_liveness(TEST_LIVENESS, &["--config", &cfg]);
    }

    fn state(&self) -> String {
        let s = scrape(&self.broker.http);
        ["primary", "backup", "active", "passive"]
            .into_iter()
            .find(|st| s.value("tradeplex_pair_state", &[("state", st)]) == Some(1.0))
            .unwrap_or("none")
            .to_string()
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape(&self.broker.http).value(name, labels).unwrap_or(0.0)
    }
}

fn start_pair() -> (Member, Member) {
    let (p, b) = (free_port(), free_port());
    let (p, b) = (
        format!("tcp://127.0.0.1:{p}"),
        format!("tcp://127.0.0.1:{b}"),
    );
    let primary = Member::start("primary", &p, &b);
    let backup = Member::start("backup", &b, &p);
    (primary, backup)
}

/// Waits until `primary` and `backup` are in the given states, asserting at every
/// sample that they are never both active.
fn wait_states(live: &[(&Member, &str)], what: &str) {
    wait_until(Duration::from_secs(20), what, || {
        let states: Vec<String> = live.iter().map(|(m, _)| m.state()).collect();
        assert!(
            states.iter().filter(|s| *s == "active").count() <= 1,
            "two active brokers: {states:?}"
        );
        live.iter().zip(&states).all(|((_, want), got)| got == want)
    });
}

fn echo(client: &Client, timeout: Duration) -> Result<(), ClientError> {
    client
        .call(
            "echo",
            body(json!({"ping": 1})),
            CallOptions::query().timeout(timeout),
        )
        .map(|_| ())
}

fn expect_passive_refusal(r: Result<(), ClientError>, active_state_endpoint: &str) {
    match r {
        Err(ClientError::Remote {
            code: Some(ErrorCode::Unavailable),
            message,
            ..
        }) => {
            assert!(message.starts_with("passive broker"), "{message}");
            assert!(message.contains(active_state_endpoint), "{message}");
        }
        other => panic!("expected unavailable from the passive broker, got {other:?}"),
    }
}

#[test]
fn one_broker_is_active_and_the_passive_refuses_without_ever_taking_over() {
    let (primary, backup) = start_pair();
    wait_states(
        &[(&primary, "active"), (&backup, "passive")],
        "primary active, backup passive",
    );
    assert_eq!(
        http_get(&primary.broker.http, "/readyz").unwrap().status,
        200
    );
    assert_eq!(
        http_get(&backup.broker.http, "/readyz").unwrap().status,
        503
    );

    // tpx.status answers at both and says where each stands.
    let at_backup = backup.broker.client();
    let pair = at_backup
        .status()
        .unwrap()
        .pair
        .expect("pair in tpx.status");
    assert_eq!(
        (pair.role.as_str(), pair.state.as_str()),
        ("backup", "passive")
    );
    assert_eq!(pair.peer_state.as_deref(), Some("active"));
    assert!(pair.peer_age_ms.is_some_and(|ms| ms < WINDOW_MS));

    // A worker at the passive is refused, and so is every request, while the peer lives
    // (for longer than the window: the votes never win against a live peer).
    let _w = backup.broker.worker(&[]);
    let until = Instant::now() + Duration::from_millis(2 * WINDOW_MS);
    let mut refused = 0;
    while Instant::now() < until || refused < 20 {
        expect_passive_refusal(echo(&at_backup, Duration::from_secs(2)), &primary.state);
        refused += 1;
    }
    wait_until(
        Duration::from_secs(10),
        "the worker's READY refused",
        || backup.metric("tradeplex_pair_refused_total", &[("kind", "ready")]) >= 1.0,
    );
    assert_eq!(backup.state(), "passive");
    assert_eq!(primary.state(), "active");
    assert_eq!(backup.metric("tradeplex_pair_takeovers_total", &[]), 0.0);
    assert!(backup.metric("tradeplex_pair_refused_total", &[("kind", "request")]) >= 20.0);
    assert_eq!(at_backup.status().unwrap().workers.len(), 0);
}

#[test]
fn kill9_of_the_active_fails_over_and_the_restarted_primary_comes_back_passive() {
    let (mut primary, backup) = start_pair();
    wait_states(
        &[(&primary, "active"), (&backup, "passive")],
        "primary active, backup passive",
    );
    let _at_primary = primary.broker.worker(&[]);
    let _at_backup = backup.broker.worker(&[]);
    let client = backup.broker.client();

    primary.broker.proc.kill9();
    let killed = Instant::now();
    // Until the window has passed, the backup refuses; then the next request (or the
    // worker's READY) makes it active, the worker registers and echo is served.
    let served = loop {
        match echo(&client, Duration::from_millis(500)) {
            Ok(()) => break killed.elapsed(),
            // unknown_service: active already, the worker's READY not yet in.
            Err(ClientError::Remote {
                code: Some(ErrorCode::Unavailable | ErrorCode::UnknownService),
                ..
            })
            | Err(ClientError::Timeout(_)) => {}
            Err(e) => panic!("unexpected answer during failover: {e}"),
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "no failover");
    };
    println!(
        "failover: kill -9 of the active -> first echo served at the backup in {} ms",
        served.as_millis()
    );
    assert!(
        served >= Duration::from_millis(WINDOW_MS),
        "took over inside the window"
    );
    assert_eq!(backup.state(), "active");
    assert_eq!(backup.metric("tradeplex_pair_takeovers_total", &[]), 1.0);
    assert_eq!(
        http_get(&backup.broker.http, "/readyz").unwrap().status,
        200
    );

    primary.restart();
    wait_states(
        &[(&primary, "passive"), (&backup, "active")],
        "restarted primary passive, backup active",
    );
    let at_primary = primary.broker.client();
    expect_passive_refusal(echo(&at_primary, Duration::from_secs(2)), &backup.state);
    echo(&client, Duration::from_secs(5)).unwrap();
    assert_eq!(primary.state(), "passive");
    assert_eq!(primary.metric("tradeplex_pair_dual_active_total", &[]), 0.0);
    assert_eq!(backup.metric("tradeplex_pair_dual_active_total", &[]), 0.0);
}

#[test]
fn malformed_state_messages_are_counted_and_ignored() {
    // A broker whose `pair.peer` is a stranger's PUB hears whatever it publishes.
    let ctx = zmq::Context::new();
    let rogue = ctx.socket(zmq::PUB).unwrap();
    let port = free_port();
    let ep = format!("tcp://127.0.0.1:{port}");
    rogue.bind(&ep).unwrap();
    let listener = Member::start("backup", &format!("tcp://127.0.0.1:{}", free_port()), &ep);
    wait_until(Duration::from_secs(10), "bad frames counted", || {
        let _ = rogue.send(&b"not a state message"[..], zmq::DONTWAIT);
        let _ = rogue.send(&[0u8; 24][..], zmq::DONTWAIT);
        listener.metric(
            "tradeplex_bad_frames_total",
            &[("socket", "pair"), ("reason", "bad_length")],
        ) >= 1.0
            && listener.metric(
                "tradeplex_bad_frames_total",
                &[("socket", "pair"), ("reason", "bad_magic")],
            ) >= 1.0
    });
    assert_eq!(listener.state(), "backup");
}
