//! Shared frame handling: protocol ids (`TPXC02`, `TPXW02`, `TPXE01`), the head frame of
//! the request protocols (id + command byte + MessagePack header in one frame) and the
//! size-checked header. Used by the client, worker and event codecs.

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

/// Bytes of a head frame before its header: the 6-byte protocol id and the command byte.
pub const HEAD_PREFIX: usize = 7;

impl Protocol {
    /// Splits a head frame (`id`, command byte, header) after checking its protocol id:
    /// returns the command byte and the header bytes. A frame that starts with our name
    /// in another version (e.g. a whole `TPXC01` frame) is `unsupported_version`.
    pub fn split_head<'a>(&self, head: &'a [u8]) -> Result<(u8, &'a [u8]), ProtoError> {
        let id = self.frame.len();
        match head.get(..id) {
            Some(p) if p == self.frame => match head.get(id) {
                Some(cmd) => Ok((*cmd, head.get(id + 1..).unwrap_or(&[]))),
                None => Err(ProtoError::UnknownCommand(Vec::new())),
            },
            // Only the id's bytes are checked, so a wrong version names itself briefly.
            _ => Err(match self.check(head.get(..id).unwrap_or(head)) {
                Err(e) => e,
                Ok(()) => ProtoError::BadProtocol {
                    expected: self.name,
                },
            }),
        }
    }

    /// Encodes a head frame into `buf` (cleared first), reusing its allocation.
    pub fn encode_head_into<T: Serialize>(&self, buf: &mut Vec<u8>, cmd: u8, header: &T) {
        buf.clear();
        buf.extend_from_slice(self.frame);
        buf.push(cmd);
        if rmp_serde::encode::write_named(buf, header).is_err() {
            // Our plain header structs cannot fail to serialise; stay safe if one does.
            buf.truncate(HEAD_PREFIX);
            buf.push(0x80);
        }
    }

    /// A head frame: `id`, command byte, header.
    pub fn encode_head<T: Serialize>(&self, cmd: u8, header: &T) -> Vec<u8> {
        // Our headers are small maps: one allocation of this size avoids regrowing.
        let mut buf = Vec::with_capacity(128);
        self.encode_head_into(&mut buf, cmd, header);
        buf
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
