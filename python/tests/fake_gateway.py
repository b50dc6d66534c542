"""A small fake exchange as a vn.py BaseGateway, for hosting tests (`FAKE`)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from vnpy.event import EventEngine
from vnpy.trader.constant import Exchange, Interval, Product, Status
from vnpy.trader.gateway import BaseGateway
from vnpy.trader.object import (
    AccountData,
    BarData,
    CancelRequest,
    ContractData,
    HistoryRequest,
    OrderData,
    OrderRequest,
    SubscribeRequest,
    TickData,
    TradeData,
)


class FakeGateway(BaseGateway):
    """Fills buy orders priced at or above 100 at once; others rest until cancelled."""

    default_name = "FAKE"
    default_setting: dict[str, Any] = {"account": "fake1"}  # noqa: RUF012
    exchanges = [Exchange.CFFEX]  # noqa: RUF012

    def __init__(self, event_engine: EventEngine, gateway_name: str) -> None:
        super().__init__(event_engine, gateway_name)
        self._ids = itertools.count(1)
        self.orders: dict[str, OrderData] = {}

    def connect(self, setting: dict[str, Any]) -> None:
        self.on_account(
            AccountData(
                accountid=setting.get("account", "fake1"),
                balance=1e6,
                gateway_name=self.gateway_name,
            )
        )
        for sym in ("IF2412", "IH2412"):
            self.on_contract(
                ContractData(
                    symbol=sym,
                    exchange=Exchange.CFFEX,
                    name=sym,
                    product=Product.FUTURES,
                    size=300,
                    pricetick=0.2,
                    history_data=True,
                    gateway_name=self.gateway_name,
                )
            )

    def close(self) -> None:
        pass

    def subscribe(self, req: SubscribeRequest) -> None:
        self.on_tick(
            TickData(
                symbol=req.symbol,
                exchange=req.exchange,
                datetime=datetime.now().astimezone(),
                last_price=100.0,
                bid_price_1=99.8,
                ask_price_1=100.2,
                gateway_name=self.gateway_name,
            )
        )

    def send_order(self, req: OrderRequest) -> str:
        order = req.create_order_data(f"F{next(self._ids)}", self.gateway_name)
        order.status = Status.NOTTRADED
        self.orders[order.orderid] = order
        self.on_order(order)
        if req.price >= 100:
            self.on_trade(
                TradeData(
                    symbol=req.symbol,
                    exchange=req.exchange,
                    orderid=order.orderid,
                    tradeid=order.orderid,
                    direction=req.direction,
                    price=req.price,
                    volume=req.volume,
                    gateway_name=self.gateway_name,
                )
            )
            order.traded, order.status = req.volume, Status.ALLTRADED
            self.on_order(order)
        return order.vt_orderid

    def cancel_order(self, req: CancelRequest) -> None:
        order = self.orders[req.orderid]
        if order.is_active():
            order.status = Status.CANCELLED
            self.on_order(order)

    def query_account(self) -> None:
        pass

    def query_position(self) -> None:
        pass

    def query_history(self, req: HistoryRequest) -> list[BarData]:
        return [
            BarData(
                symbol=req.symbol,
                exchange=req.exchange,
                datetime=req.start + timedelta(minutes=i),
                interval=Interval.MINUTE,
                open_price=100,
                high_price=101,
                low_price=99,
                close_price=100 + i,
                gateway_name=self.gateway_name,
            )
            for i in range(3)
        ]
