//! The worker's broker session: one thread owns the DEALER to the broker's backend.
//! It registers (READY), heartbeats both ways, hands requests to the executor, sends
//! results back, re-registers when the broker forgets it, reconnects with backoff when
//! the broker goes silent, and drains cleanly on shutdown. Given a broker pair it serves
//! one broker at a time and moves to the next (`brokers.rs`) when the one in use refuses
//! READY as passive, falls silent, or (watched by a socket monitor) drops the connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tradeplex_ops::Shutdown;
use tradeplex_proto::batch::BatchBuilder;
use tradeplex_proto::worker::{self as wp, DisconnectHeader, HeartbeatHeader, ReadyHeader};
use tradeplex_proto::ServiceName;

use crate::backoff::Backoff;
use crate::brokers::{Brokers, Why};
use crate::executor::{Executor, Shared};
use crate::handler::{HandlerError, Request};
use crate::metrics::RequestStats;
use crate::{WorkerError, WorkerOptions};

/// Longest poll, so shutdown is seen promptly.
const MAX_POLL: Duration = Duration::from_millis(50);

enum SessionEnd {
    /// The broker went silent: reconnect after a backoff.
    BrokerSilent,
    /// A pair's broker refused READY as passive: try the next one soon.
    Passive,
    /// A pair's broker connection dropped or was refused: try the next one.
    Lost,
    /// Shutdown finished.
    Stopped,
}

/// Drives sessions until shutdown.
pub struct Session<'a> {
    opts: &'a WorkerOptions,
    ctx: &'a zmq::Context,
    shared: Arc<Shared>,
    executor: &'a Executor,
    results: zmq::Socket,
    /// Metric handles for the handlers run inline on this thread.
    stats: RequestStats,
    in_flight: usize,
    offered: Vec<ServiceName>,
    /// True once the broker has shown it knows us (a heartbeat or request after READY).
    registered: bool,
    /// Connections made so far; sent in READY so the broker can tell a READY still in
    /// flight on an abandoned connection from the current one.
    connection: u64,
    /// A pair's broker refused READY as passive (seen while reading, acted on after).
    refused_passive: bool,
    /// Serving one of a pair (set per connection from [`Brokers::is_pair`]).
    pair: bool,
    /// The broker has sent a BATCH on this connection, so it reads ours: results that
    /// are ready together go back in one message.
    broker_batches: bool,
    /// Results gathered while reading a round of requests or of finished jobs.
    results_out: BatchBuilder,
    /// The BATCH being sent, reused.
    batch_msg: Vec<u8>,
}

impl<'a> Session<'a> {
    /// A session driver over a started executor whose results arrive on `results`.
    pub fn new(
        opts: &'a WorkerOptions,
        ctx: &'a zmq::Context,
        shared: Arc<Shared>,
        executor: &'a Executor,
        results: zmq::Socket,
    ) -> Session<'a> {
        Session {
            opts,
            ctx,
            stats: RequestStats::new(shared.metrics.clone()),
            shared,
            executor,
            results,
            in_flight: 0,
            offered: Vec::new(),
            registered: false,
            connection: 0,
            refused_passive: false,
            pair: false,
            broker_batches: false,
            results_out: BatchBuilder::default(),
            batch_msg: Vec::new(),
        }
    }

    /// Connects, serves, and reconnects with jittered exponential backoff until shutdown;
    /// with a pair, each reconnect goes to the next broker.
    pub fn run(&mut self, mut brokers: Brokers, shutdown: &Shutdown) -> Result<(), WorkerError> {
        let mut backoff = Backoff::new(self.opts.reconnect_min, self.opts.reconnect_max);
        let mut rng = rand::thread_rng();
        while !shutdown.is_triggered() {
            let started = Instant::now();
            let why = match self.serve_connection(&brokers, shutdown)? {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::BrokerSilent => Why::Silent,
                SessionEnd::Lost => Why::Lost,
                SessionEnd::Passive => {
                    // A passive broker is alive, only not (yet) active: the delays are
                    // for brokers that are gone, so start the schedule again.
                    backoff.reset();
                    Why::Passive
                }
            };
            // A session that lived a while resets the backoff.
            if started.elapsed() > self.opts.liveness_window() * 2 {
                backoff.reset();
            }
            let mut delay = backoff.next_delay(&mut rng);
            if why == Why::Passive {
                // At least half the first ceiling: while both brokers of a pair are
                // passive (the pair settling, a takeover window) the worker alternates
                // between them at most ~20 times a second.
                delay = delay.max(self.opts.reconnect_min / 2);
            }
            if why == Why::Silent {
                tracing::warn!(
                    backoff_ms = delay.as_millis() as u64,
                    "broker silent; reconnecting"
                );
            }
            brokers.next(why);
            self.sleep_unless_shutdown(delay, shutdown);
        }
        Ok(())
    }

    fn sleep_unless_shutdown(&self, d: Duration, shutdown: &Shutdown) {
        let until = Instant::now() + d;
        while Instant::now() < until && !shutdown.is_triggered() {
            std::thread::sleep(MAX_POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }

    /// A DEALER to the broker in use, and with a pair a monitor that reports the
    /// connection dropped or refused (inproc events, not network input).
    fn connect(
        &self,
        brokers: &Brokers,
    ) -> Result<(zmq::Socket, Option<zmq::Socket>), WorkerError> {
        let s = self.ctx.socket(zmq::DEALER)?;
        s.set_linger(500)?;
        s.set_maxmsgsize((self.opts.max_body_bytes as i64).saturating_mul(2) + 64 * 1024)?;
        s.set_sndhwm(100_000)?;
        s.set_rcvhwm(100_000)?;
        if let Some(curve) = &self.opts.curve {
            curve.apply(&s)?;
        }
        let monitor = if brokers.is_pair() {
            let ep = format!(
                "inproc://tpx-worker-monitor-{}-{}",
                self.opts.worker_id, self.connection
            );
            let events =
                zmq::SocketEvent::CONNECT_RETRIED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
            s.monitor(&ep, events)?;
            let m = self.ctx.socket(zmq::PAIR)?;
            m.set_linger(0)?;
            m.connect(&ep)?;
            Some(m)
        } else {
            None
        };
        s.connect(brokers.backend())?;
        Ok((s, monitor))
    }

    fn serve_connection(
        &mut self,
        brokers: &Brokers,
        shutdown: &Shutdown,
    ) -> Result<SessionEnd, WorkerError> {
        self.connection += 1;
        let (dealer, monitor) = self.connect(brokers)?;
        // Declared after the sockets, so dropped before them.
        let _silence = monitor.as_ref().map(|_| SilenceMonitor {
            dealer: &dealer,
            endpoint: format!(
                "inproc://tpx-worker-monitor-off-{}-{}",
                self.opts.worker_id, self.connection
            ),
        });
        self.refused_passive = false;
        self.broker_batches = false;
        self.results_out.clear();
        self.pair = brokers.is_pair();
        self.set_registered(false);
        self.offered = self.available_services();
        self.send_ready(&dealer, false);
        let mut last_heard = Instant::now();
        let mut next_heartbeat = Instant::now() + self.opts.heartbeat;
        let mut drain_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if drain_until.is_none() && shutdown.is_triggered() {
                tracing::info!(in_flight = self.in_flight, "draining before shutdown");
                self.send_ready(&dealer, true);
                self.set_registered(false);
                drain_until = Some(now + self.opts.drain_grace);
            }
            if let Some(until) = drain_until {
                if self.in_flight == 0 || now >= until {
                    send(
                        &dealer,
                        wp::Command::Disconnect,
                        &DisconnectHeader {
                            reason: "worker shutting down".into(),
                        },
                        &[],
                    );
                    tracing::info!("worker stopped");
                    return Ok(SessionEnd::Stopped);
                }
            }
            if now >= next_heartbeat {
                send(&dealer, wp::Command::Heartbeat, &HeartbeatHeader {}, &[]);
                next_heartbeat = now + self.opts.heartbeat;
                let available = self.available_services();
                if drain_until.is_none() && available != self.offered {
                    self.offered = available;
                    tracing::info!(services = %tradeplex_ops::logging::list(&self.offered), "services changed; updating broker");
                    self.send_ready(&dealer, false);
                    self.update_readiness();
                }
            }
            let timeout = next_heartbeat.saturating_duration_since(now).min(MAX_POLL);
            let (from_broker, finished, lost) = self.poll(&dealer, monitor.as_ref(), timeout)?;
            if finished {
                self.forward_results(&dealer)?;
            }
            if from_broker && self.read_broker(&dealer, drain_until.is_some())? {
                last_heard = Instant::now();
            }
            if drain_until.is_none() {
                if std::mem::take(&mut self.refused_passive) {
                    return Ok(self.abandon(&dealer, SessionEnd::Passive));
                }
                if lost {
                    return Ok(self.abandon(&dealer, SessionEnd::Lost));
                }
            }
            // Judged only after reading what is waiting, so a stalled process does not
            // mistake unread heartbeats for silence.
            if last_heard.elapsed() > self.opts.liveness_window() {
                return Ok(self.abandon(&dealer, SessionEnd::BrokerSilent));
            }
        }
    }

    /// Leaves a connection for another. With a pair nothing queued on it is worth
    /// delivering (the broker is gone or passive), and a closed socket lingering with
    /// queued messages was seen to stall the next socket's connection attempts (libzmq
    /// 4.3.4: no connect, no monitor event), so it closes at once. (That stall may well
    /// have been the blocked monitor send [`SilenceMonitor`] prevents.)
    fn abandon(&mut self, dealer: &zmq::Socket, end: SessionEnd) -> SessionEnd {
        self.set_registered(false);
        if self.pair {
            let _ = dealer.set_linger(0);
        }
        end
    }

    /// Waits up to `timeout` for the broker, finished results and (with a pair) the
    /// connection monitor: (broker readable, results readable, connection lost).
    fn poll(
        &self,
        dealer: &zmq::Socket,
        monitor: Option<&zmq::Socket>,
        timeout: Duration,
    ) -> Result<(bool, bool, bool), WorkerError> {
        let ms = timeout.as_micros().div_ceil(1000) as i64;
        let (d, r) = (
            dealer.as_poll_item(zmq::POLLIN),
            self.results.as_poll_item(zmq::POLLIN),
        );
        let (from_broker, finished, event) = match monitor {
            None => {
                let mut items = [d, r];
                match zmq::poll(&mut items, ms) {
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
                let [d, r] = &items;
                (d.is_readable(), r.is_readable(), false)
            }
            Some(m) => {
                let mut items = [d, r, m.as_poll_item(zmq::POLLIN)];
                match zmq::poll(&mut items, ms) {
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
                let [d, r, m] = &items;
                (d.is_readable(), r.is_readable(), m.is_readable())
            }
        };
        // Any event the monitor was asked for (dropped, refused) means lost.
        let lost = event
            && monitor.is_some_and(|m| {
                let mut any = false;
                while m.recv_multipart(zmq::DONTWAIT).is_ok() {
                    any = true;
                }
                any
            });
        Ok((from_broker, finished, lost))
    }

    fn available_services(&self) -> Vec<ServiceName> {
        let mut v: Vec<ServiceName> = self
            .shared
            .handlers
            .iter()
            .filter(|(_, h)| h.available())
            .map(|(s, _)| s.clone())
            .collect();
        v.sort();
        v
    }

    fn send_ready(&self, dealer: &zmq::Socket, draining: bool) {
        let ready = ReadyHeader {
            worker: self.opts.worker_id,
            services: if draining {
                Vec::new()
            } else {
                self.offered.clone()
            },
            capacity: if draining { 0 } else { self.opts.capacity },
            session: self.connection,
            batch: true,
        };
        if !draining {
            self.shared.metrics.registrations.inc();
        }
        send(dealer, wp::Command::Ready, &ready, &[]);
    }

    fn set_registered(&mut self, registered: bool) {
        if registered && !self.registered {
            tracing::info!(services = %tradeplex_ops::logging::list(&self.offered), "registered with broker");
        }
        self.registered = registered;
        self.shared.metrics.registered.set(i64::from(registered));
        self.update_readiness();
    }

    /// `/readyz`: registered, and every service (gateway) available.
    fn update_readiness(&self) {
        let ready = self.registered && self.offered.len() == self.shared.handlers.len();
        self.shared
            .ready
            .store(ready, std::sync::atomic::Ordering::SeqCst);
    }

    /// Reads everything waiting from the broker; true if anything arrived.
    fn read_broker(&mut self, dealer: &zmq::Socket, draining: bool) -> Result<bool, WorkerError> {
        let mut heard = false;
        loop {
            // One frame per worker-protocol message, so a retried read never splits one.
            let frames = match tradeplex_ops::uninterrupted(|| dealer.recv_multipart(zmq::DONTWAIT))
            {
                Ok(f) => f,
                Err(zmq::Error::EAGAIN) => {
                    // The round's inline results leave together.
                    self.flush_results(dealer);
                    return Ok(heard);
                }
                Err(e) => return Err(e.into()),
            };
            heard = true;
            match wp::decode_from_broker(&frames) {
                Ok((wp::Message::Request(h), body_start)) => {
                    let message = frames.first().map_or(&[][..], |f| &f[..]);
                    self.on_delivery(dealer, h, message, body_start, draining);
                }
                Ok((wp::Message::Batch(h), body_start)) => {
                    self.broker_batches = true;
                    let message = frames.first().map_or(&[][..], |f| &f[..]);
                    self.on_batch(dealer, h, message, body_start, draining);
                }
                Ok((wp::Message::Heartbeat, _)) => {
                    // The broker only heartbeats workers it has registered.
                    if !draining && !self.registered {
                        self.set_registered(true);
                    }
                }
                Ok((wp::Message::Disconnect(d), _))
                    if self.pair && crate::brokers::is_passive_refusal(&d.reason) =>
                {
                    tracing::info!(reason = %d.reason, "broker is passive");
                    self.refused_passive = true;
                }
                Ok((wp::Message::Disconnect(d), _)) if wp::is_refusal(&d.reason) => {
                    // One of our messages was refused; re-sending READY would not fix it.
                    tracing::error!(reason = %d.reason, "broker refused a message from this worker");
                }
                Ok((wp::Message::Disconnect(d), _)) => {
                    tracing::info!(reason = %d.reason, "broker asked us to register again");
                    self.set_registered(false);
                    if !draining {
                        self.send_ready(dealer, false);
                    }
                }
                Ok((other, _)) => tracing::warn!(?other, "unexpected message from broker"),
                Err(e) => tracing::warn!(error = %e, "bad message from broker"),
            }
        }
    }

    /// A REQUEST, alone or out of a BATCH (`message` is the whole REQUEST).
    fn on_delivery(
        &mut self,
        dealer: &zmq::Socket,
        h: wp::RequestHeader,
        message: &[u8],
        body_start: usize,
        draining: bool,
    ) {
        if !draining && !self.registered {
            self.set_registered(true);
        }
        let body = message.get(body_start..).unwrap_or(&[]).to_vec();
        self.on_request(dealer, h, body, draining);
    }

    /// The broker's BATCH: each REQUEST in it handled as if it had come alone.
    fn on_batch(
        &mut self,
        dealer: &zmq::Socket,
        h: tradeplex_proto::batch::BatchHeader,
        frame: &[u8],
        body_start: usize,
        draining: bool,
    ) {
        let body = frame.get(body_start..).unwrap_or(&[]);
        for item in tradeplex_proto::batch::items(body, h.count) {
            let message = match item {
                Ok(range) => body.get(range).unwrap_or(&[]),
                Err(e) => {
                    tracing::warn!(error = %e, "bad batch from broker");
                    break;
                }
            };
            match wp::decode(&[message]) {
                Ok((wp::Message::Request(h), at)) => {
                    self.on_delivery(dealer, h, message, at, draining)
                }
                Ok((other, _)) => {
                    tracing::warn!(?other, "unexpected message in a batch from broker")
                }
                Err(e) => tracing::warn!(error = %e, "bad message in a batch from broker"),
            }
        }
    }

    fn on_request(
        &mut self,
        dealer: &zmq::Socket,
        h: wp::RequestHeader,
        body: Vec<u8>,
        draining: bool,
    ) {
        if draining {
            let e = HandlerError::unavailable("worker is draining");
            let h = wp::ErrorHeader::new(h.job, e.code, e.message);
            let message = wp::encode(wp::Command::Error, &h, &[]);
            self.return_result(dealer, &message);
            return;
        }
        let req = Request {
            job: h.job,
            id: h.id,
            service: h.service,
            deadline_ms: h.deadline_ms,
            idempotent: h.idempotent,
            body,
        };
        let inline = self.shared.may_run_inline()
            && self
                .shared
                .handlers
                .get(&req.service)
                .is_some_and(|handler| handler.runs_inline(&req));
        if inline {
            let message = crate::executor::execute(&self.shared, &req, &mut self.stats);
            self.return_result(dealer, &message);
            return;
        }
        self.in_flight += 1;
        self.shared.metrics.in_flight.set(self.in_flight as i64);
        self.executor.submit(req);
    }

    fn forward_results(&mut self, dealer: &zmq::Socket) -> Result<(), WorkerError> {
        loop {
            // One frame per result: the executor sends the whole message (executor.rs).
            let results = &self.results;
            let message = match tradeplex_ops::uninterrupted(|| results.recv_bytes(zmq::DONTWAIT)) {
                Ok(m) => m,
                Err(zmq::Error::EAGAIN) => {
                    self.flush_results(dealer);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            self.in_flight = self.in_flight.saturating_sub(1);
            self.shared.metrics.in_flight.set(self.in_flight as i64);
            self.return_result(dealer, &message);
        }
    }

    /// A finished job's REPLY or ERROR: gathered for one BATCH when the broker reads
    /// them, else sent at once.
    fn return_result(&mut self, dealer: &zmq::Socket, message: &[u8]) {
        if !self.broker_batches {
            send_result(dealer, message);
            return;
        }
        let full = !self.results_out.has_room()
            || self.results_out.body_len() + message.len()
                > tradeplex_proto::batch::MAX_BATCH_BYTES;
        if full {
            self.flush_results(dealer);
        }
        self.results_out.push_encoded(message);
    }

    /// Sends the gathered results: one BATCH, or a lone result as itself.
    fn flush_results(&mut self, dealer: &zmq::Socket) {
        if let Some(message) = self.results_out.single() {
            send_result(dealer, message);
        } else if self.results_out.count() > 1 {
            let cmd = wp::Command::Batch as u8;
            self.results_out
                .head_into(&wp::PROTOCOL, cmd, &mut self.batch_msg);
            self.batch_msg.extend_from_slice(self.results_out.body());
            send_result(dealer, &self.batch_msg);
        }
        self.results_out.clear();
    }
}

/// Sends a finished job's REPLY or ERROR (or a BATCH of them) to the broker without
/// blocking.
fn send_result(dealer: &zmq::Socket, message: &[u8]) {
    if let Err(e) = tradeplex_ops::uninterrupted(|| dealer.send(message, zmq::DONTWAIT)) {
        tracing::warn!(error = %e, "result not sent: broker unreachable");
    }
}

/// Sends one worker-protocol message without blocking (a lost heartbeat is harmless).
/// Turns a DEALER's monitor off before the DEALER and its monitor's reader close.
///
/// libzmq (4.3.4) sends monitor events with a blocking send, from its I/O thread. Once the
/// reader is closed, the next event of a socket still tearing down (a reconnect to a
/// killed broker retried: `CONNECT_RETRIED`) blocks that send — and with it the context's
/// I/O thread, for good: no socket of the worker connects again (seen as a worker that
/// never reached the surviving broker of a pair). Re-pointing the monitor at a fresh
/// endpoint with no events stops the old one under libzmq's monitor lock, and the new one
/// never sends.
struct SilenceMonitor<'a> {
    dealer: &'a zmq::Socket,
    endpoint: String,
}

impl Drop for SilenceMonitor<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.dealer.monitor(&self.endpoint, 0) {
            tracing::warn!(error = %e, "could not turn the broker connection's monitor off");
        }
    }
}

fn send<T: tradeplex_proto::frame::Header>(
    dealer: &zmq::Socket,
    cmd: wp::Command,
    header: &T,
    body: &[u8],
) {
    let message = wp::encode(cmd, header, body);
    if let Err(e) = tradeplex_ops::uninterrupted(|| dealer.send(&message[..], zmq::DONTWAIT)) {
        tracing::debug!(error = %e, ?cmd, "message to broker not sent");
    }
}
