//! Worker configuration: a TOML file (all fields optional) that flags override,
//! validated on load with errors naming the field.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::gateway::sim::config::SimConfig;

pub use tradeplex_ops::config::ConfigError;
use tradeplex_ops::config::{check, check_endpoint};

/// Everything a worker process needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The broker's backend (ROUTER) endpoint.
    pub broker: String,
    /// The broker's XSUB endpoint for events.
    pub events: String,
    /// Services to serve besides `echo` (which is always served): gateway names such as `SIM`.
    pub services: Vec<String>,
    /// Requests executed at once.
    pub capacity: u32,
    /// HTTP address for /metrics etc.; empty = off.
    pub http: String,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Heartbeats the broker may miss before we reconnect.
    pub liveness: u32,
    /// Execution journal file (one JSON line per executed request).
    pub journal: Option<PathBuf>,
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
            heartbeat_ms: 1000,
            liveness: 3,
            journal: None,
            sim: SimConfig::default(),
            curve: None,
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

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = check;
        if let Some(c) = &self.curve {
            field(
                "curve.server_key",
                tradeplex_ops::curve::check_key("curve.server_key", &c.server_key).is_ok(),
                "must be the broker's 40-character z85 public key".into(),
            )?;
            field(
                "curve.key_file",
                !c.key_file.as_os_str().is_empty(),
                "must name this worker's key file".into(),
            )?;
        }
        check_endpoint("broker", &self.broker, false)?;
        check_endpoint("events", &self.events, false)?;
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
