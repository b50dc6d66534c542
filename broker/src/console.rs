//! The live web console on the broker's HTTP port: `/` is a page (assets built into the
//! binary, no CDN) that polls `/api/status` every second; `/api/status` is a JSON document
//! of workers, services, rates, latency, events, subscribers, halts and recent errors.
//!
//! Read-only, and off the socket loop's hot path: the loop hands over a dispatcher
//! snapshot ([`Publisher`]) at most every [`PUBLISH_EVERY`]; a sampler thread reads the
//! broker's own counters every second ([`history`]); the HTTP thread only joins the two.

pub mod history;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tradeplex_ops::http::{Page, Routes};
use tradeplex_proto::mgmt::{HaltStatus, StatusReply, WorkerStatus};

use crate::metrics::Metrics;
use history::{History, Recent, Sample};

/// Most often the socket loop refreshes the snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

const DURATION: &str = "tradeplex_request_duration_seconds";

/// What the HTTP side shows: the last dispatcher snapshot and the metric history.
pub struct Console {
    snapshot: Mutex<Option<(Instant, Arc<StatusReply>)>>,
    history: Mutex<History>,
    metrics: Arc<Metrics>,
}

/// The socket loop's end: hands a fresh [`StatusReply`] over when one is due.
pub struct Publisher {
    console: Arc<Console>,
    next: Instant,
}

impl Publisher {
    /// True when the snapshot is [`PUBLISH_EVERY`] old (so the caller builds a new one).
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Replaces the snapshot. The lock is held only for the swap.
    pub fn publish(&mut self, now: Instant, status: StatusReply) {
        self.next = now + PUBLISH_EVERY;
        let fresh = Some((now, Arc::new(status)));
        let mut slot = self
            .console
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *slot, fresh);
        drop(slot);
        // Freed after the lock is released.
        drop(old);
    }
}

/// The sampler thread; dropping it stops the thread.
pub struct Sampler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Console {
    /// A console over the broker's metrics; nothing runs until [`Console::start_sampler`].
    pub fn new(metrics: Arc<Metrics>) -> Arc<Console> {
        Arc::new(Console {
            snapshot: Mutex::new(None),
            history: Mutex::new(History::default()),
            metrics,
        })
    }

    /// The socket loop's handle.
    pub fn publisher(self: &Arc<Self>) -> Publisher {
        Publisher {
            console: self.clone(),
            next: Instant::now(),
        }
    }

    /// Starts sampling the broker's counters every [`history::SAMPLE_EVERY`].
    pub fn start_sampler(self: &Arc<Self>) -> std::io::Result<Sampler> {
        let (tx, rx) = mpsc::channel::<()>();
        let console = self.clone();
        let thread = std::thread::Builder::new()
            .name("tpx-console".into())
            .spawn(move || loop {
                console.sample();
                match rx.recv_timeout(history::SAMPLE_EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })?;
        Ok(Sampler {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    fn sample(&self) {
        let families = self.metrics.registry.gather();
        let s = Sample::from_families(Instant::now(), tradeplex_proto::now_unix_ms(), &families);
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(s);
    }

    /// Paths served without credentials: the page's script and style sheet, static code
    /// with no data in it, which the browser fetches without the page's `?token=`. The
    /// page itself and `/api/status` need credentials.
    pub const PUBLIC: &'static [&'static str] = &["/console.js", "/console.css"];

    /// The pages for [`tradeplex_ops::HttpOptions::routes`].
    pub fn routes(self: &Arc<Self>) -> Routes {
        let console = self.clone();
        Arc::new(move |path, _query| match path {
            "/" | "/index.html" => Some(Page::new("text/html; charset=utf-8", INDEX_HTML)),
            "/console.js" => Some(Page::new("text/javascript; charset=utf-8", CONSOLE_JS)),
            "/console.css" => Some(Page::new("text/css; charset=utf-8", CONSOLE_CSS)),
            "/api/status" => Some(Page::new("application/json", console.status_json())),
            _ => None,
        })
    }

    /// The `/api/status` document.
    pub fn status_json(&self) -> Vec<u8> {
        let snapshot = self
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let doc = build(
            snapshot.as_ref().map(|(at, s)| (*at, &**s)),
            &history,
            &self.metrics,
        );
        drop(history);
        // Serializing plain structs of strings and numbers does not fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

/// The `/api/status` document (docs/operations.md, "Console", describes each field).
#[derive(Debug, Serialize)]
pub struct StatusDoc<'a> {
    broker: Option<String>,
    version: &'static str,
    commit: &'static str,
    uptime_s: Option<u64>,
    /// Age of the dispatcher snapshot (null before the socket loop first published one).
    snapshot_age_ms: Option<u64>,
    /// Seconds the rates and percentiles span (0 until the second sample).
    window_s: f64,
    workers: Vec<WorkerDoc<'a>>,
    services: Vec<ServiceDoc>,
    events: EventsDoc,
    clients: i64,
    subscribers: i64,
    subscriptions: i64,
    halts: &'a [HaltStatus],
    risk: RiskDoc,
    recent: Vec<Recent>,
}

#[derive(Debug, Serialize)]
struct WorkerDoc<'a> {
    #[serde(flatten)]
    status: &'a WorkerStatus,
    /// `idle`, `busy`, `full` or `draining`, as `tradeplex_worker_states` counts them.
    state: &'static str,
}

#[derive(Debug, Serialize)]
struct ServiceDoc {
    service: String,
    workers: u32,
    queued: u32,
    in_flight: u32,
    /// Requests received per second over the window.
    request_rate: Option<f64>,
    /// Answers other than `ok` per second over the window, by error code name (codes
    /// that occurred only).
    error_rate: BTreeMap<String, f64>,
    /// Broker latency percentiles over the window, milliseconds (null: nothing answered).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Requests received since the broker started (or since the service reappeared).
    received: f64,
    /// Answers by outcome since then.
    answered: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct EventsDoc {
    /// Events relayed per second over the window, by kind.
    rate: BTreeMap<String, f64>,
    /// Events relayed since start, by kind.
    total: BTreeMap<String, f64>,
    /// Events dropped since start, by reason.
    drops: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct RiskDoc {
    /// Orders the risk stage checked since start.
    checked: f64,
    /// Orders refused since start, by rule.
    rejected: BTreeMap<String, f64>,
}

fn worker_state(w: &WorkerStatus) -> &'static str {
    if w.services.is_empty() {
        "draining"
    } else if w.in_flight == 0 {
        "idle"
    } else if w.in_flight < w.capacity {
        "busy"
    } else {
        "full"
    }
}

fn build<'a>(
    snapshot: Option<(Instant, &'a StatusReply)>,
    h: &History,
    metrics: &Metrics,
) -> StatusDoc<'a> {
    let window = h.span_s();
    let services = snapshot
        .map(|(_, s)| s.services.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let name = s.service.to_string();
            let svc = [("service", name.as_str())];
            let ms = |q| h.quantile(DURATION, &name, q).map(|v| v * 1000.0);
            ServiceDoc {
                request_rate: (window > 0.0).then(|| {
                    h.rate_by("tradeplex_requests_received_total", &svc, "")
                        .values()
                        .sum()
                }),
                error_rate: h
                    .rate_by(
                        "tradeplex_requests_answered_total",
                        &[("service", &name), ("outcome!", "ok")],
                        "outcome",
                    )
                    .into_iter()
                    .filter(|(_, r)| *r > 0.0)
                    .collect(),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                received: h
                    .total_by("tradeplex_requests_received_total", &svc, "")
                    .values()
                    .sum(),
                answered: h.total_by("tradeplex_requests_answered_total", &svc, "outcome"),
                service: name,
                workers: s.workers,
                queued: s.queued,
                in_flight: s.in_flight,
            }
        })
        .collect();
    StatusDoc {
        broker: snapshot.map(|(_, s)| s.broker.to_string()),
        version: tradeplex_ops::process_metrics::VERSION,
        commit: tradeplex_ops::process_metrics::COMMIT,
        uptime_s: snapshot.map(|(_, s)| s.uptime_s),
        snapshot_age_ms: snapshot.map(|(at, _)| at.elapsed().as_millis() as u64),
        window_s: window,
        workers: snapshot
            .map(|(_, s)| s.workers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|w| WorkerDoc {
                status: w,
                state: worker_state(w),
            })
            .collect(),
        services,
        events: EventsDoc {
            rate: h.rate_by("tradeplex_events_relayed_total", &[], "kind"),
            total: h.total_by("tradeplex_events_relayed_total", &[], "kind"),
            drops: h.total_by("tradeplex_event_drops_total", &[], "reason"),
        },
        clients: metrics.clients.get(),
        subscribers: metrics.subscribers.get(),
        subscriptions: metrics.subscriptions.get(),
        halts: snapshot
            .map(|(_, s)| s.halts.as_slice())
            .unwrap_or_default(),
        risk: RiskDoc {
            checked: h
                .total_by("tradeplex_risk_checked_total", &[], "")
                .values()
                .sum(),
            rejected: h.total_by("tradeplex_risk_rejected_total", &[], "rule"),
        },
        recent: h.recent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeplex_proto::mgmt::ServiceStatus;
    use tradeplex_proto::{ServiceName, WorkerId};

    fn worker(in_flight: u32, services: &[&str]) -> WorkerStatus {
        WorkerStatus {
            worker: WorkerId(uuid::Uuid::new_v4()),
            services: services
                .iter()
                .map(|s| ServiceName::new(*s).unwrap())
                .collect(),
            capacity: 2,
            in_flight,
            heartbeat_age_ms: 5,
            served: 7,
        }
    }

    fn doc(console: &Console) -> serde_json::Value {
        serde_json::from_slice(&console.status_json()).unwrap()
    }

    #[test]
    fn the_document_joins_the_snapshot_and_the_counters() {
        let metrics = Arc::new(Metrics::new());
        let console = Console::new(metrics.clone());
        let before = doc(&console);
        assert!(before["broker"].is_null() && before["snapshot_age_ms"].is_null());
        assert_eq!(before["workers"], serde_json::json!([]));

        let batch = crate::metrics::MetricsBatch::default();
        let sim = metrics.service("SIM", &batch);
        sim.received();
        sim.answered(Some(tradeplex_proto::ErrorCode::WorkerLost), 0.002);
        batch.flush();
        console.sample();
        let mut publisher = console.publisher();
        let now = Instant::now();
        assert!(publisher.due(now));
        publisher.publish(
            now,
            StatusReply {
                broker: WorkerId(uuid::Uuid::new_v4()),
                uptime_s: 3,
                workers: vec![
                    worker(0, &["SIM"]),
                    worker(1, &["SIM"]),
                    worker(2, &["SIM"]),
                    worker(0, &[]),
                ],
                services: vec![ServiceStatus {
                    service: ServiceName::new("SIM").unwrap(),
                    workers: 3,
                    queued: 1,
                    in_flight: 3,
                }],
                halts: Vec::new(),
                pair: None,
            },
        );
        assert!(!publisher.due(now + PUBLISH_EVERY / 2));
        assert!(publisher.due(now + PUBLISH_EVERY));

        let d = doc(&console);
        let states: Vec<&str> = d["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["idle", "busy", "full", "draining"]);
        assert_eq!(d["workers"][0]["served"], 7);
        let s = &d["services"][0];
        assert_eq!(
            (s["service"].as_str(), s["queued"].as_u64()),
            (Some("SIM"), Some(1))
        );
        assert_eq!(s["received"], 1.0);
        assert_eq!(s["answered"]["worker_lost"], 1.0);
        // One sample: no window yet, so no rates or percentiles.
        assert!(s["request_rate"].is_null() && s["p99_ms"].is_null(), "{s}");
        assert_eq!(d["uptime_s"], 3);
        assert!(d["snapshot_age_ms"].as_u64().unwrap() < 60_000);
    }

    #[test]
    fn the_page_and_its_assets_are_served_and_nothing_else() {
        let console = Console::new(Arc::new(Metrics::new()));
        let routes = console.routes();
        for (path, kind) in [
            ("/", "text/html; charset=utf-8"),
            ("/console.js", "text/javascript; charset=utf-8"),
            ("/console.css", "text/css; charset=utf-8"),
            ("/api/status", "application/json"),
        ] {
            let page = routes(path, None).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(page.content_type, kind, "{path}");
        }
        assert!(routes("/nosuch", None).is_none());
        // Offline: the page names no other origin.
        let html = routes("/", None).unwrap().body;
        assert!(
            !String::from_utf8_lossy(&html).contains("//"),
            "the page loads something remote"
        );
        for public in Console::PUBLIC {
            assert!(routes(public, None).is_some(), "{public}");
        }
    }
}
