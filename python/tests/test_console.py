"""The broker's web console in a real headless browser (Debian's chromium, driven through
chromedriver's WebDriver HTTP API): the page shows a worker appear when it starts, a
counter move when calls are made, and the worker disappear when it stops. Also: the HTTP
port's credentials (401 with a challenge, bearer token, ?token=, basic auth).

Skipped, with a message, only when chromium or chromedriver is not installed
(`apt-get install chromium chromium-driver`; scripts/setup.sh does it).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, HEARTBEAT_MS, LIVENESS, Broker, Cluster, Proc, free_port, wait_for

TOKEN = "console-test-token-0123456789"
USER, PASSWORD = "ops", "console-pass-1"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Flags that work headless in a container; a fresh profile per run.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, str]:
    """Status, headers (looked up case-insensitively) and body of a GET."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def _start_broker(cluster: Cluster) -> tuple[Broker, str]:
    """A broker with the console on an OS-chosen HTTP port behind a token and basic auth."""
    config = cluster.tmp / "console-broker.toml"
    config.write_text(f'[http_auth]\ntoken = "{TOKEN}"\nuser = "{USER}"\npassword = "{PASSWORD}"\n')
    args = [str(BIN / "tradeplex-broker"), "--config", str(config)]
    for flag in ("--frontend", "--backend", "--xsub", "--xpub"):
        args += [flag, "tcp://127.0.0.1:*"]
    args += ["--http", "127.0.0.1:0", "--heartbeat-ms", str(HEARTBEAT_MS)]
    args += ["--liveness", str(LIVENESS)]
    proc = Proc(args, cluster.tmp / "console-broker.log")
    cluster.procs.append(proc)
    fields = dict(kv.split("=", 1) for kv in proc.line("ready ").split()[1:])
    broker = Broker(proc, fields["frontend"], fields["backend"], fields["xsub"], fields["xpub"])
    return broker, f"http://{fields['http']}"


def test_the_http_port_asks_for_credentials_except_on_probes(cluster: Cluster) -> None:
    _, http = _start_broker(cluster)
    for path in ("/", "/api/status", "/metrics", "/nosuch"):
        status, headers, _ = _get(http + path)
        assert status == 401, path
        challenges = headers.get_all("WWW-Authenticate") or []
        assert len(challenges) == 2 and challenges[0].startswith("Basic realm="), headers
        assert challenges[1].startswith("Bearer realm="), headers
    assert _get(http + "/healthz")[0] == 200
    assert _get(http + "/readyz")[0] == 200
    # The page's script and style sheet hold no data: a browser fetches them without the
    # page's ?token=.
    assert _get(http + "/console.js")[0] == 200
    assert _get(http + "/console.css")[0] == 200
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert _get(http + "/metrics", wrong)[0] == 401

    status, _, text = _get(http + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "tradeplex_build_info{" in text
    # The five refusals above are counted.
    assert "\ntradeplex_http_unauthorized_total 5\n" in text
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    status, headers, body = _get(http + "/api/status", {"Authorization": f"Basic {basic}"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["workers"] == [] and isinstance(doc["recent"], list)
    status, headers, page = _get(f"{http}/?token={TOKEN}")
    assert status == 200 and 'src="console.js"' in page
    assert headers["Cache-Control"] == "no-store"
    # Offline: the page loads nothing from another origin.
    assert "http://" not in page and "https://" not in page


class WebDriver:
    """The few WebDriver commands the test needs, over chromedriver's HTTP API."""

    def __init__(self, tmp: Path) -> None:
        assert CHROMEDRIVER and CHROMIUM
        self.port = free_port()
        self.log = (tmp / "chromedriver.log").open("wb")
        self.proc = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, 30, "chromedriver listening")
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [*CHROMIUM_ARGS, f"--user-data-dir={tmp / 'chromium-profile'}"],
                    },
                }
            }
        }
        self.session = self._send("POST", "/session", caps)["sessionId"]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/status", timeout=2) as r:
                return bool(json.load(r)["value"]["ready"])
        except OSError:
            return False

    def _send(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read().decode()}") from e

    def open(self, url: str) -> None:
        self._send("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str) -> Any:
        return self._send(
            "POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []}
        )

    def close(self) -> None:
        try:
            self._send("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("chromium/chromedriver absent: apt-get install chromium chromium-driver")
    d = WebDriver(tmp_path)
    yield d
    d.close()


# What the page shows, read from its DOM.
WORKER_IDS = (
    "return [...document.querySelectorAll('#workers tbody tr[data-key]')].map(r => r.dataset.key)"
)
ECHO_RECEIVED = (
    "const r = document.querySelector('#services tbody tr[data-key=\"echo\"] td.received');"
    "return r ? r.textContent : null"
)


def _count(text: str) -> int:
    """A count as the page prints it (with thousands separators)."""
    return int(text.replace(",", ""))


def test_the_console_shows_a_worker_come_and_go_and_a_counter_move(
    cluster: Cluster, browser: WebDriver
) -> None:
    broker, http = _start_broker(cluster)
    browser.open(f"{http}/?token={TOKEN}")
    wait_for(
        lambda: browser.js("return document.getElementById('live').textContent") == "live",
        30,
        "the page polling /api/status",
    )
    assert browser.js(WORKER_IDS) == []

    worker = cluster.worker(broker)
    wait_for(lambda: worker.id in browser.js(WORKER_IDS), 15, "the worker on the page")
    row = f'#workers tr[data-key="{worker.id}"]'
    state = browser.js(f"return document.querySelector('{row} td:nth-child(2)').textContent")
    assert state == "idle"
    before = wait_for(lambda: browser.js(ECHO_RECEIVED), 15, "the echo service row")

    with broker.client(timeout_ms=5000) as c:
        for i in range(25):
            c.call("echo", {"i": i})
    # The sampler reads the counters every second: the page shows all 25 within a few.
    wait_for(
        lambda: _count(browser.js(ECHO_RECEIVED)) == _count(before) + 25,
        15,
        "the received counter to move by 25",
    )

    worker.proc.stop()
    wait_for(lambda: worker.id not in browser.js(WORKER_IDS), 15, "the worker gone from the page")
    assert browser.js("return document.getElementById('live').textContent") == "live"
