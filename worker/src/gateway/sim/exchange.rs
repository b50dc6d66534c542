//! The simulated exchange's state and rules — markets, orders, matching, accounts — as
//! plain data driven by plain methods that take the time and return the events to
//! publish. No threads, no sockets: unit-tested directly.
//!
//! Matching: an order takes liquidity from the current tick's book, best level first, at
//! its limit or better (a market order: any of the 5 visible levels), each level at most
//! once per tick (what this worker took is gone until the next tick). A limit order's
//! remainder rests and fills when a later tick's book crosses its price; `fak` and
//! `market` cancel their remainder; `fok` fills completely at once or is cancelled.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tradeplex_proto::model::{
    Account, CancelRequest, Contract, Direction, Offset, Order, OrderId, OrderRequest, OrderType,
    Position, Status, Tick, Trade,
};
use tradeplex_proto::WorkerId;

use super::account::Funds;
use super::book::Side;
use super::config::SimConfig;
use super::market::{Clock, Instrument, Market, TickIndex, DAY_NS};
use crate::gateway::GatewayError;

/// Final orders kept for `query_order` before the oldest are forgotten.
pub const KEEP_FINISHED: usize = 100_000;
/// Trades kept for `query_trades` before the oldest are forgotten.
pub const KEEP_TRADES: usize = 100_000;

/// Why a (symbol, exchange) pair names no single contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No contract has the symbol.
    UnknownSymbol(String),
    /// The symbol is listed, but not on that exchange.
    UnknownExchange {
        /// The symbol.
        symbol: String,
        /// The exchange asked for.
        exchange: String,
        /// Where the symbol is listed.
        listed: Vec<String>,
    },
    /// `exchange` `""` and the symbol is listed on several exchanges.
    Ambiguous {
        /// The symbol.
        symbol: String,
        /// Its exchanges.
        exchanges: Vec<String>,
    },
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::UnknownSymbol(s) => write!(f, "unknown symbol {s:?}"),
            Unresolved::UnknownExchange {
                symbol,
                exchange,
                listed,
            } => write!(
                f,
                "unknown exchange {exchange:?} for {symbol} (listed on {})",
                listed.join(", ")
            ),
            Unresolved::Ambiguous { symbol, exchanges } => write!(
                f,
                "{symbol} is listed on {}: name the exchange",
                exchanges.join(", ")
            ),
        }
    }
}

impl From<Unresolved> for GatewayError {
    fn from(u: Unresolved) -> GatewayError {
        match u {
            Unresolved::Ambiguous { symbol, exchanges } => {
                GatewayError::Ambiguous { symbol, exchanges }
            }
            other => GatewayError::Failed(other.to_string()),
        }
    }
}

/// The instrument `symbol` on `exchange` among `instruments`; `exchange` `""` means the
/// only one with that symbol.
pub fn resolve<'a>(
    instruments: impl IntoIterator<Item = &'a Arc<Instrument>>,
    symbol: &str,
    exchange: &str,
) -> Result<&'a Arc<Instrument>, Unresolved> {
    let listed: Vec<&'a Arc<Instrument>> = instruments
        .into_iter()
        .filter(|i| i.symbol() == symbol)
        .collect();
    let exchanges = || {
        let mut v: Vec<String> = listed.iter().map(|i| i.contract.exchange.clone()).collect();
        v.sort();
        v
    };
    if exchange.is_empty() {
        return match listed.as_slice() {
            [] => Err(Unresolved::UnknownSymbol(symbol.to_string())),
            [one] => Ok(one),
            _ => Err(Unresolved::Ambiguous {
                symbol: symbol.to_string(),
                exchanges: exchanges(),
            }),
        };
    }
    match listed.iter().find(|i| i.contract.exchange == exchange) {
        Some(i) => Ok(i),
        None if listed.is_empty() => Err(Unresolved::UnknownSymbol(symbol.to_string())),
        None => Err(Unresolved::UnknownExchange {
            symbol: symbol.to_string(),
            exchange: exchange.to_string(),
            listed: exchanges(),
        }),
    }
}

/// What the exchange tells the outside world.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// An order changed.
    Order(Order),
    /// A fill.
    Trade(Trade),
    /// A holding changed.
    Position(Position),
    /// An account's funds changed.
    Account(Account),
}

/// The wire name of an order type (`fak`).
pub fn type_name(t: OrderType) -> &'static str {
    match t {
        OrderType::Limit => "limit",
        OrderType::Market => "market",
        OrderType::Stop => "stop",
        OrderType::Fak => "fak",
        OrderType::Fok => "fok",
        OrderType::Rfq => "rfq",
        OrderType::Etf => "etf",
    }
}

/// The stable name of a status (as on the wire).
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Submitting => "submitting",
        Status::NotTraded => "not_traded",
        Status::PartTraded => "part_traded",
        Status::AllTraded => "all_traded",
        Status::Cancelled => "cancelled",
        Status::Rejected => "rejected",
    }
}

#[derive(Debug, Clone)]
struct Entry {
    order: Order,
    /// `symbol.EXCHANGE` of its market.
    vt: String,
    /// Buy or sell (`None` only for a rejected `net` order).
    side: Option<Side>,
    /// Limit in priceticks; `None` for market orders.
    limit: Option<i64>,
    /// Lots still to fill that close the opposite holding (reserved there).
    close_left: f64,
    /// Lots still to fill that open or add to a holding.
    open_left: f64,
    /// Price per lot the margin of `open_left` is reserved at.
    freeze_price: f64,
}

/// How an accepted order will fill: the closing part and the opening part.
struct Plan {
    side: Side,
    limit: Option<i64>,
    close: f64,
    open: f64,
    freeze_price: f64,
}

/// The simulated exchange of one worker: the shared market, this worker's orders and
/// accounts.
pub struct Exchange {
    gateway: String,
    worker: WorkerId,
    clock: Clock,
    markets: BTreeMap<String, Market>,
    accounts: BTreeMap<String, Funds>,
    default_account: String,
    trades: VecDeque<Trade>,
    orders: HashMap<u64, Entry>,
    active: BTreeSet<u64>,
    finished: VecDeque<u64>,
    next_order: u64,
    next_trade: u64,
}

impl Exchange {
    /// The exchange at `now_ns` for `worker`'s orders (ids `<gateway>.<worker>.<n>`).
    pub fn new(
        config: &SimConfig,
        instruments: &[Arc<Instrument>],
        gateway: &str,
        worker: WorkerId,
        now_ns: u64,
    ) -> Exchange {
        let clock = Clock::new(config.tick_interval_ms);
        Exchange {
            gateway: gateway.to_string(),
            worker,
            clock,
            markets: instruments
                .iter()
                .map(|i| (i.vt_symbol.clone(), Market::new(i.clone(), &clock, now_ns)))
                .collect(),
            accounts: config
                .accounts
                .iter()
                .map(|a| (a.account.clone(), Funds::new(a.cash)))
                .collect(),
            default_account: config
                .accounts
                .first()
                .map(|a| a.account.clone())
                .unwrap_or_default(),
            orders: HashMap::new(),
            active: BTreeSet::new(),
            finished: VecDeque::new(),
            trades: VecDeque::new(),
            next_order: 1,
            next_trade: 1,
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The default account's name.
    pub fn default_account(&self) -> &str {
        &self.default_account
    }

    /// Moves every market to the tick current at `now_ns`, one tick at a time, filling
    /// resting orders whose price a book crosses. Returns the `symbol.EXCHANGE`s whose tick
    /// changed.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<SimEvent>) -> Vec<String> {
        let target = self.clock.index_at(now_ns);
        let symbols: Vec<String> = self
            .markets
            .iter()
            .filter(|(_, m)| m.index() < target)
            .map(|(s, _)| s.clone())
            .collect();
        for symbol in &symbols {
            while let Some(m) = self.markets.get_mut(symbol).filter(|m| m.index() < target) {
                m.step(&self.clock);
                let t = self.clock.time_of(m.index());
                if self.active.is_empty() {
                    continue;
                }
                let resting: Vec<u64> = self
                    .active
                    .iter()
                    .copied()
                    .filter(|n| self.orders.get(n).is_some_and(|e| &e.vt == symbol))
                    .collect();
                for n in resting {
                    self.match_order(n, t, out);
                }
            }
        }
        symbols
    }

    /// The index of the current tick of `vt` (`symbol.EXCHANGE`).
    pub fn index(&self, vt: &str) -> Option<TickIndex> {
        self.markets.get(vt).map(Market::index)
    }

    /// The current tick of `vt` (`symbol.EXCHANGE`).
    pub fn tick(&self, vt: &str) -> Option<Tick> {
        self.markets.get(vt).map(|m| m.tick(&self.clock))
    }

    /// The contract of `vt` (`symbol.EXCHANGE`).
    pub fn contract(&self, vt: &str) -> Option<&Contract> {
        self.markets.get(vt).map(|m| &m.inst.contract)
    }

    /// The market of `symbol` on `exchange` (`""`: its only one).
    pub fn resolve(&self, symbol: &str, exchange: &str) -> Result<&Market, Unresolved> {
        let inst = resolve(self.markets.values().map(|m| &m.inst), symbol, exchange)?;
        self.markets
            .get(&inst.vt_symbol)
            .ok_or_else(|| Unresolved::UnknownSymbol(symbol.to_string()))
    }

    /// Every contract.
    pub fn contracts(&self) -> Vec<Contract> {
        self.markets
            .values()
            .map(|m| m.inst.contract.clone())
            .collect()
    }

    /// Places an order at `now_ns`: the returned order is its state after the exchange
    /// processed it (rejected, cancelled, resting or already filled). An `exchange` `""`
    /// that fits several contracts is refused before the order exists
    /// ([`GatewayError::Ambiguous`]); every other refusal is a rejected order.
    pub fn send_order(
        &mut self,
        req: &OrderRequest,
        now_ns: u64,
        out: &mut Vec<SimEvent>,
    ) -> Result<Order, GatewayError> {
        let resolved = match self.resolve(&req.symbol, &req.exchange) {
            Ok(m) => Ok(m.inst.clone()),
            Err(e @ Unresolved::Ambiguous { .. }) => return Err(e.into()),
            Err(e) => Err(e.to_string()),
        };
        let n = self.next_order;
        self.next_order += 1;
        let account = if req.account.is_empty() {
            self.default_account.clone()
        } else {
            req.account.clone()
        };
        let market_order = req.order_type == OrderType::Market;
        let (vt, exchange) = match &resolved {
            Ok(i) => (i.vt_symbol.clone(), i.contract.exchange.clone()),
            Err(_) => (String::new(), req.exchange.clone()),
        };
        let mut order = Order {
            order_id: OrderId::new(&self.gateway, self.worker, n),
            symbol: req.symbol.clone(),
            exchange,
            gateway: self.gateway.clone(),
            account,
            direction: req.direction,
            offset: req.offset,
            order_type: req.order_type,
            price: if market_order { 0.0 } else { req.price },
            volume: req.volume,
            traded: 0.0,
            status: Status::Submitting,
            reason: None,
            datetime_ns: now_ns,
            reference: req.reference.clone(),
        };
        let known_account = self.accounts.contains_key(&order.account);
        if known_account {
            out.push(SimEvent::Order(order.clone()));
        }
        let plan = match resolved.and_then(|inst| self.check(req, &inst, &order.account)) {
            Ok(p) => p,
            Err(reason) => {
                order.status = Status::Rejected;
                order.reason = Some(reason);
                if known_account {
                    out.push(SimEvent::Order(order.clone()));
                }
                self.orders.insert(
                    n,
                    Entry {
                        order: order.clone(),
                        vt,
                        side: Side::of(req.direction),
                        limit: None,
                        close_left: 0.0,
                        open_left: 0.0,
                        freeze_price: 0.0,
                    },
                );
                self.finish(n);
                return Ok(order);
            }
        };
        order.status = Status::NotTraded;
        let entry = Entry {
            order: order.clone(),
            vt: vt.clone(),
            side: Some(plan.side),
            limit: plan.limit,
            close_left: plan.close,
            open_left: plan.open,
            freeze_price: plan.freeze_price,
        };
        let closes = plan.side.closes();
        if let Some(f) = self.accounts.get_mut(&order.account) {
            f.reserve(&vt, closes, plan.close);
        }
        self.orders.insert(n, entry);
        self.active.insert(n);
        out.push(SimEvent::Order(order.clone()));
        if plan.close > 0.0 {
            self.push_position(&order.account, &vt, closes, out);
        }
        self.push_account(&order.account, out);

        let fillable = self
            .markets
            .get(&vt)
            .map_or(0.0, |m| m.book().available(&m.taken, plan.side, plan.limit));
        match req.order_type {
            OrderType::Fok if fillable < req.volume => {
                let why = format!("fok: only {fillable} lots available at the limit now");
                self.cancel_entry(n, why, now_ns, out);
            }
            OrderType::Limit => self.match_order(n, now_ns, out),
            _ => {
                self.match_order(n, now_ns, out);
                if self.active.contains(&n) {
                    let why = match req.order_type {
                        OrderType::Market => "market: remainder cancelled (book depth exhausted)",
                        _ => "fak: remainder cancelled",
                    };
                    self.cancel_entry(n, why.into(), now_ns, out);
                }
            }
        }
        Ok(self.orders.get(&n).map_or(order, |e| e.order.clone()))
    }

    /// Why the exchange refuses `req` on `inst` for `account`, or how it will fill.
    fn check(&self, req: &OrderRequest, inst: &Instrument, account: &str) -> Result<Plan, String> {
        let market = self
            .markets
            .get(&inst.vt_symbol)
            .ok_or_else(|| format!("unknown symbol {:?}", req.symbol))?;
        let funds = self
            .accounts
            .get(account)
            .ok_or_else(|| format!("unknown account {account:?}"))?;
        if !req.volume.is_finite() || req.volume <= 0.0 || req.volume.fract() != 0.0 {
            return Err(format!(
                "bad volume {}: must be a positive whole number of lots",
                req.volume
            ));
        }
        let side = Side::of(req.direction).ok_or_else(|| {
            "bad direction net: an order is long (buy) or short (sell)".to_string()
        })?;
        if !matches!(
            req.order_type,
            OrderType::Limit | OrderType::Market | OrderType::Fak | OrderType::Fok
        ) {
            return Err(format!(
                "unsupported order type {}: SIM takes limit, market, fak and fok",
                type_name(req.order_type)
            ));
        }
        let inst = &market.inst;
        let book = market.book();
        let (limit, freeze_price) = if req.order_type == OrderType::Market {
            // Margin is reserved at the dearest price the order could pay in the book.
            let dearest = match side {
                Side::Buy => book.ask[book.ask.len() - 1],
                Side::Sell => book.bid[0],
            };
            (None, inst.price(dearest))
        } else {
            let ticks = inst.ticks_of(req.price).ok_or_else(|| {
                format!(
                    "bad price {}: must be a positive multiple of the pricetick {}",
                    req.price, inst.contract.pricetick
                )
            })?;
            if let Some((down, up)) = market.limits() {
                if ticks > up || ticks < down {
                    return Err(format!(
                        "price outside the limits: {} is not within {} (limit_down) - {} (limit_up)",
                        req.price,
                        inst.price(down),
                        inst.price(up)
                    ));
                }
            }
            (Some(ticks), inst.price(ticks))
        };
        let closable = funds.closable(&inst.vt_symbol, side.closes());
        let close = match req.offset {
            Offset::None => closable.min(req.volume),
            Offset::Open => 0.0,
            Offset::Close | Offset::CloseToday | Offset::CloseYesterday => {
                if closable < req.volume {
                    return Err(format!(
                        "insufficient position to close: {closable} lots closable, {} wanted",
                        req.volume
                    ));
                }
                req.volume
            }
        };
        let open = req.volume - close;
        let needed = inst.margin(freeze_price, open);
        let available = self.available(account);
        if needed > available {
            return Err(format!(
                "insufficient funds: margin {needed:.2} needed, {available:.2} available"
            ));
        }
        Ok(Plan {
            side,
            limit,
            close,
            open,
            freeze_price,
        })
    }

    /// Margin reserved by an active order.
    fn order_margin(&self, e: &Entry) -> f64 {
        self.markets
            .get(&e.vt)
            .map_or(0.0, |m| m.inst.margin(e.freeze_price, e.open_left))
    }

    fn frozen(&self, account: &str) -> f64 {
        let orders: f64 = self
            .active
            .iter()
            .filter_map(|n| self.orders.get(n))
            .filter(|e| e.order.account == account)
            .map(|e| self.order_margin(e))
            .sum();
        orders
            + self
                .accounts
                .get(account)
                .map_or(0.0, Funds::position_margin)
    }

    fn available(&self, account: &str) -> f64 {
        self.accounts.get(account).map_or(0.0, |f| f.cash) - self.frozen(account)
    }

    /// Fills what the current book offers an active order.
    fn match_order(&mut self, n: u64, t: u64, out: &mut Vec<SimEvent>) {
        let Some(e) = self.orders.get(&n) else { return };
        let Some(side) = e.side else { return };
        let (vt, limit) = (e.vt.clone(), e.limit);
        let left = e.order.volume - e.order.traded;
        let Some(m) = self.markets.get_mut(&vt) else {
            return;
        };
        let book = m.book();
        let fills = book.take(&mut m.taken, side, limit, left);
        for f in fills {
            self.fill(n, f.price, f.volume, t, out);
        }
    }

    /// Applies one fill of `lots` at `ticks` to order `n` and its account.
    fn fill(&mut self, n: u64, ticks: i64, lots: f64, t: u64, out: &mut Vec<SimEvent>) {
        let Some(e) = self.orders.get_mut(&n) else {
            return;
        };
        let Some(inst) = self.markets.get(&e.vt).map(|m| m.inst.clone()) else {
            return;
        };
        let Some(side) = e.side else { return };
        let Some(funds) = self.accounts.get_mut(&e.order.account) else {
            return;
        };
        let price = inst.price(ticks);
        let dir = e.order.direction;
        let vt = e.vt.clone();
        let closing = lots.min(e.close_left);
        let opening = lots - closing;
        if closing > 0.0 {
            funds.close(&inst, &vt, side.closes(), price, closing);
            e.close_left -= closing;
        }
        if opening > 0.0 {
            funds.open(&inst, &vt, side.opens(), price, opening);
            e.open_left = (e.open_left - opening).max(0.0);
        }
        e.order.traded += lots;
        e.order.status = if e.order.traded >= e.order.volume {
            Status::AllTraded
        } else {
            Status::PartTraded
        };
        e.order.datetime_ns = t;
        let order = e.order.clone();
        let trade = Trade {
            trade_id: format!("{}.{}.T{}", self.gateway, self.worker, self.next_trade),
            order_id: order.order_id.clone(),
            symbol: order.symbol.clone(),
            exchange: order.exchange.clone(),
            gateway: order.gateway.clone(),
            account: order.account.clone(),
            direction: dir,
            offset: order.offset,
            price,
            volume: lots,
            datetime_ns: t,
        };
        self.next_trade += 1;
        out.push(SimEvent::Order(order.clone()));
        out.push(SimEvent::Trade(trade.clone()));
        self.trades.push_back(trade);
        while self.trades.len() > KEEP_TRADES {
            self.trades.pop_front();
        }
        if closing > 0.0 {
            self.push_position(&order.account, &vt, side.closes(), out);
        }
        if opening > 0.0 {
            self.push_position(&order.account, &vt, side.opens(), out);
        }
        if order.status == Status::AllTraded {
            self.finish(n);
        }
        self.push_account(&order.account, out);
    }

    /// Cancels an active order: its reservations are released.
    fn cancel_entry(&mut self, n: u64, reason: String, t: u64, out: &mut Vec<SimEvent>) {
        let Some(e) = self.orders.get_mut(&n) else {
            return;
        };
        let (close_left, vt, side) = (e.close_left, e.vt.clone(), e.side);
        e.close_left = 0.0;
        e.open_left = 0.0;
        e.order.status = Status::Cancelled;
        e.order.reason = Some(reason);
        e.order.datetime_ns = t;
        let order = e.order.clone();
        let closes = side.map(Side::closes);
        if let (Some(f), Some(closes)) = (self.accounts.get_mut(&order.account), closes) {
            f.reserve(&vt, closes, -close_left);
        }
        self.finish(n);
        out.push(SimEvent::Order(order.clone()));
        if let (true, Some(closes)) = (close_left > 0.0, closes) {
            self.push_position(&order.account, &vt, closes, out);
        }
        self.push_account(&order.account, out);
    }

    /// Moves order `n` to the finished list, forgetting the oldest beyond [`KEEP_FINISHED`].
    fn finish(&mut self, n: u64) {
        self.active.remove(&n);
        self.finished.push_back(n);
        while self.finished.len() > KEEP_FINISHED {
            if let Some(old) = self.finished.pop_front() {
                self.orders.remove(&old);
            }
        }
    }

    /// The number of one of this worker's orders, or why the id is not one.
    fn own_order(&self, id: &OrderId) -> Result<u64, GatewayError> {
        let mine = id.gateway() == Some(self.gateway.as_str()) && id.worker() == Some(self.worker);
        if !mine {
            return Err(GatewayError::Failed(format!(
                "order {id} was not placed by this worker ({} on {})",
                self.gateway, self.worker
            )));
        }
        id.0.rsplit('.')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| self.orders.contains_key(n))
            .ok_or_else(|| GatewayError::Failed(format!("unknown order {id}")))
    }

    /// Cancels an order at `now_ns`.
    pub fn cancel_order(
        &mut self,
        req: &CancelRequest,
        now_ns: u64,
        out: &mut Vec<SimEvent>,
    ) -> Result<Order, GatewayError> {
        let n = self.own_order(&req.order_id)?;
        let status = self.orders.get(&n).map(|e| e.order.status);
        if let Some(s) = status.filter(|s| s.is_final()) {
            return Err(GatewayError::Failed(format!(
                "order {} is already {}; nothing to cancel",
                req.order_id,
                status_name(s)
            )));
        }
        self.cancel_entry(n, "cancelled by request".into(), now_ns, out);
        self.order(&req.order_id)
    }

    /// One order by id.
    pub fn order(&self, id: &OrderId) -> Result<Order, GatewayError> {
        let n = self.own_order(id)?;
        self.orders
            .get(&n)
            .map(|e| e.order.clone())
            .ok_or_else(|| GatewayError::Failed(format!("unknown order {id}")))
    }

    /// Active orders of `account` (all when empty).
    pub fn active_orders(&self, account: &str) -> Result<Vec<Order>, GatewayError> {
        self.known(account)?;
        Ok(self
            .active
            .iter()
            .filter_map(|n| self.orders.get(n))
            .filter(|e| account.is_empty() || e.order.account == account)
            .map(|e| e.order.clone())
            .collect())
    }

    fn known(&self, account: &str) -> Result<(), GatewayError> {
        if account.is_empty() || self.accounts.contains_key(account) {
            Ok(())
        } else {
            Err(GatewayError::Failed(format!("unknown account {account:?}")))
        }
    }

    fn names<'a>(&'a self, account: &'a str) -> Result<Vec<&'a str>, GatewayError> {
        self.known(account)?;
        Ok(if account.is_empty() {
            self.accounts.keys().map(String::as_str).collect()
        } else {
            vec![account]
        })
    }

    /// Today's (since UTC midnight at `now_ns`) trades of `account` (all when empty),
    /// oldest first — at most the last [`KEEP_TRADES`] of the session.
    pub fn trades(&self, account: &str, now_ns: u64) -> Result<Vec<Trade>, GatewayError> {
        self.known(account)?;
        let midnight = now_ns / DAY_NS * DAY_NS;
        Ok(self
            .trades
            .iter()
            .filter(|t| t.datetime_ns >= midnight)
            .filter(|t| account.is_empty() || t.account == account)
            .cloned()
            .collect())
    }

    /// Funds of `account` (all when empty).
    pub fn accounts(&self, account: &str) -> Result<Vec<Account>, GatewayError> {
        Ok(self
            .names(account)?
            .into_iter()
            .filter_map(|a| self.account_view(a))
            .collect())
    }

    /// Open positions of `account` (all when empty), marked to the current last price.
    pub fn positions(&self, account: &str) -> Result<Vec<Position>, GatewayError> {
        let mut v = Vec::new();
        for a in self.names(account)? {
            let Some(f) = self.accounts.get(a) else {
                continue;
            };
            for (vt, dir, h) in f.holdings() {
                if h.volume > 0.0 {
                    v.extend(self.position_view(a, vt, dir));
                }
            }
        }
        Ok(v)
    }

    fn account_view(&self, account: &str) -> Option<Account> {
        let f = self.accounts.get(account)?;
        let frozen = self.frozen(account);
        Some(Account {
            account: account.to_string(),
            gateway: self.gateway.clone(),
            balance: f.cash,
            frozen,
            available: f.cash - frozen,
        })
    }

    fn position_view(&self, account: &str, vt: &str, dir: Direction) -> Option<Position> {
        let h = self.accounts.get(account)?.holding(vt, dir)?;
        let m = self.markets.get(vt)?;
        let per_lot = match dir {
            Direction::Short => h.price - m.last_price(),
            // SIM never holds a net position (`net_position` false).
            Direction::Long | Direction::Net => m.last_price() - h.price,
        };
        Some(Position {
            symbol: m.inst.contract.symbol.clone(),
            exchange: m.inst.contract.exchange.clone(),
            gateway: self.gateway.clone(),
            account: account.to_string(),
            direction: dir,
            volume: h.volume,
            frozen: h.frozen,
            price: h.price,
            pnl: if h.volume > 0.0 {
                per_lot * h.volume * m.inst.contract.size
            } else {
                0.0
            },
            yd_volume: 0.0,
        })
    }

    fn push_account(&self, account: &str, out: &mut Vec<SimEvent>) {
        out.extend(self.account_view(account).map(SimEvent::Account));
    }

    fn push_position(&self, account: &str, vt: &str, dir: Direction, out: &mut Vec<SimEvent>) {
        out.extend(self.position_view(account, vt, dir).map(SimEvent::Position));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-06-03 13:30:00.2 UTC
    const T0: u64 = 1_717_421_400_200_000_000;
    const TICK: u64 = 500_000_000;

    fn exchange() -> (Exchange, WorkerId) {
        let c = SimConfig::default();
        let inst: Vec<Arc<Instrument>> = c
            .symbols
            .iter()
            .map(|s| Arc::new(Instrument::new(s, &c, "SIM")))
            .collect();
        let w = WorkerId::random();
        (Exchange::new(&c, &inst, "SIM", w, T0), w)
    }

    fn req(symbol: &str, dir: Direction, t: OrderType, volume: f64, price: f64) -> OrderRequest {
        OrderRequest {
            symbol: symbol.into(),
            exchange: String::new(),
            direction: dir,
            order_type: t,
            volume,
            price,
            offset: Offset::None,
            account: String::new(),
            reference: "r1".into(),
        }
    }

    fn statuses(out: &[SimEvent]) -> Vec<Status> {
        out.iter()
            .filter_map(|e| match e {
                SimEvent::Order(o) => Some(o.status),
                _ => None,
            })
            .collect()
    }

    fn trades(out: &[SimEvent]) -> Vec<Trade> {
        out.iter()
            .filter_map(|e| match e {
                SimEvent::Trade(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_market_buy_fills_against_the_book_and_updates_position_and_funds() {
        let (mut x, w) = exchange();
        let tick = x.tick("rb2501.SHFE").unwrap();
        let mut out = Vec::new();
        let o = x
            .send_order(
                &req("rb2501", Direction::Long, OrderType::Market, 3.0, 0.0),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(o.status, Status::AllTraded);
        assert_eq!(o.traded, 3.0);
        assert_eq!(o.price, 0.0);
        assert_eq!(o.reference, "r1");
        assert_eq!(o.order_id.worker(), Some(w));
        assert_eq!(statuses(&out)[..2], [Status::Submitting, Status::NotTraded]);
        assert_eq!(*statuses(&out).last().unwrap(), Status::AllTraded);
        let fills = trades(&out);
        assert_eq!(fills.iter().map(|t| t.volume).sum::<f64>(), 3.0);
        assert_eq!(fills[0].price, tick.ask_price[0]);
        let cost: f64 = fills.iter().map(|t| t.price * t.volume).sum();
        let pos = x.positions("sim").unwrap();
        assert_eq!(pos.len(), 1);
        assert_eq!((pos[0].direction, pos[0].volume), (Direction::Long, 3.0));
        assert!((pos[0].price - cost / 3.0).abs() < 1e-9);
        let acct = &x.accounts("").unwrap()[0];
        assert_eq!(acct.balance, 1_000_000.0);
        assert!((acct.frozen - cost * 10.0 * 0.1).abs() < 1e-6);
        assert!((acct.available - (acct.balance - acct.frozen)).abs() < 1e-9);
        // The last account event equals the query.
        let last_acct = out.iter().rev().find_map(|e| match e {
            SimEvent::Account(a) => Some(a.clone()),
            _ => None,
        });
        assert_eq!(last_acct.as_ref(), Some(acct));
        assert!(x.active_orders("").unwrap().is_empty());
    }

    #[test]
    fn a_big_limit_order_fills_partly_then_rests_and_fills_as_the_market_moves() {
        let (mut x, _) = exchange();
        let tick = x.tick("rb2501.SHFE").unwrap();
        let ask = tick.ask_price[0];
        let mut out = Vec::new();
        let vol = tick.ask_volume[0] + 1.0;
        let o = x
            .send_order(
                &req("rb2501", Direction::Long, OrderType::Limit, vol, ask),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(o.status, Status::PartTraded);
        assert_eq!(o.traded, tick.ask_volume[0]);
        assert!(trades(&out).iter().all(|t| t.price == ask));
        // The level is used up for this tick: a second order at the same price rests.
        let o2 = x
            .send_order(
                &req("rb2501", Direction::Long, OrderType::Limit, 1.0, ask),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(o2.status, Status::NotTraded);
        assert_eq!(x.active_orders("sim").unwrap().len(), 2);
        // Later ticks whose asks come down to the limit fill both.
        let mut t = T0;
        while !x.active_orders("").unwrap().is_empty() && t < T0 + 20_000 * TICK {
            t += TICK;
            let mut ev = Vec::new();
            x.advance(t, &mut ev);
            for tr in trades(&ev) {
                assert!(tr.price <= ask, "filled above the limit");
                assert_eq!(
                    tr.datetime_ns % TICK,
                    0,
                    "resting fills happen at tick times"
                );
            }
        }
        assert_eq!(x.order(&o.order_id).unwrap().status, Status::AllTraded);
        assert_eq!(x.order(&o2.order_id).unwrap().status, Status::AllTraded);
        let pos = x.positions("").unwrap();
        assert_eq!(pos[0].volume, vol + 1.0);
    }

    #[test]
    fn fak_cancels_its_remainder_and_fok_fills_all_or_nothing() {
        let (mut x, _) = exchange();
        let tick = x.tick("AAPL.NASDAQ").unwrap();
        let mut out = Vec::new();
        let bid = tick.bid_price[0];
        let vol = tick.bid_volume[0] + 5.0;
        let o = x
            .send_order(
                &req("AAPL", Direction::Short, OrderType::Fak, vol, bid),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(o.status, Status::Cancelled);
        assert_eq!(o.traded, tick.bid_volume[0]);
        assert!(o.reason.unwrap().contains("fak"));
        let mut out = Vec::new();
        let o = x
            .send_order(
                &req(
                    "AAPL",
                    Direction::Long,
                    OrderType::Fok,
                    1000.0,
                    tick.ask_price[4],
                ),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(o.status, Status::Cancelled);
        assert_eq!(o.traded, 0.0);
        assert!(trades(&out).is_empty());
        let total: f64 = tick.ask_volume[..2].iter().sum();
        let o = x
            .send_order(
                &req(
                    "AAPL",
                    Direction::Long,
                    OrderType::Fok,
                    total,
                    tick.ask_price[1],
                ),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!((o.status, o.traded), (Status::AllTraded, total));
        // Nothing stays frozen by finished orders.
        let a = &x.accounts("sim").unwrap()[0];
        let margin: f64 = x
            .positions("sim")
            .unwrap()
            .iter()
            .map(|p| p.price * p.volume)
            .sum();
        assert!((a.frozen - margin).abs() < 1e-6);
    }

    #[test]
    fn rejects_carry_their_reason() {
        let (mut x, _) = exchange();
        let cases = [
            (
                req("NOPE", Direction::Long, OrderType::Limit, 1.0, 1.0),
                "unknown symbol",
            ),
            (
                req("IF2412", Direction::Long, OrderType::Limit, 0.0, 3900.0),
                "bad volume",
            ),
            (
                req("IF2412", Direction::Long, OrderType::Limit, -1.0, 3900.0),
                "bad volume",
            ),
            (
                req("IF2412", Direction::Long, OrderType::Limit, 1.5, 3900.0),
                "bad volume",
            ),
            (
                req("IF2412", Direction::Long, OrderType::Limit, 1.0, 3900.1),
                "bad price",
            ),
            (
                req("IF2412", Direction::Long, OrderType::Limit, 1.0, 0.0),
                "bad price",
            ),
            (
                req("IF2412", Direction::Long, OrderType::Market, 50.0, 0.0),
                "insufficient funds",
            ),
            (
                OrderRequest {
                    offset: Offset::Close,
                    ..req("IF2412", Direction::Short, OrderType::Limit, 1.0, 3900.0)
                },
                "insufficient position",
            ),
            (
                OrderRequest {
                    account: "other".into(),
                    ..req("IF2412", Direction::Long, OrderType::Limit, 1.0, 3900.0)
                },
                "unknown account",
            ),
            (
                OrderRequest {
                    exchange: "SIM".into(),
                    ..req("IF2412", Direction::Long, OrderType::Limit, 1.0, 3900.0)
                },
                "unknown exchange",
            ),
            (
                req("IF2412", Direction::Net, OrderType::Limit, 1.0, 3900.0),
                "bad direction net",
            ),
            (
                req("IF2412", Direction::Long, OrderType::Stop, 1.0, 3900.0),
                "unsupported order type stop",
            ),
        ];
        for (r, why) in cases {
            let mut out = Vec::new();
            let o = x.send_order(&r, T0, &mut out).unwrap();
            assert_eq!(o.status, Status::Rejected, "{why}");
            assert!(
                o.reason.as_deref().unwrap_or("").contains(why),
                "{:?} vs {why}",
                o.reason
            );
            assert!(trades(&out).is_empty());
            assert_eq!(x.order(&o.order_id).unwrap(), o);
        }
        let a = &x.accounts("sim").unwrap()[0];
        assert_eq!(
            (a.balance, a.frozen, a.available),
            (1_000_000.0, 0.0, 1_000_000.0)
        );
    }

    #[test]
    fn cancels_release_reservations_and_refuse_what_cannot_be_cancelled() {
        let (mut x, _) = exchange();
        let tick = x.tick("IF2412.CFFEX").unwrap();
        let mut out = Vec::new();
        let low = tick.bid_price[4] - 10.0;
        let o = x
            .send_order(
                &req("IF2412", Direction::Long, OrderType::Limit, 2.0, low),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(o.status, Status::NotTraded);
        let a = &x.accounts("sim").unwrap()[0];
        assert!((a.frozen - low * 2.0 * 300.0 * 0.12).abs() < 1e-6);
        let cancel = CancelRequest {
            order_id: o.order_id.clone(),
            symbol: String::new(),
            exchange: String::new(),
        };
        let mut out = Vec::new();
        let c = x.cancel_order(&cancel, T0 + 1, &mut out).unwrap();
        assert_eq!(c.status, Status::Cancelled);
        assert_eq!(statuses(&out), vec![Status::Cancelled]);
        assert_eq!(x.accounts("sim").unwrap()[0].frozen, 0.0);
        let again = x.cancel_order(&cancel, T0 + 2, &mut out).unwrap_err();
        assert!(again.to_string().contains("already cancelled"), "{again}");
        let mut unknown = o.order_id.0.clone();
        unknown.push('9');
        let e = x
            .cancel_order(
                &CancelRequest {
                    order_id: OrderId(unknown),
                    ..cancel.clone()
                },
                T0,
                &mut out,
            )
            .unwrap_err();
        assert!(e.to_string().contains("unknown order"), "{e}");
        let foreign = OrderId::new("SIM", WorkerId::random(), 1);
        let e = x
            .cancel_order(
                &CancelRequest {
                    order_id: foreign,
                    ..cancel
                },
                T0,
                &mut out,
            )
            .unwrap_err();
        assert!(e.to_string().contains("not placed by this worker"), "{e}");
    }

    #[test]
    fn closing_realises_pnl_and_net_orders_flip_the_position() {
        let (mut x, _) = exchange();
        let mut out = Vec::new();
        let buy = x
            .send_order(
                &req("rb2501", Direction::Long, OrderType::Market, 2.0, 0.0),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(buy.status, Status::AllTraded);
        let bought: f64 = trades(&out).iter().map(|t| t.price * t.volume).sum();
        // Closing more than held with an explicit close offset is refused…
        let close3 = OrderRequest {
            offset: Offset::Close,
            ..req("rb2501", Direction::Short, OrderType::Market, 3.0, 0.0)
        };
        assert_eq!(
            x.send_order(&close3, T0, &mut out).unwrap().status,
            Status::Rejected
        );
        // …a net sell of 3 closes the 2 and opens 1 short.
        let mut out = Vec::new();
        let sell = x
            .send_order(
                &req("rb2501", Direction::Short, OrderType::Market, 3.0, 0.0),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(sell.status, Status::AllTraded);
        let fills = trades(&out);
        // Fills take the best bids first; the first 2 lots close the long.
        let mut left = 2.0;
        let mut sold_for = 0.0;
        let mut short_cost = 0.0;
        for f in &fills {
            let c = f.volume.min(left);
            sold_for += c * f.price;
            short_cost += (f.volume - c) * f.price;
            left -= c;
        }
        let pnl = (sold_for - bought) * 10.0;
        let a = &x.accounts("sim").unwrap()[0];
        assert!(
            (a.balance - (1_000_000.0 + pnl)).abs() < 1e-6,
            "{} vs {pnl}",
            a.balance
        );
        let pos = x.positions("sim").unwrap();
        assert_eq!(pos.len(), 1);
        assert_eq!((pos[0].direction, pos[0].volume), (Direction::Short, 1.0));
        assert!((pos[0].price - short_cost).abs() < 1e-9);
        assert!((a.frozen - short_cost * 10.0 * 0.1).abs() < 1e-6);
    }

    #[test]
    fn advancing_reports_which_ticks_changed() {
        let (mut x, _) = exchange();
        let mut out = Vec::new();
        assert!(x.advance(T0, &mut out).is_empty());
        let before = x.tick("BTCUSDT.GLOBAL").unwrap();
        let changed = x.advance(T0 + 3 * TICK, &mut out);
        assert_eq!(changed.len(), 4);
        let after = x.tick("BTCUSDT.GLOBAL").unwrap();
        assert_eq!(after.datetime_ns, before.datetime_ns + 3 * TICK);
        assert!(out.is_empty());
    }

    #[test]
    fn a_buy_at_limit_up_fills_one_at_limit_down_rests_and_outside_the_band_is_rejected() {
        let (mut x, _) = exchange();
        let tick = x.tick("IF2412.CFFEX").unwrap();
        assert!(tick.limit_down > 0.0 && tick.limit_down < tick.bid_price[4]);
        assert!(tick.ask_price[4] < tick.limit_up);
        let mut out = Vec::new();
        let up = x
            .send_order(
                &req(
                    "IF2412",
                    Direction::Long,
                    OrderType::Limit,
                    1.0,
                    tick.limit_up,
                ),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(up.status, Status::AllTraded, "{:?}", up.reason);
        assert_eq!(trades(&out)[0].price, tick.ask_price[0]);
        let down = x
            .send_order(
                &req(
                    "IF2412",
                    Direction::Long,
                    OrderType::Limit,
                    1.0,
                    tick.limit_down,
                ),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(down.status, Status::NotTraded, "{:?}", down.reason);
        for (dir, price) in [
            (Direction::Long, tick.limit_up + 0.2),
            (Direction::Short, tick.limit_down - 0.2),
        ] {
            let o = x
                .send_order(
                    &req("IF2412", dir, OrderType::Limit, 1.0, price),
                    T0,
                    &mut out,
                )
                .unwrap();
            assert_eq!(o.status, Status::Rejected);
            let why = o.reason.unwrap_or_default();
            assert!(why.starts_with("price outside the limits"), "{why}");
            assert!(why.contains(&tick.limit_up.to_string()), "{why}");
        }
        // No limits on NASDAQ: any positive price on the tick is accepted.
        let aapl = x
            .send_order(
                &req("AAPL", Direction::Long, OrderType::Limit, 1.0, 1.0),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(aapl.status, Status::NotTraded);
    }

    #[test]
    fn an_empty_exchange_names_the_only_listing_and_an_ambiguous_one_is_refused() {
        let mut c = SimConfig::default();
        let mut twin = c.symbols[0].clone();
        twin.exchange = "SGX".into();
        c.symbols.push(twin);
        let inst: Vec<Arc<Instrument>> = c
            .symbols
            .iter()
            .map(|s| Arc::new(Instrument::new(s, &c, "SIM")))
            .collect();
        let mut x = Exchange::new(&c, &inst, "SIM", WorkerId::random(), T0);
        let mut out = Vec::new();
        let e = x
            .send_order(
                &req("IF2412", Direction::Long, OrderType::Market, 1.0, 0.0),
                T0,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            e,
            GatewayError::Ambiguous {
                symbol: "IF2412".into(),
                exchanges: vec!["CFFEX".into(), "SGX".into()]
            }
        );
        assert!(out.is_empty(), "no order exists: {out:?}");
        let sgx = x
            .send_order(
                &OrderRequest {
                    exchange: "SGX".into(),
                    ..req("IF2412", Direction::Long, OrderType::Market, 1.0, 0.0)
                },
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(
            (sgx.status, sgx.exchange.as_str()),
            (Status::AllTraded, "SGX")
        );
        assert!(
            sgx.order_id.0.ends_with(".1"),
            "the refused order took no number"
        );
        assert!(trades(&out).iter().all(|t| t.exchange == "SGX"));
        let rb = x
            .send_order(
                &req("rb2501", Direction::Long, OrderType::Market, 1.0, 0.0),
                T0,
                &mut out,
            )
            .unwrap();
        assert_eq!(rb.exchange, "SHFE");
        let pos = x.positions("sim").unwrap();
        let listed: Vec<(&str, &str)> = pos
            .iter()
            .map(|p| (p.symbol.as_str(), p.exchange.as_str()))
            .collect();
        assert_eq!(listed, [("IF2412", "SGX"), ("rb2501", "SHFE")]);
        assert!(matches!(
            x.resolve("IF2412", ""),
            Err(Unresolved::Ambiguous { .. })
        ));
        assert_eq!(
            x.resolve("IF2412", "CFFEX").unwrap().inst.contract.exchange,
            "CFFEX"
        );
        let e = x.resolve("IF2412", "SIM").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown exchange \"SIM\" for IF2412 (listed on CFFEX, SGX)"
        );
        assert_eq!(
            x.resolve("NOPE", "").unwrap_err(),
            Unresolved::UnknownSymbol("NOPE".into())
        );
    }

    #[test]
    fn todays_trades_are_kept_oldest_first_per_account() {
        let mut c = SimConfig::default();
        c.accounts.push(super::super::config::SimAccount {
            account: "b".into(),
            cash: 1_000_000.0,
        });
        let inst: Vec<Arc<Instrument>> = c
            .symbols
            .iter()
            .map(|s| Arc::new(Instrument::new(s, &c, "SIM")))
            .collect();
        let mut x = Exchange::new(&c, &inst, "SIM", WorkerId::random(), T0);
        let mut out = Vec::new();
        x.send_order(
            &req("rb2501", Direction::Long, OrderType::Market, 2.0, 0.0),
            T0,
            &mut out,
        )
        .unwrap();
        x.send_order(
            &OrderRequest {
                account: "b".into(),
                ..req("AAPL", Direction::Short, OrderType::Market, 1.0, 0.0)
            },
            T0 + TICK,
            &mut out,
        )
        .unwrap();
        let published = trades(&out);
        assert!(published.len() >= 2);
        assert_eq!(x.trades("", T0 + TICK).unwrap(), published, "oldest first");
        let b = x.trades("b", T0 + TICK).unwrap();
        assert!(!b.is_empty() && b.iter().all(|t| t.account == "b" && t.symbol == "AAPL"));
        assert!(b.iter().all(|t| t.exchange == "NASDAQ"));
        assert!(x
            .trades("sim", T0)
            .unwrap()
            .iter()
            .all(|t| t.account == "sim"));
        // A new UTC day starts with none.
        assert!(x.trades("", T0 + DAY_NS).unwrap().is_empty());
        let e = x.trades("nobody", T0).unwrap_err();
        assert!(e.to_string().contains("unknown account"), "{e}");
    }
}
