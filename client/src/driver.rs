//! Who drives the connection: the connection thread, or the thread of a caller that has
//! the connection to itself.
//!
//! A call handed to the connection thread costs two thread wake-ups on top of the
//! network's (the caller wakes the thread to send, the thread wakes the caller with the
//! answer). So whoever needs the sockets and finds them free takes them: [`Driver::send`]
//! puts a call on the wire from the caller's thread, and [`Driver::wait`] runs the
//! connection's rounds on the waiting caller's thread until its answer is in — same code,
//! same timers, same failover, no hand-off. A caller that finds the connection thread
//! driving asks it to let go (one wake-up, then none for the rest of a pipeline); one that
//! finds another caller driving waits for that caller to deliver its answer. Calls other
//! threads queue meanwhile are sent by the caller driving (it polls a wake-up of its own).
//!
//! A caller done driving leaves calls still in flight "parked" (nobody drives; replies wait
//! in the socket) when nobody waits for them: a pipelining caller is back within
//! microseconds to send or wait again, and takes the sockets without a wake-up. The
//! connection thread looks at least every [`MAX_POLL`] (every [`PARK_GRACE`] while calls
//! are parked) and takes parked calls over when no caller has touched the sockets since
//! its last look, so their timeouts, re-sends and failover run at most about
//! [`MAX_POLL`] + [`PARK_GRACE`] late.
//!
//! The sockets (inside [`Connection`]) are only ever used by their owner of the moment,
//! recorded in [`Owner`] under a mutex; the hand-over of a ZeroMQ socket between threads
//! is safe with the full memory barrier the mutex gives.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::answer::Answer;
use crate::connection::{drain, Call, Connection, Round, MAX_POLL};
use crate::{ClientError, Reply};

/// How long parked calls may go undriven before the connection thread takes them.
const PARK_GRACE: Duration = Duration::from_millis(5);

/// Who uses the sockets (and the calls in flight) now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Nobody: the next caller with nothing queued before it may take them.
    Nobody,
    /// The connection thread.
    Thread,
    /// A caller's thread, sending or waiting for its answer.
    Caller,
}

struct State {
    owner: Owner,
    /// A byte was written to the direct caller's wake-up since it last looked (at most
    /// one per look: a busy pipeline costs no system call per call).
    signalled: bool,
    /// A caller waits for the connection thread to let go of the sockets.
    want: bool,
    /// Callers blocked on their answer while another caller drives: when it stops, the
    /// connection thread takes over for them (a parked call has nobody to deliver it).
    waiting: u32,
    /// Nobody drives, yet calls are in flight (parked by the last caller).
    parked: bool,
    /// Counts callers taking and leaving the sockets: unchanged over a connection thread's
    /// look, parked calls have been left alone that long.
    touched: u64,
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
    /// Signalled whenever the connection thread lets go of the sockets.
    released: Condvar,
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
    /// Calls whose caller drove the connection until their answer came.
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
                want: false,
                waiting: 0,
                parked: false,
                touched: 0,
            }),
            released: Condvar::new(),
            conn: Mutex::new(conn),
            calls,
            thread_wake: Wake::new()?,
            sleeping: AtomicBool::new(false),
            caller_wake: Wake::new()?,
            direct_calls: AtomicU64::new(0),
        })
    }

    /// Puts `call` on the wire from this thread if nobody drives the connection and
    /// nothing is queued before it, else queues it for whoever drives.
    pub fn send(&self, queue: &Sender<Call>, call: Call) -> Result<(), ClientError> {
        match self.take(false) {
            Some(mut conn) => {
                conn.start(call);
                self.release(conn);
                Ok(())
            }
            None => self.enqueue(queue, call),
        }
    }

    /// [`Driver::send`] for several calls, in order: sent together (in BATCHes, to a
    /// broker that reads them) from this thread, or queued together for whoever drives
    /// (which sends what it finds queued together too).
    pub fn send_many(&self, queue: &Sender<Call>, calls: Vec<Call>) -> Result<(), ClientError> {
        match self.take(false) {
            Some(mut conn) => {
                conn.start_many(calls);
                self.release(conn);
                Ok(())
            }
            None => calls.into_iter().try_for_each(|c| self.enqueue(queue, c)),
        }
    }

    /// Sends `call` and waits for its answer (see [`Driver::wait`]).
    pub fn call(
        &self,
        queue: &Sender<Call>,
        call: Call,
        answer: &Answer,
    ) -> Result<Reply, ClientError> {
        match self.take(false) {
            Some(mut conn) => {
                conn.start(call);
                self.drive(conn, answer)
            }
            None => {
                self.enqueue(queue, call)?;
                self.wait(answer)
            }
        }
    }

    /// Waits for a call's answer, driving the connection on this thread whenever nobody
    /// else does.
    pub fn wait(&self, answer: &Answer) -> Result<Reply, ClientError> {
        loop {
            if let Some(r) = answer.try_take() {
                return r;
            }
            let mut st = lock(&self.state);
            match st.owner {
                Owner::Nobody => {
                    drop(st);
                    // Calls queued before are sent by the rounds, in order.
                    if let Some(conn) = self.take(true) {
                        return self.drive(conn, answer);
                    }
                }
                Owner::Thread => {
                    if !std::mem::replace(&mut st.want, true) {
                        self.thread_wake.signal();
                    }
                    while st.owner == Owner::Thread {
                        st = self.released.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                }
                Owner::Caller => {
                    // That caller delivers this answer, or hands over to the thread
                    // (seeing us wait) before it stops.
                    st.waiting += 1;
                    drop(st);
                    let r = answer.wait();
                    lock(&self.state).waiting -= 1;
                    return r;
                }
            }
        }
    }

    /// Takes the sockets for this caller if nobody has them — and, unless `queued` is
    /// allowed, nothing is queued (a call sent at once must not pass one queued before it).
    fn take(&self, queued: bool) -> Option<MutexGuard<'_, Connection>> {
        let stale = {
            let mut st = lock(&self.state);
            if st.owner != Owner::Nobody || (!queued && !self.calls.is_empty()) {
                return None;
            }
            st.owner = Owner::Caller;
            st.parked = false;
            st.touched += 1;
            std::mem::take(&mut st.signalled)
        };
        let conn = lock(&self.conn);
        if stale {
            drain(&self.caller_wake.rx);
        }
        Some(conn)
    }

    /// Runs rounds on this thread until `answer` is in, then lets go of the sockets.
    fn drive(
        &self,
        mut conn: MutexGuard<'_, Connection>,
        answer: &Answer,
    ) -> Result<Reply, ClientError> {
        let result = loop {
            if let Some(r) = answer.try_take() {
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

    /// Queues `call` for whoever drives the connection and wakes it.
    fn enqueue(&self, queue: &Sender<Call>, call: Call) -> Result<(), ClientError> {
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

    /// A caller gives the sockets back: to the connection thread if calls are queued or
    /// others wait for answers in flight, else to nobody (parking what is in flight).
    fn release(&self, conn: MutexGuard<'_, Connection>) {
        let to_thread = {
            let mut st = lock(&self.state);
            let in_flight = !conn.is_idle();
            let to_thread = !self.calls.is_empty() || (in_flight && st.waiting > 0);
            st.owner = if to_thread {
                Owner::Thread
            } else {
                Owner::Nobody
            };
            st.parked = in_flight && !to_thread;
            st.touched += 1;
            to_thread
        };
        drop(conn);
        if to_thread {
            self.thread_wake.signal();
        }
    }

    /// The connection thread lets go of the sockets (idle, asked to, or exiting).
    fn let_go(&self, st: &mut State, in_flight: bool) {
        st.owner = Owner::Nobody;
        st.want = false;
        st.parked = in_flight;
        st.touched += 1;
        self.released.notify_all();
    }

    /// The connection thread: drives the connection while calls are in flight and no
    /// caller does, sleeps otherwise; returns once every handle is gone and every call
    /// is settled.
    pub fn run(&self) {
        let mut seen = None;
        loop {
            if self.claim_for_thread(&mut seen) {
                let mut conn = lock(&self.conn);
                if !self.serve(&mut conn) {
                    conn.close();
                    drop(conn);
                    self.let_go(&mut lock(&self.state), false);
                    return;
                }
            }
            self.sleep();
        }
    }

    /// The thread takes the sockets unless a caller holds them, or parked calls were
    /// touched by a caller since its last look (`seen`). It takes them even with nothing
    /// in flight, for one round that reads monitor events and late answers.
    fn claim_for_thread(&self, seen: &mut Option<u64>) -> bool {
        let mut st = lock(&self.state);
        match st.owner {
            Owner::Caller => {
                *seen = Some(st.touched);
                false
            }
            Owner::Thread => true,
            Owner::Nobody if st.parked && self.calls.is_empty() && *seen != Some(st.touched) => {
                *seen = Some(st.touched);
                false
            }
            Owner::Nobody => {
                st.owner = Owner::Thread;
                st.parked = false;
                true
            }
        }
    }

    /// Rounds until nothing is in flight or queued, or a caller asks for the sockets,
    /// then gives them to nobody; false once every handle is gone (or polling failed)
    /// and nothing is in flight.
    fn serve(&self, conn: &mut Connection) -> bool {
        loop {
            let cap = if conn.is_idle() && self.calls.is_empty() {
                Duration::ZERO
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
            let mut st = lock(&self.state);
            let idle = conn.is_idle() && self.calls.is_empty();
            if idle || st.want {
                self.let_go(&mut st, !conn.is_idle());
                return true;
            }
        }
    }

    /// Waits for a wake-up byte, unless work is already visible: at most [`PARK_GRACE`]
    /// while calls are parked, else [`MAX_POLL`].
    fn sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        let (work, watch) = {
            let st = lock(&self.state);
            let work =
                st.owner == Owner::Thread || (st.owner == Owner::Nobody && !self.calls.is_empty());
            (work, st.parked)
        };
        if !work {
            let mut item = [zmq::PollItem::from_fd(
                std::os::unix::io::AsRawFd::as_raw_fd(&self.thread_wake.rx),
                zmq::POLLIN,
            )];
            let wait = if watch { PARK_GRACE } else { MAX_POLL };
            let _ = zmq::poll(&mut item, wait.as_millis() as i64);
        }
        self.sleeping.store(false, Ordering::SeqCst);
        drain(&self.thread_wake.rx);
    }
}
