//! The `[risk]` section of the broker's TOML config: limits per account (and a default
//! for accounts not listed), per client, contract facts the operator states, the admins,
//! the trading-day boundary and the caps on what the stage tracks. Validated on load (and
//! on every runtime change) with errors naming the field.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use tradeplex_ops::config::{check, ConfigError};

/// The `[risk]` table. Present = the stage is on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Start of the trading day, `HH:MM` in UTC; daily counters reset there.
    pub trading_day_start_utc: String,
    /// The account an order with an empty `account` is checked as (the gateway's default
    /// account, `sim` for SIM); empty = such orders are checked as the account `""`.
    pub default_account: String,
    /// Most accounts with counters at once; an order of a further account is rejected
    /// (rule `risk_capacity`).
    pub max_accounts: usize,
    /// Most symbols with counters per account; an order in a further symbol is rejected
    /// (rule `risk_capacity`).
    pub max_symbols_per_account: usize,
    /// Limits for accounts not listed in `[[risk.account]]`; absent = unlisted accounts
    /// are not limited.
    pub default: Option<Limits>,
    /// Limits per account.
    pub account: Vec<Limits>,
    /// Limits per client (`[risk.clients.NAME]`), enforced beside the account's on the
    /// client's own orders: its CURVE key's name, or the name it declares from loopback.
    pub clients: BTreeMap<String, Limits>,
    /// Client names that may call `tpx.risk` (besides `[[curve.clients]]` with
    /// `admin = true`).
    pub admins: Vec<String>,
    /// Contract facts by symbol, overriding what `contract.` events say.
    pub contract: BTreeMap<String, ContractSpec>,
    /// The audit journal (docs/risk.md, "Audit journal"): every order request, decision,
    /// outcome, trade and halt, one JSON line each; replayed on start. Empty = none.
    pub journal: String,
    /// When audit lines are forced to disk: `off`, `always` or `Nms` (as the worker's).
    pub journal_fsync: String,
    /// The audit journal is rotated before a line would take it past this size.
    pub journal_max_bytes: u64,
    /// Rotated audit files kept.
    pub journal_keep: u32,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            trading_day_start_utc: "00:00".into(),
            default_account: String::new(),
            max_accounts: 1000,
            max_symbols_per_account: 1000,
            default: None,
            account: Vec::new(),
            clients: BTreeMap::new(),
            admins: Vec::new(),
            contract: BTreeMap::new(),
            journal: String::new(),
            journal_fsync: "always".into(),
            journal_max_bytes: tradeplex_ops::journal::DEFAULT_MAX_BYTES,
            journal_keep: tradeplex_ops::journal::DEFAULT_KEEP,
        }
    }
}

/// One account's limits (`[[risk.account]]`, or `[risk.default]` without `name`), or one
/// client's (`[risk.clients.NAME]`, without `name`). Every rule is optional: absent = off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The account (`[[risk.account]]` only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Orders admitted in any sliding second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_flow_limit_per_s: Option<u32>,
    /// Orders admitted in any sliding minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_flow_limit_per_min: Option<u32>,
    /// Largest volume of one order (vnpy: `order_volume_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_size_limit: Option<f64>,
    /// Largest notional of one order: price × volume × contract size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_value_limit: Option<f64>,
    /// Window in which identical orders (symbol, direction, price, volume) are counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_order_window_ms: Option<u64>,
    /// Identical orders allowed within the window (default 1 when the window is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_order_limit: Option<u32>,
    /// Orders per symbol per trading day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract_order_limit: Option<u32>,
    /// Price on the contract's tick, volume a multiple of its minimum, price inside the
    /// limit band when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_validity: Option<bool>,
    /// Orders working (not final) at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_order_limit: Option<u32>,
    /// Cancel requests per symbol per trading day; past it new orders in the symbol are
    /// rejected (cancels always pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract_cancel_limit: Option<u32>,
    /// Trades per symbol per trading day; past it new orders in the symbol are rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract_trade_limit: Option<u32>,
    /// Largest position per symbol and direction, counting working opening orders and
    /// the new order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_limit: Option<f64>,
    /// Largest drop of the account's balance since the first balance seen this trading day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_loss_limit: Option<f64>,
}

/// What the stage needs to know about a contract.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// Contract multiplier.
    pub size: f64,
    /// Minimum price increment (0 = any price).
    #[serde(default)]
    pub pricetick: f64,
    /// Minimum volume; volumes must be a multiple of it (0 = any volume).
    #[serde(default)]
    pub min_volume: f64,
}

/// A `Field` error whose reason names the nested field.
fn bad(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Field { field, reason }
}

impl RiskConfig {
    /// The audit journal's options, None without `journal`.
    pub fn journal_options(
        &self,
    ) -> Result<Option<tradeplex_ops::journal::JournalOptions>, ConfigError> {
        let fsync = self
            .journal_fsync
            .parse::<tradeplex_ops::journal::FsyncPolicy>()
            .map_err(|e| bad("risk.journal_fsync", e))?;
        check(
            "risk.journal_max_bytes",
            self.journal_max_bytes >= 4096,
            "must be at least 4096",
        )?;
        check(
            "risk.journal_keep",
            self.journal_keep >= 1,
            "must be at least 1",
        )?;
        if self.journal.is_empty() {
            return Ok(None);
        }
        let mut o = tradeplex_ops::journal::JournalOptions::new(&self.journal);
        o.fsync = fsync;
        o.max_bytes = self.journal_max_bytes;
        o.keep = self.journal_keep;
        Ok(Some(o))
    }

    /// Checks every value; errors name the field (and the account or symbol).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.day_start_ms()?;
        self.journal_options()?;
        check(
            "risk.max_accounts",
            (1..=1_000_000).contains(&self.max_accounts),
            "must be 1-1000000",
        )?;
        check(
            "risk.max_symbols_per_account",
            (1..=1_000_000).contains(&self.max_symbols_per_account),
            "must be 1-1000000",
        )?;
        if let Some(d) = &self.default {
            if !d.name.is_empty() {
                return Err(bad(
                    "risk.default.name",
                    "the default limits apply to unlisted accounts and take no name".into(),
                ));
            }
            d.validate("risk.default", "default")?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.account {
            if a.name.is_empty() {
                return Err(bad(
                    "risk.account.name",
                    "every [[risk.account]] needs a name".into(),
                ));
            }
            if !seen.insert(a.name.as_str()) {
                return Err(bad(
                    "risk.account.name",
                    format!("account {:?} is listed twice", a.name),
                ));
            }
            a.validate("risk.account", &a.name)?;
        }
        for (name, c) in &self.clients {
            validate_client(name, c)?;
        }
        if let Some(bad) = self
            .admins
            .iter()
            .find(|n| !tradeplex_proto::client::valid_client_name(n))
        {
            return Err(bad_name("risk.admins", bad));
        }
        for (symbol, c) in &self.contract {
            for (name, v, zero_ok) in [
                ("size", c.size, false),
                ("pricetick", c.pricetick, true),
                ("min_volume", c.min_volume, true),
            ] {
                if !v.is_finite() || v < 0.0 || (v == 0.0 && !zero_ok) {
                    let need = if zero_ok { ">= 0" } else { "> 0" };
                    return Err(bad(
                        "risk.contract",
                        format!("{symbol}.{name} = {v}: must be {need}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The trading-day boundary as milliseconds after midnight UTC.
    pub fn day_start_ms(&self) -> Result<u64, ConfigError> {
        let err = || {
            bad(
                "risk.trading_day_start_utc",
                format!(
                    "{:?} is not HH:MM (00:00-23:59)",
                    self.trading_day_start_utc
                ),
            )
        };
        let (h, m) = self.trading_day_start_utc.split_once(':').ok_or_else(err)?;
        let (h, m): (u64, u64) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
        if h > 23 || m > 59 {
            return Err(err());
        }
        Ok((h * 60 + m) * 60_000)
    }

    /// The limits that apply to `account`, if any.
    pub fn limits_for(&self, account: &str) -> Option<&Limits> {
        self.account
            .iter()
            .find(|a| a.name == account)
            .or(self.default.as_ref())
    }
}

/// The rules a client's limits may hold: those counted from the client's own requests.
/// Positions, balances, working orders and trades come from events, which name an account
/// but not the client that sent the order, so those rules are per account only.
pub const CLIENT_RULES: [&str; 9] = [
    "order_flow_limit_per_s",
    "order_flow_limit_per_min",
    "order_size_limit",
    "order_value_limit",
    "duplicate_order_window_ms",
    "duplicate_order_limit",
    "contract_order_limit",
    "order_validity",
    "contract_cancel_limit",
];

fn bad_name(field: &'static str, name: &str) -> ConfigError {
    bad(
        field,
        format!(
            "{name:?} is not a client name (1-{} bytes of A-Z a-z 0-9 _ . -)",
            tradeplex_proto::client::MAX_CLIENT_NAME
        ),
    )
}

fn validate_client(name: &str, c: &Limits) -> Result<(), ConfigError> {
    if !tradeplex_proto::client::valid_client_name(name) {
        return Err(bad_name("risk.clients", name));
    }
    if !c.name.is_empty() {
        return Err(bad(
            "risk.clients",
            format!("{name}: a client's limits take no name (the table's key names it)"),
        ));
    }
    let account_only = [
        ("active_order_limit", c.active_order_limit.is_some()),
        ("contract_trade_limit", c.contract_trade_limit.is_some()),
        ("position_limit", c.position_limit.is_some()),
        ("daily_loss_limit", c.daily_loss_limit.is_some()),
    ];
    if let Some((rule, _)) = account_only.iter().find(|(_, set)| *set) {
        return Err(bad(
            "risk.clients",
            format!(
                "{name}: {rule} is per account only (a client may set {})",
                CLIENT_RULES.join(", ")
            ),
        ));
    }
    c.validate("risk.clients", name)
}

impl Limits {
    fn validate(&self, field: &'static str, who: &str) -> Result<(), ConfigError> {
        let counts = [
            ("order_flow_limit_per_s", self.order_flow_limit_per_s),
            ("order_flow_limit_per_min", self.order_flow_limit_per_min),
            ("duplicate_order_limit", self.duplicate_order_limit),
            ("contract_order_limit", self.contract_order_limit),
            ("active_order_limit", self.active_order_limit),
            ("contract_cancel_limit", self.contract_cancel_limit),
            ("contract_trade_limit", self.contract_trade_limit),
        ];
        for (name, v) in counts {
            if v == Some(0) {
                return Err(bad(
                    field,
                    format!(
                        "{who}: {name} = 0 allows nothing; must be >= 1 (omit it for no limit)"
                    ),
                ));
            }
        }
        let amounts = [
            ("order_size_limit", self.order_size_limit),
            ("order_value_limit", self.order_value_limit),
            ("position_limit", self.position_limit),
            ("daily_loss_limit", self.daily_loss_limit),
        ];
        for (name, v) in amounts {
            if let Some(v) = v {
                if !v.is_finite() || v <= 0.0 {
                    return Err(bad(
                        field,
                        format!("{who}: {name} = {v}: must be > 0 (omit it for no limit)"),
                    ));
                }
            }
        }
        if self.duplicate_order_window_ms == Some(0)
            || self
                .duplicate_order_window_ms
                .is_some_and(|w| w > 86_400_000)
        {
            return Err(bad(
                field,
                format!("{who}: duplicate_order_window_ms must be 1-86400000"),
            ));
        }
        if self.duplicate_order_limit.is_some() && self.duplicate_order_window_ms.is_none() {
            return Err(bad(
                field,
                format!("{who}: duplicate_order_limit needs duplicate_order_window_ms"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RiskConfig, ConfigError> {
        let c: RiskConfig = tradeplex_ops::config::parse(text, "<text>")?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn accounts_and_default_are_read() {
        let c = parse(
            "[default]\norder_size_limit = 5\n[[account]]\nname = \"a\"\norder_size_limit = 10\n\
             [contract.IF2412]\nsize = 300\npricetick = 0.2\nmin_volume = 1\n",
        )
        .unwrap();
        assert_eq!(c.limits_for("a").unwrap().order_size_limit, Some(10.0));
        assert_eq!(c.limits_for("b").unwrap().order_size_limit, Some(5.0));
        assert_eq!(c.contract["IF2412"].size, 300.0);
        assert_eq!(c.day_start_ms().unwrap(), 0);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "[[account]]\nname = \"a\"\norder_size_limit = -1",
                "order_size_limit",
            ),
            (
                "[[account]]\nname = \"a\"\ncontract_order_limit = 0",
                "contract_order_limit",
            ),
            (
                "[[account]]\nname = \"a\"\ncontract_order_limit = -3",
                "contract_order_limit",
            ),
            ("[[account]]\nname = \"a\"\nbogus_rule = 1", "bogus_rule"),
            (
                "[[account]]\nname = \"a\"\n[[account]]\nname = \"a\"",
                "listed twice",
            ),
            ("[[account]]\norder_size_limit = 1", "risk.account.name"),
            ("[default]\nname = \"x\"", "risk.default.name"),
            ("trading_day_start_utc = \"25:00\"", "trading_day_start_utc"),
            ("[contract.X]\nsize = 0", "X.size"),
            ("[contract.X]\nsize = 1\ncolour = 2", "colour"),
            (
                "[[account]]\nname = \"a\"\nduplicate_order_limit = 2",
                "duplicate_order_window_ms",
            ),
            ("max_accounts = 0", "max_accounts"),
        ];
        for (text, field) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn the_day_boundary_is_parsed() {
        let c = parse("trading_day_start_utc = \"13:30\"").unwrap();
        assert_eq!(c.day_start_ms().unwrap(), (13 * 60 + 30) * 60_000);
    }
}
