//! A small HTTP/1.1 server (hyper on a one-thread tokio runtime of its own) serving
//! `/metrics` in Prometheus text format, `/healthz` (process up) and `/readyz`.
//!
//! The port may be reachable by anyone, so it is hardened: request headers must arrive
//! within [`HEADER_READ_TIMEOUT`] and fit in [`MAX_HEADER_BYTES`] (else 431), only GET and
//! HEAD are served (others 405 with `Allow`), request bodies are refused (413), and at
//! most [`MAX_CONNECTIONS`] connections are served at once (further ones are closed).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};

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

struct State {
    registry: Registry,
    ready: Arc<AtomicBool>,
}

impl HttpServer {
    /// Binds `addr` (`host:port`, port 0 = any) and serves `registry`.
    pub fn start(addr: &str, registry: Registry) -> std::io::Result<HttpServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let ready = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            registry,
            ready: ready.clone(),
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

async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(refused) = refuse(&req) {
        return Ok(refused);
    }
    let (status, content_type, body) = match req.uri().path() {
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
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain".into(),
            b"not found\n".to_vec(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
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
