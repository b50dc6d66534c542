//! `tradeplex`: the command-line tool for people and ops. Command output goes to stdout
//! (JSON, tables, one summary line); logs and errors go to stderr.

mod commands;

use clap::Parser;

fn main() {
    let args = commands::Args::parse();
    tradeplex_ops::logging::init(&args.log_level, args.log_json);
    match commands::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line, causes not repeated. A usage error (bad body, unreadable file) is
            // 2 like clap's; anything else failed after parsing and is 1.
            eprintln!("error: {}", tradeplex_ops::logging::error_line(e.chain()));
            let usage = e.downcast_ref::<commands::UsageError>().is_some();
            std::process::exit(if usage {
                commands::exit::USAGE
            } else {
                commands::exit::FAILED
            });
        }
    }
}
