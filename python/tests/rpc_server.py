"""The deployment Tradeplex replaces, for the migration test: a vn.py MainEngine running
`FakeGateway`, served by vnpy_rpcservice's RpcEngine (RpcServiceApp) on loopback.

Prints ``rpc rep=<ep> pub=<ep>`` once serving (on the endpoints given as arguments, or
ports the OS picks). ``TPX_TEST_RPC_HEARTBEAT_S`` shortens the server's heartbeat interval
(vn.py's is 10 s) for tests of a silent server. SIGUSR1 drops the
fake's trading session, SIGUSR2 brings it back (CTP's log lines, which RpcEngine forwards to
every RpcGateway); SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import vnpy.rpc.server
import zmq
from fake_gateway import FakeGateway
from vnpy.event import EventEngine
from vnpy.trader.engine import MainEngine
from vnpy_rpcservice import RpcServiceApp
from vnpy_rpcservice.rpc_service.engine import RpcEngine


def main() -> int:
    if os.environ.get("TPX_TEST_RPC_HEARTBEAT_S"):
        vnpy.rpc.server.HEARTBEAT_INTERVAL = float(os.environ["TPX_TEST_RPC_HEARTBEAT_S"])
    rep, pub = sys.argv[1:3] if len(sys.argv) >= 3 else ("tcp://127.0.0.1:*",) * 2
    main_engine = MainEngine(EventEngine())
    main_engine.add_gateway(FakeGateway)
    engine = main_engine.add_app(RpcServiceApp)
    assert isinstance(engine, RpcEngine)
    main_engine.connect({"account": "rpc1"}, "FAKE")
    if not engine.start(rep, pub):
        print("RpcEngine did not start", file=sys.stderr)
        return 1
    # RpcServer does not tell which ports "*" got: ask its sockets.
    server = engine.server
    rep = server._socket_rep.getsockopt_string(zmq.LAST_ENDPOINT)
    pub = server._socket_pub.getsockopt_string(zmq.LAST_ENDPOINT)
    gateway = main_engine.get_gateway("FAKE")
    assert isinstance(gateway, FakeGateway)
    done = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: gateway.drop())
    signal.signal(signal.SIGUSR2, lambda *_: gateway.restore())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    # One write: vn.py's logger prints to stdout from its own thread.
    sys.stdout.write(f"rpc rep={rep} pub={pub}\n")
    sys.stdout.flush()
    done.wait()
    main_engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
