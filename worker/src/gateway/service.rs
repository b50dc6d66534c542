//! [`GatewayService`]: serves a [`Gateway`] as a worker [`Handler`]. It decodes the body as
//! a [`GatewayRequest`], calls the gateway and encodes the reply as a MessagePack map with
//! field names. Every order goes through [`GatewayService::send_order`], the one place a
//! pre-trade risk stage will sit.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tradeplex_proto::model::{GatewayRequest, Order, OrderRequest, Status};

use super::{ConnectionState, Gateway, GatewayError};
use crate::handler::{Handler, HandlerError, Request};
use crate::metrics::WorkerMetrics;

/// A gateway served as a worker service (service name = gateway name).
pub struct GatewayService {
    gateway: Arc<dyn Gateway>,
    metrics: Option<Arc<WorkerMetrics>>,
}

/// Just the `op` field of a body, to offer non-standard operations to the gateway.
#[derive(Deserialize)]
struct OpOnly {
    op: String,
}

impl GatewayService {
    /// Serves `gateway`, counting orders and its state in `metrics` when given.
    pub fn new(gateway: Arc<dyn Gateway>, metrics: Option<Arc<WorkerMetrics>>) -> GatewayService {
        GatewayService { gateway, metrics }
    }

    /// The gateway served.
    pub fn gateway(&self) -> &Arc<dyn Gateway> {
        &self.gateway
    }

    /// Executes one decoded request and encodes its reply.
    pub fn execute(&self, req: &GatewayRequest) -> Result<Vec<u8>, GatewayError> {
        let g = &self.gateway;
        match req {
            GatewayRequest::Subscribe(r) => encode(&g.subscribe(r)?),
            GatewayRequest::SendOrder(r) => encode(&self.send_order(r)?),
            GatewayRequest::CancelOrder(r) => encode(&g.cancel_order(r)?),
            GatewayRequest::QueryAccount { account } => encode(&g.query_account(account)?),
            GatewayRequest::QueryPosition { account } => encode(&g.query_position(account)?),
            GatewayRequest::QueryOrder { order_id } => encode(&g.query_order(order_id)?),
            GatewayRequest::QueryOrders { account } => encode(&g.query_orders(account)?),
            GatewayRequest::QueryTrades { account } => encode(&g.query_trades(account)?),
            GatewayRequest::QueryContracts => encode(&g.query_contracts()?),
            GatewayRequest::QueryContract(r) => encode(&g.query_contract(r)?),
            GatewayRequest::QueryTick(r) => encode(&g.query_tick(r)?),
            GatewayRequest::QueryHistory(r) => encode(&g.query_history(r)?),
        }
    }

    /// The order path: every order reaches the gateway through here and nowhere else.
    ///
    /// The shared pre-trade risk stage (per-account limits, kill switch) sits earlier, in
    /// the broker's order path (docs/risk.md): what is checked here is this gateway's own.
    pub fn send_order(&self, req: &OrderRequest) -> Result<Order, GatewayError> {
        // Checked here as well as by the executor: the gateway may have dropped since.
        let state = self.gateway.state();
        if state != ConnectionState::Connected {
            return Err(GatewayError::Unavailable(format!(
                "{} is {state}; order not sent",
                self.gateway.name()
            )));
        }
        let order = self.gateway.send_order(req)?;
        if let Some(m) = &self.metrics {
            if order.status != Status::Rejected {
                m.orders
                    .with_label_values(&[self.gateway.name(), "sent"])
                    .inc();
            }
        }
        Ok(order)
    }

    fn handle_body(&self, body: &[u8]) -> Result<Vec<u8>, GatewayError> {
        match rmp_serde::from_slice::<GatewayRequest>(body) {
            Ok(req) => self.execute(&req),
            // Not a standard operation: maybe one of the gateway's own (e.g. `sim_disconnect`).
            // The standard operations are decoded first so no gateway can shadow them.
            Err(e) => {
                let op = rmp_serde::from_slice::<OpOnly>(body).ok().map(|o| o.op);
                if let Some(r) = op.and_then(|op| self.gateway.extension(&op, body)) {
                    return r;
                }
                Err(GatewayError::Invalid(format!(
                    "not a {} request: {e}",
                    self.gateway.name()
                )))
            }
        }
    }
}

fn encode<T: Serialize>(reply: &T) -> Result<Vec<u8>, GatewayError> {
    rmp_serde::to_vec_named(reply)
        .map_err(|e| GatewayError::Failed(format!("reply not encodable: {e}")))
}

impl Handler for GatewayService {
    fn handle(&self, req: &Request) -> Result<Vec<u8>, HandlerError> {
        self.handle_body(&req.body).map_err(HandlerError::from)
    }

    /// Asks the gateway about the body's `op`; a body that does not even name one is
    /// answered inline too (its `bad_request` costs nothing).
    fn runs_inline(&self, req: &Request) -> bool {
        match rmp_serde::from_slice::<OpOnly>(&req.body) {
            Ok(o) => self.gateway.runs_inline(&o.op),
            Err(_) => true,
        }
    }

    fn available(&self) -> bool {
        let state = self.gateway.state();
        if let Some(m) = &self.metrics {
            m.gateway_state
                .with_label_values(&[self.gateway.name()])
                .set(state.gauge());
        }
        state == ConnectionState::Connected
    }
}
