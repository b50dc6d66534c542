//! A group of bench threads sharing one stop flag: stop them and collect the first error,
//! or just stop and join them when dropped (on error paths and panics).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::anyhow;

/// Threads that run until their shared stop flag is set.
#[derive(Default)]
pub struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Threads {
    /// The flag the threads watch.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Adds a started thread.
    pub fn push(&mut self, handle: JoinHandle<anyhow::Result<()>>) {
        self.handles.push(handle);
    }

    /// Stops the threads and reports the first error any of them had.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        for t in self.handles.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(anyhow!("bench thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.handles.drain(..) {
            let _ = t.join();
        }
    }
}
