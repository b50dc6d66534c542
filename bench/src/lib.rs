//! `tradeplex bench`: Tradeplex against a bare ZeroMQ baseline and its peers (NATS, vn.py
//! RPC) in the same run. Starts a broker and workers as child processes, runs each scenario
//! on every side in alternation, and prints the medians as a markdown table. The
//! `tradeplex` binary (crate `tradeplex-cli`) parses [`BenchArgs`] and calls [`run`].

mod cluster;
mod events;
mod journal;
mod nats;
mod python;
mod raw;
mod report;
mod risk;
mod rr;
mod runner;
mod threads;
mod trading;

pub use runner::{run, BenchArgs, Scenario};
