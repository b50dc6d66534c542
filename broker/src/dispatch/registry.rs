//! The worker registry: who is registered for which service, registration (READY) and
//! departure, and what happens to a departing worker's requests.

use std::rc::Rc;
use std::time::Instant;

use rustc_hash::FxHashSet as HashSet;
use tradeplex_proto::worker::{self, ReadyHeader};
use tradeplex_proto::{ErrorCode, JobId, ServiceName, WorkerId};

use super::queue::ServiceQueue;
use super::services::ServiceKey;
use super::workers::WorkerKey;
use super::{Clock, Dispatcher, Identity, Out, Phase};
use crate::metrics::ServiceMetrics;

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

pub(super) struct Worker {
    /// Its connection's routing id.
    pub(super) identity: Identity,
    pub(super) id: WorkerId,
    pub(super) services: Vec<ServiceName>,
    pub(super) capacity: u32,
    pub(super) in_flight: HashSet<JobId>,
    pub(super) last_seen: Instant,
    pub(super) last_used: u64,
    pub(super) served: u64,
    /// The READY `session` it registered with (its connection number).
    pub(super) session: u64,
    /// Rotates which of its services gets a freed slot first.
    pub(super) next_pump: usize,
    /// It reads BATCH (its READY said so): deliveries of one round go in one message.
    pub(super) batch: bool,
}

impl Worker {
    pub(super) fn has_room(&self) -> bool {
        (self.in_flight.len() as u32) < self.capacity
    }

    pub(super) fn offers(&self, service: &ServiceName) -> bool {
        self.services.contains(service)
    }
}

pub(super) struct Service {
    pub(super) name: ServiceName,
    pub(super) workers: Vec<WorkerKey>,
    pub(super) queue: ServiceQueue,
    pub(super) in_flight: usize,
    /// Set once a worker has offered the service; until then metrics go to `_unknown`.
    pub(super) registered: bool,
    /// Since when it has had no worker (registered services only).
    pub(super) orphaned_since: Option<Instant>,
    pub(super) metrics: Rc<ServiceMetrics>,
}

pub(super) fn new_service(name: ServiceName, metrics: Rc<ServiceMetrics>) -> Service {
    Service {
        name,
        workers: Vec::new(),
        queue: ServiceQueue::default(),
        in_flight: 0,
        registered: false,
        orphaned_since: None,
        metrics,
    }
}

impl Dispatcher {
    pub(super) fn on_ready(&mut self, clock: Clock, from: Identity, h: ReadyHeader) {
        if self.phase == Phase::Stopped {
            self.disconnect(from, worker::REASON_SHUTTING_DOWN.into());
            return;
        }
        // The worker may have reconnected on a new socket before we noticed it had gone;
        // the old registration is dropped once the new one is in place, so its jobs can
        // move straight to the new socket.
        let replaced = (self.workers.key_of_id(&h.worker))
            .filter(|k| self.workers.get(*k).is_some_and(|w| w.identity != from));
        if !self.ready_acceptable(&from, &h, replaced) {
            return;
        }
        if let Some(other) = self.workers.key(&from) {
            if self.workers.get(other).is_some_and(|w| w.id != h.worker) {
                self.remove_worker(clock, other, Departure::Replaced);
            }
        }
        let (key, previous) = match self.workers.key(&from) {
            Some(key) => (key, self.update(clock, key, &h)),
            None => (self.register(clock, &from, &h), Vec::new()),
        };
        for gone in previous.iter().filter(|s| !h.services.contains(s)) {
            self.detach(clock, gone, key);
        }
        for added in h.services.iter().filter(|s| !previous.contains(s)) {
            self.attach(added, key);
        }
        for s in &h.services {
            self.pump_named(s);
        }
        if let Some(old) = replaced {
            self.remove_worker(clock, old, Departure::Replaced);
        }
    }

    /// A READY from a registered worker: it may change its capacity and services; the
    /// services it offered before are returned.
    fn update(&mut self, clock: Clock, key: WorkerKey, h: &ReadyHeader) -> Vec<ServiceName> {
        let Some(w) = self.workers.get_mut(key) else {
            return Vec::new();
        };
        w.last_seen = clock.now;
        w.capacity = h.capacity;
        w.session = h.session;
        w.batch = h.batch;
        std::mem::replace(&mut w.services, h.services.clone())
    }

    /// Whether a READY may change the registry: refused (and answered) past the service
    /// limit, or from a connection older than the worker's live registration on `replaced`.
    fn ready_acceptable(
        &mut self,
        from: &Identity,
        h: &ReadyHeader,
        replaced: Option<WorkerKey>,
    ) -> bool {
        if self.too_many_services(&h.services) {
            self.metrics.bad_frame("backend", "too_many_services");
            let detail = format!(
                "the broker holds its limit of {} services; READY refused",
                self.cfg.max_services
            );
            self.refuse_worker_message(from.clone(), ErrorCode::Overloaded, &detail);
            return false;
        }
        let current_session = replaced
            .and_then(|k| self.workers.get(k))
            .map(|w| w.session);
        if current_session.is_some_and(|s| h.session < s) {
            // Sent on a connection the worker has since abandoned (it arrived late, e.g.
            // after a network cut healed): it must not shadow the live registration.
            self.metrics.bad_frame("backend", "stale_session");
            tracing::info!(worker = %h.worker, session = h.session, "READY from an abandoned connection ignored");
            self.disconnect(from.clone(), worker::REASON_STALE_SESSION.into());
            return false;
        }
        true
    }

    /// A worker's first READY on this connection: it enters the registry.
    fn register(&mut self, clock: Clock, from: &Identity, h: &ReadyHeader) -> WorkerKey {
        self.metrics.worker_registrations.inc();
        tracing::info!(worker = %h.worker, services = %tradeplex_ops::logging::list(&h.services), capacity = h.capacity, "worker registered");
        let key = self.workers.insert(Worker {
            identity: from.clone(),
            id: h.worker,
            services: h.services.clone(),
            capacity: h.capacity,
            in_flight: HashSet::default(),
            last_seen: clock.now,
            last_used: 0,
            served: 0,
            session: h.session,
            next_pump: 0,
            batch: h.batch,
        });
        // Acknowledge at once: a heartbeat tells the worker it is registered.
        self.out.push(Out::Heartbeat { to: from.clone() });
        key
    }

    fn attach(&mut self, service: &ServiceName, worker: WorkerKey) {
        let (metrics, batch) = (&self.metrics, &self.batch);
        let key = self.services.entry(service, || {
            new_service(
                service.clone(),
                Rc::new(metrics.service(service.as_str(), batch)),
            )
        });
        let Some(entry) = self.services.get_mut(key) else {
            return;
        };
        if !entry.registered {
            // Move the queued count off the `_unknown` gauge onto the service's own.
            entry.metrics.queued(-(entry.queue.len() as i64));
            entry.registered = true;
            entry.metrics = Rc::new(metrics.service(service.as_str(), batch));
            entry.metrics.set_queued(entry.queue.len() as i64);
        }
        entry.orphaned_since = None;
        if !entry.workers.contains(&worker) {
            entry.workers.push(worker);
            entry.metrics.workers.set(entry.workers.len() as i64);
        }
    }

    fn detach(&mut self, clock: Clock, service: &ServiceName, worker: WorkerKey) {
        if let Some(entry) = self.services.named_mut(service) {
            entry.workers.retain(|w| *w != worker);
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
            .filter(|s| !self.services.named(s).is_some_and(|e| e.registered))
            .count();
        if new == 0 {
            return false;
        }
        let registered = self.services.values().filter(|s| s.registered).count();
        registered + new > self.cfg.max_services
    }

    /// Forgets registered services that have had no worker, queue or in-flight work for
    /// the retention period, and their metric series.
    pub(super) fn forget_orphaned_services(&mut self, clock: Clock) {
        let retention = self.cfg.service_retention;
        let gone: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|(_, s)| {
                s.queue.is_empty()
                    && s.in_flight == 0
                    && s.orphaned_since
                        .is_some_and(|t| clock.now.saturating_duration_since(t) >= retention)
            })
            .map(|(key, _)| key)
            .collect();
        for key in gone {
            let Some(Service { name, .. }) = self.services.remove(key) else {
                continue;
            };
            self.metrics.forget_service(name.as_str());
            self.affinity.retain(|(s, _), _| *s != name);
            tracing::info!(service = %name, "service forgotten after its retention period without workers");
        }
    }

    /// Drops a worker: its idempotent in-flight jobs go back to the front of their queue,
    /// the others are answered `worker_lost` (they may have executed).
    pub(super) fn remove_worker(&mut self, clock: Clock, key: WorkerKey, why: Departure) {
        let Some(w) = self.workers.remove(key) else {
            return;
        };
        match why {
            Departure::Expired => self.metrics.workers_expired.inc(),
            Departure::Disconnected => self.metrics.worker_disconnects.inc(),
            Departure::Replaced | Departure::Unreachable => {}
        }
        tracing::warn!(worker = %w.id, reason = ?why, in_flight = w.in_flight.len(), "worker removed");
        for s in &w.services {
            self.detach(clock, s, key);
        }
        let mut jobs: Vec<JobId> = w.in_flight.into_iter().collect();
        jobs.sort();
        for job_id in jobs.into_iter().rev() {
            self.fail_in_flight(job_id, &w.id);
        }
        for s in &w.services {
            if let Some(key) = self.services.key(s) {
                self.pump(key);
                self.fail_unserved(clock, key);
            }
        }
    }

    fn fail_in_flight(&mut self, job_id: JobId, worker: &WorkerId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if let Some(s) = self.services.get_mut(job.entry) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.metrics.executing(-1);
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
    fn fail_unserved(&mut self, clock: Clock, service: ServiceKey) {
        if self.has_workers(service) {
            return;
        }
        let Some((name, queued)) = self.services.get(service).map(|s| {
            let queued: Vec<JobId> = s.queue.jobs().collect();
            (s.name.clone(), queued)
        }) else {
            return;
        };
        let grace_end = clock.unix_ms + self.cfg.grace_ms;
        for job_id in queued {
            if self.jobs.get(&job_id).is_some_and(|j| j.undelivered) {
                continue;
            }
            if self.cfg.grace_ms == 0 {
                self.unqueue(job_id);
                let msg = format!("no worker offers {name}");
                self.finish(job_id, Err((ErrorCode::UnknownService, msg)), None);
            } else if let Some(job) = self.jobs.get(&job_id) {
                let at = job.deadline_ms.min(grace_end);
                self.set_timer(job_id, at);
            }
        }
    }
}
