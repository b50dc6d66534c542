//! The broker's own `tpx.*` services: `tpx.status`, the kill switch `tpx.halt` /
//! `tpx.resume` with the cancels a halt sends to the workers holding the orders, the risk
//! limits at runtime (`tpx.risk`) and gap recovery (`tpx.replay`).

use tradeplex_proto::client::RequestHeader;
use tradeplex_proto::mgmt::{
    HaltReply, HaltRequest, ReplayReply, ReplayRequest, ResumeReply, ResumeRequest, ServiceStatus,
    StatusReply, WorkerStatus, HALT_SERVICE, MAX_HALT_ACCOUNT, MAX_HALT_REASON, REPLAY_SERVICE,
    RESUME_SERVICE, RISK_SERVICE,
};
use tradeplex_proto::model::{CancelRequest, GatewayRequest, OrderId};
use tradeplex_proto::{ErrorCode, RequestId, ServiceName};

use super::jobs::Job;
use super::{Body, Clock, Dispatcher, Identity, Out};
use crate::metrics::ServiceMetrics;
use crate::risk;

/// The deadline of a cancel a halt sends (from the halt), ms.
const HALT_CANCEL_TIMEOUT_MS: u64 = 5000;
/// The queue identity of the broker's own jobs (halt cancels); never sent to.
const BROKER_ORIGIN: &[u8] = b"\0tpx.broker";

impl Dispatcher {
    pub(super) fn answer_mgmt(
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
            HALT_SERVICE => may_halt(caller, HALT_SERVICE)
                .and_then(|()| decode_mgmt::<HaltRequest>(body))
                .and_then(|r| self.halt(clock, actor(caller, &client), r))
                .and_then(|r| encode_mgmt(&r)),
            RESUME_SERVICE => may_halt(caller, RESUME_SERVICE)
                .and_then(|()| decode_mgmt::<ResumeRequest>(body))
                .and_then(|r| self.resume(actor(caller, &client), r))
                .and_then(|r| encode_mgmt(&r)),
            REPLAY_SERVICE => self.replay(body).and_then(|r| encode_mgmt(&r)),
            _ => encode_mgmt(&self.status(clock)),
        };
        let body = match reply {
            Ok(body) => body,
            Err((code, message)) => {
                if code == ErrorCode::Forbidden && h.service.as_str() != RISK_SERVICE {
                    if let Some(s) = &self.risk {
                        s.refused_halt(caller, h.service.as_str(), &message);
                    }
                }
                m.answered(Some(code), 0.0);
                self.send_error(client, h.id, code, message);
                return;
            }
        };
        m.answered(None, 0.0);
        self.out.push(Out::Reply {
            to: client,
            id: h.id,
            worker: self.broker_id,
            body: Body::from(body),
            batch: false,
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
    fn halt(
        &mut self,
        clock: Clock,
        by: risk::Actor<'_>,
        r: HaltRequest,
    ) -> Result<HaltReply, (ErrorCode, String)> {
        check_len("account", &r.account, MAX_HALT_ACCOUNT)?;
        check_len("reason", &r.reason, MAX_HALT_REASON)?;
        let stage = self.risk.clone().ok_or_else(no_stage)?;
        let account = (!r.account.is_empty()).then_some(r.account.as_str());
        let (halt, orders, mut skipped) = stage
            .halt_by(clock.unix_ms, account, &r.reason, &by)
            .map_err(|e| (ErrorCode::Overloaded, e))?;
        let mut sent = 0u32;
        for b in &orders {
            if self.send_halt_cancel(clock, &stage, b) {
                sent = sent.saturating_add(1);
            } else {
                skipped = skipped.saturating_add(1);
            }
        }
        tracing::warn!(account = %halt.account, reason = %halt.reason, by = %halt.by, cancels_sent = sent, cancels_skipped = skipped, "trading halted");
        Ok(HaltReply {
            account: halt.account,
            reason: halt.reason,
            since_ms: halt.since_ms,
            cancels_sent: sent,
            cancels_skipped: skipped,
        })
    }

    /// `tpx.resume`: lifts the account's halt (or every halt).
    fn resume(
        &mut self,
        by: risk::Actor<'_>,
        r: ResumeRequest,
    ) -> Result<ResumeReply, (ErrorCode, String)> {
        check_len("account", &r.account, MAX_HALT_ACCOUNT)?;
        let stage = self.risk.clone().ok_or_else(no_stage)?;
        let account = (!r.account.is_empty()).then_some(r.account.as_str());
        let (resumed, halts) = stage.resume_by(account, &by);
        tracing::warn!(account = account.unwrap_or("(all)"), by = by.name.unwrap_or(""), resumed = ?resumed, still_halted = halts.len(), "trading resumed");
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
            .workers
            .with_id(&target)
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
        let job_id = self.new_job_id();
        let deadline_ms = clock.unix_ms + HALT_CANCEL_TIMEOUT_MS;
        let job = Job {
            client: BROKER_ORIGIN.to_vec(),
            id: RequestId(job_id.0),
            service,
            entry: Default::default(),
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
            batch: false,
        };
        stage.count_halt_cancel("sent");
        tracing::info!(order = %b.order_id, worker = %target, "halt: cancel sent");
        self.enqueue(job_id, job, deadline_ms);
        true
    }

    /// The `tpx.status` reply.
    pub(crate) fn status(&self, clock: Clock) -> StatusReply {
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
            .values()
            .filter(|s| s.registered)
            .map(|s| ServiceStatus {
                service: s.name.clone(),
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

/// `tpx.halt` / `tpx.resume` are for admins once any admin is configured; with none, for
/// every client the broker admits (stopping trading is the safe direction, and a broker
/// without admins must still have a kill switch).
fn may_halt(caller: &risk::Caller, service: &str) -> Result<(), (ErrorCode, String)> {
    if caller.may_halt() {
        return Ok(());
    }
    Err((
        ErrorCode::Forbidden,
        format!(
            "{service} is for admin clients only once admins are configured; {} is not one \
             ([[curve.clients]] admin = true, or [risk] admins)",
            caller.name.as_deref().unwrap_or("an unnamed client")
        ),
    ))
}

fn actor<'a>(caller: &'a risk::Caller, client: &'a Identity) -> risk::Actor<'a> {
    risk::Actor {
        name: caller.name.as_deref(),
        client: client.as_ref(),
    }
}

fn no_stage() -> (ErrorCode, String) {
    (
        ErrorCode::Unavailable,
        "this broker has no risk stage (kill switch unavailable)".into(),
    )
}
