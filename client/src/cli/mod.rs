//! The `tradeplex` subcommands.

mod bench;
mod call;
mod status;
mod tail;
mod trade;

use clap::{Parser, Subcommand};
use std::time::Duration;
use tradeplex_client::{Client, ClientOptions};

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
    /// Print events under a topic prefix, one JSON line each.
    Tail(tail::TailArgs),
    /// Benchmark Tradeplex against a bare ZeroMQ baseline (starts its own processes).
    Bench(bench::BenchArgs),
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.command {
        Command::Call(c) => call::run(&args.broker, c),
        Command::Status(s) | Command::Workers(s) => status::run(&args.broker, s),
        Command::Bench(b) => bench::run(b),
        Command::Order(o) => trade::order(&args.broker, &args.events, o),
        Command::Cancel(c) => trade::cancel(&args.broker, c),
        Command::Positions(a) => trade::positions(&args.broker, a),
        Command::Account(a) => trade::account(&args.broker, a),
        Command::Tail(t) => tail::run(&args.events, t),
    }
}

/// Connects with a default timeout.
pub fn connect(broker: &str, timeout_ms: u64) -> anyhow::Result<Client> {
    Ok(Client::connect(
        broker,
        ClientOptions::default().timeout(Duration::from_millis(timeout_ms)),
    )?)
}
