//! The order journal, the record that settles "outcome unknown": a `start` line written
//! (unbuffered, so it survives a kill -9) *before* a request executes, and a `done` line
//! with its outcome after. Optional fsync (every order line or batched), size-based
//! rotation. The line format is documented in docs/operations.md ("The order journal").

use std::time::Duration;

use serde::Serialize;

pub use tradeplex_ops::journal::{
    rotated, FsyncPolicy, JournalOptions, DEFAULT_KEEP, DEFAULT_MAX_BYTES, MAX_FSYNC_MS,
};

use crate::handler::{HandlerError, Request};

/// The worker's order journal: start and done lines over the shared journal writer.
pub struct Journal(tradeplex_ops::journal::Journal);

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
        tradeplex_ops::journal::Journal::open(opts).map(Journal)
    }

    /// The options it was opened with.
    pub fn options(&self) -> &JournalOptions {
        self.0.options()
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
        self.0.append(&line, !req.idempotent)
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
        self.0.append(&line, !req.idempotent)
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
    use std::path::{Path, PathBuf};
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
