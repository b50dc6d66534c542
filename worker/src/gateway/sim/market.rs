//! The simulated market: a deterministic function of (seed, symbol, UTC day, tick index),
//! so every SIM worker with the same configuration shows the same book at the same
//! moment, and history bars agree with the ticks.
//!
//! Each UTC day starts near the symbol's reference price (a seeded overnight gap of about
//! 1 %) and follows an additive random walk in whole priceticks. The randomness comes from
//! an integer hash of (seed, symbol, day, index) and the arithmetic is integer or plain
//! IEEE +,×,÷ and rounding — no `ln`/`exp`/`cos`, whose results may differ between libm
//! builds — so workers on different machines compute identical paths. The state of a day
//! is computed incrementally from its first tick: a worker starting at 15:00 walks the
//! ticks since midnight first (a few milliseconds).

use tradeplex_proto::model::{Bar, Contract, Interval, Product, Tick};

use super::book::{Book, LEVELS};
use super::config::{SimConfig, SimSymbol};

/// One UTC day, ns.
pub const DAY_NS: u64 = 86_400_000_000_000;
/// The walk is reflected at this many priceticks so prices and the book stay positive.
const FLOOR_TICKS: i64 = 10;
/// Overnight gap: standard deviation of a day's start around the reference price.
const DAY_GAP: f64 = 0.01;
/// `unit_normal`'s bound, a little over √12.
const NORMAL_BOUND: f64 = 3.47;
/// Priceticks kept between the walk and a price limit, so the whole 5-level book (the
/// spread is at most 2 ticks, then 4 more levels) stays inside the band.
const BOOK_MARGIN: i64 = 6;
const SQRT_3: f64 = 1.732_050_807_568_877_2;
const SALT_STEP: u64 = 0x5354_4550;
const SALT_FLOW: u64 = 0x464c_4f57;
const SALT_BOOK: u64 = 0x424f_4f4b;
const SALT_OPEN: u64 = 0x4f50_454e;
const SALT_OI: u64 = 0x4f49_4e54;

/// SplitMix64: a fast, well-mixed integer hash.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A roughly standard normal number from 64 random bits: the sum of four uniforms
/// (Irwin–Hall), centred and scaled to unit variance; bounded at ±3.46.
fn unit_normal(r: u64) -> f64 {
    let sum: f64 = (0..4)
        .map(|i| (((r >> (16 * i)) & 0xffff) as f64 + 0.5) / 65536.0)
        .sum();
    (sum - 2.0) * SQRT_3
}

fn reflect(p: i64) -> i64 {
    if p < FLOOR_TICKS {
        2 * FLOOR_TICKS - p
    } else {
        p
    }
}

/// Reflects `p` into `[lo, hi]` (clamped when a step overshoots the whole band).
fn reflect_in(p: i64, (lo, hi): (i64, i64)) -> i64 {
    let r = if p > hi {
        2 * hi - p
    } else if p < lo {
        2 * lo - p
    } else {
        p
    };
    r.clamp(lo, hi)
}

/// A position in time: the UTC day (days since the Unix epoch) and the tick's index
/// within it. Ordered by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TickIndex {
    /// Days since 1970-01-01.
    pub day: u64,
    /// Tick within the day: (time since midnight) / interval.
    pub n: u64,
}

/// Maps wall-clock time to tick indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    interval_ns: u64,
    per_day: u64,
}

impl Clock {
    /// A clock ticking every `interval_ms` (≥ 1).
    pub fn new(interval_ms: u64) -> Clock {
        let interval_ns = interval_ms.max(1) * 1_000_000;
        Clock {
            interval_ns,
            per_day: DAY_NS.div_ceil(interval_ns),
        }
    }

    /// Tick interval, ns.
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// Ticks in a day.
    pub fn per_day(&self) -> u64 {
        self.per_day
    }

    /// The tick current at `t_ns` (the last one that started at or before it).
    pub fn index_at(&self, t_ns: u64) -> TickIndex {
        TickIndex {
            day: t_ns / DAY_NS,
            n: (t_ns % DAY_NS) / self.interval_ns,
        }
    }

    /// When tick `idx` starts, Unix ns.
    pub fn time_of(&self, idx: TickIndex) -> u64 {
        idx.day * DAY_NS + idx.n * self.interval_ns
    }

    /// The tick after `idx`.
    pub fn next(&self, idx: TickIndex) -> TickIndex {
        if idx.n + 1 >= self.per_day {
            TickIndex {
                day: idx.day + 1,
                n: 0,
            }
        } else {
            TickIndex {
                day: idx.day,
                n: idx.n + 1,
            }
        }
    }
}

/// A symbol's static description and the parameters of its price path.
#[derive(Debug, Clone, PartialEq)]
pub struct Instrument {
    /// The contract as published.
    pub contract: Contract,
    /// `symbol.EXCHANGE` (vn.py's `vt_symbol`): the key of its market and holdings.
    pub vt_symbol: String,
    /// Daily price limit as a fraction of the previous close (`None`: no limits).
    pub limit_pct: Option<f64>,
    /// Margin ratio (position margin = price × volume × size × ratio).
    pub margin_ratio: f64,
    /// Pricetick in units of 10^-decimals, and that scale: prices are shown as
    /// `ticks × units / scale`, the nearest `f64` to the decimal price.
    tick_units: i64,
    scale: f64,
    start_ticks: i64,
    sigma_ticks: f64,
    day_sigma_ticks: f64,
    key: u64,
    depth: u64,
}

fn decimals(pricetick: f64) -> i32 {
    (0..=9)
        .find(|&d| {
            let s = pricetick * 10f64.powi(d);
            (s - s.round()).abs() < 1e-6
        })
        .unwrap_or(9)
}

impl Instrument {
    /// The instrument of `sym` under `sim`, published by gateway `gateway`.
    pub fn new(sym: &SimSymbol, sim: &SimConfig, gateway: &str) -> Instrument {
        let d = decimals(sym.pricetick);
        let scale = 10f64.powi(d);
        let start_ticks = (sym.price / sym.pricetick).round() as i64;
        let product = sym.product.unwrap_or(Product::Futures);
        let limit_pct = sym.limit_pct(product);
        // With price limits the overnight gap stays within a quarter of the band, so every
        // day's walk fits inside the limits around any close the previous day can have
        // (see `DayWalk::start`).
        let day_gap = match limit_pct {
            Some(p) => DAY_GAP.min(p / 4.0 / NORMAL_BOUND),
            None => DAY_GAP,
        };
        Instrument {
            vt_symbol: format!("{}.{}", sym.symbol, sym.exchange),
            limit_pct,
            contract: Contract {
                symbol: sym.symbol.clone(),
                exchange: sym.exchange.clone(),
                gateway: gateway.to_string(),
                name: if sym.name.is_empty() {
                    sym.symbol.clone()
                } else {
                    sym.name.clone()
                },
                product,
                size: sym.size,
                pricetick: sym.pricetick,
                min_volume: 1.0,
                max_volume: None,
                stop_supported: false,
                net_position: false,
                history_data: true,
                option_strike: None,
                option_underlying: None,
                option_type: None,
                option_listed_ns: None,
                option_expiry_ns: None,
                option_portfolio: None,
                option_index: None,
            },
            margin_ratio: sym.margin_ratio.unwrap_or(sim.margin_ratio),
            tick_units: (sym.pricetick * scale).round() as i64,
            scale,
            start_ticks,
            sigma_ticks: sim.volatility * start_ticks as f64,
            day_sigma_ticks: day_gap * start_ticks as f64,
            key: splitmix(sim.seed) ^ fnv1a(&sym.symbol),
            depth: sim.depth.max(1),
        }
    }

    /// The symbol.
    pub fn symbol(&self) -> &str {
        &self.contract.symbol
    }

    /// A price in priceticks as a decimal price.
    pub fn price(&self, ticks: i64) -> f64 {
        (ticks * self.tick_units) as f64 / self.scale
    }

    /// A decimal price in priceticks; `None` unless positive and a multiple of the pricetick.
    pub fn ticks_of(&self, price: f64) -> Option<i64> {
        if !price.is_finite()
            || price <= 0.0
            || !super::config::is_multiple(price, self.contract.pricetick)
        {
            return None;
        }
        Some((price / self.contract.pricetick).round() as i64)
    }

    /// Margin of `volume` lots at `price`.
    pub fn margin(&self, price: f64, volume: f64) -> f64 {
        price * volume * self.contract.size * self.margin_ratio
    }

    fn futures(&self) -> bool {
        self.contract.product == Product::Futures
    }

    /// The day's price limits `(limit_down, limit_up)` in priceticks around the previous
    /// close `pre_close` (priceticks), rounded inwards to the pricetick; `None` without
    /// limits.
    pub fn limits(&self, pre_close: i64) -> Option<(i64, i64)> {
        let p = self.limit_pct?;
        let c = pre_close as f64;
        // The small epsilon keeps exact products (19500 × 1.1) on their tick.
        let up = (c * (1.0 + p) + 1e-6).floor() as i64;
        let down = (c * (1.0 - p) - 1e-6).ceil() as i64;
        Some((down.max(1), up))
    }

    /// Where day `day` starts, before any band: the reference price plus the seeded
    /// overnight gap, in priceticks.
    fn anchor(&self, day: u64) -> i64 {
        let gap = (self.day_sigma_ticks * unit_normal(self.day_key(day, SALT_OPEN))).round();
        reflect(self.start_ticks + gap as i64)
    }

    fn day_key(&self, day: u64, salt: u64) -> u64 {
        splitmix(splitmix(self.key ^ salt) ^ day)
    }

    /// The band day `day`'s walk stays in, `(low, high)` priceticks, for a limited
    /// instrument. It depends on the day and the day before only — never on the previous
    /// close itself, which would chain every day back to the epoch — and is chosen so it
    /// lies inside the price limits around *any* close the previous day's band allows,
    /// [`BOOK_MARGIN`] ticks in, so the whole book stays inside the limits too.
    fn band(&self, day: u64) -> Option<(i64, i64)> {
        let p = self.limit_pct?;
        let own = |d: u64| {
            let a = self.anchor(d);
            let w = (a as f64 * p / 4.0).floor() as i64;
            (a - w, a + w)
        };
        let (lo, hi) = own(day);
        // The previous day's closes lie in its own band (day 0: around the start price).
        let (prev_lo, prev_hi) = match day.checked_sub(1) {
            Some(d) => own(d),
            None => {
                let w = (self.start_ticks as f64 * p / 4.0).floor() as i64;
                (self.start_ticks - w, self.start_ticks + w)
            }
        };
        let (down, _) = self.limits(prev_hi)?;
        let (_, up) = self.limits(prev_lo)?;
        let lo = lo.max(down + BOOK_MARGIN);
        let hi = hi.min(up - BOOK_MARGIN);
        // Validation (price × limit_pct ≥ 100 priceticks) keeps this non-empty; a config
        // that slipped through still gets a valid, if frozen, band.
        Some(if lo <= hi { (lo, hi) } else { (hi, hi) })
    }
}

/// The path of one symbol through one UTC day, walked tick by tick from its first tick.
#[derive(Debug, Clone, PartialEq)]
pub struct DayWalk {
    /// The day.
    pub day: u64,
    /// The current tick within the day.
    pub n: u64,
    /// Last price, priceticks.
    pub price: i64,
    /// Volume traded at this tick, lots.
    pub last_volume: u64,
    /// Whether this tick's trade hit the ask (else the bid).
    pub buyer_initiated: bool,
    /// Bid-ask spread, priceticks.
    pub spread: i64,
    /// Day's open, high, low, priceticks.
    pub open: i64,
    /// Day's high.
    pub high: i64,
    /// Day's low.
    pub low: i64,
    /// Volume since the day's first tick, lots.
    pub volume: u64,
    /// Σ price (priceticks) × lots since the day's first tick.
    pub turnover_ticks: u128,
    /// Open interest, lots (0 except for futures).
    pub open_interest: i64,
    /// The band the walk stays in (price-limited instruments), priceticks.
    pub band: Option<(i64, i64)>,
    step_base: u64,
    flow_base: u64,
    book_base: u64,
}

impl DayWalk {
    /// The first tick of `day`.
    pub fn start(inst: &Instrument, day: u64) -> DayWalk {
        let day_key = |salt: u64| inst.day_key(day, salt);
        let band = inst.band(day);
        let price = match band {
            Some((lo, hi)) => inst.anchor(day).clamp(lo, hi),
            None => inst.anchor(day),
        };
        let open_interest = if inst.futures() {
            50_000 + (day_key(SALT_OI) % 50_000) as i64
        } else {
            0
        };
        let mut w = DayWalk {
            day,
            n: 0,
            price,
            last_volume: 0,
            buyer_initiated: false,
            spread: 1,
            open: price,
            high: price,
            low: price,
            volume: 0,
            turnover_ticks: 0,
            open_interest,
            band,
            step_base: day_key(SALT_STEP),
            flow_base: day_key(SALT_FLOW),
            book_base: day_key(SALT_BOOK),
        };
        w.trade(inst);
        w
    }

    /// Moves to the next tick of the same day.
    pub fn advance(&mut self, inst: &Instrument) {
        self.n += 1;
        let z = unit_normal(splitmix(self.step_base ^ self.n));
        let next = self.price + (inst.sigma_ticks * z).round() as i64;
        self.price = match self.band {
            Some(band) => reflect_in(next, band),
            None => reflect(next),
        };
        self.high = self.high.max(self.price);
        self.low = self.low.min(self.price);
        self.trade(inst);
    }

    /// This tick's trade: volume, aggressor side, spread, open interest change.
    fn trade(&mut self, inst: &Instrument) {
        let q = splitmix(self.flow_base ^ self.n);
        self.buyer_initiated = q & 1 == 1;
        self.spread = if (q >> 1) & 3 == 0 { 2 } else { 1 };
        if inst.futures() {
            self.open_interest = (self.open_interest + ((q >> 3) & 0xff) as i64 % 15 - 7).max(0);
        }
        self.last_volume = 1 + (q >> 24) % inst.depth;
        self.volume += self.last_volume;
        self.turnover_ticks += self.price as u128 * self.last_volume as u128;
    }

    /// The book at this tick: the last trade sits at the best ask (buyer-initiated) or the
    /// best bid, then one pricetick per level; level volumes average `depth` lots.
    pub fn book(&self, inst: &Instrument) -> Book {
        let bid1 = if self.buyer_initiated {
            self.price - self.spread
        } else {
            self.price
        };
        let ask1 = bid1 + self.spread;
        let b = splitmix(self.book_base ^ self.n);
        let vol = |i: u64| (1 + splitmix(b ^ (i + 1)) % (2 * inst.depth - 1)) as f64;
        let mut book = Book {
            bid: [0; LEVELS],
            bid_volume: [0.0; LEVELS],
            ask: [0; LEVELS],
            ask_volume: [0.0; LEVELS],
        };
        for i in 0..LEVELS {
            book.bid[i] = bid1 - i as i64;
            book.ask[i] = ask1 + i as i64;
            book.bid_volume[i] = vol(i as u64);
            book.ask_volume[i] = vol((LEVELS + i) as u64);
        }
        book
    }
}

/// The walk of `day` up to and including tick `n` (clamped to the day).
pub fn walk_to(inst: &Instrument, clock: &Clock, day: u64, n: u64) -> DayWalk {
    let mut w = DayWalk::start(inst, day);
    let n = n.min(clock.per_day() - 1);
    while w.n < n {
        w.advance(inst);
    }
    w
}

/// One symbol's market now: its walk, yesterday's close, and the liquidity this worker
/// took from the current book.
#[derive(Debug, Clone)]
pub struct Market {
    /// The instrument.
    pub inst: std::sync::Arc<Instrument>,
    walk: DayWalk,
    pre_close: i64,
    /// Liquidity taken from the current book by this worker's orders.
    pub taken: super::book::Taken,
}

impl Market {
    /// The market at the tick current at `now_ns` (walks the day so far, and the whole
    /// previous day for its close).
    pub fn new(inst: std::sync::Arc<Instrument>, clock: &Clock, now_ns: u64) -> Market {
        let idx = clock.index_at(now_ns);
        let pre_close = match idx.day.checked_sub(1) {
            Some(d) => walk_to(&inst, clock, d, u64::MAX).price,
            None => inst.start_ticks,
        };
        let walk = walk_to(&inst, clock, idx.day, idx.n);
        Market {
            inst,
            walk,
            pre_close,
            taken: Default::default(),
        }
    }

    /// The current tick's index.
    pub fn index(&self) -> TickIndex {
        TickIndex {
            day: self.walk.day,
            n: self.walk.n,
        }
    }

    /// Moves one tick forward (to the next day's first tick after a day's last).
    pub fn step(&mut self, clock: &Clock) {
        if self.walk.n + 1 >= clock.per_day() {
            self.pre_close = self.walk.price;
            self.walk = DayWalk::start(&self.inst, self.walk.day + 1);
        } else {
            self.walk.advance(&self.inst);
        }
        self.taken = Default::default();
    }

    /// The current book.
    pub fn book(&self) -> Book {
        self.walk.book(&self.inst)
    }

    /// Last price.
    pub fn last_price(&self) -> f64 {
        self.inst.price(self.walk.price)
    }

    /// Today's price limits `(limit_down, limit_up)`, priceticks (`None`: no limits).
    pub fn limits(&self) -> Option<(i64, i64)> {
        self.inst.limits(self.pre_close)
    }

    /// The current tick as published.
    pub fn tick(&self, clock: &Clock) -> Tick {
        let inst = &self.inst;
        let w = &self.walk;
        let book = self.book();
        let px = |a: [i64; LEVELS]| a.map(|t| inst.price(t));
        let (limit_down, limit_up) = self
            .limits()
            .map_or((0.0, 0.0), |(d, u)| (inst.price(d), inst.price(u)));
        Tick {
            symbol: inst.contract.symbol.clone(),
            exchange: inst.contract.exchange.clone(),
            gateway: inst.contract.gateway.clone(),
            datetime_ns: clock.time_of(self.index()),
            name: inst.contract.name.clone(),
            last_price: inst.price(w.price),
            last_volume: w.last_volume as f64,
            volume: w.volume as f64,
            turnover: turnover(inst, w.turnover_ticks),
            open_interest: w.open_interest as f64,
            open_price: inst.price(w.open),
            high_price: inst.price(w.high),
            low_price: inst.price(w.low),
            pre_close: inst.price(self.pre_close),
            limit_up,
            limit_down,
            localtime_ns: None,
            bid_price: px(book.bid),
            bid_volume: book.bid_volume,
            ask_price: px(book.ask),
            ask_volume: book.ask_volume,
        }
    }
}

fn turnover(inst: &Instrument, ticks_lots: u128) -> f64 {
    ticks_lots as f64 * inst.contract.pricetick * inst.contract.size
}

/// How much one history request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most ticks simulated (bounds the work).
    pub max_ticks: u64,
    /// Most bars returned (bounds the reply: one bar is about 250 bytes of MessagePack).
    pub max_bars: u64,
}

/// Why bars could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// `tick` history: SIM keeps bars only.
    #[error("interval tick: SIM serves bars (minute, hour, daily, weekly), not tick history")]
    NoBars,
    /// The range needs too many ticks simulated.
    #[error("history range too long: it would simulate {needed} ticks, at most {limit}; ask for a shorter range")]
    TooManyTicks {
        /// Ticks needed.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// The range holds too many bars for one reply.
    #[error("history range too long: {count} bars, at most {limit} per request; ask for a shorter range")]
    TooManyBars {
        /// Bars in the range.
        count: u64,
        /// The limit.
        limit: u64,
    },
}

/// Complete bars of `interval` with open times in `[start_ns, end_ns)` (`end_ns` 0: no
/// bound) that ended by `now_ns`, aggregated from the very ticks the market publishes:
/// open/high/low/close of their last prices, volume and turnover summed, open interest
/// of the bar's last tick. Bars are aligned to the interval (daily bars to UTC midnight,
/// weekly bars to Monday 00:00 UTC). Refuses ranges beyond `limits`.
pub fn bars(
    inst: &Instrument,
    clock: &Clock,
    interval: Interval,
    (start_ns, end_ns): (u64, u64),
    now_ns: u64,
    limits: HistoryLimits,
) -> Result<Vec<Bar>, HistoryError> {
    let len = interval.nanos().ok_or(HistoryError::NoBars)?;
    // Weeks start on Mondays: 1970-01-05 was the first.
    let origin = if interval == Interval::Weekly {
        4 * DAY_NS
    } else {
        0
    };
    let first = start_ns
        .saturating_sub(origin)
        .div_ceil(len)
        .saturating_mul(len)
        .saturating_add(origin);
    // Exclusive bound on bar open times: before end_ns, and complete by now.
    let mut open_limit = now_ns.saturating_sub(len).saturating_add(1);
    if end_ns != 0 {
        open_limit = open_limit.min(end_ns);
    }
    if first >= open_limit {
        return Ok(Vec::new());
    }
    let count = (open_limit - first).div_ceil(len);
    if count > limits.max_bars {
        return Err(HistoryError::TooManyBars {
            count,
            limit: limits.max_bars,
        });
    }
    let ticks_end = first + count * len; // exclusive
    let last_day = (ticks_end - 1) / DAY_NS;
    let last_n = |day: u64| {
        let end_in_day = (ticks_end - 1).min((day + 1) * DAY_NS - 1);
        clock.index_at(end_in_day).n
    };
    let needed: u64 = (first / DAY_NS..=last_day).map(|d| last_n(d) + 1).sum();
    if needed > limits.max_ticks {
        return Err(HistoryError::TooManyTicks {
            needed,
            limit: limits.max_ticks,
        });
    }
    let mut acc: Vec<Option<BarAcc>> = vec![None; count as usize];
    for day in first / DAY_NS..=last_day {
        let end_n = last_n(day);
        let mut w = DayWalk::start(inst, day);
        loop {
            let t = clock.time_of(TickIndex { day, n: w.n });
            if t >= first && t < ticks_end {
                let slot = &mut acc[((t - first) / len) as usize];
                match slot {
                    Some(b) => b.add(&w),
                    None => *slot = Some(BarAcc::new(&w)),
                }
            }
            if w.n >= end_n {
                break;
            }
            w.advance(inst);
        }
    }
    Ok(acc
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let b = b?;
            Some(Bar {
                symbol: inst.contract.symbol.clone(),
                exchange: inst.contract.exchange.clone(),
                gateway: inst.contract.gateway.clone(),
                interval,
                datetime_ns: first + i as u64 * len,
                open_price: inst.price(b.open),
                high_price: inst.price(b.high),
                low_price: inst.price(b.low),
                close_price: inst.price(b.close),
                volume: b.volume as f64,
                turnover: turnover(inst, b.turnover_ticks),
                open_interest: b.open_interest as f64,
            })
        })
        .collect())
}

#[derive(Debug, Clone, Copy)]
struct BarAcc {
    open: i64,
    high: i64,
    low: i64,
    close: i64,
    volume: u64,
    turnover_ticks: u128,
    open_interest: i64,
}

impl BarAcc {
    fn new(w: &DayWalk) -> BarAcc {
        BarAcc {
            open: w.price,
            high: w.price,
            low: w.price,
            close: w.price,
            volume: w.last_volume,
            turnover_ticks: w.price as u128 * w.last_volume as u128,
            open_interest: w.open_interest,
        }
    }

    fn add(&mut self, w: &DayWalk) {
        self.high = self.high.max(w.price);
        self.low = self.low.min(w.price);
        self.close = w.price;
        self.volume += w.last_volume;
        self.turnover_ticks += w.price as u128 * w.last_volume as u128;
        self.open_interest = w.open_interest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn inst(sym: usize) -> Arc<Instrument> {
        let c = SimConfig::default();
        Arc::new(Instrument::new(&c.symbols[sym], &c, "SIM"))
    }

    /// 2024-06-03 13:30:00.2 UTC
    const T0: u64 = 1_717_421_400_200_000_000;
    const LIMITS: HistoryLimits = HistoryLimits {
        max_ticks: 1_000_000,
        max_bars: 1000,
    };

    #[test]
    fn prices_are_decimal_and_on_the_pricetick() {
        let i = inst(0);
        assert_eq!(i.price(19_501), 3900.2);
        assert_eq!(i.ticks_of(3900.2), Some(19_501));
        assert_eq!(i.ticks_of(3900.3), None);
        assert_eq!(i.ticks_of(0.0), None);
        assert_eq!(i.ticks_of(-0.2), None);
        assert_eq!(i.ticks_of(f64::NAN), None);
        assert_eq!(inst(2).price(19_001), 190.01);
    }

    #[test]
    fn the_clock_counts_ticks_from_utc_midnight() {
        let c = Clock::new(500);
        let idx = c.index_at(T0);
        assert_eq!(idx.day, 19_877);
        assert_eq!(idx.n, 13 * 7200 + 30 * 120);
        assert!(c.time_of(idx) <= T0 && T0 < c.time_of(idx) + c.interval_ns());
        assert_eq!(c.per_day(), 172_800);
        assert_eq!(
            c.next(TickIndex { day: 3, n: 172_799 }),
            TickIndex { day: 4, n: 0 }
        );
    }

    #[test]
    fn two_workers_started_apart_see_the_same_market() {
        let clock = Clock::new(500);
        let mut early = Market::new(inst(0), &clock, T0);
        for _ in 0..1000 {
            early.step(&clock);
        }
        let late = Market::new(inst(0), &clock, T0 + 1000 * clock.interval_ns());
        assert_eq!(early.index(), late.index());
        assert_eq!(early.tick(&clock), late.tick(&clock));
        // A different seed is a different market.
        let sim = SimConfig {
            seed: 2,
            ..SimConfig::default()
        };
        let other = Market::new(
            Arc::new(Instrument::new(&sim.symbols[0], &sim, "SIM")),
            &clock,
            T0 + 1000 * clock.interval_ns(),
        );
        assert_ne!(other.tick(&clock).last_price, late.tick(&clock).last_price);
    }

    #[test]
    fn the_market_rolls_over_midnight_with_yesterdays_close() {
        let clock = Clock::new(500);
        let midnight = (T0 / DAY_NS + 1) * DAY_NS;
        let mut m = Market::new(inst(1), &clock, midnight - 1);
        let close = m.tick(&clock).last_price;
        m.step(&clock);
        assert_eq!(m.index().n, 0);
        let t = m.tick(&clock);
        assert_eq!(t.pre_close, close);
        assert_eq!(t.datetime_ns, midnight);
        assert_eq!(t.open_price, t.last_price);
        assert_eq!(t.volume, t.last_volume);
    }

    #[test]
    fn books_are_five_levels_around_the_last_price() {
        let clock = Clock::new(500);
        let mut m = Market::new(inst(0), &clock, T0);
        for _ in 0..200 {
            let t = m.tick(&clock);
            assert!(t.bid_price[0] < t.ask_price[0]);
            assert!(t.last_price == t.bid_price[0] || t.last_price == t.ask_price[0]);
            for i in 1..LEVELS {
                assert!(t.bid_price[i] < t.bid_price[i - 1]);
                assert!(t.ask_price[i] > t.ask_price[i - 1]);
            }
            assert!(t
                .bid_volume
                .iter()
                .chain(&t.ask_volume)
                .all(|v| *v >= 1.0 && *v < 20.0));
            assert!(t.low_price <= t.last_price && t.last_price <= t.high_price);
            m.step(&clock);
        }
    }

    #[test]
    fn the_walk_moves_at_about_the_configured_volatility() {
        let clock = Clock::new(500);
        let i = inst(0);
        let mut w = DayWalk::start(&i, 19_877);
        let (mut sum_sq, n) = (0.0, 20_000);
        for _ in 0..n {
            let p = w.price;
            w.advance(&i);
            sum_sq += ((w.price - p) as f64).powi(2);
        }
        let sd = (sum_sq / n as f64).sqrt();
        // 0.0002 × 19 500 ticks = 3.9 ticks a step.
        assert!((3.5..4.3).contains(&sd), "step sd {sd}");
        let _ = clock;
    }

    #[test]
    fn minute_bars_agree_with_the_ticks() {
        let clock = Clock::new(500);
        let i = inst(0);
        let start = T0 - 3 * 60_000_000_000;
        let bars = bars(&i, &clock, Interval::Minute, (start, 0), T0, LIMITS).unwrap();
        // 13:27:00.2 → first bar 13:28; complete by 13:30:00.2 → 13:28 and 13:29.
        assert_eq!(bars.len(), 2);
        let m0 = bars[0].datetime_ns;
        assert_eq!(m0 % 60_000_000_000, 0);
        let mut m = Market::new(i.clone(), &clock, m0);
        let mut ticks = Vec::new();
        while clock.time_of(m.index()) < m0 + 60_000_000_000 {
            ticks.push(m.tick(&clock));
            m.step(&clock);
        }
        assert_eq!(ticks.len(), 120);
        let b = &bars[0];
        assert_eq!(b.open_price, ticks[0].last_price);
        assert_eq!(b.close_price, ticks[119].last_price);
        let hi = ticks.iter().map(|t| t.last_price).fold(f64::MIN, f64::max);
        let lo = ticks.iter().map(|t| t.last_price).fold(f64::MAX, f64::min);
        assert_eq!((b.high_price, b.low_price), (hi, lo));
        assert_eq!(b.volume, ticks.iter().map(|t| t.last_volume).sum::<f64>());
        assert_eq!(b.open_interest, ticks[119].open_interest);
        // The next tick starts the next bar.
        assert_eq!(bars[1].open_price, m.tick(&clock).last_price);
    }

    #[test]
    fn daily_bars_match_the_days_ticks_and_long_ranges_are_refused() {
        let clock = Clock::new(500);
        let i = inst(1);
        let day = T0 / DAY_NS;
        let bars = bars(
            &i,
            &clock,
            Interval::Daily,
            ((day - 2) * DAY_NS, 0),
            T0,
            LIMITS,
        )
        .unwrap();
        assert_eq!(bars.len(), 2);
        let m = Market::new(i.clone(), &clock, day * DAY_NS);
        let t = m.tick(&clock);
        assert_eq!(t.pre_close, bars[1].close_price);
        let last = walk_to(&i, &clock, day - 1, u64::MAX);
        assert_eq!(bars[1].high_price, i.price(last.high));
        assert_eq!(bars[1].volume, last.volume as f64);
        let e = super::bars(
            &i,
            &clock,
            Interval::Daily,
            ((day - 30) * DAY_NS, 0),
            T0,
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(e, HistoryError::TooManyTicks { needed, limit } if needed > limit));
        let e = super::bars(&i, &clock, Interval::Minute, (T0 - DAY_NS, 0), T0, LIMITS);
        assert!(
            matches!(e, Err(HistoryError::TooManyBars { count: 1439, .. })),
            "{e:?}"
        );
        // Nothing complete yet: no bars.
        assert!(super::bars(&i, &clock, Interval::Hour, (T0, 0), T0, LIMITS)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn limits_are_rounded_inwards_to_the_pricetick_and_ticks_carry_them() {
        let i = inst(0); // IF2412, 10 %, 0.2 a tick
                         // 3900.2 × 1.1 = 4290.22 → 4290.2; × 0.9 = 3510.18 → 3510.2.
        let (down, up) = i.limits(19_501).unwrap();
        assert_eq!((i.price(down), i.price(up)), (3510.2, 4290.2));
        // An exact product stays on its tick: 3900 × 1.1 = 4290.
        assert_eq!(i.limits(19_500), Some((17_550, 21_450)));
        assert_eq!(inst(2).limits(19_000), None, "AAPL has no price limits");
        let clock = Clock::new(500);
        let t = Market::new(i.clone(), &clock, T0).tick(&clock);
        let pre = i.ticks_of(t.pre_close).unwrap();
        let (down, up) = i.limits(pre).unwrap();
        assert_eq!((t.limit_down, t.limit_up), (i.price(down), i.price(up)));
        assert_eq!(t.name, "CSI 300 index future");
        assert_eq!(t.exchange, "CFFEX");
        let t = Market::new(inst(3), &clock, T0).tick(&clock);
        assert_eq!(
            (t.limit_down, t.limit_up, t.exchange.as_str()),
            (0.0, 0.0, "GLOBAL")
        );
    }

    /// Every tick of several whole days, with ten times the default volatility (a free walk
    /// would leave a 10 % band within hours): the last price and all five levels of the
    /// book stay inside the day's limits around the previous close.
    #[test]
    fn price_limited_walks_and_books_stay_inside_the_limits_all_day() {
        let mut c = SimConfig {
            tick_interval_ms: 5000,
            volatility: 0.002,
            ..SimConfig::default()
        };
        // The narrowest bands validation allows, at both ends of the limit_pct range.
        c.symbols[2].limit_pct = Some(0.3);
        c.symbols[2].price = 3.34; // 334 ticks: 30 % ≈ 100 ticks, the minimum
        c.symbols[3].product = Some(Product::Futures);
        c.symbols[3].limit_pct = Some(0.01);
        c.symbols[3].price = 1000.0; // 10000 ticks: 1 % = 100 ticks, the minimum
        c.validate().unwrap();
        let clock = Clock::new(c.tick_interval_ms);
        let day0 = T0 / DAY_NS;
        for sym in &c.symbols {
            let i = Arc::new(Instrument::new(sym, &c, "SIM"));
            let (mut lowest, mut highest) = (f64::MAX, f64::MIN);
            for day in day0..day0 + 4 {
                let mut m = Market::new(i.clone(), &clock, day * DAY_NS);
                let (down, up) = m.limits().unwrap();
                let (down, up) = (i.price(down), i.price(up));
                for _ in 0..clock.per_day() {
                    let t = m.tick(&clock);
                    assert_eq!((t.limit_down, t.limit_up), (down, up), "{}", sym.symbol);
                    assert!(
                        down <= t.bid_price[4] && t.ask_price[4] <= up,
                        "{} day {day}: book {:?}/{:?} outside {down}-{up}",
                        sym.symbol,
                        t.bid_price,
                        t.ask_price
                    );
                    lowest = lowest.min(t.last_price);
                    highest = highest.max(t.last_price);
                    m.step(&clock);
                }
            }
            // The walk moved: it is confined, not frozen.
            assert!(
                (highest - lowest) / sym.price > 0.005,
                "{}: {lowest}-{highest}",
                sym.symbol
            );
        }
    }

    #[test]
    fn weekly_bars_start_on_mondays_and_tick_history_is_refused() {
        let clock = Clock::new(60_000);
        let i = inst(1);
        let limits = HistoryLimits {
            max_ticks: 1_000_000,
            max_bars: 100,
        };
        let bars = bars(
            &i,
            &clock,
            Interval::Weekly,
            (T0 - 21 * DAY_NS, 0),
            T0,
            limits,
        )
        .unwrap();
        assert!(!bars.is_empty());
        for b in &bars {
            // 1970-01-05, day 4 since the epoch, was a Monday.
            assert_eq!((b.datetime_ns / DAY_NS) % 7, 4, "{b:?}");
            assert_eq!(b.interval, Interval::Weekly);
        }
        let e = super::bars(&i, &clock, Interval::Tick, (T0 - DAY_NS, 0), T0, limits);
        assert_eq!(e, Err(HistoryError::NoBars));
    }
}
