"""A small fake exchange as a vn.py BaseGateway, for hosting tests (`FAKE`).

Fills buy orders priced at or above 100 at once; others rest until cancelled. Like vnpy_ctp
it has a trading and a market-data session and says in its log when one drops or logs in
again (`drop` / `restore`), or reports it explicitly (setting ``"explicit": true``).
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from vnpy.event import EventEngine
from vnpy.trader.constant import Direction, Exchange, Interval, OptionType, Product, Status
from vnpy.trader.gateway import BaseGateway
from vnpy.trader.object import (
    AccountData,
    BarData,
    CancelRequest,
    ContractData,
    HistoryRequest,
    OrderData,
    OrderRequest,
    PositionData,
    SubscribeRequest,
    TickData,
    TradeData,
)

from tradeplex.vnpy.connection import report_connection

TD = "交易服务器"  # vnpy_ctp's names of its two sessions, as its log lines start
MD = "行情服务器"


def contracts(gateway_name: str) -> list[ContractData]:
    """IF2412/IH2412 (CFFEX), XY2412 on both CFFEX and SHFE (ambiguous without an
    exchange), and one CFFEX option."""
    out = [
        ContractData(
            symbol=sym,
            exchange=ex,
            name=f"{sym} future",
            product=Product.FUTURES,
            size=300,
            pricetick=0.2,
            max_volume=20,
            net_position=ex == Exchange.SHFE,
            history_data=True,
            gateway_name=gateway_name,
        )
        for sym, ex in (
            ("IF2412", Exchange.CFFEX),
            ("IH2412", Exchange.CFFEX),
            ("XY2412", Exchange.CFFEX),
            ("XY2412", Exchange.SHFE),
        )
    ]
    out.append(
        ContractData(
            symbol="IO2412-C-4000",
            exchange=Exchange.CFFEX,
            name="IO call 4000",
            product=Product.OPTION,
            size=100,
            pricetick=0.2,
            stop_supported=True,
            option_strike=4000.0,
            option_underlying="IF2412.CFFEX",
            option_type=OptionType.CALL,
            option_listed=datetime(2024, 1, 2).astimezone(),
            option_expiry=datetime(2024, 12, 20).astimezone(),
            option_portfolio="IO",
            option_index="4000",
            gateway_name=gateway_name,
        )
    )
    return out


class FakeGateway(BaseGateway):
    """The fake exchange; `sent` counts the orders that reached it."""

    default_name = "FAKE"
    default_setting: dict[str, Any] = {"account": "fake1", "explicit": False}  # noqa: RUF012
    exchanges = [Exchange.CFFEX, Exchange.SHFE]  # noqa: RUF012

    def __init__(self, event_engine: EventEngine, gateway_name: str) -> None:
        super().__init__(event_engine, gateway_name)
        self._ids = itertools.count(1)
        self.orders: dict[str, OrderData] = {}
        self.positions: dict[str, PositionData] = {}
        self.sent = 0
        self.subscribed: list[str] = []
        self.explicit = False

    def connect(self, setting: dict[str, Any]) -> None:
        self.explicit = bool(setting.get("explicit", False))
        self.accountid = str(setting.get("account", "fake1"))
        self.restore(log_in=False)
        self.on_account(
            AccountData(accountid=self.accountid, balance=1e6, gateway_name=self.gateway_name)
        )
        for c in contracts(self.gateway_name):
            self.on_contract(c)
        self.write_log("合约信息查询成功")

    def drop(self, part: str = TD) -> None:
        """A session drops, as CTP reports it (or explicitly)."""
        if self.explicit:
            report_connection(self, False, part)
        else:
            self.write_log(f"{part}连接断开，原因4097")

    def restore(self, part: str = TD, log_in: bool = True) -> None:
        """A session reconnects: front connected, then logged in."""
        if self.explicit:
            report_connection(self, True, part)
            return
        self.write_log(f"{part}连接成功")
        if log_in:
            self.write_log(f"{part}登录成功")

    def close(self) -> None:
        pass

    def subscribe(self, req: SubscribeRequest) -> None:
        self.subscribed.append(req.vt_symbol)
        now = datetime.now().astimezone()
        self.on_tick(
            TickData(
                symbol=req.symbol,
                exchange=req.exchange,
                datetime=now,
                name=f"{req.symbol} future",
                last_price=100.0,
                limit_up=110.0,
                limit_down=90.0,
                pre_close=100.0,
                bid_price_1=99.8,
                ask_price_1=100.2,
                bid_volume_1=3,
                ask_volume_1=4,
                localtime=now,
                gateway_name=self.gateway_name,
            )
        )

    def send_order(self, req: OrderRequest) -> str:
        self.sent += 1
        order = req.create_order_data(f"F{next(self._ids)}", self.gateway_name)
        order.status = Status.NOTTRADED
        self.orders[order.orderid] = order
        self.on_order(order)
        if req.price >= 100 and req.direction == Direction.LONG:
            self.on_trade(
                TradeData(
                    symbol=req.symbol,
                    exchange=req.exchange,
                    orderid=order.orderid,
                    tradeid=order.orderid,
                    direction=req.direction,
                    offset=req.offset,
                    price=req.price,
                    volume=req.volume,
                    datetime=datetime.now().astimezone(),
                    gateway_name=self.gateway_name,
                )
            )
            order.traded, order.status = req.volume, Status.ALLTRADED
            self.on_order(order)
            pos = self.positions.setdefault(
                req.vt_symbol,
                PositionData(
                    symbol=req.symbol,
                    exchange=req.exchange,
                    direction=Direction.LONG,
                    gateway_name=self.gateway_name,
                ),
            )
            pos.price = (pos.price * pos.volume + req.price * req.volume) / (
                pos.volume + req.volume
            )
            pos.volume += req.volume
            self.on_position(pos)
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
