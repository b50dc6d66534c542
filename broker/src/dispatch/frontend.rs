//! Requests from clients: admission (deadline, limits, target), the risk stage, and
//! queueing; answers to messages that could not be read.

use std::time::Instant;

use tradeplex_proto::client::RequestHeader;
use tradeplex_proto::mgmt::{
    HALT_SERVICE, REPLAY_SERVICE, RESUME_SERVICE, RISK_SERVICE, STATUS_SERVICE,
};
use tradeplex_proto::{ErrorCode, RequestId};

use super::jobs::Job;
use super::services::ServiceKey;
use super::{Body, Clock, Dispatcher, Identity, Phase};
use crate::risk;

/// Most services tracked at once (registered ones plus ones waiting out a grace period).
const MAX_SERVICES: usize = 4096;
/// Most client identities tracked for the `tradeplex_clients` gauge.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// What the risk stage gives a request it lets through: the ticket of an admitted order
/// (settled when the job is answered) and the audit id its outcome is journaled under.
type Admitted = (Option<risk::Ticket>, Option<String>);

impl Dispatcher {
    /// A REQUEST from an anonymous client (see [`Dispatcher::on_request_from`]).
    #[cfg(test)]
    pub(crate) fn on_request(
        &mut self,
        clock: Clock,
        client: Identity,
        h: RequestHeader,
        body: Body,
    ) {
        self.on_request_from(clock, client, &risk::Caller::default(), h, body);
    }

    /// A REQUEST from a client the socket loop identified as `caller`.
    pub(crate) fn on_request_from(
        &mut self,
        clock: Clock,
        client: Identity,
        caller: &risk::Caller,
        h: RequestHeader,
        body: Body,
    ) {
        self.note_client(&client, clock.now);
        // Looked up by name once; from here on the request's service is its key.
        let entry = self.services.key(&h.service);
        let metrics = match entry {
            _ if h.service.is_mgmt() => self.mgmt_metrics.clone(),
            Some(key) => self.service_metrics(key),
            None => self.unknown_metrics.clone(),
        };
        metrics.received();
        if let Some((code, message)) = self.admission_error(clock, &h, entry) {
            metrics.answered(Some(code), 0.0);
            self.send_error(client, h.id, code, message);
            return;
        }
        if h.service.is_mgmt() {
            self.answer_mgmt(clock, client, caller, &h, &body, &metrics);
            return;
        }
        let (risk_ticket, audit_rid) = match self.pass_risk(clock, &client, caller, &h, &body) {
            Ok(admitted) => admitted,
            Err((code, message)) => {
                metrics.answered(Some(code), 0.0);
                self.send_error(client, h.id, code, message);
                return;
            }
        };
        let has_workers = entry.is_some_and(|key| self.has_workers(key));
        let job_id = self.new_job_id();
        let timer_ms = if has_workers {
            h.deadline_ms
        } else {
            h.deadline_ms.min(clock.unix_ms + self.cfg.grace_ms)
        };
        let job = Job {
            client,
            id: h.id,
            service: h.service,
            entry: entry.unwrap_or_default(),
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
            batch: h.batch,
        };
        self.enqueue(job_id, job, timer_ms);
    }

    /// The risk stage's verdict on a request, journaled: the ticket of an admitted order and
    /// the audit id to queue it with, or the refusal to answer. An order the journal cannot
    /// record is refused `unavailable`, never sent.
    fn pass_risk(
        &self,
        clock: Clock,
        client: &Identity,
        caller: &risk::Caller,
        h: &RequestHeader,
        body: &Body,
    ) -> Result<Admitted, (ErrorCode, String)> {
        let mut verdict = (self.risk.as_ref()).map(|r| r.check_from(clock.unix_ms, caller, body));
        let mut audit_rid = None;
        if let (Some(stage), Some(v)) = (&self.risk, &verdict) {
            let name = caller.name.as_deref();
            match stage.audit_request_from(clock.unix_ms, client, name, h.id.0, body, v) {
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
        match verdict {
            Some(risk::Verdict::Refuse(code, message)) => Err((code, message)),
            Some(risk::Verdict::Admitted(ticket)) => Ok((Some(ticket), audit_rid)),
            Some(risk::Verdict::Pass) | None => Ok((None, audit_rid)),
        }
    }

    /// Why a request is refused before it is queued, if it is.
    fn admission_error(
        &self,
        clock: Clock,
        h: &RequestHeader,
        entry: Option<ServiceKey>,
    ) -> Option<(ErrorCode, String)> {
        if self.phase != Phase::Serving {
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
        let service = entry.and_then(|key| self.services.get(key));
        if !entry.is_some_and(|key| self.has_workers(key)) && self.cfg.grace_ms == 0 {
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
                .workers
                .with_id(&target)
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

    /// Answers a client whose message could not be decoded.
    pub(crate) fn reject_client(
        &mut self,
        client: Identity,
        id: RequestId,
        code: ErrorCode,
        message: String,
    ) {
        self.send_error(client, id, code, message);
    }

    fn note_client(&mut self, client: &Identity, now: Instant) {
        if let Some(seen) = self.clients.get_mut(client) {
            *seen = now;
        } else if self.clients.len() < MAX_TRACKED_CLIENTS {
            self.clients.insert(client.clone(), now);
        }
    }
}
