//! Hand-written decoders for the headers on every request's path (a client's REQUEST at
//! the broker, the REQUEST at the worker, the worker's REPLY at the broker, the REPLY at
//! the client) and on every event's (the broker's gap-recovery store, each subscriber).
//! They read the MessagePack map with field names — in any order — that any encoder of
//! the protocol produces, without serde's generic machinery. They only ever
//! accept: a header they do not recognise in every detail (an unknown or repeated key, an
//! unusual integer encoding, a value that does not validate, trailing bytes) gives `None`
//! and the caller decodes it with serde, which then accepts it or says exactly why not.
//! The wire is unchanged; the tests check these against serde on generated headers.

use crate::{client, event, worker, JobId, RequestId, ServiceName, WorkerId};

/// A cursor over a header's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |v, &b| v << 8 | u64::from(b)),
        )
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(usize::from(b & 0x0f)),
            0xde => self.be(2).map(|n| n as usize),
            _ => None,
        }
    }

    /// The bytes of a `str` of any width.
    fn str_bytes_after(&mut self, marker: u8) -> Option<&'a [u8]> {
        let n = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return None,
        };
        self.take(n)
    }

    fn str_after(&mut self, marker: u8) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes_after(marker)?).ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        let marker = self.byte()?;
        self.str_after(marker)
    }

    /// A map key, compared as bytes (the keys we know are ASCII).
    fn key(&mut self) -> Option<&'a [u8]> {
        let marker = self.byte()?;
        self.str_bytes_after(marker)
    }

    /// An unsigned integer in any of MessagePack's unsigned encodings.
    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    /// `nil` as `None`, a string as `Some`.
    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.byte()? {
            0xc0 => Some(None),
            marker => self.str_after(marker).map(Some),
        }
    }

    fn end(&self) -> Option<()> {
        self.bytes.is_empty().then_some(())
    }
}

/// Sets `slot` once; a repeated key makes the whole header fall back to serde.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(v);
            Some(())
        }
    }
}

fn worker_id(s: &str) -> Option<WorkerId> {
    uuid::Uuid::parse_str(s).ok().map(WorkerId)
}

/// A client's REQUEST header (before [`client::decode`] validates it).
pub(crate) fn client_request(header: &[u8]) -> Option<client::RequestHeader> {
    let mut r = Reader { bytes: header };
    let (mut id, mut service, mut deadline, mut idempotent) = (None, None, None, None);
    let (mut target, mut affinity, mut name, mut batch) = (None, None, None, None);
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"id" => once(&mut id, r.uint()?)?,
            b"service" => once(&mut service, ServiceName::new(r.str()?).ok()?)?,
            b"deadline_ms" => once(&mut deadline, r.uint()?)?,
            b"idempotent" => once(&mut idempotent, r.bool()?)?,
            b"target" => {
                let t = match r.opt_str()? {
                    Some(s) => Some(worker_id(s)?),
                    None => None,
                };
                once(&mut target, t)?
            }
            b"affinity" => once(&mut affinity, r.opt_str()?.map(str::to_string))?,
            b"client" => once(&mut name, r.opt_str()?.map(str::to_string))?,
            b"batch" => once(&mut batch, r.bool()?)?,
            _ => return None,
        }
    }
    r.end()?;
    Some(client::RequestHeader {
        id: RequestId(id?),
        service: service?,
        deadline_ms: deadline?,
        idempotent: idempotent.unwrap_or(false),
        target: target.flatten(),
        affinity: affinity.flatten(),
        client: name.flatten(),
        batch: batch.unwrap_or(false),
    })
}

/// The broker's REPLY header to a client.
pub(crate) fn client_reply(header: &[u8]) -> Option<client::ReplyHeader> {
    let mut r = Reader { bytes: header };
    let (mut id, mut worker) = (None, None);
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"id" => once(&mut id, r.uint()?)?,
            b"worker" => once(&mut worker, worker_id(r.str()?)?)?,
            _ => return None,
        }
    }
    r.end()?;
    Some(client::ReplyHeader {
        id: RequestId(id?),
        worker: worker?,
    })
}

/// The broker's REQUEST header to a worker.
pub(crate) fn worker_request(header: &[u8]) -> Option<worker::RequestHeader> {
    let mut r = Reader { bytes: header };
    let (mut job, mut id, mut service, mut deadline, mut idempotent) =
        (None, None, None, None, None);
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"job" => once(&mut job, r.uint()?)?,
            b"id" => once(&mut id, r.uint()?)?,
            b"service" => once(&mut service, ServiceName::new(r.str()?).ok()?)?,
            b"deadline_ms" => once(&mut deadline, r.uint()?)?,
            b"idempotent" => once(&mut idempotent, r.bool()?)?,
            _ => return None,
        }
    }
    r.end()?;
    Some(worker::RequestHeader {
        job: JobId(job?),
        id: RequestId(id?),
        service: service?,
        deadline_ms: deadline?,
        idempotent: idempotent?,
    })
}

/// A worker's REPLY header.
pub(crate) fn worker_reply(header: &[u8]) -> Option<worker::ReplyHeader> {
    let mut r = Reader { bytes: header };
    let mut job = None;
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"job" => once(&mut job, r.uint()?)?,
            _ => return None,
        }
    }
    r.end()?;
    Some(worker::ReplyHeader { job: JobId(job?) })
}

/// An event's header.
pub(crate) fn event_header(header: &[u8]) -> Option<event::EventHeader> {
    let mut r = Reader { bytes: header };
    let (mut source, mut seq, mut ts_ns, mut kind) = (None, None, None, None);
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"source" => once(&mut source, worker_id(r.str()?)?)?,
            b"seq" => once(&mut seq, r.uint()?)?,
            b"ts_ns" => once(&mut ts_ns, r.uint()?)?,
            b"kind" => once(&mut kind, r.str()?)?,
            _ => return None,
        }
    }
    r.end()?;
    Some(event::EventHeader {
        source: source?,
        seq: seq?,
        ts_ns: ts_ns?,
        kind: kind?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_header;
    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use std::fmt::Debug;

    /// What the fast path accepts, serde accepts as the same header.
    fn agrees<T: DeserializeOwned + PartialEq + Debug>(bytes: &[u8], quick: Option<T>) {
        if let Some(q) = quick {
            assert_eq!(decode_header::<T>(bytes).ok(), Some(q), "{bytes:02x?}");
        }
    }

    fn uuid_from(n: u128) -> WorkerId {
        WorkerId(uuid::Uuid::from_u128(n))
    }

    fn service() -> impl Strategy<Value = ServiceName> {
        "[A-Za-z0-9_.-]{1,64}".prop_map(|s| ServiceName::new(s).unwrap())
    }

    fn client_request_header() -> impl Strategy<Value = client::RequestHeader> {
        (
            any::<u64>(),
            service(),
            1u64..,
            any::<bool>(),
            proptest::option::of(any::<u128>()),
            proptest::option::of("[a-z]{1,20}"),
            proptest::option::of("[A-Za-z0-9_.-]{1,32}"),
            any::<bool>(),
        )
            .prop_map(
                |(id, service, deadline_ms, idempotent, target, affinity, client, batch)| {
                    client::RequestHeader {
                        id: RequestId(id),
                        service,
                        deadline_ms,
                        idempotent,
                        target: target.map(uuid_from),
                        affinity,
                        client,
                        batch,
                    }
                },
            )
    }

    fn worker_request_header() -> impl Strategy<Value = worker::RequestHeader> {
        (
            any::<u64>(),
            any::<u64>(),
            service(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(job, id, service, deadline_ms, idempotent)| {
                worker::RequestHeader {
                    job: JobId(job),
                    id: RequestId(id),
                    service,
                    deadline_ms,
                    idempotent,
                }
            })
    }

    proptest! {
        #[test]
        fn client_requests_read_as_serde_reads_them(h in client_request_header()) {
            let bytes = crate::frame::encode_header(&h);
            prop_assert_eq!(client_request(&bytes), Some(h));
        }

        #[test]
        fn worker_requests_read_as_serde_reads_them(h in worker_request_header()) {
            let bytes = crate::frame::encode_header(&h);
            prop_assert_eq!(worker_request(&bytes), Some(h));
        }

        #[test]
        fn replies_read_as_serde_reads_them(id in any::<u64>(), w in any::<u128>()) {
            let h = client::ReplyHeader { id: RequestId(id), worker: uuid_from(w) };
            let bytes = crate::frame::encode_header(&h);
            prop_assert_eq!(client_reply(&bytes), Some(h));
            let h = worker::ReplyHeader { job: JobId(id) };
            let bytes = crate::frame::encode_header(&h);
            prop_assert_eq!(worker_reply(&bytes), Some(h));
        }

        #[test]
        fn event_headers_read_as_serde_reads_them(
            w in any::<u128>(), seq in any::<u64>(), ts_ns in any::<u64>(), kind in "[a-z]{0,12}",
        ) {
            let h = event::EventHeader { source: uuid_from(w), seq, ts_ns, kind };
            let bytes = crate::frame::encode_header(&h);
            prop_assert_eq!(event_header(&bytes), Some(h));
        }

        /// Damaged headers: whatever the fast path still accepts, serde reads the same.
        #[test]
        fn damaged_headers_are_never_read_differently(
            h in client_request_header(),
            w in worker_request_header(),
            source in any::<u128>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let e = event::EventHeader { source: uuid_from(source), seq: w.id.0, ts_ns: w.job.0, kind: "tick".into() };
            let encoded = [
                crate::frame::encode_header(&h),
                crate::frame::encode_header(&w),
                crate::frame::encode_header(&e),
            ];
            for mut bytes in encoded {
                let i = at.index(bytes.len());
                if cut {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
                agrees(&bytes, client_request(&bytes));
                agrees(&bytes, worker_request(&bytes));
                agrees(&bytes, client_reply(&bytes));
                agrees(&bytes, worker_reply(&bytes));
                agrees(&bytes, event_header(&bytes));
            }
        }

        /// Arbitrary bytes: the same.
        #[test]
        fn arbitrary_bytes_are_never_read_differently(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            agrees(&bytes, client_request(&bytes));
            agrees(&bytes, worker_request(&bytes));
            agrees(&bytes, client_reply(&bytes));
            agrees(&bytes, worker_reply(&bytes));
            agrees(&bytes, event_header(&bytes));
        }
    }

    #[test]
    fn unusual_but_valid_headers_fall_back_to_serde() {
        // Keys in another order are read here too.
        let reordered = b"\x83\xa7service\xa4echo\xabdeadline_ms\x05\xa2id\x07";
        let h = client_request(reordered).unwrap();
        assert_eq!(
            (h.id, h.deadline_ms, h.idempotent),
            (RequestId(7), 5, false)
        );
        assert_eq!(
            decode_header::<client::RequestHeader>(reordered).unwrap(),
            h
        );
        // A signed integer encoding, an unknown key, a repeated key: serde's call.
        let signed = b"\x83\xa2id\xd0\x07\xa7service\xa4echo\xabdeadline_ms\x05";
        assert_eq!(client_request(signed), None);
        let unknown = b"\x84\xa2id\x07\xa7service\xa4echo\xabdeadline_ms\x05\xa1x\x01";
        assert_eq!(client_request(unknown), None);
        let repeated = b"\x84\xa2id\x07\xa2id\x08\xa7service\xa4echo\xabdeadline_ms\x05";
        assert_eq!(client_request(repeated), None);
        // A header as an array (serde reads structs from arrays too).
        assert_eq!(client_request(b"\x93\x07\xa4echo\x05"), None);
        // An invalid service name is left to serde, which names the field.
        let bad = b"\x83\xa2id\x07\xa7service\xa3a b\xabdeadline_ms\x05";
        assert_eq!(client_request(bad), None);
        assert!(decode_header::<client::RequestHeader>(bad).is_err());
    }
}
