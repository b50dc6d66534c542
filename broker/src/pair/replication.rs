//! Replication of the audit journal to the pair's peer, so the risk state (daily counters,
//! flow windows, halts) survives the active broker's death: every line this broker writes
//! itself is numbered and streamed over the state link; the peer appends what it gets to
//! its own journal and, when it takes over, rebuilds its stage from that journal by the
//! same replay as a restart.
//!
//! Two messages besides the state message, each one frame:
//! - line: `TPXJ01`, the writer's run (its 16-byte broker instance id), the line's `seq`
//!   (u64 BE, from 1 per run), `first` (u64 BE, the oldest seq the writer still holds),
//!   then the JSON line (1..=[`MAX_LINE_BYTES`] bytes);
//! - ack: `TPXA01`, a run, the last seq of that run appended (u64 BE); sent by the
//!   receiving broker after taking lines and every heartbeat (all-zero run = none yet).
//!
//! The writer sends at most a window past the last ack and goes back to the ack when it
//! stops moving (lost messages, a reconnect); what fell out of its bounded buffer before
//! the peer acked it is lost, reported by `first` and counted on the receiving side.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tradeplex_proto::WorkerId;

use crate::risk::audit::{self, MAX_LINE_BYTES};
use crate::risk::Stage;

const LINE_MAGIC: &[u8; 6] = b"TPXJ01";
const ACK_MAGIC: &[u8; 6] = b"TPXA01";
/// Bytes before a line's JSON.
const LINE_HEAD: usize = 6 + 16 + 8 + 8;
/// Length of an ack.
pub const ACK_LEN: usize = 6 + 16 + 8;
/// Longest message on the state link (a line at its longest).
pub const MAX_MESSAGE: usize = LINE_HEAD + MAX_LINE_BYTES;
/// Lines sent past the last ack.
const WINDOW_LINES: u64 = 1000;
/// Bytes sent per loop turn at most (bounds what libzmq queues for a slow peer).
const TURN_BYTES: usize = 4 << 20;
/// Most lines the buffer holds whatever their size.
const MAX_BUFFERED_LINES: usize = 1_000_000;

/// A numbered line on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineMessage<'a> {
    /// The writer's run.
    pub run: WorkerId,
    /// This line's number.
    pub seq: u64,
    /// The oldest number the writer still holds.
    pub first: u64,
    /// The JSON line.
    pub json: &'a [u8],
}

impl LineMessage<'_> {
    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LINE_HEAD + self.json.len());
        b.extend_from_slice(LINE_MAGIC);
        b.extend_from_slice(self.run.0.as_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.first.to_be_bytes());
        b.extend_from_slice(self.json);
        b
    }

    /// Decodes a frame starting with `TPXJ01`; the error is a bad-frame reason.
    pub fn decode(b: &[u8]) -> Result<LineMessage<'_>, &'static str> {
        if b.len() <= LINE_HEAD || b.len() > MAX_MESSAGE {
            return Err("bad_line_length");
        }
        let (head, json) = b.split_at(LINE_HEAD);
        let (magic, rest) = head.split_at(6);
        if magic != LINE_MAGIC {
            return Err("bad_magic");
        }
        let (run, nums) = rest.split_at(16);
        let (seq, first) = nums.split_at(8);
        let run = uuid::Uuid::from_slice(run).map_err(|_| "bad_line_length")?;
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| "bad_line_length")?);
        let first = u64::from_be_bytes(first.try_into().map_err(|_| "bad_line_length")?);
        if seq == 0 || first == 0 || first > seq {
            return Err("bad_line_seq");
        }
        Ok(LineMessage {
            run: WorkerId(run),
            seq,
            first,
            json,
        })
    }
}

/// How far the receiver got in one writer's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The writer's run (nil = nothing received yet).
    pub run: WorkerId,
    /// The last seq of that run appended.
    pub seq: u64,
}

impl Default for Position {
    fn default() -> Position {
        Position {
            run: WorkerId(uuid::Uuid::nil()),
            seq: 0,
        }
    }
}

impl Position {
    /// The ack's bytes.
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut b = [0u8; ACK_LEN];
        b[..6].copy_from_slice(ACK_MAGIC);
        b[6..22].copy_from_slice(self.run.0.as_bytes());
        b[22..].copy_from_slice(&self.seq.to_be_bytes());
        b
    }

    /// Decodes an ack.
    pub fn decode(b: &[u8]) -> Result<Position, &'static str> {
        let b: &[u8; ACK_LEN] = b.try_into().map_err(|_| "bad_ack_length")?;
        let (magic, rest) = b.split_at(6);
        if magic != ACK_MAGIC {
            return Err("bad_magic");
        }
        let (run, seq) = rest.split_at(16);
        let run = uuid::Uuid::from_slice(run).map_err(|_| "bad_ack_length")?;
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| "bad_ack_length")?);
        Ok(Position {
            run: WorkerId(run),
            seq,
        })
    }

    /// The position file's text: `<run uuid> <seq>`.
    fn to_text(self) -> String {
        format!("{} {}\n", self.run.0, self.seq)
    }

    fn from_text(text: &str) -> Option<Position> {
        let (run, seq) = text.trim().split_once(' ')?;
        Some(Position {
            run: WorkerId(run.parse().ok()?),
            seq: seq.parse().ok()?,
        })
    }
}

/// The lines this broker wrote itself, numbered, the newest kept within a byte bound
/// (written by the audit journal's writers, read by the pair on the main loop).
pub struct Outbox {
    ring: Mutex<Ring>,
}

struct Ring {
    /// Line `first + i` is `lines[i]`, with when it was written.
    lines: VecDeque<(Instant, Arc<[u8]>)>,
    first: u64,
    bytes: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox holding at most `max_bytes` of lines.
    pub fn new(max_bytes: usize) -> Outbox {
        Outbox {
            ring: Mutex::new(Ring {
                lines: VecDeque::new(),
                first: 1,
                bytes: 0,
                max_bytes,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `json` (one journal line, no newline) and keeps it, dropping the oldest
    /// lines past the bound.
    pub fn push(&self, json: &[u8]) {
        let mut r = self.lock();
        r.bytes += json.len();
        r.lines.push_back((Instant::now(), Arc::from(json)));
        while r.lines.len() > 1 && (r.bytes > r.max_bytes || r.lines.len() > MAX_BUFFERED_LINES) {
            if let Some((_, l)) = r.lines.pop_front() {
                r.bytes -= l.len();
                r.first += 1;
            }
        }
    }

    /// (oldest seq held, newest seq written; 0 = none yet, bytes held).
    pub fn span(&self) -> (u64, u64, usize) {
        let r = self.lock();
        (r.first, r.first + r.lines.len() as u64 - 1, r.bytes)
    }

    /// Lines from `from` on, at most `max_lines` and about `max_bytes`, with the oldest
    /// seq held.
    fn take(&self, from: u64, max_lines: u64, max_bytes: usize) -> (u64, Vec<Arc<[u8]>>) {
        let r = self.lock();
        let start = from.saturating_sub(r.first) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, l) in r.lines.iter().skip(start).take(max_lines as usize) {
            if bytes > 0 && bytes + l.len() > max_bytes {
                break;
            }
            bytes += l.len();
            out.push(l.clone());
        }
        (r.first, out)
    }

    /// When line `seq` was written, if it is held.
    fn written_at(&self, seq: u64) -> Option<Instant> {
        let r = self.lock();
        let i = seq.checked_sub(r.first)?;
        r.lines.get(i as usize).map(|(t, _)| *t)
    }
}

/// The replication's metrics.
struct ReplicationMetrics {
    head: prometheus::IntGauge,
    acked: prometheus::IntGauge,
    lag_lines: prometheus::IntGauge,
    lag_seconds: prometheus::Gauge,
    buffered: prometheus::IntGauge,
    position: prometheus::IntGauge,
    applied: prometheus::IntCounter,
    lost: prometheus::IntCounter,
}

impl ReplicationMetrics {
    fn new(r: &prometheus::Registry) -> Result<ReplicationMetrics, prometheus::Error> {
        let g = |name: &str, help: &str| prometheus::IntGauge::new(name, help);
        let m = ReplicationMetrics {
            head: g(
                "tradeplex_pair_replication_head",
                "Audit journal lines this broker wrote since it started (the last seq)",
            )?,
            acked: g(
                "tradeplex_pair_replication_acked",
                "The last of this broker's journal lines the peer confirmed appending",
            )?,
            lag_lines: g(
                "tradeplex_pair_replication_lag_lines",
                "This broker's journal lines the peer has not confirmed (lost if it dies now)",
            )?,
            lag_seconds: prometheus::Gauge::new(
                "tradeplex_pair_replication_lag_seconds",
                "Age of the oldest journal line the peer has not confirmed (0 = none)",
            )?,
            buffered: g(
                "tradeplex_pair_replication_buffered_bytes",
                "Bytes of journal lines held for the peer (bounded by pair.replication_bytes)",
            )?,
            position: g(
                "tradeplex_pair_replication_position",
                "The last line of the peer's journal appended here (seq in its run)",
            )?,
            applied: prometheus::IntCounter::new(
                "tradeplex_pair_replication_applied_total",
                "Journal lines received from the peer and appended to this broker's journal",
            )?,
            lost: prometheus::IntCounter::new(
                "tradeplex_pair_replication_lost_total",
                "Peer journal lines never received (they left the peer's buffer first)",
            )?,
        };
        for c in [
            Box::new(m.head.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.acked.clone()),
            Box::new(m.lag_lines.clone()),
            Box::new(m.lag_seconds.clone()),
            Box::new(m.buffered.clone()),
            Box::new(m.position.clone()),
            Box::new(m.applied.clone()),
            Box::new(m.lost.clone()),
        ] {
            r.register(c)?;
        }
        Ok(m)
    }
}

/// What a received message asks of the pair.
pub enum Received {
    /// Nothing more.
    Done,
    /// A bad frame: its reason, and what to log.
    Bad(&'static str, String),
}

/// One broker's side of the replication: sending its own lines, taking the peer's.
pub struct Replication {
    stage: Stage,
    outbox: Arc<Outbox>,
    me: WorkerId,
    heartbeat: Duration,
    metrics: ReplicationMetrics,
    // Sending.
    /// The peer's last ack of our run (None = not heard yet: send nothing).
    acked: Option<u64>,
    next: u64,
    progress_at: Instant,
    // Receiving.
    position: Position,
    position_file: PathBuf,
    position_dirty: bool,
    next_ack: Instant,
    /// Peer lines appended since the stage was last built from the journal.
    unreplayed: u64,
}

impl Replication {
    /// Replication for `stage` (which has an audit journal), buffering at most
    /// `max_bytes` of this broker's lines. The position in the peer's run is read from
    /// `<journal>.pair-position`.
    pub fn new(
        stage: Stage,
        me: WorkerId,
        max_bytes: usize,
        heartbeat: Duration,
        registry: &prometheus::Registry,
    ) -> Option<Result<Replication, prometheus::Error>> {
        let journal = stage.journal_path()?;
        let outbox = Arc::new(Outbox::new(max_bytes));
        if !stage.replicate_to(outbox.clone()) {
            return None;
        }
        let mut file = journal.into_os_string();
        file.push(".pair-position");
        let position_file = PathBuf::from(file);
        let position = std::fs::read_to_string(&position_file)
            .ok()
            .and_then(|t| Position::from_text(&t))
            .unwrap_or_default();
        let metrics = match ReplicationMetrics::new(registry) {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        metrics.position.set(position.seq as i64);
        let now = Instant::now();
        Some(Ok(Replication {
            stage,
            outbox,
            me,
            heartbeat,
            metrics,
            acked: None,
            next: 1,
            progress_at: now,
            position,
            position_file,
            position_dirty: false,
            next_ack: now,
            unreplayed: 0,
        }))
    }

    /// An ack from the peer.
    pub fn on_ack(&mut self, b: &[u8], now: Instant) -> Received {
        let p = match Position::decode(b) {
            Ok(p) => p,
            Err(r) => return Received::Bad(r, "malformed replication ack".into()),
        };
        // An ack of another run (ours before a restart, or none): it holds none of ours.
        let acked = if p.run == self.me { p.seq } else { 0 };
        if self.acked.is_none_or(|a| acked != a) {
            self.progress_at = now;
        }
        self.acked = Some(acked);
        if self.next <= acked {
            self.next = acked + 1;
        }
        Received::Done
    }

    /// A line from the peer: appended to this broker's journal when it is the next one.
    pub fn on_line(&mut self, b: &[u8]) -> Received {
        let m = match LineMessage::decode(b) {
            Ok(m) => m,
            Err(r) => return Received::Bad(r, "malformed replication line".into()),
        };
        if m.run == self.me {
            return Received::Bad("own_line", "a journal line of this broker's own run".into());
        }
        let expected = if m.run == self.position.run {
            self.position.seq + 1
        } else {
            1
        };
        let lost = if m.seq == expected {
            0
        } else if m.seq == m.first && m.first > expected {
            m.first - expected
        } else {
            // Seen already, or ahead of a gap the writer still holds: the next ack sends
            // the writer back to what is missing.
            return Received::Done;
        };
        let line = serde_json::from_slice::<audit::Line>(m.json);
        let result = match &line {
            Ok(l) => self.stage.append_replicated(l).map_err(|e| e.to_string()),
            Err(_) => Ok(()),
        };
        if let Err(e) = result {
            // Not taken: the writer sends it again once the ack stops moving.
            tracing::error!(error = %e, "broker pair: a replicated journal line cannot be written");
            return Received::Done;
        }
        if lost > 0 {
            self.metrics.lost.inc_by(lost);
            tracing::warn!(
                lost,
                from = expected,
                "broker pair: peer journal lines lost (they left the peer's buffer before reaching this broker)"
            );
        }
        self.position = Position {
            run: m.run,
            seq: m.seq,
        };
        self.position_dirty = true;
        self.metrics.position.set(m.seq as i64);
        if line.is_err() {
            return Received::Bad(
                "bad_line",
                "a replicated journal line that does not parse; skipped".into(),
            );
        }
        self.metrics.applied.inc();
        self.unreplayed += 1;
        Received::Done
    }

    /// Sends what is due (lines within the window, the ack) and saves the position.
    pub fn tick(&mut self, now: Instant, socket: &zmq::Socket) {
        self.send_lines(now, socket);
        if self.position_dirty || now >= self.next_ack {
            // A full queue (peer gone) drops it: the next heartbeat sends it again.
            let position = self.position.encode();
            let _ = tradeplex_ops::uninterrupted(|| socket.send(&position[..], zmq::DONTWAIT));
            self.next_ack = now + self.heartbeat;
        }
        if self.position_dirty {
            self.save_position();
        }
    }

    fn send_lines(&mut self, now: Instant, socket: &zmq::Socket) {
        let (first, head, bytes) = self.outbox.span();
        self.metrics.head.set(head as i64);
        self.metrics.buffered.set(bytes as i64);
        let Some(acked) = self.acked else {
            return;
        };
        self.metrics.acked.set(acked as i64);
        self.metrics
            .lag_lines
            .set(head.saturating_sub(acked) as i64);
        let lag = match self.outbox.written_at(acked + 1) {
            Some(t) if acked < head => now.saturating_duration_since(t).as_secs_f64(),
            _ => 0.0,
        };
        self.metrics.lag_seconds.set(lag);
        if acked >= head {
            self.progress_at = now;
            return;
        }
        // Nothing confirmed for two heartbeats: what was sent is lost, send it again.
        if now.saturating_duration_since(self.progress_at) > 2 * self.heartbeat {
            self.next = acked + 1;
            self.progress_at = now;
        }
        self.next = self.next.max(first);
        let room = (acked + WINDOW_LINES + 1).saturating_sub(self.next);
        if room == 0 || self.next > head {
            return;
        }
        let (first, lines) = self.outbox.take(self.next, room, TURN_BYTES);
        for json in lines {
            let msg = LineMessage {
                run: self.me,
                seq: self.next,
                first,
                json: &json,
            };
            let encoded = msg.encode();
            if tradeplex_ops::uninterrupted(|| socket.send(&encoded[..], zmq::DONTWAIT)).is_err() {
                break;
            }
            self.next += 1;
        }
    }

    fn save_position(&mut self) {
        let mut tmp = self.position_file.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let r = std::fs::write(&tmp, self.position.to_text())
            .and_then(|()| std::fs::rename(&tmp, &self.position_file));
        match r {
            Ok(()) => self.position_dirty = false,
            Err(e) => {
                tracing::warn!(error = %e, file = %self.position_file.display(), "broker pair: replication position not saved")
            }
        }
    }

    /// This broker became active: when it appended peer lines since its stage was built,
    /// the stage is built again from the journal (as at a restart) before it serves.
    pub fn on_active(&mut self) {
        self.stage.set_serving(true);
        if self.unreplayed == 0 {
            return;
        }
        let appended = self.unreplayed;
        self.unreplayed = 0;
        match self.stage.rebuild_from_journal(tradeplex_proto::now_unix_ms()) {
            Ok(r) => tracing::warn!(
                peer_lines = appended,
                orders = r.orders,
                cancels = r.cancels,
                trades = r.trades,
                halts_in_force = r.halts_in_force,
                "broker pair: risk state rebuilt from the audit journal (with the peer's lines) at takeover"
            ),
            Err(e) => tracing::error!(error = %e, "broker pair: the audit journal cannot be read at takeover; risk counters start empty"),
        }
    }

    /// This broker is not active: it journals no events of its own.
    pub fn on_inactive(&mut self) {
        self.stage.set_serving(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_ack_messages_round_trip_and_bad_ones_are_named() {
        let run = WorkerId::random();
        let m = LineMessage {
            run,
            seq: 7,
            first: 3,
            json: b"{\"event\":\"resume\"}",
        };
        let b = m.encode();
        assert_eq!(LineMessage::decode(&b), Ok(m));
        assert_eq!(LineMessage::decode(&b[..LINE_HEAD]), Err("bad_line_length"));
        let mut z = b.clone();
        z[22..30].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(LineMessage::decode(&z), Err("bad_line_seq"));
        let mut big = b.clone();
        big.resize(MAX_MESSAGE + 1, b' ');
        assert_eq!(LineMessage::decode(&big), Err("bad_line_length"));
        let p = Position { run, seq: 9 };
        assert_eq!(Position::decode(&p.encode()), Ok(p));
        assert_eq!(Position::decode(&p.encode()[1..]), Err("bad_ack_length"));
        assert_eq!(Position::from_text(&p.to_text()), Some(p));
        assert_eq!(Position::from_text("garbage"), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for len in 0..200 {
            let mut bytes = crate::pair::tests::noise(&mut x, len);
            let _ = LineMessage::decode(&bytes);
            let _ = Position::decode(&bytes);
            if bytes.len() >= 6 {
                bytes[..6].copy_from_slice(LINE_MAGIC);
                let _ = LineMessage::decode(&bytes);
            }
        }
    }

    #[test]
    fn the_outbox_keeps_the_newest_lines_within_its_bound() {
        let o = Outbox::new(10);
        assert_eq!(o.span(), (1, 0, 0));
        for l in [b"aaaa", b"bbbb", b"cccc"] {
            o.push(l);
        }
        // 12 bytes > 10: the oldest went.
        assert_eq!(o.span(), (2, 3, 8));
        let (first, lines) = o.take(1, 10, 1 << 20);
        assert_eq!(first, 2);
        assert_eq!(
            lines.iter().map(|l| &l[..]).collect::<Vec<_>>(),
            [b"bbbb", b"cccc"]
        );
        let (_, lines) = o.take(3, 10, 1 << 20);
        assert_eq!(lines.len(), 1);
        // A line over the bound alone is still kept (the newest always is).
        o.push(&[b'x'; 50]);
        assert_eq!(o.span(), (4, 4, 50));
    }
}
