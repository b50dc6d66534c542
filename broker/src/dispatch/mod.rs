//! The broker's state machine: worker registry, per-service queues, dispatch, deadlines,
//! heartbeats and failure handling. Plain data driven by plain methods that take a
//! [`Clock`] and push what must be sent into an outbox, so it is tested without sockets.
//!
//! Modules, one per section of its work:
//! - [`frontend`]: requests from clients — admission, the risk stage, queueing;
//! - [`management`]: the broker's own `tpx.*` services (status, halt, resume);
//! - [`backend`]: messages from workers — answers, refusals, failed sends;
//! - [`registry`]: workers and services — registration, departure, failover;
//! - [`choice`]: which queued job goes to which worker, and its delivery;
//! - [`jobs`]: a request's record and its end (answered, forgotten);
//! - [`deadlines`]: heartbeats, expiry, timers, abandoned requests;
//! - [`shutdown`]: the two-step drain;
//! - [`services`]: the service table, by name and by key;
//! - [`workers`]: the worker table, by connection, by worker id and by key;
//! - [`queue`]: one service's per-client queue lanes.

mod backend;
mod choice;
mod deadlines;
mod frontend;
mod jobs;
mod management;
mod queue;
mod registry;
mod services;
mod shutdown;
#[cfg(test)]
mod tests;
mod workers;

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

// FxHash: the keys are our own ids and peer identities, and SipHash's DoS resistance
// costs ~20% of the broker's per-request CPU here (measured with perf).
use rustc_hash::FxHashMap as HashMap;
use tradeplex_proto::{worker, ErrorCode, JobId, RequestId, ServiceName, WorkerId};

use crate::metrics::{
    Metrics, MetricsBatch, ServiceMetrics, MGMT_SERVICE_LABEL, UNKNOWN_SERVICE_LABEL,
};
use crate::risk;
use jobs::Job;
use registry::new_service;
use services::{ServiceKey, Services};
use workers::Workers;

/// A ROUTER routing id (the peer's connection identity).
pub type Identity = Vec<u8>;
/// A message body, forwarded without being decoded.
pub use crate::body::Body;

/// "Now", in both clocks: monotonic for liveness and timers, wall-clock for the absolute
/// deadlines that travel on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic now.
    pub now: Instant,
    /// Wall-clock now, Unix epoch milliseconds.
    pub unix_ms: u64,
}

impl Clock {
    /// The real current time.
    pub fn real() -> Clock {
        Clock {
            now: Instant::now(),
            unix_ms: tradeplex_proto::now_unix_ms(),
        }
    }

    #[cfg(test)]
    /// This clock advanced by `d` on both scales.
    pub fn advance(self, d: Duration) -> Clock {
        Clock {
            now: self.now + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

/// A decision the socket loop carries out: it encodes the message and sends it.
pub(crate) enum Out {
    /// REQUEST to a worker. If the send fails, [`Dispatcher::on_send_failed`] with the
    /// header's job undoes the delivery.
    Deliver {
        /// The worker's routing id.
        to: Identity,
        /// The delivery, as the worker receives it.
        header: worker::RequestHeader,
        /// The client's body, shared with the job (not copied).
        body: Body,
        /// The worker reads BATCH: the socket loop may send this with the round's other
        /// deliveries to it in one message.
        batch: bool,
    },
    /// REPLY to a client.
    Reply {
        /// The client's routing id.
        to: Identity,
        /// The request answered.
        id: RequestId,
        /// The worker that served it (the broker's own id for `tpx.*`).
        worker: WorkerId,
        /// The worker's reply body.
        body: Body,
        /// The client reads BATCH (its request said so).
        batch: bool,
    },
    /// ERROR to a client: a failed request or a message that could not be read.
    Error {
        /// The client's routing id.
        to: Identity,
        /// The request (0 when it could not be read).
        id: RequestId,
        /// What went wrong.
        code: ErrorCode,
        /// Detail for people.
        message: String,
        /// The worker involved, if any.
        worker: Option<WorkerId>,
        /// The client reads BATCH (its request said so).
        batch: bool,
    },
    /// HEARTBEAT to a worker (also the acknowledgement of its first READY).
    Heartbeat {
        /// The worker's routing id.
        to: Identity,
    },
    /// DISCONNECT to a worker: register again, go away, or "this message was refused".
    Disconnect {
        /// The worker's routing id.
        to: Identity,
        /// Why (see the `REASON_*` constants and [`worker::is_refusal`]).
        reason: String,
    },
}

/// Dispatch tunables (a subset of the broker config).
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Intervals of silence before a worker is dropped.
    pub liveness: u32,
    /// Wait for a worker of an unknown service, ms (0 = answer at once).
    pub grace_ms: u64,
    /// Per-service queue bound.
    pub max_queue: usize,
    /// How long past its deadline a delivered request may go unanswered.
    pub in_flight_grace: Duration,
    /// Most services registered at once.
    pub max_services: usize,
    /// How long a service with no worker is kept before it is forgotten.
    pub service_retention: Duration,
}

impl DispatchConfig {
    fn liveness_window(&self) -> Duration {
        self.heartbeat * self.liveness
    }
}

/// Where the broker is in its life: a shutdown refuses new requests first, then settles
/// what is in flight and tells the workers to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutting down: new requests are refused `unavailable`.
    Draining,
    /// Everything in flight settled and workers told to go: a worker registering again
    /// (in the broker's farewell) is told to go too.
    Stopped,
}

/// The broker's dispatch state.
pub struct Dispatcher {
    cfg: DispatchConfig,
    broker_id: WorkerId,
    started: Instant,
    workers: Workers,
    services: Services,
    jobs: HashMap<JobId, Job>,
    timers: BTreeSet<(u64, JobId)>,
    affinity: HashMap<(ServiceName, String), WorkerId>,
    clients: HashMap<Identity, Instant>,
    next_job: u64,
    use_counter: u64,
    next_heartbeat: Instant,
    phase: Phase,
    metrics: Arc<Metrics>,
    /// Per-request metric updates since the socket loop last flushed them.
    batch: MetricsBatch,
    unknown_metrics: Rc<ServiceMetrics>,
    /// The broker's own `tpx.*` services, counted apart from unknown services.
    mgmt_metrics: Rc<ServiceMetrics>,
    /// The pre-trade risk stage (`[risk]` configured); every request passes it.
    risk: Option<risk::Stage>,
    /// Recent events for gap recovery (`tpx.replay`), shared with the relay.
    replay: Option<crate::relay::replay::Replay>,
    /// The broker pair as last seen by the socket loop (`[pair]` configured).
    pair: Option<crate::pair::PairView>,
    /// Messages to send; drained by the socket loop.
    pub(crate) out: Vec<Out>,
}

impl Dispatcher {
    /// A dispatcher with no workers.
    pub(crate) fn new(cfg: DispatchConfig, metrics: Arc<Metrics>, now: Instant) -> Dispatcher {
        let batch = MetricsBatch::default();
        let unknown_metrics = Rc::new(metrics.service(UNKNOWN_SERVICE_LABEL, &batch));
        let mgmt_metrics = Rc::new(metrics.service(MGMT_SERVICE_LABEL, &batch));
        Dispatcher {
            next_heartbeat: now + cfg.heartbeat,
            cfg,
            broker_id: WorkerId::random(),
            started: now,
            workers: Workers::default(),
            services: Services::default(),
            jobs: HashMap::default(),
            timers: BTreeSet::new(),
            affinity: HashMap::default(),
            clients: HashMap::default(),
            next_job: 1,
            use_counter: 0,
            phase: Phase::Serving,
            metrics,
            batch,
            unknown_metrics,
            mgmt_metrics,
            risk: None,
            replay: None,
            pair: None,
            out: Vec::new(),
        }
    }

    /// Puts the risk stage in the order path: from now on every request passes
    /// [`risk::Stage::check`] after admission and before it is queued.
    pub(crate) fn set_risk(&mut self, stage: risk::Stage) {
        self.risk = Some(stage);
    }

    /// What `tpx.status` says about the broker pair (the socket loop keeps it fresh).
    pub(crate) fn set_pair(&mut self, view: crate::pair::PairView) {
        self.pair = Some(view);
    }

    /// Answers `tpx.replay` from `store` (the relay's gap-recovery store).
    pub(crate) fn set_replay(&mut self, store: crate::relay::replay::Replay) {
        self.replay = Some(store);
    }

    /// This broker instance's id (new at every start).
    pub(crate) fn broker_id(&self) -> WorkerId {
        self.broker_id
    }

    /// Adds the per-request metric updates made since the last call to the series
    /// `/metrics` renders (the socket loop calls it before sending each round's answers).
    pub(crate) fn flush_metrics(&self) {
        self.batch.flush();
    }

    /// Requests queued or in flight.
    pub(crate) fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// Registered workers.
    #[cfg(test)]
    pub(crate) fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// When [`Dispatcher::tick`] next has work to do.
    pub(crate) fn next_wake(&self, clock: Clock) -> Instant {
        let timer = self
            .timers
            .first()
            .map(|(ms, _)| clock.now + Duration::from_millis(ms.saturating_sub(clock.unix_ms)));
        timer.map_or(self.next_heartbeat, |t| t.min(self.next_heartbeat))
    }

    fn has_workers(&self, service: ServiceKey) -> bool {
        self.services
            .get(service)
            .is_some_and(|s| !s.workers.is_empty())
    }

    fn service_metrics(&self, service: ServiceKey) -> Rc<ServiceMetrics> {
        self.services
            .get(service)
            .filter(|s| s.registered)
            .map_or_else(|| self.unknown_metrics.clone(), |s| s.metrics.clone())
    }

    /// The key of `service`'s entry, made (counted under `_unknown` until a worker
    /// offers it) if there is none.
    fn service_entry(&mut self, service: &ServiceName) -> ServiceKey {
        let unknown = &self.unknown_metrics;
        self.services
            .entry(service, || new_service(service.clone(), unknown.clone()))
    }

    fn send_error(&mut self, to: Identity, id: RequestId, code: ErrorCode, message: String) {
        self.out.push(Out::Error {
            to,
            id,
            code,
            message,
            worker: None,
            batch: false,
        });
    }

    fn disconnect(&mut self, to: Identity, reason: String) {
        self.out.push(Out::Disconnect { to, reason });
    }
}
