//! The broker's state machine: worker registry, per-service queues, dispatch, deadlines,
//! heartbeats and failure handling. Plain data driven by plain methods that take a
//! [`Clock`] and push what must be sent into an outbox, so it is tested without sockets.

use std::collections::BTreeSet;

// FxHash: the keys are our own ids and peer identities, and SipHash's DoS resistance
// costs ~20% of the broker's per-request CPU here (measured with perf).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tradeplex_proto::client::{self, ErrorHeader, ReplyHeader, RequestHeader};
use tradeplex_proto::mgmt::{
    HaltReply, HaltRequest, ReplayReply, ReplayRequest, ResumeReply, ResumeRequest, ServiceStatus,
    StatusReply, WorkerStatus, HALT_SERVICE, MAX_HALT_ACCOUNT, MAX_HALT_REASON, REPLAY_SERVICE,
    RESUME_SERVICE, RISK_SERVICE, STATUS_SERVICE,
};
use tradeplex_proto::model::{CancelRequest, GatewayRequest, OrderId};
use tradeplex_proto::worker::{self, DisconnectHeader, HeartbeatHeader, ReadyHeader};
use tradeplex_proto::{frame, ErrorCode, JobId, RequestId, ServiceName, WorkerId};

use crate::metrics::{
    Metrics, ServiceMetrics, MGMT_SERVICE_LABEL, UNKNOWN_SERVICE_LABEL, WORKER_STATES,
};
use crate::risk;

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

    /// This clock advanced by `d` on both scales.
    pub fn advance(self, d: Duration) -> Clock {
        Clock {
            now: self.now + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

/// Something the socket loop must send.
pub enum Out {
    /// To a client on the frontend.
    Client {
        /// Routing id.
        to: Identity,
        /// Command byte.
        cmd: client::Command,
        /// Encoded header.
        header: Vec<u8>,
        /// Body (empty for errors).
        body: Body,
    },
    /// To a worker on the backend.
    Worker {
        /// Routing id.
        to: Identity,
        /// Command byte.
        cmd: worker::Command,
        /// Encoded header.
        header: Vec<u8>,
        /// Body (empty except for requests).
        body: Body,
        /// The job this message delivers, so a failed send can be undone.
        job: Option<JobId>,
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

/// Why a worker leaves the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Silent past its liveness window.
    Expired,
    /// Sent DISCONNECT.
    Disconnected,
    /// Replaced by a new registration with the same worker id.
    Replaced,
    /// The broker could not send to it.
    Unreachable,
}

struct Worker {
    id: WorkerId,
    services: Vec<ServiceName>,
    capacity: u32,
    in_flight: HashSet<JobId>,
    last_seen: Instant,
    last_used: u64,
    served: u64,
    /// The READY `session` it registered with (its connection number).
    session: u64,
    /// Rotates which of its services gets a freed slot first.
    next_pump: usize,
}

impl Worker {
    fn has_room(&self) -> bool {
        (self.in_flight.len() as u32) < self.capacity
    }

    fn offers(&self, service: &ServiceName) -> bool {
        self.services.contains(service)
    }
}

struct Service {
    workers: Vec<Identity>,
    queue: ServiceQueue,
    in_flight: usize,
    /// Set once a worker has offered the service; until then metrics go to `_unknown`.
    registered: bool,
    /// Since when it has had no worker (registered services only).
    orphaned_since: Option<Instant>,
    metrics: Arc<ServiceMetrics>,
}

struct Job {
    client: Identity,
    id: RequestId,
    service: ServiceName,
    deadline_ms: u64,
    idempotent: bool,
    target: Option<WorkerId>,
    affinity: Option<String>,
    /// Kept until the job is answered, so a refused, undeliverable or retried request is
    /// re-dispatched with its own bytes (deliveries share it, they do not copy it).
    body: Body,
    /// Workers that refused it without executing (`unavailable`); never offered it again.
    refused_by: Vec<WorkerId>,
    /// A send to its worker failed (the connection was gone): it waits for a worker until
    /// its deadline rather than the unknown-service grace, since the worker is most likely
    /// re-registering on a new connection.
    undelivered: bool,
    received: Instant,
    /// The worker executing it, once delivered.
    worker: Option<Identity>,
    /// The wall-clock ms at which the timer set looks at this job while queued.
    timer_ms: Option<u64>,
    /// An order the risk stage admitted: counted as in flight until the job is answered.
    risk_ticket: Option<risk::Ticket>,
    /// A cancel the broker sent itself for a halt (the order id): its answer is logged
    /// and counted, never sent to a client.
    halt_cancel: Option<String>,
    /// The audit id of a journaled order or cancel: its outcome is journaled too.
    audit_rid: Option<String>,
}

impl Job {
    fn refused(&self, worker: &WorkerId) -> bool {
        self.refused_by.contains(worker)
    }
}

enum Turn {
    Delivered,
    Waiting,
    NoRoom,
}

enum Choice {
    Deliver(Identity),
    Wait,
    NoRoom,
    Fail(ErrorCode, String),
}

/// Most services tracked at once (registered ones plus ones waiting out a grace period).
const MAX_SERVICES: usize = 4096;
/// Most client identities tracked for the `tradeplex_clients` gauge.
const MAX_TRACKED_CLIENTS: usize = 100_000;
/// Most affinity bindings kept; beyond it, bindings of dead workers are swept first.
const MAX_AFFINITY: usize = 100_000;
/// The deadline of a cancel a halt sends (from the halt), ms.
pub const HALT_CANCEL_TIMEOUT_MS: u64 = 5000;
/// The queue identity of the broker's own jobs (halt cancels); never sent to.
const BROKER_ORIGIN: &[u8] = b"\0tpx.broker";

/// The broker's dispatch state.
pub struct Dispatcher {
    cfg: DispatchConfig,
    broker_id: WorkerId,
    started: Instant,
    workers: HashMap<Identity, Worker>,
    by_id: HashMap<WorkerId, Identity>,
    services: HashMap<ServiceName, Service>,
    jobs: HashMap<JobId, Job>,
    timers: BTreeSet<(u64, JobId)>,
    affinity: HashMap<(ServiceName, String), WorkerId>,
    clients: HashMap<Identity, Instant>,
    next_job: u64,
    use_counter: u64,
    next_heartbeat: Instant,
    shutting_down: bool,
    metrics: Arc<Metrics>,
    unknown_metrics: Arc<ServiceMetrics>,
    /// The broker's own `tpx.*` services, counted apart from unknown services.
    mgmt_metrics: Arc<ServiceMetrics>,
    /// The pre-trade risk stage (`[risk]` configured); every request passes it.
    risk: Option<risk::Stage>,
    /// Recent events for gap recovery (`tpx.replay`), shared with the relay.
    replay: Option<crate::relay::replay::Replay>,
    /// The broker pair as last seen by the socket loop (`[pair]` configured).
    pair: Option<crate::pair::PairView>,
    /// Messages to send; drained by the socket loop.
    pub out: Vec<Out>,
}

impl Dispatcher {
    /// A dispatcher with no workers.
    pub fn new(cfg: DispatchConfig, metrics: Arc<Metrics>, now: Instant) -> Dispatcher {
        let unknown_metrics = Arc::new(metrics.service(UNKNOWN_SERVICE_LABEL));
        let mgmt_metrics = Arc::new(metrics.service(MGMT_SERVICE_LABEL));
        Dispatcher {
            next_heartbeat: now + cfg.heartbeat,
            cfg,
            broker_id: WorkerId::random(),
            started: now,
            workers: HashMap::default(),
            by_id: HashMap::default(),
            services: HashMap::default(),
            jobs: HashMap::default(),
            timers: BTreeSet::new(),
            affinity: HashMap::default(),
            clients: HashMap::default(),
            next_job: 1,
            use_counter: 0,
            shutting_down: false,
            metrics,
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
    pub fn set_risk(&mut self, stage: risk::Stage) {
        self.risk = Some(stage);
    }

    /// Answers `tpx.replay` from `store` (the relay's gap-recovery store).
    pub fn set_replay(&mut self, store: crate::relay::replay::Replay) {
        self.replay = Some(store);
    }

    /// This broker instance's id (new at every start).
    pub fn broker_id(&self) -> WorkerId {
        self.broker_id
    }

    /// Requests queued or in flight.
    pub fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// Registered workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// When [`Dispatcher::tick`] next has work to do.
    pub fn next_wake(&self, clock: Clock) -> Instant {
        let timer = self
            .timers
            .first()
            .map(|(ms, _)| clock.now + Duration::from_millis(ms.saturating_sub(clock.unix_ms)));
        timer.map_or(self.next_heartbeat, |t| t.min(self.next_heartbeat))
    }

    // ----- client side -------------------------------------------------------------

    /// A REQUEST from an anonymous client (see [`Dispatcher::on_request_from`]).
    pub fn on_request(&mut self, clock: Clock, client: Identity, h: RequestHeader, body: Body) {
        self.on_request_from(clock, client, &risk::Caller::default(), h, body);
    }

    /// A REQUEST from a client the socket loop identified as `caller`.
    pub fn on_request_from(
        &mut self,
        clock: Clock,
        client: Identity,
        caller: &risk::Caller,
        h: RequestHeader,
        body: Body,
    ) {
        self.note_client(&client, clock.now);
        let metrics = if h.service.is_mgmt() {
            self.mgmt_metrics.clone()
        } else {
            self.service_metrics(&h.service)
        };
        metrics.received();
        if let Some((code, message)) = self.admission_error(clock, &h) {
            metrics.answered(Some(code), 0.0);
            self.send_error(client, ErrorHeader::new(h.id, code, message));
            return;
        }
        if h.service.is_mgmt() {
            self.answer_mgmt(clock, client, caller, &h, &body, &metrics);
            return;
        }
        let mut verdict = (self.risk.as_ref()).map(|r| r.check_from(clock.unix_ms, caller, &body));
        let mut audit_rid = None;
        if let (Some(stage), Some(v)) = (&self.risk, &verdict) {
            let name = caller.name.as_deref();
            match stage.audit_request_from(clock.unix_ms, &client, name, h.id.0, &body, v) {
                Ok(rid) => audit_rid = rid,
                // An order the journal cannot record is not sent.
                Err(message) => {
                    if let Some(risk::Verdict::Admitted(t)) = verdict.take() {
                        stage.settle(t);
                    }
                    tracing::error!(%message, "request refused");
                    verdict = Some(risk::Verdict::Refuse(ErrorCode::Unavailable, message));
                }
            }
        }
        let risk_ticket = match verdict {
            Some(risk::Verdict::Refuse(code, message)) => {
                metrics.answered(Some(code), 0.0);
                self.send_error(client, ErrorHeader::new(h.id, code, message));
                return;
            }
            Some(risk::Verdict::Admitted(ticket)) => Some(ticket),
            Some(risk::Verdict::Pass) | None => None,
        };
        let has_workers = self.has_workers(&h.service);
        let job_id = JobId(self.next_job);
        self.next_job += 1;
        let timer_ms = if has_workers {
            h.deadline_ms
        } else {
            h.deadline_ms.min(clock.unix_ms + self.cfg.grace_ms)
        };
        let job = Job {
            client,
            id: h.id,
            service: h.service.clone(),
            deadline_ms: h.deadline_ms,
            idempotent: h.idempotent,
            target: h.target,
            affinity: h.affinity,
            body,
            refused_by: Vec::new(),
            undelivered: false,
            received: clock.now,
            worker: None,
            timer_ms: None,
            risk_ticket,
            halt_cancel: None,
            audit_rid,
        };
        let service = self.service_entry(&h.service);
        service.queue.push_back(&job.client, job_id);
        service.metrics.queue_depth.inc();
        self.jobs.insert(job_id, job);
        self.pump(&h.service);
        // Most requests are delivered at once; only one still queued needs a timer.
        if self.jobs.get(&job_id).is_some_and(|j| j.worker.is_none()) {
            self.set_timer(job_id, timer_ms);
        }
    }

    /// Why a request is refused before it is queued, if it is.
    fn admission_error(&self, clock: Clock, h: &RequestHeader) -> Option<(ErrorCode, String)> {
        if self.shutting_down {
            return Some((ErrorCode::Unavailable, "broker is shutting down".into()));
        }
        if h.deadline_ms <= clock.unix_ms {
            return Some((
                ErrorCode::DeadlineExceeded,
                format!(
                    "deadline passed {} ms before arrival",
                    clock.unix_ms - h.deadline_ms
                ),
            ));
        }
        if h.service.is_mgmt() {
            let known = [
                STATUS_SERVICE,
                HALT_SERVICE,
                RESUME_SERVICE,
                RISK_SERVICE,
                REPLAY_SERVICE,
            ];
            return (!known.contains(&h.service.as_str())).then(|| {
                (
                    ErrorCode::UnknownService,
                    format!("no management service {}", h.service),
                )
            });
        }
        let service = self.services.get(&h.service);
        if !self.has_workers(&h.service) && self.cfg.grace_ms == 0 {
            return Some((
                ErrorCode::UnknownService,
                format!("no worker offers {}", h.service),
            ));
        }
        if service.is_none() && self.services.len() >= MAX_SERVICES {
            return Some((
                ErrorCode::UnknownService,
                format!("no worker offers {}", h.service),
            ));
        }
        if let Some(target) = h.target {
            let offered = self
                .by_id
                .get(&target)
                .and_then(|i| self.workers.get(i))
                .is_some_and(|w| w.offers(&h.service));
            if !offered {
                return Some((
                    ErrorCode::UnknownWorker,
                    format!("worker {target} is not registered for {}", h.service),
                ));
            }
        }
        if service.is_some_and(|s| s.queue.len() >= self.cfg.max_queue) {
            return Some((
                ErrorCode::Overloaded,
                format!(
                    "{} queue is full ({} requests)",
                    h.service, self.cfg.max_queue
                ),
            ));
        }
        None
    }

    fn answer_mgmt(
        &mut self,
        clock: Clock,
        client: Identity,
        caller: &risk::Caller,
        h: &RequestHeader,
        body: &[u8],
        m: &ServiceMetrics,
    ) {
        let reply = match h.service.as_str() {
            RISK_SERVICE => (self.risk.as_ref())
                .ok_or_else(no_stage)
                .and_then(|s| s.manage(clock.unix_ms, caller, body)),
            HALT_SERVICE => decode_mgmt::<HaltRequest>(body)
                .and_then(|r| self.halt(clock, r))
                .and_then(|r| encode_mgmt(&r)),
            RESUME_SERVICE => decode_mgmt::<ResumeRequest>(body)
                .and_then(|r| self.resume(r))
                .and_then(|r| encode_mgmt(&r)),
            REPLAY_SERVICE => self.replay(body).and_then(|r| encode_mgmt(&r)),
            _ => encode_mgmt(&self.status(clock)),
        };
        let body = match reply {
            Ok(body) => body,
            Err((code, message)) => {
                m.answered(Some(code), 0.0);
                self.send_error(client, ErrorHeader::new(h.id, code, message));
                return;
            }
        };
        m.answered(None, 0.0);
        let header = frame::encode_header(&ReplyHeader {
            id: h.id,
            worker: self.broker_id,
        });
        self.out.push(Out::Client {
            to: client,
            cmd: client::Command::Reply,
            header,
            body: Body::from(body),
        });
    }

    /// `tpx.replay`: the events of one (source, topic) range the relay still holds.
    fn replay(&self, body: &[u8]) -> Result<ReplayReply, (ErrorCode, String)> {
        let Some(store) = &self.replay else {
            return Err((
                ErrorCode::Unavailable,
                "gap recovery is off on this broker (replay_bytes = 0)".into(),
            ));
        };
        let r: ReplayRequest = rmp_serde::from_slice(body).map_err(|e| {
            (
                ErrorCode::BadRequest,
                format!("cannot decode the tpx.replay request: {e}"),
            )
        })?;
        store.answer(&r)
    }

    /// `tpx.halt`: halts the account (or every account) in the risk stage, then sends a
    /// `cancel_order` for each of its working orders to the worker that placed it.
    fn halt(&mut self, clock: Clock, r: HaltRequest) -> Result<HaltReply, (ErrorCode, String)> {
        check_len("account", &r.account, MAX_HALT_ACCOUNT)?;
        check_len("reason", &r.reason, MAX_HALT_REASON)?;
        let stage = self.risk.clone().ok_or_else(no_stage)?;
        let account = (!r.account.is_empty()).then_some(r.account.as_str());
        let (halt, orders, mut skipped) = stage
            .halt(clock.unix_ms, account, &r.reason)
            .map_err(|e| (ErrorCode::Overloaded, e))?;
        let mut sent = 0u32;
        for b in &orders {
            if self.send_halt_cancel(clock, &stage, b) {
                sent = sent.saturating_add(1);
            } else {
                skipped = skipped.saturating_add(1);
            }
        }
        tracing::warn!(account = %halt.account, reason = %halt.reason, cancels_sent = sent, cancels_skipped = skipped, "trading halted");
        Ok(HaltReply {
            account: halt.account,
            reason: halt.reason,
            since_ms: halt.since_ms,
            cancels_sent: sent,
            cancels_skipped: skipped,
        })
    }

    /// `tpx.resume`: lifts the account's halt (or every halt).
    fn resume(&mut self, r: ResumeRequest) -> Result<ResumeReply, (ErrorCode, String)> {
        check_len("account", &r.account, MAX_HALT_ACCOUNT)?;
        let stage = self.risk.clone().ok_or_else(no_stage)?;
        let account = (!r.account.is_empty()).then_some(r.account.as_str());
        let (resumed, halts) = stage.resume(account);
        tracing::warn!(account = account.unwrap_or("(all)"), resumed = ?resumed, still_halted = halts.len(), "trading resumed");
        Ok(ResumeReply { resumed, halts })
    }

    /// Queues a broker-originated `cancel_order` for a halted account's working order,
    /// targeted at the worker its id names. False when it cannot be sent (no such worker).
    fn send_halt_cancel(&mut self, clock: Clock, stage: &risk::Stage, b: &risk::Booked) -> bool {
        let order_id = OrderId(b.order_id.clone());
        let target = order_id.worker();
        let service = order_id.gateway().and_then(|g| ServiceName::new(g).ok());
        let (Some(target), Some(service)) = (target, service) else {
            stage.count_halt_cancel("bad_order_id");
            tracing::warn!(order = %b.order_id, "halt: order id names no gateway and worker; not cancelled");
            return false;
        };
        let offered = self
            .by_id
            .get(&target)
            .and_then(|i| self.workers.get(i))
            .is_some_and(|w| w.offers(&service));
        if !offered {
            stage.count_halt_cancel(ErrorCode::UnknownWorker.name());
            tracing::warn!(order = %b.order_id, worker = %target, "halt: the order's worker is not registered; not cancelled");
            return false;
        }
        let request = GatewayRequest::CancelOrder(CancelRequest {
            order_id,
            symbol: b.symbol.clone(),
            exchange: b.exchange.clone(),
        });
        let Ok(body) = rmp_serde::to_vec_named(&request) else {
            return false;
        };
        let job_id = JobId(self.next_job);
        self.next_job += 1;
        let deadline_ms = clock.unix_ms + HALT_CANCEL_TIMEOUT_MS;
        let job = Job {
            client: BROKER_ORIGIN.to_vec(),
            id: RequestId(job_id.0),
            service: service.clone(),
            deadline_ms,
            // A cancel is not retried on another worker, nor re-sent when its outcome is
            // unknown: it is answered `worker_lost` like any non-idempotent request.
            idempotent: false,
            target: Some(target),
            affinity: None,
            body: Body::from(body),
            refused_by: Vec::new(),
            undelivered: false,
            received: clock.now,
            worker: None,
            timer_ms: None,
            risk_ticket: None,
            halt_cancel: Some(b.order_id.clone()),
            audit_rid: None,
        };
        let entry = self.service_entry(&service);
        entry.queue.push_back(&job.client, job_id);
        entry.metrics.queue_depth.inc();
        self.jobs.insert(job_id, job);
        stage.count_halt_cancel("sent");
        tracing::info!(order = %b.order_id, worker = %target, "halt: cancel sent");
        self.pump(&service);
        if self.jobs.get(&job_id).is_some_and(|j| j.worker.is_none()) {
            self.set_timer(job_id, deadline_ms);
        }
        true
    }

    /// What `tpx.status` says about the broker pair (the socket loop keeps it fresh).
    pub fn set_pair(&mut self, view: crate::pair::PairView) {
        self.pair = Some(view);
    }

    /// The `tpx.status` reply.
    pub fn status(&self, clock: Clock) -> StatusReply {
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|w| WorkerStatus {
                worker: w.id,
                services: w.services.clone(),
                capacity: w.capacity,
                in_flight: w.in_flight.len() as u32,
                heartbeat_age_ms: clock.now.saturating_duration_since(w.last_seen).as_millis()
                    as u64,
                served: w.served,
            })
            .collect();
        workers.sort_by_key(|w| w.worker);
        let mut services: Vec<ServiceStatus> = self
            .services
            .iter()
            .filter(|(_, s)| s.registered)
            .map(|(name, s)| ServiceStatus {
                service: name.clone(),
                workers: s.workers.len() as u32,
                queued: s.queue.len() as u32,
                in_flight: s.in_flight as u32,
            })
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        StatusReply {
            broker: self.broker_id,
            uptime_s: clock.now.saturating_duration_since(self.started).as_secs(),
            workers,
            services,
            halts: self.risk.as_ref().map(|r| r.halts()).unwrap_or_default(),
            pair: self.pair.map(|p| p.status(clock.now)),
        }
    }

    /// Answers a client whose message could not be decoded.
    pub fn reject_client(
        &mut self,
        client: Identity,
        id: RequestId,
        code: ErrorCode,
        message: String,
    ) {
        self.send_error(client, ErrorHeader::new(id, code, message));
    }

    fn note_client(&mut self, client: &Identity, now: Instant) {
        if let Some(seen) = self.clients.get_mut(client) {
            *seen = now;
        } else if self.clients.len() < MAX_TRACKED_CLIENTS {
            self.clients.insert(client.clone(), now);
        }
    }

    // ----- worker side -------------------------------------------------------------

    /// A decoded message from a worker.
    pub fn on_worker(&mut self, clock: Clock, from: Identity, msg: worker::Message, body: Body) {
        if let worker::Message::Ready(h) = msg {
            self.on_ready(clock, from, h);
            return;
        }
        let Some(w) = self.workers.get_mut(&from) else {
            if !matches!(msg, worker::Message::Disconnect(_)) {
                // A worker we do not know (e.g. we restarted): ask it to register again.
                self.send_to_worker(
                    from,
                    worker::Command::Disconnect,
                    &DisconnectHeader {
                        reason: worker::REASON_NOT_REGISTERED.into(),
                    },
                );
            }
            return;
        };
        w.last_seen = clock.now;
        match msg {
            worker::Message::Reply(h) => self.complete(&from, h.job, Ok(body)),
            worker::Message::Error(h) => {
                // `risk_rejected` is the broker's own answer: a worker cannot claim it.
                let code = ErrorCode::from_u16(h.code)
                    .filter(|c| *c != ErrorCode::RiskRejected)
                    .unwrap_or(ErrorCode::WorkerError);
                self.complete(&from, h.job, Err((code, h.message)))
            }
            worker::Message::Heartbeat => {}
            worker::Message::Disconnect(_) => {
                self.remove_worker(clock, &from, Departure::Disconnected)
            }
            worker::Message::Request(_) | worker::Message::Ready(_) => {
                self.metrics.bad_frame("backend", "unexpected_command");
            }
        }
    }

    /// A REPLY or ERROR from `from` that failed to decode but names `job`: the job's client
    /// is answered `worker_error` (what the worker did is not known: query an order) and the
    /// worker's slot is freed. A job `from` does not hold counts as a late reply.
    pub fn on_garbled_answer(&mut self, clock: Clock, from: Identity, job: JobId, detail: &str) {
        let Some(w) = self.workers.get_mut(&from) else {
            self.metrics.late_replies.inc();
            return;
        };
        w.last_seen = clock.now;
        let msg = format!("worker sent a malformed answer ({detail}); outcome unknown");
        self.complete(&from, job, Err((ErrorCode::WorkerError, msg)));
    }

    /// Tells a worker that one of its messages was refused (`reason` is
    /// `<code name>: <detail>`); any registration it has stands.
    pub fn refuse_worker_message(&mut self, to: Identity, code: ErrorCode, detail: &str) {
        let reason = format!("{}: {detail}", code.name());
        self.send_to_worker(
            to,
            worker::Command::Disconnect,
            &DisconnectHeader { reason },
        );
    }

    fn on_ready(&mut self, clock: Clock, from: Identity, h: ReadyHeader) {
        // The worker may have reconnected on a new socket before we noticed it had gone;
        // the old registration is dropped once the new one is in place, so its jobs can
        // move straight to the new socket.
        let replaced = self.by_id.get(&h.worker).filter(|i| **i != from).cloned();
        if self.too_many_services(&h.services) {
            self.metrics.bad_frame("backend", "too_many_services");
            let detail = format!(
                "the broker holds its limit of {} services; READY refused",
                self.cfg.max_services
            );
            self.refuse_worker_message(from, ErrorCode::Overloaded, &detail);
            return;
        }
        let current_session = replaced
            .as_ref()
            .and_then(|i| self.workers.get(i))
            .map(|w| w.session);
        if current_session.is_some_and(|s| h.session < s) {
            // Sent on a connection the worker has since abandoned (it arrived late, e.g.
            // after a network cut healed): it must not shadow the live registration.
            self.metrics.bad_frame("backend", "stale_session");
            tracing::info!(worker = %h.worker, session = h.session, "READY from an abandoned connection ignored");
            self.send_to_worker(
                from,
                worker::Command::Disconnect,
                &DisconnectHeader {
                    reason: worker::REASON_STALE_SESSION.into(),
                },
            );
            return;
        }
        if self.workers.get(&from).is_some_and(|w| w.id != h.worker) {
            self.remove_worker(clock, &from, Departure::Replaced);
        }
        let previous = match self.workers.get_mut(&from) {
            Some(w) => {
                w.last_seen = clock.now;
                w.capacity = h.capacity;
                w.session = h.session;
                std::mem::replace(&mut w.services, h.services.clone())
            }
            None => {
                self.metrics.worker_registrations.inc();
                tracing::info!(worker = %h.worker, services = %tradeplex_ops::logging::list(&h.services), capacity = h.capacity, "worker registered");
                self.by_id.insert(h.worker, from.clone());
                self.workers.insert(
                    from.clone(),
                    Worker {
                        id: h.worker,
                        services: h.services.clone(),
                        capacity: h.capacity,
                        in_flight: HashSet::default(),
                        last_seen: clock.now,
                        last_used: 0,
                        served: 0,
                        session: h.session,
                        next_pump: 0,
                    },
                );
                // Acknowledge at once: a heartbeat tells the worker it is registered.
                self.send_to_worker(
                    from.clone(),
                    worker::Command::Heartbeat,
                    &HeartbeatHeader {},
                );
                Vec::new()
            }
        };
        for gone in previous.iter().filter(|s| !h.services.contains(s)) {
            self.detach(clock, gone, &from);
        }
        for added in h.services.iter().filter(|s| !previous.contains(s)) {
            self.attach(added, &from);
        }
        for s in &h.services {
            self.pump(s);
        }
        if let Some(old) = replaced {
            self.remove_worker(clock, &old, Departure::Replaced);
        }
    }

    fn attach(&mut self, service: &ServiceName, worker: &Identity) {
        let metrics = &self.metrics;
        let entry = self
            .services
            .entry(service.clone())
            .or_insert_with(|| new_service(Arc::new(metrics.service(service.as_str()))));
        if !entry.registered {
            // Move the queued count off the `_unknown` gauge onto the service's own.
            entry.metrics.queue_depth.sub(entry.queue.len() as i64);
            entry.registered = true;
            entry.metrics = Arc::new(metrics.service(service.as_str()));
            entry.metrics.queue_depth.set(entry.queue.len() as i64);
        }
        entry.orphaned_since = None;
        if !entry.workers.contains(worker) {
            entry.workers.push(worker.clone());
            entry.metrics.workers.set(entry.workers.len() as i64);
        }
    }

    fn detach(&mut self, clock: Clock, service: &ServiceName, worker: &Identity) {
        if let Some(entry) = self.services.get_mut(service) {
            entry.workers.retain(|w| w != worker);
            entry.metrics.workers.set(entry.workers.len() as i64);
            if entry.workers.is_empty() {
                entry.orphaned_since = Some(clock.now);
            }
        }
    }

    /// Whether registering `offered` would take the broker past `max_services`.
    fn too_many_services(&self, offered: &[ServiceName]) -> bool {
        let new = offered
            .iter()
            .filter(|s| !self.services.get(*s).is_some_and(|e| e.registered))
            .count();
        if new == 0 {
            return false;
        }
        let registered = self.services.values().filter(|s| s.registered).count();
        registered + new > self.cfg.max_services
    }

    /// Forgets registered services that have had no worker, queue or in-flight work for
    /// the retention period, and their metric series.
    fn forget_orphaned_services(&mut self, clock: Clock) {
        let retention = self.cfg.service_retention;
        let gone: Vec<ServiceName> = self
            .services
            .iter()
            .filter(|(_, s)| {
                s.queue.is_empty()
                    && s.in_flight == 0
                    && s.orphaned_since
                        .is_some_and(|t| clock.now.saturating_duration_since(t) >= retention)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.services.remove(&name);
            self.metrics.forget_service(name.as_str());
            self.affinity.retain(|(s, _), _| *s != name);
            tracing::info!(service = %name, "service forgotten after its retention period without workers");
        }
    }

    /// Drops a worker: its idempotent in-flight jobs go back to the front of their queue,
    /// the others are answered `worker_lost` (they may have executed).
    pub fn remove_worker(&mut self, clock: Clock, identity: &Identity, why: Departure) {
        let Some(w) = self.workers.remove(identity) else {
            return;
        };
        if self.by_id.get(&w.id) == Some(identity) {
            self.by_id.remove(&w.id);
        }
        match why {
            Departure::Expired => self.metrics.workers_expired.inc(),
            Departure::Disconnected => self.metrics.worker_disconnects.inc(),
            Departure::Replaced | Departure::Unreachable => {}
        }
        tracing::warn!(worker = %w.id, reason = ?why, in_flight = w.in_flight.len(), "worker removed");
        for s in &w.services {
            self.detach(clock, s, identity);
        }
        let mut jobs: Vec<JobId> = w.in_flight.into_iter().collect();
        jobs.sort();
        for job_id in jobs.into_iter().rev() {
            self.fail_in_flight(job_id, &w.id);
        }
        for s in &w.services {
            self.pump(s);
            self.fail_unserved(clock, s);
        }
    }

    fn fail_in_flight(&mut self, job_id: JobId, worker: &WorkerId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let service = job.service.clone();
        if let Some(s) = self.services.get_mut(&service) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.metrics.in_flight.dec();
        }
        if job.idempotent {
            job.worker = None;
            self.metrics.requests_retried.inc();
            self.requeue_front(job_id);
        } else {
            let msg = format!("worker {worker} lost with the request in flight: outcome unknown");
            self.finish(job_id, Err((ErrorCode::WorkerLost, msg)), Some(*worker));
        }
    }

    /// Queued jobs of a service left with no worker at all are answered at once (or when
    /// their grace period ends), never left to hang.
    fn fail_unserved(&mut self, clock: Clock, service: &ServiceName) {
        if self.has_workers(service) {
            return;
        }
        let queued: Vec<JobId> = self
            .services
            .get(service)
            .map(|s| s.queue.jobs().collect())
            .unwrap_or_default();
        let grace_end = clock.unix_ms + self.cfg.grace_ms;
        for job_id in queued {
            if self.jobs.get(&job_id).is_some_and(|j| j.undelivered) {
                continue;
            }
            if self.cfg.grace_ms == 0 {
                self.unqueue(job_id);
                let msg = format!("no worker offers {service}");
                self.finish(job_id, Err((ErrorCode::UnknownService, msg)), None);
            } else if let Some(job) = self.jobs.get(&job_id) {
                let at = job.deadline_ms.min(grace_end);
                self.set_timer(job_id, at);
            }
        }
    }

    fn requeue_front(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        let (service, client, at) = (job.service.clone(), job.client.clone(), job.deadline_ms);
        let entry = self.service_entry(&service);
        entry.queue.push_front(&client, job_id);
        entry.metrics.queue_depth.inc();
        self.set_timer(job_id, at);
    }

    fn complete(
        &mut self,
        from: &Identity,
        job_id: JobId,
        result: Result<Body, (ErrorCode, String)>,
    ) {
        let owned = self
            .jobs
            .get(&job_id)
            .is_some_and(|j| j.worker.as_ref() == Some(from));
        let Some(w) = self.workers.get_mut(from).filter(|_| owned) else {
            self.metrics.late_replies.inc();
            return;
        };
        w.in_flight.remove(&job_id);
        w.served += 1;
        let worker_id = w.id;
        let Some(service) = self.jobs.get(&job_id).map(|j| j.service.clone()) else {
            return;
        };
        if let Some(s) = self.services.get_mut(&service) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.metrics.in_flight.dec();
        }
        match result {
            Err((ErrorCode::Unavailable, _)) => {
                // Refused without executing: safe to deliver elsewhere, even an order, but
                // never to the worker that refused it.
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.worker = None;
                    job.refused_by.push(worker_id);
                }
                self.metrics.requests_retried.inc();
                self.requeue_front(job_id);
                self.pump(&service);
            }
            other => self.finish(job_id, other, Some(worker_id)),
        }
        self.pump_worker(from);
    }

    /// Undoes a delivery the socket could not make (the worker is gone): the request was
    /// not delivered, so it is requeued whatever its kind, and the worker dropped.
    pub fn on_send_failed(&mut self, clock: Clock, job_id: JobId) {
        let Some(identity) = self.jobs.get(&job_id).and_then(|j| j.worker.clone()) else {
            return;
        };
        if let Some(w) = self.workers.get_mut(&identity) {
            w.in_flight.remove(&job_id);
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.worker = None;
            job.undelivered = true;
            let service = job.service.clone();
            if let Some(s) = self.services.get_mut(&service) {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.metrics.in_flight.dec();
            }
        }
        // Not delivered, whatever its kind: back to the queue (until its deadline) for
        // another worker or this worker's next registration.
        self.metrics.requests_retried.inc();
        self.requeue_front(job_id);
        self.remove_worker(clock, &identity, Departure::Unreachable);
    }

    // ----- dispatch ----------------------------------------------------------------

    /// Delivers what `service`'s queue can deliver now: one job per client per round, the
    /// clients in turn, until a round delivers nothing or no worker has room.
    fn pump(&mut self, service: &ServiceName) {
        loop {
            let clients = self.services.get(service).map_or(0, |s| s.queue.clients());
            let mut delivered = false;
            for _ in 0..clients {
                match self.serve_next_client(service) {
                    Turn::Delivered => delivered = true,
                    Turn::Waiting => {}
                    Turn::NoRoom => return,
                }
            }
            if !delivered {
                return;
            }
        }
    }

    /// Gives the next client of `service` its turn: its first job some worker can take
    /// now is delivered (jobs bound to a busy worker are looked past).
    fn serve_next_client(&mut self, service: &ServiceName) -> Turn {
        if !self
            .services
            .get_mut(service)
            .is_some_and(|s| s.queue.next_turn())
        {
            return Turn::Waiting;
        }
        let mut i = 0;
        loop {
            let next = self.services.get(service).and_then(|s| s.queue.in_turn(i));
            let Some(job_id) = next else {
                return Turn::Waiting;
            };
            match self.choose(service, job_id) {
                Choice::Deliver(worker) => {
                    self.unqueue(job_id);
                    self.deliver(job_id, worker);
                    return Turn::Delivered;
                }
                Choice::Fail(code, msg) => {
                    self.unqueue(job_id);
                    self.finish(job_id, Err((code, msg)), None);
                }
                Choice::Wait => i += 1,
                // No worker of the service has room: nothing else can go either.
                Choice::NoRoom => return Turn::NoRoom,
            }
        }
    }

    /// A slot freed on `worker`: each service it offers with queued work gets the chance in
    /// turn (starting one further each time), so one service's backlog cannot starve
    /// another's queued requests on a shared worker.
    fn pump_worker(&mut self, worker: &Identity) {
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        let n = w.services.len();
        w.next_pump = (w.next_pump + 1) % n.max(1);
        let start = w.next_pump;
        let services = &self.services;
        // Only services with a backlog are cloned: nothing is allocated when none has one.
        let waiting: Vec<ServiceName> = (0..n)
            .filter_map(|k| w.services.get((start + k) % n))
            .filter(|s| services.get(*s).is_some_and(|q| !q.queue.is_empty()))
            .cloned()
            .collect();
        for s in &waiting {
            self.pump(s);
        }
    }

    fn choose(&mut self, service: &ServiceName, job_id: JobId) -> Choice {
        let Some(job) = self.jobs.get(&job_id) else {
            return Choice::Wait;
        };
        if let Some(target) = job.target {
            return self.choose_target(service, job, target);
        }
        if !job.refused_by.is_empty() && self.refused_by_all(service, job) {
            let n = job.refused_by.len();
            return Choice::Fail(
                ErrorCode::Unavailable,
                format!("refused by every worker of {service} ({n}); not executed"),
            );
        }
        if let Some(key) = &job.affinity {
            let bound = self
                .affinity
                .get(&(service.clone(), key.clone()))
                .and_then(|id| {
                    let i = self.by_id.get(id)?;
                    self.workers
                        .get(i)
                        .filter(|w| w.offers(service) && !job.refused(&w.id))
                        .map(|w| (i.clone(), w.has_room()))
                });
            return match bound {
                Some((i, true)) => Choice::Deliver(i),
                Some((_, false)) => Choice::Wait,
                // Unbound, or bound to a worker that refused it: bind the key afresh.
                None => match self.least_loaded(service, &job.refused_by) {
                    Some(i) => {
                        let key = key.clone();
                        self.bind_affinity(service.clone(), key, &i);
                        Choice::Deliver(i)
                    }
                    None => Choice::Wait,
                },
            };
        }
        let refused = !job.refused_by.is_empty();
        match self.least_loaded(service, &job.refused_by) {
            Some(i) => Choice::Deliver(i),
            // Other jobs may still go to the workers this one refused.
            None if refused => Choice::Wait,
            None => Choice::NoRoom,
        }
    }

    fn choose_target(&self, service: &ServiceName, job: &Job, target: WorkerId) -> Choice {
        if job.refused(&target) {
            return Choice::Fail(
                ErrorCode::Unavailable,
                format!("target worker {target} refused it; not executed"),
            );
        }
        match self
            .by_id
            .get(&target)
            .and_then(|i| self.workers.get(i).map(|w| (i, w)))
        {
            Some((i, w)) if w.offers(service) => {
                if w.has_room() {
                    Choice::Deliver(i.clone())
                } else {
                    Choice::Wait
                }
            }
            _ => Choice::Fail(
                ErrorCode::UnknownWorker,
                format!("worker {target} is not registered for {service}"),
            ),
        }
    }

    /// Whether every worker now offering `service` has refused `job`.
    fn refused_by_all(&self, service: &ServiceName, job: &Job) -> bool {
        self.services.get(service).is_some_and(|s| {
            s.workers
                .iter()
                .filter_map(|i| self.workers.get(i))
                .all(|w| job.refused(&w.id))
        })
    }

    fn bind_affinity(&mut self, service: ServiceName, key: String, worker: &Identity) {
        let Some(id) = self.workers.get(worker).map(|w| w.id) else {
            return;
        };
        if self.affinity.len() >= MAX_AFFINITY {
            let live = &self.by_id;
            self.affinity.retain(|_, w| live.contains_key(w));
        }
        if self.affinity.len() < MAX_AFFINITY {
            self.affinity.insert((service, key), id);
        }
    }

    /// The worker of `service` with the fewest requests in flight and room for one more,
    /// ties to the least recently used, leaving out those in `refused`.
    fn least_loaded(&self, service: &ServiceName, refused: &[WorkerId]) -> Option<Identity> {
        let s = self.services.get(service)?;
        s.workers
            .iter()
            .filter_map(|i| self.workers.get(i).map(|w| (i, w)))
            .filter(|(_, w)| w.has_room() && !refused.contains(&w.id))
            .min_by_key(|(_, w)| (w.in_flight.len(), w.last_used))
            .map(|(i, _)| i.clone())
    }

    fn deliver(&mut self, job_id: JobId, to: Identity) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let body = job.body.share();
        job.worker = Some(to.clone());
        let header = frame::encode_header(&worker::RequestHeader {
            job: job_id,
            id: job.id,
            service: job.service.clone(),
            deadline_ms: job.deadline_ms,
            idempotent: job.idempotent,
        });
        let service = job.service.clone();
        self.use_counter += 1;
        if let Some(w) = self.workers.get_mut(&to) {
            w.in_flight.insert(job_id);
            w.last_used = self.use_counter;
        }
        if let Some(s) = self.services.get_mut(&service) {
            s.in_flight += 1;
            s.metrics.in_flight.inc();
        }
        self.out.push(Out::Worker {
            to,
            cmd: worker::Command::Request,
            header,
            body,
            job: Some(job_id),
        });
    }

    /// Takes a job out of its service's queue (and its timer off the timer set).
    fn unqueue(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(s) = self.services.get_mut(&job.service) else {
            return;
        };
        if s.queue.remove(&job.client, job_id) {
            s.metrics.queue_depth.dec();
        }
        if let Some(at) = job.timer_ms.take() {
            self.timers.remove(&(at, job_id));
        }
    }

    fn set_timer(&mut self, job_id: JobId, at: u64) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if let Some(old) = job.timer_ms.replace(at) {
                self.timers.remove(&(old, job_id));
            }
            self.timers.insert((at, job_id));
        }
    }

    /// Answers a job and forgets it.
    fn finish(
        &mut self,
        job_id: JobId,
        result: Result<Body, (ErrorCode, String)>,
        worker: Option<WorkerId>,
    ) {
        let Some(job) = self.jobs.remove(&job_id) else {
            return;
        };
        if let Some(at) = job.timer_ms {
            self.timers.remove(&(at, job_id));
        }
        if let (Some(ticket), Some(stage)) = (job.risk_ticket, &self.risk) {
            stage.settle(ticket);
        }
        if let (Some(rid), Some(stage)) = (job.audit_rid, &self.risk) {
            let r = match &result {
                Ok(body) => Ok(&body[..]),
                Err((code, message)) => Err((*code, message.as_str())),
            };
            stage.audit_outcome(
                tradeplex_proto::now_unix_ms(),
                rid,
                r,
                worker.map(|w| w.to_string()),
            );
        }
        if let Some(order) = &job.halt_cancel {
            // The broker's own cancel: consumed here, never delivered to a client.
            let outcome = match &result {
                Ok(_) => "ok",
                Err((code, _)) => code.name(),
            };
            if let Some(stage) = &self.risk {
                stage.count_halt_cancel(outcome);
            }
            match &result {
                Ok(_) => tracing::info!(%order, ?worker, "halt: cancel answered ok"),
                Err((code, message)) => {
                    tracing::warn!(%order, ?worker, code = code.name(), %message, "halt: cancel failed")
                }
            }
            self.forget_empty_service(&job.service);
            return;
        }
        let elapsed = job.received.elapsed().as_secs_f64();
        let metrics = self.service_metrics(&job.service);
        match result {
            Ok(body) => {
                metrics.answered(None, elapsed);
                let header = frame::encode_header(&ReplyHeader {
                    id: job.id,
                    worker: worker.unwrap_or(self.broker_id),
                });
                self.out.push(Out::Client {
                    to: job.client,
                    cmd: client::Command::Reply,
                    header,
                    body,
                });
            }
            Err((code, message)) => {
                metrics.answered(Some(code), elapsed);
                let mut h = ErrorHeader::new(job.id, code, message);
                h.worker = worker;
                self.send_error(job.client, h);
            }
        }
        self.forget_empty_service(&job.service);
    }

    fn forget_empty_service(&mut self, service: &ServiceName) {
        if self
            .services
            .get(service)
            .is_some_and(|s| !s.registered && s.queue.is_empty() && s.in_flight == 0)
        {
            self.services.remove(service);
        }
    }

    // ----- time --------------------------------------------------------------------

    /// Expires silent workers, sends heartbeats, and answers queued requests whose
    /// deadline (or unknown-service grace) has passed.
    pub fn tick(&mut self, clock: Clock) {
        self.expire_workers(clock);
        if clock.now >= self.next_heartbeat {
            self.heartbeat(clock);
        }
        self.fire_timers(clock);
    }

    fn expire_workers(&mut self, clock: Clock) {
        let window = self.cfg.liveness_window();
        let dead: Vec<Identity> = self
            .workers
            .iter()
            .filter(|(_, w)| clock.now.saturating_duration_since(w.last_seen) > window)
            .map(|(i, _)| i.clone())
            .collect();
        for identity in dead {
            self.remove_worker(clock, &identity, Departure::Expired);
        }
    }

    fn heartbeat(&mut self, clock: Clock) {
        self.next_heartbeat = clock.now + self.cfg.heartbeat;
        self.abandon_overdue(clock);
        self.forget_orphaned_services(clock);
        for s in self.services.values_mut() {
            s.queue.sweep();
        }
        let interval = self.cfg.heartbeat;
        // A worker not heard from for one and a half intervals missed a heartbeat.
        let missed = self
            .workers
            .values()
            .filter(|w| clock.now.saturating_duration_since(w.last_seen) > interval + interval / 2)
            .count();
        self.metrics.heartbeats_missed.inc_by(missed as u64);
        let identities: Vec<Identity> = self.workers.keys().cloned().collect();
        for identity in identities {
            self.send_to_worker(identity, worker::Command::Heartbeat, &HeartbeatHeader {});
        }
        let window = self.cfg.liveness_window();
        self.clients
            .retain(|_, seen| clock.now.saturating_duration_since(*seen) <= window);
        self.metrics.clients.set(self.clients.len() as i64);
        self.count_worker_states();
    }

    /// Answers `worker_lost` the delivered requests whose worker keeps heartbeating but has
    /// not answered by their deadline plus the in-flight grace, and frees their slots. Swept
    /// once per heartbeat interval rather than timed one by one, so the request path pays
    /// nothing for it; a reply arriving later is counted as late.
    fn abandon_overdue(&mut self, clock: Clock) {
        let grace = self.cfg.in_flight_grace.as_millis() as u64;
        let overdue: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.worker.is_some() && j.deadline_ms.saturating_add(grace) <= clock.unix_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for job_id in overdue {
            self.abandon(job_id, grace);
        }
    }

    fn abandon(&mut self, job_id: JobId, grace_ms: u64) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        let service = job.service.clone();
        let identity = job.worker.clone();
        let worker = job.worker.as_ref().and_then(|i| self.workers.get_mut(i));
        let worker_id = worker.map(|w| {
            w.in_flight.remove(&job_id);
            w.id
        });
        if let Some(s) = self.services.get_mut(&service) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.metrics.in_flight.dec();
        }
        self.metrics.requests_abandoned.inc();
        let msg = format!(
            "worker did not answer within {grace_ms} ms after the deadline: outcome unknown"
        );
        tracing::warn!(%job_id, worker = ?worker_id, "in-flight request abandoned");
        self.finish(job_id, Err((ErrorCode::WorkerLost, msg)), worker_id);
        match identity {
            Some(i) => self.pump_worker(&i),
            None => self.pump(&service),
        }
    }

    /// Refreshes `tradeplex_worker_states` (once per heartbeat interval: a gauge that is
    /// at most one interval old is enough to see a pool saturate or drain).
    fn count_worker_states(&self) {
        let mut counts = [0i64; 4];
        for w in self.workers.values() {
            let i = if w.services.is_empty() {
                3
            } else if w.in_flight.is_empty() {
                0
            } else if w.has_room() {
                1
            } else {
                2
            };
            counts[i] += 1;
        }
        for (state, n) in WORKER_STATES.iter().zip(counts) {
            self.metrics
                .worker_states
                .with_label_values(&[state])
                .set(n);
        }
    }

    fn fire_timers(&mut self, clock: Clock) {
        while let Some(&(at, job_id)) = self.timers.first() {
            if at > clock.unix_ms {
                break;
            }
            self.timers.remove(&(at, job_id));
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            job.timer_ms = None;
            let (deadline, service, undelivered) =
                (job.deadline_ms, job.service.clone(), job.undelivered);
            if clock.unix_ms >= deadline {
                self.unqueue(job_id);
                let answer = self.expired_answer(job_id);
                self.finish(job_id, Err(answer), None);
            } else if !self.has_workers(&service) && !undelivered {
                self.unqueue(job_id);
                let msg = format!("no worker offers {service}");
                self.finish(job_id, Err((ErrorCode::UnknownService, msg)), None);
            } else {
                self.set_timer(job_id, deadline);
            }
        }
    }

    /// The answer to a job still queued at its deadline: never delivered, or refused by
    /// the workers it reached and taken by no other in time — not executed either way.
    fn expired_answer(&self, job_id: JobId) -> (ErrorCode, String) {
        match self.jobs.get(&job_id).map_or(0, |j| j.refused_by.len()) {
            0 => (
                ErrorCode::DeadlineExceeded,
                "deadline passed while queued; not delivered".to_string(),
            ),
            n => (
                ErrorCode::Unavailable,
                format!(
                    "refused by {n} worker(s), no other took it before its deadline; not executed"
                ),
            ),
        }
    }

    // ----- shutdown ----------------------------------------------------------------

    /// Stops accepting requests and answers every queued one `unavailable`.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let queued: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.worker.is_none())
            .map(|(id, _)| *id)
            .collect();
        for job_id in queued {
            self.unqueue(job_id);
            let msg = "broker is shutting down; not delivered".to_string();
            self.finish(job_id, Err((ErrorCode::Unavailable, msg)), None);
        }
    }

    /// Answers what is still in flight `worker_lost` and tells every worker to go.
    pub fn finish_shutdown(&mut self) {
        let left: Vec<(JobId, Option<WorkerId>)> = self
            .jobs
            .iter()
            .map(|(id, j)| {
                let w = j
                    .worker
                    .as_ref()
                    .and_then(|i| self.workers.get(i))
                    .map(|w| w.id);
                (*id, w)
            })
            .collect();
        for (job_id, worker) in left {
            let msg = "broker shut down with the request in flight: outcome unknown".to_string();
            self.finish(job_id, Err((ErrorCode::WorkerLost, msg)), worker);
        }
        let identities: Vec<Identity> = self.workers.keys().cloned().collect();
        for identity in identities {
            self.send_to_worker(
                identity,
                worker::Command::Disconnect,
                &DisconnectHeader {
                    reason: worker::REASON_SHUTTING_DOWN.into(),
                },
            );
        }
    }

    // ----- helpers -----------------------------------------------------------------

    fn has_workers(&self, service: &ServiceName) -> bool {
        self.services
            .get(service)
            .is_some_and(|s| !s.workers.is_empty())
    }

    fn service_metrics(&self, service: &ServiceName) -> Arc<ServiceMetrics> {
        self.services
            .get(service)
            .filter(|s| s.registered)
            .map_or_else(|| self.unknown_metrics.clone(), |s| s.metrics.clone())
    }

    fn service_entry(&mut self, service: &ServiceName) -> &mut Service {
        let unknown = &self.unknown_metrics;
        self.services
            .entry(service.clone())
            .or_insert_with(|| new_service(unknown.clone()))
    }

    fn send_error(&mut self, to: Identity, h: ErrorHeader) {
        self.out.push(Out::Client {
            to,
            cmd: client::Command::Error,
            header: frame::encode_header(&h),
            body: Body::new(),
        });
    }

    fn send_to_worker<T: serde::Serialize>(&mut self, to: Identity, cmd: worker::Command, h: &T) {
        self.out.push(Out::Worker {
            to,
            cmd,
            header: frame::encode_header(h),
            body: Body::new(),
            job: None,
        });
    }
}

/// Decodes a management request body (empty = every field at its default).
fn decode_mgmt<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, (ErrorCode, String)> {
    if body.is_empty() {
        return Ok(T::default());
    }
    rmp_serde::from_slice(body).map_err(|e| {
        (
            ErrorCode::BadRequest,
            format!("cannot decode the request body: {e}"),
        )
    })
}

fn encode_mgmt<T: serde::Serialize>(reply: &T) -> Result<Vec<u8>, (ErrorCode, String)> {
    rmp_serde::to_vec_named(reply).map_err(|e| {
        (
            ErrorCode::WorkerError,
            format!("cannot encode the reply: {e}"),
        )
    })
}

fn check_len(field: &str, v: &str, max: usize) -> Result<(), (ErrorCode, String)> {
    if v.len() > max {
        return Err((
            ErrorCode::BadRequest,
            format!("bad field {field}: {} bytes, at most {max}", v.len()),
        ));
    }
    Ok(())
}

fn no_stage() -> (ErrorCode, String) {
    (
        ErrorCode::Unavailable,
        "this broker has no risk stage (kill switch unavailable)".into(),
    )
}

fn new_service(metrics: Arc<ServiceMetrics>) -> Service {
    Service {
        workers: Vec::new(),
        queue: ServiceQueue::default(),
        in_flight: 0,
        registered: false,
        orphaned_since: None,
        metrics,
    }
}

mod queue;
use queue::ServiceQueue;

#[cfg(test)]
mod tests;
