//! What every Tradeplex process shares for operations: the HTTP endpoint serving
//! `/metrics`, `/healthz` and `/readyz`, logging set-up, and the shutdown flag.
//! One copy here instead of one per binary.
#![deny(missing_docs)]

pub mod config;
pub mod curve;
pub mod http;
pub mod journal;
pub mod logging;
pub mod shutdown;

pub use http::HttpServer;
pub use shutdown::Shutdown;
