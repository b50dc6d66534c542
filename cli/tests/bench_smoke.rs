//! Runs `tradeplex bench` in a tiny configuration so it cannot rot. Not timed: it checks
//! that the table is printed and the JSON parses, never how fast anything is.

use std::path::Path;
use std::process::Command;

#[test]
fn bench_prints_a_table_and_writes_json() {
    let exe = Path::new(env!("CARGO_BIN_EXE_tradeplex"));
    let dir = exe.parent().expect("binary directory");
    for name in ["tradeplex-broker", "tradeplex-worker"] {
        if !dir.join(name).exists() {
            eprintln!(
                "SKIPPED bench_smoke: {name} is not built next to {} \
                 (run `cargo test --workspace` so every binary is built)",
                exe.display()
            );
            return;
        }
    }
    let json = std::env::temp_dir().join(format!("tpx-bench-smoke-{}.json", std::process::id()));
    let out = Command::new(exe)
        .args([
            "bench",
            "--repeat",
            "1",
            "--messages",
            "200",
            "--scenarios",
            "rr,rr-raw,events,memory,trading",
            "--configs",
            "1x1,2x2",
            "--windows",
            "1,8",
            "--capacity",
            "4",
            "--event-messages",
            "500",
            "--subscribers",
            "1,2",
            "--step-ms",
            "50",
            "--max-rate",
            "100000",
            "--refine",
            "1",
            "--stall-s",
            "0.3",
            "--stall-others",
            "1",
            "--orders",
            "20",
            "--time-cap-s",
            "10",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run tradeplex bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout
            .contains("| scenario | config | metric | Tradeplex | baseline | Tradeplex/baseline |"),
        "no table header:\n{stdout}"
    );
    for row in [
        "| rr w1 | 1c×1w | calls/s",
        "| rr w8 | 2c×2w | msgs/s",
        "| rr-raw w1 | 1c×1w | calls/s",
        "| rr-raw w8 | 2c×2w | p99.9",
        "| events paced 50k/s | 1 pub × 2 sub | lost",
        "| events lossless | 1 pub × 1 sub | capacity",
        "| events flat out | 1 pub × 2 sub | gaps reported",
        "| memory | broker | RSS at start",
        "| memory | 1 subs + 1 stalled | others' received/s, 1 stalled sub",
        "| trading | 1 client, SIM, window 1 | send_order → accepted event p50",
    ] {
        assert!(stdout.contains(row), "no row {row:?} in:\n{stdout}");
    }

    let text = std::fs::read_to_string(&json).expect("JSON file written");
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    let rows = v["rows"].as_array().expect("rows");
    let calls = rows
        .iter()
        .find(|r| r["scenario"] == "rr w1" && r["config"] == "1c×1w" && r["metric"] == "calls/s")
        .expect("rr w1 calls/s row");
    // Both sides ran (a figure, not a speed: no performance assertion).
    assert!(
        calls["tradeplex"].as_f64().is_some_and(|x| x > 0.0),
        "{calls}"
    );
    assert!(
        calls["baseline"].as_f64().is_some_and(|x| x > 0.0),
        "{calls}"
    );
    assert!(calls["ratio"].is_number(), "{calls}");
    assert_eq!(v["context"]["repeat"], 1);
    assert!(v["notes"].is_array());
}

#[test]
fn python_scenario_without_an_interpreter_is_skipped_with_a_note() {
    let exe = Path::new(env!("CARGO_BIN_EXE_tradeplex"));
    let dir = exe.parent().expect("binary directory");
    if !dir.join("tradeplex-broker").exists() || !dir.join("tradeplex-worker").exists() {
        eprintln!("SKIPPED: broker/worker not built next to {}", exe.display());
        return;
    }
    let out = Command::new(exe)
        .args([
            "bench",
            "--repeat",
            "1",
            "--scenarios",
            "python",
            "--python",
            "/nonexistent/python-for-tradeplex-bench",
        ])
        .output()
        .expect("run tradeplex bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}");
    assert!(
        stdout.contains("Note: python: client rows skipped, cannot start /nonexistent/"),
        "no skip note:\n{stdout}"
    );
    assert!(
        !stdout.contains("| python w1 |"),
        "rows without a run:\n{stdout}"
    );
}
