//! The `tradeplex` command line without a broker: errors go to stderr with their code
//! name and a non-zero exit; stdout stays empty.

use std::process::Command;

#[test]
fn call_without_broker_times_out_cleanly() {
    // Port 9 (discard) on loopback: nothing listens, the call must time out, not hang.
    let out = Command::new(env!("CARGO_BIN_EXE_tradeplex"))
        .args([
            "--broker",
            "tcp://127.0.0.1:9",
            "call",
            "echo",
            "{}",
            "--timeout-ms",
            "200",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("timeout"));
}

#[test]
fn bad_json_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tradeplex"))
        .args(["--broker", "tcp://127.0.0.1:9", "call", "echo", "{nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSON"));
}
