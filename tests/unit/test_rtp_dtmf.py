from __future__ import annotations

import pytest

from sipagent.errors import RtpError
from sipagent.rtp.dtmf import DtmfReceiver, DtmfSender, TelephoneEvent, digit_to_event


def ev(event: int, duration: int, end: bool = False) -> bytes:
    return TelephoneEvent(event, end, 10, duration).serialize()


def test_payload_roundtrip() -> None:
    raw = bytes.fromhex("058a0320")  # event 5, end bit, volume 10, duration 800
    e = TelephoneEvent.parse(raw)
    assert (e.event, e.end, e.volume, e.duration, e.digit) == (5, True, 10, 800, "5")
    assert e.serialize() == raw
    with pytest.raises(RtpError):
        TelephoneEvent.parse(b"\x05\x8a")


def test_digits_map() -> None:
    assert [digit_to_event(d) for d in "09*#Ad"] == [0, 9, 10, 11, 12, 15]
    with pytest.raises(RtpError):
        digit_to_event("x")


def test_receiver_reports_once_with_duration() -> None:
    rx = DtmfReceiver()
    out = []
    for d in (160, 320, 480, 640):
        out += rx.feed(1000, ev(1, d))
    for _ in range(3):  # the three end packets
        out += rx.feed(1000, ev(1, 800, end=True))
    assert out == [("1", 100)]
    # The same digit again is a new event: a new timestamp.
    out = rx.feed(3000, ev(1, 160)) + rx.feed(3000, ev(1, 960, end=True))
    out += rx.feed(3000, ev(1, 960, end=True))
    assert out == [("1", 120)]


def test_receiver_lost_end_packets() -> None:
    rx = DtmfReceiver()
    assert rx.feed(1000, ev(2, 160)) == [] and rx.feed(1000, ev(2, 480)) == []
    # The next digit begins before any end packet of "2" arrived: report "2" with its last duration.
    assert rx.feed(5000, ev(3, 160)) == [("2", 60)]
    assert rx.feed(1000, ev(2, 800, end=True)) == []  # a straggling end of "2": already reported
    assert rx.flush() == [("3", 20)]
    assert rx.flush() == []


def test_receiver_reordered_end_before_update() -> None:
    rx = DtmfReceiver()
    assert rx.feed(1000, ev(11, 800, end=True)) == [("#", 100)]
    assert rx.feed(1000, ev(11, 640)) == []


def test_sender_packet_train() -> None:
    tx = DtmfSender(samples_per_tick=160, gap_ticks=2)
    tx.queue("7", 100)  # 5 ticks
    tx.queue("#", 40)  # 2 ticks
    packets = []
    for _ in range(20):
        packets.append(tx.next_packet())
    events = [(TelephoneEvent.parse(p.payload), p.marker) if p else None for p in packets]
    first = [e for e in events[:7] if e is not None]
    assert len(first) == 7
    assert [e.duration for e, _ in first] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e, _ in first] == [False] * 4 + [True] * 3
    assert [m for _, m in first] == [True] + [False] * 6
    assert events[7:9] == [None, None]  # gap between digits
    second = events[9:13]
    assert [(e[0].event, e[0].duration, e[0].end, e[1]) for e in second if e] == [
        (11, 160, False, True), (11, 320, True, False), (11, 320, True, False), (11, 320, True, False)]
    assert all(e is None for e in events[13:]) and not tx.busy


def test_sender_and_receiver_agree() -> None:
    tx, rx = DtmfSender(), DtmfReceiver()
    tx.queue("9", 200)
    got: list[tuple[str, int]] = []
    ts = 0
    for tick in range(20):
        p = tx.next_packet()
        if p is not None:
            if p.first_of_event:
                ts = tick * 160
            got += rx.feed(ts, p.payload)
    assert got == [("9", 200)]
