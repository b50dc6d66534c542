//! Client-side CURVE (strategies and workers): the broker's public key and our own key
//! pair, applied to a socket before it connects, and key generation for `tradeplex keygen`.
//! Key files are parsed in `tradeplex_proto::keys`; the broker's server side is its own.

pub use tradeplex_proto::keys::{check_key, KeyError, KeyPair};

/// Why CURVE cannot be used on a client socket.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// libzmq was built without CURVE (e.g. the vendored copy without libsodium).
    #[error("CURVE is configured but the linked libzmq has no CURVE support (install Debian's libzmq3-dev)")]
    Unsupported,
    /// A key or key file is bad.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Setting a socket option failed.
    #[error("cannot apply CURVE options: {0}")]
    Socket(#[from] zmq::Error),
}

/// Fails clearly when the linked libzmq lacks CURVE.
pub fn require_curve() -> Result<(), CurveError> {
    if zmq::has("curve").unwrap_or(false) {
        Ok(())
    } else {
        Err(CurveError::Unsupported)
    }
}

/// A fresh random key pair.
pub fn generate() -> Result<KeyPair, CurveError> {
    require_curve()?;
    let pair = zmq::CurveKeyPair::new()?;
    let enc = |k: &[u8]| {
        zmq::z85_encode(k).map_err(|_| KeyError::BadKey {
            field: "generated".into(),
        })
    };
    Ok(KeyPair {
        public_key: enc(&pair.public_key)?,
        secret_key: enc(&pair.secret_key)?,
    })
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
    /// Makes `socket` a CURVE client of the broker; call before it connects.
    pub fn apply(&self, socket: &zmq::Socket) -> Result<(), CurveError> {
        require_curve()?;
        check_key("server_key", &self.server_key)?;
        socket.set_curve_serverkey(self.server_key.as_bytes())?;
        socket.set_curve_publickey(self.keys.public_key.as_bytes())?;
        socket.set_curve_secretkey(self.keys.secret_key.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_valid_z85_keys() {
        let pair = generate().expect("Debian's libzmq has CURVE");
        check_key("public_key", &pair.public_key).unwrap();
        check_key("secret_key", &pair.secret_key).unwrap();
        assert_ne!(pair.public_key, pair.secret_key);
    }
}
