//! The worker binary's command line and config handling.

use std::process::Command;

#[test]
fn bad_config_is_refused_with_the_field_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_tradeplex-worker"))
        .args(["--capacity", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("capacity"));
}
