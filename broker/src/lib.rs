//! The Tradeplex broker: a ROUTER frontend for clients, a ROUTER backend for workers,
//! dispatch with per-service queues and deadlines, heartbeats, the XSUB/XPUB event relay
//! and the HTTP endpoint (`/metrics`, probes, the live console). The binary is a thin wrapper around [`run`].
#![deny(missing_docs)]

mod auth;
mod batches;
mod body;
pub mod config;
mod console;
mod dispatch;
mod metrics;
mod pair;
mod relay;
pub mod risk;
mod server;
mod wire;

pub use config::Config;
pub use relay::set_heap_release;
pub use server::{run, Broker, BrokerError, Endpoints};
pub use tradeplex_ops::Shutdown;
