//! The harness the end-to-end tests (`tests/`) and `tradeplex bench` share, so it exists
//! once: child-process guards that read a ready line and kill on drop, ready-line
//! parsing, waits on observable state, free loopback ports, HTTP GET and Prometheus
//! scraping, and where the workspace's binaries are.
//!
//! Helpers named for tests (`Proc::start`, `wait_until`, `scrape`, `run_to_exit`) panic
//! with a message on failure; the bench uses the `Result` forms (`Proc::spawn`,
//! `poll_until`, `http_get`).
#![deny(missing_docs)]

mod bins;
mod http;
mod process;
mod ready;
mod run;
mod wait;

pub use bins::{bin, bin_dir};
pub use http::{http_get, scrape, HttpResponse, Sample, Scrape};
pub use process::{Proc, StartError, Stderr, START_TIMEOUT};
pub use ready::ready_field;
pub use run::{run_to_exit, run_with_stdin, Exited};
pub use wait::{free_port, poll_until, wait_until};
