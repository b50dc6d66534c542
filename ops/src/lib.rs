//! What every Tradeplex process shares for operations: the HTTP endpoint serving
//! `/metrics`, `/healthz`, `/readyz` (and pages a binary adds, behind optional
//! credentials), process metrics and build info, logging set-up, and the shutdown flag.
//! One copy here instead of one per binary.
#![deny(missing_docs)]

pub mod config;
pub mod curve;
pub mod http;
pub mod http_auth;
pub mod journal;
pub mod logging;
pub mod process_metrics;
pub mod shutdown;

pub use http::{HttpOptions, HttpServer, Page};
pub use http_auth::HttpAuth;
pub use shutdown::{uninterrupted, Shutdown};
