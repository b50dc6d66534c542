//! A sample strategy written against the Tradeplex client library: a moving-average
//! crossover on SIM ticks. It subscribes to one symbol, goes long when the fast average
//! crosses above the slow one and flattens when it crosses below, rests a passive order
//! now and then and cancels it if it does not fill, and prints fills and positions.
//!
//! Run the local cluster with `scripts/cluster.sh`, or by hand against a running broker:
//! `cargo run --release --example ma_cross -- --symbol IF2412`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Parser;
use tradeplex_client::events::{EventOptions, Repair, Subscriber};
use tradeplex_client::{Client, ClientOptions};
use tradeplex_ops::Shutdown;
use tradeplex_proto::model::{Direction, Order, OrderId, OrderRequest, OrderType, Tick, Trade};

#[derive(Parser, Debug)]
#[command(about = "Moving-average crossover on SIM ticks")]
struct Args {
    #[arg(long, env = "TRADEPLEX_BROKER", default_value = "tcp://127.0.0.1:5555")]
    broker: String,
    #[arg(long, env = "TRADEPLEX_EVENTS", default_value = "tcp://127.0.0.1:5558")]
    events: String,
    /// Gateway service.
    #[arg(long, default_value = "SIM")]
    service: String,
    /// Symbol to trade (default: the first contract the gateway lists).
    #[arg(long)]
    symbol: Option<String>,
    /// Account ("" = the gateway's default).
    #[arg(long, default_value = "")]
    account: String,
    /// Fast moving-average length, ticks.
    #[arg(long, default_value_t = 5)]
    fast: usize,
    /// Slow moving-average length, ticks.
    #[arg(long, default_value_t = 20)]
    slow: usize,
    /// Order size.
    #[arg(long, default_value_t = 1.0)]
    volume: f64,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration_s: u64,
}

struct Strategy {
    client: Client,
    args: Args,
    symbol: String,
    prices: VecDeque<f64>,
    last_signal: Option<bool>,
    position: f64,
    resting: Option<(OrderId, u32)>,
    ticks: u64,
    fills: u64,
}

fn mean(v: impl Iterator<Item = f64>, n: usize) -> f64 {
    v.sum::<f64>() / n as f64
}

impl Strategy {
    fn on_tick(&mut self, tick: &Tick) {
        self.ticks += 1;
        self.prices.push_back(tick.last_price);
        if self.prices.len() > self.args.slow {
            self.prices.pop_front();
        }
        self.age_resting_order();
        if self.prices.len() < self.args.slow {
            return;
        }
        let fast = mean(
            self.prices.iter().rev().take(self.args.fast).copied(),
            self.args.fast,
        );
        let slow = mean(self.prices.iter().copied(), self.args.slow);
        let bullish = fast > slow;
        if self.last_signal == Some(bullish) {
            if self.ticks.is_multiple_of(25) && self.resting.is_none() {
                self.rest_passive_order(tick);
            }
            return;
        }
        self.last_signal = Some(bullish);
        println!(
            "signal: fast {fast:.2} {} slow {slow:.2}",
            if bullish { ">" } else { "<" }
        );
        if bullish && self.position <= 0.0 {
            let volume = self.args.volume - self.position;
            self.place(Direction::Long, volume, tick.ask_price[0], "cross-up");
        } else if !bullish && self.position > 0.0 {
            self.place(
                Direction::Short,
                self.position,
                tick.bid_price[0],
                "cross-down",
            );
        }
    }

    /// Marketable limit order at the touch.
    fn place(&mut self, direction: Direction, volume: f64, price: f64, why: &str) {
        let req = OrderRequest {
            symbol: self.symbol.clone(),
            exchange: String::new(),
            direction,
            order_type: OrderType::Limit,
            volume,
            price,
            offset: Default::default(),
            account: self.args.account.clone(),
            reference: why.to_string(),
        };
        match self.client.send_order(&self.args.service, req) {
            Ok(o) => println!(
                "order {} {:?} {} @ {} ({why}): {:?}",
                o.order_id, direction, volume, price, o.status
            ),
            Err(e) => eprintln!("order failed: {e}"),
        }
    }

    /// A bid a few ticks under the market, cancelled after a while if it has not filled.
    fn rest_passive_order(&mut self, tick: &Tick) {
        let pricetick = (tick.ask_price[0] - tick.bid_price[0]).abs().max(0.2);
        let price = tick.bid_price[0] - 5.0 * pricetick;
        let req = OrderRequest {
            symbol: self.symbol.clone(),
            exchange: String::new(),
            direction: Direction::Long,
            order_type: OrderType::Limit,
            volume: self.args.volume,
            price: (price / pricetick).round() * pricetick,
            offset: Default::default(),
            account: self.args.account.clone(),
            reference: "passive".into(),
        };
        if let Ok(o) = self.client.send_order(&self.args.service, req) {
            println!("resting {} bid @ {:.2}", o.order_id, o.price);
            self.resting = Some((o.order_id, 0));
        }
    }

    fn age_resting_order(&mut self) {
        let Some((id, age)) = self.resting.as_mut() else {
            return;
        };
        *age += 1;
        if *age < 10 {
            return;
        }
        let id = id.clone();
        self.resting = None;
        match self.client.cancel_order(&id) {
            Ok(o) => println!("cancel {id}: {:?}", o.status),
            Err(e) => println!("cancel {id}: {e}"),
        }
    }

    fn on_order(&mut self, o: &Order) {
        if self
            .resting
            .as_ref()
            .is_some_and(|(id, _)| *id == o.order_id)
            && o.status.is_final()
        {
            self.resting = None;
        }
    }

    fn on_trade(&mut self, t: &Trade) {
        self.fills += 1;
        self.position += match t.direction {
            Direction::Long => t.volume,
            Direction::Short => -t.volume,
            // A fill is a buy or a sell; `net` is only ever a position's direction.
            Direction::Net => 0.0,
        };
        println!(
            "fill {} {:?} {} @ {:.2} -> position {}",
            t.order_id, t.direction, t.volume, t.price, self.position
        );
    }

    fn report(&self) {
        match self
            .client
            .query_position(&self.args.service, &self.args.account)
        {
            Ok(ps) => {
                for p in ps.iter().filter(|p| p.volume != 0.0) {
                    println!(
                        "position {} {:?} {} @ {:.2} pnl {:.2}",
                        p.symbol, p.direction, p.volume, p.price, p.pnl
                    );
                }
            }
            Err(e) => eprintln!("position query failed: {e}"),
        }
        if let Ok(accounts) = self
            .client
            .query_account(&self.args.service, &self.args.account)
        {
            for a in accounts {
                println!(
                    "account {} balance {:.2} available {:.2}",
                    a.account, a.balance, a.available
                );
            }
        }
        println!("ticks {} fills {}", self.ticks, self.fills);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tradeplex_ops::logging::init("warn", false);
    let shutdown = Shutdown::new();
    shutdown.on_signals()?;
    let client = Client::connect(&args.broker, ClientOptions::default())?;
    let symbol = match &args.symbol {
        Some(s) => s.clone(),
        None => client
            .query_contracts(&args.service)?
            .first()
            .map(|c| c.symbol.clone())
            .ok_or_else(|| anyhow::anyhow!("{} lists no contracts", args.service))?,
    };
    let events = Subscriber::connect(
        &args.events,
        &[
            &format!("tick.{}.{symbol}", args.service),
            "order.",
            "trade.",
        ],
        // Orders and trades lost on the way are fetched back from the broker.
        EventOptions {
            repair: Some(Repair::new(&args.broker)),
            ..EventOptions::default()
        },
    )?;
    events.wait_connected(Duration::from_secs(5));
    let contract = client.subscribe(&args.service, &symbol)?;
    println!(
        "trading {} ({}) fast {} slow {}",
        contract.symbol, contract.name, args.fast, args.slow
    );
    let deadline =
        (args.duration_s > 0).then(|| Instant::now() + Duration::from_secs(args.duration_s));
    let mut s = Strategy {
        client,
        symbol,
        prices: VecDeque::new(),
        last_signal: None,
        position: 0.0,
        resting: None,
        ticks: 0,
        fills: 0,
        args,
    };
    let mut last_report = Instant::now();
    while !shutdown.is_triggered() && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(ev) = events.recv_timeout(Duration::from_millis(100)) {
            match ev.kind.as_str() {
                "tick" => ev.decode::<Tick>().map(|t| s.on_tick(&t)).ok(),
                "order" => ev.decode::<Order>().map(|o| s.on_order(&o)).ok(),
                "trade" => ev.decode::<Trade>().map(|t| s.on_trade(&t)).ok(),
                _ => None,
            };
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            s.report();
            last_report = Instant::now();
        }
    }
    s.report();
    println!("events missed (gaps): {}", events.gaps());
    Ok(())
}
