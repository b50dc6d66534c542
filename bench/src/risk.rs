//! Scenario `risk`: what the broker's pre-trade risk stage adds to a `send_order`. The
//! stage is one synchronous call in the broker's loop (`risk::Stage::check`), so its cost
//! is measured in process, on the broker's own code (`check`, then `settle` as when the
//! worker answers): every rule on with limits the orders
//! stay under (each check runs every rule and records the order), the state loaded with
//! contracts, ticks, positions, a balance and working orders, once quiet and once with a
//! thread feeding tick events at the same time (the relay's lock traffic).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use prometheus::Registry;
use tradeplex_broker::risk::{audit, RiskConfig, Stage, Verdict};
use tradeplex_proto::model::{Direction, GatewayRequest, Offset, OrderRequest, OrderType};

use super::report::{Side, Unit};
use super::rr::RrRun;

/// Every rule on; the limits are far above what the bench sends.
const CONFIG: &str = r#"
[[account]]
name = "bench"
order_flow_limit_per_s = 4000000000
order_flow_limit_per_min = 4000000000
order_size_limit = 100
order_value_limit = 1e12
duplicate_order_window_ms = 1000
duplicate_order_limit = 1000000
contract_order_limit = 4000000000
order_validity = true
active_order_limit = 4000000000
contract_cancel_limit = 4000000000
contract_trade_limit = 4000000000
position_limit = 1e15
daily_loss_limit = 1e12
[contract.AAPL]
size = 1
pricetick = 0.01
min_volume = 1
"#;

/// A worker's Order reply as the audit's outcome line reads it (order id and status).
const REPLY: &[u8] = &[
    0x82, 0xa8, b'o', b'r', b'd', b'e', b'r', b'_', b'i', b'd', 0xa9, b'S', b'I', b'M', b'.', b'b',
    b'.', b'1', b'2', b'3', 0xa6, b's', b't', b'a', b't', b'u', b's', 0xaa, b'n', b'o', b't', b'_',
    b't', b'r', b'a', b'd', b'e', b'd',
];

fn event(stage: &Stage, kind: &str, v: serde_json::Value) -> anyhow::Result<()> {
    let body = rmp_serde::to_vec_named(&v).context("encoding an event")?;
    stage
        .feed()
        .on_event(tradeplex_proto::now_unix_ms(), kind, &body);
    Ok(())
}

fn tick(price: f64) -> serde_json::Value {
    serde_json::json!({"symbol": "AAPL", "last_price": price, "limit_up": 1000.0, "limit_down": 1.0})
}

fn loaded_stage() -> anyhow::Result<Stage> {
    let cfg: RiskConfig = toml::from_str(CONFIG).context("bench risk config")?;
    let stage = Stage::new(cfg, &Registry::new()).context("bench risk stage")?;
    event(&stage, "tick", tick(190.0))?;
    event(
        &stage,
        "account",
        serde_json::json!({"account": "bench", "balance": 1e6}),
    )?;
    event(
        &stage,
        "position",
        serde_json::json!({"account": "bench", "symbol": "AAPL", "direction": "long", "volume": 10.0}),
    )?;
    for i in 0..100 {
        event(
            &stage,
            "order",
            serde_json::json!({"order_id": format!("SIM.bench.{i}"), "symbol": "AAPL", "account": "bench",
                "direction": "long", "offset": "open", "volume": 1.0, "traded": 0.0, "status": "not_traded"}),
        )?;
    }
    Ok(stage)
}

/// The stage with an audit journal at `path` (fsync `fsync`), as `[risk] journal` sets it.
fn audited_stage(path: &std::path::Path, fsync: &str) -> anyhow::Result<Stage> {
    let stage = loaded_stage()?;
    let mut opts = tradeplex_ops::journal::JournalOptions::new(path);
    opts.fsync = fsync.parse().map_err(anyhow::Error::msg)?;
    let audit = audit::Audit::open(opts, tradeplex_proto::now_unix_ms())
        .with_context(|| format!("opening {}", path.display()))?;
    stage.set_audit(audit);
    Ok(stage)
}

/// `count` checks of distinct orders (1000 prices), each timed alone; with an audit
/// journal, each also writes its request, decision and outcome lines as the broker does.
fn run(stage: &Stage, count: u64) -> anyhow::Result<RrRun> {
    let bodies = (0..1000)
        .map(|i| {
            rmp_serde::to_vec_named(&GatewayRequest::SendOrder(OrderRequest {
                symbol: "AAPL".into(),
                exchange: "NASDAQ".into(),
                direction: Direction::Long,
                order_type: OrderType::Limit,
                volume: 1.0,
                price: 150.0 + f64::from(i) * 0.01,
                offset: Offset::Open,
                account: "bench".into(),
                reference: String::new(),
            }))
        })
        .collect::<Result<Vec<_>, _>>()
        .context("encoding orders")?;
    let mut hist = super::report::latency_histogram();
    let started = Instant::now();
    for (i, body) in (0..count).zip(bodies.iter().cycle()) {
        let now_ms = tradeplex_proto::now_unix_ms();
        // The check on the way in and the settle when the worker answers: what the stage
        // adds to one order.
        let t0 = Instant::now();
        let v = stage.check(now_ms, body);
        let rid = stage
            .audit_request(now_ms, b"bench-client", i, body, &v)
            .map_err(anyhow::Error::msg)?;
        let Verdict::Admitted(ticket) = v else {
            bail!("order {i} was not admitted under the bench's limits: {v:?}");
        };
        stage.settle(ticket);
        if let Some(rid) = rid {
            stage.audit_outcome(now_ms, rid, Ok(REPLY), Some("bench".into()));
        }
        let took = t0.elapsed();
        hist.saturating_record(took.as_nanos() as u64);
    }
    Ok(RrRun::from_histogram(
        &hist,
        count,
        started.elapsed().as_secs_f64(),
    ))
}

impl crate::runner::Bench<'_> {
    /// The `risk` scenario's rows.
    pub(super) fn risk(&mut self) -> anyhow::Result<()> {
        let count = self.args.messages.max(1000);
        for rep in 0..self.args.repeat {
            crate::runner::check_interrupt()?;
            let quiet = run(&loaded_stage()?, count)?;
            self.risk_row("all rules, quiet", &quiet);
            let stage = loaded_stage()?;
            let stop = AtomicBool::new(false);
            let fed = std::thread::scope(|s| {
                let feeder = s.spawn(|| {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let _ = event(&stage, "tick", tick(190.0 + (n % 100) as f64 * 0.01));
                        n += 1;
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    n
                });
                let r = run(&stage, count);
                stop.store(true, Ordering::Relaxed);
                let ticks = feeder.join().unwrap_or(0);
                r.map(|r| (r, ticks))
            })?;
            self.risk_row("all rules, ticks fed meanwhile", &fed.0);
            let dir = match &self.args.journal_dir {
                Some(d) => d.clone(),
                None => std::env::temp_dir(),
            };
            for fsync in ["off", "10ms", "always"] {
                let path = dir.join(format!("bench-audit-{}-{fsync}.jsonl", std::process::id()));
                // The audited run is slower with fsync: fewer orders keep it short.
                let n = if fsync == "always" {
                    count.min(2000)
                } else {
                    count
                };
                let r = run(&audited_stage(&path, fsync)?, n);
                let _ = std::fs::remove_file(&path);
                self.risk_row(&format!("all rules + audit journal, fsync {fsync}"), &r?);
            }
            if rep == 0 {
                self.report.notes.push(format!(
                    "risk: the stage's check in process (broker code, no sockets), {count} orders a run; {} ticks fed during the second run; the audit runs add the journal's request, decision and outcome lines (files under --journal-dir or $TMPDIR)",
                    fed.1
                ));
            }
        }
        Ok(())
    }

    fn risk_row(&mut self, cfg: &str, r: &RrRun) {
        eprintln!(
            "bench: risk stage send_order check {cfg}: p50 {:.2} µs p99 {:.2} µs ({} checks, target p50 < 5 µs)",
            r.p50_us, r.p99_us, r.done
        );
        let name = "risk stage check";
        let rp = &mut self.report;
        rp.add(name, cfg, "p50", Unit::Micros, Side::Tradeplex, r.p50_us);
        rp.add(name, cfg, "p99", Unit::Micros, Side::Tradeplex, r.p99_us);
    }
}
