//! Tradeplex wire protocol: the frame layout of every message on every socket,
//! the commands, the stable error codes and the trading data model. No sockets here.
//!
//! Every request/reply message is one ZeroMQ frame:
//! `protocol+version | command byte | header length | MessagePack header map | body`
//! (docs/protocol.md). The broker reads the header and forwards the body's bytes as they are.
#![deny(missing_docs)]

pub mod batch;
pub mod client;
pub mod codes;
pub mod error;
pub mod event;
pub mod frame;
pub mod ids;
pub mod keys;
pub mod mgmt;
pub mod model;
mod quick;
pub mod worker;

pub use codes::ErrorCode;
pub use error::ProtoError;
pub use ids::{JobId, RequestId, ServiceName, WorkerId};

/// Largest header frame (MessagePack map) any peer may send, in bytes.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Default largest body a request or reply may carry, in bytes (configurable).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Service names starting with this prefix are answered by the broker itself.
pub const MGMT_PREFIX: &str = "tpx.";

/// Current wall-clock time in milliseconds since the Unix epoch (deadlines are
/// absolute wall-clock times so that every hop can check them).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Current wall-clock time in nanoseconds since the Unix epoch (event timestamps).
pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
