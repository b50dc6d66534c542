"""The vn.py worker host's HTTP port against a hostile peer, as the Rust binaries' is
(tests/tests/http_port.rs): a half-sent or trickled request head is closed within the
header-read timeout (it stayed open for good), other methods get 405 with ``Allow``, a
body 413, an oversized head 431, connections past the cap are closed at once."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import SimpleNamespace
from typing import cast

import pytest
from conftest import wait_for

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry

from tradeplex.vnpy.metrics import (
    HEADER_READ_TIMEOUT_S,
    MAX_CONNECTIONS,
    HostMetrics,
    HttpServer,
)

#: The timeout plus slack for a loaded machine.
CLOSED_WITHIN_S = HEADER_READ_TIMEOUT_S + 4


@pytest.fixture
def server() -> object:
    metrics = cast(HostMetrics, SimpleNamespace(registry=CollectorRegistry()))
    srv = HttpServer("127.0.0.1:0", metrics, ready=lambda: True)
    yield srv
    srv.close()


def _port(srv: object) -> int:
    return int(cast(HttpServer, srv).addr.rsplit(":", 1)[1])


def _exchange(
    port: int, request: bytes, wait: float = CLOSED_WITHIN_S
) -> tuple[bytes, float | None]:
    """Sends `request`, reads until the server closes: what came back and after how long
    (None: still open after `wait`)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(wait)
    started = time.monotonic()
    with contextlib.suppress(OSError):  # closed before it took everything
        s.sendall(request)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except TimeoutError:
        return got, None
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return got, time.monotonic() - started


def _trickle(port: int) -> float | None:
    """A request head sent a byte every 0.4 s: seconds until the server closed."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(0.4)
    started = time.monotonic()
    try:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                s.send(bytes([byte]))
                if s.recv(64) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - started
        return None
    finally:
        s.close()


def _status(resp: bytes) -> str:
    return resp.split(b"\r\n", 1)[0].decode()


def test_slow_heads_are_closed_within_the_header_timeout(server: object) -> None:
    port = _port(server)
    results: dict[str, float | None] = {}

    def half_sent() -> None:
        results["half"] = _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")[1]

    def trickled() -> None:
        results["trickle"] = _trickle(port)

    threads = [threading.Thread(target=half_sent), threading.Thread(target=trickled)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for what, took in results.items():
        assert took is not None and took < CLOSED_WITHIN_S, f"{what}: {took}"
        assert took >= HEADER_READ_TIMEOUT_S - 0.5, f"{what} closed early: {took}"


def test_other_methods_bodies_and_big_heads_are_refused(server: object) -> None:
    port = _port(server)
    for method in ("POST", "PUT", "DELETE"):
        resp, _ = _exchange(
            port, f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        )
        assert _status(resp).endswith(" 405 Method Not Allowed"), resp
        assert b"\r\nAllow: GET, HEAD\r\n" in resp, resp
    resp, _ = _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert " 413 " in _status(resp), resp
    resp, closed = _exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 32768 + b"\r\n\r\n"
    )
    assert closed is not None
    assert resp == b"" or " 431 " in _status(resp), resp
    # Still serving, HEAD included (headers only), with the hardening headers.
    resp, _ = _exchange(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(resp).endswith(" 200 OK"), resp
    assert resp.endswith(b"\r\n\r\n"), f"a HEAD answer has no body: {resp!r}"
    assert b"\r\nCache-Control: no-store\r\n" in resp, resp
    resp, _ = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.endswith(b"\r\n\r\nok\n"), resp


def test_connections_past_the_cap_are_closed_at_once(server: object) -> None:
    port = _port(server)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]

    def refused_at_once() -> bool:
        # Until the server has accepted all of the held ones, a probe takes a free slot
        # and stays open (None): try again.
        _, closed = _exchange(port, b"", wait=1.0)
        return closed is not None and closed < 0.5

    try:
        wait_for(refused_at_once, 10, "a connection past the cap closed at once")
    finally:
        for s in held:
            s.close()

    def serves() -> bool:
        return _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0].endswith(b"ok\n")

    wait_for(serves, 10, "serving again once the held connections are gone")
