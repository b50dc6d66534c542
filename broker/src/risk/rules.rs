//! The rules: each looks at one order request, the account's limits and what the state
//! knows, and either passes or names itself with its limit and the order's value. A rule
//! rejects when the value would exceed the limit; exactly at the limit passes (the cancel
//! and trade caps and the loss limit are about what already happened: see docs/risk.md).

use std::fmt::Display;

use tradeplex_proto::model::{Offset, OrderRequest, OrderType};

use super::config::{ContractSpec, Limits};
use super::state::{side, AccountState, OrderKey, Quote, SymbolState};

/// Most recent orders remembered per account for the duplicate rule.
pub const MAX_RECENT: usize = 10_000;

/// A rule's refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The rule's name (a metric label).
    pub rule: &'static str,
    /// `<rule>: limit <L>, value <V>`.
    pub message: String,
}

/// Every rule name, for metric labels.
pub const RULES: [&str; 13] = [
    "order_validity",
    "order_size_limit",
    "order_value_limit",
    "duplicate_order",
    "contract_order_limit",
    "order_flow_limit",
    "active_order_limit",
    "contract_cancel_limit",
    "contract_trade_limit",
    "position_limit",
    "daily_loss_limit",
    "risk_capacity",
    "bad_order",
];

/// A refusal by `rule`.
pub fn reject(rule: &'static str, limit: impl Display, value: impl Display) -> Reject {
    Reject {
        rule,
        message: format!("{rule}: limit {limit}, value {value}"),
    }
}

/// What the market side knows of the order's symbol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Market {
    /// The contract (config first, then `contract.` events).
    pub contract: Option<ContractSpec>,
    /// The last tick.
    pub quote: Option<Quote>,
}

/// What the account and symbol counters hold (empty for a first order).
pub struct Counters<'a> {
    /// The account.
    pub account: Option<&'a AccountState>,
    /// The symbol of the account.
    pub symbol: Option<&'a SymbolState>,
}

fn is_multiple(v: f64, step: f64) -> bool {
    let n = (v / step).round();
    n >= 1.0 && (n * step - v).abs() <= step * 1e-6
}

/// Whether the order opens (or, net, adds to) a position.
pub fn opening(o: &OrderRequest) -> bool {
    matches!(o.offset, Offset::None | Offset::Open)
}

/// Checks every rule configured in `l`, cheapest first; the first failing one is returned.
pub fn check(
    l: &Limits,
    c: &Counters,
    m: Market,
    o: &OrderRequest,
    now_ms: u64,
) -> Result<(), Reject> {
    let market = o.order_type == OrderType::Market;
    if l.order_validity == Some(true) {
        validity(m, o, market)?;
    }
    if let Some(max) = l.order_size_limit {
        if o.volume > max {
            return Err(reject("order_size_limit", max, o.volume));
        }
    }
    if let Some(max) = l.order_value_limit {
        value(max, m, o, market)?;
    }
    let sym = c.symbol;
    if let Some(max) = l.contract_order_limit {
        let n = sym.map_or(0, |s| s.orders) as u64 + 1;
        if n > u64::from(max) {
            return Err(reject("contract_order_limit", max, n));
        }
    }
    if let Some(max) = l.contract_cancel_limit {
        let n = sym.map_or(0, |s| s.cancels);
        if n >= max {
            return Err(reject("contract_cancel_limit", max, n));
        }
    }
    if let Some(max) = l.contract_trade_limit {
        let n = sym.map_or(0, |s| s.trades);
        if n >= max {
            return Err(reject("contract_trade_limit", max, n));
        }
    }
    if let Some(max) = l.position_limit {
        if let (true, Some(i)) = (opening(o), side(o.direction)) {
            let held = sym.map_or(0.0, |s| s.position[i] + s.working[i] + s.in_flight[i]);
            let v = held + o.volume;
            if v > max {
                return Err(reject("position_limit", max, v));
            }
        }
    }
    let Some(a) = c.account else {
        return Ok(());
    };
    account_rules(l, a, o, now_ms)
}

fn account_rules(
    l: &Limits,
    a: &AccountState,
    o: &OrderRequest,
    now_ms: u64,
) -> Result<(), Reject> {
    for (limit, window, per) in [
        (l.order_flow_limit_per_s, 1000, "/s"),
        (l.order_flow_limit_per_min, 60_000, "/min"),
    ] {
        if let Some(max) = limit {
            // Admission times are in order: count those inside the window by bisection.
            let since = now_ms.saturating_sub(window);
            let n = (a.flow.len() - a.flow.partition_point(|t| *t <= since)) as u64 + 1;
            if n > u64::from(max) {
                return Err(reject("order_flow_limit", format_args!("{max}{per}"), n));
            }
        }
    }
    if let Some(window) = l.duplicate_order_window_ms {
        // `expire` has dropped what fell out of the window.
        let max = l.duplicate_order_limit.unwrap_or(1);
        let n = u64::from(a.recent_count.get(&key(o)).copied().unwrap_or(0)) + 1;
        if n > u64::from(max) {
            return Err(reject(
                "duplicate_order",
                format_args!("{max} in {window} ms"),
                n,
            ));
        }
    }
    if let Some(max) = l.active_order_limit {
        let n = u64::from(a.active) + u64::from(a.in_flight) + 1;
        if n > u64::from(max) {
            return Err(reject("active_order_limit", max, n));
        }
    }
    if let (Some(max), Some(first)) = (l.daily_loss_limit, a.first_balance) {
        let loss = first - a.balance;
        if loss > max {
            return Err(reject("daily_loss_limit", max, loss));
        }
    }
    Ok(())
}

fn key(o: &OrderRequest) -> OrderKey {
    OrderKey {
        symbol: o.symbol.clone(),
        direction: o.direction,
        price: o.price.to_bits(),
        volume: o.volume.to_bits(),
    }
}

fn pop_recent(a: &mut AccountState) {
    if let Some((_, k)) = a.recent.pop_front() {
        if let Some(n) = a.recent_count.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                a.recent_count.remove(&k);
            }
        }
    }
}

/// Drops what has slid out of the flow and duplicate windows (before [`check`]).
pub fn expire(l: &Limits, a: &mut AccountState, now_ms: u64) {
    let flow_window = if l.order_flow_limit_per_min.is_some() {
        60_000
    } else {
        1000
    };
    let since = now_ms.saturating_sub(flow_window);
    while a.flow.front().is_some_and(|t| *t <= since) {
        a.flow.pop_front();
    }
    let since = now_ms.saturating_sub(l.duplicate_order_window_ms.unwrap_or(0));
    while a.recent.front().is_some_and(|(t, _)| *t <= since) {
        pop_recent(a);
    }
}

fn validity(m: Market, o: &OrderRequest, market: bool) -> Result<(), Reject> {
    let Some(c) = m.contract else {
        return Err(reject(
            "order_validity",
            "a known contract",
            format_args!("unknown symbol {}", o.symbol),
        ));
    };
    if c.min_volume > 0.0 && !is_multiple(o.volume, c.min_volume) {
        return Err(reject(
            "order_validity",
            format_args!("min_volume {}", c.min_volume),
            format_args!("volume {}", o.volume),
        ));
    }
    if market {
        return Ok(());
    }
    if c.pricetick > 0.0 && !is_multiple(o.price, c.pricetick) {
        return Err(reject(
            "order_validity",
            format_args!("pricetick {}", c.pricetick),
            format_args!("price {}", o.price),
        ));
    }
    if let Some(q) = m.quote {
        if q.limit_up > 0.0 && o.price > q.limit_up {
            return Err(reject(
                "order_validity",
                format_args!("limit_up {}", q.limit_up),
                format_args!("price {}", o.price),
            ));
        }
        if q.limit_down > 0.0 && o.price < q.limit_down {
            return Err(reject(
                "order_validity",
                format_args!("limit_down {}", q.limit_down),
                format_args!("price {}", o.price),
            ));
        }
    }
    Ok(())
}

fn value(max: f64, m: Market, o: &OrderRequest, market: bool) -> Result<(), Reject> {
    let price = if market {
        m.quote.map_or(0.0, |q| q.last_price)
    } else {
        o.price
    };
    if price <= 0.0 {
        return Err(reject(
            "order_value_limit",
            max,
            format_args!("unknown (no last price for {})", o.symbol),
        ));
    }
    let Some(c) = m.contract else {
        return Err(reject(
            "order_value_limit",
            max,
            format_args!("unknown (no contract size for {})", o.symbol),
        ));
    };
    let v = price * o.volume * c.size;
    if v > max {
        return Err(reject("order_value_limit", max, v));
    }
    Ok(())
}

/// Records an admitted order in the account's and symbol's counters.
pub fn admit(l: &Limits, a: &mut AccountState, o: &OrderRequest, now_ms: u64) {
    match a.symbols.get_mut(&o.symbol) {
        Some(s) => s.orders = s.orders.saturating_add(1),
        None => {
            let s = SymbolState {
                orders: 1,
                ..SymbolState::default()
            };
            a.symbols.insert(o.symbol.clone(), s);
        }
    }
    if l.order_flow_limit_per_s.is_some() || l.order_flow_limit_per_min.is_some() {
        a.flow.push_back(now_ms);
    }
    if l.duplicate_order_window_ms.is_some() {
        if a.recent.len() >= MAX_RECENT {
            pop_recent(a);
        }
        let k = key(o);
        *a.recent_count.entry(k.clone()).or_insert(0) += 1;
        a.recent.push_back((now_ms, k));
    }
}
