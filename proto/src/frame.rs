//! Shared frame handling: protocol ids (`TPXC03`, `TPXW03`, `TPXE01`), the one-frame
//! layout of the request protocols (id, command byte, header length, MessagePack header,
//! body) and the size-checked header. Used by the client, worker and event codecs.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ProtoError, MAX_HEADER_BYTES};

/// A protocol identity: four ASCII letters plus a two-digit version, e.g. `TPXC01`.
#[derive(Debug, Clone, Copy)]
pub struct Protocol {
    /// Four-letter protocol name.
    pub name: &'static str,
    /// Two-digit version this build speaks.
    pub version: &'static str,
    /// The full frame-0 bytes (`name` + `version`).
    pub frame: &'static [u8],
}

impl Protocol {
    /// Checks frame 0: our protocol in our version, or a precise error.
    pub fn check(&self, frame0: &[u8]) -> Result<(), ProtoError> {
        if frame0 == self.frame {
            return Ok(());
        }
        match frame0.strip_prefix(self.name.as_bytes()) {
            Some(version) if version.len() <= 16 => Err(ProtoError::UnsupportedVersion {
                got: String::from_utf8_lossy(version).into_owned(),
                supported: self.version,
            }),
            _ => Err(ProtoError::BadProtocol {
                expected: self.name,
            }),
        }
    }
}

/// Bytes of a message before its header: the 6-byte protocol id, the command byte and
/// the header's length (2 bytes, big-endian).
pub const HEAD_PREFIX: usize = 9;

/// A request-protocol message split into its parts (protocol id checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The command byte.
    pub command: u8,
    /// The MessagePack header, exactly its declared length.
    pub header: &'a [u8],
    /// Where the body starts in the frame (it runs to the frame's end).
    pub body_start: usize,
}

impl Protocol {
    /// Checks the first 6 bytes of a message: our id, or `unsupported_version` for our
    /// name in another version (e.g. a `TPXC02` message), or `bad_request`.
    pub fn check_id(&self, frame: &[u8]) -> Result<(), ProtoError> {
        // Only the id's bytes are checked, so a wrong version names itself briefly.
        self.check(frame.get(..self.frame.len()).unwrap_or(frame))
    }

    /// Splits a message (`id`, command byte, header length, header, body) after checking
    /// its protocol id and that the declared header fits in the frame.
    pub fn split<'a>(&self, frame: &'a [u8]) -> Result<Parts<'a>, ProtoError> {
        self.check_id(frame)?;
        split_layout(frame)
    }

    /// Encodes a message's head (`id`, command byte, header length, header) into `buf`
    /// (cleared first, its allocation reused); the body goes right after it.
    pub fn encode_head_into<T: Header>(&self, buf: &mut Vec<u8>, cmd: u8, header: &T) {
        buf.clear();
        buf.extend_from_slice(self.frame);
        buf.push(cmd);
        buf.extend_from_slice(&[0, 0]);
        let written = header.write_to(buf);
        let len = buf.len() - HEAD_PREFIX;
        match u16::try_from(len) {
            Ok(n) if written && len <= MAX_HEADER_BYTES => {
                if let Some(b) = buf.get_mut(HEAD_PREFIX - 2..HEAD_PREFIX) {
                    b.copy_from_slice(&n.to_be_bytes());
                }
            }
            // Our plain header structs cannot fail to serialise, and none comes near
            // the limit; stay safe if one does: an empty map.
            _ => {
                buf.truncate(HEAD_PREFIX - 2);
                buf.extend_from_slice(&[0, 1, 0x80]);
            }
        }
    }

    /// Encodes a whole message into `buf` (cleared first): head, then `body`.
    pub fn encode_into<T: Header>(&self, buf: &mut Vec<u8>, cmd: u8, header: &T, body: &[u8]) {
        self.encode_head_into(buf, cmd, header);
        buf.extend_from_slice(body);
    }

    /// A whole message: `id`, command byte, header length, header, body.
    pub fn encode<T: Header>(&self, cmd: u8, header: &T, body: &[u8]) -> Vec<u8> {
        // Our headers are small maps: one allocation of this size avoids regrowing.
        let mut buf = Vec::with_capacity(128 + body.len());
        self.encode_into(&mut buf, cmd, header, body);
        buf
    }
}

/// A header struct as it goes on the wire: a MessagePack map with field names. The four
/// on every request's path (a client's REQUEST, the REQUEST to a worker, the worker's
/// REPLY, the REPLY to a client) write themselves by hand, byte for byte what serde
/// writes (`quick.rs`, tested against serde); the others go through serde.
pub trait Header: Serialize {
    /// Appends the header's map to `buf`; false if it could not be encoded.
    fn write_to(&self, buf: &mut Vec<u8>) -> bool {
        rmp_serde::encode::write_named(buf, self).is_ok()
    }
}

/// Splits a message in this version's layout whatever its 6-byte id says (for reading
/// what can be read of a message that is refused, e.g. its request id).
pub fn split_layout(frame: &[u8]) -> Result<Parts<'_>, ProtoError> {
    // Byte 6 the command, bytes 7-8 the header length.
    let command_at = HEAD_PREFIX - 3;
    let command = *frame
        .get(command_at)
        .ok_or_else(|| ProtoError::UnknownCommand(Vec::new()))?;
    let len = frame
        .get(command_at + 1..HEAD_PREFIX)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(|b| usize::from(u16::from_be_bytes(b)))
        .ok_or_else(|| ProtoError::BadHeader("no header length (bytes 7-8)".into()))?;
    if len > MAX_HEADER_BYTES {
        return Err(ProtoError::TooLarge {
            what: "header",
            size: len,
            limit: MAX_HEADER_BYTES,
        });
    }
    let body_start = HEAD_PREFIX + len;
    let header = frame.get(HEAD_PREFIX..body_start).ok_or_else(|| {
        ProtoError::BadHeader(format!(
            "header length {len} runs past the end of the {}-byte message",
            frame.len()
        ))
    })?;
    Ok(Parts {
        command,
        header,
        body_start,
    })
}

/// The header of an older peer's refusal in the version-02 layout: two frames, the
/// first `v2_id` (e.g. `TPXC02`), `command` and the header, the second empty by
/// convention. `None` for anything else. What a version-03 client or worker reads from a
/// version-02 broker that refuses its version.
pub fn v2_refusal<'a, F: std::ops::Deref<Target = [u8]>>(
    frames: &'a [F],
    v2_id: &[u8],
    command: u8,
) -> Option<&'a [u8]> {
    match frames {
        [head, _] => head
            .strip_prefix(v2_id)
            .and_then(|rest| rest.strip_prefix(&[command])),
        _ => None,
    }
}

/// Decodes a size-checked MessagePack header map.
pub fn decode_header<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ProtoError> {
    if frame.len() > MAX_HEADER_BYTES {
        return Err(ProtoError::TooLarge {
            what: "header",
            size: frame.len(),
            limit: MAX_HEADER_BYTES,
        });
    }
    rmp_serde::from_slice(frame).map_err(|e| ProtoError::BadHeader(e.to_string()))
}

/// Decodes a size-checked header with `quick` (a hand-written reader of the usual shape,
/// see `quick.rs`), and with serde when `quick` does not recognise it.
pub(crate) fn decode_header_quick<T: DeserializeOwned>(
    frame: &[u8],
    quick: fn(&[u8]) -> Option<T>,
) -> Result<T, ProtoError> {
    if frame.len() <= MAX_HEADER_BYTES {
        if let Some(h) = quick(frame) {
            return Ok(h);
        }
    }
    decode_header(frame)
}

/// Encodes a header as a MessagePack map with field names (so other languages read it
/// without knowing field order).
pub fn encode_header<T: Serialize>(header: &T) -> Vec<u8> {
    // Serialising our own plain structs to a Vec cannot fail; fall back to an empty map
    // rather than panic so a future type with a failing Serialize impl is still safe.
    // Our headers are small maps: one allocation of this size avoids regrowing the buffer.
    let mut buf = Vec::with_capacity(128);
    match rmp_serde::encode::write_named(&mut buf, header) {
        Ok(()) => buf,
        Err(_) => vec![0x80],
    }
}

/// Returns frame `i` or a frame-count error.
pub fn frame<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
    i: usize,
    expected: usize,
) -> Result<&[u8], ProtoError> {
    frames.get(i).map(|f| &**f).ok_or(ProtoError::FrameCount {
        expected,
        got: frames.len(),
    })
}

/// Checks the exact frame count of a message.
pub fn expect_frames<F>(frames: &[F], expected: usize) -> Result<(), ProtoError> {
    if frames.len() == expected {
        Ok(())
    } else {
        Err(ProtoError::FrameCount {
            expected,
            got: frames.len(),
        })
    }
}
