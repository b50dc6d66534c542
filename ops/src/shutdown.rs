//! A shutdown flag shared by the signal handlers, the main loops and tests, and the
//! retry that keeps those signals from failing a socket call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once to ask the broker (or a worker) to stop cleanly.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks for shutdown.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Triggers the flag on SIGINT and SIGTERM.
    pub fn on_signals(&self) -> std::io::Result<()> {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, self.0.clone())?;
        }
        Ok(())
    }
}

/// Runs a libzmq call again while a signal interrupts it (EINTR).
///
/// Any signal the process handles (SIGHUP's reload, a second SIGTERM while draining) can
/// land inside a socket call, a non-blocking one too: libzmq polls its command pipe on
/// every send and receive, and that poll is never restarted by the kernel. An interrupted
/// call did nothing (no frame taken or queued; a message to send is still the caller's),
/// so running it again is exact. The loops read the shutdown flag after the call returns.
pub fn uninterrupted<T>(mut call: impl FnMut() -> zmq::Result<T>) -> zmq::Result<T> {
    loop {
        match call() {
            Err(zmq::Error::EINTR) => continue,
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_call_runs_again_and_other_errors_pass_through() {
        let mut calls = 0;
        let r = uninterrupted(|| {
            calls += 1;
            if calls < 3 {
                Err(zmq::Error::EINTR)
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r, Ok(3));
        assert_eq!(
            uninterrupted(|| Err::<(), _>(zmq::Error::EAGAIN)),
            Err(zmq::Error::EAGAIN)
        );
    }
}
