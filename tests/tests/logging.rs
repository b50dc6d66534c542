//! Logs as operators' tools see them: with stderr to a pipe, human lines carry no ANSI
//! escape codes; with `--log-json`, every line is one JSON object with `message` at the
//! top level and service names as plain strings.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tradeplex_tests::{bin, loopback_broker_flags};

/// A process whose stdout and stderr lines arrive on channels; killed when dropped.
struct Piped {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Piped {
    fn start(name: &str, args: &[&str]) -> Piped {
        let mut child = Command::new(bin(name))
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = lines(child.stdout.take().expect("piped stdout"));
        let stderr = lines(child.stderr.take().expect("piped stderr"));
        Piped {
            child,
            stdout,
            stderr,
        }
    }

    /// Stderr lines up to and including the first containing `needle` (panics at `limit`).
    fn stderr_until(&self, needle: &str, limit: Duration) -> Vec<String> {
        let until = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!("no {needle:?} on stderr within {limit:?}; got {seen:#?}"),
            }
        }
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker and a worker (serving SIM) logging at info with `extra` flags; the lines each
/// printed up to the worker's registration (broker: `worker registered`, worker:
/// `registered with broker`).
fn registration_logs(extra: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut args = loopback_broker_flags();
    args.extend(
        ["--log-level", "info"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Piped::start("tradeplex-broker", &args);
    let ready = broker
        .stdout
        .recv_timeout(Duration::from_secs(20))
        .expect("broker ready line");
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
            .to_string()
    };
    let (backend, xsub) = (field("backend"), field("xsub"));
    let mut wargs = vec![
        "--broker",
        &backend,
        "--events",
        &xsub,
        "--log-level",
        "info",
        "--service",
        "SIM",
    ];
    wargs.extend_from_slice(extra);
    let worker = Piped::start("tradeplex-worker", &wargs);
    let limit = Duration::from_secs(20);
    let broker_lines = broker.stderr_until("worker registered", limit);
    let worker_lines = worker.stderr_until("registered with broker", limit);
    (broker_lines, worker_lines)
}

#[test]
fn human_logs_to_a_pipe_have_no_ansi_colours_and_plain_service_names() {
    let (broker, worker) = registration_logs(&[]);
    for line in broker.iter().chain(&worker) {
        assert!(!line.contains("\x1b["), "ANSI escape in {line:?}");
    }
    let registered = broker.last().map(String::as_str).unwrap_or_default();
    assert!(registered.contains("services=SIM,echo"), "{registered}");
    assert!(!registered.contains("ServiceName"), "{registered}");
    // The gateway's own lines name it plainly too (not `gateway="SIM"`).
    let connected = worker
        .iter()
        .find(|l| l.contains("connection connected"))
        .unwrap_or_else(|| panic!("no gateway connection line in {worker:?}"));
    assert!(connected.ends_with(" gateway=SIM"), "{connected}");
}

#[test]
fn json_logs_have_a_top_level_message_on_every_line() {
    let (broker, worker) = registration_logs(&["--log-json"]);
    let mut messages = Vec::new();
    for line in broker.iter().chain(&worker) {
        assert!(!line.contains("\x1b["), "ANSI escape in {line:?}");
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        let message = v["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no top-level message: {line}"));
        assert!(v.get("fields").is_none(), "nested fields: {line}");
        messages.push((message.to_string(), v));
    }
    let registered = messages
        .iter()
        .find(|(m, _)| m == "worker registered")
        .map(|(_, v)| v)
        .expect("a worker registered line");
    assert_eq!(registered["services"], "SIM,echo", "{registered}");
    let on_worker = messages
        .iter()
        .find(|(m, _)| m == "registered with broker")
        .map(|(_, v)| v)
        .expect("a registered with broker line");
    assert_eq!(on_worker["services"], "SIM,echo", "{on_worker}");
}
