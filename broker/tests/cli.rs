//! The broker binary's command line and config handling.

use std::process::Command;

fn broker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tradeplex-broker"))
}

#[test]
fn bad_config_field_is_named_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("tpx-broker-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "heartbeat_ms = 0\n").unwrap();
    let out = broker().arg("--config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("heartbeat_ms"), "stderr: {err}");
    std::fs::write(&file, "frontend = 5555\n").unwrap();
    let out = broker().arg("--config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frontend"));
    for (text, field) in [
        (
            "[risk]\n[[risk.account]]\nname = \"a\"\norder_size_limit = -1\n",
            "order_size_limit",
        ),
        (
            "[risk]\n[[risk.account]]\nname = \"a\"\nmax_loss = 5\n",
            "max_loss",
        ),
        (
            "[risk]\n[[risk.account]]\nname = \"a\"\n[[risk.account]]\nname = \"a\"\n",
            "listed twice",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = broker().arg("--config").arg(&file).output().unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{text}: stderr: {err}");
    }
}

#[test]
fn flag_overrides_bad_file_value_check() {
    let out = broker().args(["--liveness", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("liveness"));
}
