//! `tradeplex`: the command-line tool for people and ops. Command output goes to stdout
//! (JSON, tables, one summary line); logs and errors go to stderr.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Args::parse();
    tradeplex_ops::logging::init(&args.log_level, false);
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
