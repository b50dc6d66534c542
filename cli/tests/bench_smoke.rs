//! Runs `tradeplex bench` in a tiny configuration so it cannot rot. Not timed: it checks
//! that the table is printed and the JSON parses, never how fast anything is.

use std::path::{Path, PathBuf};
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

/// `tradeplex bench --scenarios rr` at 1 client × 1 worker, windows 1 and 8, 200 calls,
/// with `extra` flags and environment; returns stdout and the JSON it wrote.
fn rr_with_peers(extra: &[&str], env: &[(&str, &str)]) -> Option<(String, serde_json::Value)> {
    let exe = Path::new(env!("CARGO_BIN_EXE_tradeplex"));
    let dir = exe.parent().expect("binary directory");
    if !dir.join("tradeplex-broker").exists() || !dir.join("tradeplex-worker").exists() {
        eprintln!("SKIPPED: broker/worker not built next to {}", exe.display());
        return None;
    }
    let json = std::env::temp_dir().join(format!(
        "tpx-bench-peers-{}-{}.json",
        std::process::id(),
        extra.len()
    ));
    let out = Command::new(exe)
        .args([
            "bench",
            "--repeat",
            "1",
            "--messages",
            "200",
            "--scenarios",
            "rr",
        ])
        .args(["--configs", "1x1", "--windows", "1,8", "--time-cap-s", "10"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .envs(env.iter().copied())
        .output()
        .expect("run tradeplex bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("JSON file written");
    let _ = std::fs::remove_file(&json);
    Some((stdout, serde_json::from_str(&text).expect("JSON parses")))
}

fn row<'a>(v: &'a serde_json::Value, scenario: &str, metric: &str) -> &'a serde_json::Value {
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["scenario"] == scenario && r["config"] == "1c×1w" && r["metric"] == metric)
        .unwrap_or_else(|| panic!("no {scenario} {metric} row in {v}"))
}

#[test]
fn missing_peers_are_skipped_with_a_note_and_the_bench_still_runs() {
    // The NATS server through the environment, the interpreter through the flag.
    let Some((stdout, v)) = rr_with_peers(
        &["--python", "/nonexistent/python-for-tradeplex-bench"],
        &[(
            "TRADEPLEX_BENCH_NATS_SERVER",
            "/nonexistent/nats-server-for-tradeplex-bench",
        )],
    ) else {
        return;
    };
    assert!(
        stdout.contains(
            "Note: nats: skipped, cannot start /nonexistent/nats-server-for-tradeplex-bench"
        ),
        "no NATS note:\n{stdout}"
    );
    assert!(
        stdout
            .contains("Note: vnpy: skipped, cannot start /nonexistent/python-for-tradeplex-bench"),
        "no vn.py note:\n{stdout}"
    );
    assert!(
        !stdout.contains("NATS |"),
        "a NATS column without a run:\n{stdout}"
    );
    assert!(
        !stdout.contains("vn.py RPC |"),
        "a vn.py column without a run:\n{stdout}"
    );
    // Tradeplex and the bare hop still ran; the headline says the peers are missing.
    assert!(row(&v, "rr w1", "p50")["ratio"].is_number());
    assert_eq!(
        v["headline"]["w1_p50_tradeplex_over_nats"],
        serde_json::Value::Null
    );
    assert!(v["headline"]["pipelined_tradeplex_over_bare_hop"].is_number());
}

/// A program the peer needs: `env` if set, else the first of `candidates` that exists
/// and passes `check`.
fn find_program(env: &str, candidates: &[PathBuf], check: &[&str]) -> Option<PathBuf> {
    let chosen = std::env::var_os(env).map(PathBuf::from);
    chosen
        .into_iter()
        .chain(candidates.iter().cloned())
        .find(|p| {
            Command::new(p)
                .args(check)
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn present_peers_get_their_rows_and_ratios() {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let nats_candidates: Vec<PathBuf> = path_dirs
        .iter()
        .map(|d| d.join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .collect();
    let nats = find_program(
        "TRADEPLEX_BENCH_NATS_SERVER",
        &nats_candidates,
        &["--version"],
    );
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-venv/bin/python");
    let python = find_program(
        "TRADEPLEX_BENCH_PYTHON",
        &[venv],
        &["-c", "import vnpy.rpc"],
    );
    let required = std::env::var("TRADEPLEX_BENCH_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    if nats.is_none() || python.is_none() {
        let missing = format!(
            "nats-server: {nats:?}, python with vn.py: {python:?} \
             (scripts/install-peers.sh installs both)"
        );
        assert!(!required, "TRADEPLEX_BENCH_REQUIRE_PEERS=1 but {missing}");
        eprintln!("SKIPPED present_peers_get_their_rows_and_ratios: {missing}");
        return;
    }
    let (nats, python) = (nats.unwrap_or_default(), python.unwrap_or_default());
    let (nats, python) = (nats.to_string_lossy(), python.to_string_lossy());
    let Some((stdout, v)) = rr_with_peers(&["--nats-server", &nats, "--python", &python], &[])
    else {
        return;
    };
    assert!(
        stdout.contains("| NATS | Tradeplex/NATS | vn.py RPC | Tradeplex/vn.py RPC |"),
        "no peer columns:\n{stdout}"
    );
    assert!(stdout.contains("Note: nats: nats-server v"), "{stdout}");
    assert!(stdout.contains("Note: vnpy: vn.py "), "{stdout}");
    let p50 = row(&v, "rr w1", "p50");
    for peer in ["nats", "vnpy"] {
        assert!(
            p50["peers"][peer]["median"]
                .as_f64()
                .is_some_and(|x| x > 0.0),
            "{peer}: {p50}"
        );
        assert!(p50["peers"][peer]["ratio"].is_number(), "{peer}: {p50}");
    }
    // NATS pipelines; vn.py cannot, so it has no window-8 figure.
    let piped = row(&v, "rr w8", "msgs/s");
    assert!(
        piped["peers"]["nats"]["median"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{piped}"
    );
    assert!(piped["peers"].get("vnpy").is_none(), "{piped}");
    let h = &v["headline"];
    for key in [
        "w1_p50_tradeplex_over_nats",
        "w1_p50_tradeplex_over_vnpy",
        "pipelined_tradeplex_over_nats",
        "pipelined_tradeplex_over_bare_hop",
    ] {
        assert!(h[key].is_number(), "{key}: {h}");
    }
    assert_eq!(h["pipelined_window"], 8);
}
