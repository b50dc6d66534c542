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

/// The text clap shows under `flag` in `--help` (the lines up to the next flag).
fn help_of(help: &str, flag: &str) -> String {
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(flag));
    let mut text = lines.next().unwrap_or_default().to_string();
    for l in lines.take_while(|l| !l.trim_start().starts_with('-')) {
        text.push('\n');
        text.push_str(l);
    }
    text
}

#[test]
fn help_describes_each_flag_under_its_own_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_tradeplex-worker"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let server_key = help_of(&help, "--curve-server-key");
    assert!(
        server_key.contains("The broker's CURVE public key"),
        "{server_key}"
    );
    assert!(!server_key.contains("Log filter"), "{server_key}");
    let log_level = help_of(&help, "--log-level");
    assert!(log_level.contains("Log filter"), "{log_level}");
    assert!(log_level.contains("[default: info]"), "{log_level}");
}

/// z85 keys may start with `-` (about one in 85 does): such a key is a value, not a flag.
#[test]
fn a_curve_key_starting_with_a_hyphen_is_taken_as_the_key() {
    let key = format!("-{}", "a".repeat(39));
    let out = Command::new(env!("CARGO_BIN_EXE_tradeplex-worker"))
        .args([
            "--curve-server-key",
            &key,
            "--curve-key-file",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot read key file"), "{stderr}");
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
}
