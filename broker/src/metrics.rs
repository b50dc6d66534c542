//! The broker's Prometheus metrics. Label handles for a service are resolved once, when
//! the service first appears; per-request updates go to plain (non-atomic) local copies
//! that the socket loop flushes into the shared series once per round of reading its
//! sockets, just before that round's answers are sent ([`MetricsBatch::flush`]), so the
//! per-message path touches no atomics and a client holding its reply finds it counted.
//! Label values are bounded: services that no worker registered are counted as `_unknown`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tradeplex_proto::ErrorCode;

/// Label value used for requests to services no worker has offered.
pub const UNKNOWN_SERVICE_LABEL: &str = "_unknown";
/// The `state` label values of `tradeplex_worker_states`.
pub const WORKER_STATES: [&str; 4] = ["idle", "busy", "full", "draining"];

/// Label value for the broker's own management services (`tpx.status`).
pub const MGMT_SERVICE_LABEL: &str = "tpx";

/// The `reason` label values of `tradeplex_event_drops_total` the relay uses.
pub const EVENT_DROP_REASONS: [&str; 3] = ["malformed", "send_failed", "forged_heartbeat"];

/// Every metric the broker exposes.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    requests_received: IntCounterVec,
    requests_answered: IntCounterVec,
    request_duration: HistogramVec,
    queue_depth: IntGaugeVec,
    in_flight: IntGaugeVec,
    workers: IntGaugeVec,
    /// Worker registrations (READY from a worker not yet registered).
    pub worker_registrations: IntCounter,
    /// Workers dropped for silence.
    pub workers_expired: IntCounter,
    /// Heartbeat intervals in which a registered worker was not heard from.
    pub heartbeats_missed: IntCounter,
    /// Workers that left with DISCONNECT.
    pub worker_disconnects: IntCounter,
    /// Idempotent requests re-dispatched after their worker died or refused them.
    pub requests_retried: IntCounter,
    bad_frames: IntCounterVec,
    /// Replies from workers for jobs the broker no longer tracks.
    pub late_replies: IntCounter,
    /// BATCH messages, by direction (`to_workers`, `from_workers`, `to_clients`).
    pub batches: IntCounterVec,
    /// Messages carried in those BATCHes, by direction.
    pub batched_messages: IntCounterVec,
    /// Delivered requests answered `worker_lost` because their worker, though alive,
    /// had not answered by their deadline plus the in-flight grace.
    pub requests_abandoned: IntCounter,
    /// Distinct client identities seen on the frontend in the last heartbeat-liveness window.
    pub clients: IntGauge,
    /// Events relayed from workers to subscribers, by kind (`tick`, `order`, …).
    pub events_relayed: IntCounterVec,
    /// Events the relay dropped (malformed, or refused by a full subscriber queue).
    pub event_drops: IntCounterVec,
    /// Current subscriptions on the XPUB side: (subscriber, prefix) pairs.
    pub subscriptions: IntGauge,
    /// Subscribers holding at least one subscription.
    pub subscribers: IntGauge,
    /// Subscriptions the relay refused, by reason (see `relay::subscriptions`).
    pub subscriptions_refused: IntCounterVec,
    /// Connections refused by CURVE authentication, by socket.
    pub auth_failures: IntCounterVec,
    /// 1 while plaintext sockets are bound on non-loopback addresses (`insecure = true`).
    pub insecure: IntGauge,
    /// Registered workers by state (`idle`, `busy`, `full`, `draining`), refreshed every
    /// heartbeat interval.
    pub worker_states: IntGaugeVec,
    /// The gap-recovery store (`relay::replay`).
    pub replay: ReplayMetrics,
    /// The relay's last-tick cache (`relay::last_ticks`).
    pub last_ticks: LastTickMetrics,
}

/// Metrics of the last-tick cache: what it holds and what did not fit.
#[derive(Clone)]
pub struct LastTickMetrics {
    /// Bytes held (frames, keys and the per-topic overhead), set once per heartbeat.
    pub bytes: IntGauge,
    /// Topics held, set once per heartbeat.
    pub topics: IntGauge,
    /// Ticks not cached: over the topic limit.
    pub too_many_topics: IntCounter,
    /// Ticks not cached: over `tick_cache_bytes`.
    pub too_large: IntCounter,
}

impl LastTickMetrics {
    fn new(r: &Registry) -> LastTickMetrics {
        let not_stored = counter_vec(
            r,
            "tradeplex_tick_cache_not_stored_total",
            "Ticks the last-value cache did not keep, by reason",
            &["reason"],
        );
        LastTickMetrics {
            bytes: gauge(
                r,
                "tradeplex_tick_cache_bytes",
                "Bytes of last ticks held for late subscribers",
            ),
            topics: gauge(
                r,
                "tradeplex_tick_cache_topics",
                "Tick topics whose last tick is held for late subscribers",
            ),
            too_many_topics: not_stored.with_label_values(&["too_many_topics"]),
            too_large: not_stored.with_label_values(&["too_large"]),
        }
    }
}

/// Metrics of the gap-recovery store: what it holds, what it let go, what it served.
#[derive(Clone)]
pub struct ReplayMetrics {
    /// Bytes held (bodies plus the per-event overhead).
    pub bytes: IntGauge,
    /// Events held.
    pub events: IntGauge,
    /// Events evicted to stay within the limits.
    pub evicted: IntCounter,
    /// Events not stored, by reason (`too_large`, `too_many_streams`).
    pub not_stored: IntCounterVec,
    /// Events sent back in `tpx.replay` replies.
    pub served: IntCounter,
}

impl ReplayMetrics {
    fn new(r: &Registry) -> ReplayMetrics {
        let not_stored = counter_vec(
            r,
            "tradeplex_replay_not_stored_total",
            "Events the gap-recovery store did not keep, by reason",
            &["reason"],
        );
        for reason in ["too_large", "too_many_streams"] {
            not_stored.with_label_values(&[reason]);
        }
        ReplayMetrics {
            bytes: gauge(
                r,
                "tradeplex_replay_bytes",
                "Bytes of recent events held for gap recovery (bodies plus 64 per event)",
            ),
            events: gauge(
                r,
                "tradeplex_replay_events",
                "Recent events held for gap recovery",
            ),
            evicted: counter(
                r,
                "tradeplex_replay_evicted_total",
                "Events evicted from the gap-recovery store to stay within its limits",
            ),
            not_stored,
            served: counter(
                r,
                "tradeplex_replay_served_total",
                "Events sent back to subscribers by tpx.replay",
            ),
        }
    }
}

/// Metric handles for one service, resolved once. Its request counts, latencies, queue
/// depth and in-flight count accumulate locally until the [`MetricsBatch`] it was made
/// with is flushed (by the socket loop, before it sends the answers of a round).
pub struct ServiceMetrics {
    local: Rc<LocalService>,
    batch: MetricsBatch,
    /// Workers offering the service (changes with registrations only: set directly).
    pub workers: IntGauge,
}

/// The locally accumulated part of a service's metrics.
struct LocalService {
    /// Queued in the batch's list of services to flush.
    dirty: Cell<bool>,
    received: LocalIntCounter,
    answered: Vec<(Option<ErrorCode>, LocalIntCounter)>,
    duration: LocalHistogram,
    queue_depth: LocalGauge,
    in_flight: LocalGauge,
}

impl LocalService {
    fn flush(&self) {
        self.dirty.set(false);
        self.received.flush();
        for (_, c) in &self.answered {
            c.flush();
        }
        self.duration.flush();
        self.queue_depth.flush();
        self.in_flight.flush();
    }
}

/// A gauge's pending change, added to the shared gauge on flush.
struct LocalGauge {
    gauge: IntGauge,
    delta: Cell<i64>,
}

impl LocalGauge {
    fn new(gauge: IntGauge) -> LocalGauge {
        LocalGauge {
            gauge,
            delta: Cell::new(0),
        }
    }

    fn add(&self, v: i64) {
        self.delta.set(self.delta.get() + v);
    }

    /// Sets the gauge now, dropping the pending change (it is part of `v`).
    fn set(&self, v: i64) {
        self.delta.set(0);
        self.gauge.set(v);
    }

    fn flush(&self) {
        let d = self.delta.replace(0);
        if d != 0 {
            self.gauge.add(d);
        }
    }
}

/// The services whose local metrics changed since the last flush. One per dispatcher:
/// it and the [`ServiceMetrics`] made with it live on the broker's loop thread.
#[derive(Clone, Default)]
pub struct MetricsBatch {
    dirty: Rc<RefCell<Vec<Rc<LocalService>>>>,
}

impl MetricsBatch {
    /// Adds every pending change to the shared series (the loop calls this once per round
    /// of reading its sockets, before sending what the round produced).
    pub fn flush(&self) {
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for s in &dirty {
            s.flush();
        }
        // Give the list back its capacity (nothing can have been added meanwhile).
        let mut list = self.dirty.borrow_mut();
        if list.is_empty() {
            *list = dirty;
            list.clear();
        }
    }
}

impl ServiceMetrics {
    /// Queues the service for the next flush (once per round, however many updates).
    fn touch(&self) {
        if !self.local.dirty.replace(true) {
            self.batch.dirty.borrow_mut().push(self.local.clone());
        }
    }

    /// Counts a request received for the service.
    pub fn received(&self) {
        self.local.received.inc();
        self.touch();
    }

    /// Counts a request answered with `outcome` (None = ok) after `seconds`.
    pub fn answered(&self, outcome: Option<ErrorCode>, seconds: f64) {
        if let Some((_, c)) = self.local.answered.iter().find(|(o, _)| *o == outcome) {
            c.inc();
        }
        self.local.duration.observe(seconds);
        self.touch();
    }

    /// Changes the count of requests queued for the service by `n`.
    pub fn queued(&self, n: i64) {
        self.local.queue_depth.add(n);
        self.touch();
    }

    /// Sets the count of requests queued for the service.
    pub fn set_queued(&self, n: i64) {
        self.local.queue_depth.set(n);
    }

    /// Changes the count of requests executing at workers of the service by `n`.
    pub fn executing(&self, n: i64) {
        self.local.in_flight.add(n);
        self.touch();
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric name");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric name");
    g
}

impl Metrics {
    /// Creates and registers every broker metric. Panics only on a programming error in
    /// the static definitions below (duplicate names), never on input.
    pub fn new() -> Metrics {
        let r = Registry::new();
        tradeplex_ops::process_metrics::register(&r);
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tradeplex_request_duration_seconds",
                "Time from the broker receiving a request to it sending the answer",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["service"],
        )
        .expect("static metric definition");
        r.register(Box::new(duration.clone()))
            .expect("unique metric name");
        let event_drops = counter_vec(
            &r,
            "tradeplex_event_drops_total",
            "Events dropped, by reason",
            &["reason"],
        );
        // Export every known reason at 0 from the start: a series that appears only with
        // its first drop has no earlier sample, so `increase()`/`rate()` (and the alert on
        // them) would never see that drop.
        for reason in EVENT_DROP_REASONS {
            event_drops.with_label_values(&[reason]);
        }
        let subscriptions_refused = counter_vec(
            &r,
            "tradeplex_subscriptions_refused_total",
            "Subscriptions the relay refused to keep, by reason",
            &["reason"],
        );
        for reason in crate::relay::subscriptions::REFUSAL_REASONS {
            subscriptions_refused.with_label_values(&[reason]);
        }
        let batches = counter_vec(
            &r,
            "tradeplex_batches_total",
            "BATCH messages, by direction (to_workers, from_workers, to_clients, from_clients)",
            &["direction"],
        );
        let batched_messages = counter_vec(
            &r,
            "tradeplex_batched_messages_total",
            "Messages carried in BATCH messages, by direction",
            &["direction"],
        );
        for direction in ["to_workers", "from_workers", "to_clients", "from_clients"] {
            batches.with_label_values(&[direction]);
            batched_messages.with_label_values(&[direction]);
        }
        Metrics {
            requests_received: counter_vec(
                &r,
                "tradeplex_requests_received_total",
                "Requests received from clients",
                &["service"],
            ),
            requests_answered: counter_vec(
                &r,
                "tradeplex_requests_answered_total",
                "Requests answered, by outcome (ok or an error code name)",
                &["service", "outcome"],
            ),
            request_duration: duration,
            queue_depth: gauge_vec(
                &r,
                "tradeplex_queue_depth",
                "Requests waiting for a free worker",
                &["service"],
            ),
            in_flight: gauge_vec(
                &r,
                "tradeplex_requests_in_flight",
                "Requests delivered to workers and not yet answered",
                &["service"],
            ),
            workers: gauge_vec(
                &r,
                "tradeplex_workers",
                "Registered workers offering the service",
                &["service"],
            ),
            worker_registrations: counter(
                &r,
                "tradeplex_worker_registrations_total",
                "Workers registered",
            ),
            workers_expired: counter(
                &r,
                "tradeplex_workers_expired_total",
                "Workers dropped after missing their liveness window",
            ),
            heartbeats_missed: counter(
                &r,
                "tradeplex_heartbeats_missed_total",
                "Heartbeat intervals in which a worker was silent",
            ),
            worker_disconnects: counter(
                &r,
                "tradeplex_worker_disconnects_total",
                "Workers that left with DISCONNECT",
            ),
            requests_retried: counter(
                &r,
                "tradeplex_requests_retried_total",
                "Requests re-dispatched to another worker",
            ),
            bad_frames: counter_vec(
                &r,
                "tradeplex_bad_frames_total",
                "Malformed or unexpected messages, by socket and reason",
                &["socket", "reason"],
            ),
            late_replies: counter(
                &r,
                "tradeplex_late_replies_total",
                "Worker replies for jobs no longer tracked",
            ),
            batches,
            batched_messages,
            requests_abandoned: counter(
                &r,
                "tradeplex_requests_abandoned_total",
                "Delivered requests given up (answered worker_lost) after deadline + in_flight_grace_ms without a reply",
            ),
            clients: gauge(
                &r,
                "tradeplex_clients",
                "Client connections seen recently on the frontend",
            ),
            events_relayed: counter_vec(
                &r,
                "tradeplex_events_relayed_total",
                "Events relayed to subscribers, by kind",
                &["kind"],
            ),
            event_drops,
            subscriptions: gauge(
                &r,
                "tradeplex_subscriptions",
                "Topic-prefix subscriptions held on the XPUB side, counted once per subscriber and prefix",
            ),
            subscribers: gauge(
                &r,
                "tradeplex_subscribers",
                "Subscribers holding at least one subscription",
            ),
            subscriptions_refused,
            auth_failures: counter_vec(
                &r,
                "tradeplex_auth_failures_total",
                "Connections refused because their CURVE key is not allow-listed, by socket",
                &["socket"],
            ),
            insecure: gauge(
                &r,
                "tradeplex_insecure",
                "1 while plaintext sockets are bound on non-loopback addresses (insecure = true)",
            ),
            worker_states: {
                let g = gauge_vec(
                    &r,
                    "tradeplex_worker_states",
                    "Registered workers by state: idle (nothing in flight), busy, full (at capacity), draining (offers no service)",
                    &["state"],
                );
                for state in WORKER_STATES {
                    g.with_label_values(&[state]).set(0);
                }
                g
            },
            replay: ReplayMetrics::new(&r),
            last_ticks: LastTickMetrics::new(&r),
            registry: r,
        }
    }

    /// Resolves the label handles for a service (or `_unknown`); its per-request updates
    /// are flushed with `batch`.
    pub fn service(&self, service: &str, batch: &MetricsBatch) -> ServiceMetrics {
        let mut answered = vec![(
            None,
            self.requests_answered
                .with_label_values(&[service, "ok"])
                .local(),
        )];
        for code in ErrorCode::ALL {
            answered.push((
                Some(code),
                self.requests_answered
                    .with_label_values(&[service, code.name()])
                    .local(),
            ));
        }
        let local = LocalService {
            dirty: Cell::new(false),
            received: self.requests_received.with_label_values(&[service]).local(),
            answered,
            duration: self.request_duration.with_label_values(&[service]).local(),
            queue_depth: LocalGauge::new(self.queue_depth.with_label_values(&[service])),
            in_flight: LocalGauge::new(self.in_flight.with_label_values(&[service])),
        };
        ServiceMetrics {
            local: Rc::new(local),
            batch: batch.clone(),
            workers: if service == UNKNOWN_SERVICE_LABEL || service == MGMT_SERVICE_LABEL {
                // No worker ever offers `_unknown` or the broker's own `tpx`: a
                // `tradeplex_workers{service="_unknown"} 0` series would only trip "no
                // workers for a service" alerts. Keep a gauge for the dispatcher to update,
                // but do not export it.
                IntGauge::new("tradeplex_workers_unknown_service", "not exported")
                    .expect("static metric definition")
            } else {
                self.workers.with_label_values(&[service])
            },
        }
    }

    /// Removes every series labelled with `service` (it has had no worker for the
    /// retention period), so label cardinality follows the services that exist.
    pub fn forget_service(&self, service: &str) {
        let _ = self.requests_received.remove_label_values(&[service]);
        let _ = self.requests_answered.remove_label_values(&[service, "ok"]);
        for code in ErrorCode::ALL {
            let _ = self
                .requests_answered
                .remove_label_values(&[service, code.name()]);
        }
        let _ = self.request_duration.remove_label_values(&[service]);
        let _ = self.queue_depth.remove_label_values(&[service]);
        let _ = self.in_flight.remove_label_values(&[service]);
        let _ = self.workers.remove_label_values(&[service]);
    }

    /// Counts a bad frame on `socket` (`frontend`, `backend`, `xsub`, `xpub`).
    pub fn bad_frame(&self, socket: &str, reason: &str) {
        self.bad_frames.with_label_values(&[socket, reason]).inc();
    }

    /// Renders the registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which we never build.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_drop_reasons_are_exported_before_the_first_drop() {
        let text = Metrics::new().render();
        for reason in EVENT_DROP_REASONS {
            let line = format!("tradeplex_event_drops_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn no_workers_gauge_is_exported_for_the_unknown_service_label() {
        let m = Metrics::new();
        let batch = MetricsBatch::default();
        let unknown = m.service(UNKNOWN_SERVICE_LABEL, &batch);
        unknown.workers.set(0);
        m.service(MGMT_SERVICE_LABEL, &batch).workers.set(0);
        m.service("echo", &batch).workers.set(2);
        let text = m.render();
        assert!(
            text.contains("tradeplex_workers{service=\"echo\"} 2"),
            "{text}"
        );
        assert!(
            !text.contains("tradeplex_workers{service=\"_unknown\"}")
                && !text.contains("tradeplex_workers{service=\"tpx\"}"),
            "{text}"
        );
        // Requests for unknown services are still counted under `_unknown`.
        unknown.received();
        batch.flush();
        assert!(m
            .render()
            .contains("tradeplex_requests_received_total{service=\"_unknown\"} 1"));
    }

    #[test]
    fn per_request_updates_reach_the_series_when_the_batch_is_flushed() {
        let m = Metrics::new();
        let batch = MetricsBatch::default();
        let echo = m.service("echo", &batch);
        for _ in 0..3 {
            echo.received();
            echo.queued(1);
            echo.executing(1);
        }
        echo.queued(-1);
        echo.answered(None, 0.001);
        echo.answered(Some(ErrorCode::Overloaded), 0.002);
        let text = m.render();
        assert!(
            text.contains("tradeplex_requests_received_total{service=\"echo\"} 0"),
            "not before the flush: {text}"
        );
        batch.flush();
        // A second flush adds nothing more.
        batch.flush();
        let text = m.render();
        for line in [
            "tradeplex_requests_received_total{service=\"echo\"} 3",
            "tradeplex_queue_depth{service=\"echo\"} 2",
            "tradeplex_requests_in_flight{service=\"echo\"} 3",
            "tradeplex_requests_answered_total{outcome=\"ok\",service=\"echo\"} 1",
            "tradeplex_requests_answered_total{outcome=\"overloaded\",service=\"echo\"} 1",
            "tradeplex_request_duration_seconds_count{service=\"echo\"} 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Updates from a handle dropped before the flush are not lost.
        let other = m.service("echo", &batch);
        other.received();
        drop(other);
        batch.flush();
        assert!(m
            .render()
            .contains("tradeplex_requests_received_total{service=\"echo\"} 4"));
    }
}
