"""A wake-up channel for an I/O thread that polls ZeroMQ sockets.

Other threads hand work over a queue and then write one byte here; the I/O thread polls
the read end beside its sockets. A socketpair is used because, unlike a ZeroMQ socket, it
may be written from many threads at once.
"""

from __future__ import annotations

import contextlib
import socket


class Wakeup:
    """One read end (polled by the I/O thread), one write end (any thread)."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        #: Set by the I/O thread while it waits in poll: only then is a byte needed, so a
        #: busy thread costs callers no system call (it looks at its queue before sleeping).
        self.sleeping = False

    def fileno(self) -> int:
        """The read end, for `zmq.Poller.register`."""
        return self._r.fileno()

    # zmq.Poller reports a registered plain file descriptor by its number, not by this
    # object: comparing equal to that number makes `wakeup in dict(poller.poll())` true
    # when it is ready (without this, a poll loop never drains it and then spins).
    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            return other == self.fileno()
        return other is self

    def __hash__(self) -> int:
        return hash(self.fileno())

    def wake(self) -> None:
        """Wakes the I/O thread if it sleeps (a full buffer means it will wake anyway)."""
        if self.sleeping:
            # One byte per sleep is enough: later callers see the flag down.
            self.sleeping = False
            with contextlib.suppress(BlockingIOError, OSError):
                self._w.send(b"\x01")

    def force(self) -> None:
        """Wakes the I/O thread whether or not it sleeps (used to stop it)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._w.send(b"\x01")

    def drain(self) -> None:
        """Reads the pending bytes (one read: writers send one byte per sleep, so more
        than 4096 only makes the next poll return at once, which drains them)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._r.recv(4096)

    def close(self) -> None:
        """Closes both ends."""
        self._r.close()
        self._w.close()
