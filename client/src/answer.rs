//! Where one call's answer goes: a slot written once by whoever drives the connection
//! ([`Done`]) and read by the caller ([`Answer`]).
//!
//! A channel per call (what this was) cost a pipelining caller about a tenth of its
//! thread: two cache-aligned allocations per call and the disconnect bookkeeping of a
//! multi-producer channel for a value that is sent once. This is one allocation, an
//! atomic flag to look at without locking, and a condition variable signalled only when
//! a caller actually sleeps on it (a notify is a system call whether anyone waits or not).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::{ClientError, Reply};

/// A call's outcome.
pub(crate) type Outcome = Result<Reply, ClientError>;

struct State {
    value: Option<Outcome>,
    /// A caller sleeps on the condition variable.
    waiting: bool,
}

struct Slot {
    /// Set (after `value`) once the outcome is in: lets `is_ready` skip the lock.
    ready: AtomicBool,
    state: Mutex<State>,
    filled: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new call's two ends.
pub(crate) fn slot() -> (Done, Answer) {
    let slot = Arc::new(Slot {
        ready: AtomicBool::new(false),
        state: Mutex::new(State {
            value: None,
            waiting: false,
        }),
        filled: Condvar::new(),
    });
    (Done(Some(slot.clone())), Answer(slot))
}

/// The writing end, held with the call until it is settled. Dropped unsettled (the
/// connection closed under it) it settles the call [`ClientError::Closed`], so no caller
/// waits forever.
pub(crate) struct Done(Option<Arc<Slot>>);

impl Done {
    /// Settles the call (the caller may have given up on it: then nobody reads it).
    pub fn send(mut self, outcome: Outcome) {
        if let Some(slot) = self.0.take() {
            fill(&slot, outcome);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            fill(&slot, Err(ClientError::Closed));
        }
    }
}

fn fill(slot: &Slot, outcome: Outcome) {
    let mut st = slot.lock();
    st.value = Some(outcome);
    slot.ready.store(true, Ordering::Release);
    if st.waiting {
        slot.filled.notify_one();
    }
}

/// The reading end, held by the caller.
pub(crate) struct Answer(Arc<Slot>);

impl Answer {
    /// Whether the outcome is in.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// The outcome if it is in, without blocking. It is there once: read again, the
    /// slot says `closed` (nothing more will come), so no reader spins on it.
    pub fn try_take(&self) -> Option<Outcome> {
        if !self.is_ready() {
            return None;
        }
        Some(
            self.0
                .lock()
                .value
                .take()
                .unwrap_or(Err(ClientError::Closed)),
        )
    }

    /// Blocks until the outcome is in.
    pub fn wait(&self) -> Outcome {
        let mut st = self.0.lock();
        loop {
            if let Some(outcome) = st.value.take() {
                return outcome;
            }
            if self.is_ready() {
                // Taken before (a second read of one answer): nothing more will come.
                return Err(ClientError::Closed);
            }
            st.waiting = true;
            st = self.0.filled.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Outcome {
        Ok(Reply {
            body: b"x".to_vec(),
            worker: tradeplex_proto::WorkerId::random(),
        })
    }

    #[test]
    fn an_answer_sent_is_ready_and_taken_once() {
        let (done, answer) = slot();
        assert!(!answer.is_ready());
        assert!(answer.try_take().is_none());
        done.send(reply());
        assert!(answer.is_ready());
        assert_eq!(
            answer.try_take().map(|r| r.map(|r| r.body)),
            Some(Ok(b"x".to_vec()))
        );
        assert_eq!(answer.try_take(), Some(Err(ClientError::Closed)));
        assert!(matches!(answer.wait(), Err(ClientError::Closed)));
    }

    #[test]
    fn a_call_dropped_unsettled_is_closed() {
        let (done, answer) = slot();
        drop(done);
        assert!(matches!(answer.wait(), Err(ClientError::Closed)));
    }

    #[test]
    fn a_sleeping_caller_is_woken_by_the_answer() {
        let (done, answer) = slot();
        let waiter = std::thread::spawn(move || answer.wait().map(|r| r.body));
        // Whether the waiter sleeps before or after the send, it gets the answer.
        done.send(reply());
        assert_eq!(waiter.join().ok(), Some(Ok(b"x".to_vec())));
    }
}
