//! Dispatcher unit tests: no sockets, no sleeps; time is advanced by hand.

use super::registry::Departure;
use super::*;
use tradeplex_proto::client::{ErrorHeader, ReplyHeader, RequestHeader};
use tradeplex_proto::mgmt::{HaltReply, HaltRequest, ResumeReply, HALT_SERVICE, RESUME_SERVICE};
use tradeplex_proto::model::GatewayRequest;
use tradeplex_proto::worker::{DisconnectHeader, ReadyHeader};
use tradeplex_proto::{ErrorCode, RequestId};

const HB: Duration = Duration::from_millis(100);

struct Harness {
    d: Dispatcher,
    clock: Clock,
    next_id: u64,
}

fn svc(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

impl Harness {
    fn new() -> Harness {
        Harness::with(0, 100)
    }

    fn with(grace_ms: u64, max_queue: usize) -> Harness {
        let clock = Clock::real();
        let cfg = DispatchConfig {
            heartbeat: HB,
            liveness: 3,
            grace_ms,
            max_queue,
            in_flight_grace: Duration::from_millis(200),
            max_services: 3,
            service_retention: Duration::from_millis(500),
        };
        Harness {
            d: Dispatcher::new(cfg, Arc::new(Metrics::new()), clock.now),
            clock,
            next_id: 1,
        }
    }

    fn ready(&mut self, identity: &[u8], services: &[&str], capacity: u32) -> WorkerId {
        let id = WorkerId::random();
        self.ready_as(identity, id, services, capacity);
        id
    }

    fn ready_as(&mut self, identity: &[u8], id: WorkerId, services: &[&str], capacity: u32) {
        self.ready_session(identity, id, services, capacity, 0);
    }

    fn ready_session(
        &mut self,
        identity: &[u8],
        id: WorkerId,
        services: &[&str],
        capacity: u32,
        session: u64,
    ) {
        let h = ReadyHeader {
            worker: id,
            services: services.iter().map(|s| svc(s)).collect(),
            capacity,
            session,
            batch: false,
        };
        self.d
            .on_worker(self.clock, identity, worker::Message::Ready(h), Body::new());
    }

    fn request(&mut self, service: &str, idempotent: bool) -> RequestId {
        self.request_with(service, idempotent, None, None, 1000)
    }

    fn request_with(
        &mut self,
        service: &str,
        idempotent: bool,
        target: Option<WorkerId>,
        affinity: Option<&str>,
        ttl_ms: u64,
    ) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let h = RequestHeader {
            id,
            service: svc(service),
            deadline_ms: self.clock.unix_ms + ttl_ms,
            idempotent,
            target,
            affinity: affinity.map(String::from),
            client: None,
            batch: false,
        };
        self.d.on_request(
            self.clock,
            b"client".to_vec(),
            h,
            Body::from(&b"payload"[..]),
        );
        id
    }

    /// Requests delivered to workers since the last drain: (worker identity, job, body).
    fn deliveries(&mut self) -> Vec<(Vec<u8>, JobId)> {
        self.drain()
            .0
            .into_iter()
            .filter_map(|(to, _, msg, _)| match msg {
                worker::Message::Request(h) => Some((to, h.job)),
                _ => None,
            })
            .collect()
    }

    /// Everything decided, by kind: (worker messages as the worker decodes them, client
    /// replies, client errors).
    #[allow(clippy::type_complexity)]
    fn drain(
        &mut self,
    ) -> (
        Vec<(Vec<u8>, worker::Command, worker::Message, Body)>,
        Vec<(ReplyHeader, Body)>,
        Vec<ErrorHeader>,
    ) {
        let mut to_workers = Vec::new();
        let mut replies = Vec::new();
        let mut errors = Vec::new();
        for out in std::mem::take(&mut self.d.out) {
            match out {
                Out::Deliver {
                    to, header, body, ..
                } => to_workers.push((
                    to,
                    worker::Command::Request,
                    worker::Message::Request(header),
                    body,
                )),
                Out::Heartbeat { to } => to_workers.push((
                    to,
                    worker::Command::Heartbeat,
                    worker::Message::Heartbeat,
                    Body::new(),
                )),
                Out::Disconnect { to, reason } => to_workers.push((
                    to,
                    worker::Command::Disconnect,
                    worker::Message::Disconnect(DisconnectHeader { reason }),
                    Body::new(),
                )),
                Out::Reply {
                    id, worker, body, ..
                } => replies.push((ReplyHeader { id, worker }, body)),
                Out::Error {
                    id,
                    code,
                    message,
                    worker,
                    ..
                } => {
                    let mut h = ErrorHeader::new(id, code, message);
                    h.worker = worker;
                    errors.push(h);
                }
            }
        }
        (to_workers, replies, errors)
    }

    fn reply(&mut self, identity: &[u8], job: JobId) {
        let msg = worker::Message::Reply(worker::ReplyHeader { job });
        self.d
            .on_worker(self.clock, identity, msg, Body::from(&b"done"[..]));
    }

    fn advance(&mut self, d: Duration) {
        self.clock = self.clock.advance(d);
        self.d.tick(self.clock);
    }
}

#[test]
fn least_loaded_then_least_recently_used() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 4);
    h.ready(b"B", &["echo"], 4);
    h.ready(b"C", &["echo"], 4);
    for _ in 0..6 {
        h.request("echo", true);
    }
    let got: Vec<Vec<u8>> = h.deliveries().into_iter().map(|(w, _)| w).collect();
    for w in [b"A", b"B", b"C"] {
        assert_eq!(
            got.iter().filter(|g| g.as_slice() == w).count(),
            2,
            "{got:?}"
        );
    }
}

#[test]
fn capacity_is_never_exceeded_and_queue_drains_on_reply() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    h.request("echo", true);
    h.request("echo", true);
    let first = h.deliveries();
    assert_eq!(
        first.len(),
        1,
        "capacity 1 must hold the second request back"
    );
    h.reply(b"A", first[0].1);
    let (msgs, replies, _) = h.drain();
    assert_eq!(replies.len(), 1);
    assert_eq!(&replies[0].1[..], b"done");
    let second: Vec<_> = msgs
        .iter()
        .filter(|m| m.1 == worker::Command::Request)
        .collect();
    assert_eq!(second.len(), 1);
}

#[test]
fn queued_request_past_deadline_is_answered_and_never_delivered() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    h.request("echo", false);
    let late = h.request_with("echo", false, None, None, 50);
    let first = h.deliveries();
    assert_eq!(first.len(), 1);
    h.advance(Duration::from_millis(60));
    let (_, _, errors) = h.drain();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].id, late);
    assert_eq!(errors[0].name, "deadline_exceeded");
    h.reply(b"A", first[0].1);
    assert!(
        h.deliveries().is_empty(),
        "the expired request must never reach the worker"
    );
}

#[test]
fn expired_deadline_on_arrival_is_refused() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    let id = RequestId(42);
    let hdr = RequestHeader {
        id,
        service: svc("echo"),
        deadline_ms: h.clock.unix_ms - 1,
        idempotent: true,
        target: None,
        affinity: None,
        client: None,
        batch: false,
    };
    h.d.on_request(h.clock, b"c".to_vec(), hdr, Body::new());
    let (msgs, _, errors) = h.drain();
    assert!(msgs.iter().all(|m| m.1 != worker::Command::Request));
    assert_eq!(errors[0].name, "deadline_exceeded");
}

#[test]
fn unknown_service_is_answered_at_once() {
    let mut h = Harness::new();
    h.request("nobody", true);
    let (_, _, errors) = h.drain();
    assert_eq!(errors[0].name, "unknown_service");
    assert_eq!(h.d.pending(), 0);
}

#[test]
fn unknown_service_waits_out_its_grace_for_a_worker() {
    let mut h = Harness::with(200, 100);
    h.request("late", true);
    let gone = h.request("never", true);
    assert!(h.drain().2.is_empty());
    h.ready(b"A", &["late"], 1);
    assert_eq!(h.deliveries().len(), 1);
    h.advance(Duration::from_millis(250));
    let (_, _, errors) = h.drain();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].id, errors[0].name.as_str()),
        (gone, "unknown_service")
    );
}

#[test]
fn full_queue_answers_overloaded() {
    let mut h = Harness::with(0, 2);
    h.ready(b"A", &["echo"], 1);
    for _ in 0..4 {
        h.request("echo", true);
    }
    let (_, _, errors) = h.drain();
    assert_eq!(
        errors.len(),
        1,
        "1 in flight + 2 queued, the 4th is refused"
    );
    assert_eq!(errors[0].name, "overloaded");
}

#[test]
fn dead_worker_retries_idempotent_and_loses_the_rest() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 2);
    let query = h.request("echo", true);
    let order = h.request("echo", false);
    assert_eq!(h.deliveries().len(), 2);
    h.ready(b"B", &["echo"], 2);
    // B keeps heartbeating, A stays silent past 3 intervals.
    for _ in 0..4 {
        h.clock = h.clock.advance(HB);
        h.d.on_worker(h.clock, &b"B"[..], worker::Message::Heartbeat, Body::new());
        h.d.tick(h.clock);
    }
    let (msgs, _, errors) = h.drain();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].id, errors[0].name.as_str()),
        (order, "worker_lost")
    );
    let retried: Vec<_> = msgs
        .iter()
        .filter(|m| m.1 == worker::Command::Request)
        .map(|m| (m.0.clone(), request_of(&m.2)))
        .collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].0, b"B");
    assert_eq!(retried[0].1.id, query);
    assert_eq!(h.d.worker_count(), 1);
}

#[test]
fn retried_body_is_the_original() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    h.request("echo", true);
    h.deliveries();
    h.ready(b"B", &["echo"], 1);
    let a_key = h.d.workers.key(b"A").unwrap();
    h.d.remove_worker(h.clock, a_key, Departure::Disconnected);
    let (msgs, _, _) = h.drain();
    let req = msgs
        .iter()
        .find(|m| m.1 == worker::Command::Request)
        .unwrap();
    assert_eq!(req.0, b"B");
    assert_eq!(&req.3[..], b"payload");
}

#[test]
fn target_worker_gets_the_request_and_unknown_target_is_refused() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 4);
    let b = h.ready(b"B", &["SIM"], 4);
    for _ in 0..3 {
        h.request_with("SIM", false, Some(b), None, 1000);
    }
    assert!(h.deliveries().iter().all(|(w, _)| w == b"B"));
    h.request_with("SIM", false, Some(WorkerId::random()), None, 1000);
    assert_eq!(h.drain().2[0].name, "unknown_worker");
}

#[test]
fn affinity_sticks_to_one_worker_while_it_lives() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 8);
    h.ready(b"B", &["SIM"], 8);
    for _ in 0..4 {
        h.request_with("SIM", false, None, Some("acct-1"), 1000);
        h.request("SIM", false);
    }
    let got = h.deliveries();
    let first = got[0].0.clone();
    let pinned: Vec<_> = got.iter().step_by(2).map(|(w, _)| w.clone()).collect();
    assert!(pinned.iter().all(|w| *w == first), "{pinned:?}");
}

#[test]
fn unavailable_from_worker_is_redelivered_even_for_orders() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 1);
    let order = h.request("SIM", false);
    let job = h.deliveries()[0].1;
    h.ready(b"B", &["SIM"], 1);
    let err = worker::ErrorHeader::new(job, ErrorCode::Unavailable, "gateway down");
    h.d.on_worker(h.clock, &b"A"[..], worker::Message::Error(err), Body::new());
    let got = h.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, b"B");
    h.reply(b"B", got[0].1);
    let (_, replies, _) = h.drain();
    assert_eq!(replies[0].0.id, order);
}

#[test]
fn worker_error_reaches_client_with_worker_id() {
    let mut h = Harness::new();
    let a = h.ready(b"A", &["SIM"], 1);
    h.request("SIM", false);
    let job = h.deliveries()[0].1;
    let err = worker::ErrorHeader::new(job, ErrorCode::WorkerError, "rejected");
    h.d.on_worker(h.clock, &b"A"[..], worker::Message::Error(err), Body::new());
    let (_, _, errors) = h.drain();
    assert_eq!(errors[0].name, "worker_error");
    assert_eq!(errors[0].worker, Some(a));
}

#[test]
fn a_worker_cannot_answer_risk_rejected() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 1);
    h.request("SIM", false);
    let job = h.deliveries()[0].1;
    let err = worker::ErrorHeader::new(job, ErrorCode::RiskRejected, "order_size_limit: forged");
    h.d.on_worker(h.clock, &b"A"[..], worker::Message::Error(err), Body::new());
    let (_, _, errors) = h.drain();
    assert_eq!(errors[0].name, "worker_error");
}

#[test]
fn unknown_worker_is_told_to_reregister() {
    let mut h = Harness::new();
    h.d.on_worker(h.clock, &b"X"[..], worker::Message::Heartbeat, Body::new());
    let (msgs, _, _) = h.drain();
    assert_eq!(msgs[0].1, worker::Command::Disconnect);
}

#[test]
fn late_reply_from_replaced_worker_is_ignored() {
    let mut h = Harness::new();
    let a = h.ready(b"A", &["echo"], 1);
    h.request("echo", true);
    let job = h.deliveries()[0].1;
    // The same worker id re-registers on a new socket: the job is retried there.
    h.ready_as(b"A2", a, &["echo"], 1);
    let again = h.deliveries();
    assert_eq!(again, vec![(b"A2".to_vec(), job)]);
    h.reply(b"A", job);
    assert!(
        h.drain().1.is_empty(),
        "reply from the old socket must not answer the client"
    );
    h.reply(b"A2", job);
    assert_eq!(h.drain().1.len(), 1);
}

#[test]
fn a_new_worker_is_acknowledged_with_a_heartbeat() {
    let mut h = Harness::new();
    let id = h.ready(b"A", &["echo"], 1);
    let (msgs, _, _) = h.drain();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].0.as_slice(), msgs[0].1),
        (&b"A"[..], worker::Command::Heartbeat)
    );
    h.ready_as(b"A", id, &["echo", "SIM"], 1);
    assert!(
        h.drain().0.is_empty(),
        "an update is not a new registration"
    );
}

#[test]
fn worker_states_are_counted_each_heartbeat() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    h.ready(b"B", &["echo"], 2);
    h.ready(b"C", &[], 0);
    h.request("echo", true);
    h.request("echo", true);
    h.advance(HB);
    let state = |s: &str| h.d.metrics.worker_states.with_label_values(&[s]).get();
    // A and B each got one request: A (capacity 1) is full, B busy; C drains.
    assert_eq!(
        (
            state("idle"),
            state("busy"),
            state("full"),
            state("draining")
        ),
        (0, 1, 1, 1)
    );
}

#[test]
fn heartbeats_are_sent_each_interval() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    h.drain();
    h.advance(HB);
    let (msgs, _, _) = h.drain();
    assert!(msgs.iter().any(|m| m.1 == worker::Command::Heartbeat));
}

#[test]
fn shutdown_answers_queued_then_in_flight() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    h.request("echo", false);
    h.request("echo", false);
    h.deliveries();
    h.d.begin_shutdown();
    assert_eq!(h.drain().2[0].name, "unavailable");
    h.request("echo", true);
    assert_eq!(h.drain().2[0].name, "unavailable");
    h.d.finish_shutdown();
    let (msgs, _, errors) = h.drain();
    assert_eq!(errors[0].name, "worker_lost");
    assert!(msgs.iter().any(|m| m.1 == worker::Command::Disconnect));
    assert_eq!(h.d.pending(), 0);
}

#[test]
fn a_worker_registering_after_the_shutdown_settled_is_told_to_go() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo"], 1);
    h.d.begin_shutdown();
    h.d.finish_shutdown();
    h.drain();
    // In the broker's farewell, the worker it just sent away comes back on a new socket.
    h.ready(b"A2", &["echo"], 1);
    let (msgs, _, _) = h.drain();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, b"A2".to_vec());
    assert_eq!(
        disconnect_of(&msgs[0].2).reason,
        worker::REASON_SHUTTING_DOWN
    );
    assert_eq!(h.d.worker_count(), 1, "not registered");
}

#[test]
fn status_lists_workers_and_services() {
    let mut h = Harness::new();
    h.ready(b"A", &["echo", "SIM"], 3);
    h.request("echo", true);
    let st = h.d.status(h.clock);
    assert_eq!(st.workers.len(), 1);
    assert_eq!(st.workers[0].in_flight, 1);
    assert_eq!(st.services.len(), 2);
}

fn refuse(h: &mut Harness, identity: &[u8], job: JobId) {
    let err = worker::ErrorHeader::new(job, ErrorCode::Unavailable, "gateway down");
    let msg = worker::Message::Error(err);
    h.d.on_worker(h.clock, identity, msg, Body::new());
}

/// The header of a REQUEST decision.
fn request_of(msg: &worker::Message) -> worker::RequestHeader {
    match msg {
        worker::Message::Request(h) => h.clone(),
        other => panic!("not a request: {other:?}"),
    }
}

/// The header of a DISCONNECT decision.
fn disconnect_of(msg: &worker::Message) -> DisconnectHeader {
    match msg {
        worker::Message::Disconnect(h) => h.clone(),
        other => panic!("not a disconnect: {other:?}"),
    }
}

/// Requests sent to workers since the last drain: (worker identity, job, body bytes).
fn requests_sent(h: &mut Harness) -> Vec<(Vec<u8>, JobId, Vec<u8>)> {
    h.drain()
        .0
        .into_iter()
        .filter(|m| m.1 == worker::Command::Request)
        .map(|(to, _, header, body)| {
            let rh = request_of(&header);
            (to, rh.job, body.to_vec())
        })
        .collect()
}

#[test]
fn refused_order_is_redispatched_with_its_own_body() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 1);
    h.ready(b"B", &["SIM"], 1);
    let order = h.request("SIM", false);
    let first = requests_sent(&mut h);
    assert_eq!(first.len(), 1);
    let (refuser, job, _) = first[0].clone();
    refuse(&mut h, &refuser, job);
    let retried = requests_sent(&mut h);
    assert_eq!(retried.len(), 1, "re-dispatched once");
    assert_ne!(
        retried[0].0, refuser,
        "never back to the worker that refused it"
    );
    assert_eq!(retried[0].2, b"payload", "the original body, byte for byte");
    let other = retried[0].0.clone();
    h.reply(&other, retried[0].1);
    let (_, replies, errors) = h.drain();
    assert!(errors.is_empty());
    assert_eq!(replies[0].0.id, order);
}

#[test]
fn refused_request_never_goes_back_to_the_refusing_worker() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 4);
    let order = h.request("SIM", false);
    let job = h.deliveries()[0].1;
    refuse(&mut h, b"A", job);
    let (msgs, _, errors) = h.drain();
    assert!(msgs.iter().all(|m| m.1 != worker::Command::Request));
    // Every worker of the service refused it: answered at once, not executed.
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].id, order);
    assert_eq!(errors[0].name, "unavailable");
}

#[test]
fn refused_request_nobody_else_takes_before_its_deadline_is_unavailable() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 1);
    h.ready(b"B", &["SIM"], 1);
    h.request("SIM", true);
    let order = h.request_with("SIM", false, None, None, 200);
    let sent = requests_sent(&mut h);
    assert_eq!(sent.len(), 2);
    // The order's worker refuses it; the other stays busy past the order's deadline.
    let (refuser, job, _) = sent[1].clone();
    refuse(&mut h, &refuser, job);
    assert!(
        requests_sent(&mut h).is_empty(),
        "the other worker has no room"
    );
    // Within the liveness window (300 ms), so both workers stay registered.
    h.advance(Duration::from_millis(250));
    let (msgs, _, errors) = h.drain();
    assert!(msgs.iter().all(|m| m.1 != worker::Command::Request));
    let e = errors.iter().find(|e| e.id == order).unwrap();
    assert_eq!(e.name, "unavailable", "{}", e.message);
}

#[test]
fn refused_pinned_request_is_unavailable_at_once() {
    let mut h = Harness::new();
    let a = h.ready(b"A", &["SIM"], 1);
    h.ready(b"B", &["SIM"], 1);
    let order = h.request_with("SIM", false, Some(a), None, 1000);
    let job = h.deliveries()[0].1;
    refuse(&mut h, b"A", job);
    let (msgs, _, errors) = h.drain();
    assert!(msgs.iter().all(|m| m.1 != worker::Command::Request));
    assert_eq!(
        (errors[0].id, errors[0].name.as_str()),
        (order, "unavailable")
    );
}

#[test]
fn refused_affinity_request_moves_to_another_worker() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 4);
    h.ready(b"B", &["SIM"], 4);
    h.request_with("SIM", false, None, Some("acct.x"), 1000);
    let (first, job, _) = requests_sent(&mut h)[0].clone();
    refuse(&mut h, &first, job);
    let retried = requests_sent(&mut h);
    assert_eq!(retried.len(), 1);
    assert_ne!(retried[0].0, first);
    assert_eq!(retried[0].2, b"payload");
}

#[test]
fn unreachable_worker_requeues_an_order_for_the_next_registration() {
    let mut h = Harness::new();
    let id = WorkerId::random();
    h.ready_as(b"old", id, &["SIM"], 1);
    let order = h.request("SIM", false);
    let job = h.deliveries()[0].1;
    h.d.on_send_failed(h.clock, job);
    assert_eq!(h.d.worker_count(), 0);
    assert!(
        h.drain().2.is_empty(),
        "not answered while its deadline allows a retry"
    );
    h.ready_as(b"new", id, &["SIM"], 1);
    let sent = requests_sent(&mut h);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.as_slice(), sent[0].2.as_slice()),
        (&b"new"[..], &b"payload"[..])
    );
    h.reply(b"new", sent[0].1);
    assert_eq!(h.drain().1[0].0.id, order);
}

#[test]
fn garbled_worker_error_still_answers_the_client_and_frees_the_slot() {
    let mut h = Harness::new();
    let a = h.ready(b"A", &["SIM"], 1);
    let order = h.request("SIM", false);
    let queued = h.request("SIM", false);
    let job = h.deliveries()[0].1;
    h.d.on_garbled_answer(h.clock, b"A", job, "bad header: code 70000");
    let (msgs, _, errors) = h.drain();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].id, errors[0].name.as_str()),
        (order, "worker_error")
    );
    assert_eq!(errors[0].worker, Some(a));
    // The slot is free again: the queued request goes out.
    let next: Vec<_> = msgs
        .iter()
        .filter(|m| m.1 == worker::Command::Request)
        .collect();
    assert_eq!(next.len(), 1);
    let rh = request_of(&next[0].2);
    assert_eq!(rh.id, queued);
}

#[test]
fn silent_in_flight_request_is_lost_after_deadline_plus_grace() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 1);
    let order = h.request_with("SIM", false, None, None, 100);
    let job = h.deliveries()[0].1;
    // The worker keeps heartbeating; past deadline (100 ms) + grace (200 ms) it is given up.
    for _ in 0..4 {
        h.d.on_worker(h.clock, &b"A"[..], worker::Message::Heartbeat, Body::new());
        h.advance(Duration::from_millis(100));
    }
    let (_, _, errors) = h.drain();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].id, errors[0].name.as_str()),
        (order, "worker_lost")
    );
    assert_eq!(h.d.metrics.requests_abandoned.get(), 1);
    assert_eq!(h.d.worker_count(), 1, "the worker itself stays registered");
    // Its slot is free, and its reply, if it ever comes, is late.
    h.request("SIM", false);
    assert_eq!(h.deliveries().len(), 1);
    h.reply(b"A", job);
    assert_eq!(h.d.metrics.late_replies.get(), 1);
}

#[test]
fn ready_from_an_abandoned_connection_does_not_shadow_the_new_one() {
    let mut h = Harness::new();
    let id = WorkerId::random();
    h.ready_session(b"new", id, &["SIM"], 1, 2);
    h.drain();
    // The READY of connection 1, delayed by the network, arrives after connection 2's.
    h.ready_session(b"old", id, &["SIM"], 1, 1);
    let (msgs, _, _) = h.drain();
    assert!(msgs
        .iter()
        .any(|m| m.0 == b"old" && m.1 == worker::Command::Disconnect));
    h.request("SIM", false);
    let sent = h.deliveries();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, b"new");
}

impl Harness {
    fn request_from(&mut self, client: &[u8], service: &str) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let h = RequestHeader {
            id,
            service: svc(service),
            deadline_ms: self.clock.unix_ms + 1000,
            idempotent: false,
            target: None,
            affinity: None,
            client: None,
            batch: false,
        };
        let body = Body::from(&b"payload"[..]);
        self.d.on_request(self.clock, client.to_vec(), h, body);
        id
    }
}

#[test]
fn queued_request_of_another_service_gets_the_freed_slot() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM", "echo"], 2);
    h.request("echo", true);
    h.request("echo", true);
    let busy = h.deliveries();
    assert_eq!(busy.len(), 2);
    // More echo work queues up, then an order for SIM behind it.
    for _ in 0..5 {
        h.request("echo", true);
    }
    h.request("SIM", false);
    assert!(h.deliveries().is_empty());
    // Freed slots alternate between the worker's services: the order goes within two.
    h.reply(b"A", busy[0].1);
    let first = requests_sent(&mut h);
    h.reply(b"A", busy[1].1);
    let second = requests_sent(&mut h);
    let services: Vec<ServiceName> = first
        .iter()
        .chain(&second)
        .map(|(_, job, _)| h.d.jobs[job].service.clone())
        .collect();
    assert!(services.contains(&svc("SIM")), "{services:?}");
}

#[test]
fn a_flooding_client_cannot_hold_back_another_clients_order() {
    let mut h = Harness::new();
    h.ready(b"A", &["SIM"], 1);
    for _ in 0..50 {
        h.request_from(b"flood", "SIM");
    }
    let order = h.request_from(b"trader", "SIM");
    let mut job = h.deliveries()[0].1;
    // Clients take turns at freed slots: the trader's order is among the next two.
    let mut served = Vec::new();
    for _ in 0..2 {
        h.reply(b"A", job);
        let (msgs, replies, _) = h.drain();
        served.extend(replies.into_iter().map(|r| r.0.id));
        let next = msgs
            .iter()
            .find(|m| m.1 == worker::Command::Request)
            .map(|m| request_of(&m.2))
            .unwrap();
        if next.id == order {
            return;
        }
        job = next.job;
    }
    panic!("the trader's order waited behind the flood: served {served:?}");
}

#[test]
fn services_past_the_limit_are_refused() {
    let mut h = Harness::new();
    h.ready(b"A", &["s1", "s2", "s3"], 1);
    h.drain();
    h.ready(b"B", &["s4"], 1);
    let (msgs, _, _) = h.drain();
    let refusal = msgs
        .iter()
        .find(|m| m.0 == b"B" && m.1 == worker::Command::Disconnect)
        .map(|m| disconnect_of(&m.2))
        .expect("READY refused");
    assert!(
        refusal.reason.starts_with("overloaded: "),
        "{}",
        refusal.reason
    );
    assert_eq!(h.d.worker_count(), 1);
    // A worker offering services already registered is still welcome.
    h.ready(b"C", &["s1"], 1);
    assert_eq!(h.d.worker_count(), 2);
}

#[test]
fn a_service_without_workers_is_forgotten_with_its_series_after_retention() {
    let mut h = Harness::new();
    h.ready(b"A", &["gone"], 1);
    h.request("gone", true);
    let job = h.deliveries()[0].1;
    h.reply(b"A", job);
    let series = |h: &Harness| {
        h.d.metrics
            .render()
            .lines()
            .filter(|l| l.contains("service=\"gone\""))
            .count()
    };
    assert!(series(&h) > 0);
    let a_key = h.d.workers.key(b"A").unwrap();
    h.d.remove_worker(h.clock, a_key, Departure::Disconnected);
    h.advance(Duration::from_millis(200));
    assert!(series(&h) > 0, "kept during the retention period");
    h.advance(Duration::from_millis(400));
    assert_eq!(series(&h), 0, "series removed after retention");
    assert!(h.d.status(h.clock).services.is_empty());
}

// ----- kill switch (tpx.halt / tpx.resume) -----------------------------------------

fn order_event(order_id: &str, account: &str, status: &str) -> Vec<u8> {
    rmp_serde::to_vec_named(&serde_json::json!({
        "order_id": order_id, "symbol": "AAPL", "exchange": "NASDAQ", "account": account,
        "direction": "long", "offset": "none", "volume": 1.0, "traded": 0.0, "status": status,
    }))
    .unwrap()
}

fn order_body(account: &str) -> Vec<u8> {
    rmp_serde::to_vec_named(&serde_json::json!({
        "op": "send_order", "symbol": "AAPL", "exchange": "", "direction": "long",
        "order_type": "limit", "volume": 1.0, "price": 100.0, "account": account,
    }))
    .unwrap()
}

impl Harness {
    /// A harness whose dispatcher has a stage without rules (a broker without [risk]).
    fn with_stage() -> (Harness, risk::Stage) {
        let mut h = Harness::new();
        let stage = risk::Stage::without_rules(&h.d.metrics.registry);
        h.d.set_risk(stage.clone());
        (h, stage)
    }

    fn call_body(&mut self, service: &str, body: Vec<u8>) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let h = RequestHeader {
            id,
            service: svc(service),
            deadline_ms: self.clock.unix_ms + 1000,
            idempotent: false,
            target: None,
            affinity: None,
            client: None,
            batch: false,
        };
        self.d
            .on_request(self.clock, b"client".to_vec(), h, Body::from(body));
        id
    }

    fn metric(&self, name: &str, label: &str) -> f64 {
        self.d.flush_metrics();
        for fam in self.d.metrics.registry.gather() {
            if fam.get_name() != name {
                continue;
            }
            for m in fam.get_metric() {
                if m.get_label().iter().any(|l| l.get_value() == label) {
                    return if fam.get_field_type() == prometheus::proto::MetricType::GAUGE {
                        m.get_gauge().get_value()
                    } else {
                        m.get_counter().get_value()
                    };
                }
            }
        }
        0.0
    }
}

#[test]
fn halt_refuses_the_accounts_orders_and_cancels_its_working_orders_on_each_worker() {
    let (mut h, stage) = Harness::with_stage();
    let a = h.ready(b"A", &["SIM"], 4);
    let b = h.ready(b"B", &["SIM"], 4);
    h.drain();
    let feed = stage.feed();
    let now = h.clock.unix_ms;
    feed.on_event(
        now,
        "order",
        &order_event(&format!("SIM.{a}.1"), "acc1", "not_traded"),
    );
    feed.on_event(
        now,
        "order",
        &order_event(&format!("SIM.{b}.2"), "acc1", "submitting"),
    );
    feed.on_event(
        now,
        "order",
        &order_event(&format!("SIM.{a}.3"), "acc2", "not_traded"),
    );
    // Final: not to be cancelled.
    feed.on_event(
        now,
        "order",
        &order_event(&format!("SIM.{b}.4"), "acc1", "not_traded"),
    );
    feed.on_event(
        now,
        "order",
        &order_event(&format!("SIM.{b}.4"), "acc1", "all_traded"),
    );
    assert_eq!(stage.booked_orders(), 3);

    let req = rmp_serde::to_vec_named(&HaltRequest {
        account: "acc1".into(),
        reason: "desk closed".into(),
    })
    .unwrap();
    h.call_body(HALT_SERVICE, req);
    let (to_workers, replies, errors) = h.drain();
    assert!(errors.is_empty(), "{errors:?}");
    let reply: HaltReply = rmp_serde::from_slice(&replies[0].1).unwrap();
    assert_eq!((reply.account.as_str(), reply.cancels_sent), ("acc1", 2));
    assert_eq!(reply.reason, "desk closed");
    let mut cancels: Vec<(Vec<u8>, String, JobId)> = to_workers
        .iter()
        .filter(|m| m.1 == worker::Command::Request)
        .map(|(to, _, header, body)| {
            let rh = request_of(header);
            assert!(!rh.idempotent, "a cancel is not idempotent");
            let GatewayRequest::CancelOrder(c) = rmp_serde::from_slice(body).unwrap() else {
                panic!("not a cancel");
            };
            (to.clone(), c.order_id.0, rh.job)
        })
        .collect();
    cancels.sort();
    assert_eq!(
        cancels
            .iter()
            .map(|(to, id, _)| (to.clone(), id.clone()))
            .collect::<Vec<_>>(),
        vec![
            (b"A".to_vec(), format!("SIM.{a}.1")),
            (b"B".to_vec(), format!("SIM.{b}.2"))
        ]
    );
    assert_eq!(h.metric("tradeplex_halted", "acc1"), 1.0);
    assert_eq!(h.metric("tradeplex_halt_cancels_total", "sent"), 2.0);

    // New orders of the halted account are refused; another account's go through.
    h.call_body("SIM", order_body("acc1"));
    let (_, _, errors) = h.drain();
    assert_eq!(errors[0].name, "risk_rejected");
    assert_eq!(errors[0].message, "halted: desk closed");
    assert_eq!(h.metric("tradeplex_risk_rejected_total", "halted"), 1.0);
    h.call_body("SIM", order_body("acc2"));
    let delivered = h.deliveries();
    assert_eq!(delivered.len(), 1);
    // Answer it (it went to A or B, whichever the tie-break chose) and take that answer,
    // so the worker removed below has only the halt's cancel in flight.
    h.reply(&delivered[0].0, delivered[0].1);
    let (_, replies, _) = h.drain();
    assert_eq!(replies.len(), 1, "acc2's order answered to its client");

    // The cancels' answers are the broker's: none reaches a client.
    h.reply(b"A", cancels[0].2);
    let b_key = h.d.workers.key(b"B").unwrap();
    h.d.remove_worker(h.clock, b_key, Departure::Expired);
    let (_, replies, errors) = h.drain();
    assert!(
        replies.is_empty() && errors.is_empty(),
        "{replies:?} {errors:?}"
    );
    assert_eq!(h.metric("tradeplex_halt_cancels_total", "ok"), 1.0);
    assert_eq!(h.metric("tradeplex_halt_cancels_total", "worker_lost"), 1.0);

    // A second halt never re-sends a cancel (the lost one's outcome is unknown).
    let req = rmp_serde::to_vec_named(&HaltRequest {
        account: "acc1".into(),
        reason: String::new(),
    })
    .unwrap();
    h.call_body(HALT_SERVICE, req);
    let (to_workers, replies, _) = h.drain();
    let reply: HaltReply = rmp_serde::from_slice(&replies[0].1).unwrap();
    assert_eq!((reply.cancels_sent, reply.cancels_skipped), (0, 2));
    assert!(to_workers.iter().all(|m| m.1 != worker::Command::Request));
    let status = h.d.status(h.clock);
    assert_eq!(status.halts.len(), 1);
    assert_eq!(status.halts[0].account, "acc1");

    // Resume: orders flow again.
    h.call_body(RESUME_SERVICE, Vec::new());
    let (_, replies, _) = h.drain();
    let reply: ResumeReply = rmp_serde::from_slice(&replies[0].1).unwrap();
    assert_eq!(reply.resumed, vec!["acc1".to_string()]);
    assert!(reply.halts.is_empty());
    assert_eq!(h.metric("tradeplex_halted", "acc1"), 0.0);
    h.call_body("SIM", order_body("acc1"));
    assert_eq!(h.deliveries().len(), 1);
}

#[test]
fn halt_of_every_account_refuses_any_order_but_lets_cancels_through() {
    let (mut h, _stage) = Harness::with_stage();
    h.ready(b"A", &["SIM"], 4);
    h.drain();
    h.call_body(HALT_SERVICE, Vec::new());
    let (_, replies, _) = h.drain();
    let reply: HaltReply = rmp_serde::from_slice(&replies[0].1).unwrap();
    assert_eq!(reply.account, "*");
    assert_eq!(reply.reason, risk::halt::DEFAULT_REASON);
    assert_eq!(h.metric("tradeplex_halted", "*"), 1.0);
    h.call_body("SIM", order_body("whoever"));
    let (_, _, errors) = h.drain();
    assert_eq!(errors[0].message, "halted: halted by operator");
    let cancel = rmp_serde::to_vec_named(&serde_json::json!({
        "op": "cancel_order", "order_id": "SIM.x.1",
    }))
    .unwrap();
    h.call_body("SIM", cancel);
    assert_eq!(h.deliveries().len(), 1, "cancel_order stays allowed");
}

#[test]
fn without_risk_and_without_a_halt_no_body_is_decoded() {
    let (mut h, _stage) = Harness::with_stage();
    h.ready(b"A", &["SIM"], 4);
    h.drain();
    // A map that is not valid MessagePack: passed untouched while nothing is halted...
    h.call_body("SIM", vec![0x81, 0xc1]);
    assert_eq!(h.deliveries().len(), 1);
    // ...and refused while a halt is in force (it cannot be told from an order).
    let req = rmp_serde::to_vec_named(&HaltRequest {
        account: "acc1".into(),
        reason: String::new(),
    })
    .unwrap();
    h.call_body(HALT_SERVICE, req);
    h.drain();
    h.call_body("SIM", vec![0x81, 0xc1]);
    let (_, _, errors) = h.drain();
    assert_eq!(errors[0].name, "bad_request");
    // An order naming no account could be the halted one's (the gateway's default).
    h.call_body("SIM", order_body(""));
    let (_, _, errors) = h.drain();
    assert_eq!(errors[0].name, "risk_rejected");
    assert!(
        errors[0].message.starts_with("halted: "),
        "{}",
        errors[0].message
    );
}

#[test]
fn a_halt_body_that_does_not_decode_is_bad_request() {
    let (mut h, _stage) = Harness::with_stage();
    h.call_body(HALT_SERVICE, vec![0x81, 0xc1]);
    h.call_body(
        HALT_SERVICE,
        rmp_serde::to_vec_named(&serde_json::json!({"reason": "x".repeat(300)})).unwrap(),
    );
    let (_, replies, errors) = h.drain();
    assert!(replies.is_empty());
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e.name == "bad_request"), "{errors:?}");
    assert!(
        errors[1].message.contains("reason"),
        "{}",
        errors[1].message
    );
    assert!(h.d.status(h.clock).halts.is_empty());
}
