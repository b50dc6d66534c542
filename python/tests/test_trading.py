"""Typed trading helpers against the Rust SIM gateway, and its order events."""

from __future__ import annotations

import time

from conftest import Shared, wait_for

import tradeplex
from tradeplex import Direction, OrderType, Status


def _position(c: tradeplex.Client, symbol: str) -> float:
    return sum(
        p.volume for p in c.query_position("SIM") if p.symbol == symbol and p.direction == "long"
    )


def test_subscribe_returns_the_contract_and_ticks_flow(shared: Shared) -> None:
    with shared.client.subscriber("tick.SIM.IF2412") as sub:
        contract = shared.client.subscribe("SIM", "IF2412")
        assert isinstance(contract, tradeplex.Contract)
        assert contract.symbol == "IF2412" and contract.pricetick > 0
        ev = sub.recv(5)
        assert ev is not None and ev.kind == "tick" and ev.source == shared.worker.id
        tick = ev.data()
        assert isinstance(tick, tradeplex.Tick) and tick.last_price > 0
        assert len(tick.bid_price) == 5


def test_market_order_fills_and_reports_events(shared: Shared) -> None:
    c = shared.client
    c.subscribe("SIM", "AAPL")
    before = _position(c, "AAPL")
    with c.subscriber(["order.", "trade."]) as sub:
        assert sub.wait_connected(5)
        order = c.send_order(
            "SIM", symbol="AAPL", direction=Direction.LONG, volume=2, order_type="market"
        )
        assert order.order_id.startswith(f"SIM.{shared.worker.id}.")
        final: tradeplex.Order | None = None
        traded = 0.0  # a market order may fill in several trades, level by level
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (final and traded == 2):
            ev = sub.recv(1)
            obj = None if ev is None else ev.data()
            if isinstance(obj, tradeplex.Order) and obj.order_id == order.order_id and obj.is_final:
                final = obj
            if isinstance(obj, tradeplex.Trade) and obj.order_id == order.order_id:
                traded += obj.volume
        assert final is not None and final.status == Status.ALL_TRADED
        assert traded == 2
    assert c.query_order(order.order_id).status == Status.ALL_TRADED
    wait_for(lambda: _position(c, "AAPL") == before + 2, 5, "position updated")


def test_resting_limit_order_is_cancelled_at_its_worker(shared: Shared) -> None:
    c = shared.client
    contract = c.subscribe("SIM", "rb2501")
    assert contract.exchange == "SHFE"
    # A buy at the day's lowest allowed price rests (SHFE has price limits: below the
    # band the order would be rejected).
    tick = c.query_tick("SIM", "rb2501")
    req = tradeplex.OrderRequest(
        symbol="rb2501",
        direction=Direction.LONG,
        volume=1,
        price=tick.limit_down,
        order_type=OrderType.LIMIT,
    )
    order = c.send_order("SIM", req)
    assert order.status in (Status.SUBMITTING, Status.NOT_TRADED)
    assert order.order_id in {o.order_id for o in c.query_orders("SIM")}
    assert c.find_order("SIM", req.reference) is not None
    cancelled = c.cancel_order(order.order_id)
    assert cancelled.status == Status.CANCELLED and cancelled.is_final
    assert c.query_order(order.order_id).status == Status.CANCELLED
    assert order.order_id not in {o.order_id for o in c.query_orders("SIM")}


def test_cancel_of_an_unknown_order_is_a_worker_error(shared: Shared) -> None:
    bogus = f"SIM.{shared.worker.id}.999999"
    try:
        shared.client.cancel_order(bogus)
    except tradeplex.CallError as e:
        assert e.code == "worker_error" and e.worker == shared.worker.id
    else:
        raise AssertionError("cancel of an unknown order succeeded")


def test_queries_return_typed_objects(shared: Shared) -> None:
    c = shared.client
    accounts = c.query_account("SIM")
    assert accounts and isinstance(accounts[0], tradeplex.Account)
    assert accounts[0].balance > 0
    assert all(isinstance(p, tradeplex.Position) for p in c.query_position("SIM"))
    contracts = {k.symbol: k for k in c.query_contracts("SIM")}
    assert {"IF2412", "rb2501", "AAPL", "BTCUSDT"} <= set(contracts)
    now = time.time_ns()
    bars = c.query_history(
        "SIM",
        tradeplex.HistoryRequest("IF2412", tradeplex.Interval.MINUTE, now - 3_600_000_000_000),
    )
    assert bars and all(isinstance(b, tradeplex.Bar) for b in bars)
    assert bars[0].datetime_ns < bars[-1].datetime_ns


def test_order_on_an_unknown_symbol_is_rejected(shared: Shared) -> None:
    o = shared.client.send_order("SIM", symbol="NOPE", direction="long", volume=1, price=1)
    assert o.status == Status.REJECTED and o.reason


def test_vnpy_exchanges_price_limits_and_the_one_object_queries(shared: Shared) -> None:
    c = shared.client
    exchanges = {k.symbol: k.exchange for k in c.query_contracts("SIM")}
    assert exchanges == {"IF2412": "CFFEX", "rb2501": "SHFE", "AAPL": "NASDAQ", "BTCUSDT": "GLOBAL"}
    k = c.query_contract("SIM", "IF2412")
    assert k.exchange == "CFFEX" and k.history_data and not k.stop_supported
    assert c.query_contract("SIM", "IF2412", "CFFEX") == k
    try:
        c.query_contract("SIM", "IF2412", "SIM")
    except tradeplex.CallError as e:
        assert e.code == "worker_error" and "unknown exchange" in e.message
    else:
        raise AssertionError("SIM is no longer an exchange")
    c.subscribe("SIM", "IF2412")
    tick = c.query_tick("SIM", "IF2412")
    assert tick.exchange == "CFFEX" and tick.name == "CSI 300 index future"
    assert 0 < tick.limit_down < tick.last_price < tick.limit_up
    up = c.send_order(
        "SIM", symbol="IF2412", exchange="CFFEX", direction="long", volume=1, price=tick.limit_up
    )
    assert up.status == Status.ALL_TRADED and up.exchange == "CFFEX"
    above = c.send_order(
        "SIM", symbol="IF2412", direction="long", volume=1, price=tick.limit_up + k.pricetick
    )
    assert above.status == Status.REJECTED and (above.reason or "").startswith("price outside")
    trades = [t for t in c.query_trades("SIM") if t.order_id == up.order_id]
    assert trades and all(isinstance(t, tradeplex.Trade) and t.exchange == "CFFEX" for t in trades)
    assert sum(t.volume for t in trades) == 1


def test_a_basket_of_orders_gives_each_its_own_answer(shared: Shared) -> None:
    c = shared.client
    c.subscribe("SIM", "rb2501")
    tick = c.query_tick("SIM", "rb2501")
    resting = [
        tradeplex.OrderRequest(
            symbol="rb2501", direction=Direction.LONG, volume=1 + i, price=tick.limit_down
        )
        for i in range(4)
    ]
    unknown = tradeplex.OrderRequest(symbol="NOPE", direction=Direction.LONG, volume=1, price=1)
    futures = c.send_orders_async("SIM", [*resting, unknown])
    orders = [f.result(10) for f in futures]
    assert [o.volume for o in orders[:4]] == [1, 2, 3, 4]
    assert all(o.status in (Status.SUBMITTING, Status.NOT_TRADED) for o in orders[:4])
    assert orders[4].status == Status.REJECTED and orders[4].reason
    ids = {o.order_id for o in orders[:4]}
    assert len(ids) == 4 and ids <= {o.order_id for o in c.query_orders("SIM")}
    # Each request got its reference, and each is found by it.
    for req in resting:
        found = c.find_order("SIM", req.reference)
        assert found is not None and found.order_id in ids
    for order_id in ids:
        assert c.cancel_order(order_id).status == Status.CANCELLED
