//! The `[sim]` table of the worker's TOML: the simulated market (seed, tick interval,
//! volatility, book depth, symbols) and its accounts. Every field has a default, so
//! `tradeplex-worker --service SIM` needs no file.

use serde::{Deserialize, Serialize};
use tradeplex_proto::model::Product;

/// A field of `[sim]` that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config field `{field}`: {reason}")]
pub struct InvalidField {
    /// The field, e.g. `sim.symbols.pricetick`.
    pub field: &'static str,
    /// What is wrong (names the symbol or account concerned).
    pub reason: String,
}

/// The simulated exchange's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of the price paths. Workers with the same seed, symbols and tick interval
    /// simulate the same market.
    pub seed: u64,
    /// Time between ticks, ms (10–60000). The tick index is time since UTC midnight
    /// divided by this.
    pub tick_interval_ms: u64,
    /// Standard deviation of one tick's price move, as a fraction of the start price.
    pub volatility: f64,
    /// Margin ratio of symbols that do not set their own (0 < r ≤ 1).
    pub margin_ratio: f64,
    /// Mean volume of one book level, lots (1–100000).
    pub depth: u64,
    /// Accept the `sim_disconnect` operation (fault injection for tests and drills).
    pub allow_fault_injection: bool,
    /// Tradable symbols (replaces the default list when given).
    pub symbols: Vec<SimSymbol>,
    /// Accounts (replaces the default list when given); the first is the default account.
    pub accounts: Vec<SimAccount>,
}

/// One simulated symbol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSymbol {
    /// Symbol, e.g. `IF2412` (letters, digits, `_` and `-`; at most 32).
    pub symbol: String,
    /// Exchange, a vn.py `Exchange` value, e.g. `CFFEX` (default `LOCAL`; 1–16 of
    /// `[A-Z0-9_]`).
    #[serde(default = "local")]
    pub exchange: String,
    /// Display name (defaults to the symbol).
    #[serde(default)]
    pub name: String,
    /// Reference price each UTC day starts near (a multiple of `pricetick`).
    pub price: f64,
    /// Minimum price increment.
    pub pricetick: f64,
    /// Contract multiplier.
    #[serde(default = "one")]
    pub size: f64,
    /// Product class (default `futures`).
    #[serde(default)]
    pub product: Option<Product>,
    /// Margin ratio (default: `[sim] margin_ratio`).
    #[serde(default)]
    pub margin_ratio: Option<f64>,
    /// Daily price limit as a fraction of the previous close, like a Chinese futures
    /// exchange (0.01–0.3; 0 = no limits). Default: [`FUTURES_LIMIT_PCT`] for futures,
    /// none for other products.
    #[serde(default)]
    pub limit_pct: Option<f64>,
}

/// The price limit of futures that set no `limit_pct`.
pub const FUTURES_LIMIT_PCT: f64 = 0.1;
/// Smallest and largest `limit_pct`.
pub const LIMIT_PCT_RANGE: (f64, f64) = (0.01, 0.3);
/// A limit band must be at least this many priceticks each side of the price.
pub const MIN_LIMIT_TICKS: f64 = 100.0;

impl SimSymbol {
    /// The price limit this symbol trades with (`None`: no limits).
    pub fn limit_pct(&self, product: Product) -> Option<f64> {
        match self.limit_pct {
            Some(p) if p > 0.0 => Some(p),
            Some(_) => None,
            None => (product == Product::Futures).then_some(FUTURES_LIMIT_PCT),
        }
    }
}

/// One simulated account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimAccount {
    /// Account id (letters, digits, `_` and `-`; at most 64).
    pub account: String,
    /// Starting cash.
    pub cash: f64,
}

fn one() -> f64 {
    1.0
}

fn local() -> String {
    "LOCAL".into()
}

#[allow(clippy::too_many_arguments)]
fn symbol(
    symbol: &str,
    exchange: &str,
    name: &str,
    product: Product,
    price: f64,
    pricetick: f64,
    size: f64,
    margin_ratio: f64,
    limit_pct: Option<f64>,
) -> SimSymbol {
    SimSymbol {
        symbol: symbol.into(),
        exchange: exchange.into(),
        name: name.into(),
        price,
        pricetick,
        size,
        product: Some(product),
        margin_ratio: Some(margin_ratio),
        limit_pct,
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            tick_interval_ms: 500,
            volatility: 0.0002,
            margin_ratio: 0.1,
            depth: 10,
            allow_fault_injection: true,
            symbols: vec![
                symbol(
                    "IF2412",
                    "CFFEX",
                    "CSI 300 index future",
                    Product::Futures,
                    3900.0,
                    0.2,
                    300.0,
                    0.12,
                    Some(0.1),
                ),
                symbol(
                    "rb2501",
                    "SHFE",
                    "Rebar future",
                    Product::Futures,
                    3500.0,
                    1.0,
                    10.0,
                    0.1,
                    Some(0.08),
                ),
                symbol(
                    "AAPL",
                    "NASDAQ",
                    "Apple Inc.",
                    Product::Equity,
                    190.0,
                    0.01,
                    1.0,
                    1.0,
                    None,
                ),
                symbol(
                    "BTCUSDT",
                    "GLOBAL",
                    "Bitcoin / Tether",
                    Product::Spot,
                    60000.0,
                    0.1,
                    1.0,
                    1.0,
                    None,
                ),
            ],
            accounts: vec![SimAccount {
                account: "sim".into(),
                cash: 1_000_000.0,
            }],
        }
    }
}

/// Smallest start price in priceticks (keeps the random walk's floor far below it).
pub const MIN_START_TICKS: f64 = 50.0;

fn valid_exchange(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `price` is a whole number of `pricetick`s.
pub fn is_multiple(price: f64, pricetick: f64) -> bool {
    let ticks = price / pricetick;
    (ticks - ticks.round()).abs() < 1e-6
}

impl SimConfig {
    /// Checks every field; the error names the field and the symbol or account.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let check = |field: &'static str, ok: bool, reason: String| {
            if ok {
                Ok(())
            } else {
                Err(InvalidField { field, reason })
            }
        };
        check(
            "sim.tick_interval_ms",
            (10..=60_000).contains(&self.tick_interval_ms),
            "must be 10-60000".into(),
        )?;
        check(
            "sim.volatility",
            self.volatility.is_finite() && (0.0..=0.1).contains(&self.volatility),
            "must be 0-0.1 (a fraction of the start price per tick)".into(),
        )?;
        check(
            "sim.margin_ratio",
            self.margin_ratio > 0.0 && self.margin_ratio <= 1.0,
            "must be > 0 and <= 1".into(),
        )?;
        check(
            "sim.depth",
            (1..=100_000).contains(&self.depth),
            "must be 1-100000".into(),
        )?;
        check(
            "sim.symbols",
            !self.symbols.is_empty(),
            "at least one symbol is needed".into(),
        )?;
        for (i, s) in self.symbols.iter().enumerate() {
            let sym = &s.symbol;
            check(
                "sim.symbols.symbol",
                valid_name(sym, 32),
                format!("{sym:?}: 1-32 letters, digits, `_` or `-`"),
            )?;
            check(
                "sim.symbols.exchange",
                valid_exchange(&s.exchange),
                format!("{sym}: {:?} is not 1-16 of `A-Z`, `0-9`, `_` (a vn.py Exchange value, e.g. CFFEX)", s.exchange),
            )?;
            check(
                "sim.symbols.symbol",
                !self.symbols[..i]
                    .iter()
                    .any(|o| &o.symbol == sym && o.exchange == s.exchange),
                format!("{sym}.{} is listed twice", s.exchange),
            )?;
            check(
                "sim.symbols.pricetick",
                s.pricetick.is_finite() && s.pricetick > 0.0,
                format!("{sym}: must be > 0"),
            )?;
            check(
                "sim.symbols.price",
                s.price.is_finite() && s.price >= s.pricetick * MIN_START_TICKS,
                format!("{sym}: must be at least {MIN_START_TICKS} priceticks"),
            )?;
            check(
                "sim.symbols.price",
                is_multiple(s.price, s.pricetick),
                format!(
                    "{sym}: {} is not a multiple of the pricetick {}",
                    s.price, s.pricetick
                ),
            )?;
            check(
                "sim.symbols.size",
                s.size.is_finite() && s.size > 0.0,
                format!("{sym}: must be > 0"),
            )?;
            if let Some(p) = s.limit_pct {
                let (min, max) = LIMIT_PCT_RANGE;
                check(
                    "sim.symbols.limit_pct",
                    p == 0.0 || (min..=max).contains(&p),
                    format!("{sym}: must be 0 (no limits) or {min}-{max}"),
                )?;
            }
            if let Some(p) = s.limit_pct(s.product.unwrap_or(Product::Futures)) {
                check(
                    "sim.symbols.limit_pct",
                    s.price * p >= MIN_LIMIT_TICKS * s.pricetick,
                    format!(
                        "{sym}: a {p} band around {} is under {MIN_LIMIT_TICKS} priceticks; widen it or set 0",
                        s.price
                    ),
                )?;
            }
            if let Some(r) = s.margin_ratio {
                check(
                    "sim.symbols.margin_ratio",
                    r > 0.0 && r <= 1.0,
                    format!("{sym}: must be > 0 and <= 1"),
                )?;
            }
        }
        check(
            "sim.accounts",
            !self.accounts.is_empty(),
            "at least one account is needed".into(),
        )?;
        for (i, a) in self.accounts.iter().enumerate() {
            let name = &a.account;
            check(
                "sim.accounts.account",
                valid_name(name, 64),
                format!("{name:?}: 1-64 letters, digits, `_` or `-`"),
            )?;
            check(
                "sim.accounts.account",
                !self.accounts[..i].iter().any(|o| &o.account == name),
                format!("{name:?} is listed twice"),
            )?;
            check(
                "sim.accounts.cash",
                a.cash.is_finite() && a.cash >= 0.0,
                format!("{name}: must be >= 0"),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SimConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = SimConfig::default();
        c.symbols[0].price = 3900.1;
        assert_eq!(c.validate().unwrap_err().field, "sim.symbols.price");
        let mut c = SimConfig::default();
        c.accounts.push(c.accounts[0].clone());
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "sim.accounts.account");
        assert!(e.reason.contains("twice"));
        let c = SimConfig {
            tick_interval_ms: 0,
            ..SimConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "sim.tick_interval_ms");
    }

    #[test]
    fn partial_tables_keep_the_other_defaults() {
        let c: SimConfig = toml::from_str(
            "seed = 7\n[[symbols]]\nsymbol = \"X\"\nprice = 1000.0\npricetick = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.tick_interval_ms, 500);
        assert_eq!(c.symbols.len(), 1);
        assert_eq!(c.symbols[0].size, 1.0);
        assert_eq!(c.accounts, SimConfig::default().accounts);
        c.validate().unwrap();
        assert!(toml::from_str::<SimConfig>("sed = 7").is_err());
        assert_eq!(c.symbols[0].exchange, "LOCAL");
        assert_eq!(c.symbols[0].limit_pct(Product::Futures), Some(0.1));
    }

    #[test]
    fn exchanges_and_price_limits_are_checked() {
        let d = SimConfig::default();
        let ex: Vec<&str> = d.symbols.iter().map(|s| s.exchange.as_str()).collect();
        assert_eq!(ex, ["CFFEX", "SHFE", "NASDAQ", "GLOBAL"]);
        let mut c = d.clone();
        c.symbols[0].exchange = "cffex".into();
        assert_eq!(c.validate().unwrap_err().field, "sim.symbols.exchange");
        // The same symbol on another exchange is another contract; on the same, a repeat.
        let mut c = d.clone();
        let mut twin = c.symbols[0].clone();
        twin.exchange = "SGX".into();
        c.symbols.push(twin.clone());
        c.validate().unwrap();
        c.symbols.push(twin);
        assert!(c
            .validate()
            .unwrap_err()
            .reason
            .contains("IF2412.SGX is listed twice"));
        let mut c = d.clone();
        c.symbols[1].limit_pct = Some(0.5);
        assert_eq!(c.validate().unwrap_err().field, "sim.symbols.limit_pct");
        // rb2501 at 3500 with a 1-point tick: 2 % is 70 ticks, too narrow a band.
        c.symbols[1].limit_pct = Some(0.02);
        assert!(c
            .validate()
            .unwrap_err()
            .reason
            .contains("under 100 priceticks"));
        c.symbols[1].limit_pct = Some(0.0);
        c.validate().unwrap();
        assert_eq!(c.symbols[1].limit_pct(Product::Futures), None);
        assert_eq!(d.symbols[2].limit_pct(Product::Equity), None);
    }
}
