//! `tradeplex halt` / `tradeplex resume`: the kill switch. A halt makes the broker refuse
//! every new order of the account (or of all) and cancel its working orders.

use clap::Args;

/// Flags of `tradeplex halt`.
#[derive(Args, Debug)]
pub struct HaltArgs {
    /// The account to halt (as events name it, e.g. `sim`); omit to halt every account.
    #[arg(long)]
    account: Option<String>,
    /// Why (shown in every reject as `halted: <reason>`, in status and in the log).
    #[arg(long, default_value = "")]
    reason: String,
    /// Print the broker's reply as JSON (`account`, `reason`, `cancels_sent`,
    /// `cancels_skipped`, …).
    #[arg(long)]
    json: bool,
}

/// Flags of `tradeplex resume`.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The account to resume; omit to lift every halt.
    #[arg(long)]
    account: Option<String>,
    /// Print the broker's reply as JSON (`resumed`, `halts`).
    #[arg(long)]
    json: bool,
}

fn account_arg(a: &Option<String>) -> Result<Option<&str>, super::UsageError> {
    match a.as_deref() {
        Some("") => Err(super::UsageError(
            "--account needs a name (omit it for every account)".into(),
        )),
        other => Ok(other),
    }
}

pub fn halt(conn: &super::Conn, args: HaltArgs) -> anyhow::Result<i32> {
    let account = account_arg(&args.account)?;
    let client = conn.connect(5000)?;
    match client.halt(account, &args.reason) {
        Ok(r) if args.json => {
            println!("{}", serde_json::to_string(&r)?);
            Ok(super::exit::OK)
        }
        Ok(r) => {
            println!(
                "halted {} ({}): {} cancels sent, {} skipped",
                r.account, r.reason, r.cancels_sent, r.cancels_skipped
            );
            Ok(super::exit::OK)
        }
        Err(e) => Ok(super::fail(&e, args.json)),
    }
}

pub fn resume(conn: &super::Conn, args: ResumeArgs) -> anyhow::Result<i32> {
    let account = account_arg(&args.account)?;
    let client = conn.connect(5000)?;
    match client.resume(account) {
        Ok(r) if args.json => {
            println!("{}", serde_json::to_string(&r)?);
            Ok(super::exit::OK)
        }
        Ok(r) => {
            let resumed = if r.resumed.is_empty() {
                "nothing was halted".to_string()
            } else {
                format!("resumed {}", r.resumed.join(","))
            };
            let still: Vec<&str> = r.halts.iter().map(|h| h.account.as_str()).collect();
            if still.is_empty() {
                println!("{resumed}");
            } else {
                println!("{resumed}; still halted: {}", still.join(","));
            }
            Ok(super::exit::OK)
        }
        Err(e) => Ok(super::fail(&e, args.json)),
    }
}
