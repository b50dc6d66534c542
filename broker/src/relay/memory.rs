//! Giving heap back to the operating system after subscription storms.
//!
//! Subscriptions live in libzmq's prefix trie and in the relay's tables; when a
//! subscriber with thousands of prefixes leaves, or a storm of garbage has been queued
//! and drained, the allocator keeps the freed pages, so the broker's RSS stays at its
//! peak. `malloc_trim` returns glibc's (`mi_collect` mimalloc's, in the broker binary:
//! [`set_heap_release`]). It walks every arena (a few ms on a large
//! heap), so it runs only after much subscription work, or after a subscriber left
//! (libzmq frees its prefixes then), and only once the XPUB has been quiet for a while.

use std::time::{Duration, Instant};

/// Subscription work (messages read, prefixes freed) after which a trim is worth it.
const WORK_BEFORE_TRIM: u64 = 10_000;
/// Least time between two trims.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Decides when to trim.
#[derive(Debug)]
pub struct Trimmer {
    work: u64,
    last: Instant,
    /// Subscription messages since the last [`Trimmer::tick`].
    recent: u64,
}

impl Trimmer {
    /// A trimmer that has just trimmed.
    pub fn new(now: Instant) -> Trimmer {
        Trimmer {
            work: 0,
            last: now,
            recent: 0,
        }
    }

    /// Counts `n` subscription messages handled.
    pub fn add_work(&mut self, n: u64) {
        self.work = self.work.saturating_add(n);
        self.recent = self.recent.saturating_add(n);
    }

    /// A subscriber holding prefixes left: libzmq has freed its share, worth a trim.
    pub fn subscriber_left(&mut self) {
        self.work = self.work.max(WORK_BEFORE_TRIM);
    }

    /// Called once per heartbeat interval: true when enough work has been done since the
    /// last trim, the interval had no subscription traffic, and it is not too soon.
    pub fn tick(&mut self, now: Instant) -> bool {
        let quiet = std::mem::take(&mut self.recent) == 0;
        quiet && self.work >= WORK_BEFORE_TRIM && now.duration_since(self.last) >= MIN_INTERVAL
    }

    /// Trims now and restarts the count.
    pub fn trim(&mut self, now: Instant) {
        self.work = 0;
        self.last = now;
        release_free_heap();
    }
}

/// How the heap is given back, when the binary's allocator is not glibc's: set once, at
/// start, by the binary that chose the allocator (the broker's `main`).
static RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Makes trims call `release` instead of glibc's `malloc_trim` (for a binary whose global
/// allocator, and libzmq's, is another one). The first call wins; later ones are ignored.
pub fn set_heap_release(release: fn()) {
    let _ = RELEASE.set(release);
}

fn release_free_heap() {
    match RELEASE.get() {
        Some(release) => release(),
        None => malloc_trim(),
    }
}

#[cfg(target_env = "gnu")]
fn malloc_trim() {
    // SAFETY: malloc_trim only touches the allocator's own free lists; it is thread-safe
    // and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn malloc_trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_enough_work_once_quiet_and_not_too_often() {
        let t0 = Instant::now();
        let mut t = Trimmer::new(t0);
        t.add_work(WORK_BEFORE_TRIM);
        assert!(!t.tick(t0 + MIN_INTERVAL), "traffic in this interval");
        assert!(t.tick(t0 + MIN_INTERVAL), "quiet now");
        t.trim(t0 + MIN_INTERVAL);
        assert!(!t.tick(t0 + MIN_INTERVAL * 3), "no work since");
        t.subscriber_left();
        assert!(!t.tick(t0 + MIN_INTERVAL + MIN_INTERVAL / 2), "too soon");
        assert!(t.tick(t0 + MIN_INTERVAL * 3));
    }
}
