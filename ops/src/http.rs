//! A small HTTP/1.1 server (hyper on a one-thread tokio runtime of its own) serving
//! `/metrics` in Prometheus text format, `/healthz` (process up) and `/readyz`, plus any
//! read-only pages a binary adds with [`HttpOptions::routes`] (the broker's console).
//!
//! The port may be reachable by anyone, so it is hardened: request headers must arrive
//! within [`HEADER_READ_TIMEOUT`] and fit in [`MAX_HEADER_BYTES`] (else 431), only GET and
//! HEAD are served (others 405 with `Allow`), request bodies are refused (413), and at
//! most [`MAX_CONNECTIONS`] connections are served at once (further ones are closed).
//! With [`HttpAuth`] configured, every path but `/healthz`, `/readyz` and the binary's
//! [`HttpOptions::public`] assets needs a bearer token (header or `?token=`) or basic-auth
//! credentials; others get 401, counted in `tradeplex_http_unauthorized_total`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};

pub use crate::http_auth::HttpAuth;

/// Time a client has to send a request's whole header block (also the idle limit
/// between keep-alive requests); a half-sent request is closed after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Connections served at once; further ones are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// The running HTTP endpoint; dropping it stops the server.
pub struct HttpServer {
    /// The address actually bound.
    pub addr: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A page a [`Routes`] hook serves.
#[derive(Debug, Clone)]
pub struct Page {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its body.
    pub body: Bytes,
}

impl Page {
    /// A page of `content_type` holding `body`.
    pub fn new(content_type: &'static str, body: impl Into<Bytes>) -> Page {
        Page {
            content_type,
            body: body.into(),
        }
    }
}

/// Extra GET paths: called with the path and the query string (without `?`) of every
/// request that is not `/metrics`, `/healthz` or `/readyz`, after authentication; `None`
/// is a 404. It runs on the HTTP thread, so it must answer quickly and never block.
pub type Routes = Arc<dyn Fn(&str, Option<&str>) -> Option<Page> + Send + Sync>;

/// What [`HttpServer::start_with`] serves besides the built-in paths.
#[derive(Default, Clone)]
pub struct HttpOptions {
    /// Credentials every path but `/healthz` and `/readyz` requires (none = open).
    pub auth: HttpAuth,
    /// Extra pages.
    pub routes: Option<Routes>,
    /// Extra paths served without credentials: static assets holding no data (a page's
    /// script and style sheet, which a browser fetches without the page's `?token=`).
    pub public: &'static [&'static str],
}

struct State {
    registry: Registry,
    ready: Arc<AtomicBool>,
    options: HttpOptions,
    /// Requests refused for want of credentials (registered only when some are required).
    unauthorized: prometheus::IntCounter,
}

impl HttpServer {
    /// Binds `addr` (`host:port`, port 0 = any) and serves `registry`.
    pub fn start(addr: &str, registry: Registry) -> std::io::Result<HttpServer> {
        HttpServer::start_with(addr, registry, HttpOptions::default())
    }

    /// Like [`HttpServer::start`], with credentials and extra pages.
    pub fn start_with(
        addr: &str,
        registry: Registry,
        options: HttpOptions,
    ) -> std::io::Result<HttpServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let unauthorized = prometheus::IntCounter::new(
            "tradeplex_http_unauthorized_total",
            "HTTP requests answered 401 (no or wrong credentials)",
        )
        .map_err(std::io::Error::other)?;
        if options.auth.is_required() {
            registry
                .register(Box::new(unauthorized.clone()))
                .map_err(std::io::Error::other)?;
        }
        let ready = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            registry,
            ready: ready.clone(),
            options,
            unauthorized,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("tpx-http".into())
            .spawn(move || runtime.block_on(serve(listener, state, stop_rx)))?;
        Ok(HttpServer {
            addr: local,
            ready,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Sets what `/readyz` answers (200 when true, 503 when false).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// A handle to the readiness flag, for code that changes it later.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "http listener unusable");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "http connection refused: too many open");
                    drop(stream);
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| route(state.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .max_header_size(MAX_HEADER_BYTES)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// The methods every path serves, as the `Allow` header of a 405 names them.
const ALLOWED: &str = "GET, HEAD";

/// Refuses what the endpoint does not serve: a method other than GET/HEAD, or a body.
fn refuse(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(ALLOWED),
        );
        return Some(resp);
    }
    let has_body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        // The body is never read; hyper closes the connection rather than drain it.
        return Some(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are refused\n",
        ));
    }
    None
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Paths that stay open with credentials configured: probes (kubelet, load balancers)
/// rarely carry credentials, and these answer nothing but "up"/"ready".
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// 401 with a challenge for each kind of credential configured.
fn unauthorized(auth: &HttpAuth) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    for challenge in auth.challenges() {
        resp.headers_mut().append(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    resp
}

/// Headers on every answer: nothing here may be cached by a proxy or browser (live data
/// behind credentials), framed by another site, or sniffed into another type; pages load
/// scripts and styles from this origin only.
fn harden(resp: &mut Response<Full<Bytes>>) {
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        hyper::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        hyper::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = answer(&state, &req);
    harden(&mut resp);
    Ok(resp)
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(refused) = refuse(req) {
        return refused;
    }
    let path = req.uri().path();
    let auth = &state.options.auth;
    let open = OPEN_PATHS.contains(&path) || state.options.public.contains(&path);
    if !open && !auth.admits(req.headers(), req.uri().query()) {
        // Debug only: a browser's first request to a basic-auth page is always refused.
        tracing::debug!(path, "http request refused: no or wrong credentials");
        state.unauthorized.inc();
        return unauthorized(auth);
    }
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            // Encoding our own registry into a Vec does not fail in practice; an empty
            // page is the safe answer if it ever does.
            let _ = encoder.encode(&state.registry.gather(), &mut buf);
            (StatusCode::OK, encoder.format_type().to_string(), buf)
        }
        "/healthz" => (StatusCode::OK, "text/plain".into(), b"ok\n".to_vec()),
        "/readyz" if state.ready.load(Ordering::SeqCst) => {
            (StatusCode::OK, "text/plain".into(), b"ready\n".to_vec())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain".into(),
            b"not ready\n".to_vec(),
        ),
        other => match state
            .options
            .routes
            .as_ref()
            .and_then(|r| r(other, req.uri().query()))
        {
            Some(page) => {
                let mut resp = Response::new(Full::new(page.body));
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static(page.content_type),
                );
                return resp;
            }
            None => (
                StatusCode::NOT_FOUND,
                "text/plain".into(),
                b"not found\n".to_vec(),
            ),
        },
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    fn server() -> HttpServer {
        HttpServer::start("127.0.0.1:0", Registry::new()).unwrap()
    }

    /// Sends `request` and reads until the server closes or `wait` passes: what came back,
    /// and whether the server closed the connection.
    fn exchange(srv: &HttpServer, request: &[u8], wait: Duration) -> (String, bool) {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        // The server may close before taking all of an oversized request.
        let _ = s.write_all(request);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        (String::from_utf8_lossy(&got).into_owned(), closed)
    }

    fn status_line(resp: &str) -> &str {
        resp.lines().next().unwrap_or("")
    }

    #[test]
    fn get_is_served() {
        let srv = server();
        let (resp, _) = exchange(
            &srv,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
        assert!(resp.ends_with("ok\n"), "{resp}");
    }

    #[test]
    fn half_sent_request_is_closed_within_the_header_timeout() {
        let srv = server();
        let started = Instant::now();
        let (_, closed) = exchange(
            &srv,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
            HEADER_READ_TIMEOUT + Duration::from_secs(3),
        );
        let took = started.elapsed();
        assert!(closed, "a half-sent request was still open after {took:?}");
        assert!(
            took >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
            "{took:?}"
        );
    }

    #[test]
    fn silent_connection_is_closed_within_the_header_timeout() {
        let srv = server();
        let started = Instant::now();
        let (_, closed) = exchange(&srv, b"", HEADER_READ_TIMEOUT + Duration::from_secs(3));
        assert!(
            closed,
            "a silent connection was still open after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn post_is_405_with_allow() {
        let srv = server();
        let (resp, _) = exchange(
            &srv,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_eq!(status_line(&resp), "HTTP/1.1 405 Method Not Allowed");
        assert!(
            resp.to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n"),
            "{resp}"
        );
    }

    #[test]
    fn request_body_is_refused() {
        let srv = server();
        let (resp, _) = exchange(
            &srv,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            Duration::from_secs(5),
        );
        assert_eq!(status_line(&resp), "HTTP/1.1 413 Payload Too Large");
    }

    #[test]
    fn oversized_header_is_431_or_closed() {
        let srv = server();
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES * 2));
        req.extend_from_slice(b"\r\n\r\n");
        let (resp, closed) = exchange(&srv, &req, Duration::from_secs(5));
        assert!(closed, "connection left open after an oversized header");
        assert!(
            resp.is_empty() || status_line(&resp) == "HTTP/1.1 431 Request Header Fields Too Large",
            "{resp}"
        );
    }

    fn guarded() -> HttpServer {
        let routes: Routes = Arc::new(|path, _| match path {
            "/page" => Some(Page::new("text/html", "<p>hi</p>")),
            "/style.css" => Some(Page::new("text/css", "p {}")),
            _ => None,
        });
        let options = HttpOptions {
            auth: HttpAuth {
                token: Some("0123456789abcdef".into()),
                ..HttpAuth::default()
            },
            routes: Some(routes),
            public: &["/style.css"],
        };
        HttpServer::start_with("127.0.0.1:0", Registry::new(), options).unwrap()
    }

    fn get(srv: &HttpServer, path: &str, extra: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        exchange(srv, req.as_bytes(), Duration::from_secs(5)).0
    }

    #[test]
    fn with_a_token_only_probes_and_public_paths_are_open_others_get_401_with_a_challenge() {
        let srv = guarded();
        for path in ["/metrics", "/page", "/nosuch"] {
            let resp = get(&srv, path, "");
            assert_eq!(status_line(&resp), "HTTP/1.1 401 Unauthorized", "{path}");
            assert!(
                resp.to_ascii_lowercase()
                    .contains("\r\nwww-authenticate: bearer realm=\"tradeplex\"\r\n"),
                "{resp}"
            );
        }
        assert_eq!(status_line(&get(&srv, "/healthz", "")), "HTTP/1.1 200 OK");
        assert_eq!(status_line(&get(&srv, "/style.css", "")), "HTTP/1.1 200 OK");
        assert_eq!(
            status_line(&get(&srv, "/readyz", "")),
            "HTTP/1.1 503 Service Unavailable"
        );
        let bearer = "Authorization: Bearer 0123456789abcdef\r\n";
        assert_eq!(
            status_line(&get(&srv, "/metrics", bearer)),
            "HTTP/1.1 200 OK"
        );
        let page = get(&srv, "/page?token=0123456789abcdef", "");
        assert_eq!(status_line(&page), "HTTP/1.1 200 OK");
        assert!(page.ends_with("<p>hi</p>"), "{page}");
        assert!(
            page.to_ascii_lowercase()
                .contains("cache-control: no-store"),
            "{page}"
        );
        assert_eq!(
            status_line(&get(&srv, "/nosuch", bearer)),
            "HTTP/1.1 404 Not Found"
        );
        let metrics = get(&srv, "/metrics", bearer);
        assert!(
            metrics.contains("\ntradeplex_http_unauthorized_total 3\n"),
            "{metrics}"
        );
    }

    #[test]
    fn connections_past_the_cap_are_closed_at_once() {
        let srv = server();
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(srv.addr).unwrap())
            .collect();
        let started = Instant::now();
        let (_, closed) = exchange(&srv, b"", HEADER_READ_TIMEOUT);
        assert!(
            closed && started.elapsed() < HEADER_READ_TIMEOUT / 2,
            "{:?}",
            started.elapsed()
        );
        drop(held);
    }
}
