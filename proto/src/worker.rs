//! Worker <-> broker messages on the backend socket (protocol `TPXW03`).
//!
//! One frame per message, as the worker's DEALER sends and receives it:
//! `"TPXW03" command:1 byte header length:2 bytes big-endian header:MessagePack map body`
//! — commands without a body end after the header. Versions 01 (four frames) and 02 (two)
//! are answered with a DISCONNECT in their own layout ([`encode_v1_disconnect`],
//! [`encode_v2_disconnect`]); [`decode_from_broker`] reads such a refusal from an old
//! broker.

use serde::{Deserialize, Serialize};

use crate::frame::{self, Header, Protocol};
use crate::{ErrorCode, JobId, ProtoError, RequestId, ServiceName, WorkerId};

/// The protocol id that starts every worker message.
pub const PROTOCOL: Protocol = Protocol {
    name: "TPXW",
    version: "03",
    frame: b"TPXW03",
};

/// Frames in every worker message.
pub const FRAMES: usize = 1;

/// Frame 0 of a version-01 message, answered with [`encode_v1_disconnect`].
pub const V1_FRAME: &[u8] = b"TPXW01";

/// The first 6 bytes of a version-02 message, answered with [`encode_v2_disconnect`].
pub const V2_ID: &[u8] = b"TPXW02";

/// Largest capacity a worker may announce.
pub const MAX_CAPACITY: u32 = 10_000;

/// Most services one worker may offer.
pub const MAX_SERVICES: usize = 64;

/// The command byte (byte 6 of a message).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Worker -> broker: register, or update the services and capacity offered.
    Ready = 1,
    /// Broker -> worker: execute a request.
    Request = 2,
    /// Worker -> broker: the reply to a job.
    Reply = 3,
    /// Worker -> broker: a job failed.
    Error = 4,
    /// Both ways: I am alive.
    Heartbeat = 5,
    /// Both ways: I am going away (worker) / re-register or go away (broker).
    Disconnect = 6,
    /// Broker -> worker: several REQUESTs; worker -> broker: several REPLYs and ERRORs
    /// ([`crate::batch`]). Sent only to a peer known to read it (docs/protocol.md).
    Batch = 7,
}

impl Command {
    fn from_byte(b: u8) -> Result<Command, ProtoError> {
        Ok(match b {
            1 => Command::Ready,
            2 => Command::Request,
            3 => Command::Reply,
            4 => Command::Error,
            5 => Command::Heartbeat,
            6 => Command::Disconnect,
            7 => Command::Batch,
            other => return Err(ProtoError::UnknownCommand(vec![other])),
        })
    }
}

/// Header of READY: who the worker is and what it offers. Sent again whenever that
/// changes (a gateway disconnects, the worker starts draining with no services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyHeader {
    /// The worker's UUID, stable for the life of the process.
    pub worker: WorkerId,
    /// Services it serves now (may be empty while draining or with every gateway down).
    pub services: Vec<ServiceName>,
    /// How many requests it executes at once.
    pub capacity: u32,
    /// Which connection of this worker process it is (1, 2, … — one more at every
    /// reconnect). A READY with a lower session than the one registered comes from a
    /// connection the worker abandoned and is ignored. Optional: absent reads as 0 (the
    /// broker then trusts the latest READY).
    #[serde(default)]
    pub session: u64,
    /// The worker reads BATCH messages: the broker may send it several requests in one.
    /// Optional: absent reads as false (one REQUEST per message).
    #[serde(default)]
    pub batch: bool,
}

impl Header for ReadyHeader {}

/// Header of a REQUEST sent to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// Broker-chosen id of this delivery; the reply names it.
    pub job: JobId,
    /// The client's request id (for logs and journals).
    pub id: RequestId,
    /// The service asked for.
    pub service: ServiceName,
    /// Absolute deadline, Unix epoch ms. A worker must not start a job past it.
    pub deadline_ms: u64,
    /// Whether the request may be executed more than once.
    pub idempotent: bool,
}

/// Header of a REPLY from a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyHeader {
    /// The job answered.
    pub job: JobId,
}

/// Header of an ERROR from a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorHeader {
    /// The job that failed.
    pub job: JobId,
    /// Error number; `unavailable` (10) means "refused without executing" and lets the
    /// broker deliver the request elsewhere.
    pub code: u16,
    /// Detail for the client.
    pub message: String,
}

impl Header for ErrorHeader {}

impl ErrorHeader {
    /// Builds a worker error header.
    pub fn new(job: JobId, code: ErrorCode, message: impl Into<String>) -> ErrorHeader {
        ErrorHeader {
            job,
            code: code.as_u16(),
            message: message.into(),
        }
    }
}

/// Header of HEARTBEAT (no fields yet; an empty map).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatHeader {}

impl Header for HeartbeatHeader {}

/// DISCONNECT reason: the broker does not know this worker (it restarted, or expired the
/// worker); the worker registers again with READY.
pub const REASON_NOT_REGISTERED: &str = "not registered";
/// DISCONNECT reason: the broker is stopping; the worker reconnects with backoff.
pub const REASON_SHUTTING_DOWN: &str = "broker shutting down";
/// DISCONNECT reason: a READY arrived on a connection older than the one the worker is
/// registered on (it was abandoned); ignored by the broker.
pub const REASON_STALE_SESSION: &str = "stale session";

/// Whether a DISCONNECT `reason` says the broker refused one of the worker's messages
/// (`<error code name>: <detail>`, e.g. `bad_request: bad field capacity: …`) rather than
/// asking it to register again. Any registration the worker has stands.
pub fn is_refusal(reason: &str) -> bool {
    reason
        .split_once(':')
        .is_some_and(|(code, _)| ErrorCode::from_name(code).is_some())
}

/// Header of DISCONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectHeader {
    /// Why.
    #[serde(default)]
    pub reason: String,
}

impl Header for DisconnectHeader {}

/// A decoded worker-protocol message; the body (if any) is the rest of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// READY.
    Ready(ReadyHeader),
    /// REQUEST.
    Request(RequestHeader),
    /// REPLY.
    Reply(ReplyHeader),
    /// ERROR.
    Error(ErrorHeader),
    /// HEARTBEAT.
    Heartbeat,
    /// DISCONNECT.
    Disconnect(DisconnectHeader),
    /// BATCH: its messages are read from the body with [`crate::batch::items`].
    Batch(crate::batch::BatchHeader),
}

/// Decodes a worker-protocol message (the frames after any ROUTER identity): the message
/// and where its body starts in frame 0. The protocol id is checked before the frame
/// count, so an old version's message is `unsupported_version` whatever its layout.
pub fn decode<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
) -> Result<(Message, usize), ProtoError> {
    let first = frame::frame(frames, 0, FRAMES)?;
    PROTOCOL.check_id(first)?;
    frame::expect_frames(frames, FRAMES)?;
    let parts = PROTOCOL.split(first)?;
    let header = parts.header;
    let message = match Command::from_byte(parts.command)? {
        Command::Ready => {
            let h: ReadyHeader = frame::decode_header(header)?;
            validate_ready(&h)?;
            Message::Ready(h)
        }
        Command::Request => Message::Request(frame::decode_header_quick(
            header,
            crate::quick::worker_request,
        )?),
        Command::Reply => Message::Reply(frame::decode_header_quick(
            header,
            crate::quick::worker_reply,
        )?),
        Command::Error => Message::Error(frame::decode_header(header)?),
        Command::Heartbeat => Message::Heartbeat,
        Command::Disconnect => Message::Disconnect(frame::decode_header(header)?),
        Command::Batch => {
            let h = frame::decode_header(header)?;
            crate::batch::validate(&h)?;
            Message::Batch(h)
        }
    };
    Ok((message, parts.body_start))
}

/// [`decode`] for a worker reading the broker: an older broker refuses this version with
/// a DISCONNECT in its own layout (version 02: two frames, `["TPXW02" 0x06 header][]`),
/// read here as that DISCONNECT so the worker logs the refusal.
pub fn decode_from_broker<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
) -> Result<(Message, usize), ProtoError> {
    match frame::v2_refusal(frames, V2_ID, Command::Disconnect as u8) {
        Some(header) => Ok((Message::Disconnect(frame::decode_header(header)?), 0)),
        None => decode(frames),
    }
}

fn validate_ready(h: &ReadyHeader) -> Result<(), ProtoError> {
    if h.capacity > MAX_CAPACITY || (h.capacity == 0 && !h.services.is_empty()) {
        return Err(ProtoError::BadField {
            field: "capacity",
            reason: format!("must be 1-{MAX_CAPACITY} when services are offered"),
        });
    }
    if h.services.len() > MAX_SERVICES {
        return Err(ProtoError::BadField {
            field: "services",
            reason: format!("at most {MAX_SERVICES}"),
        });
    }
    if let Some(s) = h.services.iter().find(|s| s.is_mgmt()) {
        return Err(ProtoError::BadField {
            field: "services",
            reason: format!("{s} is reserved for the broker"),
        });
    }
    Ok(())
}

/// Best-effort read of the job a malformed REPLY or ERROR answers (frames after any ROUTER
/// identity), so the broker can still answer that job's client and free the worker's slot.
/// `None` unless the message is this protocol, its command REPLY or ERROR and its header
/// a map with an unsigned `job`.
pub fn salvage_job<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Option<JobId> {
    #[derive(Deserialize)]
    struct JobOnly {
        job: Option<u64>,
    }
    let parts = PROTOCOL.split(frames.first()?).ok()?;
    if parts.command != Command::Reply as u8 && parts.command != Command::Error as u8 {
        return None;
    }
    rmp_serde::from_slice::<JobOnly>(parts.header)
        .ok()
        .and_then(|h| h.job)
        .map(JobId)
}

/// Encodes a whole worker message: head, then `body`.
pub fn encode<T: Header>(cmd: Command, header: &T, body: &[u8]) -> Vec<u8> {
    PROTOCOL.encode(cmd as u8, header, body)
}

/// [`encode`] into `buf` (cleared first): a sender that keeps one buffer allocates nothing
/// per message.
pub fn encode_into<T: Header>(buf: &mut Vec<u8>, cmd: Command, header: &T, body: &[u8]) {
    PROTOCOL.encode_into(buf, cmd as u8, header, body)
}

/// A DISCONNECT in the version-01 layout (`["TPXW01"][0x06][header][empty body]`): the
/// answer to a message of that version, so an old worker logs why it was refused.
pub fn encode_v1_disconnect(h: &DisconnectHeader) -> [Vec<u8>; 4] {
    [
        V1_FRAME.to_vec(),
        vec![Command::Disconnect as u8],
        frame::encode_header(h),
        Vec::new(),
    ]
}

/// A DISCONNECT in the version-02 layout (`["TPXW02" 0x06 header][empty body]`): the
/// answer to a message of that version, so an old worker logs why it was refused.
pub fn encode_v2_disconnect(h: &DisconnectHeader) -> [Vec<u8>; 2] {
    let head = [
        V2_ID,
        &[Command::Disconnect as u8][..],
        &frame::encode_header(h),
    ]
    .concat();
    [head, Vec::new()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn job_is_salvaged_from_an_error_whose_code_does_not_fit_u16() {
        #[derive(Serialize)]
        struct WideCode {
            job: u64,
            code: u32,
            message: &'static str,
        }
        let header = frame::encode_header(&WideCode {
            job: 42,
            code: 70_000,
            message: "x",
        });
        let frames: Vec<Vec<u8>> = vec![head(Command::Error as u8, &header)];
        assert!(decode(&frames).is_err());
        assert_eq!(salvage_job(&frames), Some(JobId(42)));
        // Only answers (REPLY, ERROR) name a job to salvage.
        let ready = vec![head(Command::Ready as u8, &header)];
        assert_eq!(salvage_job(&ready), None);
        let other = vec![[&b"TPXW99\x04"[..], &header].concat()];
        assert_eq!(salvage_job(&other), None);
    }

    /// A one-frame message of `m`, decoded back to its message.
    fn round(m: Vec<u8>) -> Result<Message, ProtoError> {
        decode(&[m]).map(|(m, _)| m)
    }

    /// A message built by hand: id, command, header length, header (no body).
    fn head(cmd: u8, header: &[u8]) -> Vec<u8> {
        let len = (header.len() as u16).to_be_bytes();
        [PROTOCOL.frame, &[cmd][..], &len[..], header].concat()
    }

    #[test]
    fn version_01_is_unsupported_and_answered_in_its_layout() {
        let ready = frame::encode_header(&HeartbeatHeader {});
        let v1 = vec![b"TPXW01".to_vec(), vec![5], ready, Vec::new()];
        assert_eq!(
            decode(&v1).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        let d = DisconnectHeader {
            reason: "unsupported_version: speak TPXW03".into(),
        };
        let frames = encode_v1_disconnect(&d);
        assert_eq!(
            (&frames[0][..], &frames[1][..]),
            (&b"TPXW01"[..], &[6u8][..])
        );
        assert_eq!(
            frame::decode_header::<DisconnectHeader>(&frames[2]).unwrap(),
            d
        );
    }

    #[test]
    fn version_02_is_unsupported_and_a_v2_refusal_is_read() {
        let hb = frame::encode_header(&HeartbeatHeader {});
        let v2 = vec![[V2_ID, &[5][..], &hb].concat(), Vec::new()];
        assert_eq!(
            decode(&v2).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            decode_from_broker(&v2).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        let d = DisconnectHeader {
            reason: "unsupported_version: speak TPXW02".into(),
        };
        let frames = encode_v2_disconnect(&d);
        assert_eq!(&frames[0][..7], b"TPXW02\x06");
        assert_eq!(
            decode_from_broker(&frames).unwrap().0,
            Message::Disconnect(d)
        );
        assert_eq!(
            decode(&frames).unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
    }

    #[test]
    fn a_body_follows_the_header() {
        let rep = ReplyHeader { job: JobId(3) };
        let m = encode(Command::Reply, &rep, b"answer");
        let (back, at) = decode(&[&m[..]]).unwrap();
        assert_eq!(back, Message::Reply(rep));
        assert_eq!(&m[at..], b"answer");
        assert_eq!(
            decode(&[m.clone(), Vec::new()]).unwrap_err(),
            ProtoError::FrameCount {
                expected: 1,
                got: 2
            }
        );
    }

    #[test]
    fn every_command_round_trips() {
        let ready = ReadyHeader {
            worker: WorkerId::random(),
            services: vec![ServiceName::new("echo").unwrap()],
            capacity: 4,
            session: 0,
            batch: true,
        };
        let req = RequestHeader {
            job: JobId(1),
            id: RequestId(2),
            service: ServiceName::new("SIM").unwrap(),
            deadline_ms: 5,
            idempotent: false,
        };
        assert_eq!(
            round(encode(Command::Ready, &ready, b"")).unwrap(),
            Message::Ready(ready)
        );
        assert_eq!(
            round(encode(Command::Request, &req, b"")).unwrap(),
            Message::Request(req)
        );
        let rep = ReplyHeader { job: JobId(3) };
        assert_eq!(
            round(encode(Command::Reply, &rep, b"")).unwrap(),
            Message::Reply(rep)
        );
        let err = ErrorHeader::new(JobId(4), ErrorCode::WorkerError, "boom");
        assert_eq!(
            round(encode(Command::Error, &err, b"")).unwrap(),
            Message::Error(err)
        );
        assert_eq!(
            round(encode(Command::Heartbeat, &HeartbeatHeader {}, b"")).unwrap(),
            Message::Heartbeat
        );
        let d = DisconnectHeader {
            reason: "bye".into(),
        };
        assert_eq!(
            round(encode(Command::Disconnect, &d, b"")).unwrap(),
            Message::Disconnect(d)
        );
        let b = crate::batch::BatchHeader { count: 2 };
        assert_eq!(
            round(encode(Command::Batch, &b, b"")).unwrap(),
            Message::Batch(b)
        );
        let lone = crate::batch::BatchHeader { count: 1 };
        assert!(round(encode(Command::Batch, &lone, b"")).is_err());
    }

    #[test]
    fn ready_is_validated() {
        let mut ready = ReadyHeader {
            worker: WorkerId::random(),
            services: vec![ServiceName::new("tpx.status").unwrap()],
            capacity: 1,
            session: 0,
            batch: false,
        };
        assert!(round(encode(Command::Ready, &ready, b"")).is_err());
        ready.services = vec![ServiceName::new("echo").unwrap()];
        ready.capacity = 0;
        assert!(round(encode(Command::Ready, &ready, b"")).is_err());
        ready.services.clear();
        assert!(round(encode(Command::Ready, &ready, b"")).is_ok());
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
            let _ = decode(&frames);
            let _ = decode_from_broker(&frames);
        }

        #[test]
        fn random_headers_never_panic(header in proptest::collection::vec(any::<u8>(), 0..256), cmd in 0u8..8) {
            let _ = decode(&[head(cmd, &header)]);
            let _ = salvage_job(&[head(cmd, &header)]);
            let _ = decode_from_broker(&[head(cmd, &header)]);
        }
    }
}
