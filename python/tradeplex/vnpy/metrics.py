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

The port is hardened like the Rust binaries' (ops/src/http.rs, docs/operations.md "Health
endpoints"): the request head must arrive within 5 s and fit in 8 KiB (else the connection
is closed, or 431), only GET and HEAD are served (405 with ``Allow``), bodies are refused
(413), at most 64 connections are served at once, and every answer carries the same
no-cache / no-sniff / no-frame headers.
"""

from __future__ import annotations

import contextlib
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


#: As ops/src/http.rs: the whole request head within this long of connecting ...
HEADER_READ_TIMEOUT_S = 5.0
#: ... and at most this large (request line and headers) ...
MAX_HEADER_BYTES = 8 * 1024
#: ... and at most this many connections served at once (more are closed at once).
MAX_CONNECTIONS = 64
#: Headers on every answer, as the Rust binaries send them.
_HARDENING = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most `MAX_CONNECTIONS` of them."""

    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of probes and scrapes past it
    # waits in the kernel for SYN retransmits (seconds) instead of being served or refused.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("http connection from %s refused: too many open", client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` (200 when `ready()`, else 503)."""

    def __init__(self, addr: str, metrics: HostMetrics, ready: Callable[[], bool]) -> None:
        host, port = parse_addr(addr)
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            # Per socket read; the deadline set in `setup` bounds the whole head.
            timeout = HEADER_READ_TIMEOUT_S

            def setup(self) -> None:
                super().setup()
                # A head trickled a byte at a time passes a per-read timeout: close the
                # connection if the whole head has not arrived in time.
                self._deadline = threading.Timer(HEADER_READ_TIMEOUT_S, self._expire)
                self._deadline.daemon = True
                self._deadline.start()

            def _expire(self) -> None:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def finish(self) -> None:
                self._deadline.cancel()
                super().finish()

            def parse_request(self) -> bool:
                ok = super().parse_request()
                self._deadline.cancel()
                if not ok:
                    return False
                head = (
                    len(self.requestline)
                    + 2
                    + sum(len(k) + len(v) + 4 for k, v in self.headers.items())
                )
                if head > MAX_HEADER_BYTES:
                    self._refuse(431, b"request header fields too large\n")
                elif self.command not in ("GET", "HEAD"):
                    self._refuse(405, b"method not allowed\n", ("Allow", "GET, HEAD"))
                elif "Transfer-Encoding" in self.headers or self.headers.get(
                    "Content-Length", "0"
                ).strip() not in ("", "0"):
                    # The body is never read: answer and close rather than drain it.
                    self._refuse(413, b"request bodies are refused\n")
                else:
                    return True
                return False

            def _refuse(self, status: int, body: bytes, *extra: tuple[str, str]) -> None:
                self.close_connection = True
                self.send_response(status)
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

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

            def do_HEAD(self) -> None:
                self.do_GET()

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def end_headers(self) -> None:
                for name, value in _HARDENING:
                    self.send_header(name, value)
                super().end_headers()

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
