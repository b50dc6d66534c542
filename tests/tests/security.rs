//! CURVE: only allow-listed keys reach the broker; plaintext and unknown keys get nothing.

use std::process::Command;
use std::time::Duration;

use tradeplex_client::{CallOptions, Client, ClientOptions};
use tradeplex_tests::*;

struct Keys {
    file: std::path::PathBuf,
    public: String,
    secret: String,
}

/// A key pair made by `tradeplex keygen`, saved to a file.
fn keygen(tag: &str) -> Keys {
    let out = Command::new(bin("tradeplex"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let file = temp_path(tag);
    std::fs::write(&file, &text).unwrap();
    Keys {
        file,
        public: value["public_key"].as_str().unwrap().to_string(),
        secret: value["secret_key"].as_str().unwrap().to_string(),
    }
}

fn client(broker: &Broker, server: &Keys, own: Option<&Keys>) -> Client {
    let mut opts = ClientOptions::default().timeout(Duration::from_millis(800));
    opts.curve = own.map(|k| tradeplex_ops::curve::ClientCurve {
        server_key: server.public.clone(),
        keys: tradeplex_ops::curve::KeyPair {
            public_key: k.public.clone(),
            secret_key: k.secret.clone(),
        },
    });
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
