//! The worker's Prometheus metrics.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

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

    /// Records one executed request.
    pub fn observe(&self, service: &str, outcome: &str, seconds: f64) {
        self.requests.with_label_values(&[service, outcome]).inc();
        self.duration.with_label_values(&[service]).observe(seconds);
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics::new()
    }
}
