//! Broker configuration: a TOML file (every field optional, defaults below) that
//! command-line flags override. Validated on load with errors that name the field.

use serde::Deserialize;
use std::path::Path;

pub use tradeplex_ops::config::ConfigError;
use tradeplex_ops::config::{check, check_endpoint};

/// Everything the broker needs to run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// ROUTER socket for clients.
    pub frontend: String,
    /// ROUTER socket for workers.
    pub backend: String,
    /// XSUB socket workers publish events to.
    pub xsub: String,
    /// XPUB socket clients subscribe on.
    pub xpub: String,
    /// HTTP address for /metrics, /healthz, /readyz and the console; empty = off.
    pub http: String,
    /// Credentials the HTTP port asks for (every path but /healthz and /readyz); none = open.
    pub http_auth: tradeplex_ops::HttpAuth,
    /// Heartbeat interval with workers and on the event side, milliseconds.
    pub heartbeat_ms: u64,
    /// Heartbeats a worker may miss before it is dropped.
    pub liveness: u32,
    /// How long a request for a service with no worker waits for one, ms (0 = answer at once).
    pub unknown_service_grace_ms: u64,
    /// Requests queued per service before new ones are answered `overloaded`.
    pub max_queue: usize,
    /// Largest request or reply body, bytes; larger ones are answered `too_large`.
    pub max_body_bytes: usize,
    /// On shutdown, how long in-flight requests get to finish, ms.
    pub shutdown_grace_ms: u64,
    /// On shutdown, once nothing is in flight, how long the broker stays up refusing new
    /// requests before it closes its sockets, ms. A client's DEALER (ZMQ_IMMEDIATE)
    /// discards the replies it has not read yet when its connection drops, so closing at
    /// once can lose the last answers; this gives clients time to read them.
    pub shutdown_farewell_ms: u64,
    /// How long past its deadline a delivered request may stay unanswered by a worker that
    /// keeps heartbeating, ms; then it is answered `worker_lost` and the slot freed.
    pub in_flight_grace_ms: u64,
    /// Most services workers may register at once (each is a set of metric series); a READY
    /// offering more is refused.
    pub max_services: usize,
    /// How long a service with no worker (and nothing queued or in flight) is kept, with
    /// its metric series, before it is forgotten, seconds. Long, so a "no workers" alert
    /// does not resolve by itself during an outage.
    pub service_retention_s: u64,
    /// Send high-water mark per subscriber on the XPUB side (messages).
    pub event_hwm: i32,
    /// Topic prefixes one subscriber may hold; further ones are refused and counted.
    pub max_subscriptions_per_subscriber: usize,
    /// Topic prefixes all subscribers together may hold.
    pub max_subscriptions: usize,
    /// Recent events kept for gap recovery (`tpx.replay`), all (source, topic) streams
    /// together, bytes (bodies plus 64 bytes each); 0 = off.
    pub replay_bytes: usize,
    /// Recent events kept per (source, topic) stream, bytes (in effect at most
    /// `replay_bytes`).
    pub replay_stream_bytes: usize,
    /// The last tick of each topic kept for late subscribers, all topics together, bytes
    /// (frames plus 128 per topic); 0 = no last values.
    pub tick_cache_bytes: usize,
    /// CURVE encryption and key allow-lists; absent = plaintext, which may bind only
    /// loopback addresses (or ipc://) unless `insecure` is set.
    pub curve: Option<CurveConfig>,
    /// Allows plaintext (no `[curve]`) sockets on non-loopback addresses, where anyone who
    /// reaches a port can trade or register as a worker. Logged as a warning and exported
    /// as `tradeplex_insecure 1`.
    pub insecure: bool,
    /// Idle strategy of the request loop: when nothing is waiting, keep checking the
    /// sockets for this many microseconds before blocking (0 = block at once). Spinning
    /// trades a busy core for lower wake-up latency; see docs/performance.md.
    pub idle_spin_us: u64,
    /// Pre-trade risk (docs/risk.md); absent = off and no request body is decoded.
    pub risk: Option<crate::risk::RiskConfig>,
    /// The primary/backup pair (docs/operations.md, "Broker pair"); absent = a single
    /// broker, always active.
    pub pair: Option<crate::pair::PairConfig>,
}

/// The `[curve]` table: the broker's key pair and who may connect.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurveConfig {
    /// The broker's key file (TOML with `public_key` and `secret_key`, from `tradeplex keygen`).
    pub key_file: std::path::PathBuf,
    /// Public keys (z85) of clients allowed on the frontend and XPUB.
    pub allow_clients: Vec<String>,
    /// Public keys (z85) of workers allowed on the backend and XSUB.
    pub allow_workers: Vec<String>,
    /// Named clients (`[[curve.clients]]`): allowed like `allow_clients`, and named by
    /// their key (per-client risk limits, the audit journal, admin rights).
    pub clients: Vec<CurveClient>,
}

/// One `[[curve.clients]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurveClient {
    /// The client's name (1-64 bytes of `A-Z a-z 0-9 _ . -`).
    pub name: String,
    /// Its public key (z85).
    pub key: String,
    /// Whether it may change risk limits at runtime (`tpx.risk`).
    pub admin: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            frontend: "tcp://127.0.0.1:5555".into(),
            backend: "tcp://127.0.0.1:5556".into(),
            xsub: "tcp://127.0.0.1:5557".into(),
            xpub: "tcp://127.0.0.1:5558".into(),
            http: "127.0.0.1:9100".into(),
            http_auth: Default::default(),
            heartbeat_ms: 1000,
            liveness: 3,
            unknown_service_grace_ms: 0,
            max_queue: 10_000,
            max_body_bytes: tradeplex_proto::DEFAULT_MAX_BODY_BYTES,
            shutdown_grace_ms: 2000,
            shutdown_farewell_ms: 300,
            in_flight_grace_ms: 30_000,
            max_services: 1000,
            service_retention_s: 86_400,
            event_hwm: 10_000,
            max_subscriptions_per_subscriber: 10_000,
            max_subscriptions: 100_000,
            replay_bytes: 64 << 20,
            replay_stream_bytes: 4 << 20,
            tick_cache_bytes: 64 << 20,
            curve: None,
            insecure: false,
            idle_spin_us: 0,
            risk: None,
            pair: None,
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let config: Config = tradeplex_ops::config::load(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file and checks every field's value, but not the rule that needs the
    /// flags too (plaintext only on loopback); call [`Config::validate`] after overriding.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let config: Config = tradeplex_ops::config::load(path)?;
        config.validate_fields()?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = tradeplex_ops::config::parse(text, "<text>")?;
        config.validate()?;
        Ok(config)
    }

    /// The ZeroMQ endpoints by field name.
    fn zmq_endpoints(&self) -> [(&'static str, &str); 4] {
        [
            ("frontend", &self.frontend),
            ("backend", &self.backend),
            ("xsub", &self.xsub),
            ("xpub", &self.xpub),
        ]
    }

    /// Plaintext endpoints bound on a non-loopback address (empty with CURVE, or when
    /// everything is loopback or ipc://). Only `insecure = true` lets them start.
    pub fn exposed_plaintext(&self) -> Vec<(&'static str, String)> {
        if self.curve.is_some() {
            return Vec::new();
        }
        let pair = self.pair.as_ref().map(|p| ("pair.bind", p.bind.as_str()));
        self.zmq_endpoints()
            .into_iter()
            .chain(pair)
            .filter(|(_, ep)| !is_loopback_endpoint(ep))
            .map(|(field, ep)| (field, ep.to_string()))
            .collect()
    }

    /// Checks every field's range, and that plaintext sockets bind only loopback
    /// addresses unless `insecure`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_fields()?;
        if !self.insecure {
            if let Some((field, ep)) = self.exposed_plaintext().into_iter().next() {
                return Err(ConfigError::Field {
                    field,
                    reason: format!(
                        "{ep} is not a loopback address and CURVE is off: anyone who reaches \
                         it could trade or register as a worker. Configure [curve] (README, \
                         Security), bind 127.0.0.1 or ipc://, or accept the risk with \
                         insecure = true (--insecure)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks every field's range and syntax.
    fn validate_fields(&self) -> Result<(), ConfigError> {
        for (field, ep) in self.zmq_endpoints() {
            check_endpoint(field, ep, true)?;
        }
        let field = check;
        field(
            "heartbeat_ms",
            (10..=60_000).contains(&self.heartbeat_ms),
            "must be 10-60000",
        )?;
        field(
            "liveness",
            (1..=100).contains(&self.liveness),
            "must be 1-100",
        )?;
        field(
            "max_queue",
            (1..=1_000_000).contains(&self.max_queue),
            "must be 1-1000000",
        )?;
        field(
            "max_services",
            (1..=4096).contains(&self.max_services),
            "must be 1-4096",
        )?;
        field(
            "service_retention_s",
            self.service_retention_s <= 30 * 86_400,
            "must be 0-2592000",
        )?;
        field(
            "shutdown_farewell_ms",
            self.shutdown_farewell_ms <= 60_000,
            "must be 0-60000",
        )?;
        field(
            "in_flight_grace_ms",
            self.in_flight_grace_ms <= 86_400_000,
            "must be 0-86400000",
        )?;
        field(
            "max_body_bytes",
            (1..=256 << 20).contains(&self.max_body_bytes),
            "must be 1-268435456",
        )?;
        field(
            "idle_spin_us",
            self.idle_spin_us <= 1_000_000,
            "must be 0-1000000",
        )?;
        field(
            "max_subscriptions_per_subscriber",
            (1..=1_000_000).contains(&self.max_subscriptions_per_subscriber),
            "must be 1-1000000",
        )?;
        field(
            "max_subscriptions",
            (1..=10_000_000).contains(&self.max_subscriptions),
            "must be 1-10000000",
        )?;
        field(
            "event_hwm",
            self.event_hwm >= 0,
            "must be >= 0 (0 = unbounded, not advised)",
        )?;
        field(
            "replay_bytes",
            self.replay_bytes <= 64 << 30,
            "must be 0-68719476736",
        )?;
        field(
            "tick_cache_bytes",
            self.tick_cache_bytes <= 64 << 30,
            "must be 0-68719476736",
        )?;
        field(
            "replay_stream_bytes",
            self.replay_stream_bytes >= 1,
            "must be at least 1 (a stream never holds more than replay_bytes anyway)",
        )?;
        self.http_auth.validate()?;
        if let Some(risk) = &self.risk {
            risk.validate()?;
        }
        if let Some(pair) = &self.pair {
            pair.validate(self.curve.is_some())?;
        }
        if let Some(curve) = &self.curve {
            field(
                "curve.key_file",
                !curve.key_file.as_os_str().is_empty(),
                "must name the broker's key file",
            )?;
            for (name, keys) in [
                ("curve.allow_clients", &curve.allow_clients),
                ("curve.allow_workers", &curve.allow_workers),
            ] {
                if let Some(bad) = keys
                    .iter()
                    .find(|k| tradeplex_proto::keys::check_key(name, k).is_err())
                {
                    return Err(ConfigError::Field {
                        field: name,
                        reason: format!("{bad:?} is not a 40-character z85 public key"),
                    });
                }
            }
            for c in &curve.clients {
                if !tradeplex_proto::client::valid_client_name(&c.name) {
                    return Err(ConfigError::Field {
                        field: "curve.clients.name",
                        reason: format!(
                            "{:?} is not a client name (1-64 bytes of A-Z a-z 0-9 _ . -)",
                            c.name
                        ),
                    });
                }
                if tradeplex_ops::curve::check_key("curve.clients.key", &c.key).is_err() {
                    return Err(ConfigError::Field {
                        field: "curve.clients.key",
                        reason: format!(
                            "{}: {:?} is not a 40-character z85 public key",
                            c.name, c.key
                        ),
                    });
                }
            }
            // Names and keys listed twice.
            crate::risk::identity::Table::from_config(self)?;
        }
        Ok(())
    }

    /// How long a worker may stay silent before it is dropped.
    pub fn liveness_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_ms * u64::from(self.liveness))
    }

    /// The top-level settings that differ in `new` and that only a restart puts in force
    /// (everything but `[risk]` and the `[curve]` lists, which a reload applies), so a
    /// reload can say which of its changes it did not apply.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        // The fields are destructured without `..`: a field added to Config does not
        // compile until it is listed here (or, like `curve` and `risk`, left out on purpose).
        macro_rules! changed {
            ($($field:ident),*) => {{
                let Config { $($field,)* curve: _, risk: _ } = self;
                let mut changed = Vec::new();
                $(if *$field != new.$field {
                    changed.push(stringify!($field));
                })*
                changed
            }};
        }
        changed!(
            frontend,
            backend,
            xsub,
            xpub,
            http,
            http_auth,
            heartbeat_ms,
            liveness,
            unknown_service_grace_ms,
            max_queue,
            max_body_bytes,
            shutdown_grace_ms,
            shutdown_farewell_ms,
            in_flight_grace_ms,
            max_services,
            service_retention_s,
            event_hwm,
            max_subscriptions_per_subscriber,
            max_subscriptions,
            replay_bytes,
            replay_stream_bytes,
            tick_cache_bytes,
            insecure,
            idle_spin_us,
            pair
        )
    }
}

/// True for `ipc://`, `inproc://` and `tcp://` on a loopback address (`127.0.0.0/8`,
/// `[::1]`, `localhost`). A wildcard (`*`), `0.0.0.0`, an interface name or any other host
/// is reachable from elsewhere.
pub fn is_loopback_endpoint(ep: &str) -> bool {
    let Some(rest) = ep.strip_prefix("tcp://") else {
        return ep.starts_with("ipc://") || ep.starts_with("inproc://");
    };
    let Some((host, _port)) = rest.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ports_on_loopback() {
        let c = Config::default();
        assert_eq!(c.frontend, "tcp://127.0.0.1:5555");
        assert_eq!(c.backend, "tcp://127.0.0.1:5556");
        assert_eq!(c.xsub, "tcp://127.0.0.1:5557");
        assert_eq!(c.xpub, "tcp://127.0.0.1:5558");
        assert_eq!(c.http, "127.0.0.1:9100");
        assert!(!c.insecure);
        c.validate().unwrap();
        assert!(c.exposed_plaintext().is_empty());
    }

    #[test]
    fn a_non_loopback_bind_without_curve_needs_insecure() {
        for ep in [
            "tcp://*:5555",
            "tcp://0.0.0.0:5555",
            "tcp://10.1.2.3:5555",
            "tcp://eth0:5555",
        ] {
            let text = format!("frontend = \"{ep}\"");
            let e = Config::from_toml(&text).unwrap_err().to_string();
            assert!(
                e.contains("frontend") && e.contains("insecure"),
                "{ep}: {e}"
            );
            let c = Config::from_toml(&format!("{text}\ninsecure = true")).unwrap();
            assert_eq!(c.exposed_plaintext(), vec![("frontend", ep.to_string())]);
        }
        let e = Config::from_toml("xsub = \"tcp://*:5557\"").unwrap_err();
        assert!(e.to_string().contains("`xsub`"), "{e}");
        for ep in [
            "tcp://127.0.0.1:*",
            "tcp://127.0.0.2:1",
            "tcp://[::1]:5555",
            "tcp://localhost:1",
            "ipc:///tmp/x",
        ] {
            assert!(is_loopback_endpoint(ep), "{ep}");
            Config::from_toml(&format!("backend = \"{ep}\"")).unwrap();
        }
        // With CURVE any address is fine.
        let c = Config::from_toml(
            "frontend = \"tcp://*:5555\"\n[curve]\nkey_file = \"/etc/tradeplex/broker.key\"\n",
        )
        .unwrap();
        assert!(c.exposed_plaintext().is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml("heartbeat_ms = 0").unwrap_err();
        assert!(e.to_string().contains("heartbeat_ms"), "{e}");
        let e = Config::from_toml("frontend = \"udp://x\"").unwrap_err();
        assert!(e.to_string().contains("frontend"), "{e}");
        let e = Config::from_toml("nonsense = 1").unwrap_err();
        assert!(e.to_string().contains("nonsense"), "{e}");
        let e = Config::from_toml("liveness = \"three\"").unwrap_err();
        assert!(e.to_string().contains("liveness"), "{e}");
    }

    #[test]
    fn replay_limits_are_checked() {
        let c = Config::from_toml("replay_bytes = 1000\nreplay_stream_bytes = 500").unwrap();
        assert_eq!((c.replay_bytes, c.replay_stream_bytes), (1000, 500));
        let e = Config::from_toml("replay_stream_bytes = 0").unwrap_err();
        assert!(e.to_string().contains("replay_stream_bytes"), "{e}");
        // Off: the per-stream figure does not matter.
        Config::from_toml("replay_bytes = 0").unwrap();
    }

    #[test]
    fn subscription_limits_are_checked() {
        let c = Config::from_toml("max_subscriptions = 5\nmax_subscriptions_per_subscriber = 2")
            .unwrap();
        assert_eq!(
            (c.max_subscriptions, c.max_subscriptions_per_subscriber),
            (5, 2)
        );
        let e = Config::from_toml("max_subscriptions_per_subscriber = 0").unwrap_err();
        assert!(
            e.to_string().contains("max_subscriptions_per_subscriber"),
            "{e}"
        );
    }

    #[test]
    fn the_risk_section_is_off_unless_present_and_checked_when_it_is() {
        assert!(Config::default().risk.is_none());
        let c =
            Config::from_toml("[risk]\n[[risk.account]]\nname = \"sim\"\norder_size_limit = 10\n")
                .unwrap();
        let risk = c.risk.unwrap();
        assert_eq!(risk.account[0].order_size_limit, Some(10.0));
        for (text, field) in [
            ("[risk]\nsurprise = 1", "surprise"),
            (
                "[risk.default]\norder_value_limit = -5",
                "order_value_limit",
            ),
            (
                "[[risk.account]]\nname = \"a\"\n[[risk.account]]\nname = \"a\"",
                "listed twice",
            ),
            (
                "[risk]\njournal_fsync = \"sometimes\"",
                "risk.journal_fsync",
            ),
            ("[risk]\njournal_keep = 0", "risk.journal_keep"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn the_example_config_loads() {
        let text = include_str!("../../deploy/broker.toml");
        Config::from_toml(text).unwrap();
        // Its commented [risk] example is valid too.
        let uncommented: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# Pre-trade risk"))
            .skip(1)
            .map(|l| l.trim_start_matches("# ").to_string() + "\n")
            .collect();
        let c = Config::from_toml(&uncommented).unwrap();
        assert_eq!(c.risk.unwrap().account[0].name, "sim");
    }

    #[test]
    fn http_credentials_are_read_and_checked() {
        let c = Config::from_toml(
            "[http_auth]\ntoken = \"0123456789abcdef0123\"\nuser = \"ops\"\npassword = \"long-enough\"\n",
        )
        .unwrap();
        assert_eq!(c.http_auth.token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(c.http_auth.user.as_deref(), Some("ops"));
        let e = Config::from_toml("[http_auth]\ntoken = \"short\"").unwrap_err();
        assert!(e.to_string().contains("http_auth.token"), "{e}");
        let e = Config::from_toml("[http_auth]\nuser = \"ops\"").unwrap_err();
        assert!(e.to_string().contains("http_auth.user"), "{e}");
        let e = Config::from_toml("[http_auth]\ntokn = \"x\"").unwrap_err();
        assert!(e.to_string().contains("tokn"), "{e}");
    }

    #[test]
    fn ipc_endpoints_are_accepted() {
        let c = Config::from_toml("frontend = \"ipc:///tmp/tpx-fe\"").unwrap();
        assert_eq!(c.frontend, "ipc:///tmp/tpx-fe");
    }

    #[test]
    fn a_reload_names_the_top_level_settings_only_a_restart_changes() {
        let old = Config::default();
        let new = Config::from_toml(
            "max_queue = 5\nheartbeat_ms = 500\n[risk]\n[[risk.account]]\nname = \"a\"\n",
        )
        .unwrap();
        assert_eq!(
            old.restart_only_changes(&new),
            ["heartbeat_ms", "max_queue"]
        );
        assert!(old.restart_only_changes(&old.clone()).is_empty());
    }
}
