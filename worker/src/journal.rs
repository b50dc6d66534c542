//! The order journal, the record that settles "outcome unknown": a `start` line written
//! (unbuffered, so it survives a kill -9) *before* a request executes, and a `done` line
//! with its outcome after. Optional fsync (every order line or batched), size-based
//! rotation. The line format is documented in docs/operations.md ("The order journal").

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::handler::{HandlerError, Request};

/// When journal lines are forced to disk (`fdatasync`). Every line is written with one
/// `write` before the handler runs whatever the policy, so a killed worker loses nothing;
/// the policy is about power loss and kernel crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never forced (the kernel writes back when it likes, ~30 s).
    Off,
    /// Each line of a request not marked idempotent (orders, cancels) is synced before
    /// the worker goes on: the start line before the handler runs, the done line before
    /// the reply is sent. Idempotent requests' lines ride along with the next sync.
    Always,
    /// A background thread syncs every N ms when something was written: a power loss can
    /// lose the last N ms of lines.
    Every(Duration),
}

/// Longest batched fsync interval accepted.
pub const MAX_FSYNC_MS: u64 = 10_000;

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(FsyncPolicy::Off),
            "always" => Ok(FsyncPolicy::Always),
            other => other
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| (1..=MAX_FSYNC_MS).contains(n))
                .map(|n| FsyncPolicy::Every(Duration::from_millis(n)))
                .ok_or_else(|| {
                    format!("{s:?} is not off, always or a batch interval 1ms-{MAX_FSYNC_MS}ms")
                }),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Off => write!(f, "off"),
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Every(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// Where and how to journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// The current file; rotated ones are `PATH.1` (newest) … `PATH.keep` (oldest).
    pub path: PathBuf,
    /// When lines are forced to disk.
    pub fsync: FsyncPolicy,
    /// The current file is rotated before a line would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept (the oldest beyond this is deleted).
    pub keep: u32,
}

/// Default rotation size: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default number of rotated files kept.
pub const DEFAULT_KEEP: u32 = 10;

impl JournalOptions {
    /// `path` with the defaults: fsync `always`, rotation at 64 MiB, 10 files kept.
    pub fn new(path: impl Into<PathBuf>) -> JournalOptions {
        JournalOptions {
            path: path.into(),
            fsync: FsyncPolicy::Always,
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// The file being appended to.
struct Current {
    file: Arc<File>,
    size: u64,
    /// Written since the last sync (batched policy).
    dirty: bool,
    /// Lines written since the journal was opened (all files).
    written: u64,
    /// Lines known to be on disk because a rotation synced the file they are in.
    durable: u64,
}

/// An append-only, rotating journal shared by the executor threads.
pub struct Journal {
    opts: JournalOptions,
    current: Arc<Mutex<Current>>,
    /// Group commit (`always`): lines covered by the last completed sync. Held while
    /// syncing, so threads arriving meanwhile find their line covered by the next one
    /// instead of each paying its own fsync.
    synced: Mutex<u64>,
    flusher: Option<Flusher>,
}

#[derive(Serialize)]
struct StartLine<'a> {
    ts_ms: u64,
    event: &'static str,
    worker: &'a str,
    service: &'a str,
    job: u64,
    id: u64,
    idempotent: bool,
    deadline_ms: u64,
    reference: Option<String>,
    body: serde_json::Value,
}

#[derive(Serialize)]
struct DoneLine<'a> {
    ts_ms: u64,
    event: &'static str,
    worker: &'a str,
    service: &'a str,
    job: u64,
    id: u64,
    outcome: &'a str,
    order_id: Option<String>,
    status: Option<String>,
    error: Option<&'a str>,
    us: u64,
}

/// The fields of an Order reply the done line keeps (any map reply may have them).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct OrderFields {
    order_id: Option<String>,
    status: Option<String>,
}

impl Journal {
    /// Opens (creating or appending to) the journal; starts the flusher if batched.
    pub fn open(opts: JournalOptions) -> std::io::Result<Journal> {
        let file = open_append(&opts.path)?;
        let size = file.metadata()?.len();
        let current = Arc::new(Mutex::new(Current {
            file: Arc::new(file),
            size,
            dirty: false,
            written: 0,
            durable: 0,
        }));
        let flusher = match opts.fsync {
            FsyncPolicy::Every(every) => Some(Flusher::start(current.clone(), every)?),
            _ => None,
        };
        Ok(Journal {
            opts,
            current,
            synced: Mutex::new(0),
            flusher,
        })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.opts
    }

    /// The `start` line: `req` is about to be executed by `worker`. An error means it
    /// must not be executed.
    pub fn start(&self, worker: &str, req: &Request) -> std::io::Result<()> {
        let body = rmp_serde::from_slice::<serde_json::Value>(&req.body)
            .unwrap_or_else(|_| serde_json::Value::String(format!("<{} bytes>", req.body.len())));
        let reference = body
            .get("reference")
            .and_then(|r| r.as_str())
            .map(String::from);
        let line = StartLine {
            ts_ms: tradeplex_proto::now_unix_ms(),
            event: "start",
            worker,
            service: req.service.as_str(),
            job: req.job.0,
            id: req.id.0,
            idempotent: req.idempotent,
            deadline_ms: req.deadline_ms,
            reference,
            body,
        };
        self.append(&line, !req.idempotent)
    }

    /// The `done` line: what executing `req` gave, after `elapsed`.
    pub fn done(
        &self,
        worker: &str,
        req: &Request,
        result: &Result<Vec<u8>, HandlerError>,
        elapsed: Duration,
    ) -> std::io::Result<()> {
        let (outcome, fields, error) = match result {
            Ok(reply) => ("ok", order_fields(reply), None),
            Err(e) => (
                e.code.name(),
                OrderFields::default(),
                Some(e.message.as_str()),
            ),
        };
        let line = DoneLine {
            ts_ms: tradeplex_proto::now_unix_ms(),
            event: "done",
            worker,
            service: req.service.as_str(),
            job: req.job.0,
            id: req.id.0,
            outcome,
            order_id: fields.order_id,
            status: fields.status,
            error,
            us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        };
        self.append(&line, !req.idempotent)
    }

    fn append(&self, line: &impl Serialize, order_line: bool) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(line)?;
        text.push(b'\n');
        let len = text.len() as u64;
        let line_no = {
            let mut cur = self.lock_current();
            if cur.size > 0 && cur.size.saturating_add(len) > self.opts.max_bytes {
                self.rotate(&mut cur)?;
            }
            // One write per line under the lock: lines never interleave.
            (&*cur.file).write_all(&text)?;
            cur.size += len;
            cur.dirty = true;
            cur.written += 1;
            cur.written
        };
        if order_line && self.opts.fsync == FsyncPolicy::Always {
            self.sync_through(line_no)?;
        }
        Ok(())
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once line `line_no` is on disk: at once if a sync since covered it, else
    /// after one sync covering every line written so far. Writers keep appending under
    /// the other lock meanwhile.
    fn sync_through(&self, line_no: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let (file, upto, durable) = {
            let cur = self.lock_current();
            (cur.file.clone(), cur.written, cur.durable)
        };
        if (*synced).max(durable) >= line_no {
            return Ok(());
        }
        file.sync_data()?;
        *synced = upto;
        Ok(())
    }

    /// `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, …; `PATH.keep` is deleted.
    fn rotate(&self, cur: &mut Current) -> std::io::Result<()> {
        let path = &self.opts.path;
        if self.opts.fsync != FsyncPolicy::Off {
            cur.file.sync_data()?;
        }
        let keep = self.opts.keep.max(1);
        ignore_missing(std::fs::remove_file(rotated(path, keep)))?;
        for i in (1..keep).rev() {
            ignore_missing(std::fs::rename(rotated(path, i), rotated(path, i + 1)))?;
        }
        std::fs::rename(path, rotated(path, 1))?;
        let file = open_append(path)?;
        if self.opts.fsync != FsyncPolicy::Off {
            // The renames and the new file survive a crash too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        let (written, durable) = (cur.written, cur.written);
        *cur = Current {
            file: Arc::new(file),
            size: 0,
            dirty: false,
            written,
            // Every line so far is in a synced file (with fsync off, nobody asks).
            durable,
        };
        tracing::info!(journal = %path.display(), keep, "journal rotated");
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.flusher.take();
        if self.opts.fsync != FsyncPolicy::Off {
            let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = cur.file.sync_data() {
                tracing::error!(error = %e, "journal: final fsync failed");
            }
        }
    }
}

/// The batched policy's thread: syncs the current file every interval when dirty.
struct Flusher {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(current: Arc<Mutex<Current>>, every: Duration) -> std::io::Result<Flusher> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("tpx-journal".into())
            .spawn(move || {
                // Disconnected (the journal dropped) ends the loop; a timeout is a tick.
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    let file = {
                        let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
                        if !std::mem::take(&mut cur.dirty) {
                            continue;
                        }
                        cur.file.clone()
                    };
                    if let Err(e) = file.sync_data() {
                        tracing::error!(error = %e, "journal: batched fsync failed");
                    }
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `PATH.n`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `order_id` and `status` of a MessagePack map reply (an Order); nothing otherwise.
fn order_fields(reply: &[u8]) -> OrderFields {
    // Only maps: a list reply decoded as a struct would be read positionally.
    let is_map = matches!(reply.first(), Some(0x80..=0x8f | 0xde | 0xdf));
    if !is_map {
        return OrderFields::default();
    }
    rmp_serde::from_slice::<OrderFields>(reply).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeplex_proto::{ErrorCode, JobId, RequestId, ServiceName};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tpx-journal-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("orders.jsonl")
    }

    fn request(job: u64, idempotent: bool, body: serde_json::Value) -> Request {
        Request {
            job: JobId(job),
            id: RequestId(job + 100),
            service: ServiceName::new("SIM").unwrap(),
            deadline_ms: 1_700_000_000_000,
            idempotent,
            body: rmp_serde::to_vec_named(&body).unwrap(),
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn an_order_gets_a_start_line_with_reference_and_deadline_and_a_done_line_with_its_outcome() {
        let path = temp("lines");
        let j = Journal::open(JournalOptions::new(&path)).unwrap();
        let req = request(
            7,
            false,
            serde_json::json!({"op": "send_order", "symbol": "AAPL", "reference": "r-1"}),
        );
        j.start("w1", &req).unwrap();
        let reply = rmp_serde::to_vec_named(&serde_json::json!({
            "order_id": "SIM.w1.3", "status": "not_traded", "volume": 1.0
        }))
        .unwrap();
        j.done("w1", &req, &Ok(reply), Duration::from_micros(42))
            .unwrap();
        let failed = request(8, false, serde_json::json!({"op": "send_order"}));
        j.done(
            "w1",
            &failed,
            &Err(HandlerError::bad_request("no symbol")),
            Duration::ZERO,
        )
        .unwrap();
        let l = lines(&path);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0]["event"], "start");
        assert_eq!(l[0]["job"], 7);
        assert_eq!(l[0]["id"], 107);
        assert_eq!(l[0]["worker"], "w1");
        assert_eq!(l[0]["service"], "SIM");
        assert_eq!(l[0]["idempotent"], false);
        assert_eq!(l[0]["deadline_ms"], 1_700_000_000_000u64);
        assert_eq!(l[0]["reference"], "r-1");
        assert_eq!(l[0]["body"]["symbol"], "AAPL");
        assert_eq!(l[1]["event"], "done");
        assert_eq!(l[1]["job"], 7);
        assert_eq!(l[1]["outcome"], "ok");
        assert_eq!(l[1]["order_id"], "SIM.w1.3");
        assert_eq!(l[1]["status"], "not_traded");
        assert_eq!(l[1]["error"], serde_json::Value::Null);
        assert_eq!(l[1]["us"], 42);
        assert_eq!(l[2]["outcome"], ErrorCode::BadRequest.name());
        assert_eq!(l[2]["error"], "no symbol");
        assert_eq!(l[2]["order_id"], serde_json::Value::Null);
    }

    #[test]
    fn a_list_reply_has_no_order_fields() {
        let list = rmp_serde::to_vec_named(&vec!["SIM.w.1", "x"]).unwrap();
        let f = order_fields(&list);
        assert!(f.order_id.is_none() && f.status.is_none());
        let garbage = [0x82, 0xff, 0x00];
        assert!(order_fields(&garbage).order_id.is_none());
    }

    #[test]
    fn rotation_keeps_n_files_and_never_splits_a_line() {
        let path = temp("rotate");
        let opts = JournalOptions {
            max_bytes: 1000,
            keep: 2,
            ..JournalOptions::new(&path)
        };
        let j = Journal::open(opts).unwrap();
        for n in 0..40u64 {
            j.start("w", &request(n, true, serde_json::json!({"n": n})))
                .unwrap();
        }
        drop(j);
        let (cur, one, two) = (
            lines(&path),
            lines(&rotated(&path, 1)),
            lines(&rotated(&path, 2)),
        );
        assert!(!rotated(&path, 3).exists(), "keeps only 2 rotated files");
        for f in [&path, &rotated(&path, 1), &rotated(&path, 2)] {
            assert!(std::fs::metadata(f).unwrap().len() <= 1000, "{f:?} too big");
        }
        // The newest lines, in order, across the files: oldest file first.
        let jobs: Vec<u64> = two
            .iter()
            .chain(&one)
            .chain(&cur)
            .map(|l| l["job"].as_u64().unwrap())
            .collect();
        assert_eq!(jobs.last(), Some(&39));
        assert!(jobs.windows(2).all(|w| w[1] == w[0] + 1), "{jobs:?}");
        assert!(jobs.len() < 40, "the oldest file was deleted");
    }

    #[test]
    fn batched_and_off_policies_write_every_line_at_once() {
        for fsync in [
            FsyncPolicy::Off,
            FsyncPolicy::Every(Duration::from_millis(5)),
        ] {
            let path = temp("policy");
            let j = Journal::open(JournalOptions {
                fsync,
                ..JournalOptions::new(&path)
            })
            .unwrap();
            j.start("w", &request(1, false, serde_json::json!({})))
                .unwrap();
            // Readable before any sync and without dropping the journal.
            assert_eq!(lines(&path).len(), 1, "{fsync}");
        }
    }

    #[test]
    fn concurrent_synced_writers_with_rotation_lose_no_line() {
        let path = temp("group");
        let j = Journal::open(JournalOptions {
            max_bytes: 8192,
            keep: 100,
            ..JournalOptions::new(&path)
        })
        .unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let j = &j;
                s.spawn(move || {
                    for n in 0..25u64 {
                        j.start("w", &request(t * 100 + n, false, serde_json::json!({})))
                            .unwrap();
                    }
                });
            }
        });
        let mut jobs: Vec<u64> = (1..=100)
            .map(|n| rotated(&path, n))
            .chain([path.clone()])
            .flat_map(|f| lines(&f))
            .map(|l| l["job"].as_u64().unwrap())
            .collect();
        jobs.sort();
        let want: Vec<u64> = (0..4)
            .flat_map(|t| (0..25).map(move |n| t * 100 + n))
            .collect();
        assert_eq!(jobs, want);
        assert!(rotated(&path, 1).exists(), "the test rotated");
    }

    #[test]
    fn fsync_policies_parse_and_print() {
        for (text, p) in [
            ("off", FsyncPolicy::Off),
            ("always", FsyncPolicy::Always),
            ("10ms", FsyncPolicy::Every(Duration::from_millis(10))),
        ] {
            assert_eq!(text.parse::<FsyncPolicy>().unwrap(), p);
            assert_eq!(p.to_string(), text);
        }
        for bad in ["", "sometimes", "0ms", "10", "20000ms", "-1ms"] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad:?}");
        }
    }
}
