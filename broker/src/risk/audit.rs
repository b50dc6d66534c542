//! The broker's audit journal: every order request the stage sees, its decision, the
//! worker's outcome, every trade and every halt/resume, one JSON line each (format in
//! docs/risk.md), and the replay that rebuilds today's counters and the halts in force
//! from it when the broker starts.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tradeplex_ops::journal::{rotated, Journal, JournalOptions};
use tradeplex_proto::model::{CancelRequest, OrderRequest};
use tradeplex_proto::ErrorCode;

/// Most bytes the replay reads (newest files first); older lines are not replayed.
pub const MAX_REPLAY_BYTES: u64 = 256 * 1024 * 1024;
/// Longest line the replay reads; a longer one is skipped as garbage.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One audit line. `rid` ties a request to its decision and outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    /// An order request (`send_order`) or a cancel (`cancel_order`) the stage saw.
    Request {
        /// Unix ms.
        ts_ms: u64,
        /// The request's audit id (`<broker start ms>-<n>`).
        rid: String,
        /// The client's connection (the broker's routing id for it), hex.
        client: String,
        /// The client's name (its CURVE key's, or declared from loopback), if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The client's request id.
        id: u64,
        /// `send_order` or `cancel_order`.
        op: String,
        /// The order (send_order whose body decoded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<OrderRequest>,
        /// The cancel (cancel_order whose body decoded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancel: Option<CancelRequest>,
    },
    /// What the stage decided.
    Decision {
        /// Unix ms.
        ts_ms: u64,
        /// The request's audit id.
        rid: String,
        /// `pass` or `reject`.
        decision: String,
        /// The error code of a reject (`risk_rejected`, `bad_request`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// The rule of a `risk_rejected`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// The reject's message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The answer to a passed request: the worker's reply or an error.
    Outcome {
        /// Unix ms.
        ts_ms: u64,
        /// The request's audit id.
        rid: String,
        /// `ok` or the error code name.
        outcome: String,
        /// The order id of an Order reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<String>,
        /// The order status of an Order reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        /// The error message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The worker that answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// A trade event (counts toward `contract_trade_limit`).
    Trade {
        /// Unix ms.
        ts_ms: u64,
        /// Account.
        account: String,
        /// Symbol.
        symbol: String,
    },
    /// A halt by the kill switch (`*` = every account).
    Halt {
        /// Unix ms.
        ts_ms: u64,
        /// The account halted.
        account: String,
        /// Why.
        reason: String,
        /// Who: the client's name (absent = anonymous).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// The client's connection (the broker's routing id for it), hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// A resume (`*` = every halt lifted).
    Resume {
        /// Unix ms.
        ts_ms: u64,
        /// The account resumed.
        account: String,
        /// Who: the client's name (absent = anonymous).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// The client's connection (the broker's routing id for it), hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// A runtime change of what the broker enforces: risk limits (`tpx.risk`, a SIGHUP
    /// reload) or the CURVE allow-lists and names (a reload). One line per entry changed.
    Change {
        /// Unix ms.
        ts_ms: u64,
        /// Who: the admin client's name (`tpx.risk`) or `sighup`.
        by: String,
        /// `tpx.risk` or `sighup`.
        via: String,
        /// What: `account:NAME`, `client:NAME`, `default`, `contract:SYMBOL`, `admins`,
        /// `curve.client:NAME`, `curve.worker:KEY`, `risk` (other `[risk]` settings).
        what: String,
        /// Before (absent = there was none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<serde_json::Value>,
        /// After (absent = removed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<serde_json::Value>,
    },
}

impl Line {
    /// The line's time.
    pub fn ts_ms(&self) -> u64 {
        match self {
            Line::Request { ts_ms, .. }
            | Line::Decision { ts_ms, .. }
            | Line::Outcome { ts_ms, .. }
            | Line::Trade { ts_ms, .. }
            | Line::Halt { ts_ms, .. }
            | Line::Resume { ts_ms, .. }
            | Line::Change { ts_ms, .. } => *ts_ms,
        }
    }
}

/// The rule named by a `risk_rejected` message (`rule: …`).
pub fn rule_of(code: ErrorCode, message: &str) -> Option<String> {
    (code == ErrorCode::RiskRejected)
        .then(|| message.split(':').next().unwrap_or("").trim().to_string())
        .filter(|r| !r.is_empty())
}

/// The writer, held by the stage.
pub struct Audit {
    journal: Journal,
    run: u64,
    next: std::sync::atomic::AtomicU64,
    /// In a broker pair: every line written here is also numbered for the peer.
    outbox: std::sync::OnceLock<std::sync::Arc<crate::pair::replication::Outbox>>,
}

impl Audit {
    /// Opens the journal for appending; a torn last line (a crash mid-write) is ended with
    /// a newline first, so the next line does not run into it.
    pub fn open(opts: JournalOptions, run_ms: u64) -> std::io::Result<Audit> {
        end_torn_line(&opts.path)?;
        Ok(Audit {
            journal: Journal::open(opts)?,
            run: run_ms,
            next: std::sync::atomic::AtomicU64::new(1),
            outbox: std::sync::OnceLock::new(),
        })
    }

    /// Streams every line written from now on to the pair's peer (once; false if set).
    pub(crate) fn replicate_to(
        &self,
        outbox: std::sync::Arc<crate::pair::replication::Outbox>,
    ) -> bool {
        self.outbox.set(outbox).is_ok()
    }

    /// The journal's file (the newest).
    pub fn path(&self) -> &Path {
        &self.journal.options().path
    }

    /// The journal's options.
    pub fn options(&self) -> &JournalOptions {
        self.journal.options()
    }

    /// Appends a line received from the pair's peer (not sent back to it); halt, resume
    /// and change lines are synced as the peer synced them.
    pub fn write_replicated(&self, line: &Line) -> std::io::Result<()> {
        let sync = matches!(
            line,
            Line::Halt { .. } | Line::Resume { .. } | Line::Change { .. }
        );
        self.journal.append(line, sync)
    }

    /// A fresh request audit id.
    pub fn rid(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}", self.run)
    }

    /// Appends `line`; with `sync`, forced to disk under the `always` policy.
    pub fn write(&self, line: &Line, sync: bool) -> std::io::Result<()> {
        let text = serde_json::to_vec(line)?;
        match self.outbox.get() {
            Some(o) => {
                self.journal.append_encoded(text.clone(), sync)?;
                o.push(&text);
                Ok(())
            }
            None => self.journal.append_encoded(text, sync),
        }
    }
}

fn end_torn_line(path: &Path) -> std::io::Result<()> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() == 0 {
        return Ok(());
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// The journal's files oldest first (`PATH.keep` … `PATH.1`, `PATH`), those that exist.
pub fn files(path: &Path, keep: u32) -> Vec<PathBuf> {
    (1..=keep)
        .rev()
        .map(|n| rotated(path, n))
        .chain([path.to_path_buf()])
        .filter(|p| p.exists())
        .collect()
}

/// What reading the journal found.
#[derive(Debug, Default)]
pub struct Lines {
    /// The lines in order.
    pub lines: Vec<Line>,
    /// Lines that did not parse (a torn last line, garbage), skipped.
    pub bad: u64,
    /// Whether older files were left unread (the byte budget).
    pub truncated: bool,
}

/// Reads the journal's lines, oldest first, at most `budget` bytes (the newest files).
pub fn read(path: &Path, keep: u32, budget: u64) -> std::io::Result<Lines> {
    let mut chosen = Vec::new();
    let mut total = 0u64;
    let mut out = Lines::default();
    for f in files(path, keep).into_iter().rev() {
        let len = std::fs::metadata(&f)?.len();
        if total.saturating_add(len) > budget && !chosen.is_empty() {
            out.truncated = true;
            break;
        }
        total = total.saturating_add(len);
        chosen.push(f);
    }
    for f in chosen.into_iter().rev() {
        let mut r = BufReader::new(std::fs::File::open(&f)?.take(budget));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = (&mut r)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            if buf.last() != Some(&b'\n') && n > MAX_LINE_BYTES {
                // Skip the rest of an overlong line.
                out.bad += 1;
                let mut rest = Vec::new();
                r.read_until(b'\n', &mut rest)?;
                continue;
            }
            let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(text) {
                Ok(l) => out.lines.push(l),
                Err(_) => out.bad += 1,
            }
        }
    }
    Ok(out)
}
