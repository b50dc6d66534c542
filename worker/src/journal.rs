//! The execution journal: one JSON line per request, written (unbuffered, so it survives
//! a kill -9 of the worker) *before* the handler runs. Answers "was it executed?" after
//! a crash, and lets tests count executions.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::handler::Request;

/// An append-only journal file.
pub struct Journal {
    file: Mutex<File>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts_ms: u64,
    worker: String,
    service: &'a str,
    job: u64,
    id: u64,
    idempotent: bool,
    body: serde_json::Value,
}

impl Journal {
    /// Opens (creating or appending to) the journal at `path`.
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal {
            file: Mutex::new(file),
        })
    }

    /// Appends a line for `req` about to be executed by `worker`.
    pub fn record(&self, worker: &str, req: &Request) -> std::io::Result<()> {
        let body = rmp_serde::from_slice::<serde_json::Value>(&req.body)
            .unwrap_or_else(|_| serde_json::Value::String(format!("<{} bytes>", req.body.len())));
        let line = Line {
            ts_ms: tradeplex_proto::now_unix_ms(),
            worker: worker.to_string(),
            service: req.service.as_str(),
            job: req.job.0,
            id: req.id.0,
            idempotent: req.idempotent,
            body,
        };
        let mut text = serde_json::to_vec(&line)?;
        text.push(b'\n');
        // One write per line under the lock: lines never interleave.
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&text)
    }
}
