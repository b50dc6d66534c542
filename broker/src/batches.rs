//! One round's messages gathered per peer, for peers that read BATCH: the socket loop
//! sends each worker the requests of a round, and each client its answers, in one message
//! instead of one each (libzmq's cost, and CURVE's, is per message). A lone message still
//! goes alone, as it would without BATCH (its body not copied twice), so a request at
//! window 1 waits for nothing and costs nothing more.

use rustc_hash::FxHashMap as HashMap;
use tradeplex_proto::batch::{BatchBuilder, MAX_BATCH, MAX_BATCH_BYTES};
use tradeplex_proto::frame::Header;
use tradeplex_proto::frame::Protocol;
use tradeplex_proto::JobId;

use crate::body::Body;

/// One peer's messages, ready to send.
#[derive(Default)]
pub(crate) struct Batch {
    /// The peer's routing id.
    pub(crate) to: Vec<u8>,
    /// The jobs delivered in it (to a worker), to requeue should the send fail.
    pub(crate) jobs: Vec<JobId>,
    /// While it holds one message: that message's head (its body is `lone_body`).
    lone_head: Vec<u8>,
    lone_body: Option<Body>,
    /// Its messages once there are two or more.
    messages: BatchBuilder,
}

impl Batch {
    /// Messages in it.
    fn count(&self) -> u32 {
        self.messages.count() + u32::from(self.lone_body.is_some())
    }

    /// Bytes of its BATCH body so far.
    fn size(&self) -> usize {
        let lone = (self.lone_body.as_ref()).map_or(0, |b| PREFIX + self.lone_head.len() + b.len());
        self.messages.body_len() + lone
    }

    /// The message's head and body when it holds exactly one (sent as itself).
    pub(crate) fn lone(&self) -> Option<(&[u8], &[u8])> {
        self.lone_body
            .as_ref()
            .map(|b| (&self.lone_head[..], &b[..]))
    }

    /// Its messages, when it holds two or more.
    pub(crate) fn messages(&self) -> &BatchBuilder {
        &self.messages
    }

    /// Adds a message (its encoded `head` and its `body`).
    fn push(&mut self, head: &[u8], body: Body, job: Option<JobId>) {
        self.jobs.extend(job);
        if self.count() == 0 {
            self.lone_head.clear();
            self.lone_head.extend_from_slice(head);
            self.lone_body = Some(body);
            return;
        }
        if let Some(first) = self.lone_body.take() {
            self.messages.push_encoded_parts(&self.lone_head, &first);
        }
        self.messages.push_encoded_parts(head, &body);
    }
}

/// One message for a batch: a command of `protocol` with its header and body.
pub(crate) struct Item<'a, T> {
    pub(crate) protocol: &'a Protocol,
    pub(crate) cmd: u8,
    pub(crate) header: &'a T,
    pub(crate) body: Body,
    /// The job it delivers, if it is a delivery.
    pub(crate) job: Option<JobId>,
}

/// Bytes of a message's length prefix in a BATCH body.
const PREFIX: usize = 4;

/// Sent batches kept for their buffers, at most.
const MAX_FREE: usize = 64;
/// Bytes of buffer a kept batch holds on to, at most.
const KEEP_BYTES: usize = 256 * 1024;

/// The open batches of a round, at most one per peer sent to.
pub(crate) struct Batches {
    open: Vec<Batch>,
    /// Where each peer's open batch is in `open` (a round may answer many clients).
    index: HashMap<Vec<u8>, usize>,
    /// Sent batches kept for their buffers (bounded: [`MAX_FREE`], [`KEEP_BYTES`]).
    free: Vec<Batch>,
    /// The head of the message being added, reused.
    head: Vec<u8>,
}

impl Batches {
    /// No batches yet.
    pub(crate) fn new() -> Batches {
        Batches {
            open: Vec::new(),
            index: HashMap::default(),
            free: Vec::new(),
            head: Vec::new(),
        }
    }

    /// Adds a message to its peer's batch. A batch with no room left for it is returned,
    /// to be sent now (before it), and a new one started.
    pub(crate) fn add<T: Header>(&mut self, to: &[u8], item: Item<'_, T>) -> Option<Batch> {
        (item.protocol).encode_head_into(&mut self.head, item.cmd, item.header);
        let size = PREFIX + self.head.len() + item.body.len();
        let i = match self.index.get(to) {
            Some(&i) => i,
            None => {
                let b = self.fresh(to);
                self.open.push(b);
                self.index.insert(to.to_vec(), self.open.len() - 1);
                self.open.len() - 1
            }
        };
        let fits = |b: &Batch| {
            b.count() == 0 || (b.count() < MAX_BATCH && b.size() + size <= MAX_BATCH_BYTES)
        };
        let mut full = None;
        if self.open.get(i).is_some_and(|b| !fits(b)) {
            let fresh = self.fresh(to);
            full = self.open.get_mut(i).map(|b| std::mem::replace(b, fresh));
        }
        if let Some(b) = self.open.get_mut(i) {
            b.push(&self.head, item.body, item.job);
        }
        full
    }

    /// The round's batches, to send; each goes back with [`Batches::recycle`].
    pub(crate) fn take(&mut self) -> Vec<Batch> {
        self.index.clear();
        std::mem::take(&mut self.open)
    }

    /// Keeps a sent batch's buffers for the next round, within bounds.
    pub(crate) fn recycle(&mut self, mut b: Batch) {
        if self.free.len() >= MAX_FREE {
            return;
        }
        b.jobs.clear();
        b.lone_body = None;
        b.messages.clear();
        b.messages.shrink_to(KEEP_BYTES);
        self.free.push(b);
    }

    /// Gives back the (emptied) list [`Batches::take`] returned, keeping its capacity.
    pub(crate) fn restore(&mut self, list: Vec<Batch>) {
        if self.open.is_empty() {
            self.open = list;
        }
    }

    fn fresh(&mut self, to: &[u8]) -> Batch {
        let mut b = self.free.pop().unwrap_or_default();
        b.to.clear();
        b.to.extend_from_slice(to);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeplex_proto::{worker, RequestId, ServiceName};

    fn header(job: u64) -> worker::RequestHeader {
        worker::RequestHeader {
            job: JobId(job),
            id: RequestId(job),
            service: ServiceName::new("echo").unwrap(),
            deadline_ms: 1,
            idempotent: false,
        }
    }

    fn delivery<'a>(h: &'a worker::RequestHeader, body: &[u8]) -> Item<'a, worker::RequestHeader> {
        Item {
            protocol: &worker::PROTOCOL,
            cmd: worker::Command::Request as u8,
            header: h,
            body: Body::from_slice(body),
            job: Some(h.job),
        }
    }

    #[test]
    fn deliveries_are_gathered_per_worker_in_order() {
        let mut b = Batches::new();
        for job in 1..=5 {
            let to: &[u8] = if job % 2 == 0 { b"even" } else { b"odd" };
            assert!(b.add(to, delivery(&header(job), b"x")).is_none());
        }
        let round = b.take();
        let got: Vec<(&[u8], Vec<u64>)> = round
            .iter()
            .map(|b| (&b.to[..], b.jobs.iter().map(|j| j.0).collect()))
            .collect();
        assert_eq!(
            got,
            [(&b"odd"[..], vec![1, 3, 5]), (&b"even"[..], vec![2, 4])]
        );
        assert_eq!(round[0].messages().count(), 3);
        assert!(round[0].lone().is_none());
    }

    #[test]
    fn many_peers_in_a_round_each_get_one_batch_and_few_buffers_are_kept() {
        let mut b = Batches::new();
        for round in 0..2 {
            for peer in 0..100u64 {
                let to = peer.to_be_bytes();
                for job in 0..3 {
                    assert!(b
                        .add(&to, delivery(&header(peer * 10 + job), &[0; 1000]))
                        .is_none());
                }
            }
            let mut sent = b.take();
            assert_eq!(sent.len(), 100, "round {round}");
            assert!(sent.iter().all(|s| s.jobs.len() == 3));
            for s in sent.drain(..) {
                b.recycle(s);
            }
            b.restore(sent);
            assert_eq!(b.free.len(), MAX_FREE);
        }
    }

    #[test]
    fn a_full_batch_is_handed_back_and_a_new_one_started() {
        let mut b = Batches::new();
        assert!(b.add(b"w", delivery(&header(1), &[0; 40_000])).is_none());
        // 40,000 + 40,000 bytes would pass the limit: the first batch is full.
        let full = b
            .add(b"w", delivery(&header(2), &[0; 40_000]))
            .expect("full");
        assert_eq!(full.jobs, [JobId(1)]);
        assert!(full.lone().is_some_and(|(_, body)| body.len() == 40_000));
        // A message over the limit alone is a batch of one.
        let mut b = Batches::new();
        assert!(b.add(b"w", delivery(&header(3), &[0; 100_000])).is_none());
        assert!(b.add(b"w", delivery(&header(4), b"")).is_some());
        let mut b = Batches::new();
        let mut sent = 0;
        for job in 0..=u64::from(MAX_BATCH) {
            if let Some(full) = b.add(b"w", delivery(&header(job), b"")) {
                assert_eq!(full.count(), MAX_BATCH);
                sent += 1;
            }
        }
        assert_eq!(sent, 1);
        assert_eq!(b.take()[0].jobs, [JobId(u64::from(MAX_BATCH))]);
    }
}
