//! Hand-written decoders and encoders for the headers on every request's path (a
//! client's REQUEST at the broker, the REQUEST at the worker, the worker's REPLY at the
//! broker, the REPLY at the client) and decoders for every event's (the broker's
//! gap-recovery store, each subscriber).
//!
//! The decoders read the MessagePack map with field names — in any order — that any
//! encoder of the protocol produces, without serde's generic machinery. They only ever
//! accept: a header they do not recognise in every detail (an unknown or repeated key, an
//! unusual integer encoding, a value that does not validate, trailing bytes) gives `None`
//! and the caller decodes it with serde, which then accepts it or says exactly why not.
//! The encoders write exactly the bytes serde writes (the fields in declaration order,
//! each integer in its shortest form, optional fields left out as serde leaves them out).
//! The wire is unchanged; the tests check both against serde on generated headers.

use std::cell::Cell;

use rmp::encode as mp;

use crate::frame::Header;
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

/// A worker id from its text. The same few ids come back on every reply and event (one
/// per worker), so the last one this thread parsed is kept: a repeat costs a compare of
/// its 36 bytes instead of a parse.
fn worker_id(s: &str) -> Option<WorkerId> {
    thread_local! {
        static LAST: Cell<Option<([u8; 36], WorkerId)>> = const { Cell::new(None) };
    }
    let text = <[u8; 36]>::try_from(s.as_bytes()).ok();
    if let (Some(text), Some((last, id))) = (text, LAST.get()) {
        if text == last {
            return Some(id);
        }
    }
    let id = uuid::Uuid::parse_str(s).ok().map(WorkerId)?;
    if let Some(text) = text {
        LAST.set(Some((text, id)));
    }
    Some(id)
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

/// Appends MessagePack to a header buffer. Writing to a `Vec` cannot fail; the first
/// error there would be is kept, so the caller can still refuse the header.
struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    ok: bool,
}

impl Writer<'_> {
    fn map(buf: &mut Vec<u8>, fields: u32) -> Writer<'_> {
        let ok = mp::write_map_len(buf, fields).is_ok();
        Writer { buf, ok }
    }

    /// A field name (written as any string is).
    fn key(&mut self, key: &str) -> &mut Self {
        self.str(key)
    }

    fn uint(&mut self, v: u64) -> &mut Self {
        self.ok &= mp::write_uint(self.buf, v).is_ok();
        self
    }

    fn str(&mut self, v: &str) -> &mut Self {
        self.ok &= mp::write_str(self.buf, v).is_ok();
        self
    }

    fn bool(&mut self, v: bool) -> &mut Self {
        self.ok &= mp::write_bool(self.buf, v).is_ok();
        self
    }

    fn worker(&mut self, w: &WorkerId) -> &mut Self {
        let mut text = uuid::Uuid::encode_buffer();
        self.str(w.0.hyphenated().encode_lower(&mut text))
    }
}

impl Header for client::RequestHeader {
    fn write_to(&self, buf: &mut Vec<u8>) -> bool {
        let optional = [
            self.target.is_some(),
            self.affinity.is_some(),
            self.client.is_some(),
            self.batch,
        ];
        let fields = 4 + optional.iter().filter(|f| **f).count() as u32;
        let mut w = Writer::map(buf, fields);
        w.key("id").uint(self.id.0);
        w.key("service").str(self.service.as_str());
        w.key("deadline_ms").uint(self.deadline_ms);
        w.key("idempotent").bool(self.idempotent);
        if let Some(target) = &self.target {
            w.key("target").worker(target);
        }
        if let Some(affinity) = &self.affinity {
            w.key("affinity").str(affinity);
        }
        if let Some(name) = &self.client {
            w.key("client").str(name);
        }
        if self.batch {
            w.key("batch").bool(true);
        }
        w.ok
    }
}

impl Header for client::ReplyHeader {
    fn write_to(&self, buf: &mut Vec<u8>) -> bool {
        let mut w = Writer::map(buf, 2);
        w.key("id").uint(self.id.0);
        w.key("worker").worker(&self.worker);
        w.ok
    }
}

impl Header for worker::RequestHeader {
    fn write_to(&self, buf: &mut Vec<u8>) -> bool {
        let mut w = Writer::map(buf, 5);
        w.key("job").uint(self.job.0);
        w.key("id").uint(self.id.0);
        w.key("service").str(self.service.as_str());
        w.key("deadline_ms").uint(self.deadline_ms);
        w.key("idempotent").bool(self.idempotent);
        w.ok
    }
}

impl Header for worker::ReplyHeader {
    fn write_to(&self, buf: &mut Vec<u8>) -> bool {
        let mut w = Writer::map(buf, 1);
        w.key("job").uint(self.job.0);
        w.ok
    }
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

    #[test]
    fn a_kept_worker_id_is_only_reused_for_the_same_text() {
        let (a, b) = (uuid_from(1), uuid_from(2));
        let (ta, tb) = (a.to_string(), b.to_string());
        assert_eq!(worker_id(&ta), Some(a));
        assert_eq!(worker_id(&ta), Some(a), "kept");
        assert_eq!(
            worker_id(&tb),
            Some(b),
            "another id is parsed, not the kept one"
        );
        assert_eq!(
            worker_id(&ta.to_uppercase()),
            Some(a),
            "any spelling uuid accepts"
        );
        let mut bad = ta.clone().into_bytes();
        bad[0] = b'z';
        assert_eq!(worker_id(std::str::from_utf8(&bad).unwrap()), None);
        assert_eq!(
            worker_id(&a.0.simple().to_string()),
            Some(a),
            "32 hex digits too"
        );
    }

    /// What a hand-written encoder writes is byte for byte what serde writes.
    fn writes_as_serde<T: Header>(h: &T) -> Result<(), TestCaseError> {
        let mut quick = Vec::new();
        prop_assert!(h.write_to(&mut quick));
        prop_assert_eq!(quick, crate::frame::encode_header(h));
        Ok(())
    }

    proptest! {
        #[test]
        fn headers_on_the_request_path_are_written_as_serde_writes_them(
            c in client_request_header(),
            w in worker_request_header(),
            id in any::<u64>(),
            worker in any::<u128>(),
            long in proptest::option::of(prop_oneof![
                Just(31usize), Just(32), Just(255), Just(256), Just(65_535), Just(65_536),
                0usize..70_000,
            ].prop_map(|n| "a".repeat(n))),
        ) {
            writes_as_serde(&c)?;
            // Strings past the short forms (str8, str16, str32) in an optional field.
            writes_as_serde(&client::RequestHeader { affinity: long, ..c })?;
            writes_as_serde(&w)?;
            writes_as_serde(&client::ReplyHeader { id: RequestId(id), worker: uuid_from(worker) })?;
            writes_as_serde(&worker::ReplyHeader { job: JobId(id) })?;
        }

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
