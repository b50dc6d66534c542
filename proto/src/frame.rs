//! Shared frame handling: protocol headers (`TPXC01`, `TPXW01`, `TPXE01`), the command
//! byte and the size-checked MessagePack header. Used by the client, worker and event codecs.

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

/// Reads the single command byte of frame 1.
pub fn command_byte(frame1: &[u8]) -> Result<u8, ProtoError> {
    match frame1 {
        [b] => Ok(*b),
        other => Err(ProtoError::UnknownCommand(
            other.iter().take(8).copied().collect(),
        )),
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
