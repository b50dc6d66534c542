//! `tradeplex-broker`: parses flags over the TOML config, sets up logging and signals,
//! binds, prints one `ready …` line on stdout with the bound endpoints, and runs. SIGHUP
//! re-reads the config file (flags applied again) and puts its risk limits and CURVE
//! lists in force without dropping a connection.

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use tradeplex_broker::{Broker, Config, Shutdown};

/// mimalloc for Rust's allocations and, through its malloc override, libzmq's: glibc's
/// arenas contend between the loop thread, which allocates every outgoing message, and
/// libzmq's I/O thread, which frees it (docs/performance.md, lever 11).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives mimalloc's free pages back to the OS (the relay's trims after subscription storms).
fn release_free_heap() {
    // SAFETY: mi_collect has no preconditions; it may be called from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// The Tradeplex broker.
#[derive(Parser, Debug, Clone)]
#[command(name = "tradeplex-broker", version, about)]
struct Args {
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Clients' ROUTER endpoint (tcp://HOST:PORT or ipc://PATH).
    #[arg(long)]
    frontend: Option<String>,
    /// Workers' ROUTER endpoint.
    #[arg(long)]
    backend: Option<String>,
    /// Workers' event publishing (XSUB) endpoint.
    #[arg(long)]
    xsub: Option<String>,
    /// Clients' event subscribing (XPUB) endpoint.
    #[arg(long)]
    xpub: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz and the console at / ("" or "off"
    /// disables); credentials come from the config's [http_auth] table.
    #[arg(long)]
    http: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Heartbeats a worker may miss before it is dropped.
    #[arg(long)]
    liveness: Option<u32>,
    /// How long a request for a service with no worker waits for one (ms).
    #[arg(long)]
    grace_ms: Option<u64>,
    /// Requests queued per service before `overloaded`.
    #[arg(long)]
    max_queue: Option<usize>,
    /// How long past its deadline a delivered, unanswered request is held before it is
    /// answered `worker_lost` (ms).
    #[arg(long)]
    in_flight_grace_ms: Option<u64>,
    /// Most services workers may register at once.
    #[arg(long)]
    max_services: Option<usize>,
    /// Largest request/reply body in bytes.
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Topic prefixes one subscriber may hold (more are refused and counted).
    #[arg(long)]
    max_subscriptions_per_subscriber: Option<usize>,
    /// Topic prefixes all subscribers together may hold.
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// Bytes of recent events kept for gap recovery (tpx.replay); 0 = off.
    #[arg(long)]
    replay_bytes: Option<usize>,
    /// Bytes of last ticks kept for late subscribers; 0 = no last values.
    #[arg(long)]
    tick_cache_bytes: Option<usize>,
    /// Idle strategy: spin this many µs checking the sockets before blocking (0 = block).
    #[arg(long)]
    idle_spin_us: Option<u64>,
    /// Enable CURVE with this key file (allow-lists come from the config's [curve] table).
    #[arg(long)]
    curve_key_file: Option<PathBuf>,
    /// Allow plaintext sockets on non-loopback addresses (no CURVE): anyone who reaches
    /// them can trade or register as a worker. Logged and exported as tradeplex_insecure.
    #[arg(long)]
    insecure: bool,
    /// Log filter (e.g. info, debug, tradeplex_broker=debug).
    #[arg(long, default_value = "info", env = "TRADEPLEX_LOG", value_parser = tradeplex_ops::logging::parse_filter)]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            // The exposure rule is checked once flags are applied: a file binding tcp://*
            // with --curve-key-file or --insecure given as a flag is fine.
            Some(path) => Config::load_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident <- $flag:ident),*) => {
                $(if let Some(v) = self.$flag { c.$field = v; })*
            };
        }
        set!(frontend <- frontend, backend <- backend, xsub <- xsub, xpub <- xpub,
             heartbeat_ms <- heartbeat_ms, liveness <- liveness,
             unknown_service_grace_ms <- grace_ms, max_queue <- max_queue,
             in_flight_grace_ms <- in_flight_grace_ms, max_services <- max_services,
             max_body_bytes <- max_body_bytes, idle_spin_us <- idle_spin_us,
             max_subscriptions_per_subscriber <- max_subscriptions_per_subscriber,
             max_subscriptions <- max_subscriptions, replay_bytes <- replay_bytes,
             tick_cache_bytes <- tick_cache_bytes);
        if let Some(key_file) = self.curve_key_file {
            c.curve.get_or_insert_with(Default::default).key_file = key_file;
        }
        c.insecure |= self.insecure;
        if let Some(h) = self.http {
            c.http = if h == "off" { String::new() } else { h };
        }
        c.validate()?;
        Ok(c)
    }
}

/// Errors (a bad config, a port taken) end the process with one line on stderr and exit 1.
fn main() {
    tradeplex_broker::set_heap_release(release_free_heap);
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {}", tradeplex_ops::logging::error_line(e.chain()));
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    tradeplex_ops::logging::init(&args.log_level, args.log_json);
    let config = args.clone().into_config()?;
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .context("installing signal handlers")?;
    let exposed = config.exposed_plaintext();
    let broker = Broker::bind(config).context("starting broker")?;
    // Before the ready line: SIGHUP's default action would end the process.
    on_sighup(args, broker.reloader()).context("installing the SIGHUP handler")?;
    if !exposed.is_empty() {
        // Only reachable with `insecure` (validation refuses it otherwise).
        broker.metrics().insecure.set(1);
        for (socket, endpoint) in &exposed {
            tracing::warn!(socket, endpoint, "INSECURE: plaintext socket on a non-loopback address; anyone who reaches it can trade or register as a worker (configure [curve])");
        }
    }
    tracing::info!(endpoints = %broker.endpoints(), "broker ready");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", broker.endpoints())?;
    out.flush()?;
    drop(out);
    broker.run(shutdown).context("broker failed")?;
    Ok(())
}

/// Re-reads the config file on every SIGHUP, on a thread of its own, and hands it to the
/// broker (a file that fails to load is refused there: logged, counted, nothing changed).
fn on_sighup(
    args: Args,
    reloader: tradeplex_broker::risk::manage::Reloader,
) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("tpx-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!(config = ?args.config, "SIGHUP: reloading the config file");
                let loaded = match &args.config {
                    None => Err("no --config file to reload".to_string()),
                    Some(_) => args
                        .clone()
                        .into_config()
                        .map_err(|e| tradeplex_ops::logging::error_line(e.chain())),
                };
                let _ = reloader.apply(loaded);
            }
        })?;
    Ok(())
}
