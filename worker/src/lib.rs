//! Tradeplex workers: register handlers per service, then [`Worker::run`]. The library
//! handles registration, heartbeats, reconnection to a restarted broker with backoff and
//! re-registration, capacity (up to N requests execute at once) and a clean disconnect.
//!
//! ```no_run
//! use tradeplex_worker::{Worker, WorkerOptions, echo::Echo};
//! let opts = WorkerOptions::new("tcp://127.0.0.1:5556").capacity(4);
//! Worker::new(opts).service("echo", Echo).unwrap().run(Default::default()).unwrap();
//! ```
#![deny(missing_docs)]

pub mod backoff;
pub mod brokers;
pub mod config;
pub mod echo;
pub mod executor;
pub mod gateway;
pub mod handler;
pub mod journal;
pub mod metrics;
pub mod publisher;
pub mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use handler::{Handler, HandlerError, Request};
pub use tradeplex_ops::Shutdown;
use tradeplex_proto::{ServiceName, WorkerId};

use crate::executor::{Executor, Shared};
use crate::gateway::{EventSink, Gateway, GatewayContext, GatewayService};
use crate::metrics::WorkerMetrics;
use crate::publisher::Publisher;

/// Why a worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A ZeroMQ call failed.
    #[error("socket error: {0}")]
    Socket(#[from] zmq::Error),
    /// A file or thread could not be set up.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// CURVE could not be set up.
    #[error(transparent)]
    Curve(#[from] tradeplex_client::curve::CurveError),
    /// A service name was invalid.
    #[error("invalid service: {0}")]
    Service(#[from] tradeplex_proto::ProtoError),
    /// The broker or events endpoint list is not usable.
    #[error("endpoints: {0}")]
    Endpoints(String),
    /// No service was registered.
    #[error("a worker needs at least one service")]
    NoServices,
    /// An internal invariant broke (a bug).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A gateway could not be started.
    #[error("gateway {gateway} failed to connect: {message}")]
    Gateway {
        /// The gateway.
        gateway: String,
        /// Why.
        message: String,
    },
}

/// How a worker connects and behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The broker's backend endpoint, or a pair's two (comma-separated, primary first):
    /// the worker then serves the active one (see [`brokers`]).
    pub broker: String,
    /// This worker's id (random by default).
    pub worker_id: WorkerId,
    /// Requests executed at once (executor threads).
    pub capacity: u32,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Heartbeats the broker may miss before we reconnect.
    pub liveness: u32,
    /// Ceiling of the first reconnect delay; each delay is drawn uniformly below a ceiling
    /// that doubles per attempt (full jitter, see [`backoff`]).
    pub reconnect_min: Duration,
    /// Highest reconnect ceiling.
    pub reconnect_max: Duration,
    /// How long in-flight requests get to finish on shutdown.
    pub drain_grace: Duration,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// The order journal, if any.
    pub journal: Option<journal::JournalOptions>,
    /// The broker's XSUB endpoint, where gateways' events are published (none: events
    /// are not published); with a pair, one per broker in the order of `broker`.
    pub events: Option<String>,
    /// CURVE settings for the broker link and event socket; None = plaintext.
    pub curve: Option<tradeplex_client::curve::ClientCurve>,
}

impl WorkerOptions {
    /// Defaults: capacity 1, heartbeat 1 s, liveness 3, reconnect 100 ms → 5 s.
    pub fn new(broker: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            broker: broker.into(),
            worker_id: WorkerId::random(),
            capacity: 1,
            heartbeat: Duration::from_millis(1000),
            liveness: 3,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            drain_grace: Duration::from_secs(5),
            max_body_bytes: tradeplex_proto::DEFAULT_MAX_BODY_BYTES,
            journal: None,
            events: None,
            curve: None,
        }
    }

    /// Sets the capacity (1–1024 executor threads).
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = n.clamp(1, 1024);
        self
    }

    /// Sets the heartbeat interval.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// Sets the liveness (missed heartbeats tolerated).
    pub fn liveness(mut self, n: u32) -> Self {
        self.liveness = n.max(1);
        self
    }

    /// Journals to `path` with the default policy (fsync `always`, 64 MiB × 10 files).
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(journal::JournalOptions::new(path));
        self
    }

    /// Sets the broker's XSUB endpoint for events.
    pub fn events(mut self, endpoint: impl Into<String>) -> Self {
        self.events = Some(endpoint.into());
        self
    }

    /// Silence from the broker tolerated before reconnecting.
    pub fn liveness_window(&self) -> Duration {
        self.heartbeat * self.liveness
    }
}

/// A worker under construction: add services, then run.
pub struct Worker {
    opts: WorkerOptions,
    handlers: HashMap<ServiceName, Arc<dyn Handler>>,
    gateways: Vec<Arc<dyn Gateway>>,
    metrics: Arc<WorkerMetrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Worker {
    /// A worker with no services yet.
    pub fn new(opts: WorkerOptions) -> Worker {
        Worker {
            opts,
            handlers: HashMap::new(),
            gateways: Vec::new(),
            metrics: Arc::new(WorkerMetrics::new()),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Reports readiness into `flag` (e.g. the HTTP server's `/readyz` flag): true while
    /// registered with a broker and every service (gateway) is available.
    pub fn readiness(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Worker {
        self.ready = flag;
        self
    }

    /// Adds a service.
    pub fn service(mut self, name: &str, handler: impl Handler) -> Result<Worker, WorkerError> {
        self.handlers
            .insert(ServiceName::new(name)?, Arc::new(handler));
        Ok(self)
    }

    /// Adds a service from a shared handler.
    pub fn service_arc(
        mut self,
        name: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<Worker, WorkerError> {
        self.handlers.insert(ServiceName::new(name)?, handler);
        Ok(self)
    }

    /// Adds a gateway, served as the service named after it (e.g. `SIM`). [`Worker::run`]
    /// connects it to its events before serving and closes it after.
    pub fn gateway(mut self, gateway: Arc<dyn Gateway>) -> Result<Worker, WorkerError> {
        let name = gateway.name().to_string();
        let service = GatewayService::new(gateway.clone(), Some(self.metrics.clone()));
        self = self.service_arc(&name, Arc::new(service))?;
        self.gateways.push(gateway);
        Ok(self)
    }

    /// The worker's metrics (serve them with `tradeplex_ops::HttpServer`).
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }

    /// This worker's id.
    pub fn id(&self) -> WorkerId {
        self.opts.worker_id
    }

    /// Serves until `shutdown` is triggered, then drains and disconnects.
    pub fn run(self, shutdown: Shutdown) -> Result<(), WorkerError> {
        if self.handlers.is_empty() {
            return Err(WorkerError::NoServices);
        }
        let brokers = brokers::Brokers::new(&self.opts.broker, self.opts.events.as_deref())?;
        let ctx = zmq::Context::new();
        let results = ctx.socket(zmq::PULL)?;
        let endpoint = format!("inproc://tpx-results-{}", self.opts.worker_id);
        results.bind(&endpoint)?;
        let journal = match &self.opts.journal {
            Some(j) => Some(journal::Journal::open(j.clone())?),
            None => None,
        };
        let shared = Arc::new(Shared {
            handlers: self.handlers,
            journal,
            worker: self.opts.worker_id.to_string(),
            metrics: self.metrics,
            ready: self.ready,
        });
        let publisher = match (brokers.events().is_empty(), self.gateways.is_empty()) {
            (false, false) => Some(Publisher::start_following(
                &ctx,
                publisher::Target {
                    endpoints: brokers.events().to_vec(),
                    current: brokers.shared_index(),
                },
                self.opts.worker_id,
                shared.metrics.clone(),
                self.opts.curve.as_ref(),
            )?),
            _ => None,
        };
        let sink = publisher.as_ref().map_or_else(
            || EventSink::discard(Some(shared.metrics.clone())),
            Publisher::sink,
        );
        let gateways = Gateways(self.gateways);
        for g in &gateways.0 {
            g.connect(GatewayContext {
                worker: self.opts.worker_id,
                sink: sink.clone(),
            })
            .map_err(|e| WorkerError::Gateway {
                gateway: g.name().to_string(),
                message: e.to_string(),
            })?;
        }
        let executor =
            Executor::start(&ctx, self.opts.capacity as usize, shared.clone(), &endpoint)?;
        tracing::info!(worker = %self.opts.worker_id, broker = %self.opts.broker, capacity = self.opts.capacity, "worker starting");
        let result = session::Session::new(&self.opts, &ctx, shared, &executor, results)
            .run(brokers, &shutdown);
        drop(executor);
        // Gateways stop before the publisher, which then sends what they left queued.
        drop(gateways);
        drop(publisher);
        result
    }
}

/// Gateways connected by [`Worker::run`], closed when dropped (also on early errors).
struct Gateways(Vec<Arc<dyn Gateway>>);

impl Drop for Gateways {
    fn drop(&mut self) {
        for g in &self.0 {
            g.close();
        }
    }
}
