//! CURVE authentication: the ZAP handler (RFC 27) that admits only allow-listed public
//! keys — client keys on the frontend and XPUB, worker keys on the backend and XSUB — so
//! nobody who merely reaches a port can trade or inject events.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;

use tradeplex_ops::Shutdown;

use crate::metrics::Metrics;

/// The ZAP endpoint libzmq asks (fixed by the ZAP specification).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// ZAP domains the broker's sockets use: who may connect to each.
pub const DOMAIN_FRONTEND: &str = "frontend";
/// Workers' request socket.
pub const DOMAIN_BACKEND: &str = "backend";
/// Workers' event socket.
pub const DOMAIN_XSUB: &str = "xsub";
/// Clients' event socket.
pub const DOMAIN_XPUB: &str = "xpub";

/// The bound ZAP handler, ready to run.
pub struct Authenticator {
    socket: zmq::Socket,
    clients: HashSet<Vec<u8>>,
    workers: HashSet<Vec<u8>>,
    metrics: Arc<Metrics>,
}

/// Decodes allow-listed z85 keys into raw 32-byte keys (what ZAP requests carry).
fn decode_keys(
    field: &'static str,
    keys: &[String],
) -> Result<HashSet<Vec<u8>>, tradeplex_ops::curve::CurveError> {
    keys.iter()
        .map(|k| {
            tradeplex_ops::curve::check_key(field, k)?;
            zmq::z85_decode(k).map_err(|_| tradeplex_ops::curve::CurveError::BadKey {
                field: field.into(),
            })
        })
        .collect()
}

impl Authenticator {
    /// Binds the ZAP endpoint in `ctx` (before any CURVE server socket binds).
    pub fn bind(
        ctx: &zmq::Context,
        allow_clients: &[String],
        allow_workers: &[String],
        metrics: Arc<Metrics>,
    ) -> Result<Authenticator, tradeplex_ops::curve::CurveError> {
        let clients = decode_keys("curve.allow_clients", allow_clients)?;
        let workers = decode_keys("curve.allow_workers", allow_workers)?;
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT)?;
        Ok(Authenticator {
            socket,
            clients,
            workers,
            metrics,
        })
    }

    /// Answers ZAP requests on its own thread until shutdown.
    pub fn spawn(self, shutdown: Shutdown) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("tpx-zap".into())
            .spawn(move || self.run(&shutdown))
    }

    fn run(self, shutdown: &Shutdown) {
        while !shutdown.is_triggered() {
            match self.socket.poll(zmq::POLLIN, 50) {
                Ok(n) if n > 0 => {}
                _ => continue,
            }
            let Ok(request) = self.socket.recv_multipart(0) else {
                continue;
            };
            let reply = self.answer(&request);
            if let Err(e) = self.socket.send_multipart(reply, 0) {
                tracing::error!(error = %e, "cannot answer ZAP request");
            }
        }
    }

    /// Builds the reply to one ZAP request: `[version][request id][status][text][user][metadata]`.
    fn answer(&self, request: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let field = |i: usize| request.get(i).map_or(&[][..], |f| &f[..]);
        let (version, request_id, domain, mechanism, key) =
            (field(0), field(1), field(2), field(5), field(6));
        let allowed = match domain {
            b"frontend" | b"xpub" => &self.clients,
            b"backend" | b"xsub" => &self.workers,
            _ => &self.clients,
        };
        let ok = version == b"1.0" && mechanism == b"CURVE" && allowed.contains(key);
        let user = zmq::z85_encode(key).unwrap_or_default();
        if !ok {
            let domain = String::from_utf8_lossy(domain).into_owned();
            self.metrics
                .auth_failures
                .with_label_values(&[auth_label(&domain)])
                .inc();
            tracing::warn!(domain, key = %user, "CURVE key not allow-listed; connection refused");
        }
        let (code, text): (&[u8], &[u8]) = if ok {
            (b"200", b"OK")
        } else {
            (b"400", b"key not allowed")
        };
        vec![
            b"1.0".to_vec(),
            request_id.to_vec(),
            code.to_vec(),
            text.to_vec(),
            if ok { user.into_bytes() } else { Vec::new() },
            Vec::new(),
        ]
    }
}

/// A bounded label for the auth-failure metric.
fn auth_label(domain: &str) -> &'static str {
    match domain {
        "frontend" => DOMAIN_FRONTEND,
        "backend" => DOMAIN_BACKEND,
        "xsub" => DOMAIN_XSUB,
        "xpub" => DOMAIN_XPUB,
        _ => "other",
    }
}
