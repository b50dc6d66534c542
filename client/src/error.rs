//! Errors a client call can end with.

use tradeplex_proto::{ErrorCode, WorkerId};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The broker or a worker answered with an error code.
    #[error("{name}: {message}")]
    Remote {
        /// The code, if this version knows it.
        code: Option<ErrorCode>,
        /// The code's stable name as received.
        name: String,
        /// Detail.
        message: String,
        /// The worker involved, if any.
        worker: Option<WorkerId>,
    },
    /// No answer arrived before the call's timeout. For a non-idempotent request the
    /// outcome is unknown: it may have executed. Query by id before retrying an order.
    #[error("timeout: no answer within {0} ms (outcome unknown)")]
    Timeout(u64),
    /// The broker could not be reached before the deadline: the request was never sent,
    /// so it was certainly not executed.
    #[error("unavailable: broker not reachable within {0} ms; request not sent")]
    NotSent(u64),
    /// A connection attempt to the broker failed (refused: nothing listens there; or no
    /// route) and the client was set
    /// to fail fast ([`crate::ClientOptions::fail_fast`]): the request was never sent.
    #[error(
        "unavailable: connecting to the broker failed (refused, or no route); request not sent"
    )]
    Refused,
    /// The broker of a pair holding this request was lost (its connection dropped or
    /// its heartbeats stopped) and the client moved to the other broker. The request is
    /// not idempotent, so it was NOT re-sent: its outcome is unknown, as with a worker
    /// lost. Query by id before retrying an order. The field is the lost endpoint.
    #[error("worker_lost: the broker at {0} was lost with this request in flight (outcome unknown; not re-sent)")]
    BrokerLost(String),
    /// Too many calls in flight on this client.
    #[error("overloaded: {0} calls already in flight on this client")]
    TooManyInFlight(usize),
    /// The client's connection thread has stopped.
    #[error("closed: the client connection has stopped")]
    Closed,
    /// The request could not be encoded.
    #[error("bad_request: {0}")]
    Encode(String),
    /// The body is larger than the broker takes (`max_body_bytes`); refused before
    /// sending, as the broker would refuse it (`too_large`), so certainly not executed.
    #[error("too_large: body is {size} bytes, limit {limit}; request not sent")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit ([`crate::ClientOptions`]' `max_body_bytes`).
        limit: usize,
    },
    /// The reply could not be decoded.
    #[error("bad_reply: {0}")]
    Decode(String),
    /// The client could not be set up.
    #[error("closed: cannot connect: {0}")]
    Connect(String),
}

impl ClientError {
    /// The stable name printed by the CLI: a wire code name, or `timeout` / `unavailable` /
    /// `overloaded` / `closed` / `bad_request` / `too_large` / `bad_reply` for client-side
    /// failures.
    pub fn name(&self) -> &str {
        match self {
            ClientError::Remote { name, .. } => name,
            ClientError::Timeout(_) => "timeout",
            ClientError::BrokerLost(_) => "worker_lost",
            ClientError::NotSent(_) | ClientError::Refused => "unavailable",
            ClientError::TooManyInFlight(_) => "overloaded",
            ClientError::Closed | ClientError::Connect(_) => "closed",
            ClientError::Encode(_) => "bad_request",
            ClientError::TooLarge { .. } => "too_large",
            ClientError::Decode(_) => "bad_reply",
        }
    }

    /// The wire code, for remote errors (and `worker_lost` for [`ClientError::BrokerLost`],
    /// which means the same to the caller).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote { code, .. } => *code,
            ClientError::BrokerLost(_) => Some(ErrorCode::WorkerLost),
            _ => None,
        }
    }
}
