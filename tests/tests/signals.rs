//! Signals a process handles arrive in the middle of its socket calls: a SIGHUP reload or
//! a repeated SIGTERM interrupts whatever libzmq call the loop is in (EINTR), and that
//! must never fail a call, drop a message or end the process with an error.

use std::time::Duration;

use serde_json::json;
use tradeplex_client::CallOptions;
use tradeplex_tests::*;

/// How many signals each test sends: enough that some land inside a socket call.
const SIGNALS: usize = 150;

#[test]
fn sighups_during_pipelined_traffic_cost_no_call_and_the_broker_stays_up() {
    // A config file to reload (empty: every default), so each SIGHUP does a real reload.
    let config = temp_path("signals-config.toml");
    std::fs::write(&config, "").unwrap();
    let mut broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let _w = broker.worker(&["--capacity", "64"]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);

    let answered = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut answered = 0u32;
            for round in 0..40u32 {
                let pending: Vec<_> = (0..250u32)
                    .map(|i| {
                        let n = round * 1000 + i;
                        let call = client
                            .send("echo", body(json!({ "n": n })), CallOptions::query())
                            .unwrap();
                        (n, call)
                    })
                    .collect();
                for (n, call) in pending {
                    let reply = call
                        .wait()
                        .unwrap_or_else(|e| panic!("call {n} failed: {e}"));
                    let echoed: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
                    assert_eq!(echoed["n"], n);
                    answered += 1;
                }
            }
            answered
        });
        for _ in 0..SIGNALS {
            if traffic.is_finished() {
                break;
            }
            assert!(broker.proc.signal("HUP"), "the broker is gone");
        }
        traffic.join().unwrap()
    });
    assert_eq!(answered, 40 * 250);
    assert!(broker.proc.signal("0"), "the broker survived the SIGHUPs");
    let reloads =
        |result| scrape(&broker.http).sum("tradeplex_config_reloads_total", &[("result", result)]);
    wait_until(Duration::from_secs(5), "the reloads", || {
        reloads("ok") >= 1.0
    });
    assert_eq!(reloads("error"), 0.0);
    assert_eq!(
        broker.proc.terminate(Duration::from_secs(10)),
        Some(0),
        "clean exit"
    );
}

#[test]
fn repeated_sigterms_still_let_broker_and_worker_drain_and_exit_cleanly() {
    let mut broker = Broker::start(&["--grace-ms", "5000"]);
    let journal = temp_path("signals");
    let mut w = broker.worker(&["--capacity", "4", "--journal", journal.to_str().unwrap()]);
    let client = broker.client();
    broker.wait_for_workers(&client, "echo", 1);
    let slow: Vec<_> = (0..4u32)
        .map(|n| {
            client
                .send(
                    "echo",
                    body(json!({"sleep_ms": 600, "n": n})),
                    CallOptions::command(),
                )
                .unwrap()
        })
        .collect();
    wait_until(Duration::from_secs(5), "the slow requests to start", || {
        journal_executions(&journal).len() == 4
    });

    // The worker first: it stops taking work and finishes what it holds, whatever else
    // arrives meanwhile.
    for _ in 0..SIGNALS {
        assert!(w.proc.signal("TERM"), "the worker ended before its work");
    }
    for (n, call) in slow.into_iter().enumerate() {
        let reply = call.wait().unwrap_or_else(|e| panic!("order {n}: {e}"));
        let echoed: serde_json::Value = rmp_serde::from_slice(&reply.body).unwrap();
        assert_eq!(echoed["n"], n as u64);
    }
    assert_eq!(
        w.proc.terminate(Duration::from_secs(10)),
        Some(0),
        "worker exits cleanly"
    );

    // Then the broker, signalled through its drain and farewell.
    for _ in 0..SIGNALS {
        if !broker.proc.signal("TERM") {
            break;
        }
    }
    assert_eq!(
        broker.proc.terminate(Duration::from_secs(10)),
        Some(0),
        "broker exits cleanly"
    );
}
