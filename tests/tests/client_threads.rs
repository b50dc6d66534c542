//! One client used from many threads: a lone caller's calls and pipelines are driven on its
//! own thread (no hand-off to the connection thread), concurrent callers each get their own
//! answers whichever thread sends them, and nobody waits behind another thread's slow call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tradeplex_client::{CallOptions, Client};
use tradeplex_tests::*;

fn echoed(client: &Client, v: serde_json::Value) -> serde_json::Value {
    let reply = client
        .call("echo", body(v), CallOptions::query())
        .unwrap_or_else(|e| panic!("call failed: {e}"));
    rmp_serde::from_slice(&reply.body).unwrap()
}

#[test]
fn a_lone_callers_calls_are_answered_on_its_own_thread() {
    let broker = Broker::start(&[]);
    let _w = broker.worker(&[]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let before = client.stats().direct_calls;
    for n in 0..50 {
        assert_eq!(echoed(&client, json!({ "n": n }))["n"], n);
    }
    assert_eq!(client.stats().direct_calls - before, 50);
    // A lone thread's pipeline is driven by that thread too: sent from it, and the first
    // wait (an answer not in yet) runs the rounds that bring the others in.
    let pending: Vec<_> = (0..20)
        .map(|n| {
            client
                .send("echo", body(json!({ "n": n })), CallOptions::query())
                .unwrap()
        })
        .collect();
    for (n, p) in pending.into_iter().enumerate() {
        let v: serde_json::Value = rmp_serde::from_slice(&p.wait().unwrap().body).unwrap();
        assert_eq!(v["n"], n);
    }
    let piped = client.stats().direct_calls - before - 50;
    assert!((1..=20).contains(&piped), "{piped} waits drove");
}

#[test]
fn eight_threads_calling_and_pipelining_on_one_client_each_get_their_own_answers() {
    let broker = Broker::start(&[]);
    let _w1 = broker.worker(&["--capacity", "16"]);
    let _w2 = broker.worker(&["--capacity", "16"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 2);
    const CALLS: u64 = 300;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                if t < 6 {
                    // Blocking calls: direct when the connection is free, else handed over.
                    for n in 0..CALLS {
                        let v = echoed(&client, json!({"t": t, "n": n}));
                        assert_eq!((v["t"].as_u64(), v["n"].as_u64()), (Some(t), Some(n)));
                    }
                    return;
                }
                // Pipelined, 16 in flight.
                let mut in_flight = std::collections::VecDeque::new();
                for n in 0..CALLS {
                    let b = body(json!({"t": t, "n": n}));
                    in_flight.push_back((n, client.send("echo", b, CallOptions::query()).unwrap()));
                    if in_flight.len() == 16 || n == CALLS - 1 {
                        while let Some((n, call)) = in_flight.pop_front() {
                            let reply = call.wait().unwrap_or_else(|e| panic!("{t}/{n}: {e}"));
                            let v: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
                            assert_eq!((v["t"].as_u64(), v["n"].as_u64()), (Some(t), Some(n)));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a calling thread failed");
    }
    assert!(client.stats().direct_calls <= 8 * CALLS);
}

#[test]
fn another_threads_calls_do_not_wait_behind_a_slow_call() {
    let broker = Broker::start(&[]);
    let _w = broker.worker(&["--capacity", "4"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let slow_done = Arc::new(AtomicBool::new(false));
    let slow = {
        let (client, done) = (client.clone(), slow_done.clone());
        std::thread::spawn(move || {
            let v = echoed(&client, json!({"sleep_ms": 1500, "n": "slow"}));
            done.store(true, Ordering::SeqCst);
            v
        })
    };
    // Whichever thread drives the connection (the slow caller on its own thread, or the
    // connection thread), these calls are sent and answered while the slow one waits.
    let mut fast = 0;
    let mut worst = Duration::ZERO;
    while !slow_done.load(Ordering::SeqCst) {
        let t0 = Instant::now();
        assert_eq!(echoed(&client, json!({ "n": fast }))["n"], fast);
        worst = worst.max(t0.elapsed());
        fast += 1;
    }
    assert_eq!(slow.join().unwrap()["n"], "slow");
    assert!(fast >= 10, "only {fast} calls done during a 1.5 s call");
    assert!(
        worst < Duration::from_millis(750),
        "a call waited {worst:?}"
    );
}
