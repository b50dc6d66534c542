//! The stage's cluster-wide state: counters per account and symbol, working orders,
//! positions, balances, and the market facts (contracts, last ticks) the rules need.
//! Fed by admitted requests (main loop) and by workers' events (relay thread); bounded.

use rustc_hash::FxHashMap as HashMap;
use serde::Deserialize;
use std::collections::VecDeque;

use tradeplex_proto::model::{Direction, Offset, Status};

use super::config::ContractSpec;

/// Most contracts and tick symbols remembered from events.
pub const MAX_MARKET_SYMBOLS: usize = 100_000;
/// Most working orders tracked (all accounts); further ones are not counted.
pub const MAX_WORKING_ORDERS: usize = 1_000_000;
/// One trading day.
pub const DAY_MS: u64 = 86_400_000;

/// What the rules know of a symbol's market.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quote {
    /// Last price (0 = none yet).
    pub last_price: f64,
    /// Upper price limit (0 = no band).
    pub limit_up: f64,
    /// Lower price limit (0 = no band).
    pub limit_down: f64,
}

/// Per symbol of one account.
#[derive(Debug, Clone, Default)]
pub struct SymbolState {
    /// Orders admitted this trading day.
    pub orders: u32,
    /// Cancel requests admitted this trading day.
    pub cancels: u32,
    /// Trades reported this trading day.
    pub trades: u32,
    /// Position held, long and short (from `position.` events).
    pub position: [f64; 2],
    /// Unfilled volume of working opening orders, long and short.
    pub working: [f64; 2],
    /// Volume of opening orders admitted and not yet answered by their worker.
    pub in_flight: [f64; 2],
}

/// What makes two orders identical for the duplicate rule: symbol, direction, and the
/// bits of price and volume (so it can be hashed; `-0.0` and `0.0` differ, harmlessly).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderKey {
    /// Symbol.
    pub symbol: String,
    /// Direction.
    pub direction: Direction,
    /// Price bits.
    pub price: u64,
    /// Volume bits.
    pub volume: u64,
}

/// Per account.
#[derive(Debug, Default)]
pub struct AccountState {
    /// Admission times (Unix ms) within the last minute, oldest first; at most the
    /// larger flow limit long (a rejected order is not added).
    pub flow: VecDeque<u64>,
    /// Recent admitted orders (Unix ms, key) within the duplicate window, oldest first.
    pub recent: VecDeque<(u64, OrderKey)>,
    /// How many of `recent` each key has.
    pub recent_count: HashMap<OrderKey, u32>,
    /// By symbol.
    pub symbols: HashMap<String, SymbolState>,
    /// Working orders (not final), from order events.
    pub active: u32,
    /// Orders admitted and not yet answered by their worker.
    pub in_flight: u32,
    /// First balance seen this trading day, and the latest.
    pub first_balance: Option<f64>,
    /// Latest balance.
    pub balance: f64,
}

/// A working order as last reported.
#[derive(Debug, Clone)]
struct Working {
    account: String,
    symbol: String,
    side: usize,
    /// Unfilled volume counted against the position limit (0 for closing orders).
    open_volume: f64,
}

/// A working order in the kill switch's book.
#[derive(Debug, Clone, PartialEq)]
pub struct Booked {
    /// The order id (`<gateway>.<worker>.<n>`).
    pub order_id: String,
    /// Its account as the gateway resolved it.
    pub account: String,
    /// Symbol.
    pub symbol: String,
    /// Exchange.
    pub exchange: String,
}

/// Everything the stage keeps.
#[derive(Debug, Default)]
pub struct State {
    /// The trading day the daily counters belong to.
    pub day: u64,
    /// By account.
    pub accounts: HashMap<String, AccountState>,
    /// By client name, for clients with limits only (`[risk.clients]`): their own orders
    /// and cancels.
    pub clients: HashMap<String, AccountState>,
    /// Contracts from `contract.` events, by symbol.
    pub contracts: HashMap<String, ContractSpec>,
    /// Last quote from `tick.` events, by symbol.
    pub quotes: HashMap<String, Quote>,
    working: HashMap<String, Working>,
    /// Every working order of every account (limited or not), for the kill switch.
    book: HashMap<String, Booked>,
    /// Orders a halt has sent a cancel for: never sent a second one (its outcome may be
    /// unknown). Forgotten when the order is final.
    cancel_sent: rustc_hash::FxHashSet<String>,
    /// Events that could not be decoded (counted, ignored).
    pub bad_events: u64,
}

/// Index of a direction in `[long, short]`; None for `net`, which names a position's
/// side on net-position venues, never an order's (gateways reject such orders).
pub fn side(d: Direction) -> Option<usize> {
    match d {
        Direction::Long => Some(0),
        Direction::Short => Some(1),
        Direction::Net => None,
    }
}

/// The trading day of `unix_ms` with the day starting `start_ms` after midnight UTC.
pub fn trading_day(unix_ms: u64, start_ms: u64) -> u64 {
    unix_ms.saturating_sub(start_ms) / DAY_MS
}

#[derive(Deserialize)]
struct OrderEvent {
    order_id: String,
    symbol: String,
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    account: String,
    direction: Direction,
    #[serde(default)]
    offset: Offset,
    volume: f64,
    #[serde(default)]
    traded: f64,
    status: Status,
}

#[derive(Deserialize)]
struct TradeEvent {
    symbol: String,
    #[serde(default)]
    account: String,
}

#[derive(Deserialize)]
struct PositionEvent {
    symbol: String,
    #[serde(default)]
    account: String,
    /// `long`, `short` or `net` (net-position venues: a signed volume).
    direction: String,
    volume: f64,
}

impl PositionEvent {
    /// The `[long, short]` entries this event sets.
    fn sides(&self) -> Vec<(usize, f64)> {
        let v = finite(self.volume);
        match self.direction.as_str() {
            "long" => vec![(0, v.max(0.0))],
            "short" => vec![(1, v.max(0.0))],
            "net" => vec![(0, v.max(0.0)), (1, (-v).max(0.0))],
            _ => Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct AccountEvent {
    account: String,
    balance: f64,
}

#[derive(Deserialize)]
struct TickEvent {
    symbol: String,
    #[serde(default)]
    last_price: f64,
    #[serde(default)]
    limit_up: f64,
    #[serde(default)]
    limit_down: f64,
}

#[derive(Deserialize)]
struct ContractEvent {
    symbol: String,
    size: f64,
    #[serde(default)]
    pricetick: f64,
    #[serde(default)]
    min_volume: f64,
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

impl State {
    /// Resets the daily counters when `day` is a new trading day.
    pub fn roll(&mut self, day: u64) {
        if day == self.day {
            return;
        }
        self.day = day;
        for a in self.accounts.values_mut().chain(self.clients.values_mut()) {
            a.first_balance = None;
            for s in a.symbols.values_mut() {
                s.orders = 0;
                s.cancels = 0;
                s.trades = 0;
            }
        }
    }

    /// Applies one event body of `kind`; `tracked` says whether an account is limited
    /// (only those get counters) and `room` whether a new account/symbol entry fits.
    /// Returns false when the body did not decode.
    pub fn on_event(
        &mut self,
        kind: &str,
        body: &[u8],
        limits: &dyn Fn(&str) -> bool,
        caps: (usize, usize),
    ) -> bool {
        let ok = match kind {
            "order" => rmp_serde::from_slice::<OrderEvent>(body)
                .map(|o| self.on_order(o, limits, caps))
                .is_ok(),
            "trade" => rmp_serde::from_slice::<TradeEvent>(body)
                .map(|t| {
                    if let Some(s) = self.symbol_mut(&t.account, &t.symbol, limits, caps) {
                        s.trades = s.trades.saturating_add(1);
                    }
                })
                .is_ok(),
            "position" => rmp_serde::from_slice::<PositionEvent>(body)
                .map(|p| {
                    let sides = p.sides();
                    if let Some(s) = self.symbol_mut(&p.account, &p.symbol, limits, caps) {
                        for (i, v) in sides {
                            s.position[i] = v;
                        }
                    }
                })
                .is_ok(),
            "account" => rmp_serde::from_slice::<AccountEvent>(body)
                .map(|a| {
                    if let Some(acc) = self.account_mut(&a.account, limits, caps.0) {
                        let b = finite(a.balance);
                        acc.balance = b;
                        acc.first_balance.get_or_insert(b);
                    }
                })
                .is_ok(),
            "tick" => rmp_serde::from_slice::<TickEvent>(body)
                .map(|t| {
                    let q = Quote {
                        last_price: finite(t.last_price),
                        limit_up: finite(t.limit_up),
                        limit_down: finite(t.limit_down),
                    };
                    if let Some(slot) = self.quotes.get_mut(&t.symbol) {
                        *slot = q;
                    } else if self.quotes.len() < MAX_MARKET_SYMBOLS {
                        self.quotes.insert(t.symbol, q);
                    }
                })
                .is_ok(),
            "contract" => rmp_serde::from_slice::<ContractEvent>(body)
                .map(|c| {
                    let spec = ContractSpec {
                        size: finite(c.size),
                        pricetick: finite(c.pricetick),
                        min_volume: finite(c.min_volume),
                    };
                    if self.contracts.len() < MAX_MARKET_SYMBOLS
                        || self.contracts.contains_key(&c.symbol)
                    {
                        self.contracts.insert(c.symbol, spec);
                    }
                })
                .is_ok(),
            _ => true,
        };
        if !ok {
            self.bad_events += 1;
        }
        ok
    }

    fn on_order(&mut self, o: OrderEvent, limits: &dyn Fn(&str) -> bool, caps: (usize, usize)) {
        self.book_order(&o);
        // Take the order's previous contribution out, then put its new one in.
        if let Some(w) = self.working.remove(&o.order_id) {
            if let Some(a) = self.accounts.get_mut(&w.account) {
                a.active = a.active.saturating_sub(1);
                if let Some(s) = a.symbols.get_mut(&w.symbol) {
                    s.working[w.side] = (s.working[w.side] - w.open_volume).max(0.0);
                }
            }
        }
        let active = matches!(
            o.status,
            Status::Submitting | Status::NotTraded | Status::PartTraded
        );
        if !active || self.working.len() >= MAX_WORKING_ORDERS {
            return;
        }
        let Some(side) = side(o.direction) else {
            return;
        };
        let opening = matches!(o.offset, Offset::None | Offset::Open);
        let open_volume = if opening {
            (finite(o.volume) - finite(o.traded)).max(0.0)
        } else {
            0.0
        };
        let Some(s) = self.symbol_mut(&o.account, &o.symbol, limits, caps) else {
            return;
        };
        s.working[side] += open_volume;
        if let Some(a) = self.accounts.get_mut(&o.account) {
            a.active = a.active.saturating_add(1);
        }
        self.working.insert(
            o.order_id,
            Working {
                account: o.account,
                symbol: o.symbol,
                side,
                open_volume,
            },
        );
    }

    /// Keeps the kill switch's book: every account's working orders, at most
    /// [`MAX_WORKING_ORDERS`] (further ones are not booked, and a halt cannot see them).
    fn book_order(&mut self, o: &OrderEvent) {
        let active = matches!(
            o.status,
            Status::Submitting | Status::NotTraded | Status::PartTraded
        );
        if !active {
            self.book.remove(&o.order_id);
            self.cancel_sent.remove(&o.order_id);
            return;
        }
        if self.book.contains_key(&o.order_id) || self.book.len() < MAX_WORKING_ORDERS {
            self.book.insert(
                o.order_id.clone(),
                Booked {
                    order_id: o.order_id.clone(),
                    account: o.account.clone(),
                    symbol: o.symbol.clone(),
                    exchange: o.exchange.clone(),
                },
            );
        }
    }

    /// The booked working orders of `account` (None = every account) that no halt has
    /// sent a cancel for yet, now marked as sent; and how many were passed over because
    /// one was already sent.
    pub fn take_cancels(&mut self, account: Option<&str>) -> (Vec<Booked>, u32) {
        let mut out = Vec::new();
        let mut skipped = 0u32;
        for b in self.book.values() {
            if account.is_some_and(|a| a != b.account) {
                continue;
            }
            if self.cancel_sent.contains(&b.order_id) {
                skipped = skipped.saturating_add(1);
            } else {
                out.push(b.clone());
            }
        }
        for b in &out {
            self.cancel_sent.insert(b.order_id.clone());
        }
        out.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        (out, skipped)
    }

    /// Working orders in the kill switch's book (all accounts).
    pub fn booked_orders(&self) -> usize {
        self.book.len()
    }

    /// The account's entry, created if it is limited and fits.
    pub fn account_mut(
        &mut self,
        account: &str,
        limits: &dyn Fn(&str) -> bool,
        max_accounts: usize,
    ) -> Option<&mut AccountState> {
        if !self.accounts.contains_key(account) {
            if !limits(account) || self.accounts.len() >= max_accounts {
                return None;
            }
            self.accounts
                .insert(account.to_string(), AccountState::default());
        }
        self.accounts.get_mut(account)
    }

    /// The (account, symbol) entry, created if the account is limited and both fit.
    pub fn symbol_mut(
        &mut self,
        account: &str,
        symbol: &str,
        limits: &dyn Fn(&str) -> bool,
        caps: (usize, usize),
    ) -> Option<&mut SymbolState> {
        let a = self.account_mut(account, limits, caps.0)?;
        if !a.symbols.contains_key(symbol) {
            if a.symbols.len() >= caps.1 {
                return None;
            }
            a.symbols.insert(symbol.to_string(), SymbolState::default());
        }
        a.symbols.get_mut(symbol)
    }

    /// Counts a cancel by the client `name` (one with limits) in `symbol`, if it fits.
    pub fn client_cancel(&mut self, name: &str, symbol: &str, max_symbols: usize) {
        let c = self.clients.entry(name.to_string()).or_default();
        if !c.symbols.contains_key(symbol) && c.symbols.len() >= max_symbols {
            return;
        }
        let sym = c.symbols.entry(symbol.to_string()).or_default();
        sym.cancels = sym.cancels.saturating_add(1);
    }

    /// Working orders tracked (all accounts).
    pub fn working_orders(&self) -> usize {
        self.working.len()
    }

    /// The account and symbol of a working order, for counting its cancel.
    pub fn working_of(&self, order_id: &str) -> Option<(&str, &str)> {
        self.working
            .get(order_id)
            .map(|w| (w.account.as_str(), w.symbol.as_str()))
    }
}
