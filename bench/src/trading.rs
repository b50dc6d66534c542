//! Scenario 3, the trading round trip: `send_order` on the SIM gateway (a limit buy far
//! below the market, so it rests) until its order-accepted event (status `not_traded`)
//! arrives on the event side; one order in flight. Each order is cancelled afterwards,
//! outside the timing, so resting orders do not pile up. No bare baseline: there is no
//! gateway without Tradeplex.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tradeplex_client::events::{EventOptions, Subscriber};
use tradeplex_client::{Client, ClientOptions};
use tradeplex_proto::model::{Direction, Offset, Order, OrderRequest, OrderType, Status};

/// The SIM gateway's default account, its symbol and a price far below its market.
const GATEWAY: &str = "SIM";
const ACCOUNT: &str = "sim";
const SYMBOL: &str = "AAPL";
const RESTING_PRICE: f64 = 1.0;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Latencies of one run, µs.
#[derive(Debug, Clone)]
pub struct TradingRun {
    pub done: u64,
    pub event_p50_us: f64,
    pub event_p99_us: f64,
    pub reply_p50_us: f64,
    pub reply_p99_us: f64,
    /// An echo call (the rr body) made by the same client just before each order.
    pub echo_p50_us: f64,
}

/// Sends `warmup` then `count` orders one at a time.
pub fn run(frontend: &str, xpub: &str, count: u64, warmup: u64) -> anyhow::Result<TradingRun> {
    let client = Client::connect(frontend, ClientOptions::default().timeout(TIMEOUT))?;
    let sub = Subscriber::connect(
        xpub,
        &[&format!("order.{ACCOUNT}")],
        EventOptions::default(),
    )?;
    if !sub.wait_connected(TIMEOUT) {
        bail!("no broker heartbeat on the event side within {TIMEOUT:?}");
    }
    // A reader thread stamps each order event (accepted, cancelled) as it arrives: the
    // event may come in before the call's reply, so it must not wait for the caller.
    let (tx, rx) = mpsc::channel::<(String, Status, Instant)>();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let Some(ev) = sub.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let at = Instant::now();
                if let Ok(order) = ev.decode::<Order>() {
                    if tx.send((order.reference, order.status, at)).is_err() {
                        return;
                    }
                }
            }
        });
        let result = orders(&client, &rx, count, warmup);
        stop.store(true, Ordering::SeqCst);
        let _ = reader.join();
        result
    })
}

fn orders(
    client: &Client,
    events: &mpsc::Receiver<(String, Status, Instant)>,
    count: u64,
    warmup: u64,
) -> anyhow::Result<TradingRun> {
    let mut accepted = super::report::latency_histogram();
    let mut replies = super::report::latency_histogram();
    let mut echoes = super::report::latency_histogram();
    // The rr scenario's body: a 64-byte MessagePack bin.
    let mut echo_body = vec![0u8; crate::rr::BODY_BYTES];
    echo_body[0] = 0xc4;
    echo_body[1] = (crate::rr::BODY_BYTES - 2) as u8;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    for i in 0..warmup + count {
        let reference = format!("bench-{tag}-{i}");
        let req = OrderRequest {
            symbol: SYMBOL.into(),
            exchange: String::new(),
            direction: Direction::Long,
            order_type: OrderType::Limit,
            volume: 1.0,
            price: RESTING_PRICE,
            offset: Offset::Open,
            account: ACCOUNT.into(),
            reference: reference.clone(),
        };
        // The same client, the same moment of the loop (after the last cancel): the
        // reference send_order's reply is compared with.
        let e0 = Instant::now();
        client
            .call(
                "echo",
                echo_body.clone(),
                tradeplex_client::CallOptions::query(),
            )
            .context("echo call")?;
        let echoed = e0.elapsed();
        let t0 = Instant::now();
        let order = client.send_order(GATEWAY, req).context("send_order")?;
        let replied = t0.elapsed();
        if order.status == Status::Rejected {
            bail!("SIM rejected the bench order: {:?}", order.reason);
        }
        let event_at = wait_for(events, &reference, Status::NotTraded)?;
        if i >= warmup {
            replies.saturating_record(replied.as_nanos() as u64);
            echoes.saturating_record(echoed.as_nanos() as u64);
            accepted.saturating_record(event_at.duration_since(t0).as_nanos() as u64);
        }
        client
            .cancel_order(&order.order_id)
            .context("cancelling the bench order")?;
        // The cancel's event too, so the next echo and order start on a quiet cluster
        // (not racing this order's events through the broker and the subscriber).
        wait_for(events, &reference, Status::Cancelled)?;
    }
    let us = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(TradingRun {
        done: count,
        event_p50_us: us(&accepted, 0.5),
        event_p99_us: us(&accepted, 0.99),
        reply_p50_us: us(&replies, 0.5),
        reply_p99_us: us(&replies, 0.99),
        echo_p50_us: us(&echoes, 0.5),
    })
}

/// When the event of `reference` with `status` arrived (others are skipped).
fn wait_for(
    events: &mpsc::Receiver<(String, Status, Instant)>,
    reference: &str,
    status: Status,
) -> anyhow::Result<Instant> {
    loop {
        let (r, s, at) = events
            .recv_timeout(TIMEOUT)
            .map_err(|_| anyhow!("no {status:?} event for {reference} within {TIMEOUT:?}"))?;
        if r == reference && s == status {
            return Ok(at);
        }
    }
}
