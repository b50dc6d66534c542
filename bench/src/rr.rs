//! Scenario 1, request/reply: 64-byte echo calls, window 1 and pipelined, through the
//! Tradeplex broker and through a bare ROUTER–ROUTER hop with per-worker capacity credits.
//! Both sides are driven by the same client loop ([`drive`]) over a [`Pipe`].

use super::threads::Threads;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use tradeplex_client::{CallOptions, Client, ClientOptions, PendingCall};

use super::cluster::ScratchDir;

/// Request body size, bytes.
pub const BODY_BYTES: usize = 64;
/// How long a call may take before the run fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One request/reply configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrConfig {
    pub clients: usize,
    pub workers: usize,
}

impl std::str::FromStr for RrConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (c, w) = s
            .split_once('x')
            .ok_or_else(|| format!("{s:?} is not CLIENTSxWORKERS, e.g. 4x2"))?;
        let n = |v: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| format!("{v:?} in {s:?} is not a count 1-64"))
        };
        Ok(RrConfig {
            clients: n(c)?,
            workers: n(w)?,
        })
    }
}

impl std::fmt::Display for RrConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}c×{}w", self.clients, self.workers)
    }
}

/// A request/reply connection as the measuring loop sees it.
pub trait Pipe {
    /// Sends one request.
    fn send(&mut self, body: &[u8]) -> anyhow::Result<()>;
    /// Blocks for one reply body.
    fn recv(&mut self) -> anyhow::Result<Vec<u8>>;
    /// A reply body already in, without waiting (the peers' pipes: none, they are read
    /// one `recv` at a time).
    fn recv_ready(&mut self) -> Option<anyhow::Result<Vec<u8>>> {
        None
    }
}

/// The Tradeplex side: one [`Client`] (its own connection thread), replies in call order.
pub struct TradeplexPipe {
    client: Client,
    in_flight: VecDeque<PendingCall>,
    /// A body sent while nothing was in flight, not handed to the client yet: if it is
    /// still alone at `recv` it goes out as a blocking `call` (what a strategy calling one
    /// at a time does); a second `send` first hands it over.
    alone: Option<Vec<u8>>,
    /// Bodies sent since the last `recv`, handed over there with one `Client::send_many`
    /// (what a strategy refilling its pipeline with everything answered does).
    outbox: Vec<Vec<u8>>,
    options: CallOptions,
}

impl TradeplexPipe {
    /// A client connected with `client` (e.g. CURVE keys) making echo queries.
    pub fn connect_with(frontend: &str, client: ClientOptions) -> anyhow::Result<TradeplexPipe> {
        let options = CallOptions::query().timeout(CALL_TIMEOUT);
        TradeplexPipe::with_client(frontend, client, options)
    }

    /// Echo calls made with `options` (e.g. not idempotent, pinned to one worker).
    pub fn with_options(frontend: &str, options: CallOptions) -> anyhow::Result<TradeplexPipe> {
        TradeplexPipe::with_client(frontend, ClientOptions::default(), options)
    }

    fn with_client(
        frontend: &str,
        client: ClientOptions,
        options: CallOptions,
    ) -> anyhow::Result<TradeplexPipe> {
        Ok(TradeplexPipe {
            client: Client::connect(frontend, client.timeout(CALL_TIMEOUT))?,
            in_flight: VecDeque::new(),
            alone: None,
            outbox: Vec::new(),
            options,
        })
    }
}

impl Pipe for TradeplexPipe {
    fn send(&mut self, body: &[u8]) -> anyhow::Result<()> {
        if self.in_flight.is_empty() && self.alone.is_none() && self.outbox.is_empty() {
            self.alone = Some(body.to_vec());
            return Ok(());
        }
        if let Some(first) = self.alone.take() {
            self.outbox.push(first);
        }
        self.outbox.push(body.to_vec());
        Ok(())
    }

    fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        if let Some(body) = self.alone.take() {
            return Ok(self.client.call("echo", body, self.options.clone())?.body);
        }
        self.flush()?;
        let call = self
            .in_flight
            .pop_front()
            .ok_or_else(|| anyhow!("recv with nothing in flight"))?;
        Ok(call.wait()?.body)
    }

    fn recv_ready(&mut self) -> Option<anyhow::Result<Vec<u8>>> {
        if !self.in_flight.front()?.is_ready() {
            return None;
        }
        let call = self.in_flight.pop_front()?;
        Some(call.wait().map(|r| r.body).map_err(Into::into))
    }
}

impl TradeplexPipe {
    /// Sends what `send` collected, together.
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let opts = &self.options;
        let calls = self.outbox.drain(..).map(|b| ("echo", b, opts.clone()));
        self.in_flight.extend(self.client.send_many(calls)?);
        Ok(())
    }
}

/// The baseline side: a DEALER straight to the bare hop's frontend, with its own context
/// (as each Tradeplex client has).
pub struct BaselinePipe {
    socket: zmq::Socket,
    _ctx: zmq::Context,
}

impl BaselinePipe {
    pub fn connect(frontend: &str) -> anyhow::Result<BaselinePipe> {
        let (ctx, socket) = raw_dealer(frontend)?;
        Ok(BaselinePipe { socket, _ctx: ctx })
    }
}

/// A DEALER with its own context, as the bench's raw clients (baseline and raw Tradeplex)
/// use: unbounded-enough queues, and a receive timeout so a lost reply cannot hang a run.
pub fn raw_dealer(frontend: &str) -> anyhow::Result<(zmq::Context, zmq::Socket)> {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    socket.set_sndhwm(100_000)?;
    socket.set_rcvhwm(100_000)?;
    socket.set_rcvtimeo(CALL_TIMEOUT.as_millis() as i32)?;
    socket.connect(frontend)?;
    Ok((ctx, socket))
}

impl Pipe for BaselinePipe {
    fn send(&mut self, body: &[u8]) -> anyhow::Result<()> {
        Ok(self.socket.send(body, 0)?)
    }

    fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        self.socket
            .recv_bytes(0)
            .map_err(|e| anyhow!("baseline reply: {e}"))
    }
}

/// What one client measured.
pub struct ClientRun {
    pub done: u64,
    pub hist: Histogram<u64>,
    pub started: Instant,
    pub ended: Instant,
}

/// A 64-byte MessagePack bin (so `echo` does not mistake it for a `sleep_ms` map) whose
/// payload starts with the send time, nanoseconds since `epoch`: latency is read back
/// from the echoed body, so replies may come back in any order.
fn body(epoch: Instant) -> [u8; BODY_BYTES] {
    let mut b = [0u8; BODY_BYTES];
    b[0] = 0xc4;
    b[1] = (BODY_BYTES - 2) as u8;
    let ns = epoch.elapsed().as_nanos() as u64;
    b[2..10].copy_from_slice(&ns.to_le_bytes());
    b
}

fn latency_ns(epoch: Instant, reply: &[u8]) -> anyhow::Result<u64> {
    let sent = reply
        .get(2..10)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| anyhow!("reply body of {} bytes is not ours", reply.len()))?;
    Ok((epoch.elapsed().as_nanos() as u64).saturating_sub(sent))
}

/// Keeps `window` requests in flight until `count` are answered or `deadline` passes.
fn pump(
    pipe: &mut dyn Pipe,
    epoch: Instant,
    window: usize,
    count: u64,
    deadline: Instant,
    mut hist: Option<&mut Histogram<u64>>,
) -> anyhow::Result<u64> {
    let (mut sent, mut done, mut in_flight) = (0u64, 0u64, 0usize);
    loop {
        let open = sent < count && Instant::now() < deadline;
        while open && in_flight < window && sent < count {
            pipe.send(&body(epoch))?;
            sent += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(done);
        }
        // The reply waited for, then every other one already in: the window is refilled
        // with all of them at once (a pipe that can send them together does).
        let mut reply = Some(pipe.recv());
        while let Some(r) = reply {
            let ns = latency_ns(epoch, &r?)?;
            if let Some(h) = hist.as_deref_mut() {
                h.saturating_record(ns);
            }
            in_flight -= 1;
            done += 1;
            reply = if in_flight > 0 {
                pipe.recv_ready()
            } else {
                None
            };
        }
    }
}

/// One client: warm-up, wait for every client at the barrier, then the measured run.
pub fn drive(
    pipe: &mut dyn Pipe,
    window: usize,
    count: u64,
    warmup: u64,
    barrier: &Barrier,
    cap: Duration,
) -> anyhow::Result<ClientRun> {
    let epoch = Instant::now();
    let far = Instant::now() + cap.max(Duration::from_secs(5));
    let warm = pump(pipe, epoch, window, warmup, far, None);
    // Reach the barrier even after a failed warm-up, or the other clients would hang.
    barrier.wait();
    warm.context("warm-up")?;
    let mut hist = super::report::latency_histogram();
    let started = Instant::now();
    let done = pump(pipe, epoch, window, count, started + cap, Some(&mut hist))?;
    Ok(ClientRun {
        done,
        hist,
        started,
        ended: Instant::now(),
    })
}

/// The result of one configuration run (all clients).
#[derive(Debug, Clone)]
pub struct RrRun {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub done: u64,
    /// The broker's CPU time (all its threads) per call, warm-up included, where measured.
    pub broker_cpu_us: Option<f64>,
}

impl RrRun {
    /// The figures of `done` calls over `secs`, latencies from `hist` (nanoseconds).
    pub fn from_histogram(hist: &Histogram<u64>, done: u64, secs: f64) -> RrRun {
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        RrRun {
            rate: done as f64 / secs.max(1e-9),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            done,
            broker_cpu_us: None,
        }
    }
}

/// Timed calls and warm-up calls of each client of a run.
fn per_client(clients: usize, window: usize, messages: u64) -> (u64, u64) {
    let per_client = messages.div_ceil(clients.max(1) as u64).max(1);
    // A tenth of the run, at least two windows' worth, at most 5,000 (or two windows).
    let warmup = (per_client / 10).min(5_000).max(window as u64 * 2);
    (per_client, warmup)
}

/// The warm-up calls of a run, all clients (beside its `done` timed calls, they are what
/// the broker's CPU time for the run is divided by).
pub fn warmup_calls(clients: usize, window: usize, messages: u64) -> u64 {
    clients as u64 * per_client(clients, window, messages).1
}

/// Runs `clients` client threads, each with a pipe made by `connect`.
pub fn run_clients<P, F>(
    clients: usize,
    window: usize,
    messages: u64,
    cap: Duration,
    connect: F,
) -> anyhow::Result<RrRun>
where
    P: Pipe,
    F: Fn() -> anyhow::Result<P> + Sync,
{
    let (per_client, warmup) = per_client(clients, window, messages);
    let barrier = Barrier::new(clients);
    let runs: Vec<anyhow::Result<ClientRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (barrier, connect) = (&barrier, &connect);
                s.spawn(move || match connect() {
                    Ok(mut pipe) => drive(&mut pipe, window, per_client, warmup, barrier, cap),
                    Err(e) => {
                        barrier.wait();
                        Err(e)
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("client panicked"))))
            .collect()
    });
    let runs: Vec<ClientRun> = runs.into_iter().collect::<anyhow::Result<_>>()?;
    let mut hist = super::report::latency_histogram();
    for r in &runs {
        hist.add(&r.hist)?;
    }
    let started = runs.iter().map(|r| r.started).min().context("no clients")?;
    let ended = runs.iter().map(|r| r.ended).max().context("no clients")?;
    let done: u64 = runs.iter().map(|r| r.done).sum();
    let secs = ended.duration_since(started).as_secs_f64();
    Ok(RrRun::from_histogram(&hist, done, secs))
}

/// The bare hop: a ROUTER–ROUTER load balancer in its own thread and context, and echo
/// workers in theirs. Each worker's READY grants it `capacity` credits; a request takes
/// one, its reply gives it back; the frontend is not read while no credit is left.
pub struct BaselineRr {
    pub frontend: String,
    threads: Threads,
}

const READY: &[u8] = b"READY";

impl BaselineRr {
    pub fn start(
        workers: usize,
        capacity: u32,
        ipc: Option<&ScratchDir>,
    ) -> anyhow::Result<BaselineRr> {
        let ctx = zmq::Context::new();
        let front = ctx.socket(zmq::ROUTER)?;
        let back = ctx.socket(zmq::ROUTER)?;
        for s in [&front, &back] {
            s.set_linger(0)?;
            s.set_sndhwm(100_000)?;
            s.set_rcvhwm(100_000)?;
        }
        let ep = |name: &str| match ipc {
            Some(d) => d.endpoint(name, true),
            None => "tcp://127.0.0.1:*".to_string(),
        };
        front.bind(&ep("base-frontend"))?;
        back.bind(&ep("base-backend"))?;
        let bound = |s: &zmq::Socket| -> anyhow::Result<String> {
            s.get_last_endpoint()?
                .map_err(|_| anyhow!("endpoint is not UTF-8"))
        };
        let (frontend, backend) = (bound(&front)?, bound(&back)?);
        let mut threads = Threads::default();
        let st = threads.stop_flag();
        threads.push(
            std::thread::Builder::new()
                .name("base-broker".into())
                .spawn(move || {
                    let _ctx = ctx;
                    hop(front, back, &st)
                })?,
        );
        for i in 0..workers {
            let (st, backend) = (threads.stop_flag(), backend.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("base-worker-{i}"))
                    .spawn(move || echo_worker(&backend, capacity, &st))?,
            );
        }
        Ok(BaselineRr { frontend, threads })
    }

    /// Stops the threads and reports the first error any of them had.
    pub fn stop(self) -> anyhow::Result<()> {
        self.threads.stop()
    }
}

/// The bare hop's loop: drain the backend (replies free credits), then the frontend while
/// credits last, then poll.
fn hop(front: zmq::Socket, back: zmq::Socket, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut workers: Vec<Vec<u8>> = Vec::new();
    let mut credits: VecDeque<usize> = VecDeque::new();
    let (mut id, mut f1, mut f2) = (
        zmq::Message::new(),
        zmq::Message::new(),
        zmq::Message::new(),
    );
    while !stop.load(Ordering::Relaxed) {
        loop {
            let mut progress = false;
            // Backend: [worker][READY+capacity] or [worker][client][body].
            while back.recv(&mut id, zmq::DONTWAIT).is_ok() {
                progress = true;
                back.recv(&mut f1, 0)?;
                let w = match workers.iter().position(|w| w[..] == id[..]) {
                    Some(w) => w,
                    None => {
                        workers.push(id.to_vec());
                        workers.len() - 1
                    }
                };
                if !f1.get_more() {
                    let cap = f1
                        .strip_prefix(READY)
                        .and_then(|c| <[u8; 4]>::try_from(c).ok())
                        .map_or(1, u32::from_le_bytes);
                    credits.resize(credits.len() + cap as usize, w);
                    continue;
                }
                back.recv(&mut f2, 0)?;
                credits.push_back(w);
                front.send(take(&mut f1), zmq::SNDMORE)?;
                front.send(take(&mut f2), 0)?;
            }
            // Frontend: [client][body] -> [worker][client][body].
            while !credits.is_empty() && front.recv(&mut id, zmq::DONTWAIT).is_ok() {
                progress = true;
                front.recv(&mut f1, 0)?;
                let w = credits.pop_front().unwrap_or_default();
                back.send(&workers[w][..], zmq::SNDMORE)?;
                back.send(take(&mut id), zmq::SNDMORE)?;
                back.send(take(&mut f1), 0)?;
            }
            if !progress {
                break;
            }
        }
        let mut items = [
            back.as_poll_item(zmq::POLLIN),
            front.as_poll_item(if credits.is_empty() {
                zmq::PollEvents::empty()
            } else {
                zmq::POLLIN
            }),
        ];
        zmq::poll(&mut items, 50)?;
    }
    Ok(())
}

/// Moves a received frame out to send it on, leaving an empty one to receive into.
fn take(m: &mut zmq::Message) -> zmq::Message {
    std::mem::replace(m, zmq::Message::new())
}

/// A bare echo worker: READY with its capacity, then echoes `[client][body]` inline.
fn echo_worker(backend: &str, capacity: u32, stop: &AtomicBool) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER)?;
    s.set_linger(0)?;
    s.set_sndhwm(100_000)?;
    s.set_rcvhwm(100_000)?;
    s.connect(backend)?;
    let mut ready = READY.to_vec();
    ready.extend_from_slice(&capacity.to_le_bytes());
    s.send(ready, 0)?;
    let (mut client, mut body) = (zmq::Message::new(), zmq::Message::new());
    while !stop.load(Ordering::Relaxed) {
        while s.recv(&mut client, zmq::DONTWAIT).is_ok() {
            if !client.get_more() {
                bail!("baseline worker got a one-frame message");
            }
            s.recv(&mut body, 0)?;
            s.send(take(&mut client), zmq::SNDMORE)?;
            s.send(take(&mut body), 0)?;
        }
        s.poll(zmq::POLLIN, 50)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse() {
        assert_eq!(
            "4x2".parse::<RrConfig>().unwrap(),
            RrConfig {
                clients: 4,
                workers: 2
            }
        );
        assert!("4".parse::<RrConfig>().is_err());
        assert!("0x1".parse::<RrConfig>().is_err());
    }

    #[test]
    fn body_carries_its_send_time() {
        let epoch = Instant::now() - Duration::from_millis(5);
        let b = body(epoch);
        assert_eq!(b.len(), BODY_BYTES);
        assert_eq!(b[0], 0xc4);
        assert!(latency_ns(epoch, &b).unwrap() < 1_000_000_000);
        assert!(latency_ns(epoch, b"x").is_err());
    }
}
