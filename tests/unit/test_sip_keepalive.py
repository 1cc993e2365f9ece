"""The RFC 5626 CRLF keep-alive schedule: pings spread over 80-100 % of the interval, a missing pong kills."""

from __future__ import annotations

import pytest

from sipagent.sip.keepalive import DEAD, PING, PING_BYTES, UNSUPPORTED, CrlfKeepalive


def test_ping_then_pong_then_next_ping() -> None:
    keepalive = CrlfKeepalive(30.0, pong_timeout=10.0, jitter=lambda: 1.0)
    keepalive.start(100.0)
    assert keepalive.next_deadline == 130.0
    assert keepalive.timeout(129.9) is None  # too early: nothing due
    assert keepalive.timeout(130.0) == PING and keepalive.pings == 1
    assert keepalive.next_deadline == 140.0  # the pong's deadline
    keepalive.received(131.0)
    assert keepalive.pongs == 1 and keepalive.awaiting_pong_since is None
    assert keepalive.next_deadline == 161.0
    assert PING_BYTES == b"\r\n\r\n"


def test_missing_pong_means_dead() -> None:
    keepalive = CrlfKeepalive(30.0, pong_timeout=10.0, jitter=lambda: 1.0)
    keepalive.start(0.0)
    assert keepalive.timeout(30.0) == PING
    keepalive.received(31.0)  # the first pong: this server answers pings
    assert keepalive.timeout(61.0) == PING
    assert keepalive.timeout(70.0) is None
    assert keepalive.timeout(71.0) == DEAD
    assert keepalive.next_deadline is None and keepalive.timeout(100.0) is None


def test_a_server_that_never_pongs_is_not_pinged_any_more() -> None:
    keepalive = CrlfKeepalive(30.0, pong_timeout=10.0, jitter=lambda: 1.0)
    keepalive.start(0.0)
    assert keepalive.timeout(30.0) == PING
    assert keepalive.timeout(40.0) == UNSUPPORTED
    assert keepalive.next_deadline is None
    keepalive.received(50.0)  # later traffic does not start the pings again
    assert keepalive.next_deadline is None


def test_traffic_postpones_the_ping() -> None:
    keepalive = CrlfKeepalive(30.0, jitter=lambda: 1.0)
    keepalive.start(0.0)
    keepalive.received(20.0)  # a SIP message: the connection is alive, no ping needed yet
    assert keepalive.next_deadline == 50.0 and keepalive.pongs == 0


def test_interval_is_spread_between_80_and_100_percent() -> None:
    low = CrlfKeepalive(100.0, jitter=lambda: 0.0)
    low.start(0.0)
    high = CrlfKeepalive(100.0, jitter=lambda: 0.999)
    high.start(0.0)
    assert low.next_deadline == 80.0 and high.next_deadline is not None and 99.0 < high.next_deadline < 100.0


def test_stopped_and_invalid() -> None:
    keepalive = CrlfKeepalive(5.0)
    keepalive.received(1.0)  # never started: nothing scheduled
    assert keepalive.next_deadline is None
    keepalive.start(0.0)
    keepalive.stop()
    assert keepalive.timeout(1000.0) is None
    with pytest.raises(ValueError):
        CrlfKeepalive(0.0)
