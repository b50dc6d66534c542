//! Who drives the connection: the connection thread, or the thread of a caller that has
//! the connection to itself.
//!
//! A call handed to the connection thread costs two thread wake-ups on top of the
//! network's (the caller wakes the thread to send, the thread wakes the caller with the
//! answer). When nobody else uses the connection, [`Driver::try_direct`] lets the caller
//! take the sockets and run the connection's rounds on its own thread until its answer
//! is in: same code, same timers, same failover — no hand-off. Calls other threads queue
//! meanwhile are sent by the direct caller (it polls a wake-up of its own); when its answer
//! comes it gives whatever is still in flight back to the connection thread.
//!
//! The sockets (inside [`Connection`]) are only ever used by their owner of the moment,
//! recorded in [`Owner`] under a mutex; the hand-over of a ZeroMQ socket between threads
//! is safe with the full memory barrier the mutex gives.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};

use crate::connection::{drain, Call, Connection, Round, MAX_POLL};
use crate::{ClientError, Reply};

/// Who uses the sockets (and the calls in flight) now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Nobody: the next caller with nothing queued before it may take them.
    Nobody,
    /// The connection thread.
    Thread,
    /// A caller's thread, for a direct call.
    Caller,
}

struct State {
    owner: Owner,
    /// A byte was written to the direct caller's wake-up since it last looked (at most
    /// one per look: a busy pipeline costs no system call per call).
    signalled: bool,
}

/// A socketpair used as a wake-up: handles write a byte, the driver polls the read end.
struct Wake {
    tx: UnixStream,
    rx: UnixStream,
}

impl Wake {
    fn new() -> std::io::Result<Wake> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Wake { tx, rx })
    }

    fn signal(&self) {
        // A full socketpair already guarantees a wake-up; nothing to do then.
        let _ = (&self.tx).write(&[1]);
    }
}

/// What the handles and the connection thread share.
pub(crate) struct Driver {
    state: Mutex<State>,
    conn: Mutex<Connection>,
    /// The queue of calls handles hand over (the receiving end; handles hold the sender).
    calls: Receiver<Call>,
    /// Wakes the connection thread.
    thread_wake: Wake,
    /// Set while the connection thread waits in poll: a handle writes its wake-up byte
    /// only then, so a busy thread costs no system call per call.
    sleeping: AtomicBool,
    /// Wakes a direct caller (another call was queued).
    caller_wake: Wake,
    /// Calls answered on their caller's thread.
    pub direct_calls: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    pub fn new(conn: Connection, calls: Receiver<Call>) -> std::io::Result<Driver> {
        Ok(Driver {
            state: Mutex::new(State {
                owner: Owner::Nobody,
                signalled: false,
            }),
            conn: Mutex::new(conn),
            calls,
            thread_wake: Wake::new()?,
            sleeping: AtomicBool::new(false),
            caller_wake: Wake::new()?,
            direct_calls: AtomicU64::new(0),
        })
    }

    /// Queues `call` for whoever drives the connection and wakes it.
    pub fn enqueue(&self, queue: &Sender<Call>, call: Call) -> Result<(), ClientError> {
        let mut st = lock(&self.state);
        queue.send(call).map_err(|_| ClientError::Closed)?;
        if st.owner == Owner::Caller {
            let signal = !st.signalled;
            st.signalled = true;
            drop(st);
            if signal {
                self.caller_wake.signal();
            }
        } else {
            drop(st);
            // A busy thread sees the call when it next looks at the queue (it looks once
            // more after announcing a sleep).
            if self.sleeping.swap(false, Ordering::SeqCst) {
                self.thread_wake.signal();
            }
        }
        Ok(())
    }

    /// Sends `call` and waits for its answer: on this thread if nobody else drives the
    /// connection and nothing is queued before it, else through `queue` and whoever
    /// drives it.
    pub fn call(
        &self,
        queue: &Sender<Call>,
        call: Call,
        answer: &Receiver<Result<Reply, ClientError>>,
    ) -> Result<Reply, ClientError> {
        let stale = {
            let mut st = lock(&self.state);
            if st.owner != Owner::Nobody || !self.calls.is_empty() {
                drop(st);
                self.enqueue(queue, call)?;
                return answer.recv().unwrap_or(Err(ClientError::Closed));
            }
            st.owner = Owner::Caller;
            std::mem::take(&mut st.signalled)
        };
        let mut conn = lock(&self.conn);
        if stale {
            drain(&self.caller_wake.rx);
        }
        conn.start(call);
        let result = loop {
            if let Ok(r) = answer.try_recv() {
                break r;
            }
            let rearm = || lock(&self.state).signalled = false;
            if conn.round(&self.caller_wake.rx, MAX_POLL, rearm) == Round::Failed {
                conn.close();
            }
        };
        self.direct_calls.fetch_add(1, Ordering::Relaxed);
        self.release(conn);
        result
    }

    /// A direct caller gives the sockets back: to nobody, or to the connection thread if
    /// calls of other threads are in flight or queued.
    fn release(&self, conn: MutexGuard<'_, Connection>) {
        let busy = {
            let mut st = lock(&self.state);
            let busy = !conn.is_idle() || !self.calls.is_empty();
            st.owner = if busy { Owner::Thread } else { Owner::Nobody };
            busy
        };
        drop(conn);
        if busy {
            self.thread_wake.signal();
        }
    }

    /// The connection thread: drives the connection while calls are in flight, sleeps
    /// while nobody needs it or a caller drives it; returns once every handle is gone and
    /// every call is settled.
    pub fn run(&self) {
        loop {
            if self.claim_for_thread() {
                let mut conn = lock(&self.conn);
                if !self.serve(&mut conn) {
                    conn.close();
                    return;
                }
            }
            self.sleep();
        }
    }

    /// The thread takes the sockets unless a caller holds them. It takes them even with
    /// nothing queued, for one round that reads monitor events and late answers.
    fn claim_for_thread(&self) -> bool {
        let mut st = lock(&self.state);
        match st.owner {
            Owner::Caller => false,
            Owner::Thread => true,
            Owner::Nobody => {
                st.owner = Owner::Thread;
                true
            }
        }
    }

    /// Rounds until nothing is in flight or queued, then gives the sockets to nobody;
    /// false once every handle is gone (or polling failed) and nothing is in flight.
    fn serve(&self, conn: &mut Connection) -> bool {
        loop {
            let cap = if conn.is_idle() && self.calls.is_empty() {
                std::time::Duration::ZERO
            } else {
                MAX_POLL
            };
            self.sleeping.store(true, Ordering::SeqCst);
            let round = conn.round(&self.thread_wake.rx, cap, || {});
            self.sleeping.store(false, Ordering::SeqCst);
            match round {
                Round::Failed => return false,
                Round::Closed if conn.is_idle() => return false,
                _ => {}
            }
            if conn.is_idle() {
                let mut st = lock(&self.state);
                if self.calls.is_empty() {
                    st.owner = Owner::Nobody;
                    return true;
                }
            }
        }
    }

    /// Waits (at most [`MAX_POLL`]) for a wake-up byte, unless work is already visible.
    fn sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        let work = {
            let st = lock(&self.state);
            st.owner == Owner::Thread || (st.owner == Owner::Nobody && !self.calls.is_empty())
        };
        if !work {
            let mut item = [zmq::PollItem::from_fd(
                std::os::unix::io::AsRawFd::as_raw_fd(&self.thread_wake.rx),
                zmq::POLLIN,
            )];
            let _ = zmq::poll(&mut item, MAX_POLL.as_millis() as i64);
        }
        self.sleeping.store(false, Ordering::SeqCst);
        drain(&self.thread_wake.rx);
    }
}
