//! Frames held by reference count: a received message's body can be kept for a delivery
//! and a re-dispatch (a refusal, an unreachable worker, a retry) without copying its bytes.
//! A body is the tail of the frame it came in (after the protocol's head), so a `Body` is
//! a frame and where in it the bytes it stands for start. The `zmq` crate's `Message`
//! hides its `zmq_msg_t`, so `zmq_msg_copy` — which shares the buffer of a large message
//! instead of copying it — is reached through `zmq-sys` here, in one small audited place.

use std::ops::Deref;

use zmq_sys::zmq_msg_t;

/// One message frame owned by the broker, or the part of it from `start` to `end`.
pub struct Body {
    msg: zmq_msg_t,
    /// Where the bytes this body stands for start in `msg` (0: the whole frame).
    start: usize,
    /// Where they end ([`WHOLE`]: at the frame's end).
    end: usize,
}

/// `end` of a body that runs to its frame's end.
const WHOLE: usize = usize::MAX;

// SAFETY: a `zmq_msg_t` is plain bytes plus, for large messages, a pointer to a buffer whose
// reference count libzmq updates atomically, so a frame may move to and be dropped on
// another thread (the `zmq` crate's `Message` is `Send` for the same reason).
unsafe impl Send for Body {}

fn last_error() -> zmq::Error {
    // SAFETY: reads the calling thread's errno as libzmq set it.
    zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() })
}

impl Body {
    /// An empty frame.
    pub fn new() -> Body {
        let mut msg = zmq_msg_t::default();
        // SAFETY: `msg` is fresh storage; zmq_msg_init cannot fail.
        unsafe { zmq_sys::zmq_msg_init(&mut msg) };
        Body {
            msg,
            start: 0,
            end: WHOLE,
        }
    }

    /// A frame holding a copy of `bytes` (for replies the broker builds itself).
    pub fn from_slice(bytes: &[u8]) -> Body {
        Body::joined(bytes, &[])
    }

    /// A frame holding a copy of `head` followed by `tail`: one message built with one
    /// allocation, handed to libzmq without another copy.
    pub fn joined(head: &[u8], tail: &[u8]) -> Body {
        let len = head.len() + tail.len();
        let mut msg = zmq_msg_t::default();
        // SAFETY: `msg` is fresh storage; on success it owns `len` writable bytes, which
        // the two copies fill exactly.
        unsafe {
            if zmq_sys::zmq_msg_init_size(&mut msg, len) != 0 {
                // Only ENOMEM fails here: the same outcome as a failed Vec allocation.
                std::alloc::handle_alloc_error(
                    std::alloc::Layout::array::<u8>(len).unwrap_or(std::alloc::Layout::new::<u8>()),
                );
            }
            if len > 0 {
                let data = zmq_sys::zmq_msg_data(&mut msg) as *mut u8;
                std::ptr::copy_nonoverlapping(head.as_ptr(), data, head.len());
                std::ptr::copy_nonoverlapping(tail.as_ptr(), data.add(head.len()), tail.len());
            }
        }
        Body {
            msg,
            start: 0,
            end: WHOLE,
        }
    }

    /// This frame from byte `start` on (a message's body after its head); a `start` past
    /// the end leaves an empty body.
    pub fn tail_from(mut self, start: usize) -> Body {
        self.start = start.min(self.frame_len());
        self
    }

    /// Bytes `range` of this frame (one message of a BATCH); a range past the end is
    /// cut at the end.
    pub fn range(mut self, range: std::ops::Range<usize>) -> Body {
        let len = self.frame_len();
        self.end = range.end.min(len);
        self.start = range.start.min(self.end);
        self
    }

    /// The whole frame's length, `start` ignored.
    fn frame_len(&self) -> usize {
        // SAFETY: `msg` is initialised; zmq_msg_size only reads it.
        unsafe { zmq_sys::zmq_msg_size(&self.msg) }
    }

    /// Another handle on the same bytes: libzmq bumps a reference count for a large
    /// frame and copies a small one (at most 33 bytes, stored inline).
    pub fn share(&mut self) -> Body {
        let mut copy = Body::new();
        // SAFETY: both messages are initialised; zmq_msg_copy only fails (EFAULT) for an
        // invalid message, which a `Body` never holds.
        unsafe { zmq_sys::zmq_msg_copy(&mut copy.msg, &mut self.msg) };
        copy.start = self.start;
        copy.end = self.end;
        copy
    }

    /// Receives one frame from `socket` into this one (its old content is released).
    pub fn recv(&mut self, socket: &mut zmq::Socket, flags: i32) -> zmq::Result<()> {
        self.start = 0;
        self.end = WHOLE;
        tradeplex_ops::uninterrupted(|| {
            // SAFETY: the socket pointer is live for the borrow; `msg` is initialised.
            let rc = unsafe { zmq_sys::zmq_msg_recv(&mut self.msg, socket.as_mut_ptr(), flags) };
            if rc == -1 {
                return Err(last_error());
            }
            Ok(())
        })
    }

    /// Whether more frames of the same message follow this one.
    pub fn more(&self) -> bool {
        // SAFETY: `msg` is initialised.
        unsafe { zmq_sys::zmq_msg_more(&self.msg) != 0 }
    }

    /// A property libzmq attached to a received frame (`User-Id`, `Peer-Address`), if set
    /// and UTF-8.
    pub fn property(&self, name: &std::ffi::CStr) -> Option<&str> {
        // SAFETY: `msg` is initialised and `name` NUL-terminated; libzmq returns NULL or a
        // NUL-terminated string in the frame's metadata, which lives while the frame does
        // (the borrow of `self`).
        let p = unsafe { zmq_sys::zmq_msg_gets(&self.msg, name.as_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-NULL: a NUL-terminated string, as above.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_str().ok()
    }

    /// Sends this frame on `socket` (consumed whether or not the send succeeds); a tail
    /// is sent as a copy of its bytes.
    pub fn send(mut self, socket: &mut zmq::Socket, flags: i32) -> zmq::Result<()> {
        if self.start > 0 || self.end != WHOLE {
            return Body::from_slice(&self).send(socket, flags);
        }
        tradeplex_ops::uninterrupted(|| {
            // SAFETY: on success libzmq takes the content and leaves `msg` empty, which
            // Drop then closes; on failure `msg` is unchanged (sent again if interrupted)
            // and Drop releases it.
            let rc = unsafe { zmq_sys::zmq_msg_send(&mut self.msg, socket.as_mut_ptr(), flags) };
            if rc == -1 {
                return Err(last_error());
            }
            Ok(())
        })
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::new()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // SAFETY: `msg` is initialised and closed exactly once.
        unsafe { zmq_sys::zmq_msg_close(&mut self.msg) };
    }
}

impl Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `msg` is initialised; zmq_msg_size/zmq_msg_data only read it. An empty
        // message may have a null data pointer, which a slice must not be built from.
        // The slice is cut to the frame's length whatever `start` and `end` say.
        unsafe {
            let len = zmq_sys::zmq_msg_size(&self.msg).min(self.end);
            if len <= self.start {
                return &[];
            }
            let data = zmq_sys::zmq_msg_data(&self.msg as *const zmq_msg_t as *mut zmq_msg_t);
            std::slice::from_raw_parts((data as *const u8).add(self.start), len - self.start)
        }
    }
}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Body {
        Body::from_slice(bytes)
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::from_slice(&bytes)
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_bodies_keep_their_bytes_after_one_is_sent() {
        let ctx = zmq::Context::new();
        let mut a = ctx.socket(zmq::PAIR).unwrap();
        let mut b = ctx.socket(zmq::PAIR).unwrap();
        a.bind("inproc://body-test").unwrap();
        b.connect("inproc://body-test").unwrap();
        for len in [0usize, 5, 33, 34, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut kept = Body::from_slice(&bytes);
            let sent = kept.share();
            sent.send(&mut a, 0).unwrap();
            let mut got = Body::new();
            got.recv(&mut b, 0).unwrap();
            assert_eq!(&got[..], &bytes[..]);
            assert!(!got.more());
            // The kept handle still holds the original bytes, and can be sent again.
            assert_eq!(&kept[..], &bytes[..]);
            kept.share().send(&mut a, 0).unwrap();
            got.recv(&mut b, 0).unwrap();
            assert_eq!(&got[..], &bytes[..]);
        }
    }

    #[test]
    fn a_tail_is_the_bytes_after_its_start_and_sent_alone() {
        let ctx = zmq::Context::new();
        let mut a = ctx.socket(zmq::PAIR).unwrap();
        let mut b = ctx.socket(zmq::PAIR).unwrap();
        a.bind("inproc://body-tail-test").unwrap();
        b.connect("inproc://body-tail-test").unwrap();
        let frame: Vec<u8> = (0..100u8).collect();
        let mut tail = Body::from_slice(&frame).tail_from(60);
        assert_eq!(&tail[..], &frame[60..]);
        let shared = tail.share();
        assert_eq!(&shared[..], &frame[60..]);
        shared.send(&mut a, 0).unwrap();
        let mut got = Body::new();
        got.recv(&mut b, 0).unwrap();
        assert_eq!(&got[..], &frame[60..]);
        assert!(Body::from_slice(&frame).tail_from(500).is_empty());
        let mut part = Body::from_slice(&frame).range(10..20);
        assert_eq!(&part[..], &frame[10..20]);
        assert_eq!(&part.share()[..], &frame[10..20]);
        part.share().send(&mut a, 0).unwrap();
        got.recv(&mut b, 0).unwrap();
        assert_eq!(&got[..], &frame[10..20]);
        assert_eq!(&Body::from_slice(&frame).range(90..500)[..], &frame[90..]);
        assert!(Body::from_slice(&frame).range(300..500).is_empty());
        let joined = Body::joined(b"head", b"-tail");
        assert_eq!(&joined[..], b"head-tail");
    }

    #[test]
    fn a_large_shared_body_is_not_copied() {
        let mut a = Body::from_slice(&[7u8; 1000]);
        let b = a.share();
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "zmq_msg_copy should share the buffer"
        );
    }
}
