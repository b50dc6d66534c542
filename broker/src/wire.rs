//! Socket plumbing shared by the broker loops: reading a bounded multipart message into
//! reusable frames, sending one, and rate-limited logging of bad input.

use std::time::{Duration, Instant};

use crate::body::Body;

/// Most frames read from one message; the rest are discarded and the message rejected.
pub const MAX_FRAMES: usize = 8;

/// A reusable buffer for one multipart message.
pub struct Frames {
    parts: Vec<Body>,
    len: usize,
    /// True when the message had more than [`MAX_FRAMES`] frames.
    pub overflow: bool,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            parts: (0..MAX_FRAMES).map(|_| Body::new()).collect(),
            len: 0,
            overflow: false,
        }
    }
}

impl Frames {
    /// The frames read.
    pub fn as_slice(&self) -> &[Body] {
        self.parts.get(..self.len).unwrap_or(&[])
    }

    /// Takes frame `i` out, leaving an empty frame.
    pub fn take(&mut self, i: usize) -> Body {
        match self.parts.get_mut(i) {
            Some(m) if i < self.len => std::mem::take(m),
            _ => Body::new(),
        }
    }

    /// Reads one whole message without blocking; `Ok(false)` when none is waiting.
    pub fn recv(&mut self, socket: &mut zmq::Socket) -> zmq::Result<bool> {
        self.len = 0;
        self.overflow = false;
        loop {
            let flags = if self.len == 0 { zmq::DONTWAIT } else { 0 };
            let more = match self.parts.get_mut(self.len) {
                Some(part) => match part.recv(socket, flags) {
                    Ok(()) => {
                        self.len += 1;
                        part.more()
                    }
                    Err(zmq::Error::EAGAIN) if self.len == 0 => return Ok(false),
                    Err(e) => return Err(e),
                },
                None => {
                    // Over the frame limit: drain the rest so the next read starts clean.
                    self.overflow = true;
                    let mut scratch = Body::new();
                    scratch.recv(socket, 0)?;
                    scratch.more()
                }
            };
            if !more {
                return Ok(true);
            }
        }
    }
}

/// Sends `[to][head body]` on a ROUTER without blocking: the request protocols' one-frame
/// layout, the head (protocol id, command byte, header length, header) and the body
/// copied into one message.
pub fn send_routed(
    socket: &mut zmq::Socket,
    to: &[u8],
    head: &[u8],
    body: &[u8],
) -> zmq::Result<()> {
    send_part(socket, to, zmq::SNDMORE)?;
    Body::joined(head, body).send(socket, zmq::DONTWAIT)
}

/// Sends `[to]` and then `frames` on a ROUTER without blocking (the version-01 answers).
pub fn send_frames(socket: &mut zmq::Socket, to: &[u8], frames: &[Vec<u8>]) -> zmq::Result<()> {
    send_part(socket, to, zmq::SNDMORE)?;
    let last = frames.len().saturating_sub(1);
    for (i, f) in frames.iter().enumerate() {
        let more = if i < last { zmq::SNDMORE } else { 0 };
        send_part(socket, f, more)?;
    }
    Ok(())
}

/// Sends one frame without blocking, again if a signal interrupted it.
fn send_part(socket: &mut zmq::Socket, frame: &[u8], flags: i32) -> zmq::Result<()> {
    tradeplex_ops::uninterrupted(|| socket.send(frame, flags | zmq::DONTWAIT))
}

/// Logs at most `per_second` lines a second; the lines held back are counted into the next.
pub struct LogLimiter {
    per_second: u32,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `per_second` lines a second.
    pub fn new(per_second: u32) -> LogLimiter {
        LogLimiter {
            per_second,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged now (n lines were suppressed before it).
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window < self.per_second {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Applies the socket options every broker socket shares.
pub fn common_options(socket: &zmq::Socket, max_msg: i64) -> zmq::Result<()> {
    socket.set_linger(500)?;
    socket.set_maxmsgsize(max_msg)?;
    Ok(())
}

/// The endpoint a socket actually bound (resolves `*` ports).
pub fn bound_endpoint(socket: &zmq::Socket, asked: &str) -> String {
    match socket.get_last_endpoint() {
        Ok(Ok(ep)) => ep,
        _ => asked.to_string(),
    }
}
