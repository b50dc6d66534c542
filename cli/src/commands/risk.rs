//! `tradeplex risk`: the broker's risk limits at runtime (`tpx.risk`, admin clients only):
//! `show` the limits in force, `set` rules of an account / a client / the default, `clear`
//! an entry, and `log` the changes recorded in the audit journal.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use tradeplex_broker::risk::audit::{self, Line};
use tradeplex_client::{json as wire_json, CallOptions, Client, ClientError};
use tradeplex_proto::mgmt::RISK_SERVICE;

/// `tradeplex risk` subcommands.
#[derive(Subcommand, Debug)]
pub enum RiskCommand {
    /// Print the limits in force (per account, per client, the default, the admins).
    Show(ShowArgs),
    /// Set rules of one entry: `RULE=VALUE` changes a rule, `RULE=off` removes it; the
    /// entry's other rules stay as they are. Validated by the broker as at load.
    Set(SetArgs),
    /// Remove an entry's limits (an account then falls back to the default, if any).
    Clear(EntryArgs),
    /// List the runtime changes (tpx.risk, SIGHUP) recorded in an audit journal file.
    Log(LogArgs),
}

/// Flags of `tradeplex risk show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Print the broker's reply as JSON.
    #[arg(long)]
    json: bool,
}

/// Which entry a change is about (exactly one).
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Entry {
    /// An account's limits.
    #[arg(long)]
    account: Option<String>,
    /// A client's limits (its CURVE key's name or its declared name).
    #[arg(long)]
    client: Option<String>,
    /// The default limits (accounts not listed).
    #[arg(long)]
    default: bool,
}

/// Flags of `tradeplex risk set`.
#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    entry: Entry,
    /// `RULE=VALUE` (a number, `true`/`false`) or `RULE=off`, e.g. `order_size_limit=10`.
    #[arg(required = true, value_name = "RULE=VALUE")]
    rules: Vec<String>,
    /// Print the broker's reply (the limits in force after the change) as JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `tradeplex risk clear`.
#[derive(Args, Debug)]
pub struct EntryArgs {
    #[command(flatten)]
    entry: Entry,
    /// Print the broker's reply as JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `tradeplex risk log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// The broker's audit journal (`[risk] journal`); rotated files are read too.
    #[arg(long)]
    journal: PathBuf,
    /// Rotated files to look for (`[risk] journal_keep`).
    #[arg(long, default_value_t = tradeplex_ops::journal::DEFAULT_KEEP)]
    keep: u32,
    /// Print the journal lines themselves, one JSON object a line.
    #[arg(long)]
    json: bool,
}

/// Runs a `tradeplex risk` subcommand; returns the exit code.
pub fn run(conn: &super::Conn, cmd: RiskCommand) -> anyhow::Result<i32> {
    match cmd {
        RiskCommand::Show(a) => {
            let client = conn.connect(5000)?;
            finish(call(&client, &json!({"op": "show"})), a.json)
        }
        RiskCommand::Set(a) => {
            let changes = parse_rules(&a.rules)?;
            let client = conn.connect(5000)?;
            let shown = match call(&client, &json!({"op": "show"})) {
                Ok(v) => v,
                Err(e) => return Ok(super::fail(&e, a.json)),
            };
            let body = set_body(&a.entry, &shown, changes);
            finish(call(&client, &body), a.json)
        }
        RiskCommand::Clear(a) => {
            let client = conn.connect(5000)?;
            let body = match (&a.entry.account, &a.entry.client) {
                (Some(acc), _) => json!({"op": "clear", "account": [acc]}),
                (_, Some(c)) => json!({"op": "clear", "clients": [c]}),
                _ => json!({"op": "clear", "default": true}),
            };
            finish(call(&client, &body), a.json)
        }
        RiskCommand::Log(a) => log(&a),
    }
}

fn call(client: &Client, body: &Value) -> Result<Value, ClientError> {
    let bytes = wire_json::to_msgpack(body).map_err(ClientError::Encode)?;
    let reply = client.call(RISK_SERVICE, bytes, CallOptions::default())?;
    wire_json::from_msgpack(&reply.body).map_err(ClientError::Encode)
}

fn finish(r: Result<Value, ClientError>, as_json: bool) -> anyhow::Result<i32> {
    match r {
        Ok(v) if as_json => {
            println!("{v}");
            Ok(super::exit::OK)
        }
        Ok(v) => {
            print!("{}", human(&v));
            Ok(super::exit::OK)
        }
        Err(e) => Ok(super::fail(&e, as_json)),
    }
}

/// `RULE=VALUE` pairs: a value of `off` is `None` (remove the rule).
fn parse_rules(rules: &[String]) -> Result<Vec<(String, Option<Value>)>, super::UsageError> {
    rules
        .iter()
        .map(|r| {
            let (k, v) = r
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| super::UsageError(format!("{r:?} is not RULE=VALUE")))?;
            let value = match v {
                "off" => None,
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                n => Some(number(n).ok_or_else(|| {
                    super::UsageError(format!("{k}: {n:?} is not a number, true, false or off"))
                })?),
            };
            Ok((k.to_string(), value))
        })
        .collect()
}

fn number(n: &str) -> Option<Value> {
    if let Ok(i) = n.parse::<i64>() {
        return Some(Value::from(i));
    }
    n.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::from)
}

/// The `set` body: the entry's limits as shown, with `changes` applied.
fn set_body(e: &Entry, shown: &Value, changes: Vec<(String, Option<Value>)>) -> Value {
    let current = match (&e.account, &e.client) {
        (Some(a), _) => shown["account"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == a.as_str()))
            .cloned(),
        (_, Some(c)) => shown["clients"].get(c).cloned(),
        _ => shown.get("default").cloned(),
    };
    let mut limits = match current {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in changes {
        match v {
            Some(v) => limits.insert(k, v),
            None => limits.remove(&k),
        };
    }
    match (&e.account, &e.client) {
        (Some(a), _) => {
            limits.insert("name".into(), Value::from(a.as_str()));
            json!({"op": "set", "account": [limits]})
        }
        (_, Some(c)) => json!({"op": "set", "clients": {c: limits}}),
        _ => json!({"op": "set", "default": limits}),
    }
}

/// `rule=value …` of one entry (its `name` left out).
fn rules_line(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = m
        .iter()
        .filter(|(k, _)| k.as_str() != "name")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        "(no rules)".into()
    } else {
        parts.join(" ")
    }
}

/// The reply as lines: one per entry, then the admins and when it last changed.
fn human(v: &Value) -> String {
    let mut out = String::new();
    if v["rules"] == false {
        out.push_str("no limits in force (no [risk] section)\n");
    }
    if let Some(d) = v.get("default") {
        out.push_str(&format!("default: {}\n", rules_line(d)));
    }
    for a in v["account"].as_array().into_iter().flatten() {
        let name = a["name"].as_str().unwrap_or("");
        out.push_str(&format!("account {name}: {}\n", rules_line(a)));
    }
    for (name, c) in v["clients"].as_object().into_iter().flatten() {
        out.push_str(&format!("client {name}: {}\n", rules_line(c)));
    }
    let admins: Vec<&str> = v["admins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !admins.is_empty() {
        out.push_str(&format!("admins: {}\n", admins.join(",")));
    }
    out.push_str(&format!(
        "in force since {} ms, by {}\n",
        v["changed_ms"],
        v["changed_by"].as_str().unwrap_or("?")
    ));
    out
}

fn log(a: &LogArgs) -> anyhow::Result<i32> {
    if !a.journal.exists() {
        return Err(
            super::UsageError(format!("--journal {}: no such file", a.journal.display())).into(),
        );
    }
    let read = audit::read(&a.journal, a.keep, u64::MAX)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", a.journal.display()))?;
    for l in &read.lines {
        let Line::Change {
            ts_ms,
            by,
            via,
            what,
            before,
            after,
        } = l
        else {
            continue;
        };
        if a.json {
            println!("{}", serde_json::to_string(l)?);
        } else {
            let show = |v: &Option<Value>| v.as_ref().map_or("none".into(), |v| v.to_string());
            println!(
                "{ts_ms} change {what} by={by} via={via} before={} after={}",
                show(before),
                show(after)
            );
        }
    }
    Ok(super::exit::OK)
}
