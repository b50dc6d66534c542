//! The broker's own management services, called like any other service over the
//! frontend: `tpx.status` answers with [`StatusReply`].

use serde::{Deserialize, Serialize};

use crate::{ServiceName, WorkerId};

/// Service name of the status call (`tradeplex status` / `tradeplex workers`).
pub const STATUS_SERVICE: &str = "tpx.status";

/// Reply body of `tpx.status` (a MessagePack map).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The broker instance id (new at every broker start).
    pub broker: WorkerId,
    /// Seconds since the broker started.
    pub uptime_s: u64,
    /// Every registered worker.
    pub workers: Vec<WorkerStatus>,
    /// Every known service.
    pub services: Vec<ServiceStatus>,
}

/// One worker as the broker sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker id.
    pub worker: WorkerId,
    /// Services it offers now.
    pub services: Vec<ServiceName>,
    /// Requests it takes at once.
    pub capacity: u32,
    /// Requests it holds now.
    pub in_flight: u32,
    /// Milliseconds since the broker last heard from it.
    pub heartbeat_age_ms: u64,
    /// Requests it has answered since it registered.
    pub served: u64,
}

/// One service as the broker sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub service: ServiceName,
    /// Workers offering it.
    pub workers: u32,
    /// Requests waiting for a free worker.
    pub queued: u32,
    /// Requests being executed.
    pub in_flight: u32,
}
