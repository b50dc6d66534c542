//! The worker's Prometheus metrics. Per-request counts and handler latencies go through a
//! [`RequestStats`] owned by the thread that ran the handler, whose label handles are
//! resolved once instead of looked up per request.

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use tradeplex_proto::ServiceName;

/// The `result` label values of `tradeplex_gateway_orders_total`, exported at 0 once a
/// gateway reports its connection state, so `increase()` sees the first reject.
pub const ORDER_RESULTS: [&str; 4] = ["sent", "filled", "cancelled", "rejected"];

/// Every metric a worker exposes.
pub struct WorkerMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Requests executing now.
    pub in_flight: IntGauge,
    /// 1 while registered with a broker.
    pub registered: IntGauge,
    /// Registrations sent (first and after every reconnect).
    pub registrations: prometheus::IntCounter,
    /// Gateway connection state by gateway: 0 disconnected, 1 connected, 2 reconnecting.
    pub gateway_state: IntGaugeVec,
    /// Orders by gateway and result (`sent`, `filled`, `rejected`, `cancelled`).
    pub orders: IntCounterVec,
    /// Events published, by kind.
    pub events_published: IntCounterVec,
    /// Events dropped before publishing (event queue full or socket error).
    pub events_dropped: prometheus::IntCounter,
    /// Journal lines that could not be written (or synced).
    pub journal_errors: prometheus::IntCounter,
}

impl WorkerMetrics {
    /// Creates and registers every worker metric (static definitions; cannot fail on input).
    pub fn new() -> WorkerMetrics {
        let r = Registry::new();
        tradeplex_ops::process_metrics::register(&r);
        let requests = IntCounterVec::new(
            Opts::new(
                "tradeplex_worker_requests_total",
                "Requests executed, by service and outcome",
            ),
            &["service", "outcome"],
        )
        .expect("static metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tradeplex_worker_handler_duration_seconds",
                "Handler run time",
            )
            .buckets(prometheus::exponential_buckets(0.00005, 2.5, 14).expect("static buckets")),
            &["service"],
        )
        .expect("static metric");
        let in_flight = IntGauge::new("tradeplex_worker_in_flight", "Requests executing")
            .expect("static metric");
        let registered = IntGauge::new(
            "tradeplex_worker_registered",
            "1 while registered with a broker",
        )
        .expect("static metric");
        let registrations = prometheus::IntCounter::new(
            "tradeplex_worker_ready_sent_total",
            "READY messages sent after (re)connecting",
        )
        .expect("static metric");
        let gateway_state = IntGaugeVec::new(
            Opts::new(
                "tradeplex_gateway_connected",
                "Gateway connection state: 0 disconnected, 1 connected, 2 reconnecting",
            ),
            &["gateway"],
        )
        .expect("static metric");
        let orders = IntCounterVec::new(
            Opts::new(
                "tradeplex_gateway_orders_total",
                "Orders by gateway and result",
            ),
            &["gateway", "result"],
        )
        .expect("static metric");
        let events_published = IntCounterVec::new(
            Opts::new(
                "tradeplex_worker_events_published_total",
                "Events published, by kind",
            ),
            &["kind"],
        )
        .expect("static metric");
        let events_dropped = prometheus::IntCounter::new(
            "tradeplex_worker_events_dropped_total",
            "Events dropped before publishing (queue full or socket error); subscribers see gaps",
        )
        .expect("static metric");
        let journal_errors = prometheus::IntCounter::new(
            "tradeplex_worker_journal_errors_total",
            "Journal lines not written or not synced (a start line failing refuses the request)",
        )
        .expect("static metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(registered.clone()),
            Box::new(registrations.clone()),
            Box::new(gateway_state.clone()),
            Box::new(orders.clone()),
            Box::new(events_published.clone()),
            Box::new(events_dropped.clone()),
            Box::new(journal_errors.clone()),
        ] {
            r.register(m).expect("unique metric name");
        }
        WorkerMetrics {
            registry: r,
            requests,
            duration,
            in_flight,
            registered,
            registrations,
            gateway_state,
            orders,
            events_published,
            events_dropped,
            journal_errors,
        }
    }
}

/// Most (service, outcome) pairs one [`RequestStats`] keeps resolved; beyond them (a
/// broker sending requests for many unknown services) each update looks its series up.
const MAX_CACHED_SERIES: usize = 64;

/// One thread's resolved handles of the per-request series: updating them is an atomic
/// add, not the label lookup (hash of the labels under the vector's lock) it replaces.
/// They are updated before the result is sent, so a client that has its reply sees it
/// counted in `/metrics`.
pub struct RequestStats {
    metrics: Arc<WorkerMetrics>,
    counters: Vec<(ServiceName, &'static str, IntCounter)>,
    durations: Vec<(ServiceName, Histogram)>,
}

impl RequestStats {
    /// Handles of `metrics`' per-request series (none resolved yet).
    pub fn new(metrics: Arc<WorkerMetrics>) -> RequestStats {
        RequestStats {
            metrics,
            counters: Vec::new(),
            durations: Vec::new(),
        }
    }

    /// Records one executed request.
    pub fn observe(&mut self, service: &ServiceName, outcome: &'static str, seconds: f64) {
        let m = &self.metrics;
        let found = self
            .counters
            .iter()
            .find(|(s, o, _)| *o == outcome && s == service);
        match found {
            Some((_, _, c)) => c.inc(),
            None => {
                let c = m.requests.with_label_values(&[service.as_str(), outcome]);
                c.inc();
                if self.counters.len() < MAX_CACHED_SERIES {
                    self.counters.push((service.clone(), outcome, c));
                }
            }
        }
        match self.durations.iter().find(|(s, _)| s == service) {
            Some((_, h)) => h.observe(seconds),
            None => {
                let h = m.duration.with_label_values(&[service.as_str()]);
                h.observe(seconds);
                if self.durations.len() < MAX_CACHED_SERIES {
                    self.durations.push((service.clone(), h));
                }
            }
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics::new()
    }
}
