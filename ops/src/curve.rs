//! CURVE keys shared by every binary: z85 key pairs in small TOML key files, the socket
//! options for the server (broker) and client (worker, strategy) sides, and the startup
//! check that the linked libzmq really has CURVE.
//!
//! A key file (written by `tradeplex keygen`):
//! ```toml
//! public_key = "<40 z85 characters>"
//! secret_key = "<40 z85 characters>"
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// libzmq was built without CURVE (e.g. the vendored copy without libsodium).
    #[error("CURVE is configured but the linked libzmq has no CURVE support (install Debian's libzmq3-dev)")]
    Unsupported,
    /// A key is not 40 z85 characters.
    #[error("invalid CURVE key in `{field}`: must be 40 z85 characters")]
    BadKey {
        /// Which key.
        field: String,
    },
    /// A key file could not be read or parsed.
    #[error("cannot read key file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Setting a socket option failed.
    #[error("cannot apply CURVE options: {0}")]
    Socket(#[from] zmq::Error),
}

/// A CURVE key pair in z85 text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// Public key (share it).
    pub public_key: String,
    /// Secret key (keep it).
    pub secret_key: String,
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Result<KeyPair, CurveError> {
        require_curve()?;
        let pair = zmq::CurveKeyPair::new()?;
        let enc = |k: &[u8]| {
            zmq::z85_encode(k).map_err(|_| CurveError::BadKey {
                field: "generated".into(),
            })
        };
        Ok(KeyPair {
            public_key: enc(&pair.public_key)?,
            secret_key: enc(&pair.secret_key)?,
        })
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<KeyPair, CurveError> {
        let err = |message: String| CurveError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let pair: KeyPair = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        check_key("public_key", &pair.public_key)?;
        check_key("secret_key", &pair.secret_key)?;
        Ok(pair)
    }

    /// The key file's TOML text.
    pub fn to_toml(&self) -> String {
        format!(
            "public_key = \"{}\"\nsecret_key = \"{}\"\n",
            self.public_key, self.secret_key
        )
    }
}

/// Fails clearly when the linked libzmq lacks CURVE.
pub fn require_curve() -> Result<(), CurveError> {
    if zmq::has("curve").unwrap_or(false) {
        Ok(())
    } else {
        Err(CurveError::Unsupported)
    }
}

/// Checks that `key` is a z85-encoded 32-byte key.
pub fn check_key(field: &str, key: &str) -> Result<(), CurveError> {
    match zmq::z85_decode(key) {
        Ok(bytes) if key.len() == 40 && bytes.len() == 32 => Ok(()),
        _ => Err(CurveError::BadKey {
            field: field.to_string(),
        }),
    }
}

/// Makes `socket` a CURVE server with `secret_key`; peers are then authenticated by the
/// ZAP handler under `domain`.
pub fn make_server(socket: &zmq::Socket, secret_key: &str, domain: &str) -> Result<(), CurveError> {
    require_curve()?;
    socket.set_zap_domain(domain)?;
    socket.set_curve_server(true)?;
    socket.set_curve_secretkey(secret_key.as_bytes())?;
    Ok(())
}

/// Makes `socket` a CURVE client of the server with public key `server_key`.
pub fn make_client(
    socket: &zmq::Socket,
    server_key: &str,
    own: &KeyPair,
) -> Result<(), CurveError> {
    require_curve()?;
    check_key("server_key", server_key)?;
    socket.set_curve_serverkey(server_key.as_bytes())?;
    socket.set_curve_publickey(own.public_key.as_bytes())?;
    socket.set_curve_secretkey(own.secret_key.as_bytes())?;
    Ok(())
}

/// Client-side CURVE settings (workers and strategies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCurve {
    /// The broker's public key.
    pub server_key: String,
    /// Our own key pair.
    pub keys: KeyPair,
}

impl ClientCurve {
    /// Applies these settings to a socket before it connects.
    pub fn apply(&self, socket: &zmq::Socket) -> Result<(), CurveError> {
        make_client(socket, &self.server_key, &self.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_a_file() {
        let pair = KeyPair::generate().expect("Debian's libzmq has CURVE");
        check_key("public_key", &pair.public_key).unwrap();
        let path = std::env::temp_dir().join(format!("tpx-key-{}.toml", std::process::id()));
        std::fs::write(&path, pair.to_toml()).unwrap();
        assert_eq!(KeyPair::from_file(&path).unwrap(), pair);
        let _ = std::fs::remove_file(&path);
        assert!(check_key("k", "short").is_err());
    }
}
