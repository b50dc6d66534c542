//! Worker configuration: a TOML file (all fields optional) that flags override,
//! validated on load with errors naming the field.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::gateway::sim::config::SimConfig;
use crate::journal::{FsyncPolicy, JournalOptions};

/// Largest journal file before rotation: 64 GiB.
pub const MAX_JOURNAL_BYTES: u64 = 64 << 30;

pub use tradeplex_ops::config::ConfigError;
use tradeplex_ops::config::{check, check_endpoint};

/// Everything a worker process needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The broker's backend (ROUTER) endpoint, or a pair's two, comma-separated (primary
    /// first): the worker then serves whichever is active.
    pub broker: String,
    /// The broker's XSUB endpoint for events; with a pair, one per broker, same order.
    pub events: String,
    /// Services to serve besides `echo` (which is always served): gateway names such as `SIM`.
    pub services: Vec<String>,
    /// Requests executed at once.
    pub capacity: u32,
    /// HTTP address for /metrics etc.; empty = off.
    pub http: String,
    /// Credentials the HTTP port asks for (all but /healthz and /readyz); none = open.
    pub http_auth: tradeplex_ops::HttpAuth,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Heartbeats the broker may miss before we reconnect.
    pub liveness: u32,
    /// Order journal file: a line before each request executes and one with its outcome.
    pub journal: Option<PathBuf>,
    /// When journal lines are forced to disk: `off`, `always` (every line of a
    /// non-idempotent request) or a batch interval such as `10ms`.
    pub journal_fsync: String,
    /// The journal is rotated before a line would take it past this many bytes.
    pub journal_max_bytes: u64,
    /// Rotated journal files kept (`FILE.1` newest … `FILE.N` oldest).
    pub journal_keep: u32,
    /// The simulated exchange (`SIM` service): market, symbols, accounts.
    pub sim: SimConfig,
    /// CURVE: the broker's public key and this worker's key file; absent = plaintext.
    pub curve: Option<CurveConfig>,
}

/// The `[curve]` table of a worker.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurveConfig {
    /// The broker's public key (z85, 40 characters).
    pub server_key: String,
    /// This worker's key file (TOML with `public_key` and `secret_key`, from `tradeplex keygen`).
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: "tcp://127.0.0.1:5556".into(),
            events: "tcp://127.0.0.1:5557".into(),
            services: Vec::new(),
            capacity: 4,
            http: String::new(),
            http_auth: Default::default(),
            heartbeat_ms: 1000,
            liveness: 3,
            journal: None,
            journal_fsync: "always".into(),
            journal_max_bytes: crate::journal::DEFAULT_MAX_BYTES,
            journal_keep: crate::journal::DEFAULT_KEEP,
            sim: SimConfig::default(),
            curve: None,
        }
    }
}

/// Checks a comma-separated endpoint list; returns how many it names.
fn endpoint_list(name: &'static str, list: &str) -> Result<usize, ConfigError> {
    let eps =
        tradeplex_client::failover::split_endpoints(list).map_err(|e| ConfigError::Field {
            field: name,
            reason: e.to_string(),
        })?;
    for ep in &eps {
        check_endpoint(name, ep, false)?;
    }
    Ok(eps.len())
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let config: Config = tradeplex_ops::config::load(path)?;
        config.validate()?;
        Ok(config)
    }

    /// The journal's options, when a journal file is set (call after [`Config::validate`]).
    pub fn journal_options(&self) -> Result<Option<JournalOptions>, ConfigError> {
        let Some(path) = &self.journal else {
            return Ok(None);
        };
        let fsync = self
            .journal_fsync
            .parse::<FsyncPolicy>()
            .map_err(|reason| ConfigError::Field {
                field: "journal_fsync",
                reason,
            })?;
        Ok(Some(JournalOptions {
            path: path.clone(),
            fsync,
            max_bytes: self.journal_max_bytes,
            keep: self.journal_keep,
        }))
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = check;
        self.http_auth.validate()?;
        self.journal_options()?;
        field(
            "journal_max_bytes",
            (4096..=MAX_JOURNAL_BYTES).contains(&self.journal_max_bytes),
            format!("must be 4096-{MAX_JOURNAL_BYTES}"),
        )?;
        field(
            "journal_keep",
            (1..=1000).contains(&self.journal_keep),
            "must be 1-1000".into(),
        )?;
        if let Some(c) = &self.curve {
            field(
                "curve.server_key",
                tradeplex_proto::keys::check_key("curve.server_key", &c.server_key).is_ok(),
                "must be the broker's 40-character z85 public key".into(),
            )?;
            field(
                "curve.key_file",
                !c.key_file.as_os_str().is_empty(),
                "must name this worker's key file".into(),
            )?;
        }
        let brokers = endpoint_list("broker", &self.broker)?;
        let events = endpoint_list("events", &self.events)?;
        field(
            "events",
            events == brokers,
            format!("names {events} endpoints; give one per broker endpoint ({brokers}), in the same order"),
        )?;
        field(
            "capacity",
            (1..=1024).contains(&self.capacity),
            "must be 1-1024".into(),
        )?;
        field(
            "heartbeat_ms",
            (10..=60_000).contains(&self.heartbeat_ms),
            "must be 10-60000".into(),
        )?;
        field(
            "liveness",
            (1..=100).contains(&self.liveness),
            "must be 1-100".into(),
        )?;
        for s in &self.services {
            field(
                "services",
                tradeplex_proto::ServiceName::new(s.as_str()).is_ok(),
                format!("{s:?} is not a valid service name"),
            )?;
        }
        self.sim.validate().map_err(|e| ConfigError::Field {
            field: e.field,
            reason: e.reason,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sim_table_is_read_and_validated() {
        let c: Config = toml::from_str(
            "services = [\"SIM\"]\n[sim]\nseed = 9\n[[sim.accounts]]\naccount = \"a1\"\ncash = 5000.0\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.sim.seed, 9);
        assert_eq!(c.sim.accounts[0].account, "a1");
        assert_eq!(c.sim.symbols, SimConfig::default().symbols);
        let bad: Config = toml::from_str("[sim]\nvolatility = 2.0\n").unwrap();
        match bad.validate() {
            Err(ConfigError::Field { field, .. }) => assert_eq!(field, "sim.volatility"),
            other => panic!("{other:?}"),
        }
        let e = toml::from_str::<Config>("[sim]\nsymbol = []\n").unwrap_err();
        assert!(e.to_string().contains("symbol"), "{e}");
    }

    #[test]
    fn a_broker_pair_takes_one_events_endpoint_per_broker() {
        let pair = |broker: &str, events: &str| {
            toml::from_str::<Config>(&format!("broker = \"{broker}\"\nevents = \"{events}\"\n"))
                .unwrap()
                .validate()
        };
        pair("tcp://a:1,tcp://b:1", "tcp://a:2, tcp://b:2").unwrap();
        let e = pair("tcp://a:1,tcp://b:1", "tcp://a:2")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`events`") && e.contains("one per broker"),
            "{e}"
        );
        let e = pair("tcp://a:1,nope", "tcp://a:2,tcp://b:2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`broker`"), "{e}");
        let e = pair("tcp://a:1,tcp://a:1", "tcp://a:2,tcp://b:2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn http_credentials_are_read_and_checked() {
        let c: Config = toml::from_str("[http_auth]\ntoken = \"0123456789abcdef\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.http_auth.token.as_deref(), Some("0123456789abcdef"));
        let bad: Config = toml::from_str("[http_auth]\npassword = \"long-enough\"\n").unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("http_auth.user"), "{e}");
    }

    #[test]
    fn journal_fields_are_validated_by_name() {
        let c: Config = toml::from_str(
            "journal = \"/tmp/j\"\njournal_fsync = \"5ms\"\njournal_max_bytes = 8192\njournal_keep = 3\n",
        )
        .unwrap();
        c.validate().unwrap();
        let j = c.journal_options().unwrap().unwrap();
        assert_eq!(
            j.fsync,
            FsyncPolicy::Every(std::time::Duration::from_millis(5))
        );
        assert_eq!((j.max_bytes, j.keep), (8192, 3));
        for (text, name) in [
            ("journal_fsync = \"sometimes\"", "journal_fsync"),
            ("journal_max_bytes = 10", "journal_max_bytes"),
            ("journal_keep = 0", "journal_keep"),
        ] {
            let c: Config = toml::from_str(&format!("journal = \"/tmp/j\"\n{text}\n")).unwrap();
            match c.validate() {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_example_file_is_valid_and_its_sim_example_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/worker.toml");
        Config::from_file(&path).unwrap();
        // The commented [sim] example documents the defaults: uncommented, it is them.
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("# [sim]").expect("a commented [sim] example");
        let example: String = text[start..]
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .unwrap_or(if l.starts_with('#') { "" } else { l })
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c: Config = toml::from_str(&example).unwrap();
        assert_eq!(c.sim, SimConfig::default());
    }
}
