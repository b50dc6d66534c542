//! `SIM`, the built-in simulated exchange gateway. The market is a deterministic
//! function of (seed, symbol, time) — see [`market`] — so several SIM workers in one
//! cluster simulate the same market; orders, positions and accounts are per worker.
//!
//! A ticker thread moves the market at every tick boundary, fills resting orders the
//! books cross and publishes ticks of subscribed symbols. Requests move the market to
//! "now" before they act, so matching always uses the book current at the wall clock.
//! The extra operation `{"op":"sim_disconnect","duration_ms":N}` simulates a lost
//! connection: `disconnected`, then `reconnecting` after N/2 ms, `connected` after N ms.

pub mod account;
pub mod book;
pub mod config;
pub mod exchange;
pub mod market;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use tradeplex_proto::model::{
    Account, Bar, CancelRequest, Contract, HistoryRequest, Order, OrderId, OrderRequest, Position,
    SubscribeRequest, SymbolRequest, Tick, Trade,
};

use self::config::SimConfig;
use self::exchange::{Exchange, SimEvent};
use self::market::{Clock, Instrument, TickIndex};
use super::{ConnectionState, EventSink, Gateway, GatewayContext, GatewayError};

/// The gateway's name and service name.
pub const NAME: &str = "SIM";
/// The fault-injection operation.
pub const DISCONNECT_OP: &str = "sim_disconnect";
/// Longest simulated disconnect, ms.
pub const MAX_DISCONNECT_MS: u64 = 600_000;
/// What one history request may ask for: at most 30 million ticks simulated (about
/// 0.3 s of work) and 4000 bars (about 1 MB of reply, the default body limit).
pub const HISTORY_LIMITS: market::HistoryLimits = market::HistoryLimits {
    max_ticks: 30_000_000,
    max_bars: 4000,
};

/// Body of `sim_disconnect`.
#[derive(Debug, Deserialize)]
struct DisconnectRequest {
    duration_ms: u64,
}

/// Reply to `sim_disconnect`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DisconnectReply {
    /// The state now: `disconnected`.
    pub state: String,
    /// When the gateway reports `reconnecting`, ms from now.
    pub reconnecting_in_ms: u64,
    /// When it is `connected` again, ms from now.
    pub connected_in_ms: u64,
}

/// What exists only while connected.
struct Core {
    exchange: Exchange,
    sink: EventSink,
    /// Subscribed instruments, by `symbol.EXCHANGE`.
    subscribed: BTreeSet<String>,
    /// Tick last published per subscribed instrument.
    published: HashMap<String, TickIndex>,
}

impl Core {
    fn emit(&self, events: Vec<SimEvent>) {
        for e in events {
            match e {
                SimEvent::Order(o) => self.sink.order(&o),
                SimEvent::Trade(t) => self.sink.trade(&t),
                SimEvent::Position(p) => self.sink.position(&p),
                SimEvent::Account(a) => self.sink.account(&a),
            }
        }
    }

    /// Moves the market to `now_ns` and publishes what happened.
    fn advance(&mut self, now_ns: u64) {
        let mut out = Vec::new();
        self.exchange.advance(now_ns, &mut out);
        self.emit(out);
    }

    /// Publishes the current tick of every subscribed symbol not yet published.
    fn publish_ticks(&mut self) {
        for s in &self.subscribed {
            let Some(idx) = self.exchange.index(s) else {
                continue;
            };
            if self.published.get(s) != Some(&idx) {
                if let Some(t) = self.exchange.tick(s) {
                    self.sink.tick(&t);
                }
                self.published.insert(s.clone(), idx);
            }
        }
    }
}

/// Planned state changes after a simulated disconnect.
#[derive(Debug, Default)]
struct Outage {
    reconnecting_at: Option<Instant>,
    connected_at: Option<Instant>,
}

struct Inner {
    config: SimConfig,
    instruments: Vec<Arc<Instrument>>,
    clock: Clock,
    state: AtomicU8,
    core: Mutex<Option<Core>>,
    outage: Mutex<Outage>,
    stop: AtomicBool,
    wake: Sender<()>,
    woken: Receiver<()>,
}

/// The simulated exchange gateway.
pub struct SimGateway {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the gateway down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn state_from(v: u8) -> ConnectionState {
    match v {
        1 => ConnectionState::Connected,
        2 => ConnectionState::Reconnecting,
        _ => ConnectionState::Disconnected,
    }
}

impl SimGateway {
    /// A gateway simulating `config` (validated here). Call [`Gateway::connect`] to start.
    pub fn new(config: SimConfig) -> Result<SimGateway, config::InvalidField> {
        config.validate()?;
        let instruments = config
            .symbols
            .iter()
            .map(|s| Arc::new(Instrument::new(s, &config, NAME)))
            .collect();
        let (wake, woken) = crossbeam_channel::bounded(1);
        Ok(SimGateway {
            inner: Arc::new(Inner {
                clock: Clock::new(config.tick_interval_ms),
                config,
                instruments,
                state: AtomicU8::new(ConnectionState::Disconnected.gauge() as u8),
                core: Mutex::new(None),
                outage: Mutex::new(Outage::default()),
                stop: AtomicBool::new(false),
                wake,
                woken,
            }),
            thread: Mutex::new(None),
        })
    }

    /// The configuration simulated.
    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// The instrument `symbol` on `exchange` (`""`: its only one; several → `Ambiguous`).
    fn instrument(&self, symbol: &str, exchange: &str) -> Result<&Arc<Instrument>, GatewayError> {
        Ok(exchange::resolve(
            &self.inner.instruments,
            symbol,
            exchange,
        )?)
    }

    /// Runs `f` on the connected core after moving the market to now; refuses with
    /// `unavailable` unless connected (checked under the lock, so a request either runs
    /// before a simulated disconnect or is refused).
    fn with_core<T>(&self, f: impl FnOnce(&mut Core, u64) -> T) -> Result<T, GatewayError> {
        let mut guard = lock(&self.inner.core);
        let state = self.inner.state();
        match guard.as_mut() {
            Some(core) if state == ConnectionState::Connected => {
                let now = tradeplex_proto::now_unix_ns();
                core.advance(now);
                Ok(f(core, now))
            }
            _ => Err(GatewayError::Unavailable(format!("{NAME} is {state}"))),
        }
    }

    fn inject_disconnect(&self, body: &[u8]) -> Result<Vec<u8>, GatewayError> {
        if !self.inner.config.allow_fault_injection {
            return Err(GatewayError::Invalid(format!(
                "{DISCONNECT_OP}: fault injection is disabled ([sim] allow_fault_injection = false)"
            )));
        }
        let req: DisconnectRequest = rmp_serde::from_slice(body)
            .map_err(|e| GatewayError::Invalid(format!("{DISCONNECT_OP}: {e}")))?;
        let ms = req.duration_ms;
        if !(1..=MAX_DISCONNECT_MS).contains(&ms) {
            return Err(GatewayError::Invalid(format!(
                "{DISCONNECT_OP}: duration_ms must be 1-{MAX_DISCONNECT_MS}"
            )));
        }
        {
            let guard = lock(&self.inner.core);
            let Some(core) = guard.as_ref() else {
                return Err(GatewayError::Unavailable(format!(
                    "{NAME} is not connected"
                )));
            };
            let now = Instant::now();
            *lock(&self.inner.outage) = Outage {
                reconnecting_at: Some(now + Duration::from_millis(ms / 2)),
                connected_at: Some(now + Duration::from_millis(ms)),
            };
            self.inner
                .set_state(&core.sink, ConnectionState::Disconnected);
            core.sink
                .log(NAME, "warn", format!("simulated disconnect for {ms} ms"));
        }
        let _ = self.inner.wake.try_send(());
        rmp_serde::to_vec_named(&DisconnectReply {
            state: ConnectionState::Disconnected.name().into(),
            reconnecting_in_ms: ms / 2,
            connected_in_ms: ms,
        })
        .map_err(|e| GatewayError::Failed(e.to_string()))
    }
}

impl Inner {
    fn state(&self) -> ConnectionState {
        state_from(self.state.load(Ordering::SeqCst))
    }

    fn set_state(&self, sink: &EventSink, s: ConnectionState) {
        if self.state.swap(s.gauge() as u8, Ordering::SeqCst) != s.gauge() as u8 {
            sink.connection_state(NAME, s);
        }
    }

    /// The ticker: state changes after a simulated outage, market moves, ticks.
    fn run(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let next_change = self.apply_outage(Instant::now());
            let now_ns = tradeplex_proto::now_unix_ns();
            if self.state() == ConnectionState::Connected {
                if let Some(core) = lock(&self.core).as_mut() {
                    core.advance(now_ns);
                    core.publish_ticks();
                }
            }
            // Sleep to just after the next tick boundary, or the next state change.
            let next_tick = self
                .clock
                .time_of(self.clock.next(self.clock.index_at(now_ns)));
            let mut wait = Duration::from_nanos(next_tick.saturating_sub(now_ns) + 200_000);
            if let Some(at) = next_change {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            let _ = self.woken.recv_timeout(wait);
        }
    }

    /// Applies due outage transitions; returns when the next one is due.
    fn apply_outage(&self, now: Instant) -> Option<Instant> {
        let guard = lock(&self.core);
        let core = guard.as_ref()?;
        let mut o = lock(&self.outage);
        if o.connected_at.is_some_and(|t| now >= t) {
            *o = Outage::default();
            self.set_state(&core.sink, ConnectionState::Connected);
        } else if o.reconnecting_at.is_some_and(|t| now >= t) {
            o.reconnecting_at = None;
            self.set_state(&core.sink, ConnectionState::Reconnecting);
        }
        o.reconnecting_at.or(o.connected_at)
    }
}

impl Gateway for SimGateway {
    fn name(&self) -> &str {
        NAME
    }

    fn connect(&self, ctx: GatewayContext) -> Result<(), GatewayError> {
        let mut thread = lock(&self.thread);
        if thread.is_some() {
            return Err(GatewayError::Invalid(format!(
                "{NAME} is already connected"
            )));
        }
        let now = tradeplex_proto::now_unix_ns();
        let exchange = Exchange::new(
            &self.inner.config,
            &self.inner.instruments,
            NAME,
            ctx.worker,
            now,
        );
        let core = Core {
            exchange,
            sink: ctx.sink.clone(),
            subscribed: BTreeSet::new(),
            published: HashMap::new(),
        };
        for c in core.exchange.contracts() {
            core.sink.contract(&c);
        }
        if let Ok(accounts) = core.exchange.accounts("") {
            accounts.iter().for_each(|a| core.sink.account(a));
        }
        *lock(&self.inner.core) = Some(core);
        self.inner.stop.store(false, Ordering::SeqCst);
        self.inner.set_state(&ctx.sink, ConnectionState::Connected);
        let inner = self.inner.clone();
        *thread = Some(
            std::thread::Builder::new()
                .name("tpx-sim".into())
                .spawn(move || inner.run())
                .map_err(|e| GatewayError::Failed(format!("cannot start the SIM ticker: {e}")))?,
        );
        Ok(())
    }

    fn close(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let _ = self.inner.wake.try_send(());
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        if let Some(core) = lock(&self.inner.core).take() {
            self.inner
                .set_state(&core.sink, ConnectionState::Disconnected);
        }
    }

    fn state(&self) -> ConnectionState {
        self.inner.state()
    }

    fn subscribe(&self, req: &SubscribeRequest) -> Result<Contract, GatewayError> {
        let inst = self.instrument(&req.symbol, &req.exchange)?;
        let (vt, contract) = (inst.vt_symbol.clone(), inst.contract.clone());
        self.with_core(|core, _| {
            if core.subscribed.insert(vt.clone()) {
                core.sink.log(NAME, "info", format!("subscribed {vt}"));
            }
            // The subscriber gets the current tick at once (and the broker caches it).
            core.published.remove(&vt);
            core.publish_ticks();
            contract
        })
    }

    fn send_order(&self, req: &OrderRequest) -> Result<Order, GatewayError> {
        self.with_core(|core, now| {
            let mut out = Vec::new();
            let order = core.exchange.send_order(req, now, &mut out);
            core.emit(out);
            order
        })?
    }

    fn cancel_order(&self, req: &CancelRequest) -> Result<Order, GatewayError> {
        self.with_core(|core, now| {
            let mut out = Vec::new();
            let r = core.exchange.cancel_order(req, now, &mut out);
            core.emit(out);
            r
        })?
    }

    fn query_account(&self, account: &str) -> Result<Vec<Account>, GatewayError> {
        self.with_core(|core, _| core.exchange.accounts(account))?
    }

    fn query_position(&self, account: &str) -> Result<Vec<Position>, GatewayError> {
        self.with_core(|core, _| core.exchange.positions(account))?
    }

    fn query_order(&self, order_id: &OrderId) -> Result<Order, GatewayError> {
        self.with_core(|core, _| core.exchange.order(order_id))?
    }

    fn query_orders(&self, account: &str) -> Result<Vec<Order>, GatewayError> {
        self.with_core(|core, _| core.exchange.active_orders(account))?
    }

    fn query_trades(&self, account: &str) -> Result<Vec<Trade>, GatewayError> {
        self.with_core(|core, now| core.exchange.trades(account, now))?
    }

    fn query_contract(&self, req: &SymbolRequest) -> Result<Contract, GatewayError> {
        Ok(self
            .instrument(&req.symbol, &req.exchange)?
            .contract
            .clone())
    }

    /// The current tick of a symbol subscribed on this worker: like vn.py's OmsEngine, the
    /// gateway has ticks only of what it streams, so before `subscribe` there is none.
    fn query_tick(&self, req: &SymbolRequest) -> Result<Tick, GatewayError> {
        let vt = self
            .instrument(&req.symbol, &req.exchange)?
            .vt_symbol
            .clone();
        self.with_core(|core, _| {
            if !core.subscribed.contains(&vt) {
                return Err(GatewayError::Failed(format!(
                    "no tick for {}: not subscribed on this worker (send subscribe first, with the same affinity md.{})",
                    req.symbol, req.symbol
                )));
            }
            core.exchange
                .tick(&vt)
                .ok_or_else(|| GatewayError::Failed(format!("no tick for {}", req.symbol)))
        })?
    }

    fn query_contracts(&self) -> Result<Vec<Contract>, GatewayError> {
        Ok(self
            .inner
            .instruments
            .iter()
            .map(|i| i.contract.clone())
            .collect())
    }

    fn query_history(&self, req: &HistoryRequest) -> Result<Vec<Bar>, GatewayError> {
        let inst = self.instrument(&req.symbol, &req.exchange)?;
        // Bars are a pure function of the configuration: no lock, the market keeps moving.
        let now = tradeplex_proto::now_unix_ns();
        market::bars(
            inst,
            &self.inner.clock,
            req.interval,
            (req.start_ns, req.end_ns),
            now,
            HISTORY_LIMITS,
        )
        .map_err(|e| GatewayError::Failed(e.to_string()))
    }

    fn extension(&self, op: &str, body: &[u8]) -> Option<Result<Vec<u8>, GatewayError>> {
        (op == DISCONNECT_OP).then(|| self.inject_disconnect(body))
    }

    /// Everything but history runs in memory under the core lock, which the market thread
    /// holds only for one step: inline. History computes up to thousands of bars, and the
    /// fault injection changes the connection state: those go to the executor.
    fn runs_inline(&self, op: &str) -> bool {
        !matches!(op, "query_history" | DISCONNECT_OP)
    }
}

impl Drop for SimGateway {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
