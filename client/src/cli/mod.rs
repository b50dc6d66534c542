//! The `tradeplex` subcommands.

mod bench;
mod call;
mod halt;
mod status;
mod tail;
mod trade;

use clap::{Parser, Subcommand};
use std::time::Duration;
use tradeplex_client::events::{EventOptions, Subscriber};
use tradeplex_client::{Client, ClientOptions};
use tradeplex_ops::curve::{ClientCurve, KeyPair};

/// Tradeplex command-line tool.
#[derive(Parser, Debug)]
#[command(name = "tradeplex", version, about)]
pub struct Args {
    /// The broker's frontend endpoint.
    #[arg(
        long,
        env = "TRADEPLEX_BROKER",
        default_value = "tcp://127.0.0.1:5555",
        global = true
    )]
    pub broker: String,
    /// The broker's XPUB (events) endpoint.
    #[arg(
        long,
        env = "TRADEPLEX_EVENTS",
        default_value = "tcp://127.0.0.1:5558",
        global = true
    )]
    pub events: String,
    /// The broker's CURVE public key (z85); enables CURVE.
    #[arg(long, env = "TRADEPLEX_CURVE_SERVER_KEY", global = true)]
    pub curve_server_key: Option<String>,
    /// Our CURVE key file (from `tradeplex keygen`), needed with --curve-server-key.
    #[arg(long, env = "TRADEPLEX_CURVE_KEY_FILE", global = true)]
    pub curve_key_file: Option<std::path::PathBuf>,
    /// Log filter for stderr.
    #[arg(long, default_value = "warn", env = "TRADEPLEX_LOG", global = true)]
    pub log_level: String,
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
    /// Benchmark Tradeplex against a bare ZeroMQ baseline (starts its own processes).
    Bench(Box<bench::BenchArgs>),
    /// Halt trading: refuse every new order of the account (or of all) and cancel its
    /// working orders on every worker.
    Halt(halt::HaltArgs),
    /// Lift a halt (of the account, or every halt).
    Resume(halt::ResumeArgs),
    /// Generate a CURVE key pair (TOML key file on stdout).
    Keygen,
}

/// Where and how to reach the broker.
pub struct Conn {
    /// Frontend endpoint.
    pub broker: String,
    /// XPUB endpoint.
    pub events: String,
    /// CURVE settings, if enabled.
    pub curve: Option<ClientCurve>,
}

impl Conn {
    fn from_args(args: &Args) -> anyhow::Result<Conn> {
        let curve = match (&args.curve_server_key, &args.curve_key_file) {
            (None, None) => None,
            (Some(server_key), Some(file)) => Some(ClientCurve {
                server_key: server_key.clone(),
                keys: KeyPair::from_file(file)?,
            }),
            _ => anyhow::bail!("CURVE needs both --curve-server-key and --curve-key-file"),
        };
        Ok(Conn {
            broker: args.broker.clone(),
            events: args.events.clone(),
            curve,
        })
    }

    /// A client with a default call timeout.
    pub fn connect(&self, timeout_ms: u64) -> anyhow::Result<Client> {
        let mut opts = ClientOptions::default().timeout(Duration::from_millis(timeout_ms));
        opts.curve = self.curve.clone();
        Ok(Client::connect(&self.broker, opts)?)
    }

    /// An event subscriber.
    pub fn subscribe(&self, prefixes: &[&str]) -> anyhow::Result<Subscriber> {
        let opts = EventOptions {
            curve: self.curve.clone(),
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
        Command::Bench(b) => bench::run(*b),
        Command::Order(o) => trade::order(&conn, o),
        Command::Cancel(c) => trade::cancel(&conn, c),
        Command::Positions(a) => trade::positions(&conn, a),
        Command::Account(a) => trade::account(&conn, a),
        Command::Trades(a) => trade::trades(&conn, a),
        Command::Tail(t) => tail::run(&conn, t),
        Command::Halt(h) => halt::halt(&conn, h),
        Command::Resume(r) => halt::resume(&conn, r),
        Command::Keygen => {
            print!("{}", KeyPair::generate()?.to_toml());
            Ok(0)
        }
    }
}
