//! Typed trading calls on a gateway service (e.g. `SIM`), with the routing each needs:
//! orders and account queries carry the account as affinity key (an account lives on one
//! gateway session), cancels and order queries target the worker named in the order id,
//! market-data subscriptions keep one worker per symbol.

use tradeplex_proto::model::{
    Account, Bar, CancelRequest, Contract, GatewayRequest, HistoryRequest, Order, OrderId,
    OrderRequest, Position, SubscribeRequest, SymbolRequest, Tick, Trade,
};

use crate::{CallOptions, Client, ClientError};

fn account_key(account: &str) -> String {
    format!("acct.{account}")
}

fn target_of(order_id: &OrderId) -> Result<(String, CallOptions), ClientError> {
    let gateway = order_id
        .gateway()
        .ok_or_else(|| ClientError::Encode(format!("order id {order_id} names no gateway")))?;
    let worker = order_id
        .worker()
        .ok_or_else(|| ClientError::Encode(format!("order id {order_id} names no worker")))?;
    Ok((gateway.to_string(), CallOptions::command().target(worker)))
}

impl Client {
    fn gateway_call<T: serde::de::DeserializeOwned>(
        &self,
        gateway: &str,
        req: &GatewayRequest,
        mut opts: CallOptions,
    ) -> Result<T, ClientError> {
        opts.idempotent = req.idempotent();
        self.call_typed(gateway, req, opts)
    }

    /// Starts ticks for `symbol` on `gateway`; returns its contract.
    pub fn subscribe(&self, gateway: &str, symbol: &str) -> Result<Contract, ClientError> {
        let req = GatewayRequest::Subscribe(SubscribeRequest {
            symbol: symbol.to_string(),
            exchange: String::new(),
        });
        self.gateway_call(
            gateway,
            &req,
            CallOptions::default().affinity(format!("md.{symbol}")),
        )
    }

    /// Places an order (never re-sent: on `worker_lost` query it by id).
    pub fn send_order(&self, gateway: &str, req: OrderRequest) -> Result<Order, ClientError> {
        let key = account_key(&req.account);
        self.gateway_call(
            gateway,
            &GatewayRequest::SendOrder(req),
            CallOptions::default().affinity(key),
        )
    }

    /// A basket of orders sent at once ([`Client::send_many`]: in as few BATCH messages
    /// as the protocol allows, each with its account's affinity), then each answer waited
    /// for: one result per request, in order, each as [`Client::send_order`] would give
    /// it (an order is never re-sent; a `timeout` or `worker_lost` is settled by a query).
    /// The outer error: the basket could not be built or sent, and nothing was.
    pub fn send_orders(
        &self,
        gateway: &str,
        reqs: Vec<OrderRequest>,
    ) -> Result<Vec<Result<Order, ClientError>>, ClientError> {
        let mut calls = Vec::with_capacity(reqs.len());
        for req in reqs {
            let opts = CallOptions::default().affinity(account_key(&req.account));
            let body = crate::encode_body(&GatewayRequest::SendOrder(req))?;
            calls.push((gateway, body, opts));
        }
        let pending = self.send_many(calls)?;
        Ok(pending.into_iter().map(|p| p.wait()?.decode()).collect())
    }

    /// Cancels an order at the worker that placed it.
    pub fn cancel_order(&self, order_id: &OrderId) -> Result<Order, ClientError> {
        let (gateway, opts) = target_of(order_id)?;
        let req = GatewayRequest::CancelOrder(CancelRequest {
            order_id: order_id.clone(),
            symbol: String::new(),
            exchange: String::new(),
        });
        self.gateway_call(&gateway, &req, opts)
    }

    /// One order's current state, from the worker that placed it.
    pub fn query_order(&self, order_id: &OrderId) -> Result<Order, ClientError> {
        let (gateway, opts) = target_of(order_id)?;
        self.gateway_call(
            &gateway,
            &GatewayRequest::QueryOrder {
                order_id: order_id.clone(),
            },
            opts,
        )
    }

    /// Active orders of an account ("" = the gateway's default account(s)).
    pub fn query_orders(&self, gateway: &str, account: &str) -> Result<Vec<Order>, ClientError> {
        let req = GatewayRequest::QueryOrders {
            account: account.to_string(),
        };
        self.gateway_call(
            gateway,
            &req,
            CallOptions::default().affinity(account_key(account)),
        )
    }

    /// Account funds.
    pub fn query_account(&self, gateway: &str, account: &str) -> Result<Vec<Account>, ClientError> {
        let req = GatewayRequest::QueryAccount {
            account: account.to_string(),
        };
        self.gateway_call(
            gateway,
            &req,
            CallOptions::default().affinity(account_key(account)),
        )
    }

    /// Positions.
    pub fn query_position(
        &self,
        gateway: &str,
        account: &str,
    ) -> Result<Vec<Position>, ClientError> {
        let req = GatewayRequest::QueryPosition {
            account: account.to_string(),
        };
        self.gateway_call(
            gateway,
            &req,
            CallOptions::default().affinity(account_key(account)),
        )
    }

    /// Today's trades of an account ("" = all), oldest first — what a strategy needs to
    /// recover after a restart. Affinity `acct.<account>`, like the account's orders.
    pub fn query_trades(&self, gateway: &str, account: &str) -> Result<Vec<Trade>, ClientError> {
        let req = GatewayRequest::QueryTrades {
            account: account.to_string(),
        };
        self.gateway_call(
            gateway,
            &req,
            CallOptions::default().affinity(account_key(account)),
        )
    }

    /// One contract; `exchange` "" = the gateway's only contract with that symbol
    /// (`bad_request` when it lists the symbol on several exchanges).
    pub fn query_contract(
        &self,
        gateway: &str,
        symbol: &str,
        exchange: &str,
    ) -> Result<Contract, ClientError> {
        let req = GatewayRequest::QueryContract(SymbolRequest {
            symbol: symbol.to_string(),
            exchange: exchange.to_string(),
        });
        self.gateway_call(gateway, &req, CallOptions::default())
    }

    /// The last tick the gateway has for `symbol` (`worker_error` "no tick for …" before
    /// the first). Affinity `md.<symbol>`, so it asks the worker that `subscribe` reached.
    pub fn query_tick(
        &self,
        gateway: &str,
        symbol: &str,
        exchange: &str,
    ) -> Result<Tick, ClientError> {
        let req = GatewayRequest::QueryTick(SymbolRequest {
            symbol: symbol.to_string(),
            exchange: exchange.to_string(),
        });
        self.gateway_call(
            gateway,
            &req,
            CallOptions::default().affinity(format!("md.{symbol}")),
        )
    }

    /// Tradable contracts.
    pub fn query_contracts(&self, gateway: &str) -> Result<Vec<Contract>, ClientError> {
        self.gateway_call(
            gateway,
            &GatewayRequest::QueryContracts,
            CallOptions::default(),
        )
    }

    /// Historical bars.
    pub fn query_history(
        &self,
        gateway: &str,
        req: HistoryRequest,
    ) -> Result<Vec<Bar>, ClientError> {
        self.gateway_call(
            gateway,
            &GatewayRequest::QueryHistory(req),
            CallOptions::default(),
        )
    }
}
