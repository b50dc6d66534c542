//! Client <-> broker messages on the frontend socket (protocol `TPXC01`).
//!
//! Frames, as the client's DEALER sends and receives them (the broker's ROUTER adds and
//! strips one identity frame in front):
//! `["TPXC01"][command: 1 byte][header: MessagePack map][body]`.

use serde::{Deserialize, Serialize};

use crate::frame::{self, Protocol};
use crate::{ErrorCode, ProtoError, RequestId, ServiceName, WorkerId};

/// Frame 0 of every client message.
pub const PROTOCOL: Protocol = Protocol {
    name: "TPXC",
    version: "01",
    frame: b"TPXC01",
};

/// Frames in every client message.
pub const FRAMES: usize = 4;

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

/// The command byte (frame 1).
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

/// A decoded client message; its body is frame 3 of the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(RequestHeader),
    /// A reply.
    Reply(ReplyHeader),
    /// An error.
    Error(ErrorHeader),
}

/// Decodes the first three frames of a client message (frames after the ROUTER identity).
pub fn decode<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Result<Message, ProtoError> {
    PROTOCOL.check(frame::frame(frames, 0, FRAMES)?)?;
    frame::expect_frames(frames, FRAMES)?;
    let cmd = Command::from_byte(frame::command_byte(frame::frame(frames, 1, FRAMES)?)?)?;
    let header = frame::frame(frames, 2, FRAMES)?;
    match cmd {
        Command::Request => {
            let h: RequestHeader = frame::decode_header(header)?;
            validate_request(&h)?;
            Ok(Message::Request(h))
        }
        Command::Reply => Ok(Message::Reply(frame::decode_header(header)?)),
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

/// Best-effort read of a request id from a header that failed to decode, so the error
/// reply can still name the request.
pub fn salvage_id(header: &[u8]) -> RequestId {
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

/// Encodes frames 0–2 of a client message; the caller sends the body as frame 3.
pub fn encode<T: Serialize>(cmd: Command, header: &T) -> [Vec<u8>; 3] {
    [
        PROTOCOL.frame.to_vec(),
        vec![cmd as u8],
        frame::encode_header(header),
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

    fn with_body(frames: [Vec<u8>; 3], body: &[u8]) -> Vec<Vec<u8>> {
        let mut v = frames.to_vec();
        v.push(body.to_vec());
        v
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
    fn wrong_version_is_reported() {
        let mut frames = with_body(encode(Command::Request, &request()), b"");
        frames[0] = b"TPXC02".to_vec();
        let err = decode(&frames).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        frames[0] = b"HTTP/1.1".to_vec();
        assert_eq!(decode(&frames).unwrap_err().code(), ErrorCode::BadRequest);
    }

    #[test]
    fn bad_fields_are_rejected() {
        let mut h = request();
        h.deadline_ms = 0;
        let frames = with_body(encode(Command::Request, &h), b"");
        assert!(matches!(decode(&frames), Err(ProtoError::BadField { .. })));
        let mut frames = with_body(encode(Command::Request, &request()), b"");
        frames[1] = vec![42];
        assert!(matches!(
            decode(&frames),
            Err(ProtoError::UnknownCommand(_))
        ));
        frames.pop();
        frames[1] = vec![1];
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
            let frames = vec![PROTOCOL.frame.to_vec(), vec![1], header, vec![]];
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
        let frames = vec![PROTOCOL.frame.to_vec(), vec![1], nil, vec![]];
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
        assert_eq!(salvage_id(&bytes), RequestId(99));
        assert_eq!(salvage_id(b"\xff\x00"), RequestId(0));
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
            let _ = decode(&frames);
        }

        #[test]
        fn random_headers_never_panic(header in proptest::collection::vec(any::<u8>(), 0..256), cmd in 0u8..5) {
            let frames = vec![PROTOCOL.frame.to_vec(), vec![cmd], header.clone(), vec![]];
            let _ = decode(&frames);
            let _ = salvage_id(&header);
        }

        #[test]
        fn requests_round_trip(id in any::<u64>(), deadline in 1u64.., idem in any::<bool>(), svc in "[A-Za-z0-9_.-]{1,64}", aff in proptest::option::of("[a-z]{1,128}")) {
            let h = RequestHeader { id: RequestId(id), service: ServiceName::new(svc).unwrap(), deadline_ms: deadline, idempotent: idem, target: None, affinity: aff, client: None };
            let frames = with_body(encode(Command::Request, &h), b"x");
            prop_assert_eq!(decode(&frames).unwrap(), Message::Request(h));
        }
    }
}
