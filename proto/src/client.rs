//! Client <-> broker messages on the frontend socket (protocol `TPXC03`).
//!
//! One frame per message, as the client's DEALER sends and receives it (the broker's
//! ROUTER adds and strips one identity frame in front):
//! `"TPXC03" command:1 byte header length:2 bytes big-endian header:MessagePack map body`.
//! One frame, not two, because CURVE encrypts every frame on its own and libzmq's I/O
//! threads pay per frame (docs/performance.md). The broker answers the older versions
//! with an `unsupported_version` ERROR in their own layout ([`encode_v1_error`],
//! [`encode_v2_error`]), which an old client can read; [`decode_answer`] reads such an
//! answer from an old broker.

use serde::{Deserialize, Serialize};

use crate::frame::{self, Header, Protocol};
use crate::{ErrorCode, ProtoError, RequestId, ServiceName, WorkerId};

/// The protocol id that starts every client message.
pub const PROTOCOL: Protocol = Protocol {
    name: "TPXC",
    version: "03",
    frame: b"TPXC03",
};

/// Frames in every client message.
pub const FRAMES: usize = 1;

/// Frame 0 of a version-01 message, answered with [`encode_v1_error`].
pub const V1_FRAME: &[u8] = b"TPXC01";

/// The first 6 bytes of a version-02 message, answered with [`encode_v2_error`].
pub const V2_ID: &[u8] = b"TPXC02";

/// Longest affinity key accepted, in bytes.
pub const MAX_AFFINITY: usize = 128;

/// Longest client name accepted (`client` header field, CURVE client names), in bytes.
pub const MAX_CLIENT_NAME: usize = 64;

/// Whether `name` is a valid client name: 1-64 bytes of `A-Z a-z 0-9 _ . -`.
pub fn valid_client_name(name: &str) -> bool {
    (1..=MAX_CLIENT_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The command byte (byte 6 of a message).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Client -> broker: a request for a service.
    Request = 1,
    /// Broker -> client: the successful reply to a request.
    Reply = 2,
    /// Broker -> client: a request failed, or a message was rejected.
    Error = 3,
    /// Broker -> client: several REPLYs and ERRORs in one message ([`crate::batch`]),
    /// sent only to a client whose requests say it reads them (`batch`).
    Batch = 4,
}

impl Command {
    fn from_byte(b: u8) -> Result<Command, ProtoError> {
        match b {
            1 => Ok(Command::Request),
            2 => Ok(Command::Reply),
            3 => Ok(Command::Error),
            4 => Ok(Command::Batch),
            other => Err(ProtoError::UnknownCommand(vec![other])),
        }
    }
}

/// Header of a REQUEST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// Client-chosen id, echoed in the reply or error.
    pub id: RequestId,
    /// The service asked for (e.g. `SIM`, `echo`, `tpx.status`).
    pub service: ServiceName,
    /// Absolute deadline, Unix epoch milliseconds (wall clock). A request not delivered to a
    /// worker by then is answered `deadline_exceeded` and never delivered.
    pub deadline_ms: u64,
    /// True if the request may safely be executed more than once (queries, subscribe).
    #[serde(default)]
    pub idempotent: bool,
    /// Deliver only to this worker (e.g. a cancel to the worker that placed the order).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_target"
    )]
    pub target: Option<WorkerId>,
    /// Requests with the same affinity key go to the same worker while it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// The name the client declares for itself (risk limits per client, the audit
    /// journal). Honoured without CURVE from loopback peers only; with CURVE the key names
    /// the client and a different declared name is refused `forbidden`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The client reads BATCH: the broker may send this request's answer together with
    /// other answers to the same client in one message. Sent only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

/// Reads `target` so that a bad value is reported under its own name (a [`WorkerId`]
/// alone would say "bad field worker").
fn deserialize_target<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<WorkerId>, D::Error> {
    use serde::de::Error;
    let bad = |reason: String| {
        D::Error::custom(ProtoError::BadField {
            field: "target",
            reason,
        })
    };
    match Option::<String>::deserialize(d).map_err(|e| bad(e.to_string()))? {
        None => Ok(None),
        Some(s) => uuid::Uuid::parse_str(&s)
            .map(|u| Some(WorkerId(u)))
            .map_err(|e| bad(e.to_string())),
    }
}

/// Header of a REPLY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyHeader {
    /// The request's id.
    pub id: RequestId,
    /// The worker that served it.
    pub worker: WorkerId,
}

/// Header of an ERROR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorHeader {
    /// The request's id, or 0 when the broker could not read one.
    pub id: RequestId,
    /// Stable error number (see [`ErrorCode`]).
    pub code: u16,
    /// Stable error name, e.g. `deadline_exceeded`.
    pub name: String,
    /// Human-readable detail.
    pub message: String,
    /// The worker involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
}

impl Header for ErrorHeader {}

impl ErrorHeader {
    /// Builds an error header for `code`.
    pub fn new(id: RequestId, code: ErrorCode, message: impl Into<String>) -> ErrorHeader {
        ErrorHeader {
            id,
            code: code.as_u16(),
            name: code.name().to_string(),
            message: message.into(),
            worker: None,
        }
    }
}

/// A decoded client message; its body is the rest of the frame (see [`decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(RequestHeader),
    /// A reply.
    Reply(ReplyHeader),
    /// An error.
    Error(ErrorHeader),
    /// A BATCH of answers: read them from the body with [`crate::batch::items`].
    Batch(crate::batch::BatchHeader),
}

/// Decodes a client message (the frames after the ROUTER identity): the message and
/// where its body starts in frame 0. The protocol id is checked before the frame count,
/// so an old version's message is `unsupported_version` whatever its layout.
pub fn decode<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
) -> Result<(Message, usize), ProtoError> {
    let first = frame::frame(frames, 0, FRAMES)?;
    PROTOCOL.check_id(first)?;
    frame::expect_frames(frames, FRAMES)?;
    let parts = PROTOCOL.split(first)?;
    let header = parts.header;
    let message = match Command::from_byte(parts.command)? {
        Command::Request => {
            let h = frame::decode_header_quick(header, crate::quick::client_request)?;
            validate_request(&h)?;
            Message::Request(h)
        }
        Command::Reply => Message::Reply(frame::decode_header_quick(
            header,
            crate::quick::client_reply,
        )?),
        Command::Error => Message::Error(frame::decode_header(header)?),
        Command::Batch => {
            let h = frame::decode_header(header)?;
            crate::batch::validate(&h)?;
            Message::Batch(h)
        }
    };
    Ok((message, parts.body_start))
}

/// [`decode`] for a client reading the broker's answer: an older broker answers this
/// version with an `unsupported_version` ERROR in its own layout (version 02: two frames,
/// `["TPXC02" 0x03 header][]`), read here as that error so the call fails with it.
pub fn decode_answer<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
) -> Result<(Message, usize), ProtoError> {
    match frame::v2_refusal(frames, V2_ID, Command::Error as u8) {
        Some(header) => Ok((Message::Error(frame::decode_header(header)?), 0)),
        None => decode(frames),
    }
}

fn validate_request(h: &RequestHeader) -> Result<(), ProtoError> {
    if h.deadline_ms == 0 {
        return Err(ProtoError::BadField {
            field: "deadline_ms",
            reason: "must be a Unix time in milliseconds".into(),
        });
    }
    if let Some(c) = &h.client {
        if !valid_client_name(c) {
            return Err(ProtoError::BadField {
                field: "client",
                reason: format!("must be 1-{MAX_CLIENT_NAME} bytes of A-Z a-z 0-9 _ . -"),
            });
        }
    }
    if let Some(a) = &h.affinity {
        if a.is_empty() || a.len() > MAX_AFFINITY {
            return Err(ProtoError::BadField {
                field: "affinity",
                reason: format!("must be 1-{MAX_AFFINITY} bytes"),
            });
        }
    }
    Ok(())
}

/// Best-effort read of a request id from a message that failed to decode (read in this
/// version's layout), so the error reply can still name the request.
pub fn salvage_id(message: &[u8]) -> RequestId {
    // Whatever the id's version says: a future version is likely to keep this layout.
    match frame::split_layout(message) {
        Ok(parts) => salvage_id_from_header(parts.header),
        Err(_) => RequestId(0),
    }
}

/// [`salvage_id`] from a bare header map (a version-01 message's frame 2, a version-02
/// head's bytes from 7 on).
pub fn salvage_id_from_header(header: &[u8]) -> RequestId {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    if header.len() > crate::MAX_HEADER_BYTES {
        return RequestId(0);
    }
    rmp_serde::from_slice::<IdOnly>(header)
        .ok()
        .and_then(|h| h.id)
        .map_or(RequestId(0), RequestId)
}

/// Encodes a whole client message: head, then `body`.
pub fn encode<T: Header>(cmd: Command, header: &T, body: &[u8]) -> Vec<u8> {
    PROTOCOL.encode(cmd as u8, header, body)
}

/// [`encode`] into `buf` (cleared first): a sender that keeps one buffer allocates nothing
/// per message.
pub fn encode_into<T: Header>(buf: &mut Vec<u8>, cmd: Command, header: &T, body: &[u8]) {
    PROTOCOL.encode_into(buf, cmd as u8, header, body)
}

/// An ERROR in the version-01 layout (`["TPXC01"][0x03][header][empty body]`): the answer
/// to a message of that version, so an old client reads why it was refused.
pub fn encode_v1_error(h: &ErrorHeader) -> [Vec<u8>; 4] {
    [
        V1_FRAME.to_vec(),
        vec![Command::Error as u8],
        frame::encode_header(h),
        Vec::new(),
    ]
}

/// An ERROR in the version-02 layout (`["TPXC02" 0x03 header][empty body]`): the answer to
/// a message of that version, so an old client reads why it was refused.
pub fn encode_v2_error(h: &ErrorHeader) -> [Vec<u8>; 2] {
    let head = [V2_ID, &[Command::Error as u8][..], &frame::encode_header(h)].concat();
    [head, Vec::new()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> RequestHeader {
        RequestHeader {
            id: RequestId(7),
            service: ServiceName::new("echo").unwrap(),
            deadline_ms: 1_700_000_000_000,
            idempotent: true,
            target: Some(WorkerId::random()),
            affinity: Some("acct-1".into()),
            client: Some("alpha".into()),
            batch: true,
        }
    }

    /// A message built by hand: id, command, header length, header, body.
    fn message(cmd: u8, header: &[u8], body: &[u8]) -> Vec<Vec<u8>> {
        let len = (header.len() as u16).to_be_bytes();
        vec![[PROTOCOL.frame, &[cmd][..], &len[..], header, body].concat()]
    }

    #[test]
    fn request_round_trips_with_its_body() {
        let h = request();
        let frames = vec![encode(Command::Request, &h, b"body")];
        let (m, at) = decode(&frames).unwrap();
        assert_eq!(m, Message::Request(h));
        assert_eq!(&frames[0][at..], b"body");
    }

    #[test]
    fn reply_and_error_round_trip() {
        let r = ReplyHeader {
            id: RequestId(1),
            worker: WorkerId::random(),
        };
        let frames = vec![encode(Command::Reply, &r, b"")];
        assert_eq!(
            decode(&frames).unwrap(),
            (Message::Reply(r), frames[0].len())
        );
        let e = ErrorHeader::new(RequestId(2), ErrorCode::TooLarge, "big");
        let frames = vec![encode(Command::Error, &e, b"")];
        assert_eq!(decode(&frames).unwrap().0, Message::Error(e));
    }

    #[test]
    fn header_is_a_named_map_with_string_worker() {
        let h = ReplyHeader {
            id: RequestId(1),
            worker: WorkerId::random(),
        };
        let bytes = frame::encode_header(&h);
        // fixmap with 2 entries, first key "id"
        assert_eq!(bytes[0], 0x82);
        assert_eq!(&bytes[1..4], b"\xa2id");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(&h.worker.to_string()));
    }

    #[test]
    fn layout_is_id_command_length_header_body() {
        let r = ReplyHeader {
            id: RequestId(1),
            worker: WorkerId::random(),
        };
        let m = encode(Command::Reply, &r, b"xyz");
        let header = frame::encode_header(&r);
        assert_eq!(&m[..7], b"TPXC03\x02");
        assert_eq!(&m[7..9], &(header.len() as u16).to_be_bytes());
        assert_eq!(&m[9..9 + header.len()], &header[..]);
        assert_eq!(&m[9 + header.len()..], b"xyz");
    }

    #[test]
    fn older_versions_are_unsupported_whatever_their_layout() {
        let h = frame::encode_header(&request());
        // A version-01 request: four frames, frame 0 exactly `TPXC01`.
        let v1 = vec![b"TPXC01".to_vec(), vec![1], h.clone(), vec![]];
        let err = decode(&v1).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        assert!(err.to_string().contains("01"), "{err}");
        assert_eq!(salvage_id_from_header(&v1[2]), RequestId(7));
        // A version-02 request: two frames, the head `TPXC02` 0x01 header.
        let v2 = vec![[V2_ID, &[1][..], &h].concat(), vec![]];
        assert_eq!(
            decode(&v2).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        let v4 = vec![[&b"TPXC04\x01\x00\x01"[..], &[0x80][..]].concat()];
        assert_eq!(
            decode(&v4).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        let http = vec![b"HTTP/1.1".to_vec()];
        assert_eq!(decode(&http).unwrap_err().code(), ErrorCode::BadRequest);
        let worker = vec![b"TPXW03\x01\x00\x01\x80".to_vec()];
        assert_eq!(decode(&worker).unwrap_err().code(), ErrorCode::BadRequest);
    }

    #[test]
    fn old_layout_errors_are_readable_by_their_clients() {
        let e = ErrorHeader::new(RequestId(7), ErrorCode::UnsupportedVersion, "speak 03");
        let frames = encode_v1_error(&e);
        assert_eq!(frames[0], b"TPXC01");
        assert_eq!(frames[1], [3]);
        let back: ErrorHeader = frame::decode_header(&frames[2]).unwrap();
        assert_eq!(back, e);
        assert!(frames[3].is_empty());
        let frames = encode_v2_error(&e);
        assert_eq!(&frames[0][..7], b"TPXC02\x03");
        let back: ErrorHeader = frame::decode_header(&frames[0][7..]).unwrap();
        assert_eq!(back, e);
        assert!(frames[1].is_empty());
    }

    #[test]
    fn a_v2_brokers_refusal_is_read_as_its_error() {
        let e = ErrorHeader::new(RequestId(7), ErrorCode::UnsupportedVersion, "speak 02");
        let frames = encode_v2_error(&e);
        assert_eq!(decode_answer(&frames).unwrap().0, Message::Error(e));
        // The broker's own decode does not take it for a message of this version.
        assert_eq!(
            decode(&frames).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        // Any other v02 message is still unsupported.
        let reply = vec![b"TPXC02\x02\x80".to_vec(), vec![]];
        assert_eq!(
            decode_answer(&reply).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
    }

    #[test]
    fn bad_layouts_are_rejected() {
        let header = frame::encode_header(&request());
        let mut h = request();
        h.deadline_ms = 0;
        let frames = vec![encode(Command::Request, &h, b"")];
        assert!(matches!(decode(&frames), Err(ProtoError::BadField { .. })));
        assert!(matches!(
            decode(&message(42, &header, b"")),
            Err(ProtoError::UnknownCommand(_))
        ));
        let bare_id = vec![PROTOCOL.frame.to_vec()];
        assert!(matches!(
            decode(&bare_id),
            Err(ProtoError::UnknownCommand(_))
        ));
        // A command byte and half a length.
        let short = vec![b"TPXC03\x01\x00".to_vec()];
        assert!(matches!(decode(&short), Err(ProtoError::BadHeader(_))));
        // A length running past the end.
        let mut cut = message(1, &header, b"");
        let cut_len = cut[0].len() - 1;
        cut[0].truncate(cut_len);
        let err = decode(&cut).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
        // A length over the limit, whatever follows.
        let huge = vec![b"TPXC03\x01\x10\x01".to_vec()];
        assert!(matches!(decode(&huge), Err(ProtoError::TooLarge { .. })));
        // Two frames.
        let mut two = message(1, &header, b"");
        two.push(Vec::new());
        let err = decode(&two).unwrap_err();
        assert_eq!(
            err,
            ProtoError::FrameCount {
                expected: 1,
                got: 2
            }
        );
        assert_eq!(err.to_string(), "expected 1 frame, got 2");
        assert!(decode(&Vec::<Vec<u8>>::new()).is_err());
    }

    #[test]
    fn bad_target_is_reported_as_target() {
        #[derive(Serialize)]
        struct Raw<T: Serialize> {
            id: u64,
            service: &'static str,
            deadline_ms: u64,
            target: T,
        }
        let cases = [
            frame::encode_header(&Raw {
                id: 1,
                service: "SIM",
                deadline_ms: 1,
                target: "not-a-uuid",
            }),
            frame::encode_header(&Raw {
                id: 1,
                service: "SIM",
                deadline_ms: 1,
                target: 42u32,
            }),
        ];
        for header in cases {
            let err = decode(&message(1, &header, b"")).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRequest);
            let text = err.to_string();
            assert!(text.contains("bad field target"), "{text}");
            assert!(!text.contains("worker"), "{text}");
        }
        // nil and a missing target both mean none.
        let nil = frame::encode_header(&Raw {
            id: 1,
            service: "SIM",
            deadline_ms: 1,
            target: None::<String>,
        });
        match decode(&message(1, &nil, b"")).unwrap().0 {
            Message::Request(h) => assert_eq!(h.target, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn salvage_reads_id_from_partial_header() {
        #[derive(Serialize)]
        struct Partial {
            id: u64,
            service: u32,
        }
        let bytes = frame::encode_header(&Partial { id: 99, service: 3 });
        assert_eq!(salvage_id(&message(1, &bytes, b"")[0]), RequestId(99));
        assert_eq!(salvage_id_from_header(&bytes), RequestId(99));
        assert_eq!(salvage_id(b"\xff\x00"), RequestId(0));
        assert_eq!(salvage_id(&message(1, b"\xff\x00", b"")[0]), RequestId(0));
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
            let _ = decode(&frames);
            let _ = decode_answer(&frames);
        }

        #[test]
        fn random_headers_never_panic(header in proptest::collection::vec(any::<u8>(), 0..256), cmd in 0u8..6) {
            let frames = message(cmd, &header, b"");
            let _ = decode(&frames);
            let _ = salvage_id(&frames[0]);
            let _ = salvage_id_from_header(&header);
        }

        #[test]
        fn random_messages_after_the_id_never_panic(rest in proptest::collection::vec(any::<u8>(), 0..64)) {
            let frames = vec![[PROTOCOL.frame, &rest[..]].concat()];
            let _ = decode(&frames);
            let _ = salvage_id(&frames[0]);
        }

        #[test]
        fn requests_round_trip(id in any::<u64>(), deadline in 1u64.., idem in any::<bool>(), svc in "[A-Za-z0-9_.-]{1,64}", aff in proptest::option::of("[a-z]{1,128}"), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = RequestHeader { id: RequestId(id), service: ServiceName::new(svc).unwrap(), deadline_ms: deadline, idempotent: idem, target: None, affinity: aff, client: None, batch: idem };
            let frames = vec![encode(Command::Request, &h, &body)];
            let (m, at) = decode(&frames).unwrap();
            prop_assert_eq!(m, Message::Request(h));
            prop_assert_eq!(&frames[0][at..], &body[..]);
        }
    }
}
