//! The trading data model — the objects a vn.py user knows (Tick, Order, Trade, Position,
//! Account, Contract, Bar, Log) and the gateway requests — as serde types sent as
//! MessagePack maps with field names. Enums travel as snake_case strings. Times are Unix
//! epoch nanoseconds (`*_ns`). Prices and volumes are `f64` as in vn.py.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::{ProtoError, WorkerId};

/// Direction (vn.py `Direction`); `buy` = long, `sell` = short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Buy.
    Long,
    /// Sell.
    Short,
    /// A net position (venues that net long and short, vn.py `Direction.NET`); not an
    /// order direction.
    Net,
}

/// Open/close flag for futures (vn.py `Offset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offset {
    /// Not applicable (spot, equities) — net positions.
    #[default]
    None,
    /// Open a position.
    Open,
    /// Close a position.
    Close,
    /// Close today's position.
    CloseToday,
    /// Close yesterday's position.
    CloseYesterday,
}

/// Order type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    /// Rests in the book at its price.
    #[default]
    Limit,
    /// Takes whatever the book offers now; the rest is cancelled.
    Market,
    /// A stop order (vn.py `OrderType.STOP`): becomes active when the price reaches it.
    Stop,
    /// Fill and kill: fills what it can at its price now, cancels the rest.
    Fak,
    /// Fill or kill: fills completely at its price now, or not at all.
    Fok,
    /// Request for quote (vn.py `OrderType.RFQ`).
    Rfq,
    /// ETF creation/redemption (vn.py `OrderType.ETF`).
    Etf,
}

/// Order status as an exchange reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Sent, not yet acknowledged.
    Submitting,
    /// Accepted, resting, nothing filled.
    NotTraded,
    /// Partly filled, rest resting.
    PartTraded,
    /// Completely filled (final).
    AllTraded,
    /// Cancelled, possibly after partial fills (final).
    Cancelled,
    /// Refused; `reason` says why (final).
    Rejected,
}

impl Status {
    /// True for statuses after which the order never changes.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::AllTraded | Status::Cancelled | Status::Rejected
        )
    }

    /// Position in the life of an order: submitting < not_traded < part_traded < final.
    pub fn stage(self) -> u8 {
        match self {
            Status::Submitting => 0,
            Status::NotTraded => 1,
            Status::PartTraded => 2,
            Status::AllTraded | Status::Cancelled | Status::Rejected => 3,
        }
    }

    /// True while the order can still fill or be cancelled.
    pub fn is_active(self) -> bool {
        !self.is_final()
    }
}

/// Product class of a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    /// Futures.
    Futures,
    /// Equity.
    Equity,
    /// Spot / crypto.
    Spot,
    /// Options.
    Option,
    /// Index.
    Index,
    /// Foreign exchange.
    Forex,
    /// Exchange-traded fund.
    Etf,
    /// Bond.
    Bond,
    /// Warrant.
    Warrant,
    /// Spread.
    Spread,
    /// Fund.
    Fund,
    /// Contract for difference.
    Cfd,
    /// Swap (e.g. a perpetual swap).
    Swap,
}

/// Call or put (option contracts, vn.py `OptionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionType {
    /// Call.
    Call,
    /// Put.
    Put,
}

/// Bar interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Daily,
    /// One week.
    Weekly,
    /// Tick data (vn.py `Interval.TICK`): no fixed length.
    Tick,
}

impl Interval {
    /// Length in nanoseconds; `None` for `tick`, which has no fixed length.
    pub fn nanos(self) -> Option<u64> {
        match self {
            Interval::Minute => Some(60_000_000_000),
            Interval::Hour => Some(3_600_000_000_000),
            Interval::Daily => Some(86_400_000_000_000),
            Interval::Weekly => Some(7 * 86_400_000_000_000),
            Interval::Tick => None,
        }
    }
}

/// An order id that says where it belongs: `<gateway>.<worker uuid>.<n>`, e.g.
/// `SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.17`, so a cancel can be routed to the worker
/// (gateway session) that placed the order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub String);

impl OrderId {
    /// Builds the id of order `n` placed by `worker` on `gateway`.
    pub fn new(gateway: &str, worker: WorkerId, n: u64) -> OrderId {
        OrderId(format!("{gateway}.{worker}.{n}"))
    }

    /// The gateway (service) that placed the order.
    pub fn gateway(&self) -> Option<&str> {
        self.0.split('.').next().filter(|g| !g.is_empty())
    }

    /// The worker that placed the order.
    pub fn worker(&self) -> Option<WorkerId> {
        self.0.split('.').nth(1)?.parse().ok()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for OrderId {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = OrderId(s.to_string());
        match (
            id.gateway(),
            id.worker(),
            s.rsplit('.').next().map(str::parse::<u64>),
        ) {
            (Some(_), Some(_), Some(Ok(_))) => Ok(id),
            _ => Err(ProtoError::BadField {
                field: "order_id",
                reason: format!("{s:?} is not GATEWAY.WORKER_UUID.N"),
            }),
        }
    }
}

/// A tradable instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    /// Symbol, e.g. `IF2412`.
    pub symbol: String,
    /// Exchange, a vn.py `Exchange` value, e.g. `CFFEX`.
    pub exchange: String,
    /// Gateway name.
    pub gateway: String,
    /// Display name.
    pub name: String,
    /// Product class.
    pub product: Product,
    /// Contract multiplier.
    pub size: f64,
    /// Minimum price increment.
    pub pricetick: f64,
    /// Minimum order volume.
    pub min_volume: f64,
    /// Maximum order volume, when the venue has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_volume: Option<f64>,
    /// The gateway handles stop orders itself (else vn.py keeps them local).
    #[serde(default)]
    pub stop_supported: bool,
    /// Positions are net (one per symbol) rather than long and short apart.
    #[serde(default)]
    pub net_position: bool,
    /// `query_history` answers for this contract.
    #[serde(default)]
    pub history_data: bool,
    /// Option strike price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_strike: Option<f64>,
    /// Option underlying symbol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_underlying: Option<String>,
    /// Call or put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_type: Option<OptionType>,
    /// Option listing time, Unix ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_listed_ns: Option<u64>,
    /// Option expiry time, Unix ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_expiry_ns: Option<u64>,
    /// Option portfolio (vn.py `option_portfolio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_portfolio: Option<String>,
    /// Option index within its portfolio (vn.py `option_index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_index: Option<String>,
}

/// Market data snapshot with a 5-level book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Symbol.
    pub symbol: String,
    /// Exchange.
    pub exchange: String,
    /// Gateway.
    pub gateway: String,
    /// Exchange time, Unix ns.
    pub datetime_ns: u64,
    /// The contract's display name.
    #[serde(default)]
    pub name: String,
    /// Last trade price.
    pub last_price: f64,
    /// Last trade volume.
    pub last_volume: f64,
    /// Cumulative volume today.
    pub volume: f64,
    /// Cumulative turnover today.
    pub turnover: f64,
    /// Open interest.
    pub open_interest: f64,
    /// Today's open.
    pub open_price: f64,
    /// Today's high.
    pub high_price: f64,
    /// Today's low.
    pub low_price: f64,
    /// Previous close.
    pub pre_close: f64,
    /// Highest price allowed today (0: the venue has no price limits).
    #[serde(default)]
    pub limit_up: f64,
    /// Lowest price allowed today (0: the venue has no price limits).
    #[serde(default)]
    pub limit_down: f64,
    /// When the gateway received the tick, Unix ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localtime_ns: Option<u64>,
    /// Bid prices, best first (5 levels).
    pub bid_price: [f64; 5],
    /// Bid volumes.
    pub bid_volume: [f64; 5],
    /// Ask prices, best first (5 levels).
    pub ask_price: [f64; 5],
    /// Ask volumes.
    pub ask_volume: [f64; 5],
}

/// A candlestick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    /// Symbol.
    pub symbol: String,
    /// Exchange.
    pub exchange: String,
    /// Gateway.
    pub gateway: String,
    /// Interval.
    pub interval: Interval,
    /// Bar open time, Unix ns.
    pub datetime_ns: u64,
    /// Open.
    pub open_price: f64,
    /// High.
    pub high_price: f64,
    /// Low.
    pub low_price: f64,
    /// Close.
    pub close_price: f64,
    /// Volume.
    pub volume: f64,
    /// Turnover.
    pub turnover: f64,
    /// Open interest at close.
    pub open_interest: f64,
}

/// An order and its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Id (routes cancels).
    pub order_id: OrderId,
    /// Symbol.
    pub symbol: String,
    /// Exchange.
    pub exchange: String,
    /// Gateway.
    pub gateway: String,
    /// Account.
    pub account: String,
    /// Direction.
    pub direction: Direction,
    /// Offset.
    pub offset: Offset,
    /// Type.
    pub order_type: OrderType,
    /// Limit price (0 for market orders).
    pub price: f64,
    /// Ordered volume.
    pub volume: f64,
    /// Filled volume.
    pub traded: f64,
    /// Status.
    pub status: Status,
    /// Why it was rejected or cancelled, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time of the last change, Unix ns.
    pub datetime_ns: u64,
    /// The client's own tag, echoed back.
    #[serde(default)]
    pub reference: String,
}

impl Order {
    /// True if `self` is a later state of the same order than `other`: more filled, or as
    /// filled and further along. Events can arrive after a reply that already carried a
    /// later state; this tells which to keep.
    pub fn supersedes(&self, other: &Order) -> bool {
        self.order_id == other.order_id
            && (self.traded > other.traded
                || (self.traded == other.traded && self.status.stage() > other.status.stage()))
    }
}

/// A fill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// Trade id.
    pub trade_id: String,
    /// The order filled.
    pub order_id: OrderId,
    /// Symbol.
    pub symbol: String,
    /// Exchange.
    pub exchange: String,
    /// Gateway.
    pub gateway: String,
    /// Account.
    pub account: String,
    /// Direction.
    pub direction: Direction,
    /// Offset.
    pub offset: Offset,
    /// Fill price.
    pub price: f64,
    /// Fill volume.
    pub volume: f64,
    /// Fill time, Unix ns.
    pub datetime_ns: u64,
}

/// A position in one symbol and direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Symbol.
    pub symbol: String,
    /// Exchange.
    pub exchange: String,
    /// Gateway.
    pub gateway: String,
    /// Account.
    pub account: String,
    /// Long or short.
    pub direction: Direction,
    /// Volume held.
    pub volume: f64,
    /// Volume frozen by closing orders.
    pub frozen: f64,
    /// Average entry price.
    pub price: f64,
    /// Mark-to-market profit and loss.
    pub pnl: f64,
    /// Yesterday's volume.
    pub yd_volume: f64,
}

/// Account funds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Account id.
    pub account: String,
    /// Gateway.
    pub gateway: String,
    /// Balance (cash plus realised P&L).
    pub balance: f64,
    /// Funds held by open orders.
    pub frozen: f64,
    /// Balance minus frozen.
    pub available: f64,
}

/// A gateway log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// Gateway.
    pub gateway: String,
    /// Level (`info`, `warn`, `error`).
    pub level: String,
    /// Message.
    pub msg: String,
    /// Time, Unix ns.
    pub datetime_ns: u64,
}

/// Start market data for a symbol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// Symbol.
    pub symbol: String,
    /// Exchange (may be empty: the gateway's only contract with that symbol).
    #[serde(default)]
    pub exchange: String,
}

/// Names one instrument: `exchange` `""` means the gateway's only contract with that
/// symbol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolRequest {
    /// Symbol.
    pub symbol: String,
    /// Exchange (may be empty).
    #[serde(default)]
    pub exchange: String,
}

/// Place an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// Symbol.
    pub symbol: String,
    /// Exchange (may be empty).
    #[serde(default)]
    pub exchange: String,
    /// Direction.
    pub direction: Direction,
    /// Type.
    #[serde(default)]
    pub order_type: OrderType,
    /// Volume.
    pub volume: f64,
    /// Limit price (ignored for market orders).
    #[serde(default)]
    pub price: f64,
    /// Offset.
    #[serde(default)]
    pub offset: Offset,
    /// Account (may be empty: the gateway's default account).
    #[serde(default)]
    pub account: String,
    /// Client tag, echoed in the order.
    #[serde(default)]
    pub reference: String,
}

/// Cancel an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The order.
    pub order_id: OrderId,
    /// Symbol (optional help for gateways that need it).
    #[serde(default)]
    pub symbol: String,
    /// Exchange.
    #[serde(default)]
    pub exchange: String,
}

/// Ask for historical bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// Symbol.
    pub symbol: String,
    /// Exchange.
    #[serde(default)]
    pub exchange: String,
    /// Bar interval.
    pub interval: Interval,
    /// First bar time, Unix ns.
    pub start_ns: u64,
    /// Last bar time (exclusive), Unix ns; 0 = now.
    #[serde(default)]
    pub end_ns: u64,
}

/// A request body for a gateway service (e.g. `SIM`): a map whose `op` field names the
/// operation, the other fields being that operation's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GatewayRequest {
    /// Start ticks for a symbol. Reply: [`Contract`]. Idempotent.
    Subscribe(SubscribeRequest),
    /// Place an order. Reply: [`Order`] (status `submitting` or already further). Not idempotent.
    SendOrder(OrderRequest),
    /// Cancel an order. Reply: [`Order`]. Not idempotent.
    CancelOrder(CancelRequest),
    /// Reply: `[Account]`. Idempotent.
    QueryAccount {
        /// One account, or all when empty.
        #[serde(default)]
        account: String,
    },
    /// Reply: `[Position]`. Idempotent.
    QueryPosition {
        /// One account, or all when empty.
        #[serde(default)]
        account: String,
    },
    /// Reply: one [`Order`]. Idempotent (answers "outcome unknown" after `worker_lost`).
    QueryOrder {
        /// The order.
        order_id: OrderId,
    },
    /// Reply: `[Order]` — active orders of an account (all accounts when empty). Idempotent.
    QueryOrders {
        /// Account filter.
        #[serde(default)]
        account: String,
    },
    /// Reply: `[Trade]` — today's trades of an account (all accounts when empty), oldest
    /// first. Idempotent.
    QueryTrades {
        /// Account filter.
        #[serde(default)]
        account: String,
    },
    /// Reply: `[Contract]`. Idempotent.
    QueryContracts,
    /// Reply: one [`Contract`]. Idempotent.
    QueryContract(SymbolRequest),
    /// Reply: the last [`Tick`] the gateway has for the symbol. Idempotent.
    QueryTick(SymbolRequest),
    /// Reply: `[Bar]`. Idempotent.
    QueryHistory(HistoryRequest),
}

impl GatewayRequest {
    /// Whether this operation may safely be executed more than once.
    pub fn idempotent(&self) -> bool {
        !matches!(
            self,
            GatewayRequest::SendOrder(_) | GatewayRequest::CancelOrder(_)
        )
    }
}

/// Event topics: `kind.<key>`; subscribe by prefix (`tick.SIM.`, `order.`, …).
pub mod topic {
    /// `tick.<gateway>.<symbol>`
    pub fn tick(gateway: &str, symbol: &str) -> String {
        format!("tick.{gateway}.{symbol}")
    }
    /// `order.<account>`
    pub fn order(account: &str) -> String {
        format!("order.{account}")
    }
    /// `trade.<account>`
    pub fn trade(account: &str) -> String {
        format!("trade.{account}")
    }
    /// `position.<account>`
    pub fn position(account: &str) -> String {
        format!("position.{account}")
    }
    /// `account.<account>`
    pub fn account(account: &str) -> String {
        format!("account.{account}")
    }
    /// `contract.<gateway>`
    pub fn contract(gateway: &str) -> String {
        format!("contract.{gateway}")
    }
    /// `log.<gateway>`
    pub fn log(gateway: &str) -> String {
        format!("log.{gateway}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_carry_their_worker() {
        let w = WorkerId::random();
        let id = OrderId::new("SIM", w, 17);
        assert_eq!(id.gateway(), Some("SIM"));
        assert_eq!(id.worker(), Some(w));
        assert_eq!(id.to_string().parse::<OrderId>().unwrap(), id);
        assert!("SIM.nope.1".parse::<OrderId>().is_err());
    }

    #[test]
    fn later_order_states_supersede_earlier_ones() {
        let mut o = Order {
            order_id: OrderId::new("SIM", WorkerId::random(), 1),
            symbol: "X".into(),
            exchange: "CFFEX".into(),
            gateway: "SIM".into(),
            account: "a".into(),
            direction: Direction::Long,
            offset: Offset::None,
            order_type: OrderType::Limit,
            price: 1.0,
            volume: 2.0,
            traded: 0.0,
            status: Status::Submitting,
            reason: None,
            datetime_ns: 0,
            reference: String::new(),
        };
        let submitting = o.clone();
        o.status = Status::NotTraded;
        assert!(o.supersedes(&submitting));
        assert!(
            !submitting.supersedes(&o),
            "an old event must not replace a newer reply"
        );
        let mut part = o.clone();
        part.traded = 1.0;
        part.status = Status::PartTraded;
        assert!(part.supersedes(&o));
        let mut other = part.clone();
        other.order_id = OrderId::new("SIM", WorkerId::random(), 2);
        assert!(!other.supersedes(&o));
    }

    #[test]
    fn gateway_requests_are_tagged_maps() {
        let req = GatewayRequest::SendOrder(OrderRequest {
            symbol: "IF2412".into(),
            exchange: String::new(),
            direction: Direction::Long,
            order_type: OrderType::Limit,
            volume: 2.0,
            price: 3900.0,
            offset: Offset::Open,
            account: "acct".into(),
            reference: String::new(),
        });
        let bytes = rmp_serde::to_vec_named(&req).unwrap();
        let back: GatewayRequest = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, req);
        assert!(!back.idempotent());
        // Another language would send exactly this map:
        let v: rmpv::Value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let map = v.as_map().unwrap();
        assert!(map
            .iter()
            .any(|(k, v)| k.as_str() == Some("op") && v.as_str() == Some("send_order")));
        assert!(map
            .iter()
            .any(|(k, v)| k.as_str() == Some("direction") && v.as_str() == Some("long")));
        let q = GatewayRequest::QueryContracts;
        let back: GatewayRequest =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&q).unwrap()).unwrap();
        assert_eq!(back, q);
    }

    #[test]
    fn objects_from_older_peers_decode_and_optional_fields_stay_off_the_wire() {
        // A Contract and a Tick as a peer before the vn.py fields sent them.
        let old_contract = serde_json::json!({
            "symbol": "IF2412", "exchange": "CFFEX", "gateway": "SIM", "name": "IF",
            "product": "futures", "size": 300.0, "pricetick": 0.2, "min_volume": 1.0
        });
        let c: Contract =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&old_contract).unwrap()).unwrap();
        assert!(!c.history_data && !c.stop_supported && !c.net_position);
        assert_eq!((c.max_volume, c.option_type), (None, None));
        let bytes = rmp_serde::to_vec_named(&c).unwrap();
        let v: rmpv::Value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let keys: Vec<&str> = v
            .as_map()
            .unwrap()
            .iter()
            .filter_map(|(k, _)| k.as_str())
            .collect();
        assert!(keys.contains(&"history_data"));
        assert!(!keys
            .iter()
            .any(|k| k.starts_with("option_") || *k == "max_volume"));
        let option = Contract {
            option_type: Some(OptionType::Put),
            option_strike: Some(3800.0),
            product: Product::Option,
            ..c
        };
        let back: Contract =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&option).unwrap()).unwrap();
        assert_eq!(back, option);
        let five = [1.0; 5];
        let old_tick = serde_json::json!({
            "symbol": "IF2412", "exchange": "CFFEX", "gateway": "SIM", "datetime_ns": 1,
            "last_price": 1.0, "last_volume": 1.0, "volume": 1.0, "turnover": 1.0,
            "open_interest": 0.0, "open_price": 1.0, "high_price": 1.0, "low_price": 1.0,
            "pre_close": 1.0, "bid_price": five, "bid_volume": five,
            "ask_price": five, "ask_volume": five
        });
        let t: Tick = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old_tick).unwrap()).unwrap();
        assert_eq!((t.limit_up, t.limit_down, t.localtime_ns), (0.0, 0.0, None));
        assert_eq!(t.name, "");
    }

    #[test]
    fn enum_members_travel_as_vnpy_member_names() {
        let names = |v: &[serde_json::Value]| -> Vec<String> {
            v.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(
            names(&[
                serde_json::to_value(Direction::Net).unwrap(),
                serde_json::to_value(OrderType::Rfq).unwrap(),
                serde_json::to_value(Product::Cfd).unwrap(),
                serde_json::to_value(Interval::Weekly).unwrap(),
                serde_json::to_value(OptionType::Call).unwrap(),
            ]),
            ["net", "rfq", "cfd", "weekly", "call"]
        );
        assert_eq!(Interval::Weekly.nanos(), Some(7 * 86_400_000_000_000));
        assert_eq!(Interval::Tick.nanos(), None);
        for op in ["query_trades", "query_contracts"] {
            let body = rmp_serde::to_vec_named(&serde_json::json!({"op": op})).unwrap();
            let req: GatewayRequest = rmp_serde::from_slice(&body).unwrap();
            assert!(req.idempotent());
        }
        let body =
            rmp_serde::to_vec_named(&serde_json::json!({"op": "query_tick", "symbol": "AAPL"}))
                .unwrap();
        assert_eq!(
            rmp_serde::from_slice::<GatewayRequest>(&body).unwrap(),
            GatewayRequest::QueryTick(SymbolRequest {
                symbol: "AAPL".into(),
                exchange: String::new()
            })
        );
    }
}
