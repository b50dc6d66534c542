//! The core request path between real processes: pipelining, capacity, worker death,
//! broker restart, deadlines, bad input.

use std::collections::{HashMap, HashSet};

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
