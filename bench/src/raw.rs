//! The broker alone (`rr-raw`): a minimal client and echo worker written in the bench with
//! the `zmq` crate, speaking the Tradeplex client and worker protocols straight on a
//! DEALER each, against the Tradeplex broker. With the client library and the worker
//! process out of the way, the ratio to the bare hop is the broker's own cost.

use super::threads::Threads;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tradeplex_proto::worker::{self as wp, DisconnectHeader, HeartbeatHeader, ReadyHeader};
use tradeplex_proto::{client as cp, RequestId, ServiceName, WorkerId};

use super::rr::Pipe;

/// The service the raw workers offer (not `echo`, so the cluster's workers stay out).
pub const SERVICE: &str = "bench.echo";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A DEALER speaking the client protocol.
pub struct RawClientPipe {
    socket: zmq::Socket,
    service: ServiceName,
    next_id: u64,
    _ctx: zmq::Context,
}

impl RawClientPipe {
    pub fn connect(frontend: &str) -> anyhow::Result<RawClientPipe> {
        let (ctx, socket) = super::rr::raw_dealer(frontend)?;
        Ok(RawClientPipe {
            socket,
            service: ServiceName::new(SERVICE)?,
            next_id: 1,
            _ctx: ctx,
        })
    }
}

impl Pipe for RawClientPipe {
    fn send(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let header = cp::RequestHeader {
            id: RequestId(self.next_id),
            service: self.service.clone(),
            deadline_ms: tradeplex_proto::now_unix_ms() + CALL_TIMEOUT.as_millis() as u64,
            // As the library's queries are: the broker's path for idempotent requests.
            idempotent: true,
            target: None,
            affinity: None,
            client: None,
            // One answer per message: the raw client reads no BATCH.
            batch: false,
        };
        self.next_id += 1;
        self.socket
            .send(cp::encode(cp::Command::Request, &header, body), 0)?;
        Ok(())
    }

    fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        let frames = self
            .socket
            .recv_multipart(0)
            .map_err(|e| anyhow!("raw client reply: {e}"))?;
        match cp::decode_answer(&frames)? {
            (cp::Message::Reply(_), at) => Ok(frames
                .first()
                .and_then(|f| f.get(at..))
                .unwrap_or_default()
                .to_vec()),
            (cp::Message::Error(e), _) => bail!("{}: {}", e.name, e.message),
            (cp::Message::Request(_), _) => bail!("broker sent a request to a client"),
            (cp::Message::Batch(_), _) => bail!("broker sent a batch to a client that reads none"),
        }
    }
}

/// Raw echo workers in threads of this process; they say DISCONNECT when stopped.
pub struct RawWorkers {
    threads: Threads,
}

impl RawWorkers {
    pub fn start(backend: &str, n: usize, capacity: u32) -> anyhow::Result<RawWorkers> {
        let mut threads = Threads::default();
        for i in 0..n {
            let (stop, backend) = (threads.stop_flag(), backend.to_string());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("raw-worker-{i}"))
                    .spawn(move || raw_worker(&backend, capacity, &stop))?,
            );
        }
        Ok(RawWorkers { threads })
    }

    /// Stops the workers and reports the first error any of them had.
    pub fn stop(self) -> anyhow::Result<()> {
        self.threads.stop()
    }
}

fn send<T: tradeplex_proto::frame::Header>(
    s: &zmq::Socket,
    cmd: wp::Command,
    header: &T,
    body: &[u8],
) -> zmq::Result<()> {
    s.send(wp::encode(cmd, header, body), 0)
}

/// READY, then echo every REQUEST inline, heartbeat every second, DISCONNECT at the end.
fn raw_worker(backend: &str, capacity: u32, stop: &AtomicBool) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER)?;
    s.set_linger(500)?;
    s.set_sndhwm(100_000)?;
    s.set_rcvhwm(100_000)?;
    s.connect(backend)?;
    let ready = ReadyHeader {
        worker: WorkerId::random(),
        services: vec![ServiceName::new(SERVICE)?],
        capacity,
        session: 0,
        // One REQUEST per message: the bench's raw worker reads no BATCH.
        batch: false,
    };
    send(&s, wp::Command::Ready, &ready, &[])?;
    let mut next_heartbeat = Instant::now() + HEARTBEAT;
    // One message received and one encoded, both reused: the bench's worker costs little.
    let mut msg = zmq::Message::new();
    let mut out = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) {
        while s.recv(&mut msg, zmq::DONTWAIT).is_ok() {
            if msg.get_more() {
                bail!("raw worker: message of more than {} frame", wp::FRAMES);
            }
            match wp::decode(&[&msg[..]])? {
                (wp::Message::Request(h), at) => {
                    let body = msg.get(at..).unwrap_or_default();
                    let reply = wp::ReplyHeader { job: h.job };
                    wp::encode_into(&mut out, wp::Command::Reply, &reply, body);
                    s.send(&out[..], 0)?;
                }
                (wp::Message::Disconnect(_), _) => {
                    send(&s, wp::Command::Ready, &ready, &[])?;
                }
                _ => {}
            }
        }
        if Instant::now() >= next_heartbeat {
            send(&s, wp::Command::Heartbeat, &HeartbeatHeader {}, &[])?;
            next_heartbeat = Instant::now() + HEARTBEAT;
        }
        s.poll(zmq::POLLIN, 50)?;
    }
    let bye = DisconnectHeader {
        reason: "bench run over".into(),
    };
    send(&s, wp::Command::Disconnect, &bye, &[])?;
    Ok(())
}
