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
    Ok(0)
}
