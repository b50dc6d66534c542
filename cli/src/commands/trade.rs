//! `tradeplex order | cancel | positions | account | trades`: trading from the command line.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tradeplex_client::{Client, ClientError};
use tradeplex_proto::model::{Direction, Order, OrderId, OrderRequest, OrderType, Status};
use tradeplex_proto::ErrorCode;

use super::tail::format_ns;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Limit,
    Market,
    Fak,
    Fok,
}

/// Flags of `tradeplex order`.
#[derive(Args, Debug)]
pub struct OrderArgs {
    /// Symbol, e.g. IF2412.
    symbol: String,
    /// buy or sell.
    side: Side,
    /// Exchange, a vn.py Exchange value, e.g. CFFEX ("" = the gateway's only contract with
    /// that symbol).
    #[arg(long, default_value = "")]
    exchange: String,
    /// Volume.
    volume: f64,
    /// Limit price.
    #[arg(long, default_value_t = 0.0)]
    price: f64,
    /// Order type.
    #[arg(long = "type", value_enum, default_value = "limit")]
    kind: Kind,
    /// Account ("" = the gateway's default).
    #[arg(long, default_value = "")]
    account: String,
    /// Gateway service.
    #[arg(long, default_value = "SIM")]
    service: String,
    /// Stop following the order after this long, ms.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// The order's reference (client tag), written in the worker's journal and echoed in
    /// the order and its events; default `cli-` and 12 random hex digits.
    #[arg(long)]
    reference: Option<String>,
    /// Print one JSON object at the end instead of lines: `{"order_id", "reference",
    /// "final", "order"}` (`order`: the last state seen); a failure prints `{"error": {...}}`.
    #[arg(long)]
    json: bool,
}

/// Flags of `tradeplex cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The order id printed by `tradeplex order`.
    order_id: OrderId,
    /// Request timeout, ms.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print the order after the cancel as a JSON object; a failure prints `{"error": {...}}`.
    #[arg(long)]
    json: bool,
}

/// Flags of `tradeplex positions`, `tradeplex account` and `tradeplex trades`.
#[derive(Args, Debug)]
pub struct AccountArgs {
    /// Account ("" = the gateway's default).
    #[arg(long, default_value = "")]
    account: String,
    /// Gateway service.
    #[arg(long, default_value = "SIM")]
    service: String,
    /// Print JSON (the list of records) instead of a table; a failure prints
    /// `{"error": {...}}`.
    #[arg(long)]
    json: bool,
}

fn status_line(o: &Order) -> String {
    let mut line = format!(
        "{} {} {}/{}",
        o.order_id,
        serde_plain(&o.status),
        o.traded,
        o.volume
    );
    if let Some(r) = &o.reason {
        line.push_str(&format!(" reason: {r}"));
    }
    line
}

/// A serde enum's string form (`part_traded`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(String::from))
        .unwrap_or_default()
}

/// A failed order call: `risk_rejected` (refused before any worker saw it) exits like a
/// rejected order, anything else like any failed call.
fn order_failed(e: &ClientError, json: bool) -> i32 {
    let code = super::fail(e, json);
    if e.code() == Some(ErrorCode::RiskRejected) {
        super::exit::REJECTED
    } else {
        code
    }
}

/// The exit code of an order in state `o`.
fn order_exit(o: &Order) -> i32 {
    if o.status == Status::Rejected {
        super::exit::REJECTED
    } else {
        super::exit::OK
    }
}

/// Places the order, prints its id, then one line per status change until final.
pub fn order(conn: &super::Conn, args: OrderArgs) -> anyhow::Result<i32> {
    let client = conn.connect(args.timeout_ms)?;
    // Subscribe before sending so no update is missed; a broker heartbeat proves the
    // subscription is live.
    let sub = conn.subscribe(&["order."])?;
    if !sub.wait_connected(Duration::from_millis(200)) {
        // No broker heartbeat yet: ask the broker (a query, safe to send) so that an
        // unreachable one answers `unavailable` now, not after the 3 s wait below.
        if let Err(e) = client.status() {
            return Ok(order_failed(&e, args.json));
        }
        sub.wait_connected(Duration::from_secs(3));
    }
    let req = OrderRequest {
        symbol: args.symbol,
        exchange: args.exchange,
        direction: match args.side {
            Side::Buy => Direction::Long,
            Side::Sell => Direction::Short,
        },
        order_type: match args.kind {
            Kind::Limit => OrderType::Limit,
            Kind::Market => OrderType::Market,
            Kind::Fak => OrderType::Fak,
            Kind::Fok => OrderType::Fok,
        },
        volume: args.volume,
        price: args.price,
        offset: Default::default(),
        account: args.account,
        reference: args
            .reference
            .unwrap_or_else(|| format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])),
    };
    let reference = req.reference.clone();
    let placed = match client.send_order(&args.service, req) {
        Ok(o) => o,
        Err(e) => return Ok(order_failed(&e, args.json)),
    };
    let lines = !args.json;
    // The reference matches the order to its journal lines (`"reference"` in the start
    // line, then the done line of the same job carries this order id).
    if lines {
        println!("{} reference={reference}", placed.order_id);
        println!("{}", status_line(&placed));
    }
    let mut last = placed.clone();
    let until = Instant::now() + Duration::from_millis(args.timeout_ms);
    while !last.status.is_final() && Instant::now() < until {
        let Some(ev) = sub.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        let Ok(o) = ev.decode::<Order>() else {
            continue;
        };
        if o.supersedes(&last) {
            if lines {
                println!("{}", status_line(&o));
            }
            last = o;
        }
    }
    if !last.status.is_final() {
        // Events may have been missed: ask the worker that holds the order.
        if let Ok(o) = client.query_order(&placed.order_id) {
            if o.supersedes(&last) {
                if lines {
                    println!("{}", status_line(&o));
                }
                last = o;
            }
        }
    }
    if args.json {
        let out = serde_json::json!({
            "order_id": last.order_id.to_string(),
            "reference": reference,
            "final": last.status.is_final(),
            "order": last,
        });
        println!("{out}");
    }
    Ok(order_exit(&last))
}

pub fn cancel(conn: &super::Conn, args: CancelArgs) -> anyhow::Result<i32> {
    let client = conn.connect(args.timeout_ms)?;
    match client.cancel_order(&args.order_id) {
        Ok(o) => {
            if args.json {
                println!("{}", serde_json::to_string(&o)?);
            } else {
                println!("{}", status_line(&o));
            }
            Ok(super::exit::OK)
        }
        Err(e) => Ok(super::fail(&e, args.json)),
    }
}

pub fn positions(conn: &super::Conn, args: AccountArgs) -> anyhow::Result<i32> {
    let client: Client = conn.connect(5000)?;
    let positions = match client.query_position(&args.service, &args.account) {
        Ok(p) => p,
        Err(e) => return Ok(super::fail(&e, args.json)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&positions)?);
        return Ok(0);
    }
    println!(
        "{:<12} {:<12} {:<6} {:>10} {:>10} {:>12} {:>12}",
        "ACCOUNT", "SYMBOL", "DIR", "VOLUME", "FROZEN", "PRICE", "PNL"
    );
    for p in positions {
        println!(
            "{:<12} {:<12} {:<6} {:>10} {:>10} {:>12.4} {:>12.2}",
            p.account,
            p.symbol,
            serde_plain(&p.direction),
            p.volume,
            p.frozen,
            p.price,
            p.pnl
        );
    }
    Ok(0)
}

pub fn trades(conn: &super::Conn, args: AccountArgs) -> anyhow::Result<i32> {
    let client: Client = conn.connect(5000)?;
    let trades = match client.query_trades(&args.service, &args.account) {
        Ok(t) => t,
        Err(e) => return Ok(super::fail(&e, args.json)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&trades)?);
        return Ok(0);
    }
    println!(
        "{:<27} {:<12} {:<12} {:<8} {:<6} {:>10} {:>12}  {:<28} ORDER",
        "TIME", "ACCOUNT", "SYMBOL", "EXCHANGE", "DIR", "VOLUME", "PRICE", "TRADE"
    );
    for t in trades {
        println!(
            "{:<27} {:<12} {:<12} {:<8} {:<6} {:>10} {:>12.4}  {:<28} {}",
            format_ns(t.datetime_ns),
            t.account,
            t.symbol,
            t.exchange,
            serde_plain(&t.direction),
            t.volume,
            t.price,
            t.trade_id,
            t.order_id
        );
    }
    Ok(0)
}

pub fn account(conn: &super::Conn, args: AccountArgs) -> anyhow::Result<i32> {
    let client: Client = conn.connect(5000)?;
    let accounts = match client.query_account(&args.service, &args.account) {
        Ok(a) => a,
        Err(e) => return Ok(super::fail(&e, args.json)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&accounts)?);
        return Ok(0);
    }
    println!(
        "{:<12} {:<8} {:>16} {:>16} {:>16}",
        "ACCOUNT", "GATEWAY", "BALANCE", "FROZEN", "AVAILABLE"
    );
    for a in accounts {
        println!(
            "{:<12} {:<8} {:>16.2} {:>16.2} {:>16.2}",
            a.account, a.gateway, a.balance, a.frozen, a.available
        );
    }
    Ok(0)
}
