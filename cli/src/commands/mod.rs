//! The `tradeplex` subcommands.

mod audit;
mod call;
mod docs;
mod halt;
mod risk;
mod status;
mod tail;
mod trade;

use clap::{Parser, Subcommand};
use std::time::Duration;
use tradeplex_client::curve::{self, ClientCurve, KeyPair};
use tradeplex_client::events::{EventOptions, Repair, Subscriber};
use tradeplex_client::{Client, ClientOptions};

/// Tradeplex command-line tool.
#[derive(Parser, Debug)]
#[command(name = "tradeplex", version, about)]
pub struct Args {
    /// The broker's frontend endpoint; a broker pair's two, comma-separated (primary
    /// first), to follow the active one.
    #[arg(
        long,
        env = "TRADEPLEX_BROKER",
        default_value = "tcp://127.0.0.1:5555",
        global = true
    )]
    pub broker: String,
    /// The broker's XPUB (events) endpoint; a pair's two, comma-separated.
    #[arg(
        long,
        env = "TRADEPLEX_EVENTS",
        default_value = "tcp://127.0.0.1:5558",
        global = true
    )]
    pub events: String,
    /// The broker's CURVE public key (z85); enables CURVE. z85 keys may start with `-`,
    /// so such a value is taken as the key, not a flag.
    #[arg(
        long,
        env = "TRADEPLEX_CURVE_SERVER_KEY",
        global = true,
        allow_hyphen_values = true
    )]
    pub curve_server_key: Option<String>,
    /// Our CURVE key file (from `tradeplex keygen`), needed with --curve-server-key.
    #[arg(long, env = "TRADEPLEX_CURVE_KEY_FILE", global = true)]
    pub curve_key_file: Option<std::path::PathBuf>,
    /// The client name to declare to the broker (per-client risk limits, admin rights,
    /// the audit journal); honoured from loopback without CURVE. With CURVE the key names
    /// the client and this, if given, must match.
    #[arg(long, env = "TRADEPLEX_CLIENT_NAME", global = true)]
    pub client_name: Option<String>,
    /// Log filter for stderr (`warn`, `debug`, `tradeplex_client=debug,warn`, …); a filter
    /// that does not parse is a usage error (exit 2).
    #[arg(
        long,
        default_value = "warn",
        env = "TRADEPLEX_LOG",
        global = true,
        value_parser = tradeplex_ops::logging::parse_filter
    )]
    pub log_level: String,
    /// Log to stderr as one JSON object per line.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Call a service with a JSON body; prints the reply body as JSON.
    Call(call::CallArgs),
    /// Show the broker's workers and services.
    Status(status::StatusArgs),
    /// Same as `status`.
    Workers(status::StatusArgs),
    /// Place an order and follow its status until final.
    Order(trade::OrderArgs),
    /// Cancel an order (routed to the worker that placed it).
    Cancel(trade::CancelArgs),
    /// Show positions.
    Positions(trade::AccountArgs),
    /// Show account funds.
    Account(trade::AccountArgs),
    /// Show today's trades, oldest first.
    Trades(trade::AccountArgs),
    /// Print events under a topic prefix, one JSON line each.
    Tail(tail::TailArgs),
    /// Benchmark Tradeplex against bare ZeroMQ, NATS and vn.py RPC (starts its own processes).
    Bench(Box<tradeplex_bench::BenchArgs>),
    /// Halt trading: refuse every new order of the account (or of all) and cancel its
    /// working orders on every worker.
    Halt(halt::HaltArgs),
    /// Lift a halt (of the account, or every halt).
    Resume(halt::ResumeArgs),
    /// Generate a CURVE key pair (TOML key file on stdout).
    Keygen(KeygenArgs),
    /// What happened to an order: its request, risk decision and outcome from the
    /// broker's audit journal.
    Audit(audit::AuditArgs),
    /// Risk limits at runtime: show them, set or clear an account's, a client's or the
    /// default (admin clients only), or list the changes in the audit journal.
    #[command(subcommand)]
    Risk(risk::RiskCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(docs::CompletionsArgs),
    /// Print the man page tradeplex(1), or a subcommand's, in roff on stdout.
    Man(docs::ManArgs),
}

/// Flags of `tradeplex keygen`.
#[derive(clap::Args, Debug)]
struct KeygenArgs {
    /// Print `{"public_key", "secret_key"}` instead of the TOML key file.
    #[arg(long)]
    json: bool,
}

/// Exit codes, one per outcome (README and docs/operations.md list them).
pub mod exit {
    /// Success (an order: placed and not rejected).
    pub const OK: i32 = 0;
    /// The call failed: a wire error code or a client-side one (`timeout`, `unavailable`,
    /// …), named on stderr (and in `--json` output).
    pub const FAILED: i32 = 1;
    /// Usage: bad flags (clap), a body that is not JSON, an unreadable `@file` or key file;
    /// nothing was sent.
    pub const USAGE: i32 = 2;
    /// The order was rejected: answered with status `rejected`, or refused by the broker's
    /// risk stage (`risk_rejected`). It is certainly not working.
    pub const REJECTED: i32 = 3;
}

/// A usage error found after parsing (exit 2, one line on stderr).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A failed call's outcome: the `name: message` line on stderr, and with `json` the
/// `{"error": {...}}` object on stdout. Returns the exit code.
pub fn fail(e: &tradeplex_client::ClientError, json: bool) -> i32 {
    eprintln!("{e}");
    if json {
        println!("{}", error_json(e));
    }
    exit::FAILED
}

/// `{"error": {"name", "code", "message", "worker"}}`: `code` is the wire number (null for
/// client-side failures), `message` the text after `name: `.
pub fn error_json(e: &tradeplex_client::ClientError) -> serde_json::Value {
    let (message, worker) = match e {
        tradeplex_client::ClientError::Remote {
            message, worker, ..
        } => (message.clone(), worker.map(|w| w.to_string())),
        other => {
            let text = other.to_string();
            let rest = text
                .strip_prefix(other.name())
                .and_then(|r| r.strip_prefix(": "))
                .map(String::from);
            (rest.unwrap_or(text), None)
        }
    };
    serde_json::json!({
        "error": {
            "name": e.name(),
            "code": e.code().map(|c| c as u16),
            "message": message,
            "worker": worker,
        }
    })
}

/// Where and how to reach the broker.
pub struct Conn {
    /// Frontend endpoint.
    pub broker: String,
    /// XPUB endpoint.
    pub events: String,
    /// CURVE settings, if enabled.
    pub curve: Option<ClientCurve>,
    /// The client name declared in requests.
    pub name: Option<String>,
}

impl Conn {
    fn from_args(args: &Args) -> anyhow::Result<Conn> {
        let curve = match (&args.curve_server_key, &args.curve_key_file) {
            (None, None) => None,
            (Some(server_key), Some(file)) => {
                let keys = KeyPair::from_file(file).map_err(|e| UsageError(e.to_string()))?;
                // A bad value is a usage error like a bad file, not a failed call.
                curve::check_key("--curve-server-key", server_key)
                    .map_err(|e| UsageError(e.to_string()))?;
                Some(ClientCurve {
                    server_key: server_key.clone(),
                    keys,
                })
            }
            _ => {
                return Err(UsageError(
                    "CURVE needs both --curve-server-key and --curve-key-file".into(),
                )
                .into())
            }
        };
        Ok(Conn {
            broker: args.broker.clone(),
            events: args.events.clone(),
            curve,
            name: args.client_name.clone(),
        })
    }

    /// A client with a default call timeout. It fails fast: a call that cannot be sent
    /// because the broker refuses connections ends `unavailable` at once.
    pub fn connect(&self, timeout_ms: u64) -> anyhow::Result<Client> {
        let mut opts = ClientOptions::default()
            .timeout(Duration::from_millis(timeout_ms))
            .fail_fast(true);
        opts.curve = self.curve.clone();
        opts.name = self.name.clone();
        Ok(Client::connect(&self.broker, opts)?)
    }

    /// An event subscriber that repairs gaps through the broker (`tpx.replay`).
    pub fn subscribe(&self, prefixes: &[&str]) -> anyhow::Result<Subscriber> {
        let opts = EventOptions {
            curve: self.curve.clone(),
            repair: Some(Repair::new(&self.broker)),
            ..EventOptions::default()
        };
        Ok(Subscriber::connect(&self.events, prefixes, opts)?)
    }
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let conn = Conn::from_args(&args)?;
    match args.command {
        Command::Call(c) => call::run(&conn, c),
        Command::Status(s) | Command::Workers(s) => status::run(&conn, s),
        Command::Bench(b) => tradeplex_bench::run(*b),
        Command::Order(o) => trade::order(&conn, o),
        Command::Cancel(c) => trade::cancel(&conn, c),
        Command::Positions(a) => trade::positions(&conn, a),
        Command::Account(a) => trade::account(&conn, a),
        Command::Trades(a) => trade::trades(&conn, a),
        Command::Tail(t) => tail::run(&conn, t),
        Command::Halt(h) => halt::halt(&conn, h),
        Command::Resume(r) => halt::resume(&conn, r),
        Command::Audit(a) => audit::run(a),
        Command::Risk(r) => risk::run(&conn, r),
        Command::Completions(c) => docs::completions(c),
        Command::Man(m) => docs::man(m),
        Command::Keygen(k) => {
            let keys = curve::generate()?;
            if k.json {
                let out = serde_json::json!({
                    "public_key": keys.public_key,
                    "secret_key": keys.secret_key,
                });
                println!("{out}");
            } else {
                print!("{}", keys.to_toml());
            }
            Ok(exit::OK)
        }
    }
}
