"""The worker host's ``--http`` endpoint: ``/metrics`` (prometheus_client, with the Rust
worker's metric names where they apply), ``/healthz`` and ``/readyz``.

Same names as worker/src/metrics.rs: ``tradeplex_worker_requests_total{service,outcome}``,
``tradeplex_worker_handler_duration_seconds{service}`` (same buckets),
``tradeplex_worker_in_flight``, ``tradeplex_worker_registered``,
``tradeplex_worker_ready_sent_total``, ``tradeplex_gateway_connected{gateway}`` (0
disconnected, 1 connected, 2 reconnecting), ``tradeplex_gateway_orders_total{gateway,
result}`` (``sent``, ``filled``, ``cancelled``, ``rejected``),
``tradeplex_worker_events_published_total{kind}`` and
``tradeplex_worker_events_dropped_total``. The host keeps no journal, so there is no
``tradeplex_worker_journal_errors_total``. Like every Tradeplex binary it also exports the
``process_*`` family (prometheus_client's ProcessCollector, Linux) and
``tradeplex_build_info{version, commit}`` (commit "unknown": a Python package carries none).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

import tradeplex

log = logging.getLogger("tradeplex.vnpy.http")

#: worker/src/metrics.rs: exponential_buckets(0.00005, 2.5, 14).
BUCKETS = tuple(0.00005 * 2.5**i for i in range(14))


class _WorkerCounters(Collector):
    """Counters the `tradeplex.Worker` keeps itself, read at scrape time."""

    def __init__(self, worker: tradeplex.Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        yield CounterMetricFamily(
            "tradeplex_worker_ready_sent",
            "READY messages sent: at start, per reconnect or change of services",
            value=w.ready_sent,
        )
        published = CounterMetricFamily(
            "tradeplex_worker_events_published", "Events published, by kind", labels=["kind"]
        )
        for kind, n in sorted(dict(w.published_by_kind).items()):
            published.add_metric([kind], n)
        yield published
        yield CounterMetricFamily(
            "tradeplex_worker_events_dropped",
            "Events dropped before publishing (queue full or socket error); subscribers see gaps",
            value=w.publish_drops,
        )


class HostMetrics:
    """Every metric of one worker host, in its own registry."""

    def __init__(
        self, worker: tradeplex.Worker, gateway: str, connected: Callable[[], int]
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.gateway = gateway
        self.requests = Counter(
            "tradeplex_worker_requests",
            "Requests executed, by service and outcome",
            ["service", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "tradeplex_worker_handler_duration_seconds",
            "Handler run time",
            ["service"],
            buckets=BUCKETS,
            registry=r,
        )
        Gauge("tradeplex_worker_in_flight", "Requests executing", registry=r).set_function(
            lambda: worker.in_flight
        )
        Gauge(
            "tradeplex_worker_registered", "1 while registered with a broker", registry=r
        ).set_function(lambda: 1 if worker.registered else 0)
        state = Gauge(
            "tradeplex_gateway_connected",
            "Gateway connection state: 0 disconnected, 1 connected, 2 reconnecting",
            ["gateway"],
            registry=r,
        )
        state.labels(gateway).set_function(connected)
        self.orders = Counter(
            "tradeplex_gateway_orders",
            "Orders by gateway and result",
            ["gateway", "result"],
            registry=r,
        )
        r.register(_WorkerCounters(worker))
        ProcessCollector(registry=r)
        Gauge(
            "tradeplex_build_info",
            'Always 1; the labels say which build runs (commit "unknown" outside git)',
            ["version", "commit"],
            registry=r,
        ).labels(tradeplex.__version__, "unknown").set(1)

    def observe(self, service: str, outcome: str, seconds: float) -> None:
        """One executed request (the `tradeplex.Worker` observer)."""
        self.requests.labels(service, outcome).inc()
        self.duration.labels(service).observe(seconds)

    def order(self, result: str) -> None:
        """An order sent, or reaching a final state."""
        self.orders.labels(self.gateway, result).inc()


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:0`` for IPv6; port 0 = any) → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ValueError(f"http address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9101")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` (200 when `ready()`, else 503)."""

    def __init__(self, addr: str, metrics: HostMetrics, ready: Callable[[], bool]) -> None:
        host, port = parse_addr(addr)
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path == "/healthz":
                    self._answer(200, "text/plain", b"ok\n")
                elif path == "/readyz":
                    ok = ready()
                    self._answer(
                        200 if ok else 503, "text/plain", b"ready\n" if ok else b"not ready\n"
                    )
                else:
                    self._answer(404, "text/plain", b"not found\n")

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        self._server = (_Server6 if ":" in host else _Server)((host, port), Handler)
        bound_host, bound_port = str(self._server.server_address[0]), self._server.server_address[1]
        #: The bound address, as the Rust worker prints it (``[::1]:9101`` for IPv6).
        self.addr = (
            f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tpx-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stops serving."""
        self._server.shutdown()
        self._server.server_close()
