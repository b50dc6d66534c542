//! The HTTP port of the real binaries (broker and worker) against a hostile peer: a
//! half-sent or trickled request head is closed within the header-read timeout (it was
//! once still open after 40 s), methods other than GET/HEAD get 405, a request body 413,
//! an oversized head 431. `ops::http`'s unit tests check the server; these check that
//! every binary serves through it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tradeplex_tests::*;

/// The header-read timeout the binaries promise (docs/operations.md, Health endpoints),
/// plus slack for a loaded machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(9);

/// Sends `request` and reads until the server closes (or `wait` passes): what came back,
/// and how long until the close (None: still open).
fn exchange(addr: &str, request: &[u8], wait: Duration) -> (String, Option<Duration>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let started = Instant::now();
    // The server may close before taking all of an oversized request.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break Some(started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break Some(started.elapsed())
            }
            Err(_) => break None,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

/// Sends a request head one byte every 400 ms; the time until the server closed.
fn trickle(addr: &str) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let started = Instant::now();
    let head =
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for byte in head {
        if s.write_all(&[*byte]).is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            _ => {}
        }
    }
    None
}

fn check_port(who: &str, addr: &str) {
    let (_, closed) = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", CLOSED_WITHIN);
    assert!(
        closed.is_some(),
        "{who}: a half-sent request was still open after {CLOSED_WITHIN:?}"
    );
    let closed = trickle(addr);
    assert!(
        closed.is_some_and(|t| t < CLOSED_WITHIN),
        "{who}: a trickled request head was not closed in time: {closed:?}"
    );
    for method in ["POST", "PUT", "DELETE"] {
        let req = format!(
            "{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (resp, _) = exchange(addr, req.as_bytes(), CLOSED_WITHIN);
        assert_eq!(
            status_line(&resp),
            "HTTP/1.1 405 Method Not Allowed",
            "{who} {method}: {resp}"
        );
        assert!(
            resp.to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n"),
            "{who} {method}: {resp}"
        );
    }
    let (resp, _) = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        CLOSED_WITHIN,
    );
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 413 Payload Too Large",
        "{who}: {resp}"
    );
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 32 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let (resp, closed) = exchange(addr, &big, CLOSED_WITHIN);
    assert!(closed.is_some(), "{who}: open after an oversized head");
    assert!(
        resp.is_empty() || status_line(&resp) == "HTTP/1.1 431 Request Header Fields Too Large",
        "{who}: {resp}"
    );
    // And it still serves.
    let (resp, _) = exchange(
        addr,
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        CLOSED_WITHIN,
    );
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK", "{who}: {resp}");
}

#[test]
fn broker_and_worker_http_ports_close_slow_heads_and_refuse_methods_bodies_and_big_heads() {
    let broker = Broker::start(&[]);
    let (_worker, worker_http) = broker.worker_http(&["--http", "127.0.0.1:0"]);
    // Both at once: each check waits out a timeout.
    std::thread::scope(|s| {
        s.spawn(|| check_port("broker", &broker.http));
        s.spawn(|| check_port("worker", &worker_http));
    });
}
