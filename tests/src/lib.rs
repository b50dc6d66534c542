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
        Proc::try_start(name, args).unwrap_or_else(|| panic!("{name} printed no ready line"))
    }

    /// Like [`Proc::start`], but `None` when the process exits without a ready line
    /// (e.g. a port taken by another test between choosing and binding it).
    pub fn try_start(name: &str, args: &[String]) -> Option<(Proc, String)> {
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
        let mut proc = Proc { child, stdout: rx };
        // An exit closes stdout, which ends the wait at once.
        match proc.stdout.recv_timeout(Duration::from_secs(20)) {
            Ok(first) => Some((proc, first)),
            Err(_) => {
                proc.kill9();
                None
            }
        }
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, `TERM`, …) and returns at
    /// once; false if it could not be sent (e.g. the process is gone).
    pub fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILL now.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (SIGKILL after `limit`). Returns the exit status code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
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
/// Missed heartbeats before a peer is dropped: a 1 s window (0.5 s was stalled through
/// on a loaded 2-core machine: a worker expired mid-request and a drain test failed).
pub const TEST_LIVENESS: u32 = 10;

impl Broker {
    /// A broker on OS-chosen loopback ports.
    pub fn start(extra: &[&str]) -> Broker {
        let any = "tcp://127.0.0.1:*".to_string();
        Broker::start_on(&any, &any, &any, &any, "127.0.0.1:0", extra)
    }

    /// A broker on OS-chosen loopback ports that drops workers after `liveness` missed
    /// heartbeats (tests that measure expiry use a short window, tests that count
    /// exactly a long one, so a stall of a busy machine cannot expire a worker).
    pub fn start_with_liveness(liveness: u32, extra: &[&str]) -> Broker {
        let any = "tcp://127.0.0.1:*";
        Broker::launch([any, any, any, any, "127.0.0.1:0"], liveness, extra)
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
        Broker::launch([frontend, backend, xsub, xpub, http], TEST_LIVENESS, extra)
    }

    fn launch(endpoints: [&str; 5], liveness: u32, extra: &[&str]) -> Broker {
        let [frontend, backend, xsub, xpub, http] = endpoints;
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
            &liveness.to_string(),
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

    /// SIGKILLs this broker and starts a new one on the same endpoints (a crash and a
    /// restart by its supervisor).
    pub fn kill9_and_restart(&mut self) -> Broker {
        self.kill9_and_restart_with_liveness(TEST_LIVENESS, &[])
    }

    /// Like [`Broker::kill9_and_restart`], for a broker started with
    /// [`Broker::start_with_liveness`]: the new one gets `liveness` and `extra` again.
    pub fn kill9_and_restart_with_liveness(&mut self, liveness: u32, extra: &[&str]) -> Broker {
        self.proc.kill9();
        let endpoints = [
            self.frontend.as_str(),
            &self.backend,
            &self.xsub,
            &self.xpub,
            &self.http,
        ];
        Broker::launch(endpoints, liveness, extra)
    }

    /// Starts a worker connected to this broker.
    pub fn worker(&self, extra: &[&str]) -> Worker {
        self.worker_with_liveness(TEST_LIVENESS, extra).0
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

// ----- the order journal ------------------------------------------------------------------

/// Every line of the worker journal at `path` and its rotated files (`PATH.N` … `PATH.1`,
/// then `PATH`: oldest first), parsed; a torn last line is skipped.
pub fn journal_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = (1..=1000)
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// The journal's `start` lines: one per request a worker began to execute.
pub fn journal_executions(path: &std::path::Path) -> Vec<serde_json::Value> {
    journal_lines(path)
        .into_iter()
        .filter(|l| l["event"] == "start")
        .collect()
}

/// The journal's `done` line for `job`, if written.
pub fn journal_outcome(path: &std::path::Path, job: u64) -> Option<serde_json::Value> {
    journal_lines(path)
        .into_iter()
        .find(|l| l["event"] == "done" && l["job"] == job)
}

// ----- operations: HTTP scraping, free ports, short-lived runs --------------------------

/// Status and body of an HTTP response read by [`http_get`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body (chunked transfer decoded).
    pub body: String,
}

/// `GET http://{addr}{path}` over a plain `TcpStream` (HTTP/1.1, `Connection: close`),
/// with 10 s read and write timeouts.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<HttpResponse> {
    use std::io::{Read, Write};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(|_| bad("response is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        body.to_string()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// One sample line of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (e.g. `tradeplex_request_duration_seconds_count`).
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The page as served.
    pub text: String,
    /// Every sample line.
    pub samples: Vec<Sample>,
    /// Metric family name → type (`counter`, `gauge`, `histogram`, …) from `# TYPE`.
    pub types: std::collections::BTreeMap<String, String>,
}

impl Scrape {
    /// Parses Prometheus text format (the subset the `prometheus` crate writes).
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape {
            text: text.to_string(),
            ..Scrape::default()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    s.types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                s.samples.push(parse_sample(line).unwrap_or_else(|| {
                    panic!("unparsable sample line {line:?}");
                }));
            }
        }
        s
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The one sample of `name` with exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Every name a query can select on this page: counters and gauges by their name,
    /// histograms by `_bucket`, `_sum` and `_count` (not the bare family name), summaries
    /// by their name, `_sum` and `_count`.
    pub fn series_names(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for (family, kind) in &self.types {
            match kind.as_str() {
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{suffix}"));
                    }
                }
                "summary" => {
                    for suffix in ["", "_sum", "_count"] {
                        names.insert(format!("{family}{suffix}"));
                    }
                }
                _ => {
                    names.insert(family.clone());
                }
            }
        }
        names
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_end, has_labels) = match line.find(['{', ' ']) {
        Some(i) => (i, line.as_bytes().get(i) == Some(&b'{')),
        None => return None,
    };
    let name = line.get(..name_end)?.to_string();
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = line.get(name_end..)?;
    if has_labels {
        rest = rest.get(1..)?;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = after.get(end + 1..)?;
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Scrapes `http://{addr}/metrics`; panics unless it answers 200.
pub fn scrape(addr: &str) -> Scrape {
    let resp = http_get(addr, "/metrics").unwrap_or_else(|e| panic!("GET {addr}/metrics: {e}"));
    assert_eq!(resp.status, 200, "GET {addr}/metrics: {}", resp.body);
    Scrape::parse(&resp.body)
}

/// A TCP port on 127.0.0.1 that the OS had free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Broker {
    /// Starts a worker connected to this broker and returns it with the `http=` address
    /// of its ready line (pass `--http 127.0.0.1:0` in `extra` to get one).
    pub fn worker_http(&self, extra: &[&str]) -> (Worker, String) {
        self.worker_with_liveness(TEST_LIVENESS, extra)
    }

    /// A worker that reconnects after `liveness` missed broker heartbeats, with the
    /// `http=` address of its ready line.
    pub fn worker_with_liveness(&self, liveness: u32, extra: &[&str]) -> (Worker, String) {
        let mut args: Vec<String> = vec![
            "--broker".into(),
            self.backend.clone(),
            "--events".into(),
            self.xsub.clone(),
            "--heartbeat-ms".into(),
            TEST_HEARTBEAT_MS.to_string(),
            "--liveness".into(),
            liveness.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (proc, line) = Proc::start("tradeplex-worker", &args);
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .to_string()
        };
        let id = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let http = field("http");
        (Worker { proc, id }, http)
    }
}

/// How a short-lived process ended (see [`run_to_exit`]).
#[derive(Debug)]
pub struct Exited {
    /// Exit code; None if it had to be killed (or died by a signal).
    pub code: Option<i32>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// Runs `name` with `args` and waits for it to exit on its own; kills it after `limit`
/// (then `code` is None). For commands expected to stop, e.g. on a bad config.
pub fn run_to_exit(name: &str, args: &[String], limit: Duration) -> Exited {
    run_with_stdin(name, args, None, limit)
}

/// Like [`run_to_exit`], with `stdin` written to the process's standard input (then
/// closed); `None` gives it no input at all.
pub fn run_with_stdin(
    name: &str,
    args: &[String],
    stdin: Option<Vec<u8>>,
    limit: Duration,
) -> Exited {
    use std::io::{Read, Write};
    let mut child = Command::new(bin(name))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A writer thread, so a child that reads slowly cannot block the wait below.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let until = Instant::now() + limit;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exited {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
