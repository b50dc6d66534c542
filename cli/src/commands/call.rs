//! `tradeplex call SERVICE JSON|-|@FILE`: one call (reply JSON on stdout), or `--count N
//! --window W` pipelined copies ending with one summary line; `--json` for an envelope.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use clap::Args;
use tradeplex_client::{json, CallOptions, Client, PendingCall};
use tradeplex_proto::WorkerId;

/// Flags of `tradeplex call`.
#[derive(Args, Debug)]
pub struct CallArgs {
    /// Service name.
    service: String,
    /// Request body as JSON (sent as MessagePack); `-` reads it from stdin, `@FILE` from a
    /// file (argv limits a body to ~128 KiB, the broker takes 1 MiB).
    body: String,
    /// Time to live of each request, ms.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Mark the request safe to execute more than once (retried on worker loss).
    #[arg(long)]
    idempotent: bool,
    /// Send this many copies and print a summary line instead of the reply.
    #[arg(long)]
    count: Option<u64>,
    /// Copies in flight at once with --count.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Deliver only to this worker id.
    #[arg(long)]
    target: Option<WorkerId>,
    /// Affinity key.
    #[arg(long)]
    affinity: Option<String>,
    /// Print `{"worker", "reply"}` (with --count: the summary as an object); a failure
    /// prints `{"error": {...}}`.
    #[arg(long)]
    json: bool,
}

/// The body text: the argument itself, stdin for `-`, a file for `@FILE`.
fn body_text(arg: &str) -> Result<String, super::UsageError> {
    use std::io::Read;
    let usage = |what: String| super::UsageError(what);
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("cannot read the body from stdin: {e}")))?;
        Ok(text)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read the body from {path}: {e}")))
    } else {
        Ok(arg.to_string())
    }
}

impl CallArgs {
    fn options(&self) -> CallOptions {
        CallOptions {
            timeout: Some(Duration::from_millis(self.timeout_ms)),
            idempotent: self.idempotent,
            target: self.target,
            affinity: self.affinity.clone(),
            retry_every: None,
        }
    }
}

pub fn run(conn: &super::Conn, args: CallArgs) -> anyhow::Result<i32> {
    let text = body_text(&args.body)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| super::UsageError(format!("JSON body does not parse: {e}")))?;
    let body = json::to_msgpack(&value)
        .map_err(|e| super::UsageError(format!("cannot encode body: {e}")))?;
    let client = conn.connect(args.timeout_ms)?;
    match args.count {
        None => single(&client, &args, body),
        Some(n) => many(&client, &args, body, n),
    }
}

fn single(client: &Client, args: &CallArgs, body: Vec<u8>) -> anyhow::Result<i32> {
    match client.call(&args.service, body, args.options()) {
        Ok(reply) => {
            let j = match json::from_msgpack(&reply.body) {
                Ok(j) => j,
                Err(e) => {
                    let e = tradeplex_client::ClientError::Decode(format!(
                        "reply is not MessagePack: {e}"
                    ));
                    return Ok(super::fail(&e, args.json));
                }
            };
            if args.json {
                let out = serde_json::json!({"worker": reply.worker.to_string(), "reply": j});
                println!("{out}");
            } else {
                println!("{j}");
            }
            Ok(super::exit::OK)
        }
        Err(e) => Ok(super::fail(&e, args.json)),
    }
}

/// Pipelines `n` copies, `window` at a time, and prints
/// `ok: N <code>: N ... calls/s: R p50_us: X p99_us: Y` (with `--json`: `{"count", "ok",
/// "errors": {code: N}, "calls_per_s", "p50_us", "p99_us"}`). Exit 1 if any call failed.
fn many(client: &Client, args: &CallArgs, body: Vec<u8>, n: u64) -> anyhow::Result<i32> {
    let window = args.window.max(1);
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut in_flight: VecDeque<(Instant, PendingCall)> = VecDeque::with_capacity(window);
    let started = Instant::now();
    let mut sent = 0;
    let mut record = |t0: Instant, result: Result<_, tradeplex_client::ClientError>| {
        hist.record(t0.elapsed().as_micros() as u64).ok();
        let key = match result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.name().to_string(),
        };
        *outcomes.entry(key).or_default() += 1;
    };
    while sent < n || !in_flight.is_empty() {
        if window == 1 {
            // One at a time, as a strategy's blocking call: answered on this thread.
            let t0 = Instant::now();
            record(t0, client.call(&args.service, body.clone(), args.options()));
            sent += 1;
            continue;
        }
        while sent < n && in_flight.len() < window {
            in_flight.push_back((
                Instant::now(),
                client.send(&args.service, body.clone(), args.options())?,
            ));
            sent += 1;
        }
        if let Some((t0, call)) = in_flight.pop_front() {
            record(t0, call.wait());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = outcomes.remove("ok").unwrap_or(0);
    let code = if outcomes.is_empty() {
        super::exit::OK
    } else {
        super::exit::FAILED
    };
    let rate = n as f64 / secs.max(1e-9);
    if args.json {
        let out = serde_json::json!({
            "count": n,
            "ok": ok,
            "errors": outcomes,
            "calls_per_s": rate.round(),
            "p50_us": hist.value_at_quantile(0.5),
            "p99_us": hist.value_at_quantile(0.99),
        });
        println!("{out}");
        return Ok(code);
    }
    let mut line = format!("ok: {ok}");
    for (name, count) in &outcomes {
        line.push_str(&format!(" {name}: {count}"));
    }
    line.push_str(&format!(
        " calls/s: {:.0} p50_us: {} p99_us: {}",
        rate,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99)
    ));
    println!("{line}");
    Ok(code)
}
