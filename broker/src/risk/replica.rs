//! The stage in a broker pair: the peer's audit journal lines are appended to this
//! broker's journal as they arrive, and when this broker takes over its stage is rebuilt
//! from that journal by the same replay as a restart ([`Stage::replay`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{audit, Replayed, Stage};
use crate::pair::replication::Outbox;

impl Stage {
    /// The audit journal's file, when there is a journal.
    pub(crate) fn journal_path(&self) -> Option<PathBuf> {
        self.shared.audit.get().map(|a| a.path().to_path_buf())
    }

    /// Numbers every line this broker journals from now on into `outbox` for the peer.
    pub(crate) fn replicate_to(&self, outbox: Arc<Outbox>) -> bool {
        self.shared
            .audit
            .get()
            .is_some_and(|a| a.replicate_to(outbox))
    }

    /// Appends a line of the peer's journal to this broker's.
    pub(crate) fn append_replicated(&self, line: &audit::Line) -> std::io::Result<()> {
        match self.shared.audit.get() {
            Some(a) => a.write_replicated(line),
            None => Ok(()),
        }
    }

    /// Whether this broker serves (false while a pair's passive broker).
    pub(crate) fn set_serving(&self, serving: bool) {
        self.shared.serving.store(serving, Ordering::Relaxed);
    }

    /// Forgets the counters and halts in memory and rebuilds them from the journal, as
    /// a broker starting does: call while nothing is in flight (a passive broker taking
    /// over). Positions, balances and working orders come back with the next events.
    pub(crate) fn rebuild_from_journal(&self, now_ms: u64) -> Result<Replayed, String> {
        let s = &*self.shared;
        let Some(a) = s.audit.get() else {
            return Ok(Replayed::default());
        };
        let opts = a.options();
        let read = audit::read(&opts.path, opts.keep, audit::MAX_REPLAY_BYTES)
            .map_err(|e| format!("{}: {e}", opts.path.display()))?;
        {
            let mut halts = s.halts();
            for h in halts.list() {
                s.metrics.halted.with_label_values(&[&h.account]).set(0);
            }
            *halts = Default::default();
            s.any_halt.store(false, Ordering::Release);
            *s.lock() = Default::default();
        }
        Ok(self.replay(now_ms, &read.lines))
    }
}
