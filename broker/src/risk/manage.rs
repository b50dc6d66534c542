//! Limits at runtime: the `tpx.risk` management calls (admin clients only) and the SIGHUP
//! reload of the config file's `[risk]` section and CURVE lists. A change is validated as
//! at load, put in force whole (one policy swap: a check sees the old limits or the new,
//! never a mix) and journaled one `change` line per entry, with before and after.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tradeplex_proto::ErrorCode;

use super::config::{ContractSpec, Limits, RiskConfig};
use super::identity::{Caller, Changes, Identities, Table};
use super::{audit, Policy, Stage};
use crate::config::{Config, ConfigError};

/// Who a SIGHUP reload is journaled as.
pub const BY_SIGHUP: &str = "sighup";
/// The `via` of changes made by `tpx.risk`.
pub const VIA_SERVICE: &str = tradeplex_proto::mgmt::RISK_SERVICE;

/// The reply of every `tpx.risk` call: the limits in force (after the change).
#[derive(Debug, Serialize)]
pub struct RiskReply<'a> {
    /// Whether rules run (false: no `[risk]` and no change since).
    pub rules: bool,
    /// Limits of accounts not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<&'a Limits>,
    /// Limits per account.
    pub account: &'a [Limits],
    /// Limits per client.
    pub clients: &'a BTreeMap<String, Limits>,
    /// Contract facts from the config.
    pub contract: &'a BTreeMap<String, ContractSpec>,
    /// Names that may call `tpx.risk` besides admin CURVE keys.
    pub admins: &'a [String],
    /// The account an order with an empty `account` is checked as.
    pub default_account: &'a str,
    /// When these limits were put in force (Unix ms).
    pub changed_ms: u64,
    /// By whom: `config` (at start), `sighup`, or the admin client's name.
    pub changed_by: &'a str,
}

#[derive(Deserialize)]
struct OpOnly {
    #[serde(default)]
    op: String,
}

/// `{"op": "set", ...}`: replaces (or adds) the limits of each entry named.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct SetRequest {
    op: String,
    default: Option<Limits>,
    account: Vec<Limits>,
    clients: BTreeMap<String, Limits>,
}

/// `{"op": "clear", ...}`: removes the limits of each entry named.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ClearRequest {
    op: String,
    default: bool,
    account: Vec<String>,
    clients: Vec<String>,
}

type CallError = (ErrorCode, String);

fn bad(message: impl std::fmt::Display) -> CallError {
    (ErrorCode::BadRequest, message.to_string())
}

fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CallError> {
    rmp_serde::from_slice(body).map_err(|e| bad(format!("tpx.risk: {e}")))
}

/// `set`: `cfg` with the request's entries replaced or added.
fn apply_set(mut cfg: RiskConfig, r: SetRequest) -> Result<RiskConfig, CallError> {
    if r.default.is_none() && r.account.is_empty() && r.clients.is_empty() {
        return Err(bad(
            "tpx.risk set: name at least one of default, account, clients",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in &r.account {
        if !seen.insert(a.name.as_str()) {
            return Err(bad(format!(
                "invalid config field `risk.account.name`: account {:?} is listed twice",
                a.name
            )));
        }
    }
    if let Some(d) = r.default {
        cfg.default = Some(d);
    }
    for a in r.account {
        match cfg.account.iter_mut().find(|x| x.name == a.name) {
            Some(x) => *x = a,
            None => cfg.account.push(a),
        }
    }
    cfg.clients.extend(r.clients);
    Ok(cfg)
}

/// `clear`: `cfg` without the request's entries (naming one that has none is an error,
/// so a typo is not taken for a change).
fn apply_clear(mut cfg: RiskConfig, r: ClearRequest) -> Result<RiskConfig, CallError> {
    if !r.default && r.account.is_empty() && r.clients.is_empty() {
        return Err(bad(
            "tpx.risk clear: name at least one of default, account, clients",
        ));
    }
    if r.default && cfg.default.take().is_none() {
        return Err(bad("tpx.risk clear: there are no default limits"));
    }
    for name in &r.account {
        let before = cfg.account.len();
        cfg.account.retain(|a| &a.name != name);
        if cfg.account.len() == before {
            return Err(bad(format!(
                "tpx.risk clear: account {name:?} has no limits"
            )));
        }
    }
    for name in &r.clients {
        if cfg.clients.remove(name).is_none() {
            return Err(bad(format!(
                "tpx.risk clear: client {name:?} has no limits"
            )));
        }
    }
    Ok(cfg)
}

fn json<T: Serialize>(v: Option<&T>) -> Option<serde_json::Value> {
    v.and_then(|v| serde_json::to_value(v).ok())
}

/// One change per entry that differs: (what, before, after).
type Diff = Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)>;

fn diff_map<T: Serialize + PartialEq>(
    out: &mut Diff,
    prefix: &str,
    old: &BTreeMap<&str, &T>,
    new: &BTreeMap<&str, &T>,
) {
    for (k, o) in old {
        match new.get(k) {
            Some(n) if n == o => {}
            n => out.push((format!("{prefix}:{k}"), json(Some(o)), json(n))),
        }
    }
    for (k, n) in new {
        if !old.contains_key(k) {
            out.push((format!("{prefix}:{k}"), None, json(Some(n))));
        }
    }
}

fn accounts(c: &RiskConfig) -> BTreeMap<&str, &Limits> {
    c.account.iter().map(|a| (a.name.as_str(), a)).collect()
}

/// What differs between two `[risk]` configs, entry by entry.
fn diff(old: &RiskConfig, new: &RiskConfig) -> Diff {
    let mut out = Diff::new();
    if old.default != new.default {
        out.push((
            "default".into(),
            json(old.default.as_ref()),
            json(new.default.as_ref()),
        ));
    }
    diff_map(&mut out, "account", &accounts(old), &accounts(new));
    diff_map(
        &mut out,
        "client",
        &old.clients.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        &new.clients.iter().map(|(k, v)| (k.as_str(), v)).collect(),
    );
    diff_map(
        &mut out,
        "contract",
        &old.contract.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        &new.contract.iter().map(|(k, v)| (k.as_str(), v)).collect(),
    );
    if old.admins != new.admins {
        out.push((
            "admins".into(),
            json(Some(&old.admins)),
            json(Some(&new.admins)),
        ));
    }
    let settings = |c: &RiskConfig| {
        serde_json::json!({
            "default_account": c.default_account,
            "max_accounts": c.max_accounts,
            "max_symbols_per_account": c.max_symbols_per_account,
        })
    };
    if settings(old) != settings(new) {
        out.push(("risk".into(), Some(settings(old)), Some(settings(new))));
    }
    out
}

/// The `[risk]` settings a reload cannot change (they need a restart): the journal is
/// open, and moving the day boundary mid-day would reset or merge counters. Copies the
/// running values into `new` and names those that differed.
fn keep_restart_only(old: &RiskConfig, new: &mut RiskConfig) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($f:ident),*) => {$(
            if old.$f != new.$f {
                kept.push(stringify!($f));
                new.$f = old.$f.clone();
            }
        )*};
    }
    keep!(
        trading_day_start_utc,
        journal,
        journal_fsync,
        journal_max_bytes,
        journal_keep
    );
    kept
}

impl Stage {
    /// Answers a `tpx.risk` call from `caller` at `now_ms`: the reply body, or the error.
    pub fn manage(&self, now_ms: u64, caller: &Caller, body: &[u8]) -> Result<Vec<u8>, CallError> {
        let r = self.manage_inner(now_ms, caller, body);
        if let Err((code, message)) = &r {
            if let Some(suppressed) = self.allow_refusal_log() {
                let who = caller.name.as_deref().unwrap_or("-");
                tracing::warn!(
                    client = who,
                    code = code.name(),
                    suppressed,
                    "tpx.risk refused: {message}"
                );
            }
        }
        r
    }

    /// Whether a refusal may be logged now (one bound for `tpx.risk`, `tpx.halt` and
    /// `tpx.resume`: a client may repeat), with the count suppressed since the last line.
    fn allow_refusal_log(&self) -> Option<u64> {
        (self.shared.refusal_log.lock())
            .unwrap_or_else(|p| p.into_inner())
            .allow()
    }

    /// A `tpx.halt` / `tpx.resume` refused `forbidden` to `caller`: counted
    /// (`not_admin`) and logged, the log bounded as for `tpx.risk` (a client may repeat).
    pub fn refused_halt(&self, caller: &Caller, service: &str, message: &str) {
        (self.shared.metrics.forbidden)
            .with_label_values(&["not_admin"])
            .inc();
        if let Some(suppressed) = self.allow_refusal_log() {
            let who = caller.name.as_deref().unwrap_or("-");
            tracing::warn!(
                client = who,
                service,
                suppressed,
                "request refused: {message}"
            );
        }
    }

    fn manage_inner(
        &self,
        now_ms: u64,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        if !caller.admin {
            self.shared
                .metrics
                .forbidden
                .with_label_values(&["not_admin"])
                .inc();
            return Err((
                ErrorCode::Forbidden,
                format!(
                    "tpx.risk is for admin clients only; {} is not one ([[curve.clients]] \
                     admin = true, or [risk] admins)",
                    caller.name.as_deref().unwrap_or("an unnamed client")
                ),
            ));
        }
        let by = caller.name.as_deref().unwrap_or("");
        let op = if body.is_empty() {
            "show".to_string()
        } else {
            decode::<OpOnly>(body)?.op
        };
        let _changing = self.changing();
        let old = self.shared.policy();
        let new = match op.as_str() {
            "show" | "" => None,
            "set" => Some(apply_set(old.cfg.clone(), decode(body)?)?),
            "clear" => Some(apply_clear(old.cfg.clone(), decode(body)?)?),
            other => {
                return Err(bad(format!(
                    "tpx.risk: bad field op: {other:?} (show, set or clear)"
                )))
            }
        };
        if let Some(cfg) = new {
            cfg.validate().map_err(bad)?;
            self.put(now_ms, &old, cfg, true, by, VIA_SERVICE);
        }
        self.encode_limits()
    }

    /// The `tpx.risk` reply for the limits in force.
    fn encode_limits(&self) -> Result<Vec<u8>, CallError> {
        let p = self.shared.policy();
        let reply = RiskReply {
            rules: p.rules,
            default: p.cfg.default.as_ref(),
            account: &p.cfg.account,
            clients: &p.cfg.clients,
            contract: &p.cfg.contract,
            admins: &p.cfg.admins,
            default_account: &p.cfg.default_account,
            changed_ms: p.changed_ms,
            changed_by: &p.changed_by,
        };
        rmp_serde::to_vec_named(&reply).map_err(|e| {
            (
                ErrorCode::WorkerError,
                format!("cannot encode the reply: {e}"),
            )
        })
    }

    fn changing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .changing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `cfg` (validated) in force in place of `old`, journaling each entry changed
    /// (nothing when nothing differs).
    fn put(&self, now_ms: u64, old: &Policy, cfg: RiskConfig, rules: bool, by: &str, via: &str) {
        let mut changes = diff(&old.cfg, &cfg);
        if rules != old.rules {
            let v = |on: bool| Some(serde_json::json!({ "rules": on }));
            changes.push(("risk".into(), v(old.rules), v(rules)));
        }
        // A reload of an unchanged file changes nothing, not even who changed it last.
        if changes.is_empty() {
            return;
        }
        self.shared.set_policy(Policy::new(cfg, rules, now_ms, by));
        self.shared.metrics.changes.with_label_values(&[via]).inc();
        for (what, before, after) in changes {
            tracing::warn!(by, via, %what, before = %opt(&before), after = %opt(&after), "risk limits changed");
            self.journal_change(now_ms, by, via, what, before, after);
        }
    }

    fn journal_change(
        &self,
        now_ms: u64,
        by: &str,
        via: &str,
        what: String,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) {
        self.journal(
            &audit::Line::Change {
                ts_ms: now_ms,
                by: by.to_string(),
                via: via.to_string(),
                what,
                before,
                after,
            },
            true,
        );
    }

    /// Puts a reloaded `[risk]` section in force (None = no section: no rules). Settings
    /// that need a restart keep their running values; their names are returned.
    pub fn reload(
        &self,
        now_ms: u64,
        risk: Option<&RiskConfig>,
    ) -> Result<Vec<&'static str>, ConfigError> {
        let mut cfg = risk.cloned().unwrap_or_default();
        cfg.validate()?;
        let _changing = self.changing();
        let old = self.shared.policy();
        let kept = keep_restart_only(&old.cfg, &mut cfg);
        self.put(now_ms, &old, cfg, risk.is_some(), BY_SIGHUP, BY_SIGHUP);
        Ok(kept)
    }

    /// Journals the CURVE list changes of a reload.
    fn journal_identities(&self, now_ms: u64, c: &Changes) {
        for (key, before, after) in &c.clients {
            let name = after
                .as_ref()
                .or(before.as_ref())
                .map_or("", |e| e.name.as_str());
            let with_key = |e: &Option<super::identity::ClientEntry>| {
                e.as_ref()
                    .map(|e| serde_json::json!({"name": e.name, "admin": e.admin, "key": key}))
            };
            tracing::warn!(client = name, key, before = ?before, after = ?after, "CURVE client changed by reload");
            self.journal_change(
                now_ms,
                BY_SIGHUP,
                BY_SIGHUP,
                format!("curve.client:{name}"),
                with_key(before),
                with_key(after),
            );
        }
        for (key, added) in c
            .workers_added
            .iter()
            .map(|k| (k, true))
            .chain(c.workers_removed.iter().map(|k| (k, false)))
        {
            tracing::warn!(key, added, "CURVE worker key changed by reload");
            let v = Some(serde_json::Value::String(key.clone()));
            let (before, after) = if added { (None, v) } else { (v, None) };
            self.journal_change(
                now_ms,
                BY_SIGHUP,
                BY_SIGHUP,
                format!("curve.worker:{key}"),
                before,
                after,
            );
        }
    }

    /// The counter of `forbidden` answers, shared with [`Identities`].
    pub fn forbidden_counter(&self) -> prometheus::IntCounterVec {
        self.shared.metrics.forbidden.clone()
    }
}

fn opt(v: &Option<serde_json::Value>) -> String {
    v.as_ref()
        .map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// Applies a config file re-read on SIGHUP: risk limits and CURVE lists (names, admin
/// rights) without touching a connection. Held by the signal thread.
#[derive(Clone)]
pub struct Reloader {
    stage: Stage,
    identities: Identities,
    /// The config the broker started with: what the restart-only settings still are.
    started: std::sync::Arc<Config>,
}

impl Reloader {
    /// A reloader for the broker that runs `stage` with `identities`, started from `config`.
    pub fn new(stage: Stage, identities: Identities, config: &Config) -> Reloader {
        Reloader {
            stage,
            identities,
            started: std::sync::Arc::new(config.clone()),
        }
    }

    /// Puts `loaded` in force, or refuses it (a log line, `tradeplex_config_reloads_total
    /// {result="error"}`, the config in force kept) when it failed to load or cannot be
    /// applied without a restart.
    pub fn apply(&self, loaded: Result<Config, String>) -> Result<(), String> {
        let result = loaded.and_then(|c| self.try_apply(&c));
        let label = if result.is_ok() { "ok" } else { "error" };
        self.stage
            .shared
            .metrics
            .reloads
            .with_label_values(&[label])
            .inc();
        if let Err(e) = &result {
            tracing::error!(error = %e, "config reload refused; the config in force is kept");
        }
        result
    }

    fn try_apply(&self, c: &Config) -> Result<(), String> {
        if c.curve.is_some() != self.identities.curve() {
            return Err("turning CURVE on or off needs a restart".into());
        }
        let table = Table::from_config(c).map_err(|e| e.to_string())?;
        if let Some(r) = &c.risk {
            r.validate().map_err(|e| e.to_string())?;
        }
        let key_file = |c: &Config| c.curve.as_ref().map(|k| k.key_file.clone());
        if key_file(c) != key_file(&self.started) {
            tracing::warn!(
                "curve.key_file changed: the broker's own key changes only at a restart"
            );
        }
        let now_ms = tradeplex_proto::now_unix_ms();
        let kept = self
            .stage
            .reload(now_ms, c.risk.as_ref())
            .map_err(|e| e.to_string())?;
        let top_level = self.started.restart_only_changes(c);
        let kept = kept.iter().map(|s| format!("risk.{s}"));
        for setting in kept.chain(top_level.iter().map(|s| s.to_string())) {
            tracing::warn!(%setting, "changed in the file; needs a restart (the running value is kept)");
        }
        let changes = self.identities.replace(table);
        self.stage.journal_identities(now_ms, &changes);
        tracing::info!(
            clients = self.identities.read().clients.len(),
            workers = self.identities.read().workers.len(),
            "config reloaded"
        );
        Ok(())
    }
}
