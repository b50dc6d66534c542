//! Wire error codes: one `#[repr(u16)]` enum with stable numbers and stable names.
//! Numbers and names are part of the contract (docs/protocol.md); never renumber or rename.

use std::fmt;

/// An error code carried in an ERROR message. Unknown numbers from newer peers decode
/// to [`ErrorCode::Unknown`] handling in [`ErrorCode::from_u16`].
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed frames, bad header fields, unknown command.
    BadRequest = 1,
    /// No worker offers this service (now, or within the broker's grace wait).
    UnknownService = 2,
    /// The deadline passed before the request could be delivered; it was never delivered.
    DeadlineExceeded = 3,
    /// The worker died with the request in flight: the outcome is unknown.
    WorkerLost = 4,
    /// The worker's handler failed; the message says why.
    WorkerError = 5,
    /// The protocol version in frame 0 is not one this peer speaks.
    UnsupportedVersion = 6,
    /// A frame is larger than the configured maximum.
    TooLarge = 7,
    /// A bounded queue is full; try later.
    Overloaded = 8,
    /// The request named a target worker that is not registered for the service.
    UnknownWorker = 9,
    /// Refused without executing (broker shutting down, worker draining or gateway down).
    Unavailable = 10,
    /// The broker's pre-trade risk stage refused the order; the message names the rule,
    /// its limit and the order's value (`<rule>: limit <L>, value <V>`). Never delivered.
    RiskRejected = 11,
    /// The caller may not make this request: a management call only admin clients may
    /// make (`tpx.risk`), a declared client name from a peer that is not on loopback, or a
    /// CURVE key no longer allow-listed. Never delivered.
    Forbidden = 12,
}

impl ErrorCode {
    /// Every code, in number order.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownService,
        ErrorCode::DeadlineExceeded,
        ErrorCode::WorkerLost,
        ErrorCode::WorkerError,
        ErrorCode::UnsupportedVersion,
        ErrorCode::TooLarge,
        ErrorCode::Overloaded,
        ErrorCode::UnknownWorker,
        ErrorCode::Unavailable,
        ErrorCode::RiskRejected,
        ErrorCode::Forbidden,
    ];

    /// The stable name printed by the CLI and used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownService => "unknown_service",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::WorkerLost => "worker_lost",
            ErrorCode::WorkerError => "worker_error",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UnknownWorker => "unknown_worker",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RiskRejected => "risk_rejected",
            ErrorCode::Forbidden => "forbidden",
        }
    }

    /// The stable number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Decodes a wire number; `None` for numbers this version does not know.
    pub fn from_u16(n: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_u16() == n)
    }

    /// Looks a code up by its stable name.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_are_stable() {
        let expected = [
            (1, "bad_request"),
            (2, "unknown_service"),
            (3, "deadline_exceeded"),
            (4, "worker_lost"),
            (5, "worker_error"),
            (6, "unsupported_version"),
            (7, "too_large"),
            (8, "overloaded"),
            (9, "unknown_worker"),
            (10, "unavailable"),
            (11, "risk_rejected"),
            (12, "forbidden"),
        ];
        for (n, name) in expected {
            let code = ErrorCode::from_u16(n).unwrap();
            assert_eq!(code.name(), name);
            assert_eq!(ErrorCode::from_name(name), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(999), None);
    }
}
