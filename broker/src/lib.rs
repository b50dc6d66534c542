//! The Tradeplex broker: a ROUTER frontend for clients, a ROUTER backend for workers,
//! dispatch with per-service queues and deadlines, heartbeats, the XSUB/XPUB event relay
//! and the HTTP endpoint (`/metrics`, probes, the live console). The binary is a thin wrapper around [`run`].
#![deny(missing_docs)]

pub mod auth;
pub mod body;
pub mod config;
mod console;
pub mod dispatch;
pub mod metrics;
pub mod pair;
pub mod relay;
pub mod risk;
pub mod server;
pub mod wire;

pub use config::Config;
pub use server::{run, Broker, BrokerError, Endpoints};
pub use tradeplex_ops::Shutdown;
