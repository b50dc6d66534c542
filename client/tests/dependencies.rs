//! The client library stays a library: a strategy that depends on `tradeplex-client` must
//! not pull in the command line's, the bench's or the broker's crates. This reads the
//! client's normal dependency tree (what a dependent builds) from `cargo tree`, so a new
//! dependency that brings one of them back fails here instead of regressing silently.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates the client's normal dependency tree must not contain, and why they are out.
const FORBIDDEN: &[(&str, &str)] = &[
    ("clap", "command-line parsing belongs to tradeplex-cli"),
    ("anyhow", "a library returns ClientError (thiserror)"),
    (
        "hdrhistogram",
        "latency histograms belong to the bench and the cli",
    ),
    ("hyper", "HTTP is the servers' (tradeplex-ops)"),
    ("prometheus", "metrics are the servers'"),
    ("tokio", "the client runs on its own threads"),
    (
        "tradeplex-broker",
        "the bench's in-process risk scenario lives in tradeplex-bench",
    ),
    (
        "tradeplex-ops",
        "client-side CURVE is tradeplex_client::curve",
    ),
    (
        "tradeplex-bench",
        "the bench is not a strategy's dependency",
    ),
];

fn normal_dependencies() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "tradeplex-client",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_client_library_pulls_in_no_cli_bench_or_server_crates() {
    let deps = normal_dependencies();
    // The tree was really read: the client and its wire crate are in it.
    assert!(deps.contains("tradeplex-client"), "{deps:?}");
    assert!(deps.contains("tradeplex-proto"), "{deps:?}");
    let found: Vec<String> = FORBIDDEN
        .iter()
        .filter(|(name, _)| deps.contains(*name))
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    assert!(
        found.is_empty(),
        "tradeplex-client's normal dependencies include: {}",
        found.join(", ")
    );
}
