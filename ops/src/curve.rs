//! The broker side of CURVE (its server sockets, its link to a pair peer) and the startup
//! check that the linked libzmq really has CURVE. Key files are parsed in `tradeplex_proto::keys`; the client
//! side (strategies, workers) is `tradeplex_client::curve`, so the client needs no ops.

pub use tradeplex_proto::keys::{check_key, KeyError, KeyPair};

/// Why CURVE cannot be set up on a server socket.
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

/// Makes `socket` a CURVE server with `secret_key`; peers are then authenticated by the
/// ZAP handler under `domain`.
pub fn make_server(socket: &zmq::Socket, secret_key: &str, domain: &str) -> Result<(), CurveError> {
    require_curve()?;
    socket.set_zap_domain(domain)?;
    socket.set_curve_server(true)?;
    socket.set_curve_secretkey(secret_key.as_bytes())?;
    Ok(())
}

/// Makes `socket` a CURVE client of the server whose public key is `server_key`, with the
/// broker's own `keys` (a broker's link to its pair peer; strategies and workers use
/// `tradeplex_client::curve`).
pub fn make_client(
    socket: &zmq::Socket,
    server_key: &str,
    keys: &KeyPair,
) -> Result<(), CurveError> {
    require_curve()?;
    check_key("pair.peer_public_key", server_key)?;
    socket.set_curve_serverkey(server_key.as_bytes())?;
    socket.set_curve_publickey(keys.public_key.as_bytes())?;
    socket.set_curve_secretkey(keys.secret_key.as_bytes())?;
    Ok(())
}
