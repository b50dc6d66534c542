//! CURVE: only allow-listed keys reach the broker; plaintext and unknown keys get nothing.

use std::process::Command;
use std::time::Duration;

use tradeplex_client::{CallOptions, Client, ClientOptions};
use tradeplex_tests::*;

fn client(broker: &Broker, server: &Keys, own: Option<&Keys>) -> Client {
    let mut opts = ClientOptions::default().timeout(Duration::from_millis(800));
    opts.curve = own.map(|k| k.client_curve(server));
    Client::connect(&broker.frontend, opts).unwrap()
}

#[test]
fn only_allow_listed_client_keys_get_answers() {
    let (server, allowed, stranger) = (
        keygen("broker-key"),
        keygen("client-ok"),
        keygen("client-bad"),
    );
    let config = temp_path("curve-broker.toml");
    std::fs::write(
        &config,
        format!(
            "[curve]\nkey_file = {:?}\nallow_clients = [{:?}]\nallow_workers = []\n",
            server.file.to_str().unwrap(),
            allowed.public
        ),
    )
    .unwrap();
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);

    let ok = client(&broker, &server, Some(&allowed));
    let status = ok.status().expect("an allow-listed client is served");
    assert!(status.workers.is_empty());

    let bad = client(&broker, &server, Some(&stranger));
    let err = bad
        .call("tpx.status", Vec::new(), CallOptions::query())
        .unwrap_err();
    assert!(
        matches!(err.name(), "timeout" | "unavailable"),
        "an unknown key must get nothing: {err}"
    );

    let plain = client(&broker, &server, None);
    let err = plain
        .call("tpx.status", Vec::new(), CallOptions::query())
        .unwrap_err();
    assert!(
        matches!(err.name(), "timeout" | "unavailable"),
        "plaintext must get nothing: {err}"
    );
}

#[test]
fn a_bad_allow_list_key_is_refused_at_start() {
    let server = keygen("broker-key2");
    let config = temp_path("curve-bad.toml");
    std::fs::write(
        &config,
        format!(
            "[curve]\nkey_file = {:?}\nallow_clients = [\"not-a-key\"]\n",
            server.file.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(bin("tradeplex-broker"))
        .args(["--config", config.to_str().unwrap(), "--http", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("curve.allow_clients"));
}

#[test]
fn only_allow_listed_workers_register_and_serve() {
    let (server, client_keys, good, bad) = (
        keygen("broker-key3"),
        keygen("client3"),
        keygen("worker-ok"),
        keygen("worker-bad"),
    );
    let config = temp_path("curve-workers.toml");
    std::fs::write(
        &config,
        format!(
            "[curve]\nkey_file = {:?}\nallow_clients = [{:?}]\nallow_workers = [{:?}]\n",
            server.file.to_str().unwrap(),
            client_keys.public,
            good.public
        ),
    )
    .unwrap();
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let curve = |k: &Keys| {
        vec![
            "--curve-server-key".to_string(),
            server.public.clone(),
            "--curve-key-file".to_string(),
            k.file.to_str().unwrap().to_string(),
        ]
    };
    let (good_args, bad_args, client_args) = (curve(&good), curve(&bad), curve(&client_keys));
    let good_worker = broker.worker(&strs(&good_args));
    let _bad_worker = broker.worker(&strs(&bad_args));
    // A client's key is allow-listed on the frontend only: it must not register a worker.
    let _client_key_worker = broker.worker(&strs(&client_args));

    let client = client(&broker, &server, Some(&client_keys));
    broker.wait_for_workers(&client, "echo", 1);
    // The stranger and the client key are refused at the handshake: wait for the broker
    // to count both.
    wait_until(
        Duration::from_secs(10),
        "the refused worker keys to be counted",
        || {
            scrape(&broker.http)
                .value("tradeplex_auth_failures_total", &[("socket", "backend")])
                .unwrap_or(0.0)
                >= 2.0
        },
    );
    let status = client.status().unwrap();
    assert_eq!(status.workers.len(), 1);
    assert_eq!(status.workers[0].worker.to_string(), good_worker.id);
    let reply = client
        .call(
            "echo",
            body(serde_json::json!({"x": 1})),
            CallOptions::query(),
        )
        .unwrap();
    assert_eq!(reply.worker.to_string(), good_worker.id);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Issue 10, item 10: without CURVE a broker binding a non-loopback address refuses to
/// start, naming the socket and the way out; with `--insecure` it starts, warns, and
/// exports `tradeplex_insecure 1`. A loopback-only broker exports 0.
#[test]
fn a_wildcard_bind_without_curve_refuses_to_start_unless_insecure() {
    let wild = "tcp://0.0.0.0:*";
    let any = "tcp://127.0.0.1:*";
    let args = |frontend: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--frontend", frontend, "--backend", any, "--xsub", any]
            .iter()
            .chain(&["--xpub", any, "--http", "127.0.0.1:0"])
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let out = run_to_exit(
        "tradeplex-broker",
        &args(wild, &[]),
        Duration::from_secs(20),
    );
    assert!(matches!(out.code, Some(c) if c != 0), "{out:?}");
    assert!(out.stdout.is_empty(), "no ready line: {out:?}");
    for word in ["frontend", "0.0.0.0", "loopback", "CURVE", "--insecure"] {
        assert!(out.stderr.contains(word), "stderr lacks {word:?}: {out:?}");
    }

    let insecure = Broker::start_on(wild, any, any, any, "127.0.0.1:0", &["--insecure"]);
    assert!(
        insecure.frontend.starts_with("tcp://0.0.0.0:"),
        "{}",
        insecure.frontend
    );
    let gauge = scrape(&insecure.http).value("tradeplex_insecure", &[]);
    assert_eq!(gauge, Some(1.0));

    let safe = Broker::start(&[]);
    assert_eq!(
        scrape(&safe.http).value("tradeplex_insecure", &[]),
        Some(0.0)
    );
}
