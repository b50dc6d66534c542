//! The kill switch's state: which accounts (or all) are halted, why and since when.
//! Set and lifted by `tpx.halt` / `tpx.resume` on the main loop; read by every order check.

use std::collections::BTreeMap;

use tradeplex_proto::mgmt::{HaltStatus, ALL_ACCOUNTS};

/// Most accounts halted one by one at once (a halt of every account needs no entry).
pub const MAX_HALTED_ACCOUNTS: usize = 10_000;

/// The reason recorded when a halt gives none.
pub const DEFAULT_REASON: &str = "halted by operator";

#[derive(Debug, Clone)]
struct Halt {
    reason: String,
    since_ms: u64,
    /// The client that halted (last), `""` = anonymous.
    by: String,
}

/// The halts in force.
#[derive(Debug, Default)]
pub struct Halts {
    all: Option<Halt>,
    accounts: BTreeMap<String, Halt>,
}

impl Halts {
    /// Halts `account` (None = every account) for the client `by`. A halt already in
    /// force keeps its start and takes the new reason and client. Err when the account cap
    /// is reached.
    pub fn halt(
        &mut self,
        account: Option<&str>,
        reason: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<HaltStatus, String> {
        let reason = if reason.is_empty() {
            DEFAULT_REASON
        } else {
            reason
        };
        let slot = match account {
            None => &mut self.all,
            Some(a) => {
                if !self.accounts.contains_key(a) && self.accounts.len() >= MAX_HALTED_ACCOUNTS {
                    return Err(format!(
                        "{MAX_HALTED_ACCOUNTS} accounts are halted one by one already; halt every account instead"
                    ));
                }
                let e = self.accounts.entry(a.to_string()).or_insert(Halt {
                    reason: String::new(),
                    since_ms: now_ms,
                    by: String::new(),
                });
                e.reason = reason.to_string();
                e.by = by.to_string();
                return Ok(status(a, e));
            }
        };
        let h = slot.get_or_insert(Halt {
            reason: String::new(),
            since_ms: now_ms,
            by: String::new(),
        });
        h.reason = reason.to_string();
        h.by = by.to_string();
        Ok(status(ALL_ACCOUNTS, h))
    }

    /// Lifts the halt of `account`, or every halt (None); returns the names lifted.
    pub fn resume(&mut self, account: Option<&str>) -> Vec<String> {
        match account {
            Some(a) => self
                .accounts
                .remove(a)
                .map(|_| vec![a.to_string()])
                .unwrap_or_default(),
            None => {
                let mut gone: Vec<String> = Vec::new();
                if self.all.take().is_some() {
                    gone.push(ALL_ACCOUNTS.to_string());
                }
                gone.extend(std::mem::take(&mut self.accounts).into_keys());
                gone
            }
        }
    }

    /// Why `account`'s orders are refused, if they are (the all-accounts halt first).
    pub fn reason_for(&self, account: &str) -> Option<&str> {
        self.all
            .as_ref()
            .or_else(|| self.accounts.get(account))
            .map(|h| h.reason.as_str())
    }

    /// Whether every account is halted.
    pub fn all(&self) -> Option<&str> {
        self.all.as_ref().map(|h| h.reason.as_str())
    }

    /// Accounts halted one by one.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Whether any halt is in force.
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.accounts.is_empty()
    }

    /// The halts in force, the all-accounts one first.
    pub fn list(&self) -> Vec<HaltStatus> {
        self.all
            .iter()
            .map(|h| status(ALL_ACCOUNTS, h))
            .chain(self.accounts.iter().map(|(a, h)| status(a, h)))
            .collect()
    }
}

fn status(account: &str, h: &Halt) -> HaltStatus {
    HaltStatus {
        account: account.to_string(),
        reason: h.reason.clone(),
        since_ms: h.since_ms,
        by: h.by.clone(),
    }
}
