//! Time: worker expiry, the heartbeat round (with its sweeps), requests abandoned past
//! their deadline in flight, and the timers of queued requests.

use tradeplex_proto::{ErrorCode, JobId};

use super::registry::Departure;
use super::workers::WorkerKey;
use super::{Clock, Dispatcher, Out};
use crate::metrics::WORKER_STATES;

impl Dispatcher {
    /// Expires silent workers, sends heartbeats, and answers queued requests whose
    /// deadline (or unknown-service grace) has passed.
    pub(crate) fn tick(&mut self, clock: Clock) {
        self.expire_workers(clock);
        if clock.now >= self.next_heartbeat {
            self.heartbeat(clock);
        }
        self.fire_timers(clock);
    }

    fn expire_workers(&mut self, clock: Clock) {
        let window = self.cfg.liveness_window();
        let dead: Vec<WorkerKey> = self
            .workers
            .iter()
            .filter(|(_, w)| clock.now.saturating_duration_since(w.last_seen) > window)
            .map(|(k, _)| k)
            .collect();
        for key in dead {
            self.remove_worker(clock, key, Departure::Expired);
        }
    }

    pub(super) fn heartbeat(&mut self, clock: Clock) {
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
        for w in self.workers.values() {
            self.out.push(Out::Heartbeat {
                to: w.identity.clone(),
            });
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
        let service = job.entry;
        let key = job.worker;
        let worker = key.and_then(|k| self.workers.get_mut(k));
        let worker_id = worker.map(|w| {
            w.in_flight.remove(&job_id);
            w.id
        });
        if let Some(s) = self.services.get_mut(service) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.metrics.executing(-1);
        }
        self.metrics.requests_abandoned.inc();
        let msg = format!(
            "worker did not answer within {grace_ms} ms after the deadline: outcome unknown"
        );
        tracing::warn!(%job_id, worker = ?worker_id, "in-flight request abandoned");
        self.finish(job_id, Err((ErrorCode::WorkerLost, msg)), worker_id);
        match key {
            Some(k) => self.pump_worker(k),
            None => self.pump(service),
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
            let (deadline, entry, undelivered) = (job.deadline_ms, job.entry, job.undelivered);
            let service = job.service.clone();
            if clock.unix_ms >= deadline {
                self.unqueue(job_id);
                let answer = self.expired_answer(job_id);
                self.finish(job_id, Err(answer), None);
            } else if !self.has_workers(entry) && !undelivered {
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
}
