//! What every binary's TOML config shares: the error type (naming the file or the field),
//! reading and parsing a file, range checks, and endpoint validation.

use serde::de::DeserializeOwned;
use std::path::Path;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Malformed TOML, an unknown field or a wrong type (toml's message names it).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file (or `<text>`).
        path: String,
        /// toml's message, which names the field and line.
        message: String,
    },
    /// A field has a value out of range.
    #[error("invalid config field `{field}`: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Reads and parses a TOML file (validation is the caller's).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses TOML text; `origin` names it in errors.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string(),
    })
}

/// `Ok` when `ok`, else a field error with `reason`.
pub fn check(field: &'static str, ok: bool, reason: impl Into<String>) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Field {
            field,
            reason: reason.into(),
        })
    }
}

/// Checks an endpoint: `tcp://HOST:PORT` (with `*` as port where `wildcard_port`, i.e. for
/// binding), `ipc://PATH` or `inproc://NAME`.
pub fn check_endpoint(
    field: &'static str,
    ep: &str,
    wildcard_port: bool,
) -> Result<(), ConfigError> {
    let ok = if let Some(rest) = ep.strip_prefix("tcp://") {
        rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && ((wildcard_port && port == "*") || port.parse::<u16>().is_ok())
        })
    } else {
        ep.strip_prefix("ipc://")
            .or_else(|| ep.strip_prefix("inproc://"))
            .is_some_and(|p| !p.is_empty())
    };
    check(
        field,
        ok,
        format!("{ep:?} is not tcp://HOST:PORT or ipc://PATH"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("e", "tcp://*:5555", true).is_ok());
        assert!(check_endpoint("e", "tcp://127.0.0.1:*", true).is_ok());
        assert!(check_endpoint("e", "tcp://127.0.0.1:*", false).is_err());
        assert!(check_endpoint("e", "ipc:///tmp/x", false).is_ok());
        assert!(check_endpoint("e", "udp://x:1", true).is_err());
        assert!(check_endpoint("e", "tcp://:1", true).is_err());
        let e = check_endpoint("frontend", "nope", true).unwrap_err();
        assert!(e.to_string().contains("frontend"));
    }
}
