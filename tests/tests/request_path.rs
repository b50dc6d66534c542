//! The core request path between real processes: pipelining, capacity, worker death,
//! broker restart, deadlines, bad input.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tradeplex_client::CallOptions;
use tradeplex_tests::*;

#[test]
fn three_workers_answer_3000_pipelined_requests_each_exactly_once() {
    let broker = Broker::start(&[]);
    let workers: Vec<Worker> = (0..3)
        .map(|_| broker.worker(&["--capacity", "8"]))
        .collect();
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 3);

    let pending: Vec<_> = (0..3000u64)
        .map(|n| {
            let call = client
                .send("echo", body(json!({ "n": n })), CallOptions::query())
                .unwrap();
            (n, call)
        })
        .collect();
    let mut seen = HashSet::new();
    let mut by_worker: HashMap<String, u32> = HashMap::new();
    for (n, call) in pending {
        let reply = call
            .wait()
            .unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        let echoed: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
        assert_eq!(echoed["n"], n, "reply matched to the wrong request");
        assert!(seen.insert(n), "request {n} answered twice");
        *by_worker.entry(reply.worker.to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3000);
    for w in &workers {
        let share = by_worker.get(&w.id).copied().unwrap_or(0);
        assert!(share > 0, "worker {} served nothing: {by_worker:?}", w.id);
    }
}

#[test]
fn capacity_one_worker_never_holds_two_requests() {
    let broker = Broker::start(&[]);
    let journal = temp_path("cap1");
    let _w = broker.worker(&["--capacity", "1", "--journal", journal.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let calls: Vec<_> = (0..6)
        .map(|n| {
            client
                .send(
                    "echo",
                    body(json!({"sleep_ms": 100, "n": n})),
                    CallOptions::query(),
                )
                .unwrap()
        })
        .collect();
    let watcher = broker.client();
    let mut max_in_flight = 0;
    let mut saw_queue = false;
    let mut done = Vec::new();
    for call in calls {
        // Sample the broker's view while the requests run.
        if let Ok(s) = watcher.status() {
            max_in_flight =
                max_in_flight.max(s.workers.iter().map(|w| w.in_flight).max().unwrap_or(0));
            saw_queue |= s.services.iter().any(|x| x.queued > 0);
        }
        done.push(call.wait().expect("echo"));
    }
    assert_eq!(done.len(), 6);
    assert!(
        max_in_flight <= 1,
        "broker had {max_in_flight} requests at a capacity-1 worker"
    );
    assert!(
        saw_queue,
        "the other requests should have waited in the broker's queue"
    );
    // Each request started only after the previous one (100 ms) finished.
    let starts: Vec<u64> = journal_executions(&journal)
        .iter()
        .map(|l| l["ts_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(starts.len(), 6);
    for pair in starts.windows(2) {
        assert!(
            pair[1] >= pair[0] + 95,
            "two requests overlapped: {starts:?}"
        );
    }
}

#[test]
fn killed_worker_retries_idempotent_and_loses_orders_without_executing_twice() {
    let broker = Broker::start(&[]);
    let (ja, jb) = (temp_path("kill-a"), temp_path("kill-b"));
    let mut a = broker.worker(&["--capacity", "8", "--journal", ja.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let opts = |idempotent| CallOptions {
        idempotent,
        timeout: Some(Duration::from_secs(10)),
        retry_every: Some(Duration::from_secs(60)),
        ..CallOptions::default()
    };
    let calls: Vec<_> = (0..8u64)
        .map(|n| {
            let idempotent = n % 2 == 0;
            let c = client
                .send(
                    "echo",
                    body(json!({"sleep_ms": 3000, "n": n})),
                    opts(idempotent),
                )
                .unwrap();
            (n, idempotent, c)
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "8 requests executing at worker A",
        || journal_executions(&ja).len() == 8,
    );
    let _b = broker.worker(&["--capacity", "8", "--journal", jb.to_str().unwrap()]);
    broker.wait_for_workers(&client, "echo", 2);
    a.proc.kill9();

    for (n, idempotent, call) in calls {
        let result = call.wait();
        if idempotent {
            let reply = result.unwrap_or_else(|e| panic!("idempotent request {n} failed: {e}"));
            assert_ne!(
                reply.worker.to_string(),
                a.id,
                "answered by the dead worker"
            );
        } else {
            let err = result.expect_err("an order in flight at a dead worker must not succeed");
            assert_eq!(err.name(), "worker_lost", "request {n}: {err}");
        }
    }
    let executions = |n: u64| {
        [&ja, &jb]
            .iter()
            .flat_map(|j| journal_executions(j))
            .filter(|l| l["body"]["n"] == n)
            .count()
    };
    for n in (1..8).step_by(2) {
        assert_eq!(
            executions(n),
            1,
            "non-idempotent request {n} executed other than once"
        );
    }
    for n in (0..8).step_by(2) {
        assert_eq!(
            executions(n),
            2,
            "idempotent request {n}: once at A, once again at B"
        );
    }
}

#[test]
fn worker_and_client_survive_a_broker_restart_on_the_same_ports() {
    let mut broker = Broker::start(&[]);
    let _w = broker.worker(&[]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    client
        .call("echo", body(json!({"before": true})), CallOptions::query())
        .unwrap();

    let restarted = broker.kill9_and_restart();
    assert_eq!(restarted.frontend, broker.frontend);
    // The same client handle, without any help: the worker re-registers, the client's
    // socket reconnects, and calls succeed again within a few seconds.
    restarted.wait_for_workers(&client, "echo", 1);
    let reply = client
        .call(
            "echo",
            body(json!({"after": true})),
            CallOptions::query().timeout(Duration::from_secs(5)),
        )
        .unwrap();
    let echoed: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
    assert_eq!(echoed["after"], true);
}

#[test]
fn queued_requests_past_deadline_are_refused_and_never_seen_by_the_worker() {
    let broker = Broker::start(&[]);
    let journal = temp_path("deadline");
    let _w = broker.worker(&["--capacity", "1", "--journal", journal.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let busy = client
        .send(
            "echo",
            body(json!({"sleep_ms": 1500, "n": "busy"})),
            CallOptions::command().timeout(Duration::from_secs(5)),
        )
        .unwrap();
    wait_until(Duration::from_secs(5), "the worker to be busy", || {
        journal_executions(&journal).len() == 1
    });
    let stale: Vec<_> = (0..5)
        .map(|n| {
            let opts = CallOptions::command().timeout(Duration::from_millis(300));
            client.send("echo", body(json!({"n": n})), opts).unwrap()
        })
        .collect();
    for call in stale {
        let err = call.wait().expect_err("must not be delivered");
        assert_eq!(err.name(), "deadline_exceeded", "{err}");
    }
    busy.wait().expect("the busy request completes");
    // Give the worker every chance to (wrongly) receive the stale requests: one more call
    // goes through the same queue after them.
    client
        .call("echo", body(json!({"n": "last"})), CallOptions::query())
        .unwrap();
    let seen: Vec<serde_json::Value> = journal_executions(&journal)
        .into_iter()
        .map(|l| l["body"]["n"].clone())
        .collect();
    assert_eq!(
        seen,
        vec![json!("busy"), json!("last")],
        "stale requests reached the worker"
    );
}

/// A raw DEALER on the frontend, to send what the client library never would.
fn raw_dealer(endpoint: &str) -> zmq::Socket {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_rcvtimeo(5000).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    s
}

fn error_reply(s: &zmq::Socket) -> tradeplex_proto::client::ErrorHeader {
    let frames = s.recv_multipart(0).expect("an error reply");
    match tradeplex_proto::client::decode_answer(&frames).expect("a well-formed reply") {
        (tradeplex_proto::client::Message::Error(e), _) => e,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

/// A message built by hand: the 6-byte id, command byte, header length (2 bytes,
/// big-endian), header, body.
fn message(id: &[u8], cmd: u8, header: &[u8], body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(header.len()).unwrap().to_be_bytes();
    [id, &[cmd][..], &len[..], header, body].concat()
}

/// A client message without a body.
fn head(cmd: u8, header: &[u8]) -> Vec<u8> {
    message(tradeplex_proto::client::PROTOCOL.frame, cmd, header, b"")
}

/// A worker message without a body.
fn worker_head(cmd: u8, header: &[u8]) -> Vec<u8> {
    message(tradeplex_proto::worker::PROTOCOL.frame, cmd, header, b"")
}

fn request_header(id: u64, service: &str) -> Vec<u8> {
    tradeplex_proto::frame::encode_header(&tradeplex_proto::client::RequestHeader {
        id: tradeplex_proto::RequestId(id),
        service: tradeplex_proto::ServiceName::new(service).unwrap(),
        deadline_ms: tradeplex_proto::now_unix_ms() + 5000,
        idempotent: true,
        target: None,
        affinity: None,
        client: None,
        batch: false,
    })
}

#[test]
fn bad_input_gets_its_error_and_the_broker_keeps_serving() {
    let broker = Broker::start(&["--max-body-bytes", "1024"]);
    let _w = broker.worker(&[]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let raw = raw_dealer(&broker.frontend);

    // Unknown service.
    let err = client
        .call("nobody", body(json!({})), CallOptions::query())
        .unwrap_err();
    assert_eq!(err.name(), "unknown_service");

    // Garbage: one frame of noise.
    raw.send(&b"\x00\xffgarbage"[..], 0).unwrap();
    assert_eq!(error_reply(&raw).name, "bad_request");

    // Wrong protocol version, with a readable id.
    let v99 = message(b"TPXC99", 1, &request_header(7, "echo"), b"");
    raw.send(v99, 0).unwrap();
    let e = error_reply(&raw);
    assert_eq!((e.name.as_str(), e.id.0), ("unsupported_version", 7));

    // Unknown command byte.
    raw.send(head(42, &request_header(8, "echo")), 0).unwrap();
    let e = error_reply(&raw);
    assert_eq!((e.name.as_str(), e.id.0), ("bad_request", 8));

    // Header that is not MessagePack.
    raw.send(head(1, b"\xc1\xc1"), 0).unwrap();
    assert_eq!(error_reply(&raw).name, "bad_request");

    // Too many frames.
    raw.send_multipart(vec![head(1, &request_header(10, "echo")); 20], 0)
        .unwrap();
    assert_eq!(error_reply(&raw).name, "bad_request");

    // Oversized body.
    let big = message(
        tradeplex_proto::client::PROTOCOL.frame,
        1,
        &request_header(9, "echo"),
        &[0u8; 4096],
    );
    raw.send(big, 0).unwrap();
    let e = error_reply(&raw);
    assert_eq!((e.name.as_str(), e.id.0), ("too_large", 9));

    // Garbage on the worker side too (no reply possible there).
    let ctx = zmq::Context::new();
    let fake_worker = ctx.socket(zmq::DEALER).unwrap();
    fake_worker.set_linger(0).unwrap();
    fake_worker.connect(&broker.backend).unwrap();
    fake_worker.send(worker_head(99, b"junk"), 0).unwrap();
    fake_worker.send(&b"noise"[..], 0).unwrap();

    // The broker still serves everyone.
    let reply = client
        .call(
            "echo",
            body(json!({"still": "alive"})),
            CallOptions::query(),
        )
        .unwrap();
    let echoed: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
    assert_eq!(echoed["still"], "alive");
    assert!(broker_is_alive(&broker));
}

fn broker_is_alive(broker: &Broker) -> bool {
    let mut probe = Command::new("kill");
    probe.args(["-0", &broker.proc.child.id().to_string()]);
    probe.status().map(|s| s.success()).unwrap_or(false)
}

#[test]
fn broker_shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let mut broker = Broker::start(&[]);
    let journal = temp_path("drain");
    let _w = broker.worker(&["--capacity", "2", "--journal", journal.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let slow = client
        .send(
            "echo",
            body(json!({"sleep_ms": 800, "n": "slow"})),
            CallOptions::command(),
        )
        .unwrap();
    wait_until(Duration::from_secs(5), "the slow request to start", || {
        journal_executions(&journal).len() == 1
    });

    // SIGTERM: the broker stops taking requests but lets the one in flight finish.
    let pid = broker.proc.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let refused = wait_for_refusal(&client);
    assert_eq!(refused, "unavailable");
    let reply = slow
        .wait()
        .expect("the in-flight request is answered, not dropped");
    let echoed: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
    assert_eq!(echoed["n"], "slow");
    assert_eq!(
        broker.proc.terminate(Duration::from_secs(10)),
        Some(0),
        "clean exit"
    );
}

/// Calls until the draining broker refuses; returns the error name.
fn wait_for_refusal(client: &tradeplex_client::Client) -> String {
    let mut name = String::new();
    wait_until(Duration::from_secs(5), "a refusal while draining", || {
        let opts = CallOptions::query().timeout(Duration::from_millis(500));
        match client.call("echo", body(json!({"probe": true})), opts) {
            Err(e) if e.name() == "unavailable" => {
                name = e.name().to_string();
                true
            }
            _ => false,
        }
    });
    name
}

#[test]
fn worker_shutdown_finishes_in_flight_work_and_leaves_cleanly() {
    let broker = Broker::start(&[]);
    let journal = temp_path("worker-drain");
    let mut w = broker.worker(&["--capacity", "2", "--journal", journal.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let slow = client
        .send(
            "echo",
            body(json!({"sleep_ms": 800, "n": "order"})),
            CallOptions::command(),
        )
        .unwrap();
    wait_until(Duration::from_secs(5), "the request to start", || {
        journal_executions(&journal).len() == 1
    });
    let pid = w.proc.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // The order in flight completes: not `worker_lost`.
    slow.wait().expect("the worker drains before leaving");
    assert_eq!(
        w.proc.terminate(Duration::from_secs(10)),
        Some(0),
        "clean exit"
    );
    broker.wait_for_workers(&client, "echo", 0);
}

/// A hand-driven worker on the backend, to send what `tradeplex-worker` never would.
struct RawWorker {
    socket: zmq::Socket,
    _ctx: zmq::Context,
}

impl RawWorker {
    fn connect(backend: &str) -> RawWorker {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::DEALER).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_rcvtimeo(5000).unwrap();
        socket.connect(backend).unwrap();
        RawWorker { socket, _ctx: ctx }
    }

    fn send(&self, cmd: u8, header: &[u8]) {
        self.socket.send(worker_head(cmd, header), 0).unwrap();
    }

    fn register(&self, service: &str, capacity: u32) {
        self.register_reading_batches(service, capacity, false);
    }

    fn register_reading_batches(&self, service: &str, capacity: u32, batch: bool) {
        let ready = tradeplex_proto::worker::ReadyHeader {
            worker: tradeplex_proto::WorkerId::random(),
            services: vec![tradeplex_proto::ServiceName::new(service).unwrap()],
            capacity,
            session: 1,
            batch,
        };
        self.send(1, &tradeplex_proto::frame::encode_header(&ready));
    }

    /// The next message from the broker that is not a heartbeat.
    fn next(&self) -> tradeplex_proto::worker::Message {
        self.next_with_frame().0
    }

    /// [`RawWorker::next`], with the message's frame and where its body starts.
    fn next_with_frame(&self) -> (tradeplex_proto::worker::Message, Vec<u8>, usize) {
        loop {
            let mut frames = self.socket.recv_multipart(0).expect("a broker message");
            match tradeplex_proto::worker::decode(&frames).expect("a well-formed message") {
                (tradeplex_proto::worker::Message::Heartbeat, _) => self.send(
                    5,
                    &tradeplex_proto::frame::encode_header(&serde_json::json!({})),
                ),
                (other, at) => return (other, frames.remove(0), at),
            }
        }
    }

    fn next_request(&self) -> tradeplex_proto::worker::RequestHeader {
        match self.next() {
            tradeplex_proto::worker::Message::Request(h) => h,
            other => panic!("expected REQUEST, got {other:?}"),
        }
    }
}

fn raw_request(raw: &zmq::Socket, id: u64, service: &str, ttl_ms: u64) {
    let header = tradeplex_proto::frame::encode_header(&tradeplex_proto::client::RequestHeader {
        id: tradeplex_proto::RequestId(id),
        service: tradeplex_proto::ServiceName::new(service).unwrap(),
        deadline_ms: tradeplex_proto::now_unix_ms() + ttl_ms,
        idempotent: false,
        target: None,
        affinity: None,
        client: None,
        batch: false,
    });
    let request = message(
        tradeplex_proto::client::PROTOCOL.frame,
        1,
        &header,
        b"order",
    );
    raw.send(request, 0).unwrap();
}

#[test]
fn hostile_worker_answers_still_reach_the_client_and_bad_input_is_answered_on_the_backend() {
    let broker = Broker::start_with_liveness(50, &["--in-flight-grace-ms", "300"]);
    let worker = RawWorker::connect(&broker.backend);
    worker.register("raw", 1);
    let client = broker.client();
    broker.wait_for_workers(&client, "raw", 1);
    let raw = raw_dealer(&broker.frontend);

    // An ERROR whose code does not fit u16: the client still gets an answer...
    raw_request(&raw, 1, "raw", 5000);
    let job = worker.next_request().job;
    #[derive(serde::Serialize)]
    struct WideError {
        job: u64,
        code: u32,
        message: &'static str,
    }
    let wide = WideError {
        job: job.0,
        code: 70_000,
        message: "boom",
    };
    worker.send(4, &tradeplex_proto::frame::encode_header(&wide));
    let e = error_reply(&raw);
    assert_eq!((e.name.as_str(), e.id.0), ("worker_error", 1));
    // ...the worker is told its message was refused...
    match worker.next() {
        tradeplex_proto::worker::Message::Disconnect(d) => {
            assert!(d.reason.starts_with("bad_request: "), "{}", d.reason);
            assert!(tradeplex_proto::worker::is_refusal(&d.reason));
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // ...and its slot is free: the next request reaches it.
    raw_request(&raw, 2, "raw", 300);
    worker.next_request();
    // That one it never answers, while heartbeating: after deadline + grace it is lost.
    let e = error_reply(&raw);
    assert_eq!(
        (e.name.as_str(), e.id.0),
        ("worker_lost", 2),
        "{}",
        e.message
    );

    // Another protocol version on the backend gets an answer naming the broker's.
    worker
        .socket
        .send(message(b"TPXW09", 5, b"\x80", b""), 0)
        .unwrap();
    match worker.next() {
        tradeplex_proto::worker::Message::Disconnect(d) => {
            assert!(
                d.reason.starts_with("unsupported_version: "),
                "{}",
                d.reason
            )
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // A version-01 worker (four frames, `TPXW01`) gets a DISCONNECT in its own layout.
    worker
        .socket
        .send_multipart([&b"TPXW01"[..], &[5], b"\x80", b""], 0)
        .unwrap();
    let frames = loop {
        let frames = worker.socket.recv_multipart(0).expect("a broker message");
        if frames.first().is_some_and(|f| &f[..] == b"TPXW01") {
            break frames;
        }
    };
    assert_eq!((frames.len(), &frames[1][..]), (4, &[6u8][..]));
    let d: tradeplex_proto::worker::DisconnectHeader =
        tradeplex_proto::frame::decode_header(&frames[2]).unwrap();
    assert!(
        d.reason.starts_with("unsupported_version: ") && d.reason.contains("TPXW03"),
        "{}",
        d.reason
    );
    // A version-02 worker (two frames, `TPXW02` head) gets a DISCONNECT in its layout.
    worker
        .socket
        .send_multipart([&b"TPXW02\x05\x80"[..], b""], 0)
        .unwrap();
    let frames = loop {
        let frames = worker.socket.recv_multipart(0).expect("a broker message");
        if frames.first().is_some_and(|f| f.starts_with(b"TPXW02")) {
            break frames;
        }
    };
    assert_eq!((frames.len(), &frames[0][..7]), (2, &b"TPXW02\x06"[..]));
    match tradeplex_proto::worker::decode_from_broker(&frames)
        .unwrap()
        .0
    {
        tradeplex_proto::worker::Message::Disconnect(d) => assert!(
            d.reason.starts_with("unsupported_version: ")
                && d.reason.contains("TPXW03")
                && d.reason.contains("TPXW02"),
            "{}",
            d.reason
        ),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // A READY with bad fields too.
    let bad = tradeplex_proto::worker::ReadyHeader {
        worker: tradeplex_proto::WorkerId::random(),
        services: vec![tradeplex_proto::ServiceName::new("raw").unwrap()],
        capacity: 0,
        session: 1,
        batch: false,
    };
    let other = RawWorker::connect(&broker.backend);
    other.send(1, &tradeplex_proto::frame::encode_header(&bad));
    match other.next() {
        tradeplex_proto::worker::Message::Disconnect(d) => {
            assert!(
                d.reason.starts_with("bad_request: bad field capacity"),
                "{}",
                d.reason
            )
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let page = scrape(&broker.http);
    assert_eq!(page.sum("tradeplex_requests_abandoned_total", &[]), 1.0);
    assert!(page.sum("tradeplex_bad_frames_total", &[("socket", "backend")]) >= 3.0);
}

#[test]
fn frontend_answers_each_malformed_shape_as_documented() {
    let broker = Broker::start(&[]);
    let raw = raw_dealer(&broker.frontend);
    let header = request_header(11, "echo");

    // Any frame count other than 1 behind a good first frame is bad_request: 2 and 7
    // frames (within the broker's read limit) and 9 (over it).
    for n in [2usize, 7, 9] {
        let mut frames = vec![head(1, &header)];
        frames.resize(n, Vec::new());
        raw.send_multipart(frames, 0).unwrap();
        let e = error_reply(&raw);
        assert_eq!(e.name, "bad_request", "{n} frames: {}", e.message);
        assert!(e.message.contains("expected 1 frame,"), "{}", e.message);
    }

    // A message cut before its header length, or whose header length runs past its end.
    raw.send(&b"TPXC03\x01\x00"[..], 0).unwrap();
    let e = error_reply(&raw);
    assert_eq!(e.name, "bad_request");
    assert!(e.message.contains("no header length"), "{}", e.message);
    let mut cut = head(1, &header);
    cut.pop();
    raw.send(cut, 0).unwrap();
    let e = error_reply(&raw);
    assert_eq!((e.name.as_str(), e.id.0), ("bad_request", 0));
    assert!(e.message.contains("past the end"), "{}", e.message);

    // A header over 4096 bytes is too_large, with id 0 (the broker does not read it).
    #[derive(serde::Serialize)]
    struct Padded {
        id: u64,
        service: &'static str,
        deadline_ms: u64,
        pad: String,
    }
    let big = tradeplex_proto::frame::encode_header(&Padded {
        id: 12,
        service: "echo",
        deadline_ms: tradeplex_proto::now_unix_ms() + 5000,
        pad: "x".repeat(5000),
    });
    raw.send(head(1, &big), 0).unwrap();
    let e = error_reply(&raw);
    assert_eq!((e.name.as_str(), e.id.0), ("too_large", 0), "{}", e.message);

    // Another protocol's id is bad_request; our protocol in another version is
    // unsupported_version, answered in the broker's own version.
    raw.send(worker_head(1, &header), 0).unwrap();
    assert_eq!(error_reply(&raw).name, "bad_request");
    raw.send(message(b"TPXC04", 1, &header, b""), 0).unwrap();
    let frames = raw.recv_multipart(0).unwrap();
    assert_eq!(&frames[0][..7], b"TPXC03\x03");
    let e = match tradeplex_proto::client::decode(&frames).unwrap() {
        (tradeplex_proto::client::Message::Error(e), _) => e,
        other => panic!("expected ERROR, got {other:?}"),
    };
    assert_eq!((e.name.as_str(), e.id.0), ("unsupported_version", 11));

    // A version-02 client (two frames, `TPXC02` head) is answered in its own layout.
    raw.send_multipart([&[&b"TPXC02\x01"[..], &header].concat()[..], b""], 0)
        .unwrap();
    let frames = raw.recv_multipart(0).unwrap();
    assert_eq!((frames.len(), &frames[0][..7]), (2, &b"TPXC02\x03"[..]));
    let e: tradeplex_proto::client::ErrorHeader =
        tradeplex_proto::frame::decode_header(&frames[0][7..]).unwrap();
    assert_eq!((e.name.as_str(), e.id.0), ("unsupported_version", 11));
    assert!(e.message.contains("TPXC03"), "{}", e.message);

    // A version-01 client (four frames, `TPXC01`) is answered in its own layout, so it
    // reads the refusal and its request's id.
    raw.send_multipart([&b"TPXC01"[..], &[1], &header, b""], 0)
        .unwrap();
    let frames = raw.recv_multipart(0).unwrap();
    assert_eq!(frames.len(), 4);
    assert_eq!(
        (&frames[0][..], &frames[1][..]),
        (&b"TPXC01"[..], &[3u8][..])
    );
    let e: tradeplex_proto::client::ErrorHeader =
        tradeplex_proto::frame::decode_header(&frames[2]).unwrap();
    assert_eq!((e.name.as_str(), e.id.0), ("unsupported_version", 11));
    assert!(e.message.contains("TPXC03"), "{}", e.message);

    // A bad target is reported under its own name.
    #[derive(serde::Serialize)]
    struct Targeted {
        id: u64,
        service: &'static str,
        deadline_ms: u64,
        target: &'static str,
    }
    let targeted = tradeplex_proto::frame::encode_header(&Targeted {
        id: 13,
        service: "echo",
        deadline_ms: tradeplex_proto::now_unix_ms() + 5000,
        target: "not-a-uuid",
    });
    raw.send(head(1, &targeted), 0).unwrap();
    let e = error_reply(&raw);
    assert_eq!((e.name.as_str(), e.id.0), ("bad_request", 13));
    assert!(e.message.contains("bad field target"), "{}", e.message);
}

/// Issue 14: with no broker, the client library queues nothing on a dead pipe
/// (`ZMQ_IMMEDIATE`): a call ends `unavailable` (never sent) at its deadline, not
/// `timeout` (outcome unknown) 250 ms later; with `fail_fast` it ends at the refused
/// connection attempt.
#[test]
fn a_call_to_an_unreachable_broker_is_unavailable_not_timeout() {
    use std::time::Instant;
    use tradeplex_client::{Client, ClientError, ClientOptions};
    let ep = format!("tcp://127.0.0.1:{}", free_port());
    let timeout = Duration::from_millis(400);
    let client = Client::connect(&ep, ClientOptions::default().timeout(timeout)).unwrap();
    let t0 = Instant::now();
    let r = client.call("echo", body(json!({})), CallOptions::command());
    let took = t0.elapsed();
    // NotSent carries the time the call had left when the connection thread took it up
    // (a millisecond may have passed since the call was made).
    assert!(
        matches!(r, Err(ClientError::NotSent(ms)) if (350..=400).contains(&ms)),
        "{r:?} after {took:?}"
    );
    assert_eq!(r.unwrap_err().name(), "unavailable");
    assert!(took >= timeout, "waited for the deadline: {took:?}");

    let opts = ClientOptions::default()
        .timeout(Duration::from_secs(10))
        .fail_fast(true);
    let client = Client::connect(&ep, opts).unwrap();
    let t0 = Instant::now();
    let r = client.call("echo", body(json!({})), CallOptions::query());
    let took = t0.elapsed();
    assert_eq!(r, Err(ClientError::Refused), "after {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "at the refused connect: {took:?}"
    );
}

/// A call made before the broker is up is sent once it is (the send is retried until
/// the deadline), and answered. Nobody waits for it meanwhile, so the connection thread
/// takes the parked call over and sends it in the background: the broker answers it
/// before anybody asks for the answer.
#[test]
fn a_call_made_before_the_broker_starts_is_sent_when_it_is_up() {
    use tradeplex_client::{Client, ClientOptions};
    let port = free_port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let opts = ClientOptions::default().timeout(Duration::from_secs(20));
    let client = Client::connect(&ep, opts).unwrap();
    // `tpx.status` is served by the broker itself, so no worker registration can race it.
    let pending = client
        .send(
            tradeplex_proto::mgmt::STATUS_SERVICE,
            Vec::new(),
            CallOptions::command(),
        )
        .unwrap();
    let any = "tcp://127.0.0.1:*";
    let broker = Broker::start_on(&ep, any, any, any, "127.0.0.1:0", &[]);
    let answered = || {
        // The broker's own services are counted under one label.
        scrape(&broker.http).sum("tradeplex_requests_answered_total", &[("service", "tpx")])
    };
    wait_until(Duration::from_secs(10), "the parked call answered", || {
        answered() >= 1.0
    });
    let reply = pending.wait().expect("answered once the broker is up");
    let status: tradeplex_proto::mgmt::StatusReply =
        rmp_serde::from_slice(&reply.body).expect("a status reply");
    assert!(status.workers.is_empty(), "{status:?}");
}

#[test]
fn a_worker_reading_batches_gets_a_rounds_requests_in_one_message_and_may_answer_in_one() {
    use tradeplex_proto::batch::{self, BatchBuilder};
    use tradeplex_proto::worker::{self as wp, Message};
    let broker = Broker::start(&["--grace-ms", "10000"]);
    let client = broker.client();
    // Queued before any worker offers the service: READY releases them in one round.
    let pending: Vec<_> = (0..5u8)
        .map(|i| {
            let opts = CallOptions::default().timeout(Duration::from_secs(10));
            client.send("raw.batch", vec![i], opts).unwrap()
        })
        .collect();
    wait_until(Duration::from_secs(10), "5 requests queued", || {
        scrape(&broker.http).sum("tradeplex_queue_depth", &[]) == 5.0
    });
    let worker = RawWorker::connect(&broker.backend);
    worker.register_reading_batches("raw.batch", 8, true);
    let (msg, frame, at) = worker.next_with_frame();
    let Message::Batch(h) = msg else {
        panic!("expected BATCH, got {msg:?}")
    };
    assert_eq!(h.count, 5);
    let body = &frame[at..];
    let mut answers = BatchBuilder::default();
    for item in batch::items(body, h.count) {
        let request = &body[item.expect("a well-formed batch")];
        let (Message::Request(r), start) = wp::decode(&[request]).unwrap() else {
            panic!("a batch from the broker carries REQUESTs")
        };
        let reply = wp::ReplyHeader { job: r.job };
        let echoed = [&b"re:"[..], &request[start..]].concat();
        answers.push_encoded(&wp::encode(wp::Command::Reply, &reply, &echoed));
    }
    // A sixth message that is not one: refused, the five before it still count.
    answers.push_encoded(b"TPXW03\x03");
    let mut out = Vec::new();
    answers.head_into(&wp::PROTOCOL, wp::Command::Batch as u8, &mut out);
    out.extend_from_slice(answers.body());
    worker.socket.send(out, 0).unwrap();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.wait().unwrap().body, [&b"re:"[..], &[i as u8]].concat());
    }
    match worker.next() {
        Message::Disconnect(d) => assert!(d.reason.starts_with("bad_request: "), "{}", d.reason),
        other => panic!("expected the refusal, got {other:?}"),
    }
    let page = scrape(&broker.http);
    let dir = |d| [("direction", d)];
    assert_eq!(page.sum("tradeplex_batches_total", &dir("to_workers")), 1.0);
    assert_eq!(
        page.sum("tradeplex_batches_total", &dir("from_workers")),
        1.0
    );
    let carried = page.sum("tradeplex_batched_messages_total", &dir("from_workers"));
    assert_eq!(carried, 6.0);
    // The five answers reached the broker in one message, and left for the client (it
    // reads BATCH) in one.
    assert_eq!(page.sum("tradeplex_batches_total", &dir("to_clients")), 1.0);
    let to_client = page.sum("tradeplex_batched_messages_total", &dir("to_clients"));
    assert_eq!(to_client, 5.0);
    assert!(page.sum("tradeplex_bad_frames_total", &[("socket", "backend")]) >= 1.0);
    client.status().expect("the broker keeps serving");
}

#[test]
fn a_pipelined_client_through_a_worker_process_rides_batches_both_ways() {
    let broker = Broker::start(&["--grace-ms", "10000"]);
    let client = broker.client();
    // Queued before the worker starts: its first delivery is a batch, and it answers the
    // batch's results in batches (a broker that sent one reads them).
    let pending: Vec<_> = (0..50u32)
        .map(|i| {
            client
                .send("echo", body(json!({ "n": i })), CallOptions::query())
                .unwrap()
        })
        .collect();
    wait_until(Duration::from_secs(10), "50 requests queued", || {
        scrape(&broker.http).sum("tradeplex_queue_depth", &[]) == 50.0
    });
    let _w = broker.worker(&[]);
    for (i, p) in pending.into_iter().enumerate() {
        let reply: serde_json::Value = rmp_serde::from_slice(&p.wait().unwrap().body).unwrap();
        assert_eq!(reply["n"], i as u64);
    }
    let page = scrape(&broker.http);
    let dir = |d| [("direction", d)];
    assert!(page.sum("tradeplex_batches_total", &dir("to_workers")) >= 1.0);
    assert!(page.sum("tradeplex_batches_total", &dir("from_workers")) >= 1.0);
    assert_eq!(page.sum("tradeplex_bad_frames_total", &[]), 0.0);
}

#[test]
fn a_clients_batch_of_requests_is_served_request_by_request_and_what_cannot_be_read_is_refused() {
    use tradeplex_proto::batch::BatchBuilder;
    use tradeplex_proto::client::{self as cp, Message};
    let broker = Broker::start(&[]);
    let _w = broker.worker(&[]);
    broker.wait_for_workers(&broker.client(), "echo", 1);
    let raw = raw_dealer(&broker.frontend);
    let echo = |id: u64, n: u64| {
        let b = body(json!({ "n": n }));
        message(cp::PROTOCOL.frame, 1, &request_header(id, "echo"), &b)
    };
    let mut batch = BatchBuilder::default();
    batch.push_encoded(&echo(11, 1));
    batch.push_encoded(&echo(12, 2));
    // A REPLY has no place in a client's batch: refused with its id, the rest served.
    let reply = tradeplex_proto::frame::encode_header(&cp::ReplyHeader {
        id: tradeplex_proto::RequestId(13),
        worker: tradeplex_proto::WorkerId::random(),
    });
    batch.push_encoded(&head(2, &reply));
    batch.push_encoded(&echo(14, 4));
    let mut out = Vec::new();
    batch.head_into(&cp::PROTOCOL, cp::Command::Batch as u8, &mut out);
    out.extend_from_slice(batch.body());
    // The last message's length runs past the end: a break, refused after the others.
    out.truncate(out.len() - 3);
    raw.send(out, 0).unwrap();

    let mut replies = HashMap::new();
    let mut errors = HashMap::new();
    while replies.len() + errors.len() < 4 {
        let frames = raw.recv_multipart(0).expect("an answer");
        let mut on = |m: &[u8]| match cp::decode_answer(&[m]).expect("a well-formed answer") {
            (Message::Reply(h), at) => {
                let v: serde_json::Value = rmp_serde::from_slice(&m[at..]).unwrap();
                replies.insert(h.id.0, v["n"].as_u64().unwrap());
            }
            (Message::Error(e), _) => {
                errors.insert(e.id.0, (e.code, e.message));
            }
            (other, _) => panic!("unexpected {other:?}"),
        };
        on(&frames[0]);
    }
    assert_eq!(replies, HashMap::from([(11, 1), (12, 2)]));
    let (code, msg) = &errors[&13];
    assert_eq!(*code, tradeplex_proto::ErrorCode::BadRequest as u16);
    assert!(msg.contains("only REQUEST"), "{msg}");
    let (code, msg) = &errors[&0];
    assert_eq!(*code, tradeplex_proto::ErrorCode::BadRequest as u16);
    assert!(msg.contains("runs past the end"), "{msg}");

    let page = scrape(&broker.http);
    let from = [("direction", "from_clients")];
    assert_eq!(page.sum("tradeplex_batches_total", &from), 1.0);
    assert_eq!(page.sum("tradeplex_batched_messages_total", &from), 3.0);
    assert_eq!(
        page.sum("tradeplex_bad_frames_total", &[("socket", "frontend")]),
        2.0
    );
    assert!(broker_is_alive(&broker));
}

#[test]
fn a_basket_sent_together_rides_batches_and_each_order_runs_once() {
    let broker = Broker::start(&["--grace-ms", "10000"]);
    let client = broker.client();
    let basket = |from: u32, n: u32| -> Vec<(&str, Vec<u8>, CallOptions)> {
        (from..from + n)
            .map(|i| ("echo", body(json!({ "n": i })), CallOptions::command()))
            .collect()
    };
    // Before this connection has seen a BATCH from the broker, a basket goes call by call.
    let first = client.send_many(basket(0, 40)).unwrap();
    wait_until(Duration::from_secs(10), "40 requests queued", || {
        scrape(&broker.http).sum("tradeplex_queue_depth", &[]) == 40.0
    });
    let from = [("direction", "from_clients")];
    assert_eq!(
        scrape(&broker.http).sum("tradeplex_batches_total", &from),
        0.0
    );
    let journal = temp_path("basket");
    let _w = broker.worker(&["--journal", journal.to_str().unwrap()]);
    for (i, p) in first.into_iter().enumerate() {
        let reply: serde_json::Value = rmp_serde::from_slice(&p.wait().unwrap().body).unwrap();
        assert_eq!(reply["n"], i as u64);
    }
    // The queued backlog's answers came back in BATCHes: now the basket rides one.
    let to = [("direction", "to_clients")];
    assert!(scrape(&broker.http).sum("tradeplex_batches_total", &to) >= 1.0);
    // 600 calls: over a BATCH's 256, so at least three.
    let second = client.send_many(basket(40, 600)).unwrap();
    for (i, p) in second.into_iter().enumerate() {
        let reply: serde_json::Value = rmp_serde::from_slice(&p.wait().unwrap().body).unwrap();
        assert_eq!(reply["n"], 40 + i as u64);
    }
    // A call over a BATCH's 64 KiB goes alone, the calls beside it too (no batch left
    // with two in it), each answered.
    let big = "x".repeat(100 * 1024);
    let mixed = vec![
        ("echo", body(json!({ "n": "a" })), CallOptions::command()),
        ("echo", body(json!({ "n": big })), CallOptions::command()),
        ("echo", body(json!({ "n": "b" })), CallOptions::command()),
    ];
    let answers: Vec<serde_json::Value> = client
        .send_many(mixed)
        .unwrap()
        .into_iter()
        .map(|p| rmp_serde::from_slice(&p.wait().unwrap().body).unwrap())
        .collect();
    assert_eq!(answers[0]["n"], "a");
    assert_eq!(answers[1]["n"].as_str().map(str::len), Some(100 * 1024));
    assert_eq!(answers[2]["n"], "b");
    let page = scrape(&broker.http);
    assert!(page.sum("tradeplex_batches_total", &from) >= 3.0);
    assert_eq!(page.sum("tradeplex_batched_messages_total", &from), 600.0);
    assert_eq!(page.sum("tradeplex_bad_frames_total", &[]), 0.0);
    // Orders (not idempotent): each of the 643 executed exactly once.
    let runs = journal_executions(&journal);
    let jobs: HashSet<String> = runs.iter().map(|l| l["job"].to_string()).collect();
    assert_eq!((runs.len(), jobs.len()), (643, 643));
}
