//! The broker's own management services, called like any other service over the
//! frontend: `tpx.status` answers with [`StatusReply`], `tpx.halt` / `tpx.resume` (the kill
//! switch) with [`HaltReply`] / [`ResumeReply`], `tpx.risk` (risk limits at runtime, admin
//! clients only) with the limits in force (docs/risk.md).

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
    /// Halts in force (`tpx.halt`); absent from brokers before the kill switch.
    #[serde(default)]
    pub halts: Vec<HaltStatus>,
    /// Where this broker stands in its primary/backup pair; absent from a broker with no
    /// `[pair]` (and from brokers before the pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairStatus>,
}

/// The `pair` object of `tpx.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStatus {
    /// Configured role: `primary` or `backup`.
    pub role: String,
    /// Current state: `primary`/`backup` (starting), `active` or `passive`.
    pub state: String,
    /// The state the peer last announced; absent if it was never heard.
    #[serde(default)]
    pub peer_state: Option<String>,
    /// Milliseconds since the peer's last state message; absent if never heard.
    #[serde(default)]
    pub peer_age_ms: Option<u64>,
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

/// Service name of the kill switch (`tradeplex halt`): answered with [`HaltReply`].
pub const HALT_SERVICE: &str = "tpx.halt";
/// Service name that lifts a halt (`tradeplex resume`): answered with [`ResumeReply`].
pub const RESUME_SERVICE: &str = "tpx.resume";
/// The account name that stands for every account in halts.
pub const ALL_ACCOUNTS: &str = "*";
/// Longest `reason` a halt takes, in bytes.
pub const MAX_HALT_REASON: usize = 256;
/// Longest account name a halt or resume takes, in bytes.
pub const MAX_HALT_ACCOUNT: usize = 128;

/// Request body of `tpx.halt` (an empty body = every account, no reason).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaltRequest {
    /// The account to halt; `""` = every account.
    #[serde(default)]
    pub account: String,
    /// Why (shown in rejects as `halted: <reason>`, in status and logs).
    #[serde(default)]
    pub reason: String,
}

/// Reply body of `tpx.halt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaltReply {
    /// The account halted (`"*"` = every account).
    pub account: String,
    /// The reason recorded.
    pub reason: String,
    /// When the halt began (Unix ms; an earlier halt of the same account keeps its time).
    pub since_ms: u64,
    /// Cancel requests the broker sent for the account's working orders.
    pub cancels_sent: u32,
    /// Working orders not cancelled now: a cancel was already sent for them by an earlier
    /// halt (never sent twice), or their worker is not registered.
    pub cancels_skipped: u32,
}

/// Request body of `tpx.resume` (an empty body = every account).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The account to resume; `""` = every halt is lifted.
    #[serde(default)]
    pub account: String,
}

/// Reply body of `tpx.resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeReply {
    /// The halts lifted (account names, `"*"` for the all-accounts halt).
    pub resumed: Vec<String>,
    /// The halts still in force.
    pub halts: Vec<HaltStatus>,
}

/// One halt in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaltStatus {
    /// The account (`"*"` = every account).
    pub account: String,
    /// Why.
    pub reason: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// Who halted it: the client's name (its CURVE key's, or declared from loopback);
    /// `""` for an anonymous client (absent from older brokers).
    #[serde(default)]
    pub by: String,
}

/// Service name of gap recovery for events: answered with [`ReplayReply`].
pub const REPLAY_SERVICE: &str = "tpx.replay";
/// Most events one `tpx.replay` request may ask for (`to_seq - from_seq + 1`).
pub const MAX_REPLAY_SPAN: u64 = 100_000;

/// Request body of `tpx.replay`: the events `from_seq..=to_seq` of one (source, topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// The publisher (the event header's `source`).
    pub source: WorkerId,
    /// The exact topic (not a prefix).
    pub topic: String,
    /// First sequence number wanted.
    pub from_seq: u64,
    /// Last sequence number wanted (inclusive).
    pub to_seq: u64,
}

/// Reply body of `tpx.replay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReply {
    /// The events of the range the broker still holds, in `seq` order. Those it no longer
    /// holds (or never saw) are simply absent.
    pub events: Vec<ReplayedEvent>,
    /// The first `seq` the broker holds for this (source, topic) now, 0 if none.
    pub held_from: u64,
    /// The last `seq` the broker holds for this (source, topic) now, 0 if none.
    pub held_to: u64,
    /// False when the reply was cut short to stay within the broker's body limit: ask again
    /// from the last event's `seq + 1`.
    pub complete: bool,
}

/// One event in a [`ReplayReply`]: the fields of its header and its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedEvent {
    /// Its sequence number.
    pub seq: u64,
    /// Its publish time, Unix ns.
    pub ts_ns: u64,
    /// Its body (frame 3 of the event), as published.
    // MessagePack `bin`, not an array of integers.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Service name of the risk limits at runtime (`tradeplex risk`): admin clients only.
/// The request body is a map with `op` = `show` (the limits in force), `set` (replace or
/// add the limits of the accounts / clients / default it names) or `clear` (remove them);
/// the reply is the limits in force after the call (docs/protocol.md, "tpx.risk").
pub const RISK_SERVICE: &str = "tpx.risk";
