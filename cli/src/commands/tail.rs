//! `tradeplex tail TOPIC_PREFIX [--count N]`: one event per line as JSON
//! (`topic`, `worker`, `seq`, `time`, `ts_ns`, `kind`, `event`); an unreachable broker
//! ends it `unavailable` (exit 1).

use std::time::Duration;

use clap::Args;
use tradeplex_client::events::Event;
use tradeplex_client::json;

/// Flags of `tradeplex tail`.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// Topic prefix, e.g. `tick.SIM.` or `order.` ("" = everything).
    prefix: String,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this long without an event, ms (0 = never).
    #[arg(long, default_value_t = 0)]
    idle_timeout_ms: u64,
    /// Accepted for symmetry with the other commands: `tail` always prints one JSON
    /// object per line (a broker that cannot be reached: `{"error": {...}}`).
    #[arg(long)]
    json: bool,
}

/// The JSON line printed for an event.
pub fn event_json(e: &Event) -> serde_json::Value {
    serde_json::json!({
        "topic": e.topic,
        "worker": e.source.to_string(),
        "seq": e.seq,
        "time": format_ns(e.ts_ns),
        "ts_ns": e.ts_ns,
        "kind": e.kind,
        "event": json::from_msgpack(&e.body).unwrap_or(serde_json::Value::Null),
    })
}

/// Unix ns as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
pub fn format_ns(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn run(conn: &super::Conn, args: TailArgs) -> anyhow::Result<i32> {
    let sub = conn.subscribe(&[args.prefix.as_str()])?;
    // A subscriber alone would wait for an unreachable broker forever (its socket keeps
    // reconnecting): without a broker heartbeat soon, ask the broker, so that a broker
    // that refuses connections ends `tail` with `unavailable` at once. Once it has been
    // reached, `tail` rides out broker restarts as before.
    if !sub.wait_connected(Duration::from_millis(200)) {
        if let Err(e) = conn.connect(3000)?.status() {
            return Ok(super::fail(&e, args.json));
        }
    }
    let mut seen = 0u64;
    let idle = (args.idle_timeout_ms > 0).then(|| Duration::from_millis(args.idle_timeout_ms));
    let mut quiet = Duration::ZERO;
    while args.count.is_none_or(|n| seen < n) {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Some(e) => {
                println!("{}", event_json(&e));
                seen += 1;
                quiet = Duration::ZERO;
            }
            None => {
                quiet += Duration::from_millis(100);
                if idle.is_some_and(|limit| quiet >= limit) {
                    break;
                }
            }
        }
    }
    if sub.gaps() > 0 {
        eprintln!("warning: {} events missed (sequence gaps)", sub.gaps());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_ns(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_ns(1_700_000_000_123_456_000),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
