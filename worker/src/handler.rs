//! What a service implementation provides: a [`Handler`] that turns a request body into
//! a reply body or an error. Handlers run on the worker's executor threads.

use tradeplex_proto::{ErrorCode, JobId, RequestId, ServiceName};

/// A request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The broker's delivery id.
    pub job: JobId,
    /// The client's request id.
    pub id: RequestId,
    /// The service called.
    pub service: ServiceName,
    /// Absolute deadline, Unix epoch ms (already checked before the handler runs).
    pub deadline_ms: u64,
    /// Whether the client marked it safe to repeat.
    pub idempotent: bool,
    /// The body, MessagePack by convention.
    pub body: Vec<u8>,
}

/// A failed request: the code and message the client receives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// Wire error code (usually `worker_error`, or `bad_request` for a malformed body,
    /// or `unavailable` to refuse without executing so the broker tries elsewhere).
    pub code: ErrorCode,
    /// Detail for the client.
    pub message: String,
}

impl HandlerError {
    /// A `worker_error`.
    pub fn failed(message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::WorkerError,
            message: message.into(),
        }
    }

    /// A `bad_request` (the body could not be understood).
    pub fn bad_request(message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }

    /// `unavailable`: refused without executing anything.
    pub fn unavailable(message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::Unavailable,
            message: message.into(),
        }
    }
}

/// A service implementation.
pub trait Handler: Send + Sync + 'static {
    /// Executes one request. Called from up to `capacity` threads at once.
    fn handle(&self, req: &Request) -> Result<Vec<u8>, HandlerError>;

    /// True if this request is cheap and never blocks (no I/O, no sleeping, no waiting on
    /// locks held for long): the worker then runs it on its session thread instead of
    /// handing it to an executor thread and back, which saves two thread wake-ups.
    /// The default is false: when in doubt, run on the executor.
    fn runs_inline(&self, _req: &Request) -> bool {
        false
    }

    /// Whether the service can take requests now (e.g. its gateway is connected). A worker
    /// withdraws an unavailable service from the broker until it is available again.
    fn available(&self) -> bool {
        true
    }
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Result<Vec<u8>, HandlerError> + Send + Sync + 'static,
{
    fn handle(&self, req: &Request) -> Result<Vec<u8>, HandlerError> {
        self(req)
    }
}
