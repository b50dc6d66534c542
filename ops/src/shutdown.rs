//! A shutdown flag shared by the signal handlers, the main loops and tests.

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
