//! Dispatch proper: which queued job goes to which worker (targets, affinity, least
//! loaded then least recently used, clients in turn) and the delivery itself.

use tradeplex_proto::{worker, ErrorCode, JobId, ServiceName, WorkerId};

use super::jobs::Job;
use super::services::ServiceKey;
use super::workers::WorkerKey;
use super::{Dispatcher, Out};

/// Most affinity bindings kept; beyond it, bindings of dead workers are swept first.
const MAX_AFFINITY: usize = 100_000;

/// What one client's turn at a service's queue came to.
enum Turn {
    Delivered,
    Waiting,
    NoRoom,
}

/// Where one queued job can go now.
enum Choice {
    Deliver(WorkerKey),
    Wait,
    NoRoom,
    Fail(ErrorCode, String),
}

impl Dispatcher {
    /// Delivers what `service`'s queue can deliver now: one job per client per round, the
    /// clients in turn, until a round delivers nothing or no worker has room.
    pub(super) fn pump(&mut self, service: ServiceKey) {
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
    fn serve_next_client(&mut self, service: ServiceKey) -> Turn {
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
    pub(super) fn pump_worker(&mut self, worker: WorkerKey) {
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        let n = w.services.len();
        w.next_pump = (w.next_pump + 1) % n.max(1);
        let start = w.next_pump;
        // Looked up one at a time (a slot index each), so a reply allocates nothing.
        for k in 0..n {
            let backlog = (self.workers.get(worker))
                .and_then(|w| w.services.get((start + k) % n))
                .and_then(|s| self.services.key(s))
                .filter(|key| self.services.get(*key).is_some_and(|q| !q.queue.is_empty()));
            if let Some(key) = backlog {
                self.pump(key);
            }
        }
    }

    /// [`Self::pump`] for a service known by name (a READY's).
    pub(super) fn pump_named(&mut self, service: &ServiceName) {
        if let Some(key) = self.services.key(service) {
            self.pump(key);
        }
    }

    fn choose(&mut self, key: ServiceKey, job_id: JobId) -> Choice {
        let Some(job) = self.jobs.get(&job_id) else {
            return Choice::Wait;
        };
        let service = &job.service;
        if let Some(target) = job.target {
            return self.choose_target(service, job, target);
        }
        if !job.refused_by.is_empty() && self.refused_by_all(key, job) {
            let n = job.refused_by.len();
            return Choice::Fail(
                ErrorCode::Unavailable,
                format!("refused by every worker of {service} ({n}); not executed"),
            );
        }
        if let Some(affinity) = &job.affinity {
            let bound = self
                .affinity
                .get(&(service.clone(), affinity.clone()))
                .and_then(|id| {
                    let k = self.workers.key_of_id(id)?;
                    self.workers
                        .get(k)
                        .filter(|w| w.offers(service) && !job.refused(&w.id))
                        .map(|w| (k, w.has_room()))
                });
            return match bound {
                Some((i, true)) => Choice::Deliver(i),
                Some((_, false)) => Choice::Wait,
                // Unbound, or bound to a worker that refused it: bind the key afresh.
                None => match self.least_loaded(key, &job.refused_by) {
                    Some(i) => {
                        let binding = (service.clone(), affinity.clone());
                        self.bind_affinity(binding, i);
                        Choice::Deliver(i)
                    }
                    None => Choice::Wait,
                },
            };
        }
        let refused = !job.refused_by.is_empty();
        match self.least_loaded(key, &job.refused_by) {
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
        match (self.workers.key_of_id(&target)).and_then(|k| Some((k, self.workers.get(k)?))) {
            Some((k, w)) if w.offers(service) => {
                if w.has_room() {
                    Choice::Deliver(k)
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
    fn refused_by_all(&self, service: ServiceKey, job: &Job) -> bool {
        self.services.get(service).is_some_and(|s| {
            s.workers
                .iter()
                .filter_map(|k| self.workers.get(*k))
                .all(|w| job.refused(&w.id))
        })
    }

    fn bind_affinity(&mut self, binding: (ServiceName, String), worker: WorkerKey) {
        let Some(id) = self.workers.get(worker).map(|w| w.id) else {
            return;
        };
        if self.affinity.len() >= MAX_AFFINITY {
            let live = &self.workers;
            self.affinity.retain(|_, w| live.has_id(w));
        }
        if self.affinity.len() < MAX_AFFINITY {
            self.affinity.insert(binding, id);
        }
    }

    /// The worker of `service` with the fewest requests in flight and room for one more,
    /// ties to the least recently used, leaving out those in `refused`.
    fn least_loaded(&self, service: ServiceKey, refused: &[WorkerId]) -> Option<WorkerKey> {
        let s = self.services.get(service)?;
        s.workers
            .iter()
            .filter_map(|k| self.workers.get(*k).map(|w| (*k, w)))
            .filter(|(_, w)| w.has_room() && !refused.contains(&w.id))
            .min_by_key(|(_, w)| (w.in_flight.len(), w.last_used))
            .map(|(k, _)| k)
    }

    fn deliver(&mut self, job_id: JobId, to: WorkerKey) {
        self.use_counter += 1;
        let (Some(w), Some(job)) = (self.workers.get_mut(to), self.jobs.get_mut(&job_id)) else {
            // Not reached: `choose` has just found the worker. Were it gone, the job goes
            // back to the front of its queue rather than being dropped.
            self.requeue_front(job_id);
            return;
        };
        w.in_flight.insert(job_id);
        w.last_used = self.use_counter;
        job.worker = Some(to);
        let header = worker::RequestHeader {
            job: job_id,
            id: job.id,
            service: job.service.clone(),
            deadline_ms: job.deadline_ms,
            idempotent: job.idempotent,
        };
        if let Some(s) = self.services.get_mut(job.entry) {
            s.in_flight += 1;
            s.metrics.executing(1);
        }
        self.out.push(Out::Deliver {
            to: w.identity.clone(),
            header,
            body: job.body.share(),
            batch: w.batch,
        });
    }
}
