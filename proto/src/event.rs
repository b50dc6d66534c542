//! Event messages on the PUB/XSUB -> XPUB/SUB side (protocol `TPXE01`).
//!
//! Frames: `[topic][ "TPXE01" ][header: MessagePack map][body]`. The topic comes first
//! because ZeroMQ subscriptions match a prefix of frame 0.

use serde::{Deserialize, Serialize};

use crate::frame::{self, Header, Protocol};
use crate::{ProtoError, WorkerId};

/// Frame 1 of every event.
pub const PROTOCOL: Protocol = Protocol {
    name: "TPXE",
    version: "01",
    frame: b"TPXE01",
};

/// Frames in every event.
pub const FRAMES: usize = 4;

/// Longest topic accepted, bytes.
pub const MAX_TOPIC: usize = 256;

/// Topic of the broker's own heartbeat on the event side.
pub const BROKER_HEARTBEAT_TOPIC: &str = "hb.broker";

/// Event kinds, the first segment of every topic. Bounded, so usable as a metric label.
pub const KINDS: [&str; 9] = [
    "tick", "bar", "order", "trade", "position", "account", "contract", "log", "hb",
];

/// Header of every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeader {
    /// Who published it (a worker id, or the broker's instance id for `hb.broker`).
    pub source: WorkerId,
    /// Sequence number per source and topic, starting at 1 and contiguous: a jump is a gap.
    pub seq: u64,
    /// Publish time, Unix epoch nanoseconds.
    pub ts_ns: u64,
    /// The event kind (first topic segment), e.g. `tick`.
    pub kind: String,
}

impl Header for EventHeader {}

/// A decoded event; its body is frame 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The topic (frame 0).
    pub topic: String,
    /// The header (frame 2).
    pub header: EventHeader,
}

/// The kind of a topic: its first `.`-separated segment if it is a known kind.
pub fn kind_of(topic: &[u8]) -> Option<&'static str> {
    let first = topic.split(|b| *b == b'.').next()?;
    KINDS.into_iter().find(|k| k.as_bytes() == first)
}

/// Decodes an event's first three frames.
pub fn decode<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Result<Event, ProtoError> {
    frame::expect_frames(frames, FRAMES)?;
    let topic = frame::frame(frames, 0, FRAMES)?;
    if topic.is_empty() || topic.len() > MAX_TOPIC {
        return Err(ProtoError::BadField {
            field: "topic",
            reason: format!("must be 1-{MAX_TOPIC} bytes"),
        });
    }
    let topic = std::str::from_utf8(topic)
        .map_err(|_| ProtoError::BadField {
            field: "topic",
            reason: "not UTF-8".into(),
        })?
        .to_string();
    PROTOCOL.check(frame::frame(frames, 1, FRAMES)?)?;
    let header = decode_header(frame::frame(frames, 2, FRAMES)?)?;
    Ok(Event { topic, header })
}

/// Decodes an event's header (frame 2) alone: what the broker's gap-recovery store reads
/// of every event, on the relay thread.
pub fn decode_header(frame: &[u8]) -> Result<EventHeader, ProtoError> {
    frame::decode_header_quick(frame, crate::quick::event_header)
}

/// Checks an event's framing cheaply (what the broker relay does per message).
pub fn check<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Result<&'static str, ProtoError> {
    frame::expect_frames(frames, FRAMES)?;
    PROTOCOL.check(frame::frame(frames, 1, FRAMES)?)?;
    let topic = frame::frame(frames, 0, FRAMES)?;
    if topic.len() > MAX_TOPIC {
        return Err(ProtoError::TooLarge {
            what: "topic",
            size: topic.len(),
            limit: MAX_TOPIC,
        });
    }
    kind_of(topic).ok_or_else(|| ProtoError::BadField {
        field: "topic",
        reason: "unknown event kind".into(),
    })
}

/// Encodes frames 0–2 of an event; the caller sends the body as frame 3.
pub fn encode(topic: &str, header: &EventHeader) -> [Vec<u8>; 3] {
    [
        topic.as_bytes().to_vec(),
        PROTOCOL.frame.to_vec(),
        frame::encode_header(header),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_kind() {
        let h = EventHeader {
            source: WorkerId::random(),
            seq: 9,
            ts_ns: 1,
            kind: "tick".into(),
        };
        let [a, b, c] = encode("tick.SIM.IF2412", &h);
        let frames = vec![a, b, c, vec![1, 2]];
        let e = decode(&frames).unwrap();
        assert_eq!(e.topic, "tick.SIM.IF2412");
        assert_eq!(e.header, h);
        assert_eq!(check(&frames).unwrap(), "tick");
        assert_eq!(kind_of(b"hb.broker"), Some("hb"));
        assert_eq!(kind_of(b"weird.x"), None);
    }

    proptest! {
        #[test]
        fn random_events_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
            let _ = decode(&frames);
            let _ = check(&frames);
        }
    }
}
