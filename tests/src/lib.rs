//! Test harness: starts real `tradeplex-broker` and `tradeplex-worker` processes on
//! 127.0.0.1 with ports chosen by the OS, waits for them to be ready (by reading what
//! they print, or asking the broker), and kills them when the guard drops.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tradeplex_client::{Client, ClientOptions};

/// Path of a workspace binary, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Lines it printed on stdout after the first.
    pub stdout: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `name` with `args`, waits for its first stdout line and returns it.
    pub fn start(name: &str, args: &[String]) -> (Proc, String) {
        let mut child = Command::new(bin(name))
            .args(args)
            .env(
                "TRADEPLEX_LOG",
                std::env::var("TRADEPLEX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name} printed no ready line"));
        (Proc { child, stdout: rx }, first)
    }

    /// SIGKILL now.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (SIGKILL after `limit`). Returns the exit status code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A broker process and its endpoints.
pub struct Broker {
    /// The process.
    pub proc: Proc,
    /// Clients' endpoint.
    pub frontend: String,
    /// Workers' endpoint.
    pub backend: String,
    /// Event publishing endpoint.
    pub xsub: String,
    /// Event subscribing endpoint.
    pub xpub: String,
    /// HTTP address.
    pub http: String,
}

/// Fast heartbeats so failure tests finish quickly.
pub const TEST_HEARTBEAT_MS: u64 = 100;

impl Broker {
    /// A broker on OS-chosen loopback ports.
    pub fn start(extra: &[&str]) -> Broker {
        let any = "tcp://127.0.0.1:*".to_string();
        Broker::start_on(&any, &any, &any, &any, "127.0.0.1:0", extra)
    }

    /// A broker on the given endpoints (e.g. the same ports again after a restart).
    pub fn start_on(
        frontend: &str,
        backend: &str,
        xsub: &str,
        xpub: &str,
        http: &str,
        extra: &[&str],
    ) -> Broker {
        let mut args: Vec<String> = [
            "--frontend",
            frontend,
            "--backend",
            backend,
            "--xsub",
            xsub,
            "--xpub",
            xpub,
            "--http",
            http,
            "--heartbeat-ms",
            &TEST_HEARTBEAT_MS.to_string(),
            "--liveness",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (proc, line) = Proc::start("tradeplex-broker", &args);
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .to_string()
        };
        Broker {
            frontend: field("frontend"),
            backend: field("backend"),
            xsub: field("xsub"),
            xpub: field("xpub"),
            http: field("http"),
            proc,
        }
    }

    /// Starts a worker connected to this broker.
    pub fn worker(&self, extra: &[&str]) -> Worker {
        let mut args: Vec<String> = vec![
            "--broker".into(),
            self.backend.clone(),
            "--events".into(),
            self.xsub.clone(),
            "--heartbeat-ms".into(),
            TEST_HEARTBEAT_MS.to_string(),
            "--liveness".into(),
            "3".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (proc, line) = Proc::start("tradeplex-worker", &args);
        let id = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        Worker { proc, id }
    }

    /// A client of this broker.
    pub fn client(&self) -> Client {
        Client::connect(&self.frontend, ClientOptions::default()).expect("client")
    }

    /// Blocks until `n` workers are registered for `service` (asking `tpx.status`).
    pub fn wait_for_workers(&self, client: &Client, service: &str, n: u32) {
        wait_until(
            Duration::from_secs(20),
            &format!("{n} workers for {service}"),
            || {
                client.status().ok().is_some_and(|s| {
                    s.services
                        .iter()
                        .any(|x| x.service.as_str() == service && x.workers == n)
                })
            },
        );
    }
}

/// A worker process.
pub struct Worker {
    /// The process.
    pub proc: Proc,
    /// Its worker id.
    pub id: String,
}

/// Polls `cond` until true; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Encodes a JSON value as a MessagePack body.
pub fn body(v: serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(&v).expect("encodable")
}

/// A fresh temporary file path for this test.
pub fn temp_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("tradeplex-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{tag}-{}-{}", std::process::id(), uuid_like()))
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
