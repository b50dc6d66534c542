//! Scenario `journal`: what the worker's order journal costs. One SIM worker per journal
//! mode (none, written without fsync, fsync always, fsync batched every 10 ms), every
//! request pinned to it with `target`: `send_order` one at a time (a FAK buy far below the
//! market, which SIM cancels at once: one request, no resting orders) and echo calls not
//! marked idempotent (an idempotent request's lines are never synced on their own), window
//! 1 and pipelined. No bare baseline: the "none" mode is the reference.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tradeplex_client::{CallOptions, Client, ClientOptions};
use tradeplex_proto::model::{Direction, GatewayRequest, Offset, Order, OrderRequest, OrderType};
use tradeplex_proto::WorkerId;

use super::rr::RrRun;

/// A journal configuration of the measured worker.
pub struct Mode {
    /// As printed in the report's config column.
    pub label: &'static str,
    /// `--journal-fsync` value; None = no journal at all.
    pub fsync: Option<&'static str>,
}

/// Every mode, in the order they are measured.
pub const MODES: [Mode; 4] = [
    Mode {
        label: "no journal",
        fsync: None,
    },
    Mode {
        label: "journal, fsync off",
        fsync: Some("off"),
    },
    Mode {
        label: "journal, fsync always",
        fsync: Some("always"),
    },
    Mode {
        label: "journal, fsync batched 10ms",
        fsync: Some("10ms"),
    },
];

const TIMEOUT: Duration = Duration::from_secs(10);

/// The call options that pin a request, not idempotent, to `worker`.
pub fn pinned(worker: WorkerId) -> CallOptions {
    CallOptions::command().timeout(TIMEOUT).target(worker)
}

/// `warmup` then `count` orders (or until `cap`), one in flight, to `worker`'s SIM.
pub fn send_orders(
    frontend: &str,
    worker: WorkerId,
    count: u64,
    warmup: u64,
    cap: Duration,
) -> anyhow::Result<RrRun> {
    let client = Client::connect(frontend, ClientOptions::default().timeout(TIMEOUT))?;
    let mut hist = super::report::latency_histogram();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (mut done, mut started) = (0u64, Instant::now());
    for i in 0..warmup + count {
        if i == warmup {
            started = Instant::now();
        }
        if i > warmup && started.elapsed() >= cap {
            break;
        }
        let req = GatewayRequest::SendOrder(OrderRequest {
            symbol: "AAPL".into(),
            exchange: String::new(),
            direction: Direction::Long,
            order_type: OrderType::Fak,
            volume: 1.0,
            price: 1.0,
            offset: Offset::Open,
            account: String::new(),
            reference: format!("bench-journal-{tag}-{i}"),
        });
        let body = rmp_serde::to_vec_named(&req).context("encoding the order")?;
        let t0 = Instant::now();
        let reply = client
            .call("SIM", body, pinned(worker))
            .context("send_order")?;
        let took = t0.elapsed();
        let order: Order = rmp_serde::from_slice(&reply.body).context("decoding the order")?;
        if order.order_id.to_string().is_empty() {
            bail!("SIM answered an order without an id");
        }
        if i >= warmup {
            hist.saturating_record(took.as_nanos() as u64);
            done += 1;
        }
    }
    Ok(RrRun::from_histogram(
        &hist,
        done,
        started.elapsed().as_secs_f64(),
    ))
}
