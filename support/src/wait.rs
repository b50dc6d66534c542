//! Waiting on observable state (never a fixed sleep as synchronisation), and free ports.

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it is true (returns true) or `limit` passes (false).
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` until true; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(poll_until(limit, cond), "timed out waiting for {what}");
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released), for
/// endpoints a process must be told before it binds them (a pair's state link).
///
/// Drawn below the kernel's ephemeral range: a port the OS hands out for `bind(0)` is one
/// it also hands out as the source port of outgoing connections (every client and worker
/// reconnecting meanwhile), so between this call and the real bind another connection —
/// or a self-connect of a socket retrying towards that very port — could take it.
pub fn free_port() -> u16 {
    let low = ephemeral_low().clamp(FIRST_FIXED + 1000, u16::MAX);
    for _ in 0..1000 {
        let port = FIRST_FIXED + (random() % u64::from(low - FIRST_FIXED)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {FIRST_FIXED}-{low}")
}

/// Lowest port [`free_port`] draws (above the well-known and common service ports).
const FIRST_FIXED: u16 = 10_000;

/// First port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A random number: std's per-process random hash keys, a clock and a counter mixed.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
