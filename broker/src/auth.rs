//! CURVE authentication: the ZAP handler (RFC 27) that admits only allow-listed public
//! keys — client keys on the frontend and XPUB, worker keys on the backend and XSUB — so
//! nobody who merely reaches a port can trade or inject events. The lists live in
//! [`Identities`], which a reload (SIGHUP) swaps; ZAP runs at each connection's handshake.

use std::sync::Arc;
use std::thread::JoinHandle;

use tradeplex_ops::Shutdown;

use crate::metrics::Metrics;
use crate::risk::identity::Identities;

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
    identities: Identities,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    /// Binds the ZAP endpoint in `ctx` (before any CURVE server socket binds).
    pub fn bind(
        ctx: &zmq::Context,
        identities: Identities,
        metrics: Arc<Metrics>,
    ) -> Result<Authenticator, tradeplex_ops::curve::CurveError> {
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT)?;
        Ok(Authenticator {
            socket,
            identities,
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
            if let Err(e) = self.send_reply(&reply) {
                tracing::error!(error = %e, "cannot answer ZAP request");
            }
        }
    }

    /// Sends the reply frame by frame, each again if a signal interrupted it (sending the
    /// whole reply again after a part went out would glue the parts onto the next one).
    fn send_reply(&self, reply: &[Vec<u8>]) -> zmq::Result<()> {
        let last = reply.len().saturating_sub(1);
        reply.iter().enumerate().try_for_each(|(i, frame)| {
            let more = if i < last { zmq::SNDMORE } else { 0 };
            tradeplex_ops::uninterrupted(|| self.socket.send(&frame[..], more))
        })
    }

    /// Builds the reply to one ZAP request: `[version][request id][status][text][user][metadata]`.
    fn answer(&self, request: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let field = |i: usize| request.get(i).map_or(&[][..], |f| &f[..]);
        let (version, request_id, domain, mechanism, key) =
            (field(0), field(1), field(2), field(5), field(6));
        // Each key list admits only on its own sockets: a client key never registers as a
        // worker nor publishes events; an unknown domain admits nobody. The user id is the
        // z85 key: the socket loop names the client from it at each request, by the table
        // then in force.
        let user = zmq::z85_encode(key).unwrap_or_default();
        let ok = version == b"1.0"
            && mechanism == b"CURVE"
            && key.len() == 32
            && self.identities.admits(domain, &user);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(domain: &str, mechanism: &str, key: &[u8]) -> Vec<Vec<u8>> {
        let f = |s: &str| s.as_bytes().to_vec();
        vec![
            f("1.0"),
            f("7"),
            f(domain),
            f("127.0.0.1"),
            f(""),
            f(mechanism),
            key.to_vec(),
        ]
    }

    fn admitted(a: &Authenticator, domain: &str, key: &[u8]) -> bool {
        a.answer(&request(domain, "CURVE", key))
            .get(2)
            .map(Vec::as_slice)
            == Some(b"200")
    }

    #[test]
    fn a_client_key_never_gets_in_as_a_worker_nor_a_worker_key_as_a_client() {
        let (client, worker) = (
            zmq::CurveKeyPair::new().unwrap(),
            zmq::CurveKeyPair::new().unwrap(),
        );
        let z = |k: &[u8; 32]| zmq::z85_encode(k).unwrap();
        let ctx = zmq::Context::new();
        let metrics = Arc::new(Metrics::new());
        let config = crate::Config::from_toml(&format!(
            "[curve]\nkey_file = \"/k\"\nallow_clients = [{:?}]\nallow_workers = [{:?}]\n",
            z(&client.public_key),
            z(&worker.public_key)
        ))
        .unwrap();
        let forbidden =
            prometheus::IntCounterVec::new(prometheus::Opts::new("f", "f"), &["reason"]).unwrap();
        let ids = Identities::new(&config, forbidden).unwrap();
        let a = Authenticator::bind(&ctx, ids, metrics.clone()).unwrap();
        let (c, w) = (&client.public_key[..], &worker.public_key[..]);
        assert!(admitted(&a, DOMAIN_FRONTEND, c) && admitted(&a, DOMAIN_XPUB, c));
        assert!(
            !admitted(&a, DOMAIN_BACKEND, c),
            "client key registered as a worker"
        );
        assert!(
            !admitted(&a, DOMAIN_XSUB, c),
            "client key publishing events"
        );
        assert!(admitted(&a, DOMAIN_BACKEND, w) && admitted(&a, DOMAIN_XSUB, w));
        assert!(!admitted(&a, DOMAIN_FRONTEND, w) && !admitted(&a, DOMAIN_XPUB, w));
        assert!(!admitted(&a, "elsewhere", c) && !admitted(&a, "elsewhere", w));
        let plain = a.answer(&request(DOMAIN_FRONTEND, "NULL", c));
        assert_eq!(plain.get(2).map(Vec::as_slice), Some(&b"400"[..]));
        assert_eq!(
            metrics.auth_failures.with_label_values(&["backend"]).get(),
            1
        );
    }
}
