"""`TradeplexGateway`: a vn.py `BaseGateway` whose exchange is a Tradeplex cluster.

``main_engine.add_gateway(TradeplexGateway)`` then ``main_engine.connect(setting,
"TRADEPLEX")``: every vn.py app then trades through the cluster's workers.

Threads (all daemons, so `MainEngine.close()` and interpreter exit never wait on them):

- the **task thread** is the one writer of the gateway's state and the one place that
  turns wire objects into vn.py objects: events, call answers and timer work are queued
  to it in order (vn.py callbacks never run on the client's I/O thread);
- the **event thread** reads the `tradeplex.Subscriber` and queues each event;
- the **timer thread** does the blocking work: the initial load (contracts, accounts,
  positions, active orders, trades — in that order), the periodic account and position
  refresh, and a resync of orders and trades after the event stream reconnected or lost
  events; it hands what it got to the task thread.

`send_order` and `cancel_order` run on the caller's thread (vn.py's event thread for
CtaStrategy); the order table they share with the task thread sits behind one lock.
"""

from __future__ import annotations

import collections
import copy
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from vnpy.event import EventEngine
from vnpy.trader.constant import Exchange, Offset, OrderType, Product, Status
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

import tradeplex
from tradeplex import model
from tradeplex.trading import account_key

from . import mapping as m

log = logging.getLogger("tradeplex.vnpy.gateway")

#: How often accounts and positions are refreshed (vn.py apps expect it), seconds.
QUERY_INTERVAL_S = 2.0
#: The timer thread's period: unknown orders, held trades and stale subscriptions.
TIMER_S = 0.5
#: Time to live of the gateway's calls (orders: then outcome unknown), ms.
CALL_TIMEOUT_MS = 5000
#: Time to live of a periodic refresh query, ms (short: the timer thread waits for it).
REFRESH_TIMEOUT_MS = 2000
#: Bars asked for in one `query_history` request (gateways cap it; SIM at 4000).
HISTORY_PAGE_BARS = 3000
#: An order whose outcome is unknown is queried this often ...
RESOLVE_EVERY_S = 1.0
#: ... for this long; then it stays as last known (logged), never re-sent.
RESOLVE_FOR_S = 60.0
#: A trade for an order id not yet mapped waits this long for the mapping while one of
#: this session's orders is unanswered (its fill may overtake the order's reply).
HOLD_TRADE_S = 10.0
#: No tick for a subscribed symbol for this long: send the `subscribe` op again (the
#: worker holding the subscription may have died); the wait doubles up to the maximum.
STALE_TICKS_S = 10.0
STALE_TICKS_MAX_S = 300.0
#: Bounds of the gateway's tables (network input must not grow memory without end).
MAX_ORDERS = 100_000
MAX_TRADES = 100_000
MAX_HELD_TRADES = 10_000
MAX_TASKS = 100_000
MAX_RESYNC_ORDERS = 1000
MAX_EXCHANGES = 100_000
INTERVAL_NS = {
    "minute": 60 * 10**9,
    "hour": 3600 * 10**9,
    "daily": 86400 * 10**9,
    "weekly": 7 * 86400 * 10**9,
}
#: Answers after which an order may be live: settled by query, never re-sent.
#: ``bad_reply``: the worker answered, so the order reached it.
UNKNOWN_CODES = frozenset({"worker_lost", "timeout", "bad_reply"})


class _Tasks:
    """One daemon thread running queued callables in order."""

    def __init__(self, name: str) -> None:
        self._queue: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._cv = threading.Condition()
        self._stopped = False
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any, wait: bool = False) -> None:
        """Queues `fn(*args)`. With `wait`, blocks while the queue is full (the event thread:
        back-pressure goes to the subscriber's own bounded queue); call answers never wait
        (they are bounded by the calls in flight)."""
        with self._cv:
            while wait and len(self._queue) >= MAX_TASKS and not self._stopped:
                self._cv.wait(0.1)
            if self._stopped:
                return
            self._queue.append((fn, args))
            self._cv.notify_all()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._queue.clear()
            self._cv.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                fn, args = self._queue.popleft()
                self._cv.notify_all()
            try:
                fn(*args)
            except Exception:  # one bad object must not stop the gateway
                self.errors += 1
                log.exception("gateway task failed")


@dataclass
class _Tracked:
    """One order the gateway has reported to vn.py."""

    orderid: str  # vn.py's orderid
    mine: bool  # placed by this session (orderid is local, not derived from the wire id)
    wire_id: str | None = None
    progress: tuple[float, int] = (-1.0, -1)  # (traded, stage) last pushed
    final: bool = False
    reference: str = ""  # vn.py's reference (OrderRequest.reference)
    template: OrderData | None = None  # ours: the order as first pushed
    cancel_wanted: bool = False  # cancel asked for before the wire id was known
    unknown_until: float | None = None  # outcome unknown: query it until then
    next_try: float = 0.0
    resolving: bool = False


@dataclass
class _Sub:
    """A symbol vn.py subscribed to."""

    wire_exchange: str
    last: float  # monotonic time of the last tick (or of the subscribe)
    wait: float = STALE_TICKS_S


class TradeplexGateway(BaseGateway):
    """vn.py gateway over a Tradeplex cluster (successor of vn.py's RpcGateway)."""

    default_name: str = "TRADEPLEX"
    default_setting: ClassVar[dict[str, str | int | float | bool]] = {  # type: ignore[misc]
        "broker": "tcp://127.0.0.1:5555",
        "events": "tcp://127.0.0.1:5558",
        "service": "SIM",
        "account": "",
        "curve_server_key": "",
        "curve_key_file": "",
        "client_name": "",
    }
    exchanges: ClassVar[list[Exchange]] = list(Exchange)  # type: ignore[misc]

    def __init__(self, event_engine: EventEngine, gateway_name: str = "TRADEPLEX") -> None:
        super().__init__(event_engine, gateway_name)
        self.client: tradeplex.Client | None = None
        self.subscriber: tradeplex.Subscriber | None = None
        self.service = "SIM"
        self.account = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tasks: _Tasks | None = None
        self._session = uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        # Guarded by _lock (shared with send_order / cancel_order on callers' threads):
        self._orders: collections.OrderedDict[str, _Tracked] = collections.OrderedDict()
        self._by_wire: dict[str, str] = {}
        self._unmapped: set[str] = set()  # our orders with no wire id yet
        self._unknown: set[str] = set()  # our orders whose outcome is being settled
        self._held: collections.deque[tuple[float, model.Trade]] = collections.deque()
        self._trades_seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Task thread only:
        self._wire_exchange: dict[tuple[str, Exchange], str] = {}
        self._contract_names: dict[tuple[str, str], str] = {}
        self._last_tick_ns: dict[tuple[str, str], int] = {}
        self._subs: dict[tuple[str, Exchange], _Sub] = {}
        self._tick_topics: set[str] = set()
        self._positions_held: set[tuple[str, str, str]] = set()
        self._account_worker: str | None = None
        # Timer thread only:
        self._loaded = False
        self._refresh_ok = True
        self._refresh_now = False
        #: Ticks dropped because another worker already delivered that exchange time.
        self.duplicate_ticks = 0
        #: Events dropped as not ours: another gateway, account or account worker.
        self.foreign_events = 0
        #: Event bodies that did not fit their type.
        self.bad_events = 0

    # --- connection ------------------------------------------------------------------

    def connect(self, setting: dict[str, Any]) -> None:
        """Connects the client and subscriber; the timer thread then pushes contracts,
        accounts, positions, active orders and trades, in that order."""
        if self.client is not None:
            self.write_log("already connected")
            return
        self.service = str(setting.get("service") or "SIM")
        self.account = str(setting.get("account") or "")
        server_key = str(setting.get("curve_server_key") or "") or None
        key_file = str(setting.get("curve_key_file") or "") or None
        client_name = str(setting.get("client_name") or "") or None
        broker = str(setting.get("broker") or self.default_setting["broker"])
        events = str(setting.get("events") or self.default_setting["events"])
        self.client = tradeplex.Client(
            broker,
            events,
            curve_server_key=server_key,
            curve_key_file=key_file,
            timeout_ms=CALL_TIMEOUT_MS,
            client_name=client_name,
        )
        # Exact account topics when an account is named; all accounts (filtered by the
        # worker that serves ours) for the default account "".
        suffix = self.account
        topics = [f"{k}.{suffix}" for k in ("order", "trade", "position", "account")]
        topics.append(f"log.{self.service}")
        # Orders and trades lost on the way (a full queue in the broker) are fetched
        # back from the broker's recent-event store rather than missed.
        self.subscriber = tradeplex.Subscriber(
            events,
            topics,
            curve_server_key=server_key,
            curve_key_file=key_file,
            repair=broker,
        )
        self._tasks = _Tasks("tpx-gw-tasks")
        for target, name in (
            (self._event_loop, "tpx-gw-events"),
            (self._timer_loop, "tpx-gw-timer"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.write_log(f"connecting to {self.service} through {broker} (events {events})")

    def close(self) -> None:
        """Stops the threads and closes the sockets (``LINGER 0``); returns promptly."""
        self._stop.set()
        self._wake.set()
        if self.subscriber is not None:
            self.subscriber.close()
        if self.client is not None:
            self.client.close()  # fails calls in flight with `closed`
        if self._tasks is not None:
            self._tasks.stop()
            self._tasks.join(1)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(1)

    def _submit(self, fn: Callable[..., None], *args: Any, wait: bool = False) -> None:
        if self._tasks is not None:
            self._tasks.submit(fn, *args, wait=wait)

    def _later(self, fut: Future[Any], then: Callable[[Any], None], what: str) -> None:
        """Runs `then(result)` on the task thread when `fut` succeeds; logs a failure."""

        def done(f: Future[Any]) -> None:
            try:
                then(f.result())
            except (tradeplex.CallError, tradeplex.ProtocolError) as e:
                if not self._stop.is_set():
                    self.write_log(f"{what} failed: {e}")

        fut.add_done_callback(lambda f: self._submit(done, f))

    # --- requests --------------------------------------------------------------------

    def _exchange_out(self, symbol: str, exchange: Exchange) -> str:
        return self._wire_exchange.get((symbol, exchange), exchange.value)

    def subscribe(self, req: SubscribeRequest) -> None:
        """Starts ticks for a symbol (topic ``tick.<service>.<symbol>``)."""
        if self.client is None or self.subscriber is None:
            return
        self._submit(self._subscribe, req.symbol, req.exchange)

    def _subscribe(self, symbol: str, exchange: Exchange) -> None:
        wire_exchange = self._exchange_out(symbol, exchange)
        topic = f"tick.{self.service}.{symbol}"
        if topic not in self._tick_topics and self.subscriber is not None:
            self._tick_topics.add(topic)
            self.subscriber.subscribe(topic)
        self._subs[(symbol, exchange)] = _Sub(wire_exchange, time.monotonic())
        self._send_subscribe(symbol, wire_exchange)

    def _send_subscribe(self, symbol: str, wire_exchange: str) -> None:
        if self.client is None:
            return
        fut = self.client.call_async(
            self.service,
            {"op": "subscribe", "symbol": symbol, "exchange": wire_exchange},
            idempotent=True,
            affinity=f"md.{symbol}",
        )
        self._later(fut, lambda r: None, f"subscribe {symbol}")

    def send_order(self, req: OrderRequest) -> str:
        """Returns the vt_orderid at once; the status follows as OrderData events.

        The vn.py orderid is local (``<session>x<n>``, no ``.``) and travels as the wire
        ``reference``, so events that overtake the reply find the order vn.py knows.
        """
        client = self.client
        if client is None:
            return ""
        local = f"{self._session}x{next(self._seq)}"
        order = req.create_order_data(local, self.gateway_name)
        order.datetime = datetime.now().astimezone()
        body = {
            "op": "send_order",
            "symbol": req.symbol,
            "exchange": self._exchange_out(req.symbol, req.exchange),
            "direction": m.DIRECTION_TO_WIRE[req.direction],
            "order_type": m.ORDER_TYPE_TO_WIRE[req.type],
            "volume": req.volume,
            "price": req.price,
            "offset": m.OFFSET_TO_WIRE[req.offset],
            "account": self.account,
            "reference": local,
        }
        with self._lock:
            t = _Tracked(
                local, True, progress=(0.0, 0), reference=req.reference, template=copy.copy(order)
            )
            self._remember(t)
            self._unmapped.add(local)
        self.on_order(order)
        fut = client.call_async(self.service, body, affinity=account_key(self.account))
        fut.add_done_callback(lambda f: self._submit(self._order_answered, local, f))
        return order.vt_orderid

    def _order_answered(self, local: str, fut: Future[Any]) -> None:
        err = fut.exception()
        if err is None:
            try:
                o = model.Order.from_wire(fut.result())
            except tradeplex.ProtocolError as e:
                self._start_resolving(local, f"unreadable reply: {e}")
                return
            with self._lock:
                t = self._orders.get(local)
                if t is not None and t.wire_id is None:
                    self._learn(t, o.order_id)
            self._push_order(o)
            return
        code = err.code if isinstance(err, tradeplex.CallError) else "error"
        if code in UNKNOWN_CODES:
            self._start_resolving(local, code)
            return
        # A definite refusal: never placed.
        with self._lock:
            t = self._orders.get(local)
            if t is None or t.template is None or t.progress[1] >= 3:
                return
            self._unmapped.discard(local)
            t.progress = (t.progress[0], 3)
            t.final = True
            rejected = copy.copy(t.template)
        rejected.status = Status.REJECTED
        rejected.datetime = datetime.now().astimezone()
        self.on_order(rejected)
        self.write_log(f"order {local} refused: {err}")
        self._release_held()

    def _start_resolving(self, local: str, why: str) -> None:
        with self._lock:
            t = self._orders.get(local)
            if t is None or t.final:
                return
            t.unknown_until = time.monotonic() + RESOLVE_FOR_S
            t.next_try = 0.0
            self._unknown.add(local)
        self.write_log(
            f"order {local}: outcome unknown ({why}); settling it by query, never re-sending it"
        )
        self._resolve_due()

    def _resolve_due(self) -> None:
        """Queries each unknown order that is due: by id when an event told us its id,
        else by reference among the account's active orders."""
        client = self.client
        if client is None:
            return
        now = time.monotonic()
        by_id: list[tuple[str, str]] = []
        by_ref: list[str] = []
        with self._lock:
            for local in list(self._unknown):
                t = self._orders.get(local)
                if t is None or t.unknown_until is None:
                    self._unknown.discard(local)
                    continue
                if now > t.unknown_until:
                    t.unknown_until = None
                    self._unknown.discard(local)
                    self._unmapped.discard(local)
                    self.write_log(
                        f"order {local}: outcome still unknown after {RESOLVE_FOR_S:.0f} s "
                        "(not among active orders, no event); left as last known, not re-sent"
                    )
                    continue
                if t.resolving or t.next_try > now:
                    continue
                t.resolving = True
                t.next_try = now + RESOLVE_EVERY_S
                if t.wire_id is not None:
                    by_id.append((local, t.wire_id))
                else:
                    by_ref.append(local)
        for local, wire_id in by_id:
            try:
                oid = model.OrderId.parse(wire_id)
            except ValueError:
                self._resolved_try(local)
                continue
            fut = client.call_async(
                oid.gateway,
                {"op": "query_order", "order_id": wire_id},
                idempotent=True,
                target=oid.worker,
            )
            fut.add_done_callback(functools.partial(self._query_order_done, local))
        if by_ref:
            fut = client.call_async(
                self.service,
                {"op": "query_orders", "account": self.account},
                idempotent=True,
                affinity=account_key(self.account),
            )
            fut.add_done_callback(lambda f: self._submit(self._on_query_orders, by_ref, f))

    def _query_order_done(self, local: str, fut: Future[Any]) -> None:
        self._submit(self._on_query_order, local, fut)

    def _resolved_try(self, local: str) -> None:
        with self._lock:
            t = self._orders.get(local)
            if t is not None:
                t.resolving = False

    def _on_query_order(self, local: str, fut: Future[Any]) -> None:
        self._resolved_try(local)
        try:
            o = model.Order.from_wire(fut.result())
        except (tradeplex.CallError, tradeplex.ProtocolError) as e:
            self.write_log(f"order {local}: query_order failed ({e}); trying again")
            return
        self._push_order(o)

    def _on_query_orders(self, locals_: list[str], fut: Future[Any]) -> None:
        for local in locals_:
            self._resolved_try(local)
        try:
            active = model.Order.list_from_wire(fut.result())
        except (tradeplex.CallError, tradeplex.ProtocolError) as e:
            self.write_log(f"query_orders failed ({e}); trying again")
            return
        wanted = set(locals_)
        for o in active:
            if o.reference in wanted:
                self._push_order(o)  # learns the wire id by its reference

    def wire_order_id(self, orderid: str) -> str | None:
        """The wire order id (``<gateway>.<worker>.<n>``) of a vn.py orderid, once known."""
        with self._lock:
            t = self._orders.get(orderid)
            return t.wire_id if t is not None else None

    def cancel_order(self, req: CancelRequest) -> None:
        """Cancels at the worker that placed the order (never re-sent); an order not yet
        acknowledged is cancelled as soon as its wire id is known."""
        with self._lock:
            t = self._orders.get(req.orderid)
            wire_id = t.wire_id if t is not None else None
            if t is not None and wire_id is None:
                if t.final:
                    self.write_log(f"cancel {req.orderid}: the order is final")
                    return
                t.cancel_wanted = True
                return
        if wire_id is None:
            try:
                wire_id = m.orderid_to_wire(req.orderid)
            except ValueError:
                self.write_log(f"cancel: unknown order {req.orderid}")
                return
        self._cancel_wire(wire_id)

    def _cancel_wire(self, wire_id: str) -> None:
        client = self.client
        if client is None:
            return
        try:
            oid = model.OrderId.parse(wire_id)
        except ValueError:
            self.write_log(f"cancel: {wire_id!r} is not a Tradeplex order id")
            return
        fut = client.call_async(
            oid.gateway, {"op": "cancel_order", "order_id": wire_id}, target=oid.worker
        )

        def answered(f: Future[Any]) -> None:
            try:
                self._push_order(model.Order.from_wire(f.result()))
            except tradeplex.CallError as e:
                self.write_log(f"cancel {wire_id} failed: {e}")
                if e.outcome_unknown:  # learn the outcome; a cancel is never re-sent either
                    q = client.call_async(
                        oid.gateway,
                        {"op": "query_order", "order_id": wire_id},
                        idempotent=True,
                        target=oid.worker,
                    )
                    self._later(
                        q, lambda r: self._push_order(model.Order.from_wire(r)), "query_order"
                    )
            except tradeplex.ProtocolError as e:
                self.write_log(f"cancel {wire_id}: unreadable reply: {e}")

        fut.add_done_callback(lambda f: self._submit(answered, f))

    def query_account(self) -> None:
        """Refreshes accounts and positions now (asynchronously; also every 2 s)."""
        self._refresh_now = True
        self._wake.set()

    def query_position(self) -> None:
        """Refreshes accounts and positions now (asynchronously; also every 2 s)."""
        self._refresh_now = True
        self._wake.set()

    def query_history(self, req: HistoryRequest) -> list[BarData]:
        """Bars from the gateway's history (blocking, as vn.py expects)."""
        client = self.client
        if client is None:
            return []
        interval = m.INTERVAL_TO_WIRE.get(req.interval) if req.interval else None
        interval = interval or "minute"
        end_ns = m.ns_from_datetime(req.end) or tradeplex.wire.now_ns()
        start_ns = m.ns_from_datetime(req.start)
        # Gateways cap the bars of one request (SIM: 4000) while CtaEngine asks for days
        # of minutes: ask page by page; pages share their edges, so keep one bar per time.
        # A tick "interval" is one request (its pages cannot be sized by time).
        step = HISTORY_PAGE_BARS * INTERVAL_NS[interval] if interval in INTERVAL_NS else None
        exchange = self._exchange_out(req.symbol, req.exchange)
        bars: dict[int, model.Bar] = {}
        while start_ns < end_ns:
            page_end = end_ns if step is None else min(start_ns + step, end_ns)
            body = {
                "op": "query_history",
                "symbol": req.symbol,
                "exchange": exchange,
                "interval": interval,
                "start_ns": start_ns,
                "end_ns": page_end,
            }
            try:
                page = model.Bar.list_from_wire(
                    client.call(self.service, body, idempotent=True, timeout_ms=30_000)
                )
            except (tradeplex.CallError, tradeplex.ProtocolError) as e:
                self.write_log(f"query_history {req.symbol}: {e}")
                return []
            bars.update((b.datetime_ns, b) for b in page)
            start_ns = page_end
        return [self._bar(bars[t], req) for t in sorted(bars)]

    # --- events ----------------------------------------------------------------------

    def _event_loop(self) -> None:
        s = self.subscriber
        assert s is not None
        for ev in s:
            try:
                obj = ev.data()
            except tradeplex.ProtocolError as e:
                self.bad_events += 1
                if self.bad_events <= 10:
                    log.warning("bad %s event dropped: %s", ev.kind, e)
                continue
            if obj is not None:
                self._submit(self._on_event, ev.topic, ev.source, obj, wait=True)

    def _on_event(self, topic: str, source: str, obj: model.WireObject) -> None:
        if isinstance(obj, model.Tick):
            self._push_tick(obj, topic)
        elif isinstance(obj, model.Order):
            self._push_order(obj, event=True)
        elif isinstance(obj, model.Trade):
            self._push_trade(obj, event=True)
        elif isinstance(obj, model.Position):
            if self._from_account_worker(source, obj.account, obj.gateway):
                self._push_positions([obj])
        elif isinstance(obj, model.Account):
            if self._from_account_worker(source, obj.account, obj.gateway):
                self._push_accounts([obj])
        elif isinstance(obj, model.Log):
            self.write_log(f"[{obj.gateway}] {obj.level}: {obj.msg}")

    def _ours(self, account: str, gateway: str) -> bool:
        ok = (not self.account or account == self.account) and (
            not gateway or gateway == self.service
        )
        if not ok:
            self.foreign_events += 1
        return ok

    def _from_account_worker(self, source: str, account: str, gateway: str) -> bool:
        # Two workers of a service may each hold an account of that name (SIM: each its
        # own simulated one); vn.py keeps one position per symbol and direction, so take
        # holdings and funds only from the worker our account's requests go to.
        if not self._ours(account, gateway):
            return False
        if self._account_worker is not None and source != self._account_worker:
            self.foreign_events += 1
            return False
        return True

    # --- timer thread ----------------------------------------------------------------

    def _timer_loop(self) -> None:
        seen = (0, 0)
        gaps = 0
        next_refresh = 0.0
        resync = False
        while not self._stop.is_set():
            self._wake.wait(TIMER_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            s = self.subscriber
            if s is not None:
                if (s.reconnects, s.broker_restarts) != seen:
                    seen = (s.reconnects, s.broker_restarts)
                    self.write_log(
                        f"event stream reconnected (reconnects={s.reconnects}, "
                        f"broker restarts={s.broker_restarts}); resyncing orders and trades"
                    )
                    resync = True
                if s.gaps != gaps:
                    self.write_log(f"{s.gaps - gaps} events lost; resyncing orders and trades")
                    gaps = s.gaps
                    resync = True
            try:
                if not self._loaded:
                    self._loaded = self._load()
                    next_refresh = time.monotonic() + QUERY_INTERVAL_S
                    continue
                if resync:
                    self._resync()
                    resync = False
                if self._refresh_now or time.monotonic() >= next_refresh:
                    self._refresh_now = False
                    self._refresh()
                    next_refresh = time.monotonic() + QUERY_INTERVAL_S
            except Exception as e:
                if self._stop.is_set() or (
                    isinstance(e, tradeplex.CallError) and e.code == "closed"
                ):
                    return
                log.exception("gateway timer failed")  # logged; the next round tries again
            self._submit(self._on_timer)

    def _on_timer(self) -> None:
        self._resolve_due()
        self._release_held()
        now = time.monotonic()
        for (symbol, _), sub in self._subs.items():
            if now - sub.last > sub.wait:
                self.write_log(
                    f"no tick for {symbol} in {sub.wait:.0f} s; sending its subscription again"
                )
                sub.last = now
                sub.wait = min(sub.wait * 2, STALE_TICKS_MAX_S)
                self._send_subscribe(symbol, sub.wire_exchange)

    def _load(self) -> bool:
        """The initial load; False (logged) if the cluster did not answer: tried again."""
        c = self.client
        assert c is not None
        try:
            contracts = c.query_contracts(self.service)
            accounts = self._call_reply("query_account", CALL_TIMEOUT_MS)
            positions = self._call_reply("query_position", CALL_TIMEOUT_MS)
            orders = c.query_orders(self.service, self.account)
        except tradeplex.CallError as e:
            if e.code == "closed":
                raise
            self.write_log(f"initial load from {self.service} failed ({e}); trying again")
            return False
        self._submit(self._push_contracts, contracts)
        self._submit(self._apply_refresh, accounts, positions)
        for o in orders:
            self._submit(self._push_order, o)
        self._load_trades("connect")
        self._submit(self.write_log, f"connected to {self.service} through {c.broker}")
        return True

    def _load_trades(self, why: str) -> None:
        c = self.client
        assert c is not None
        try:
            trades = c.query_trades(self.service, self.account)
        except tradeplex.CallError as e:
            if e.code == "closed":
                raise
            # An older worker does not know `query_trades` (bad_request / worker_error).
            self.write_log(f"query_trades ({why}) failed: {e}; today's trades not loaded")
            return
        for t in trades:
            self._submit(self._push_trade, t)

    def _resync(self) -> None:
        """After a reconnect or lost events: active orders, our open orders by id, trades."""
        c = self.client
        assert c is not None
        try:
            for o in c.query_orders(self.service, self.account):
                self._submit(self._push_order, o)
        except tradeplex.CallError as e:
            if e.code == "closed":
                raise
            self.write_log(f"resync: query_orders failed: {e}")
        with self._lock:
            open_ids = [
                t.wire_id for t in self._orders.values() if not t.final and t.wire_id is not None
            ][:MAX_RESYNC_ORDERS]
        for wire_id in open_ids:
            try:
                self._submit(self._push_order, c.query_order(wire_id))
            except (tradeplex.CallError, ValueError) as e:
                if isinstance(e, tradeplex.CallError) and e.code == "closed":
                    raise
                self.write_log(f"resync: query_order {wire_id} failed: {e}")
        self._load_trades("resync")

    def _call_reply(self, op: str, timeout_ms: int) -> tradeplex.Reply:
        assert self.client is not None
        return self.client.call_reply(
            self.service,
            {"op": op, "account": self.account},
            idempotent=True,
            affinity=account_key(self.account),
            timeout_ms=timeout_ms,
        )

    def _refresh(self) -> None:
        try:
            accounts = self._call_reply("query_account", REFRESH_TIMEOUT_MS)
            positions = self._call_reply("query_position", REFRESH_TIMEOUT_MS)
        except tradeplex.CallError as e:
            if e.code == "closed":
                raise
            if self._refresh_ok:
                self.write_log(f"account refresh failed ({e}); retrying every interval")
            self._refresh_ok = False
            return
        if not self._refresh_ok:
            self.write_log("account refresh answered again")
            self._refresh_ok = True
        self._submit(self._apply_refresh, accounts, positions)

    def _apply_refresh(self, accounts: tradeplex.Reply, positions: tradeplex.Reply) -> None:
        worker = positions.worker
        if worker is not None and worker != self._account_worker:
            if self._account_worker is not None:
                self.write_log(f"account {self.account!r} now served by worker {worker}")
            self._account_worker = worker
        try:
            self._push_accounts(model.Account.list_from_wire(accounts.body))
            snapshot = model.Position.list_from_wire(positions.body)
        except tradeplex.ProtocolError as e:
            self.write_log(f"bad account/position reply: {e}")
            return
        self._push_positions(snapshot, complete=True)

    # --- conversions (task thread) ---------------------------------------------------

    def _exchange_in(self, symbol: str, wire: str) -> Exchange:
        ex = m.exchange_from_wire(wire)
        if len(self._wire_exchange) < MAX_EXCHANGES or (symbol, ex) in self._wire_exchange:
            self._wire_exchange[(symbol, ex)] = wire
        return ex

    def _push_contracts(self, contracts: list[model.Contract]) -> None:
        for k in contracts:
            self.on_contract(self._contract(k))

    def _contract(self, k: model.Contract) -> ContractData:
        if len(self._contract_names) < MAX_EXCHANGES:
            self._contract_names[(k.symbol, k.exchange)] = k.name
        option_type = (
            m.OPTION_TYPE_FROM_WIRE.get(m.wire_name(k.option_type))
            if k.option_type is not None
            else None
        )
        return ContractData(
            symbol=k.symbol,
            exchange=self._exchange_in(k.symbol, k.exchange),
            name=k.name,
            product=m.PRODUCT_FROM_WIRE.get(m.wire_name(k.product), Product.FUTURES),
            size=k.size,
            pricetick=k.pricetick,
            min_volume=k.min_volume,
            max_volume=k.max_volume,
            stop_supported=k.stop_supported,
            net_position=k.net_position,
            history_data=k.history_data,
            option_strike=k.option_strike,
            option_underlying=k.option_underlying,
            option_type=option_type,
            option_listed=m.optional_datetime(k.option_listed_ns),
            option_expiry=m.optional_datetime(k.option_expiry_ns),
            option_portfolio=k.option_portfolio,
            option_index=k.option_index,
            gateway_name=self.gateway_name,
        )

    def _push_tick(self, t: model.Tick, topic: str) -> None:
        if topic not in self._tick_topics:
            return  # a longer symbol under the same prefix
        key = (t.symbol, t.exchange)
        # Two workers may publish the same symbol: deliver each exchange time once.
        if t.datetime_ns <= self._last_tick_ns.get(key, -1):
            self.duplicate_ticks += 1
            return
        self._last_tick_ns[key] = t.datetime_ns
        exchange = self._exchange_in(t.symbol, t.exchange)
        sub = self._subs.get((t.symbol, exchange))
        if sub is not None:
            sub.last = time.monotonic()
            sub.wait = STALE_TICKS_S
        tick = TickData(
            symbol=t.symbol,
            exchange=exchange,
            datetime=m.datetime_from_ns(t.datetime_ns),
            name=t.name or self._contract_names.get(key, ""),
            gateway_name=self.gateway_name,
            volume=t.volume,
            turnover=t.turnover,
            open_interest=t.open_interest,
            last_price=t.last_price,
            last_volume=t.last_volume,
            limit_up=t.limit_up,
            limit_down=t.limit_down,
            open_price=t.open_price,
            high_price=t.high_price,
            low_price=t.low_price,
            pre_close=t.pre_close,
            localtime=m.optional_datetime(t.localtime_ns),
        )
        for side in ("bid_price", "bid_volume", "ask_price", "ask_volume"):
            for i, v in enumerate(getattr(t, side)[:5], 1):
                setattr(tick, f"{side}_{i}", v)
        self.on_tick(tick)

    # Orders: guarded by _lock (send_order and cancel_order run on callers' threads).

    def _remember(self, t: _Tracked) -> None:
        self._orders[t.orderid] = t
        if t.wire_id is not None:
            self._by_wire[t.wire_id] = t.orderid
        if len(self._orders) > MAX_ORDERS:
            # Forget the oldest final order (or, if none of the oldest is, the oldest).
            victim = next(
                (k for k, v in itertools.islice(self._orders.items(), 1000) if v.final),
                next(iter(self._orders)),
            )
            old = self._orders.pop(victim)
            if old.wire_id is not None:
                self._by_wire.pop(old.wire_id, None)
            self._unmapped.discard(victim)
            self._unknown.discard(victim)

    def _learn(self, t: _Tracked, wire_id: str) -> None:
        t.wire_id = wire_id
        self._by_wire[wire_id] = t.orderid
        self._unmapped.discard(t.orderid)

    def _track(self, o: model.Order) -> _Tracked:
        orderid = self._by_wire.get(o.order_id)
        if orderid is not None and orderid in self._orders:
            return self._orders[orderid]
        mine = self._orders.get(o.reference) if o.reference else None
        if mine is not None and mine.mine and mine.wire_id is None:
            self._learn(mine, o.order_id)  # an event that overtook the reply
            return mine
        t = _Tracked(m.orderid_from_wire(o.order_id), False, wire_id=o.order_id)
        self._remember(t)
        return t

    def _push_order(self, o: model.Order, event: bool = False) -> None:
        """Reports an order state to vn.py unless an equal or newer one was reported.

        Events are filtered by account and gateway; answers to our own calls are ours.
        """
        if event and not self._ours(o.account, o.gateway):
            return
        stage = o.status.stage if isinstance(o.status, model.Status) else 3
        progress = (o.traded, stage)
        cancel = False
        data: OrderData | None = None
        with self._lock:
            t = self._track(o)
            if t.unknown_until is not None:  # the gateway told us: settled
                t.unknown_until = None
                self._unknown.discard(t.orderid)
                self.write_log(
                    f"order {t.orderid}: outcome settled: {m.wire_name(o.status)} "
                    f"({o.traded}/{o.volume} traded, {o.order_id})"
                )
            if t.cancel_wanted and t.wire_id is not None:  # asked for before the id was known
                t.cancel_wanted = False
                cancel = stage < 3
            # vn.py keeps the last state pushed: never push an older one after a newer one.
            if progress > t.progress:
                t.progress = progress
                t.final = stage >= 3
                data = self._order_data(o, t)
        if data is not None:
            self.on_order(data)
        if cancel:
            self._cancel_wire(o.order_id)
        self._release_held()

    def _order_data(self, o: model.Order, t: _Tracked) -> OrderData:
        return OrderData(
            symbol=o.symbol,
            exchange=self._exchange_in(o.symbol, o.exchange),
            orderid=t.orderid,
            type=m.ORDER_TYPE_FROM_WIRE.get(m.wire_name(o.order_type), OrderType.LIMIT),
            direction=m.DIRECTION_FROM_WIRE.get(m.wire_name(o.direction)),
            offset=m.OFFSET_FROM_WIRE.get(m.wire_name(o.offset), Offset.NONE),
            price=o.price,
            volume=o.volume,
            traded=o.traded,
            status=m.STATUS_FROM_WIRE.get(m.wire_name(o.status), Status.SUBMITTING),
            datetime=m.optional_datetime(o.datetime_ns),
            reference=t.reference if t.mine else o.reference,
            gateway_name=self.gateway_name,
        )

    def _push_trade(self, t: model.Trade, event: bool = False) -> None:
        if event and not self._ours(t.account, t.gateway):
            return
        with self._lock:
            if t.trade_id in self._trades_seen:
                return  # an event and a query (or two queries) told the same fill
            if t.order_id not in self._by_wire and self._unmapped:
                # Maybe the fill of an order whose reply is still on its way: wait for
                # the mapping, or vn.py would book it under an order it does not know.
                if len(self._held) >= MAX_HELD_TRADES:
                    self._held.popleft()
                    self.write_log("too many trades held; the oldest is dropped")
                self._held.append((time.monotonic() + HOLD_TRADE_S, t))
                return
            data = self._trade_data(t)
        self.on_trade(data)

    def _trade_data(self, t: model.Trade) -> TradeData:
        self._trades_seen[t.trade_id] = None
        if len(self._trades_seen) > MAX_TRADES:
            self._trades_seen.popitem(last=False)
        orderid = self._by_wire.get(t.order_id) or m.orderid_from_wire(t.order_id)
        return TradeData(
            symbol=t.symbol,
            exchange=self._exchange_in(t.symbol, t.exchange),
            orderid=orderid,
            tradeid=t.trade_id.replace(".", "_"),
            direction=m.DIRECTION_FROM_WIRE.get(m.wire_name(t.direction)),
            offset=m.OFFSET_FROM_WIRE.get(m.wire_name(t.offset), Offset.NONE),
            price=t.price,
            volume=t.volume,
            datetime=m.optional_datetime(t.datetime_ns),
            gateway_name=self.gateway_name,
        )

    def _release_held(self) -> None:
        if not self._held:
            return
        now = time.monotonic()
        out: list[TradeData] = []
        with self._lock:
            keep: collections.deque[tuple[float, model.Trade]] = collections.deque()
            for until, t in self._held:
                if t.order_id in self._by_wire or not self._unmapped or now >= until:
                    if t.trade_id not in self._trades_seen:
                        out.append(self._trade_data(t))
                else:
                    keep.append((until, t))
            self._held = keep
        for data in out:
            self.on_trade(data)

    def _push_positions(self, positions: list[model.Position], complete: bool = False) -> None:
        seen: set[tuple[str, str, str]] = set()
        for p in positions:
            direction = m.DIRECTION_FROM_WIRE.get(m.wire_name(p.direction))
            if direction is None:
                continue
            key = (p.symbol, p.exchange, m.wire_name(p.direction))
            seen.add(key)
            if len(self._positions_held) < MAX_EXCHANGES:
                self._positions_held.add(key)
            self.on_position(
                PositionData(
                    symbol=p.symbol,
                    exchange=self._exchange_in(p.symbol, p.exchange),
                    direction=direction,
                    volume=p.volume,
                    frozen=p.frozen,
                    price=p.price,
                    pnl=p.pnl,
                    yd_volume=p.yd_volume,
                    gateway_name=self.gateway_name,
                )
            )
        if not complete:
            return
        # A full snapshot without a holding we reported: it was closed; say so (vn.py
        # keeps the last position pushed).
        for symbol, exchange, wire_direction in self._positions_held - seen:
            self.on_position(
                PositionData(
                    symbol=symbol,
                    exchange=self._exchange_in(symbol, exchange),
                    direction=m.DIRECTION_FROM_WIRE[wire_direction],
                    volume=0,
                    gateway_name=self.gateway_name,
                )
            )
        self._positions_held &= seen

    def _push_accounts(self, accounts: list[model.Account]) -> None:
        for a in accounts:
            if not self._ours(a.account, a.gateway):
                continue
            self.on_account(
                AccountData(
                    accountid=a.account,
                    balance=a.balance,
                    frozen=a.frozen,
                    gateway_name=self.gateway_name,
                )
            )

    def _bar(self, b: model.Bar, req: HistoryRequest) -> BarData:
        return BarData(
            symbol=b.symbol,
            exchange=req.exchange,
            datetime=m.datetime_from_ns(b.datetime_ns),
            interval=m.INTERVAL_FROM_WIRE.get(m.wire_name(b.interval), req.interval),
            volume=b.volume,
            turnover=b.turnover,
            open_interest=b.open_interest,
            open_price=b.open_price,
            high_price=b.high_price,
            low_price=b.low_price,
            close_price=b.close_price,
            gateway_name=self.gateway_name,
        )
