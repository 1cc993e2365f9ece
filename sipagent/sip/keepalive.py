"""CRLF keep-alive of a connection we opened (RFC 5626 section 4.4.1), as a pure state machine.

The client sends a double CRLF "ping"; the server answers with a single CRLF "pong". A connection whose
pong does not come within ``pong_timeout`` is dead even when the kernel still thinks it open (a NAT or
firewall forgot it, the registrar was unplugged): the shell then closes it, and the registration that
lived on it is renewed over a new one. Pings are spaced ``interval`` apart, each drawn between 80 % and
100 % of it (section 4.4.1 asks for that spread, so that many clients behind one NAT do not ping in step).
Whatever arrives from the server proves the connection alive, so traffic postpones the next ping.
Pongs are the server's option (RFC 5626 4.4.1 ties them to outbound support, which many PBXs lack): a
server that never answered a single ping is :data:`UNSUPPORTED`, and is not pinged any more rather than
having its connection closed again and again; registration refreshes then find a dead connection.

The shell feeds times in: ``start(now)``, ``received(now)`` for any bytes read, ``timeout(now)`` when
``now >= next_deadline``; ``timeout`` says what to do: :data:`PING` (write ``b"\\r\\n\\r\\n"``),
:data:`DEAD` (close the connection) or :data:`UNSUPPORTED` (stop pinging, keep the connection).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

PING_BYTES = b"\r\n\r\n"
PING: Literal["ping"] = "ping"
DEAD: Literal["dead"] = "dead"
UNSUPPORTED: Literal["unsupported"] = "unsupported"
KeepaliveAction = Literal["ping", "dead", "unsupported"]


class CrlfKeepalive:
    """When to ping, and when a missing pong means the connection is gone."""

    def __init__(self, interval: float, pong_timeout: float = 10.0,
                 jitter: Callable[[], float] = random.random) -> None:
        if interval <= 0 or pong_timeout <= 0:
            raise ValueError("interval and pong_timeout must be positive")
        self.interval = interval
        self.pong_timeout = pong_timeout
        self._jitter = jitter  # 0..1; injectable so that tests pin the schedule
        self.next_deadline: float | None = None
        self.awaiting_pong_since: float | None = None
        self.pings = 0  # sent so far
        self.pongs = 0  # answered so far

    def _schedule(self, now: float) -> None:
        self.next_deadline = now + self.interval * (0.8 + 0.2 * self._jitter())

    def start(self, now: float) -> None:
        self.awaiting_pong_since = None
        self._schedule(now)

    def received(self, now: float) -> None:
        """Bytes came from the server: a pong, or anything else that proves the connection works."""
        if self.next_deadline is None:
            return
        if self.awaiting_pong_since is not None:
            self.pongs += 1
            self.awaiting_pong_since = None
        self._schedule(now)

    def timeout(self, now: float) -> KeepaliveAction | None:
        """What is due at ``now``: a ping, the verdict that the connection is dead, or nothing (too early)."""
        if self.next_deadline is None or now < self.next_deadline:
            return None
        if self.awaiting_pong_since is not None:
            self.next_deadline = None
            self.awaiting_pong_since = None
            return DEAD if self.pongs else UNSUPPORTED
        self.awaiting_pong_since = now
        self.pings += 1
        self.next_deadline = now + self.pong_timeout
        return PING

    def stop(self) -> None:
        self.next_deadline = None
        self.awaiting_pong_since = None
