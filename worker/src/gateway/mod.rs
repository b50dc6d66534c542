//! The gateway layer: the [`Gateway`] trait a trading-gateway session implements, the
//! [`EventSink`] through which it pushes events, and [`GatewayService`], the adapter that
//! serves a gateway as a worker [`Handler`] (service name = gateway name, e.g. `SIM`).

pub mod service;
pub mod sim;
pub mod sink;

use std::fmt;

use tradeplex_proto::model::{
    Account, Bar, CancelRequest, Contract, HistoryRequest, Order, OrderId, OrderRequest, Position,
    SubscribeRequest, SymbolRequest, Tick, Trade,
};
use tradeplex_proto::WorkerId;

use crate::handler::HandlerError;

pub use service::GatewayService;
pub use sink::{EventSink, OutEvent};

/// A gateway's connection to its exchange or broker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Not connected; requests are refused.
    Disconnected,
    /// Connected; requests are served.
    Connected,
    /// Lost and trying again; requests are refused.
    Reconnecting,
}

impl ConnectionState {
    /// The value of the `tradeplex_gateway_connected` gauge: 0, 1 or 2.
    pub fn gauge(self) -> i64 {
        match self {
            ConnectionState::Disconnected => 0,
            ConnectionState::Connected => 1,
            ConnectionState::Reconnecting => 2,
        }
    }

    /// Stable lower-case name (logs, `log.*` events, replies).
    pub fn name(self) -> &'static str {
        match self {
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a gateway call failed. Order rejects are *not* errors: an exchange's reject is an
/// [`Order`] with status `rejected` and a reason, as the exchange would report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request cannot be understood (wire code `bad_request`).
    #[error("{0}")]
    Invalid(String),
    /// Refused without doing anything — e.g. the gateway is down (wire code `unavailable`,
    /// which lets the broker try another worker).
    #[error("{0}")]
    Unavailable(String),
    /// A business failure: unknown order, unknown symbol, nothing to cancel… (`worker_error`).
    #[error("{0}")]
    Failed(String),
    /// `exchange` `""` names no single contract: the symbol is listed on several exchanges
    /// (wire code `bad_request`: the request must name one).
    #[error("{symbol} is listed on {}: name the exchange", exchanges.join(", "))]
    Ambiguous {
        /// The symbol asked for.
        symbol: String,
        /// The exchanges it is listed on.
        exchanges: Vec<String>,
    },
}

impl From<GatewayError> for HandlerError {
    fn from(e: GatewayError) -> HandlerError {
        match e {
            GatewayError::Invalid(m) => HandlerError::bad_request(m),
            GatewayError::Unavailable(m) => HandlerError::unavailable(m),
            GatewayError::Failed(m) => HandlerError::failed(m),
            e @ GatewayError::Ambiguous { .. } => HandlerError::bad_request(e.to_string()),
        }
    }
}

/// What a gateway gets when it connects.
#[derive(Clone)]
pub struct GatewayContext {
    /// The worker holding this session (order ids carry it: `OrderId::new(name, worker, n)`).
    pub worker: WorkerId,
    /// Where to push events; cheap to clone, never blocks.
    pub sink: EventSink,
}

/// A trading-gateway session (vn.py's `BaseGateway`), shared by the worker's executor
/// threads: every method may be called from several threads at once.
///
/// Calls return what the exchange answered at once; everything that happens later
/// (status changes, fills, position and account changes, ticks) arrives as events pushed
/// into the [`EventSink`] given to [`Gateway::connect`].
pub trait Gateway: Send + Sync + 'static {
    /// The gateway's name, which is also the service name (e.g. `SIM`).
    fn name(&self) -> &str;

    /// Starts the session. May return before the connection is up: [`Gateway::state`]
    /// tells when it is. Called once, before any other call but `name`/`state`.
    fn connect(&self, ctx: GatewayContext) -> Result<(), GatewayError>;

    /// Ends the session and stops every thread the gateway started.
    fn close(&self);

    /// The connection state now. The worker offers the service only while `Connected`.
    fn state(&self) -> ConnectionState;

    /// Starts market data for a symbol (ticks on `tick.<gateway>.<symbol>`).
    fn subscribe(&self, req: &SubscribeRequest) -> Result<Contract, GatewayError>;

    /// Places an order. Returns the order as the exchange first acknowledged it: status
    /// `submitting` or further, `rejected` with a reason when refused.
    fn send_order(&self, req: &OrderRequest) -> Result<Order, GatewayError>;

    /// Cancels an order. Returns the order after the cancel.
    fn cancel_order(&self, req: &CancelRequest) -> Result<Order, GatewayError>;

    /// Funds of one account, or of all when `account` is empty.
    fn query_account(&self, account: &str) -> Result<Vec<Account>, GatewayError>;

    /// Positions of one account, or of all when `account` is empty.
    fn query_position(&self, account: &str) -> Result<Vec<Position>, GatewayError>;

    /// One order by id, active or final.
    fn query_order(&self, order_id: &OrderId) -> Result<Order, GatewayError>;

    /// Active orders of one account, or of all when `account` is empty.
    fn query_orders(&self, account: &str) -> Result<Vec<Order>, GatewayError>;

    /// Today's trades of one account, or of all when `account` is empty, oldest first
    /// (what a strategy needs to recover after a restart).
    fn query_trades(&self, account: &str) -> Result<Vec<Trade>, GatewayError>;

    /// Every tradable contract.
    fn query_contracts(&self) -> Result<Vec<Contract>, GatewayError>;

    /// One contract (`exchange` `""`: the only one with that symbol, else
    /// [`GatewayError::Ambiguous`]).
    fn query_contract(&self, req: &SymbolRequest) -> Result<Contract, GatewayError>;

    /// The last tick the gateway has for a symbol; `Failed("no tick for <symbol>…")`
    /// before the first.
    fn query_tick(&self, req: &SymbolRequest) -> Result<Tick, GatewayError>;

    /// Historical bars.
    fn query_history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, GatewayError>;

    /// True if operation `op` (a request body's `op` field) is cheap and never blocks on
    /// I/O or on a lock held for long, so the worker may run it on its session thread
    /// instead of handing it to an executor thread and back (two thread wake-ups, about
    /// half of a SIM order's round trip on a 2-core machine). A gateway talking to a real
    /// exchange over the network says false, the default.
    fn runs_inline(&self, op: &str) -> bool {
        let _ = op;
        false
    }

    /// A gateway-specific operation: `op` is the request body's `op` field when it is none
    /// of [`tradeplex_proto::model::GatewayRequest`]'s, `body` the whole MessagePack body.
    /// Returns `None` when the gateway has no such operation (the caller answers
    /// `bad_request`), else the reply body (encode with `rmp_serde::to_vec_named`).
    fn extension(&self, op: &str, body: &[u8]) -> Option<Result<Vec<u8>, GatewayError>> {
        let _ = (op, body);
        None
    }
}
