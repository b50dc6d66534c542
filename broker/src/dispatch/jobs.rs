//! A request's record while the broker holds it, and the end of its life: out of the
//! queue, off the timer set, answered and forgotten.

use std::time::Instant;

use tradeplex_proto::{ErrorCode, JobId, RequestId, ServiceName, WorkerId};

use super::services::ServiceKey;
use super::workers::WorkerKey;
use super::{Body, Dispatcher, Identity, Out};
use crate::risk;

pub(super) struct Job {
    pub(super) client: Identity,
    pub(super) id: RequestId,
    pub(super) service: ServiceName,
    /// Its service's entry, set when it is queued (the default key finds nothing).
    pub(super) entry: ServiceKey,
    pub(super) deadline_ms: u64,
    pub(super) idempotent: bool,
    pub(super) target: Option<WorkerId>,
    pub(super) affinity: Option<String>,
    /// Kept until the job is answered, so a refused, undeliverable or retried request is
    /// re-dispatched with its own bytes (deliveries share it, they do not copy it).
    pub(super) body: Body,
    /// Workers that refused it without executing (`unavailable`); never offered it again.
    pub(super) refused_by: Vec<WorkerId>,
    /// A send to its worker failed (the connection was gone): it waits for a worker until
    /// its deadline rather than the unknown-service grace, since the worker is most likely
    /// re-registering on a new connection.
    pub(super) undelivered: bool,
    pub(super) received: Instant,
    /// The worker executing it, once delivered.
    pub(super) worker: Option<WorkerKey>,
    /// The wall-clock ms at which the timer set looks at this job while queued.
    pub(super) timer_ms: Option<u64>,
    /// An order the risk stage admitted: counted as in flight until the job is answered.
    pub(super) risk_ticket: Option<risk::Ticket>,
    /// A cancel the broker sent itself for a halt (the order id): its answer is logged
    /// and counted, never sent to a client.
    pub(super) halt_cancel: Option<String>,
    /// The audit id of a journaled order or cancel: its outcome is journaled too.
    pub(super) audit_rid: Option<String>,
    /// Its client reads BATCH: the answer may go with others to it in one message.
    pub(super) batch: bool,
}

impl Job {
    pub(super) fn refused(&self, worker: &WorkerId) -> bool {
        self.refused_by.contains(worker)
    }
}

impl Dispatcher {
    /// A new job id (never reused while the broker runs).
    pub(super) fn new_job_id(&mut self) -> JobId {
        let id = JobId(self.next_job);
        self.next_job += 1;
        id
    }

    /// Queues a new job at the back of its client's lane and delivers what can go now.
    /// Only a job still queued afterwards gets its timer (at `timer_ms`): most requests are
    /// delivered at once and need none.
    pub(super) fn enqueue(&mut self, job_id: JobId, mut job: Job, timer_ms: u64) {
        // The admission looked the service up already: its key is kept unless the entry
        // has to be made now.
        let key = match self.services.get(job.entry) {
            Some(_) => job.entry,
            None => self.service_entry(&job.service),
        };
        job.entry = key;
        if let Some(entry) = self.services.get_mut(key) {
            entry.queue.push_back(&job.client, job_id);
            entry.metrics.queued(1);
        }
        self.jobs.insert(job_id, job);
        self.pump(key);
        if self.jobs.get(&job_id).is_some_and(|j| j.worker.is_none()) {
            self.set_timer(job_id, timer_ms);
        }
    }

    pub(super) fn requeue_front(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        let (service, client, at) = (job.service.clone(), job.client.clone(), job.deadline_ms);
        // Looked up by name: the entry the job was queued in is normally still there, but
        // a requeue is rare enough not to rely on it.
        let key = self.service_entry(&service);
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.entry = key;
        }
        if let Some(entry) = self.services.get_mut(key) {
            entry.queue.push_front(&client, job_id);
            entry.metrics.queued(1);
        }
        self.set_timer(job_id, at);
    }

    /// Takes a job out of its service's queue (and its timer off the timer set).
    pub(super) fn unqueue(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(s) = self.services.get_mut(job.entry) else {
            return;
        };
        if s.queue.remove(&job.client, job_id) {
            s.metrics.queued(-1);
        }
        if let Some(at) = job.timer_ms.take() {
            self.timers.remove(&(at, job_id));
        }
    }

    pub(super) fn set_timer(&mut self, job_id: JobId, at: u64) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if let Some(old) = job.timer_ms.replace(at) {
                self.timers.remove(&(old, job_id));
            }
            self.timers.insert((at, job_id));
        }
    }

    /// Answers a job and forgets it.
    pub(super) fn finish(
        &mut self,
        job_id: JobId,
        result: Result<Body, (ErrorCode, String)>,
        worker: Option<WorkerId>,
    ) {
        let Some(mut job) = self.jobs.remove(&job_id) else {
            return;
        };
        if let Some(at) = job.timer_ms {
            self.timers.remove(&(at, job_id));
        }
        self.settle_risk(&mut job, &result, worker);
        // Whether the service is kept does not depend on the answer (it is no longer
        // in flight), and the answer's metrics go to `_unknown` for an unregistered one
        // either way.
        self.forget_empty_service(job.entry);
        if let Some(order) = &job.halt_cancel {
            self.halt_cancel_answered(order, &result, worker);
        } else {
            self.answer_client(job, result, worker);
        }
    }

    /// The risk stage's side of an answer: an admitted order stops counting as in flight,
    /// and a journaled request's outcome is journaled.
    fn settle_risk(
        &self,
        job: &mut Job,
        result: &Result<Body, (ErrorCode, String)>,
        worker: Option<WorkerId>,
    ) {
        let Some(stage) = &self.risk else {
            return;
        };
        if let Some(ticket) = job.risk_ticket.take() {
            stage.settle(ticket);
        }
        if let Some(rid) = job.audit_rid.take() {
            let r = match result {
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
    }

    /// The broker's own cancel (a halt's) was answered: logged and counted, never
    /// delivered to a client.
    fn halt_cancel_answered(
        &self,
        order: &str,
        result: &Result<Body, (ErrorCode, String)>,
        worker: Option<WorkerId>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err((code, _)) => code.name(),
        };
        if let Some(stage) = &self.risk {
            stage.count_halt_cancel(outcome);
        }
        match result {
            Ok(_) => tracing::info!(%order, ?worker, "halt: cancel answered ok"),
            Err((code, message)) => {
                tracing::warn!(%order, ?worker, code = code.name(), %message, "halt: cancel failed")
            }
        }
    }

    /// The REPLY or ERROR a client gets for its request, counted with its latency.
    fn answer_client(
        &mut self,
        job: Job,
        result: Result<Body, (ErrorCode, String)>,
        worker: Option<WorkerId>,
    ) {
        let elapsed = job.received.elapsed().as_secs_f64();
        let metrics = self.service_metrics(job.entry);
        let (to, id, batch) = (job.client, job.id, job.batch);
        match result {
            Ok(body) => {
                metrics.answered(None, elapsed);
                let worker = worker.unwrap_or(self.broker_id);
                self.out.push(Out::Reply {
                    to,
                    id,
                    worker,
                    body,
                    batch,
                });
            }
            Err((code, message)) => {
                metrics.answered(Some(code), elapsed);
                self.out.push(Out::Error {
                    to,
                    id,
                    code,
                    message,
                    worker,
                    batch,
                });
            }
        }
    }

    fn forget_empty_service(&mut self, service: ServiceKey) {
        if self
            .services
            .get(service)
            .is_some_and(|s| !s.registered && s.queue.is_empty() && s.in_flight == 0)
        {
            self.services.remove(service);
        }
    }
}
