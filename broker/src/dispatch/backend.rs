//! Messages from workers: answers to jobs (including refusals and garbled ones), and
//! the undo of a delivery the socket could not make.

use tradeplex_proto::worker;
use tradeplex_proto::{ErrorCode, JobId};

use super::registry::Departure;
use super::workers::WorkerKey;
use super::{Body, Clock, Dispatcher, Identity};

impl Dispatcher {
    /// A decoded message from a worker.
    pub(crate) fn on_worker(
        &mut self,
        clock: Clock,
        from: &[u8],
        msg: worker::Message,
        body: Body,
    ) {
        if let worker::Message::Ready(h) = msg {
            self.on_ready(clock, from.to_vec(), h);
            return;
        }
        let Some((key, w)) = self.workers.on_mut(from) else {
            if !matches!(msg, worker::Message::Disconnect(_)) {
                // A worker we do not know (e.g. we restarted): ask it to register again.
                self.disconnect(from.to_vec(), worker::REASON_NOT_REGISTERED.into());
            }
            return;
        };
        w.last_seen = clock.now;
        match msg {
            worker::Message::Reply(h) => self.complete(key, h.job, Ok(body)),
            worker::Message::Error(h) => {
                // `risk_rejected` is the broker's own answer: a worker cannot claim it.
                let code = ErrorCode::from_u16(h.code)
                    .filter(|c| *c != ErrorCode::RiskRejected)
                    .unwrap_or(ErrorCode::WorkerError);
                self.complete(key, h.job, Err((code, h.message)))
            }
            worker::Message::Heartbeat => {}
            worker::Message::Disconnect(_) => {
                self.remove_worker(clock, key, Departure::Disconnected)
            }
            // A BATCH is opened by the socket loop; one reaching here is misplaced.
            worker::Message::Request(_) | worker::Message::Ready(_) | worker::Message::Batch(_) => {
                self.metrics.bad_frame("backend", "unexpected_command");
            }
        }
    }

    /// A REPLY or ERROR from `from` that failed to decode but names `job`: the job's client
    /// is answered `worker_error` (what the worker did is not known: query an order) and the
    /// worker's slot is freed. A job `from` does not hold counts as a late reply.
    pub(crate) fn on_garbled_answer(
        &mut self,
        clock: Clock,
        from: &[u8],
        job: JobId,
        detail: &str,
    ) {
        let Some((key, w)) = self.workers.on_mut(from) else {
            self.metrics.late_replies.inc();
            return;
        };
        w.last_seen = clock.now;
        let msg = format!("worker sent a malformed answer ({detail}); outcome unknown");
        self.complete(key, job, Err((ErrorCode::WorkerError, msg)));
    }

    /// Tells a worker that one of its messages was refused (`reason` is
    /// `<code name>: <detail>`); any registration it has stands.
    pub(crate) fn refuse_worker_message(&mut self, to: Identity, code: ErrorCode, detail: &str) {
        let reason = format!("{}: {detail}", code.name());
        self.disconnect(to, reason);
    }

    fn complete(
        &mut self,
        from: WorkerKey,
        job_id: JobId,
        result: Result<Body, (ErrorCode, String)>,
    ) {
        let owned = self
            .jobs
            .get(&job_id)
            .is_some_and(|j| j.worker == Some(from));
        let Some(w) = self.workers.get_mut(from).filter(|_| owned) else {
            self.metrics.late_replies.inc();
            return;
        };
        w.in_flight.remove(&job_id);
        w.served += 1;
        let worker_id = w.id;
        let Some(service) = self.jobs.get(&job_id).map(|j| j.entry) else {
            return;
        };
        if let Some(s) = self.services.get_mut(service) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.metrics.executing(-1);
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
                if let Some(key) = self.jobs.get(&job_id).map(|j| j.entry) {
                    self.pump(key);
                }
            }
            other => self.finish(job_id, other, Some(worker_id)),
        }
        self.pump_worker(from);
    }

    /// Undoes a delivery the socket could not make (the worker is gone): the request was
    /// not delivered, so it is requeued whatever its kind, and the worker dropped.
    pub(crate) fn on_send_failed(&mut self, clock: Clock, job_id: JobId) {
        let Some(key) = self.jobs.get(&job_id).and_then(|j| j.worker) else {
            return;
        };
        if let Some(w) = self.workers.get_mut(key) {
            w.in_flight.remove(&job_id);
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.worker = None;
            job.undelivered = true;
            if let Some(s) = self.services.get_mut(job.entry) {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.metrics.executing(-1);
            }
        }
        // Not delivered, whatever its kind: back to the queue (until its deadline) for
        // another worker or this worker's next registration.
        self.metrics.requests_retried.inc();
        self.requeue_front(job_id);
        self.remove_worker(clock, key, Departure::Unreachable);
    }
}
