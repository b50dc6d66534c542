//! `tradeplex-worker`: flags over the TOML config, logging, signals, then serves `echo`
//! and the configured gateways until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tradeplex_client::curve::{ClientCurve, KeyPair};
use tradeplex_ops::{HttpServer, Shutdown};
use tradeplex_worker::config::Config;
use tradeplex_worker::gateway::sim::{self, SimGateway};
use tradeplex_worker::{echo::Echo, Worker, WorkerOptions};

/// mimalloc for Rust's allocations and, through its malloc override, libzmq's: the
/// session thread allocates every message its I/O thread frees, which glibc's arenas
/// serialise (docs/performance.md, lever 11).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Tradeplex worker.
#[derive(Parser, Debug)]
#[command(name = "tradeplex-worker", version, about)]
struct Args {
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The broker's backend endpoint; a broker pair's two, comma-separated (primary
    /// first): the worker serves the active one.
    #[arg(long)]
    broker: Option<String>,
    /// The broker's XSUB (events) endpoint; with a pair, one per broker, same order.
    #[arg(long)]
    events: Option<String>,
    /// A service to serve (repeatable); `echo` is always served.
    #[arg(long = "service")]
    services: Vec<String>,
    /// Requests executed at once.
    #[arg(long)]
    capacity: Option<u32>,
    /// HTTP address for /metrics, /healthz, /readyz ("" or "off" disables; port 0 = any).
    #[arg(long)]
    http: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Heartbeats the broker may miss before reconnecting.
    #[arg(long)]
    liveness: Option<u32>,
    /// Order journal file: a JSON line before each request executes, one with its outcome.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Journal fsync: off, always (each line of a non-idempotent request) or a batch
    /// interval, e.g. 10ms.
    #[arg(long)]
    journal_fsync: Option<String>,
    /// Rotate the journal before it would exceed this many bytes.
    #[arg(long)]
    journal_max_bytes: Option<u64>,
    /// Rotated journal files kept (FILE.1 … FILE.N).
    #[arg(long)]
    journal_keep: Option<u32>,
    /// The broker's CURVE public key (z85); enables CURVE (with --curve-key-file).
    /// z85 keys may start with `-`, so such a value is taken as the key, not a flag.
    #[arg(long, env = "TRADEPLEX_CURVE_SERVER_KEY", allow_hyphen_values = true)]
    curve_server_key: Option<String>,
    /// This worker's CURVE key file (from `tradeplex keygen`).
    #[arg(long, env = "TRADEPLEX_CURVE_KEY_FILE")]
    curve_key_file: Option<PathBuf>,
    /// Log filter.
    #[arg(long, default_value = "info", env = "TRADEPLEX_LOG", value_parser = tradeplex_ops::logging::parse_filter)]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = self.broker {
            c.broker = v;
        }
        if let Some(v) = self.events {
            c.events = v;
        }
        if !self.services.is_empty() {
            c.services = self.services;
        }
        if let Some(v) = self.capacity {
            c.capacity = v;
        }
        if let Some(v) = self.http {
            c.http = if v == "off" { String::new() } else { v };
        }
        if let Some(v) = self.heartbeat_ms {
            c.heartbeat_ms = v;
        }
        if let Some(v) = self.liveness {
            c.liveness = v;
        }
        if self.journal.is_some() {
            c.journal = self.journal;
        }
        if let Some(v) = self.journal_fsync {
            c.journal_fsync = v;
        }
        if let Some(v) = self.journal_max_bytes {
            c.journal_max_bytes = v;
        }
        if let Some(v) = self.journal_keep {
            c.journal_keep = v;
        }
        if let Some(k) = self.curve_server_key {
            c.curve.get_or_insert_with(Default::default).server_key = k;
        }
        if let Some(f) = self.curve_key_file {
            c.curve.get_or_insert_with(Default::default).key_file = f;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Errors (a bad config, a port taken) end the process with one line on stderr and exit 1.
fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {}", tradeplex_ops::logging::error_line(e.chain()));
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    tradeplex_ops::logging::init(&args.log_level, args.log_json);
    let config = args.into_config()?;
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("installing signal handlers")?;

    let mut opts = WorkerOptions::new(&config.broker)
        .capacity(config.capacity)
        .heartbeat(Duration::from_millis(config.heartbeat_ms))
        .liveness(config.liveness);
    opts.journal = config.journal_options()?;
    if let Some(c) = &config.curve {
        opts.curve = Some(ClientCurve {
            server_key: c.server_key.clone(),
            keys: KeyPair::from_file(&c.key_file).context("[curve] key_file")?,
        });
    }
    let mut worker = Worker::new(opts.events(&config.events)).service("echo", Echo)?;
    let mut services = config.services.clone();
    services.dedup();
    for s in &services {
        worker = match s.as_str() {
            "echo" => worker,
            sim::NAME => {
                let gateway = SimGateway::new(config.sim.clone()).context("[sim]")?;
                worker.gateway(Arc::new(gateway))?
            }
            other => anyhow::bail!(
                "unknown service {other:?}: this worker serves echo and the gateways {:?}",
                [sim::NAME]
            ),
        };
    }
    let http = match config.http.as_str() {
        "" => None,
        addr => {
            let options = tradeplex_ops::HttpOptions {
                auth: config.http_auth.clone(),
                ..Default::default()
            };
            let h = HttpServer::start_with(addr, worker.metrics().registry.clone(), options)
                .with_context(|| format!("serving http on {addr}"))?;
            Some(h)
        }
    };
    println!(
        "worker {} broker={} http={}",
        worker.id(),
        config.broker,
        http.as_ref()
            .map_or("off".to_string(), |h| h.addr.to_string())
    );
    let worker = match &http {
        // /readyz: registered with the broker and every gateway connected.
        Some(h) => worker.readiness(h.ready_flag()),
        None => worker,
    };
    worker.run(shutdown).context("worker failed")?;
    drop(http);
    Ok(())
}
