//! [`EventSink`]: how a gateway hands events to the worker's publisher — a bounded
//! channel that never blocks the gateway. When it is full the event is dropped, counted,
//! and the publisher skips a sequence number of its topic for it, so subscribers see the
//! loss as a gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use tradeplex_proto::model::{topic, Account, Contract, Log, Order, Position, Status, Tick, Trade};

use super::ConnectionState;
use crate::metrics::WorkerMetrics;

/// One event on its way to the publisher: topic, kind (the topic's first segment, one of
/// [`tradeplex_proto::event::KINDS`]) and the MessagePack body (a map with field names).
#[derive(Debug, Clone, PartialEq)]
pub struct OutEvent {
    /// Topic, e.g. `order.sim`.
    pub topic: String,
    /// Kind, e.g. `order`.
    pub kind: &'static str,
    /// Body, `rmp_serde::to_vec_named` of the object.
    pub body: Vec<u8>,
}

/// Events dropped before the publisher saw them, by topic: the publisher skips that many
/// sequence numbers on each topic, so subscribers see the loss as a gap.
#[derive(Debug, Default)]
pub(crate) struct Unsent {
    any: AtomicBool,
    by_topic: Mutex<HashMap<String, u64>>,
}

impl Unsent {
    fn add(&self, topic: &str) {
        let mut m = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(topic.to_string()).or_default() += 1;
        self.any.store(true, Ordering::Release);
    }

    /// Takes the drops recorded since the last call (cheap when there were none).
    pub(crate) fn take(&self) -> Option<HashMap<String, u64>> {
        if !self.any.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut m = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        Some(std::mem::take(&mut *m))
    }
}

/// A cloneable, thread-safe handle through which a gateway pushes events. Pushing never
/// blocks: a full queue drops the event (counted in `tradeplex_worker_events_dropped_total`).
#[derive(Clone)]
pub struct EventSink {
    tx: Option<Sender<OutEvent>>,
    /// Events dropped since the publisher last looked; it skips their sequence numbers.
    unsent: Arc<Unsent>,
    metrics: Option<Arc<WorkerMetrics>>,
}

impl EventSink {
    /// A sink feeding `tx`; `unsent` counts drops for the publisher's sequence numbers.
    pub(crate) fn new(
        tx: Sender<OutEvent>,
        unsent: Arc<Unsent>,
        metrics: Option<Arc<WorkerMetrics>>,
    ) -> EventSink {
        EventSink {
            tx: Some(tx),
            unsent,
            metrics,
        }
    }

    /// A sink into a bounded channel of `capacity` events (tests, custom consumers).
    pub fn channel(capacity: usize) -> (EventSink, Receiver<OutEvent>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (EventSink::new(tx, Arc::default(), None), rx)
    }

    /// The same sink, also keeping the order and gateway-state metrics in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> EventSink {
        self.metrics = Some(metrics);
        self
    }

    /// A sink that publishes nothing (no events endpoint) but still keeps the order and
    /// gateway-state metrics.
    pub fn discard(metrics: Option<Arc<WorkerMetrics>>) -> EventSink {
        EventSink {
            tx: None,
            unsent: Arc::default(),
            metrics,
        }
    }

    /// Publishes any serialisable object on `topic`; `kind` must be the topic's first segment.
    pub fn publish<T: Serialize>(&self, topic: String, kind: &'static str, object: &T) {
        let Some(tx) = &self.tx else { return };
        let body = match rmp_serde::to_vec_named(object) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, %topic, "event not encodable; dropped");
                return;
            }
        };
        match tx.try_send(OutEvent { topic, kind, body }) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => {
                self.unsent.add(&ev.topic);
                if let Some(m) = &self.metrics {
                    m.events_dropped.inc();
                }
                tracing::debug!(topic = %ev.topic, "event queue full; event dropped");
            }
            // The publisher has stopped (shutdown): nothing will be sent any more.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A tick, on `tick.<gateway>.<symbol>`.
    pub fn tick(&self, t: &Tick) {
        self.publish(topic::tick(&t.gateway, &t.symbol), "tick", t);
    }

    /// An order update, on `order.<account>`. Final statuses are counted in
    /// `tradeplex_gateway_orders_total` (`filled`, `cancelled`, `rejected`).
    pub fn order(&self, o: &Order) {
        if let Some(m) = &self.metrics {
            let result = match o.status {
                Status::AllTraded => Some("filled"),
                Status::Cancelled => Some("cancelled"),
                Status::Rejected => Some("rejected"),
                _ => None,
            };
            if let Some(r) = result {
                m.orders.with_label_values(&[&o.gateway, r]).inc();
            }
        }
        self.publish(topic::order(&o.account), "order", o);
    }

    /// A fill, on `trade.<account>`.
    pub fn trade(&self, t: &Trade) {
        self.publish(topic::trade(&t.account), "trade", t);
    }

    /// A position change, on `position.<account>`.
    pub fn position(&self, p: &Position) {
        self.publish(topic::position(&p.account), "position", p);
    }

    /// An account change, on `account.<account>`.
    pub fn account(&self, a: &Account) {
        self.publish(topic::account(&a.account), "account", a);
    }

    /// A contract, on `contract.<gateway>`.
    pub fn contract(&self, c: &Contract) {
        self.publish(topic::contract(&c.gateway), "contract", c);
    }

    /// A log line, on `log.<gateway>` (also logged locally through `tracing`).
    pub fn log(&self, gateway: &str, level: &str, msg: impl Into<String>) {
        let msg = msg.into();
        match level {
            "error" => tracing::error!(%gateway, "{msg}"),
            "warn" => tracing::warn!(%gateway, "{msg}"),
            _ => tracing::info!(%gateway, "{msg}"),
        }
        let log = Log {
            gateway: gateway.to_string(),
            level: level.to_string(),
            msg,
            datetime_ns: tradeplex_proto::now_unix_ns(),
        };
        self.publish(topic::log(gateway), "log", &log);
    }

    /// Reports a connection state change: sets the `tradeplex_gateway_connected` gauge
    /// and publishes a log line `connection <state>`.
    pub fn connection_state(&self, gateway: &str, state: ConnectionState) {
        if let Some(m) = &self.metrics {
            m.gateway_state
                .with_label_values(&[gateway])
                .set(state.gauge());
            for result in crate::metrics::ORDER_RESULTS {
                m.orders.with_label_values(&[gateway, result]);
            }
        }
        let level = if state == ConnectionState::Connected {
            "info"
        } else {
            "warn"
        };
        self.log(gateway, level, format!("connection {state}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let metrics = Arc::new(WorkerMetrics::new());
        let (tx, rx) = crossbeam_channel::bounded(2);
        let unsent = Arc::new(Unsent::default());
        let sink = EventSink::new(tx, unsent.clone(), Some(metrics.clone()));
        for _ in 0..5 {
            sink.log("SIM", "info", "hello");
        }
        assert_eq!(rx.len(), 2);
        assert_eq!(unsent.take().unwrap().get("log.SIM"), Some(&3));
        assert_eq!(unsent.take(), None);
        assert_eq!(metrics.events_dropped.get(), 3);
        let ev = rx.recv().unwrap();
        assert_eq!((ev.topic.as_str(), ev.kind), ("log.SIM", "log"));
        let log: Log = rmp_serde::from_slice(&ev.body).unwrap();
        assert_eq!(log.msg, "hello");
    }

    #[test]
    fn state_changes_set_the_gauge() {
        let metrics = Arc::new(WorkerMetrics::new());
        let sink = EventSink::discard(Some(metrics.clone()));
        sink.connection_state("SIM", ConnectionState::Reconnecting);
        assert_eq!(metrics.gateway_state.with_label_values(&["SIM"]).get(), 2);
        sink.connection_state("SIM", ConnectionState::Connected);
        assert_eq!(metrics.gateway_state.with_label_values(&["SIM"]).get(), 1);
    }
}
