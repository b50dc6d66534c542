//! The built-in `echo` service, always available for diagnostics: replies with the
//! request body; if the body is a map with `"sleep_ms": n`, it first waits n ms so
//! operators and tests can hold requests in flight.

use std::time::Duration;

use crate::handler::{Handler, HandlerError, Request};

/// Longest sleep honoured, so a stray request cannot pin an executor thread for long.
pub const MAX_SLEEP_MS: u64 = 60_000;

/// The echo handler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Handler for Echo {
    /// Echoing is a copy; only a requested sleep needs an executor thread.
    fn runs_inline(&self, req: &Request) -> bool {
        sleep_ms(&req.body).is_none()
    }

    fn handle(&self, req: &Request) -> Result<Vec<u8>, HandlerError> {
        if let Some(ms) = sleep_ms(&req.body) {
            std::thread::sleep(Duration::from_millis(ms.min(MAX_SLEEP_MS)));
        }
        Ok(req.body.clone())
    }
}

/// Reads `sleep_ms` from a MessagePack map body, if there is one.
fn sleep_ms(body: &[u8]) -> Option<u64> {
    // Only a map can hold `sleep_ms`: look at the MessagePack marker before decoding, so
    // echoing any other body (the bench's bin, a string) costs no decode.
    if !matches!(body.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return None;
    }
    let value = rmpv::decode::read_value(&mut &body[..]).ok()?;
    let map = value.as_map()?;
    map.iter()
        .find(|(k, _)| k.as_str() == Some("sleep_ms"))
        .and_then(|(_, v)| v.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sleep_from_map_only() {
        #[derive(serde::Serialize)]
        struct B {
            sleep_ms: u64,
            n: u32,
        }
        let body = rmp_serde::to_vec_named(&B { sleep_ms: 5, n: 1 }).unwrap();
        assert_eq!(sleep_ms(&body), Some(5));
        assert_eq!(sleep_ms(&rmp_serde::to_vec(&[1, 2]).unwrap()), None);
        assert_eq!(sleep_ms(b"\xc1garbage"), None);
        assert_eq!(sleep_ms(&rmp_serde::to_vec(&"sleep_ms").unwrap()), None);
        assert_eq!(sleep_ms(b""), None);
        // map 16 and map 32 headers are maps too.
        assert_eq!(sleep_ms(b"\xde\x00\x01\xa8sleep_ms\x07"), Some(7));
        assert_eq!(sleep_ms(b"\xdf\x00\x00\x00\x01\xa8sleep_ms\x07"), Some(7));
    }
}
