//! `tradeplex status` / `tradeplex workers`: the broker's workers and services as a table
//! (or JSON with --json).

use clap::Args;

/// Flags of `tradeplex status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the raw status as JSON instead of tables (a failure: `{"error": {...}}`).
    #[arg(long)]
    json: bool,
}

pub fn run(conn: &super::Conn, args: StatusArgs) -> anyhow::Result<i32> {
    let client = conn.connect(3000)?;
    let status = match client.status() {
        Ok(s) => s,
        Err(e) => return Ok(super::fail(&e, args.json)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(0);
    }
    println!("broker {} up {}s", status.broker, status.uptime_s);
    if let Some(p) = &status.pair {
        let peer = match (&p.peer_state, p.peer_age_ms) {
            (Some(s), Some(ms)) => format!("{s}, heard {ms} ms ago"),
            _ => "never heard".to_string(),
        };
        println!("pair {} {} (peer: {peer})", p.role, p.state);
    }
    println!(
        "{:<36}  {:<20}  {:>8}  {:>9}  {:>12}  {:>8}",
        "WORKER", "SERVICES", "CAPACITY", "IN_FLIGHT", "HEARTBEAT_MS", "SERVED"
    );
    for w in &status.workers {
        let services: Vec<&str> = w.services.iter().map(|s| s.as_str()).collect();
        println!(
            "{:<36}  {:<20}  {:>8}  {:>9}  {:>12}  {:>8}",
            w.worker.to_string(),
            services.join(","),
            w.capacity,
            w.in_flight,
            w.heartbeat_age_ms,
            w.served
        );
    }
    println!();
    println!(
        "{:<20}  {:>7}  {:>6}  {:>9}",
        "SERVICE", "WORKERS", "QUEUED", "IN_FLIGHT"
    );
    for s in &status.services {
        println!(
            "{:<20}  {:>7}  {:>6}  {:>9}",
            s.service.as_str(),
            s.workers,
            s.queued,
            s.in_flight
        );
    }
    println!();
    if status.halts.is_empty() {
        println!("HALTS: none");
    } else {
        println!(
            "{:<20}  {:<24}  {:<16}  REASON",
            "HALTED", "SINCE_UTC", "BY"
        );
        for h in &status.halts {
            // An anonymous client (no name) shows as `-`.
            let by = if h.by.is_empty() { "-" } else { h.by.as_str() };
            println!(
                "{:<20}  {:<24}  {:<16}  {}",
                h.account,
                utc(h.since_ms),
                by,
                h.reason
            );
        }
    }
    Ok(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a Unix ms time.
fn utc(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_unix_ms() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_796_178_645_123), "2026-12-02T02:30:45.123Z");
    }
}
