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


def test_sender_payload_bytes() -> None:
    """RFC 4733 §2.3: event, E|R|volume, 16-bit duration; "5" for 60 ms at volume 10 (-10 dBm0)."""
    tx = DtmfSender(samples_per_tick=160, volume=10, gap_ticks=1)
    tx.queue("5", 60)
    tx.queue("D", 40)
    packets = [tx.next_packet() for _ in range(11)]
    assert [p.payload.hex() if p else None for p in packets] == [
        "050a00a0", "050a0140", "058a01e0", "058a01e0", "058a01e0",  # 160, 320, 480 (end) x3
        None,  # the gap: one tick of audio
        "0f0a00a0", "0f8a0140", "0f8a0140", "0f8a0140",  # D = event 15
        None,
    ]
    assert [p.marker if p else None for p in packets] == [True, False, False, False, False, None,
                                                          True, False, False, False, None]
    assert [p.first_of_event if p else None for p in packets][:2] == [True, False]


def test_sender_duration_follows_skipped_ticks() -> None:
    """After the media clock skipped ticks the timestamp has moved on by them: so does the duration."""
    tx = DtmfSender()
    tx.queue("1", 200)  # 10 ticks
    first = tx.next_packet()
    assert first is not None and TelephoneEvent.parse(first.payload).duration == 160
    late = tx.next_packet(elapsed=4)  # this tick is the fifth of the event
    assert late is not None and TelephoneEvent.parse(late.payload).duration == 800
    end = tx.next_packet(elapsed=20)  # past its length: the end, at its full length, then twice more
    again = [tx.next_packet(), tx.next_packet()]
    parsed = [TelephoneEvent.parse(p.payload) for p in (end, *again) if p is not None]
    assert [(e.end, e.duration) for e in parsed] == [(True, 1600)] * 3
    assert not tx.busy


def test_sender_refuses_keys_too_short_or_too_long() -> None:
    tx = DtmfSender()
    for duration in (0, 20, 39, 5001):
        with pytest.raises(RtpError):
            tx.queue("1", duration)
    with pytest.raises(RtpError):
        tx.queue("E")
    assert not tx.busy
