//! Client <-> broker messages on the frontend socket (protocol `TPXC02`).
//!
//! Two frames, as the client's DEALER sends and receives them (the broker's ROUTER adds
//! and strips one identity frame in front):
//! `["TPXC02" command:1 byte header:MessagePack map][body]` — the head frame carries the
//! protocol id, the command and the header, so a message costs two frames, not four.
//! Version 01 sent the same three fields as three frames; the broker answers it with an
//! `unsupported_version` ERROR in the old layout ([`encode_v1_error`]), which an old client
//! can read.

use serde::{Deserialize, Serialize};

use crate::frame::{self, Protocol};
use crate::{ErrorCode, ProtoError, RequestId, ServiceName, WorkerId};

/// The protocol id that starts every client message's head frame.
pub const PROTOCOL: Protocol = Protocol {
    name: "TPXC",
    version: "02",
    frame: b"TPXC02",
};

/// Frames in every client message: head, body.
pub const FRAMES: usize = 2;

/// Frame 0 of a version-01 message, answered with [`encode_v1_error`].
pub const V1_FRAME: &[u8] = b"TPXC01";

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

/// The command byte (the head frame's byte 6).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Client -> broker: a request for a service.
    Request = 1,
    /// Broker -> client: the successful reply to a request.
    Reply = 2,
    /// Broker -> client: a request failed, or a message was rejected.
    Error = 3,
}

impl Command {
    fn from_byte(b: u8) -> Result<Command, ProtoError> {
        match b {
            1 => Ok(Command::Request),
            2 => Ok(Command::Reply),
            3 => Ok(Command::Error),
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

/// A decoded client message; its body is frame 1 of the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(RequestHeader),
    /// A reply.
    Reply(ReplyHeader),
    /// An error.
    Error(ErrorHeader),
}

/// Decodes a client message's head (frames after the ROUTER identity: head, body).
pub fn decode<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Result<Message, ProtoError> {
    let (cmd, header) = PROTOCOL.split_head(frame::frame(frames, 0, FRAMES)?)?;
    frame::expect_frames(frames, FRAMES)?;
    let cmd = Command::from_byte(cmd)?;
    match cmd {
        Command::Request => {
            let h = frame::decode_header_quick(header, crate::quick::client_request)?;
            validate_request(&h)?;
            Ok(Message::Request(h))
        }
        Command::Reply => Ok(Message::Reply(frame::decode_header_quick(
            header,
            crate::quick::client_reply,
        )?)),
        Command::Error => Ok(Message::Error(frame::decode_header(header)?)),
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

/// Best-effort read of a request id from a head frame that failed to decode, so the error
/// reply can still name the request.
pub fn salvage_id(head: &[u8]) -> RequestId {
    salvage_id_from_header(head.get(frame::HEAD_PREFIX..).unwrap_or(&[]))
}

/// [`salvage_id`] from a bare header map (a version-01 message's frame 2).
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

/// Encodes the head frame of a client message; the caller sends the body as frame 1.
pub fn encode<T: Serialize>(cmd: Command, header: &T) -> Vec<u8> {
    PROTOCOL.encode_head(cmd as u8, header)
}

/// [`encode`] into `buf` (cleared first): a sender that keeps one buffer allocates nothing
/// per message.
pub fn encode_into<T: Serialize>(buf: &mut Vec<u8>, cmd: Command, header: &T) {
    PROTOCOL.encode_head_into(buf, cmd as u8, header)
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
        }
    }

    fn with_body(head: Vec<u8>, body: &[u8]) -> Vec<Vec<u8>> {
        vec![head, body.to_vec()]
    }

    fn head(cmd: u8, header: &[u8]) -> Vec<u8> {
        [PROTOCOL.frame, &[cmd][..], header].concat()
    }

    #[test]
    fn request_round_trips() {
        let h = request();
        let frames = with_body(encode(Command::Request, &h), b"body");
        assert_eq!(decode(&frames).unwrap(), Message::Request(h));
    }

    #[test]
    fn reply_and_error_round_trip() {
        let r = ReplyHeader {
            id: RequestId(1),
            worker: WorkerId::random(),
        };
        let frames = with_body(encode(Command::Reply, &r), b"");
        assert_eq!(decode(&frames).unwrap(), Message::Reply(r));
        let e = ErrorHeader::new(RequestId(2), ErrorCode::TooLarge, "big");
        let frames = with_body(encode(Command::Error, &e), b"");
        assert_eq!(decode(&frames).unwrap(), Message::Error(e));
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
    fn head_is_id_command_then_named_map() {
        let r = ReplyHeader {
            id: RequestId(1),
            worker: WorkerId::random(),
        };
        let head = encode(Command::Reply, &r);
        assert_eq!(&head[..7], b"TPXC02\x02");
        assert_eq!(&head[7..], &frame::encode_header(&r)[..]);
    }

    #[test]
    fn wrong_version_is_reported() {
        let h = frame::encode_header(&request());
        // A version-01 request: four frames, frame 0 exactly `TPXC01`.
        let v1 = vec![b"TPXC01".to_vec(), vec![1], h.clone(), vec![]];
        let err = decode(&v1).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        assert!(err.to_string().contains("01"), "{err}");
        let v3 = with_body([&b"TPXC03\x01"[..], &h].concat(), b"");
        assert_eq!(
            decode(&v3).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        let http = with_body(b"HTTP/1.1".to_vec(), b"");
        assert_eq!(decode(&http).unwrap_err().code(), ErrorCode::BadRequest);
        assert_eq!(salvage_id_from_header(&v1[2]), RequestId(7));
    }

    #[test]
    fn v1_error_is_readable_by_a_v1_client() {
        let e = ErrorHeader::new(RequestId(7), ErrorCode::UnsupportedVersion, "speak 02");
        let frames = encode_v1_error(&e);
        assert_eq!(frames[0], b"TPXC01");
        assert_eq!(frames[1], [3]);
        let back: ErrorHeader = frame::decode_header(&frames[2]).unwrap();
        assert_eq!(back, e);
        assert!(frames[3].is_empty());
    }

    #[test]
    fn bad_fields_are_rejected() {
        let mut h = request();
        h.deadline_ms = 0;
        let frames = with_body(encode(Command::Request, &h), b"");
        assert!(matches!(decode(&frames), Err(ProtoError::BadField { .. })));
        let header = frame::encode_header(&request());
        let frames = with_body(head(42, &header), b"");
        assert!(matches!(
            decode(&frames),
            Err(ProtoError::UnknownCommand(_))
        ));
        let frames = with_body(PROTOCOL.frame.to_vec(), b"");
        assert!(matches!(
            decode(&frames),
            Err(ProtoError::UnknownCommand(_))
        ));
        let mut frames = with_body(head(1, &header), b"");
        frames.pop();
        assert!(matches!(
            decode(&frames),
            Err(ProtoError::FrameCount { .. })
        ));
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
            let frames = vec![head(1, &header), vec![]];
            let err = decode(&frames).unwrap_err();
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
        let frames = vec![head(1, &nil), vec![]];
        match decode(&frames).unwrap() {
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
        assert_eq!(salvage_id(&head(1, &bytes)), RequestId(99));
        assert_eq!(salvage_id_from_header(&bytes), RequestId(99));
        assert_eq!(salvage_id(b"\xff\x00"), RequestId(0));
        assert_eq!(salvage_id(&head(1, b"\xff\x00")), RequestId(0));
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
            let _ = decode(&frames);
        }

        #[test]
        fn random_headers_never_panic(header in proptest::collection::vec(any::<u8>(), 0..256), cmd in 0u8..5) {
            let frames = vec![head(cmd, &header), vec![]];
            let _ = decode(&frames);
            let _ = salvage_id(&frames[0]);
            let _ = salvage_id_from_header(&header);
        }

        #[test]
        fn requests_round_trip(id in any::<u64>(), deadline in 1u64.., idem in any::<bool>(), svc in "[A-Za-z0-9_.-]{1,64}", aff in proptest::option::of("[a-z]{1,128}")) {
            let h = RequestHeader { id: RequestId(id), service: ServiceName::new(svc).unwrap(), deadline_ms: deadline, idempotent: idem, target: None, affinity: aff, client: None };
            let frames = with_body(encode(Command::Request, &h), b"x");
            prop_assert_eq!(decode(&frames).unwrap(), Message::Request(h));
        }
    }
}
