//! Runs handlers on a fixed pool of threads (one per unit of capacity) and hands results
//! back to the session thread through an inproc PUSH/PULL pair it can poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tradeplex_proto::{worker as wp, ErrorCode, ServiceName};

use crate::handler::{Handler, HandlerError, Request};
use crate::journal::Journal;
use crate::metrics::{RequestStats, WorkerMetrics};

/// A finished job, as the session thread reads it from the results socket: the whole
/// REPLY or ERROR message (head and body), ready to send to the broker as it is.
pub type Finished = Vec<u8>;

/// Shared by the executor threads.
pub struct Shared {
    /// Handlers by service.
    pub handlers: HashMap<ServiceName, Arc<dyn Handler>>,
    /// Where to journal executions, if anywhere.
    pub journal: Option<Journal>,
    /// This worker's id as text (for the journal).
    pub worker: String,
    /// Metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// What `/readyz` reports: registered with a broker and every service available.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    /// Whether handlers that say so may run on the session thread: not while every
    /// journal line waits for its fsync, which would stall heartbeats and every other
    /// request behind each order's disk flush.
    pub fn may_run_inline(&self) -> bool {
        self.journal
            .as_ref()
            .is_none_or(|j| j.options().fsync != tradeplex_ops::journal::FsyncPolicy::Always)
    }
}

/// The pool: send requests in, poll `results` for what finished.
pub struct Executor {
    jobs: Option<Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
}

impl Executor {
    /// Starts `threads` executor threads that push results to `results_endpoint` (inproc).
    pub fn start(
        ctx: &zmq::Context,
        threads: usize,
        shared: Arc<Shared>,
        results_endpoint: &str,
    ) -> std::io::Result<Executor> {
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let push = ctx.socket(zmq::PUSH).map_err(std::io::Error::other)?;
            push.connect(results_endpoint)
                .map_err(std::io::Error::other)?;
            let (rx, shared) = (rx.clone(), shared.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("tpx-exec-{i}"))
                    .spawn(move || execute_loop(rx, push, shared))?,
            );
        }
        Ok(Executor {
            jobs: Some(tx),
            threads: handles,
        })
    }

    /// Queues a request. The broker never sends more than the capacity, so this channel
    /// holds at most `capacity` requests.
    pub fn submit(&self, req: Request) {
        if let Some(tx) = &self.jobs {
            let _ = tx.send(req);
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn execute_loop(rx: Receiver<Request>, push: zmq::Socket, shared: Arc<Shared>) {
    let mut stats = RequestStats::new(shared.metrics.clone());
    while let Ok(req) = rx.recv() {
        let message = execute(&shared, &req, &mut stats);
        if let Err(e) = tradeplex_ops::uninterrupted(|| push.send(&message[..], 0)) {
            tracing::error!(error = %e, job = %req.job, "cannot hand result to session");
        }
    }
}

/// Runs one request through its handler, refusing stale ones before anything executes.
pub fn execute(shared: &Shared, req: &Request, stats: &mut RequestStats) -> Finished {
    let started = Instant::now();
    let result = run_handler(shared, req);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.name(),
    };
    stats.observe(&req.service, outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(body) => wp::encode(wp::Command::Reply, &wp::ReplyHeader { job: req.job }, &body),
        Err(e) => {
            let h = wp::ErrorHeader::new(req.job, e.code, e.message);
            wp::encode(wp::Command::Error, &h, &[])
        }
    }
}

fn run_handler(shared: &Shared, req: &Request) -> Result<Vec<u8>, HandlerError> {
    let now = tradeplex_proto::now_unix_ms();
    if now >= req.deadline_ms {
        // Stale: never executed, whatever it is.
        return Err(HandlerError {
            code: ErrorCode::DeadlineExceeded,
            message: format!(
                "deadline passed {} ms before execution; not executed",
                now - req.deadline_ms
            ),
        });
    }
    let Some(handler) = shared.handlers.get(&req.service) else {
        return Err(HandlerError::unavailable(format!(
            "this worker does not serve {}",
            req.service
        )));
    };
    if !handler.available() {
        return Err(HandlerError::unavailable(format!(
            "{} is not available on this worker",
            req.service
        )));
    }
    if let Some(journal) = &shared.journal {
        if let Err(e) = journal.start(&shared.worker, req) {
            // Refuse rather than execute something we could not record.
            shared.metrics.journal_errors.inc();
            tracing::error!(error = %e, job = %req.job, "journal write failed; refusing request");
            return Err(HandlerError::unavailable(format!(
                "journal write failed: {e}; not executed"
            )));
        }
    }
    let started = Instant::now();
    let result = handler.handle(req);
    if let Some(journal) = &shared.journal {
        if let Err(e) = journal.done(&shared.worker, req, &result, started.elapsed()) {
            // Executed: the reply goes out anyway; the start line without its done line
            // tells reconciliation to query the order.
            shared.metrics.journal_errors.inc();
            tracing::error!(error = %e, job = %req.job, "journal: outcome line not written");
        }
    }
    result
}
