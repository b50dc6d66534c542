//! Decode errors. Every malformed input maps to one of these; none panics.

use crate::ErrorCode;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Wrong number of frames for the protocol.
    #[error("expected {expected} frame{}, got {got}", if *expected == 1 { "" } else { "s" })]
    FrameCount {
        /// Frames the command needs.
        expected: usize,
        /// Frames received.
        got: usize,
    },
    /// Frame 0 is not a Tradeplex protocol header.
    #[error("frame 0 is not a {expected} protocol header")]
    BadProtocol {
        /// The protocol expected on this socket (e.g. `TPXC`).
        expected: &'static str,
    },
    /// Frame 0 names our protocol in a version we do not speak.
    #[error("unsupported protocol version {got:?} (this peer speaks {supported})")]
    UnsupportedVersion {
        /// The version bytes received, lossily decoded.
        got: String,
        /// The version this peer speaks.
        supported: &'static str,
    },
    /// The command frame is not one byte or not a known command.
    #[error("unknown command {0:?}")]
    UnknownCommand(Vec<u8>),
    /// A frame exceeds its size limit.
    #[error("{what} is {size} bytes, limit {limit}")]
    TooLarge {
        /// Which frame.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The header frame is not the MessagePack map the command needs.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// A header field has an invalid value.
    #[error("bad field {field}: {reason}")]
    BadField {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ProtoError {
    /// The wire error code a peer should be answered with for this decode failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProtoError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }

    /// A short, bounded label for metrics (`bad_frames_total{reason=…}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtoError::FrameCount { .. } => "frame_count",
            ProtoError::BadProtocol { .. } => "bad_protocol",
            ProtoError::UnsupportedVersion { .. } => "unsupported_version",
            ProtoError::UnknownCommand(_) => "unknown_command",
            ProtoError::TooLarge { .. } => "too_large",
            ProtoError::BadHeader(_) => "bad_header",
            ProtoError::BadField { .. } => "bad_field",
        }
    }
}
