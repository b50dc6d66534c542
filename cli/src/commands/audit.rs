//! `tradeplex audit`: what happened to an order, from the broker's audit journal (the
//! file the operator points at): its request, the risk decision and the outcome, plus any
//! cancel of it, in journal order.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;
use tradeplex_broker::risk::audit::{self, Line};

/// Flags of `tradeplex audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The order id (as the worker answered it, e.g. `SIM.w1.5`).
    #[arg(required_unless_present = "reference", conflicts_with = "reference")]
    order_id: Option<String>,
    /// The client's `reference` instead of an order id (every order carrying it).
    #[arg(long)]
    reference: Option<String>,
    /// The broker's audit journal (`[risk] journal`); its rotated files `PATH.1` … are
    /// read too, oldest first.
    #[arg(long)]
    journal: PathBuf,
    /// Rotated files to look for (`[risk] journal_keep`).
    #[arg(long, default_value_t = tradeplex_ops::journal::DEFAULT_KEEP)]
    keep: u32,
    /// Print the journal lines themselves, one JSON object a line.
    #[arg(long)]
    json: bool,
}

/// The audit ids (`rid`) of the orders asked about.
fn rids(lines: &[Line], args: &AuditArgs) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| match (l, &args.order_id, &args.reference) {
            (
                Line::Outcome {
                    rid,
                    order_id: Some(o),
                    ..
                },
                Some(want),
                _,
            ) if o == want => Some(rid.clone()),
            (
                Line::Request {
                    rid,
                    order: Some(o),
                    ..
                },
                _,
                Some(want),
            ) if &o.reference == want => Some(rid.clone()),
            _ => None,
        })
        .collect()
}

/// The lines of those orders, and of cancels naming their order ids, in journal order.
fn select<'a>(lines: &'a [Line], args: &AuditArgs) -> Vec<&'a Line> {
    let mut rids = rids(lines, args);
    let ids: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Outcome {
                rid,
                order_id: Some(o),
                ..
            } if rids.contains(rid) => Some(o.as_str()),
            _ => None,
        })
        .chain(args.order_id.as_deref())
        .collect();
    for l in lines {
        if let Line::Request {
            rid,
            cancel: Some(c),
            ..
        } = l
        {
            if ids.contains(c.order_id.0.as_str()) {
                rids.insert(rid.clone());
            }
        }
    }
    lines
        .iter()
        .filter(|l| match l {
            Line::Request { rid, .. } | Line::Decision { rid, .. } | Line::Outcome { rid, .. } => {
                rids.contains(rid)
            }
            _ => false,
        })
        .collect()
}

fn human(l: &Line) -> String {
    match l {
        Line::Request {
            ts_ms,
            rid,
            client,
            name,
            id,
            op,
            order,
            cancel,
        } => {
            let what = match (order, cancel) {
                (Some(o), _) => format!(
                    "{} {} {:?} {} @ {} account={} reference={}",
                    o.symbol, o.exchange, o.direction, o.volume, o.price, o.account, o.reference
                ),
                (_, Some(c)) => format!("order {}", c.order_id.0),
                _ => "(body not decodable)".to_string(),
            };
            let name = name
                .as_deref()
                .map(|n| format!(" name={n}"))
                .unwrap_or_default();
            format!("{ts_ms} {rid} request {op} {what} client={client}{name} id={id}")
        }
        Line::Decision {
            ts_ms,
            rid,
            decision,
            code,
            message,
            ..
        } => match (code, message) {
            (Some(c), Some(m)) => format!("{ts_ms} {rid} decision {decision} {c}: {m}"),
            _ => format!("{ts_ms} {rid} decision {decision}"),
        },
        Line::Outcome {
            ts_ms,
            rid,
            outcome,
            order_id,
            status,
            error,
            worker,
        } => {
            let mut s = format!("{ts_ms} {rid} outcome {outcome}");
            for (k, v) in [
                ("order_id", order_id),
                ("status", status),
                ("worker", worker),
                ("error", error),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!(" {k}={v}"));
                }
            }
            s
        }
        other => format!("{other:?}"),
    }
}

pub fn run(args: AuditArgs) -> anyhow::Result<i32> {
    if !args.journal.exists() {
        return Err(super::UsageError(format!(
            "--journal {}: no such file",
            args.journal.display()
        ))
        .into());
    }
    let read = audit::read(&args.journal, args.keep, u64::MAX)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.journal.display()))?;
    let found = select(&read.lines, &args);
    if found.is_empty() {
        let what = match (&args.order_id, &args.reference) {
            (Some(o), _) => format!("order {o}"),
            (_, Some(r)) => format!("reference {r}"),
            _ => String::new(),
        };
        let message = format!("no audit line for {what} in {}", args.journal.display());
        eprintln!("not_found: {message}");
        if args.json {
            // The shape of every other command's failure under --json.
            let err = serde_json::json!({"error": {
                "name": "not_found", "code": null, "message": message, "worker": null,
            }});
            println!("{err}");
        }
        return Ok(super::exit::FAILED);
    }
    for l in found {
        if args.json {
            println!("{}", serde_json::to_string(l)?);
        } else {
            println!("{}", human(l));
        }
    }
    Ok(super::exit::OK)
}
