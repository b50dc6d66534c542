//! BATCH: several complete worker-protocol messages carried in one frame.
//!
//! libzmq pays per message (and CURVE encrypts each on its own), so under a pipelined load
//! the broker hands a worker the requests of one round in one message and the worker
//! answers a round's results in one. The body of a BATCH is its messages back to back,
//! each prefixed by its length (u32, big-endian); each is a whole `TPXW03` message, so it
//! is read exactly as if it had come alone. The header says how many there are.

use serde::{Deserialize, Serialize};

use crate::frame::{Header, Protocol};
use crate::ProtoError;

/// Most messages in one BATCH.
pub const MAX_BATCH: u32 = 256;

/// Most bytes a sender puts in one BATCH body, unless one message alone is larger: every
/// peer accepts messages of 64 KiB beyond twice its body limit, so a BATCH of messages
/// each within the limit never passes the receiver's.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Bytes of the length prefix before each message in a BATCH body.
const LEN_PREFIX: usize = 4;

/// Header of BATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Messages in the body, 2 to [`MAX_BATCH`] (a single message is sent alone).
    pub count: u32,
}

impl Header for BatchHeader {}

/// Checks a BATCH header's count.
pub(crate) fn validate(h: &BatchHeader) -> Result<(), ProtoError> {
    if (2..=MAX_BATCH).contains(&h.count) {
        Ok(())
    } else {
        Err(ProtoError::BadField {
            field: "count",
            reason: format!("must be 2-{MAX_BATCH}"),
        })
    }
}

/// Collects messages for one BATCH, its buffer reused from batch to batch.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    /// The body: each message's length prefix and bytes.
    items: Vec<u8>,
    count: u32,
    /// Where the last message pushed starts in `items` (after its prefix).
    last: usize,
}

impl BatchBuilder {
    /// Messages collected.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes collected (the BATCH body's length).
    pub fn body_len(&self) -> usize {
        self.items.len()
    }

    /// Whether another message is allowed (fewer than [`MAX_BATCH`]).
    pub fn has_room(&self) -> bool {
        self.count < MAX_BATCH
    }

    /// Forgets what was collected (the buffer is kept).
    pub fn clear(&mut self) {
        self.items.clear();
        self.count = 0;
        self.last = 0;
    }

    /// Gives back the buffer's memory beyond `bytes` (after a large batch).
    pub fn shrink_to(&mut self, bytes: usize) {
        self.items.shrink_to(bytes);
    }

    /// Appends an already-encoded message.
    pub fn push_encoded(&mut self, message: &[u8]) {
        self.push_encoded_parts(message, &[]);
    }

    /// Appends an already-encoded message given as its head and its body.
    pub fn push_encoded_parts(&mut self, head: &[u8], body: &[u8]) {
        let at = self.begin();
        self.items.extend_from_slice(head);
        self.items.extend_from_slice(body);
        self.end(at);
    }

    /// Writes a placeholder length prefix; returns where it is.
    fn begin(&mut self) -> usize {
        let at = self.items.len();
        self.items.extend_from_slice(&[0; LEN_PREFIX]);
        at
    }

    /// Fills in the length prefix at `at` for the message written after it.
    fn end(&mut self, at: usize) {
        let start = at + LEN_PREFIX;
        let len = u32::try_from(self.items.len() - start).unwrap_or(u32::MAX);
        if let Some(prefix) = self.items.get_mut(at..start) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        self.last = start;
        self.count += 1;
    }

    /// The only message collected, when there is exactly one (it is sent alone).
    pub fn single(&self) -> Option<&[u8]> {
        (self.count == 1).then(|| self.items.get(self.last..).unwrap_or(&[]))
    }

    /// The BATCH body (every message with its prefix).
    pub fn body(&self) -> &[u8] {
        &self.items
    }

    /// The BATCH message's head (`protocol`'s id, the command byte `cmd`, the header)
    /// into `buf`; its body is [`Self::body`].
    pub fn head_into(&self, protocol: &Protocol, cmd: u8, buf: &mut Vec<u8>) {
        protocol.encode_head_into(buf, cmd, &BatchHeader { count: self.count });
    }
}

/// The messages of a BATCH body, as byte ranges of `body`: each `Ok` until the first
/// that does not fit (then one `Err` and the end). The count must match the header's:
/// fewer messages, or bytes after the last one, end in an `Err` too.
pub fn items(body: &[u8], count: u32) -> Items<'_> {
    Items {
        body,
        at: 0,
        left: count,
        done: false,
    }
}

/// Iterator of [`items`].
#[derive(Debug)]
pub struct Items<'a> {
    body: &'a [u8],
    at: usize,
    left: u32,
    done: bool,
}

impl Items<'_> {
    fn next_range(&mut self) -> Result<std::ops::Range<usize>, ProtoError> {
        let bad = |what: String| ProtoError::BadField {
            field: "count",
            reason: what,
        };
        let prefix = self
            .body
            .get(self.at..self.at + LEN_PREFIX)
            .and_then(|b| <[u8; LEN_PREFIX]>::try_from(b).ok())
            .ok_or_else(|| bad(format!("{} more messages announced than sent", self.left)))?;
        let start = self.at + LEN_PREFIX;
        let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
        let end = start.saturating_add(len);
        if end > self.body.len() {
            return Err(bad(format!(
                "a {len}-byte message runs past the end of the batch"
            )));
        }
        self.at = end;
        Ok(start..end)
    }
}

impl Iterator for Items<'_> {
    type Item = Result<std::ops::Range<usize>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            let extra = self.body.len().saturating_sub(self.at);
            return (extra > 0).then(|| {
                Err(ProtoError::BadField {
                    field: "count",
                    reason: format!("{extra} bytes after the last message"),
                })
            });
        }
        self.left -= 1;
        let r = self.next_range();
        self.done = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{self, Command, ReplyHeader};
    use crate::JobId;
    use proptest::prelude::*;

    fn collect(body: &[u8], count: u32) -> Vec<Result<Vec<u8>, ProtoError>> {
        items(body, count)
            .map(|r| r.map(|range| body[range].to_vec()))
            .collect()
    }

    #[test]
    fn messages_come_out_as_they_went_in() {
        let mut b = BatchBuilder::default();
        let replies: Vec<ReplyHeader> = (1..=3).map(|j| ReplyHeader { job: JobId(j) }).collect();
        for (i, r) in replies.iter().enumerate() {
            b.push_encoded(&worker::encode(Command::Reply, r, &vec![i as u8; i * 40]));
        }
        let lone = worker::encode(Command::Heartbeat, &worker::HeartbeatHeader {}, b"");
        b.push_encoded(&lone);
        assert_eq!(b.count(), 4);
        assert_eq!(b.single(), None);
        let out = collect(b.body(), b.count());
        assert_eq!(out.len(), 4);
        for (i, m) in out.iter().take(3).enumerate() {
            let m = m.as_ref().unwrap();
            let (msg, at) = worker::decode(&[&m[..]]).unwrap();
            assert_eq!(msg, worker::Message::Reply(replies[i].clone()));
            assert_eq!(&m[at..], &vec![i as u8; i * 40][..]);
        }
        assert_eq!(out[3].as_ref().unwrap(), &lone);
        b.clear();
        b.push_encoded(&lone);
        assert_eq!(b.single(), Some(&lone[..]));
    }

    #[test]
    fn a_body_that_does_not_match_its_count_ends_in_an_error() {
        let mut b = BatchBuilder::default();
        b.push_encoded(b"first");
        b.push_encoded(b"second");
        let body = b.body().to_vec();
        // Fewer messages than announced: the two are read, then the error.
        let more = collect(&body, 3);
        assert_eq!(more.len(), 3);
        assert!(more[..2].iter().all(|r| r.is_ok()) && more[2].is_err());
        // Bytes after the announced messages.
        let fewer = collect(&body, 1);
        assert_eq!(fewer.len(), 2);
        assert!(fewer[0].is_ok() && fewer[1].is_err());
        // A length that runs past the end.
        let mut cut = body.clone();
        cut.truncate(body.len() - 1);
        let r = collect(&cut, 2);
        assert!(r[0].is_ok() && r[1].is_err() && r.len() == 2);
        assert_eq!(collect(&body, 2).len(), 2);
    }

    #[test]
    fn counts_outside_the_bounds_are_refused() {
        for (count, ok) in [
            (0, false),
            (1, false),
            (2, true),
            (MAX_BATCH, true),
            (MAX_BATCH + 1, false),
        ] {
            assert_eq!(validate(&BatchHeader { count }).is_ok(), ok, "{count}");
        }
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), count in 0u32..300) {
            let n = items(&body, count).count();
            prop_assert!(n <= count as usize + 1);
        }
    }
}
