//! Who is who: the name (and admin right) of the client behind each request, and the
//! CURVE allow-lists the ZAP handler admits by. With CURVE the client's public key names it
//! (`[[curve.clients]]`, or the key itself for a key only in `allow_clients`); without
//! CURVE a client may declare a name in its request header, trusted from loopback only.
//! The table is swapped whole on a reload (SIGHUP) and read on every request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use prometheus::IntCounterVec;
use serde::Serialize;

use crate::config::{Config, ConfigError, CurveConfig};

/// One client allowed by its CURVE key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientEntry {
    /// Its name (what limits key on and the audit journal records).
    pub name: String,
    /// Whether it may call `tpx.risk`.
    pub admin: bool,
}

/// The allow-lists and names in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Allowed client keys (z85) and their names.
    pub clients: BTreeMap<String, ClientEntry>,
    /// Allowed worker keys (z85).
    pub workers: BTreeSet<String>,
    /// Names that may call `tpx.risk` (`[risk] admins`).
    pub admins: BTreeSet<String>,
}

impl Table {
    /// Whether any admin is configured (a `[risk] admins` name or an `admin = true` key):
    /// then only admins may halt and resume.
    pub fn has_admins(&self) -> bool {
        !self.admins.is_empty() || self.clients.values().any(|c| c.admin)
    }
}

impl Table {
    /// The table `config` describes (its curve lists, its `[risk] admins`).
    pub fn from_config(config: &Config) -> Result<Table, ConfigError> {
        let mut t = Table::default();
        if let Some(c) = &config.curve {
            t.add_curve(c)?;
        }
        if let Some(r) = &config.risk {
            t.admins = r.admins.iter().cloned().collect();
        }
        Ok(t)
    }

    fn add_curve(&mut self, c: &CurveConfig) -> Result<(), ConfigError> {
        for key in &c.allow_clients {
            self.clients.insert(
                key.clone(),
                ClientEntry {
                    name: key.clone(),
                    admin: false,
                },
            );
        }
        let mut names = BTreeSet::new();
        for n in &c.clients {
            if !names.insert(n.name.as_str()) {
                return Err(ConfigError::Field {
                    field: "curve.clients.name",
                    reason: format!("client {:?} is listed twice", n.name),
                });
            }
            let entry = ClientEntry {
                name: n.name.clone(),
                admin: n.admin,
            };
            if self.clients.insert(n.key.clone(), entry).is_some()
                && !c.allow_clients.contains(&n.key)
            {
                return Err(ConfigError::Field {
                    field: "curve.clients.key",
                    reason: format!("the key of {:?} is listed twice", n.name),
                });
            }
        }
        self.workers = c.allow_workers.iter().cloned().collect();
        Ok(())
    }

    /// Whether `name` may call `tpx.risk`.
    fn is_admin(&self, name: &str, key_admin: bool) -> bool {
        key_admin || self.admins.contains(name)
    }
}

/// Who sent a request, as far as the broker can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// Its name: the CURVE key's, or the declared one from loopback; None = anonymous.
    pub name: Option<String>,
    /// Whether it may call `tpx.risk`.
    pub admin: bool,
    /// Whether any admin is configured: then `tpx.halt` / `tpx.resume` are for admins
    /// only; with none, for every client the broker admits.
    pub admins_exist: bool,
}

impl Caller {
    /// Whether it may send `tpx.halt` / `tpx.resume`.
    pub fn may_halt(&self) -> bool {
        self.admin || !self.admins_exist
    }
}

/// Why a request was refused `forbidden` before it reached dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A bounded metric label.
    pub reason: &'static str,
    /// What the client is told.
    pub message: String,
}

/// The table in force, shared by the ZAP handler, the socket loop and the reloader.
#[derive(Clone)]
pub struct Identities {
    table: Arc<RwLock<Table>>,
    /// CURVE on: fixed at start (a reload cannot switch it).
    curve: bool,
    /// The frontend is `ipc://`: every peer is on this host.
    local_only: bool,
    forbidden: IntCounterVec,
}

/// What [`Identities::replace`] changed, for the log and the audit journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Client keys added, removed, or whose name or admin right changed: (key, before,
    /// after). (`[risk] admins` changes are the risk policy's.)
    pub clients: Vec<(String, Option<ClientEntry>, Option<ClientEntry>)>,
    /// Worker keys added.
    pub workers_added: Vec<String>,
    /// Worker keys removed.
    pub workers_removed: Vec<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.workers_added.is_empty() && self.workers_removed.is_empty()
    }
}

impl Identities {
    /// The table of `config`; refusals count in `forbidden` (the stage's
    /// `tradeplex_forbidden_total`).
    pub fn new(config: &Config, forbidden: IntCounterVec) -> Result<Identities, ConfigError> {
        Ok(Identities {
            table: Arc::new(RwLock::new(Table::from_config(config)?)),
            curve: config.curve.is_some(),
            local_only: config.frontend.starts_with("ipc://"),
            forbidden,
        })
    }

    /// The table in force.
    pub fn read(&self) -> RwLockReadGuard<'_, Table> {
        // A panic while writing left a whole table (the write is one assignment).
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether CURVE is on.
    pub fn curve(&self) -> bool {
        self.curve
    }

    /// Counts a refusal by `reason` (`tradeplex_forbidden_total`).
    pub fn count_forbidden(&self, reason: &str) {
        self.forbidden.with_label_values(&[reason]).inc();
    }

    /// Replaces the table; returns what changed.
    pub fn replace(&self, new: Table) -> Changes {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut c = Changes::default();
        for (key, before) in &t.clients {
            match new.clients.get(key) {
                Some(after) if after == before => {}
                after => c
                    .clients
                    .push((key.clone(), Some(before.clone()), after.cloned())),
            }
        }
        for (key, after) in &new.clients {
            if !t.clients.contains_key(key) {
                c.clients.push((key.clone(), None, Some(after.clone())));
            }
        }
        c.workers_added = new.workers.difference(&t.workers).cloned().collect();
        c.workers_removed = t.workers.difference(&new.workers).cloned().collect();
        *t = new;
        c
    }

    /// Whether the ZAP handler admits `key` (z85) on `domain`'s sockets.
    pub fn admits(&self, domain: &[u8], key: &str) -> bool {
        let t = self.read();
        match domain {
            b"frontend" | b"xpub" => t.clients.contains_key(key),
            b"backend" | b"xsub" => t.workers.contains(key),
            _ => false,
        }
    }

    /// Who sent a request: `user_id` is the message's `User-Id` property (the z85 key the
    /// ZAP handler admitted), `peer` its `Peer-Address`, `declared` the header's `client`.
    pub fn resolve(
        &self,
        user_id: Option<&str>,
        peer: Option<&str>,
        declared: Option<&str>,
    ) -> Result<Caller, Refusal> {
        if self.curve {
            return self.resolve_key(user_id, declared);
        }
        let Some(name) = declared else {
            return Ok(self.anonymous());
        };
        if !self.local_only && !peer.is_some_and(is_loopback_peer) {
            return Err(Refusal {
                reason: "not_loopback",
                message: format!(
                    "a declared client name ({name:?}) is trusted only from loopback (peer {}); \
                     remote clients are named by their CURVE key",
                    peer.unwrap_or("unknown")
                ),
            });
        }
        let t = self.read();
        Ok(Caller {
            name: Some(name.to_string()),
            admin: t.is_admin(name, false),
            admins_exist: t.has_admins(),
        })
    }

    /// A client that declares no name (without CURVE).
    pub fn anonymous(&self) -> Caller {
        Caller {
            admins_exist: self.read().has_admins(),
            ..Caller::default()
        }
    }

    fn resolve_key(
        &self,
        user_id: Option<&str>,
        declared: Option<&str>,
    ) -> Result<Caller, Refusal> {
        let key = user_id.unwrap_or("");
        let t = self.read();
        // ZAP ran at the handshake; a key removed by a reload since is refused here.
        let Some(entry) = t.clients.get(key) else {
            return Err(Refusal {
                reason: "key_removed",
                message: format!(
                    "the CURVE key {key} is no longer allow-listed (removed by a reload)"
                ),
            });
        };
        if let Some(d) = declared {
            if d != entry.name {
                return Err(Refusal {
                    reason: "name_mismatch",
                    message: format!(
                        "declared client name {d:?} is not the name of this CURVE key ({:?})",
                        entry.name
                    ),
                });
            }
        }
        Ok(Caller {
            name: Some(entry.name.clone()),
            admin: t.is_admin(&entry.name, entry.admin),
            admins_exist: t.has_admins(),
        })
    }
}

/// True for a `Peer-Address` on 127.0.0.0/8 or ::1 (IPv4-mapped too).
fn is_loopback_peer(peer: &str) -> bool {
    let host = peer.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("f", "f"), &["reason"]).unwrap()
    }

    fn key() -> String {
        zmq::z85_encode(&zmq::CurveKeyPair::new().unwrap().public_key).unwrap()
    }

    fn curve_config(clients: &str) -> Config {
        Config::from_toml(&format!(
            "[curve]\nkey_file = \"/k\"\n{clients}\n[risk]\nadmins = [\"ops\"]\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_key_names_its_client_and_a_declared_name_must_match() {
        let (a, b) = (key(), key());
        let c = curve_config(&format!(
            "allow_clients = [{b:?}]\n[[curve.clients]]\nname = \"alpha\"\nkey = {a:?}\nadmin = true\n"
        ));
        let ids = Identities::new(&c, counter()).unwrap();
        let alpha = ids.resolve(Some(&a), None, None).unwrap();
        assert_eq!((alpha.name.as_deref(), alpha.admin), (Some("alpha"), true));
        let anon = ids.resolve(Some(&b), None, None).unwrap();
        assert_eq!(
            (anon.name.as_deref(), anon.admin),
            (Some(b.as_str()), false)
        );
        assert!(ids.resolve(Some(&a), None, Some("alpha")).is_ok());
        let e = ids.resolve(Some(&a), None, Some("beta")).unwrap_err();
        assert_eq!(e.reason, "name_mismatch");
        assert!(ids.admits(b"frontend", &a) && !ids.admits(b"backend", &a));
        // A reload removing the key: its open connection is refused from then on.
        let changes = ids.replace(Table::default());
        assert_eq!(changes.clients.len(), 2);
        assert_eq!(
            ids.resolve(Some(&a), None, None).unwrap_err().reason,
            "key_removed"
        );
        assert!(!ids.admits(b"frontend", &a));
    }

    #[test]
    fn without_curve_a_declared_name_is_trusted_from_loopback_only() {
        let c = Config::from_toml("[risk]\nadmins = [\"ops\"]\n").unwrap();
        let ids = Identities::new(&c, counter()).unwrap();
        let anon = ids.resolve(None, None, None).unwrap();
        assert_eq!((anon.name, anon.admin), (None, false));
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let ops = ids.resolve(None, Some(peer), Some("ops")).unwrap();
            assert_eq!(
                (ops.name.as_deref(), ops.admin),
                (Some("ops"), true),
                "{peer}"
            );
        }
        let e = ids
            .resolve(None, Some("10.0.0.7"), Some("ops"))
            .unwrap_err();
        assert_eq!(e.reason, "not_loopback");
        assert!(e.message.contains("10.0.0.7"), "{}", e.message);
        assert!(ids.resolve(None, None, Some("ops")).is_err());
    }

    #[test]
    fn halting_is_for_admins_once_any_admin_is_configured() {
        let c = Config::from_toml("[risk]\nadmins = [\"ops\"]\n").unwrap();
        let ids = Identities::new(&c, counter()).unwrap();
        let lo = Some("127.0.0.1");
        assert!(ids.resolve(None, lo, Some("ops")).unwrap().may_halt());
        assert!(!ids.resolve(None, lo, Some("alpha")).unwrap().may_halt());
        assert!(!ids.resolve(None, None, None).unwrap().may_halt());
        // No admin anywhere: every client the broker admits may halt (and resume).
        let open = Identities::new(&Config::from_toml("").unwrap(), counter()).unwrap();
        assert!(open.resolve(None, None, None).unwrap().may_halt());
        assert!(open.resolve(None, lo, Some("alpha")).unwrap().may_halt());
        let a = key();
        let curve = curve_config(&format!(
            "[[curve.clients]]\nname = \"desk\"\nkey = {a:?}\n"
        ));
        let ids = Identities::new(&curve, counter()).unwrap();
        assert!(!ids.resolve(Some(&a), None, None).unwrap().may_halt());
    }

    #[test]
    fn a_name_or_key_listed_twice_is_refused() {
        let a = key();
        let e = Config::from_toml(&format!(
            "[curve]\nkey_file = \"/k\"\n[[curve.clients]]\nname = \"x\"\nkey = {a:?}\n\
             [[curve.clients]]\nname = \"x\"\nkey = {:?}\n",
            key()
        ))
        .unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = Config::from_toml(&format!(
            "[curve]\nkey_file = \"/k\"\n[[curve.clients]]\nname = \"x\"\nkey = {a:?}\n\
             [[curve.clients]]\nname = \"y\"\nkey = {a:?}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("curve.clients.key"), "{e}");
    }
}
