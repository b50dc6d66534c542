//! Pre-trade risk: one stage in the broker's order path that every `send_order` of every
//! client passes before any worker sees it, with limits per account shared cluster-wide.
//!
//! - [`config`]: the `[risk]` TOML section (limits per account, contracts, day boundary).
//! - [`rules`]: the checks, pure functions of (limits, counters, market, order, now).
//! - [`state`]: counters and market facts, fed by admitted orders and workers' events;
//!   also the kill switch's book of every account's working orders.
//! - [`halt`]: the kill switch (`tpx.halt` / `tpx.resume`): halted accounts, checked first.
//! - [`identity`]: who sent a request (CURVE key names, declared names from loopback) and
//!   the CURVE allow-lists.
//! - [`manage`]: limits at runtime: `tpx.risk` (admins) and the SIGHUP reload, audited.
//! - `replica`: the stage in a broker pair: the peer's journal lines appended here, and
//!   the stage rebuilt from the journal when this broker takes over.
//!
//! The stage always exists: without `[risk]` it runs no rules and decodes no body unless
//! a halt is in force, but keeps the book of working orders (from `order.` events) so a
//! halt can cancel them.
//!
//! The main loop calls [`Stage::check_from`] once per request; the relay thread calls
//! [`Feed::on_event`] for every event. Both lock one `Mutex<State>`, each briefly. The
//! limits in force are one [`Policy`] behind an `RwLock<Arc<_>>`: a check clones the `Arc`
//! and reads it lock-free; a runtime change swaps in a new one.

pub mod audit;
pub mod config;
pub mod halt;
pub mod identity;
pub mod manage;
mod peek;
mod replica;
pub mod rules;
pub mod state;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use tradeplex_proto::mgmt::{HaltStatus, ALL_ACCOUNTS};
use tradeplex_proto::model::{CancelRequest, OrderRequest};
use tradeplex_proto::ErrorCode;

pub use config::RiskConfig;
use halt::Halts;
pub use identity::{Caller, Identities};
use rules::{Counters, Market, Reject};
pub use state::Booked;
use state::State;

/// The rule name of a refusal by the kill switch.
pub const HALTED: &str = "halted";

/// The event kinds the stage reads; others are not decoded.
pub const EVENT_KINDS: [&str; 6] = ["order", "trade", "position", "account", "tick", "contract"];

/// The stage's metrics.
#[derive(Clone)]
pub struct RiskMetrics {
    checked: IntCounter,
    rejected: Vec<(&'static str, IntCounter)>,
    bad_events: IntCounter,
    halted: IntGaugeVec,
    halt_cancels: IntCounterVec,
    forbidden: IntCounterVec,
    changes: IntCounterVec,
    reloads: IntCounterVec,
}

impl RiskMetrics {
    /// Registers `tradeplex_risk_*` in `registry`.
    pub fn new(registry: &Registry) -> RiskMetrics {
        let checked = IntCounter::new(
            "tradeplex_risk_checked_total",
            "Order requests (send_order) checked by the risk stage",
        )
        .expect("static metric definition");
        let rejected = IntCounterVec::new(
            Opts::new(
                "tradeplex_risk_rejected_total",
                "Order requests answered risk_rejected, by rule",
            ),
            &["rule"],
        )
        .expect("static metric definition");
        let bad_events = IntCounter::new(
            "tradeplex_risk_bad_events_total",
            "Events of a kind the risk stage reads whose body did not decode (ignored)",
        )
        .expect("static metric definition");
        let halted = IntGaugeVec::new(
            Opts::new(
                "tradeplex_halted",
                "1 while the account is halted by the kill switch (\"*\" = every account), else 0",
            ),
            &["account"],
        )
        .expect("static metric definition");
        halted.with_label_values(&[ALL_ACCOUNTS]).set(0);
        let halt_cancels = IntCounterVec::new(
            Opts::new(
                "tradeplex_halt_cancels_total",
                "Cancels of working orders sent by a halt (result=sent), and their answers \
                 by outcome (ok or the error code name)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let forbidden = IntCounterVec::new(
            Opts::new(
                "tradeplex_forbidden_total",
                "Requests answered forbidden, by reason (not_admin, not_loopback, \
                 name_mismatch, key_removed)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let changes = IntCounterVec::new(
            Opts::new(
                "tradeplex_risk_changes_total",
                "Runtime changes of the risk limits put in force, by way (tpx.risk, sighup)",
            ),
            &["via"],
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "tradeplex_config_reloads_total",
                "SIGHUP reloads of the config file, by result (ok; error = refused, the \
                 config in force kept)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        for r in ["ok", "error"] {
            reloads.with_label_values(&[r]);
        }
        for c in [
            Box::new(checked.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejected.clone()),
            Box::new(bad_events.clone()),
            Box::new(halted.clone()),
            Box::new(halt_cancels.clone()),
            Box::new(forbidden.clone()),
            Box::new(changes.clone()),
            Box::new(reloads.clone()),
        ] {
            // A second broker in one process (tests) shares nothing: each has its registry.
            let _ = registry.register(c);
        }
        RiskMetrics {
            checked,
            rejected: rules::RULES
                .iter()
                .chain([HALTED].iter())
                .map(|r| (*r, rejected.with_label_values(&[r])))
                .collect(),
            bad_events,
            halted,
            halt_cancels,
            forbidden,
            changes,
            reloads,
        }
    }

    fn rejected(&self, rule: &str) {
        if let Some((_, c)) = self.rejected.iter().find(|(r, _)| *r == rule) {
            c.inc();
        }
    }
}

/// What the stage says of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not an order, or an order of an account without limits.
    Pass,
    /// An order within every limit, now counted; it counts as in flight (working, for
    /// `active_order_limit` and `position_limit`) until [`Stage::settle`] gets the ticket.
    Admitted(Ticket),
    /// Answer the client with this error; never deliver.
    Refuse(ErrorCode, String),
}

/// An admitted order in flight between the stage and its worker's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    account: String,
    symbol: String,
    side: usize,
    open_volume: f64,
}

/// The limits in force: the `[risk]` config as loaded, or as a runtime change left it.
pub struct Policy {
    /// False without `[risk]` (and no runtime change since): no rule runs, only halts and
    /// the book.
    rules: bool,
    cfg: RiskConfig,
    /// Index of `cfg.account` by name.
    by_name: rustc_hash::FxHashMap<String, usize>,
    /// When and by whom (a client name, `sighup`, `config`) it was put in force.
    changed_ms: u64,
    changed_by: String,
}

impl Policy {
    fn new(cfg: RiskConfig, rules: bool, changed_ms: u64, changed_by: &str) -> Policy {
        Policy {
            rules,
            by_name: cfg
                .account
                .iter()
                .enumerate()
                .map(|(i, a)| (a.name.clone(), i))
                .collect(),
            cfg,
            changed_ms,
            changed_by: changed_by.to_string(),
        }
    }

    fn caps(&self) -> (usize, usize) {
        (self.cfg.max_accounts, self.cfg.max_symbols_per_account)
    }

    /// The limits that apply to `account`, if any.
    fn limits_for(&self, account: &str) -> Option<&config::Limits> {
        match self.by_name.get(account) {
            Some(i) => self.cfg.account.get(*i),
            None => self.cfg.default.as_ref(),
        }
    }

    /// The limits of the client named `client`, with its name.
    fn client_limits<'a>(
        &'a self,
        client: Option<&str>,
    ) -> Option<(&'a String, &'a config::Limits)> {
        client.and_then(|c| self.cfg.clients.get_key_value(c))
    }

    fn account_name<'a>(&'a self, account: &'a str) -> &'a str {
        if account.is_empty() {
            &self.cfg.default_account
        } else {
            account
        }
    }
}

struct Shared {
    /// False while this broker is a pair's passive one: it journals no trade events of its
    /// own (the active broker's reach it through replication).
    serving: AtomicBool,
    /// Set while any halt is in force, so an order check without one reads no lock.
    any_halt: AtomicBool,
    halts: Mutex<Halts>,
    policy: RwLock<Arc<Policy>>,
    /// Fixed at start: moving the day boundary mid-day would reset or merge counters.
    day_start_ms: u64,
    state: Mutex<State>,
    metrics: RiskMetrics,
    /// The audit journal, when configured.
    audit: std::sync::OnceLock<audit::Audit>,
    /// Held across a runtime change's read-modify-write of the policy (tpx.risk on the
    /// main loop, a reload on the signal thread).
    changing: Mutex<()>,
    /// Bounds the log lines of refused `tpx.risk` calls (a client may repeat them).
    refusal_log: Mutex<crate::wire::LogLimiter>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still counters.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn halts(&self) -> MutexGuard<'_, Halts> {
        self.halts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy in force (the lock is held only to clone the `Arc`).
    fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `p` in force.
    fn set_policy(&self, p: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }
}

/// What a replay of the audit journal restored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Today's admitted orders counted again.
    pub orders: u64,
    /// Today's cancels counted again.
    pub cancels: u64,
    /// Today's trades counted again.
    pub trades: u64,
    /// Halt lines applied (any day).
    pub halts: u64,
    /// Halts in force after the replay.
    pub halts_in_force: usize,
}

/// Who asked for a halt or a resume, for the audit journal and `tpx.status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Actor<'a> {
    /// The client's name ([`Caller::name`]); None = anonymous.
    pub name: Option<&'a str>,
    /// The client's connection (the frontend's routing id); empty = the broker itself.
    pub client: &'a [u8],
}

impl Actor<'_> {
    fn client_hex(&self) -> Option<String> {
        (!self.client.is_empty()).then(|| self.client.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// The stage, held by the dispatcher (cheap to clone).
#[derive(Clone)]
pub struct Stage {
    shared: Arc<Shared>,
}

/// The stage's event side, held by the relay thread.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
}

/// True when `body` starts a MessagePack map.
fn is_map(body: &[u8]) -> bool {
    matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

fn bad_order(detail: String) -> Verdict {
    Verdict::Refuse(ErrorCode::BadRequest, format!("send_order: {detail}"))
}

impl Stage {
    /// A stage with `cfg` (validated here too) registering its metrics in `registry`.
    pub fn new(
        cfg: RiskConfig,
        registry: &Registry,
    ) -> Result<Stage, tradeplex_ops::config::ConfigError> {
        cfg.validate()?;
        Stage::build(cfg, true, registry)
    }

    /// A stage with no rules (no `[risk]` section): it keeps the book of working orders
    /// and answers halts, and decodes no order body unless a halt is in force.
    pub fn without_rules(registry: &Registry) -> Stage {
        let cfg = RiskConfig::default();
        // The default config is valid: its day start is "00:00".
        let day_start_ms = cfg.day_start_ms().unwrap_or(0);
        Stage::with_day(cfg, false, day_start_ms, registry)
    }

    fn build(
        cfg: RiskConfig,
        rules: bool,
        registry: &Registry,
    ) -> Result<Stage, tradeplex_ops::config::ConfigError> {
        let day_start_ms = cfg.day_start_ms()?;
        Ok(Stage::with_day(cfg, rules, day_start_ms, registry))
    }

    fn with_day(cfg: RiskConfig, rules: bool, day_start_ms: u64, registry: &Registry) -> Stage {
        let policy = Policy::new(cfg, rules, tradeplex_proto::now_unix_ms(), "config");
        Stage {
            shared: Arc::new(Shared {
                serving: AtomicBool::new(true),
                any_halt: AtomicBool::new(false),
                halts: Mutex::new(Halts::default()),
                policy: RwLock::new(Arc::new(policy)),
                day_start_ms,
                state: Mutex::new(State::default()),
                metrics: RiskMetrics::new(registry),
                audit: std::sync::OnceLock::new(),
                changing: Mutex::new(()),
                refusal_log: Mutex::new(crate::wire::LogLimiter::new(10)),
            }),
        }
    }

    /// The event side for the relay.
    pub fn feed(&self) -> Feed {
        Feed {
            shared: self.shared.clone(),
        }
    }

    /// Checks one request body of an anonymous client at `now_ms` (see
    /// [`Stage::check_from`]).
    pub fn check(&self, now_ms: u64, body: &[u8]) -> Verdict {
        self.check_from(now_ms, &Caller::default(), body)
    }

    /// Checks one request body from `caller` at `now_ms` (Unix ms): a `send_order` is
    /// decoded and checked against its account's limits and its client's (and counted if
    /// it passes), a `cancel_order` counted; anything else passes.
    pub fn check_from(&self, now_ms: u64, caller: &Caller, body: &[u8]) -> Verdict {
        if !is_map(body) {
            return Verdict::Pass;
        }
        let p = self.shared.policy();
        if self.shared.any_halt.load(Ordering::Acquire) {
            if let Some(v) = self.check_halt(&p, body) {
                return v;
            }
        }
        if !p.rules {
            return Verdict::Pass;
        }
        let client = caller.name.as_deref();
        match peek::ops(body) {
            // A map the stage cannot read might be one a worker reads as an order.
            Err(e) => Verdict::Refuse(
                ErrorCode::BadRequest,
                format!("body is not valid MessagePack: {e}"),
            ),
            Ok(ops) if ops.send_order => self.check_order(&p, now_ms, client, body),
            Ok(ops) => {
                if ops.cancel_order {
                    self.count_cancel(&p, now_ms, client, body);
                }
                Verdict::Pass
            }
        }
    }

    /// With a halt in force: the refusal of a `send_order` of a halted account (or a body
    /// that cannot be read), None when the request goes on to the rules.
    fn check_halt(&self, p: &Policy, body: &[u8]) -> Option<Verdict> {
        let s = &*self.shared;
        let ops = match peek::ops(body) {
            Ok(ops) => ops,
            Err(e) => {
                return Some(Verdict::Refuse(
                    ErrorCode::BadRequest,
                    format!("body is not valid MessagePack: {e}"),
                ))
            }
        };
        if !ops.send_order {
            return None;
        }
        let refuse = |reason: &str| {
            s.metrics.checked.inc();
            s.metrics.rejected(HALTED);
            Some(Verdict::Refuse(
                ErrorCode::RiskRejected,
                format!("{HALTED}: {reason}"),
            ))
        };
        let halts = s.halts();
        if let Some(reason) = halts.all() {
            return refuse(reason);
        }
        #[derive(Deserialize)]
        struct AccountOf {
            #[serde(default)]
            account: String,
        }
        let account = match rmp_serde::from_slice::<AccountOf>(body) {
            Ok(a) => a.account,
            Err(e) => {
                s.metrics.checked.inc();
                s.metrics.rejected("bad_order");
                return Some(bad_order(format!("cannot decode the order: {e}")));
            }
        };
        let account = p.account_name(&account);
        if account.is_empty() {
            // The gateway resolves "" to its default account, which may be a halted one:
            // refuse rather than guess ([risk] default_account names it).
            return refuse(&format!(
                "the order names no account while {} account(s) are halted \
                 (name the account, or set [risk] default_account)",
                halts.accounts()
            ));
        }
        if let Some(reason) = halts.reason_for(account) {
            return refuse(reason);
        }
        if !p.rules {
            s.metrics.checked.inc();
        }
        None
    }

    /// Halts `account` (None = every account) at `now_ms` for an anonymous client (see
    /// [`Stage::halt_by`]).
    pub fn halt(
        &self,
        now_ms: u64,
        account: Option<&str>,
        reason: &str,
    ) -> Result<(HaltStatus, Vec<Booked>, u32), String> {
        self.halt_by(now_ms, account, reason, &Actor::default())
    }

    /// Halts `account` (None = every account) at `now_ms` for `by`: from now on its orders
    /// are refused `risk_rejected` (`halted: <reason>`). Returns the halt, the working
    /// orders to cancel (each returned once only, ever: a cancel is never sent twice) and
    /// how many working orders were passed over because a cancel was already sent for them.
    pub fn halt_by(
        &self,
        now_ms: u64,
        account: Option<&str>,
        reason: &str,
        by: &Actor<'_>,
    ) -> Result<(HaltStatus, Vec<Booked>, u32), String> {
        let s = &*self.shared;
        let status = {
            let mut halts = s.halts();
            let status = halts.halt(account, reason, by.name.unwrap_or(""), now_ms)?;
            s.any_halt.store(true, Ordering::Release);
            status
        };
        self.journal(
            &audit::Line::Halt {
                ts_ms: now_ms,
                account: status.account.clone(),
                reason: status.reason.clone(),
                by: by.name.map(String::from),
                client: by.client_hex(),
            },
            true,
        );
        s.metrics
            .halted
            .with_label_values(&[&status.account])
            .set(1);
        let (orders, skipped) = s.lock().take_cancels(account);
        Ok((status, orders, skipped))
    }

    /// Lifts a halt for an anonymous client (see [`Stage::resume_by`]).
    pub fn resume(&self, account: Option<&str>) -> (Vec<String>, Vec<HaltStatus>) {
        self.resume_by(account, &Actor::default())
    }

    /// Lifts the halt of `account`, or every halt (None), for `by`. Returns the names
    /// lifted and the halts still in force.
    pub fn resume_by(
        &self,
        account: Option<&str>,
        by: &Actor<'_>,
    ) -> (Vec<String>, Vec<HaltStatus>) {
        let s = &*self.shared;
        let mut halts = s.halts();
        let gone = halts.resume(account);
        s.any_halt.store(!halts.is_empty(), Ordering::Release);
        self.journal(
            &audit::Line::Resume {
                ts_ms: tradeplex_proto::now_unix_ms(),
                account: account.unwrap_or(ALL_ACCOUNTS).to_string(),
                by: by.name.map(String::from),
                client: by.client_hex(),
            },
            true,
        );
        for a in &gone {
            s.metrics.halted.with_label_values(&[a]).set(0);
        }
        (gone, halts.list())
    }

    /// Writes `line` to the audit journal if there is one; a failure is logged (halts,
    /// resumes and trades happen whether or not the journal takes them).
    fn journal(&self, line: &audit::Line, sync: bool) {
        if let Some(a) = self.shared.audit.get() {
            if let Err(e) = a.write(line, sync) {
                tracing::error!(error = %e, "audit journal: write failed");
            }
        }
    }

    /// Puts the audit journal in place (once; false if one already is).
    pub fn set_audit(&self, a: audit::Audit) -> bool {
        self.shared.audit.set(a).is_ok()
    }

    /// Whether an audit journal is in place.
    pub fn audits(&self) -> bool {
        self.shared.audit.get().is_some()
    }

    /// Journals a request the stage checked and its verdict when it is an order or a
    /// cancel: returns its audit id (for [`Stage::audit_outcome`]), None when not
    /// journaled. Err when the journal cannot take it: the request must then be refused.
    pub fn audit_request(
        &self,
        now_ms: u64,
        client: &[u8],
        id: u64,
        body: &[u8],
        verdict: &Verdict,
    ) -> Result<Option<String>, String> {
        self.audit_request_from(now_ms, client, None, id, body, verdict)
    }

    /// [`Stage::audit_request`] for a request from the client named `name`.
    pub fn audit_request_from(
        &self,
        now_ms: u64,
        client: &[u8],
        name: Option<&str>,
        id: u64,
        body: &[u8],
        verdict: &Verdict,
    ) -> Result<Option<String>, String> {
        let Some(a) = self.shared.audit.get() else {
            return Ok(None);
        };
        if !is_map(body) {
            return Ok(None);
        }
        let (op, order, cancel) = match peek::ops(body) {
            Ok(ops) if ops.send_order => ("send_order", rmp_serde::from_slice(body).ok(), None),
            Ok(ops) if ops.cancel_order => ("cancel_order", None, rmp_serde::from_slice(body).ok()),
            Ok(_) => return Ok(None),
            // Refused bad_request by the check: journal it as an order request.
            Err(_) => ("send_order", None, None),
        };
        let rid = a.rid();
        let request = audit::Line::Request {
            ts_ms: now_ms,
            rid: rid.clone(),
            client: client.iter().map(|b| format!("{b:02x}")).collect(),
            name: name.map(String::from),
            id,
            op: op.to_string(),
            order,
            cancel,
        };
        let decision = match verdict {
            Verdict::Refuse(code, message) => audit::Line::Decision {
                ts_ms: now_ms,
                rid: rid.clone(),
                decision: "reject".into(),
                code: Some(code.name().to_string()),
                rule: audit::rule_of(*code, message),
                message: Some(message.clone()),
            },
            _ => audit::Line::Decision {
                ts_ms: now_ms,
                rid: rid.clone(),
                decision: "pass".into(),
                code: None,
                rule: None,
                message: None,
            },
        };
        a.write(&request, false)
            .and_then(|()| a.write(&decision, true))
            .map_err(|e| format!("the audit journal cannot be written: {e}"))?;
        Ok(Some(rid))
    }

    /// Journals the answer to the journaled request `rid` at `now_ms`.
    pub fn audit_outcome(
        &self,
        now_ms: u64,
        rid: String,
        result: Result<&[u8], (ErrorCode, &str)>,
        worker: Option<String>,
    ) {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct OrderFields {
            order_id: Option<String>,
            status: Option<String>,
        }
        let (outcome, fields, error) = match result {
            Ok(reply) if is_map(reply) => (
                "ok".to_string(),
                rmp_serde::from_slice::<OrderFields>(reply).unwrap_or_default(),
                None,
            ),
            Ok(_) => ("ok".to_string(), OrderFields::default(), None),
            Err((code, message)) => (
                code.name().to_string(),
                OrderFields::default(),
                Some(message.to_string()),
            ),
        };
        self.journal(
            &audit::Line::Outcome {
                ts_ms: now_ms,
                rid,
                outcome,
                order_id: fields.order_id,
                status: fields.status,
                error,
                worker,
            },
            // The order went out once its decision line was synced; its outcome is in
            // the worker's journal too, so it rides with the next sync (one fsync per
            // order on the main loop, not two).
            false,
        );
    }

    /// Rebuilds today's (`now_ms`) daily counters and flow windows from journal lines
    /// (oldest first), and the halts in force from every line. Call before
    /// [`Stage::set_audit`], on a stage that has seen no order yet.
    pub fn replay(&self, now_ms: u64, lines: &[audit::Line]) -> Replayed {
        let s = &*self.shared;
        let p = s.policy();
        let today = state::trading_day(now_ms, s.day_start_ms);
        let mut out = Replayed::default();
        let mut orders: rustc_hash::FxHashMap<&str, (&OrderRequest, Option<&str>)> =
            Default::default();
        let mut placed: rustc_hash::FxHashMap<&str, (&str, &str)> = Default::default();
        let limited = |a: &str| p.limits_for(a).is_some();
        {
            let mut halts = s.halts();
            let mut st = s.lock();
            st.roll(today);
            for line in lines {
                if let audit::Line::Halt {
                    ts_ms,
                    account,
                    reason,
                    by,
                    ..
                } = line
                {
                    let a = (account != ALL_ACCOUNTS).then_some(account.as_str());
                    let by = by.as_deref().unwrap_or("");
                    if halts.halt(a, reason, by, *ts_ms).is_ok() {
                        out.halts += 1;
                    }
                    continue;
                }
                if let audit::Line::Resume { account, .. } = line {
                    halts.resume((account != ALL_ACCOUNTS).then_some(account.as_str()));
                    continue;
                }
                if state::trading_day(line.ts_ms(), s.day_start_ms) != today || !p.rules {
                    continue;
                }
                match line {
                    audit::Line::Request {
                        rid,
                        order: Some(o),
                        name,
                        ..
                    } => {
                        orders.insert(rid, (o, name.as_deref()));
                    }
                    audit::Line::Request {
                        cancel: Some(c),
                        name,
                        ..
                    } => {
                        let (account, symbol) = match placed.get(c.order_id.0.as_str()) {
                            Some((a, sym)) => (*a, *sym),
                            None if !c.symbol.is_empty() => {
                                (p.cfg.default_account.as_str(), c.symbol.as_str())
                            }
                            None => continue,
                        };
                        if let Some((n, _)) = p.client_limits(name.as_deref()) {
                            st.client_cancel(n, symbol, p.cfg.max_symbols_per_account);
                        }
                        if let Some(sym) = st.symbol_mut(account, symbol, &limited, p.caps()) {
                            sym.cancels = sym.cancels.saturating_add(1);
                            out.cancels += 1;
                        }
                    }
                    audit::Line::Decision {
                        ts_ms,
                        rid,
                        decision,
                        ..
                    } if decision == "pass" => {
                        let Some((o, name)) = orders.get(rid.as_str()).copied() else {
                            continue;
                        };
                        if let Some((n, cl)) = p.client_limits(name) {
                            let c = st.clients.entry(n.clone()).or_default();
                            rules::expire(cl, c, *ts_ms);
                            rules::admit(cl, c, o, *ts_ms);
                        }
                        let account = p.account_name(&o.account);
                        let Some(limits) = p.limits_for(account) else {
                            continue;
                        };
                        if let Some(a) = st.account_mut(account, &limited, p.cfg.max_accounts) {
                            rules::expire(limits, a, *ts_ms);
                            rules::admit(limits, a, o, *ts_ms);
                            out.orders += 1;
                        }
                    }
                    audit::Line::Outcome {
                        rid,
                        order_id: Some(id),
                        ..
                    } => {
                        if let Some((o, _)) = orders.get(rid.as_str()) {
                            placed.insert(id, (p.account_name(&o.account), &o.symbol));
                        }
                    }
                    audit::Line::Trade {
                        account, symbol, ..
                    } => {
                        if let Some(sym) = st.symbol_mut(account, symbol, &limited, p.caps()) {
                            sym.trades = sym.trades.saturating_add(1);
                            out.trades += 1;
                        }
                    }
                    _ => {}
                }
            }
            s.any_halt.store(!halts.is_empty(), Ordering::Release);
            for h in halts.list() {
                s.metrics.halted.with_label_values(&[&h.account]).set(1);
            }
            out.halts_in_force = halts.list().len();
        }
        out
    }

    /// The halts in force.
    pub fn halts(&self) -> Vec<HaltStatus> {
        self.shared.halts().list()
    }

    /// Counts a halt's cancel: `sent`, then its outcome (`ok` or an error code name).
    pub fn count_halt_cancel(&self, result: &str) {
        self.shared
            .metrics
            .halt_cancels
            .with_label_values(&[result])
            .inc();
    }

    /// Working orders in the kill switch's book (all accounts).
    pub fn booked_orders(&self) -> usize {
        self.shared.lock().booked_orders()
    }

    fn check_order(&self, p: &Policy, now_ms: u64, client: Option<&str>, body: &[u8]) -> Verdict {
        let s = &*self.shared;
        s.metrics.checked.inc();
        let o: OrderRequest = match rmp_serde::from_slice(body) {
            Ok(o) => o,
            Err(e) => {
                s.metrics.rejected("bad_order");
                return bad_order(format!("cannot decode the order: {e}"));
            }
        };
        if !(o.volume.is_finite() && o.volume > 0.0) {
            s.metrics.rejected("bad_order");
            return bad_order(format!("bad field volume: {} (must be > 0)", o.volume));
        }
        if !(o.price.is_finite() && o.price >= 0.0) {
            s.metrics.rejected("bad_order");
            return bad_order(format!("bad field price: {} (must be >= 0)", o.price));
        }
        match self.decide(p, now_ms, client, &o) {
            Ok(None) => Verdict::Pass,
            Ok(Some(ticket)) => Verdict::Admitted(ticket),
            Err(r) => {
                s.metrics.rejected(r.rule);
                Verdict::Refuse(ErrorCode::RiskRejected, r.message)
            }
        }
    }

    fn decide(
        &self,
        p: &Policy,
        now_ms: u64,
        client: Option<&str>,
        o: &OrderRequest,
    ) -> Result<Option<Ticket>, Reject> {
        let s = &*self.shared;
        let account = p.account_name(&o.account);
        let limits = p.limits_for(account);
        let client_limits = p.client_limits(client);
        if limits.is_none() && client_limits.is_none() {
            return Ok(None);
        }
        let mut st = s.lock();
        st.roll(state::trading_day(now_ms, s.day_start_ms));
        let market = Market {
            contract: p
                .cfg
                .contract
                .get(&o.symbol)
                .copied()
                .or_else(|| st.contracts.get(&o.symbol).copied()),
            quote: st.quotes.get(&o.symbol).copied(),
        };
        if let Some(limits) = limits {
            if let Some(a) = st.accounts.get_mut(account) {
                rules::expire(limits, a, now_ms);
            }
            let a = st.accounts.get(account);
            let counters = Counters {
                account: a,
                symbol: a.and_then(|a| a.symbols.get(&o.symbol)),
            };
            rules::check(limits, &counters, market, o, now_ms)?;
        }
        let (max_accounts, max_symbols) = p.caps();
        if let Some((name, cl)) = client_limits {
            check_client(&mut st, name, cl, market, o, now_ms, max_symbols)?;
        }
        // `net` is a position's side, never an order's: no counter side to hold it.
        let Some(side) = state::side(o.direction) else {
            return Err(rules::reject("order_validity", "long or short", "net"));
        };
        let ticket = match limits {
            Some(limits) => {
                let accounts = st.accounts.len();
                let Some(a) = st.account_mut(account, &|_| true, max_accounts) else {
                    return Err(rules::reject(
                        "risk_capacity",
                        format_args!("{max_accounts} accounts"),
                        accounts + 1,
                    ));
                };
                let n = a.symbols.len();
                if !a.symbols.contains_key(&o.symbol) && n >= max_symbols {
                    return Err(rules::reject(
                        "risk_capacity",
                        format_args!("{max_symbols} symbols per account"),
                        n + 1,
                    ));
                }
                let ticket = Ticket {
                    account: account.to_string(),
                    symbol: o.symbol.clone(),
                    side,
                    open_volume: if rules::opening(o) { o.volume } else { 0.0 },
                };
                rules::admit(limits, a, o, now_ms);
                a.in_flight = a.in_flight.saturating_add(1);
                if let Some(sym) = a.symbols.get_mut(&o.symbol) {
                    sym.in_flight[ticket.side] += ticket.open_volume;
                }
                Some(ticket)
            }
            None => None,
        };
        if let Some((name, cl)) = client_limits {
            // Entries exist only for clients with limits: bounded by the config.
            let c = st.clients.entry(name.clone()).or_default();
            rules::admit(cl, c, o, now_ms);
        }
        Ok(ticket)
    }

    /// The worker answered an admitted order (or it was answered without one): from now
    /// on its order events alone count it.
    pub fn settle(&self, t: Ticket) {
        let mut st = self.shared.lock();
        let Some(a) = st.accounts.get_mut(&t.account) else {
            return;
        };
        a.in_flight = a.in_flight.saturating_sub(1);
        if let Some(sym) = a.symbols.get_mut(&t.symbol) {
            sym.in_flight[t.side] = (sym.in_flight[t.side] - t.open_volume).max(0.0);
        }
    }

    fn count_cancel(&self, p: &Policy, now_ms: u64, client: Option<&str>, body: &[u8]) {
        let s = &*self.shared;
        let Ok(c) = rmp_serde::from_slice::<CancelRequest>(body) else {
            // The gateway answers a malformed cancel; there is nothing to count.
            return;
        };
        let mut st = s.lock();
        st.roll(state::trading_day(now_ms, s.day_start_ms));
        let id = c.order_id.0.as_str();
        // The order's account and symbol as its events told; a cancel of an order the
        // stage has not seen counts for the default account when it names its symbol.
        let (account, symbol) = match st.working_of(id) {
            Some((a, sym)) => (a.to_string(), sym.to_string()),
            None if !c.symbol.is_empty() => (p.cfg.default_account.clone(), c.symbol),
            None => return,
        };
        if let Some((name, _)) = p.client_limits(client) {
            st.client_cancel(name, &symbol, p.cfg.max_symbols_per_account);
        }
        if let Some(sym) =
            st.symbol_mut(&account, &symbol, &|a| p.limits_for(a).is_some(), p.caps())
        {
            sym.cancels = sym.cancels.saturating_add(1);
        }
    }

    /// A copy of the counters of the client named `client` for `symbol` (tests).
    pub fn client_counters(&self, client: &str, symbol: &str) -> Option<state::SymbolState> {
        let st = self.shared.lock();
        st.clients.get(client)?.symbols.get(symbol).cloned()
    }

    /// A copy of the counters for `account` and `symbol` (tests, status).
    pub fn counters(&self, account: &str, symbol: &str) -> Option<state::SymbolState> {
        let st = self.shared.lock();
        st.accounts.get(account)?.symbols.get(symbol).cloned()
    }
}

impl Feed {
    /// Applies one event of `kind` (the topic's first segment) received at `now_ms`.
    pub fn on_event(&self, now_ms: u64, kind: &str, body: &[u8]) {
        let s = &*self.shared;
        let p = s.policy();
        // Without rules only order events are read (the kill switch's book).
        if !EVENT_KINDS.contains(&kind) || (!p.rules && kind != "order") {
            return;
        }
        if kind == "trade" {
            self.journal_trade(now_ms, body);
        }
        let mut st = s.lock();
        st.roll(state::trading_day(now_ms, s.day_start_ms));
        if !st.on_event(kind, body, &|a| p.limits_for(a).is_some(), p.caps()) {
            s.metrics.bad_events.inc();
        }
    }
}

/// Checks `o` against the limits `cl` of the client `name` (the rules a client may have
/// count only its own requests), and that a new symbol entry fits.
fn check_client(
    st: &mut State,
    name: &str,
    cl: &config::Limits,
    market: Market,
    o: &OrderRequest,
    now_ms: u64,
    max_symbols: usize,
) -> Result<(), Reject> {
    if let Some(c) = st.clients.get_mut(name) {
        rules::expire(cl, c, now_ms);
    }
    let c = st.clients.get(name);
    let counters = Counters {
        account: c,
        symbol: c.and_then(|c| c.symbols.get(&o.symbol)),
    };
    rules::check(cl, &counters, market, o, now_ms).map_err(|mut r| {
        r.message.push_str(&format!(" (client {name})"));
        r
    })?;
    let n = c.map_or(0, |c| c.symbols.len());
    if !c.is_some_and(|c| c.symbols.contains_key(&o.symbol)) && n >= max_symbols {
        return Err(rules::reject(
            "risk_capacity",
            format_args!("{max_symbols} symbols per client"),
            n + 1,
        ));
    }
    Ok(())
}

impl Feed {
    fn journal_trade(&self, now_ms: u64, body: &[u8]) {
        #[derive(Deserialize)]
        struct TradeOf {
            symbol: String,
            #[serde(default)]
            account: String,
        }
        let Some(a) = self.shared.audit.get() else {
            return;
        };
        if !self.shared.serving.load(Ordering::Relaxed) {
            return;
        }
        let Ok(t) = rmp_serde::from_slice::<TradeOf>(body) else {
            return;
        };
        let line = audit::Line::Trade {
            ts_ms: now_ms,
            account: t.account,
            symbol: t.symbol,
        };
        if let Err(e) = a.write(&line, false) {
            tracing::error!(error = %e, "audit journal: write failed");
        }
    }
}
